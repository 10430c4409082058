"""model.processor against HF transformers' Qwen3.5 input pipeline.

* images: `Qwen2VLImageProcessorPil` with Qwen3.5 settings; pixel_values must be bit-identical.
* videos: HF's video processor needs torchvision (not installed), so its pixels are checked against a hand
  computation (PIL bicubic per frame, HF's video smart_resize, HF's own `patchify` code); the prompt side
  (timestamps, per-frame groups) goes through HF's `Qwen3VLProcessor` with our frames.
* prompt expansion / batching: HF's `Qwen3VLProcessor` with HF's Qwen3.5 tokenizer over the same vocabulary.
"""

from __future__ import annotations

import math
import random

import numpy as np
import PIL.Image
import pytest
import torch

from model.processor import Processor, load_image, render_chat, smart_resize, video_smart_resize

QWEN35 = dict(patch_size=16, temporal_patch_size=2, merge_size=2, image_mean=[0.5] * 3, image_std=[0.5] * 3)
IMAGE_PAD, VIDEO_PAD = 248056, 248057


@pytest.fixture(scope="module")
def proc():
    return Processor()


def hf_image_processor(min_pixels=65536, max_pixels=16777216):
    from transformers import Qwen2VLImageProcessorPil

    return Qwen2VLImageProcessorPil(**QWEN35, size={"shortest_edge": min_pixels, "longest_edge": max_pixels})


def rand_image(w, h, mode="RGB", seed=0):
    rng = np.random.default_rng(seed)
    # Smooth structure plus noise, so the bicubic resize has real work to do.
    yy, xx = np.mgrid[0:h, 0:w]
    base = np.stack([(xx * 255 // max(w - 1, 1)), (yy * 255 // max(h - 1, 1)), ((xx + yy) * 3) % 256], -1)
    arr = np.clip(base + rng.integers(-40, 41, (h, w, 3)), 0, 255).astype(np.uint8)
    img = PIL.Image.fromarray(arr)
    if mode == "RGBA":
        img.putalpha(PIL.Image.fromarray(rng.integers(0, 256, (h, w), dtype=np.uint8)))
    elif mode == "P+transparency":  # palette image with a transparent colour: composited onto white
        img = img.convert("P")
        img.info["transparency"] = int(np.asarray(img)[0, 0])
    elif mode != "RGB":
        img = img.convert(mode)
    return img


# ------------------------------------------------------------------------------------------ sizes

def test_smart_resize_matches_hf():
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import smart_resize as hf_smart_resize
    from transformers.models.qwen3_vl.video_processing_qwen3_vl import smart_resize as hf_video_smart_resize

    rnd = random.Random(0)
    sizes = [(480, 640), (40, 50), (1080, 1920), (4100, 5000), (16, 3000), (3000, 16), (1, 150), (200, 1),
             (32, 32), (48, 48), (80, 112), (100000, 600)]
    sizes += [(rnd.randint(1, 6000), rnd.randint(1, 6000)) for _ in range(300)]
    for h, w in sizes:
        if max(h, w) / min(h, w) > 200:
            continue
        assert smart_resize(h, w, 32, 65536, 16777216) == hf_smart_resize(h, w, 32, 65536, 16777216), (h, w)
        assert smart_resize(h, w, 32, 3136, 1 << 20) == hf_smart_resize(h, w, 32, 3136, 1 << 20), (h, w)
        for n in (2, 3, 8, 33):
            ours = video_smart_resize(n, h, w, 2, 32, 4096, 25165824)
            assert ours == hf_video_smart_resize(n, h, w, 2, 32, 4096, 25165824), (n, h, w)


def test_architecture_doc_examples():
    assert smart_resize(480, 640) == (480, 640)  # 30x40 patches, 300 LM tokens
    assert smart_resize(1080, 1920) == (1088, 1920)
    assert smart_resize(200, 300) == (224, 320)  # upscaled to the minimum pixel count


# ------------------------------------------------------------------------------------------ images vs HF

@pytest.mark.parametrize("w,h,mode", [
    (640, 480, "RGB"),
    (50, 40, "RGB"),  # upscaled to >= 65536 pixels
    (333, 517, "RGB"),  # odd sizes
    (1001, 99, "RGB"),  # wide, odd
    (3000, 20, "RGB"),  # aspect ratio 150
    (257, 255, "RGBA"),  # transparency composited onto white
    (300, 200, "L"),  # grayscale
    (300, 200, "LA"),
    (123, 77, "P"),
    (123, 77, "P+transparency"),
    (64, 64, "CMYK"),
])
def test_pixel_values_bit_identical_to_hf(proc, w, h, mode):
    img = rand_image(w, h, mode, seed=w * h)
    ref = hf_image_processor()(img, return_tensors="pt")
    pv, grid = proc.preprocess_images([img])
    assert torch.equal(grid, ref["image_grid_thw"])
    assert pv.dtype == torch.float32 and torch.equal(pv, ref["pixel_values"])


@pytest.mark.slow
def test_huge_image_downscaled_bit_identical_to_hf():
    # 5000x4100 exercises the max_pixels branch; a 1 MP cap keeps the test fast (same code path as 16 MP).
    img = rand_image(1000, 820, seed=3).resize((5000, 4100), PIL.Image.BILINEAR)  # cheaper than 20 MP of noise
    ours = Processor(max_pixels=1 << 20)
    pv, grid = ours.preprocess_images([img])
    ref = hf_image_processor(max_pixels=1 << 20)(img, return_tensors="pt")
    assert torch.equal(grid, ref["image_grid_thw"]) and torch.equal(pv, ref["pixel_values"])
    assert int(grid.prod()) * 256 <= 1 << 20
    assert smart_resize(4100, 5000) == (3680, 4512)  # with the real 16 MP cap: 230x282 patches


def test_numpy_and_path_inputs_match_hf(proc, tmp_path):
    from transformers.image_utils import load_image as hf_load_image

    img = rand_image(211, 190, seed=5)
    arr = np.asarray(img)
    ref = hf_image_processor()(arr, return_tensors="pt")
    pv, grid = proc.preprocess_images([arr])
    assert torch.equal(grid, ref["image_grid_thw"]) and torch.equal(pv, ref["pixel_values"])

    gray = arr[:, :, 0].copy()
    pv_gray, _ = proc.preprocess_images([gray])
    pv_l, _ = proc.preprocess_images([PIL.Image.fromarray(gray)])
    assert torch.equal(pv_gray, pv_l)

    # Paths: HF opens them with its load_image (EXIF transpose, convert RGB), as the HF processor does.
    rgba = rand_image(150, 140, "RGBA", seed=6)
    rgba.save(tmp_path / "a.png")
    jpg = tmp_path / "rot.jpg"
    exif = PIL.Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees when displayed
    rand_image(160, 90, seed=7).save(jpg, exif=exif, quality=90)
    for path in (tmp_path / "a.png", jpg):
        ref = hf_image_processor()(hf_load_image(str(path)), return_tensors="pt")
        pv, grid = proc.preprocess_images([str(path)])
        assert torch.equal(grid, ref["image_grid_thw"]) and torch.equal(pv, ref["pixel_values"])
    assert load_image(jpg).size == (90, 160)  # rotated upright


def test_several_images_concatenate_in_order(proc):
    imgs = [rand_image(64, 48, seed=1), rand_image(300, 500, seed=2), rand_image(50, 40, seed=3)]
    ref = hf_image_processor()(imgs, return_tensors="pt")
    pv, grid = proc.preprocess_images(imgs)
    assert torch.equal(grid, ref["image_grid_thw"]) and torch.equal(pv, ref["pixel_values"])


def test_patch_layout_by_hand(proc):
    """Row r of pixel_values, viewed (C, T, 16, 16), is the normalised patch at the merge-block position."""
    img = rand_image(100, 70, seed=9)
    pv, grid = proc.preprocess_images([img])
    _, gh, gw = grid[0].tolist()
    resized = np.asarray(img.resize((gw * 16, gh * 16), PIL.Image.BICUBIC)).astype(np.float64)
    norm = ((resized / 255).astype(np.float32) - np.float32(0.5)) / np.float32(0.5)
    for i in [0, 1, 2, 3, 4, 5, gh * gw - 1, 2 * gw + 5]:
        in_col, in_row, blk = i % 2, (i // 2) % 2, i // 4
        row, col = 2 * (blk // (gw // 2)) + in_row, 2 * (blk % (gw // 2)) + in_col
        patch = norm[row * 16:(row + 1) * 16, col * 16:(col + 1) * 16].transpose(2, 0, 1)  # C,16,16
        cube = pv[i].view(3, 2, 16, 16)
        assert torch.equal(cube[:, 0], torch.from_numpy(np.ascontiguousarray(patch)))
        assert torch.equal(cube[:, 1], cube[:, 0])  # the single frame is repeated in time


# ------------------------------------------------------------------------------------------ videos

def hand_video(frames, mean=0.5, std=0.5):
    """Independent video pipeline: HF's video smart_resize, PIL bicubic per frame, HF's fused normalise
    (x - 255*mean) / (255*std), last frame repeated to an even count, HF's own patchify code."""
    from transformers.models.qwen3_vl.video_processing_qwen3_vl import Qwen3VLVideoProcessor
    from transformers.models.qwen3_vl.video_processing_qwen3_vl import smart_resize as hf_video_smart_resize

    w0, h0 = frames[0].size
    h, w = hf_video_smart_resize(len(frames), h0, w0, 2, 32, 4096, 25165824)
    x = torch.stack([torch.from_numpy(np.asarray(f.convert("RGB").resize((w, h), PIL.Image.BICUBIC)).copy())
                     for f in frames]).permute(0, 3, 1, 2).float()
    x = (x - torch.tensor(mean * 255.0)) / torch.tensor(std * 255.0)
    patches, gt, gh, gw = Qwen3VLVideoProcessor.patchify(None, x.unsqueeze(0), 16, 2, 2)  # no self needed
    return patches[0], [gt, gh, gw]


@pytest.mark.parametrize("n,w,h", [(4, 64, 48), (5, 200, 120), (2, 20, 30), (7, 97, 61)])
def test_video_pixels_match_hand_computation(proc, n, w, h):
    frames = [rand_image(w, h, seed=10 + i) for i in range(n)]
    want, grid = hand_video(frames)
    pv, g, stamps = proc.preprocess_videos([frames], fps=2.0)
    assert g.tolist() == [grid] and torch.equal(pv, want)
    assert g[0, 0] == math.ceil(n / 2) and len(stamps[0]) == g[0, 0]


def test_video_timestamps_match_hf():
    from transformers import Qwen3VLProcessor

    frames = [rand_image(64, 48, seed=i) for i in range(5)]
    for fps in (2.0, 1.0, 24.0):
        _, _, stamps = Processor().preprocess_videos([frames], fps=fps)
        assert stamps[0] == Qwen3VLProcessor._calculate_timestamps(None, list(range(5)), fps, 2)


def test_video_from_directory(proc, tmp_path):
    frames = [rand_image(64, 48, seed=i) for i in range(3)]
    for i, f in enumerate(frames):
        f.save(tmp_path / f"frame_{i:03d}.png")
    (tmp_path / "notes.txt").write_text("not a frame")
    a = proc.preprocess_videos([tmp_path])
    b = proc.preprocess_videos([frames])
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) and a[2] == b[2]


# ------------------------------------------------------------------------------------------ chat template

def test_chat_template_single_image():
    msgs = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Describe this image."}]}]
    # docs/model.md section 7.
    assert render_chat(msgs, enable_thinking=True) == (
        "<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>Describe this image.<|im_end|>\n"
        "<|im_start|>assistant\n<think>\n")
    assert render_chat(msgs) == (
        "<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>Describe this image.<|im_end|>\n"
        "<|im_start|>assistant\n<think>\n\n</think>\n\n")
    assert render_chat(msgs, add_generation_prompt=False).endswith("<|im_end|>\n")


def test_chat_template_conversation():
    msgs = [
        {"role": "system", "content": "  You are terse.  "},
        {"role": "user", "content": [{"type": "video", "video": "v"}, {"type": "text", "text": "What happens?"}]},
        {"role": "assistant", "content": "<think>\nold reasoning\n</think>\n\nA ball rolls."},
        {"role": "user", "content": [{"image": "a"}, {"image": "b"}, {"type": "text", "text": "And here? "}]},
    ]
    want = ("<|im_start|>system\nYou are terse.<|im_end|>\n"
            "<|im_start|>user\n<|vision_start|><|video_pad|><|vision_end|>What happens?<|im_end|>\n"
            "<|im_start|>assistant\nA ball rolls.<|im_end|>\n"  # reasoning of earlier turns is dropped
            "<|im_start|>user\nPicture 1: <|vision_start|><|image_pad|><|vision_end|>"
            "Picture 2: <|vision_start|><|image_pad|><|vision_end|>And here?<|im_end|>\n"
            "<|im_start|>assistant\n<think>\n\n</think>\n\n")
    got = render_chat(msgs, add_vision_id=True)
    assert got == want.replace("<|vision_start|><|video_pad|>", "Video 1: <|vision_start|><|video_pad|>")
    # An assistant turn after the last user turn keeps its reasoning.
    tail = render_chat(msgs + [{"role": "assistant", "content": "<think>r</think>ok"}], add_generation_prompt=False)
    assert tail.endswith("<|im_start|>assistant\n<think>\nr\n</think>\n\nok<|im_end|>\n")


def test_chat_template_errors():
    with pytest.raises(ValueError, match="empty"):
        render_chat([])
    with pytest.raises(ValueError, match="system message cannot contain images"):
        render_chat([{"role": "system", "content": [{"type": "image"}]}, {"role": "user", "content": "x"}])
    with pytest.raises(ValueError, match="no user message"):
        render_chat([{"role": "system", "content": "x"}])
    with pytest.raises(ValueError, match="must come first"):
        render_chat([{"role": "user", "content": "x"}, {"role": "system", "content": "y"}])
    with pytest.raises(ValueError, match="role"):
        render_chat([{"role": "robot", "content": "x"}])


# ------------------------------------------------------------------------------------------ full call

def test_call_expands_placeholders(proc):
    img_a, img_b = rand_image(64, 48, seed=1), rand_image(300, 200, seed=2)
    vid = [rand_image(64, 48, seed=i) for i in range(3)]
    msgs = [{"role": "user", "content": [{"type": "image"}, {"type": "video"}, {"type": "text", "text": "hi"}]}]
    texts = [proc.apply_chat_template(msgs), render_chat([{"role": "user", "content": [{"type": "image"}]}])]
    out = proc(texts, images=[img_a, img_b], videos=[vid])
    ids, mask, mm = out["input_ids"], out["attention_mask"], out["mm_token_type_ids"]
    assert ids.dtype == mask.dtype == mm.dtype == torch.int64 and ids.shape == mask.shape == mm.shape
    grids = out["image_grid_thw"].tolist()
    assert (ids[0] == IMAGE_PAD).sum() == math.prod(grids[0]) // 4
    assert (ids[1] == IMAGE_PAD).sum() == math.prod(grids[1]) // 4
    t, h, w = out["video_grid_thw"][0].tolist()
    assert t == 2 and (ids[0] == VIDEO_PAD).sum() == t * h * w // 4
    assert out["pixel_values"].shape == (sum(math.prod(g) for g in grids), 1536)
    assert out["pixel_values_videos"].shape == (t * h * w, 1536)
    assert torch.equal(mm, (ids == IMAGE_PAD).long() + 2 * (ids == VIDEO_PAD).long())
    # Left padding: the shorter row starts with pad tokens that the mask hides.
    short = int(mask[1].sum())
    assert mask[1, : ids.shape[1] - short].sum() == 0 and (ids[1, : ids.shape[1] - short] == 248044).all()
    # The video text: one timestamp and one vision block per temporal patch, inside the template's block.
    text = proc.decode(ids[0][mm[0] == 0], skip_special_tokens=False)
    assert ("<|vision_start|><0.2 seconds><|vision_start|><|vision_end|>"
            "<1.0 seconds><|vision_start|><|vision_end|><|vision_end|>hi") in text

    right = proc(texts, images=[img_a, img_b], videos=[vid], padding_side="right")
    assert torch.equal(right["input_ids"][0], ids[0]) and right["attention_mask"][1, 0] == 1
    assert out["pixel_values_videos"] is not None and proc("plain text")["pixel_values"] is None


def test_call_errors(proc, tmp_path):
    one = "<|vision_start|><|image_pad|><|vision_end|>"
    img = rand_image(64, 48)
    with pytest.raises(ValueError, match=r"1 <\|image_pad\|> placeholder\(s\) but 2 images"):
        proc(one, images=[img, img])
    with pytest.raises(ValueError, match=r"2 <\|image_pad\|> placeholder\(s\) but 1 images"):
        proc([one, one], images=[img])
    with pytest.raises(ValueError, match=r"1 <\|video_pad\|> placeholder\(s\) but 0 videos"):
        proc("<|video_pad|>")
    with pytest.raises(ValueError, match="no such file"):
        proc(one, images=[tmp_path / "missing.png"])
    (tmp_path / "fake.png").write_text("this is not an image")
    with pytest.raises(ValueError, match="not a readable image"):
        proc(one, images=[tmp_path / "fake.png"])
    with pytest.raises(ValueError, match="aspect ratio must be at most 200"):
        proc(one, images=[PIL.Image.new("RGB", (2010, 10))])
    with pytest.raises(ValueError, match="uint8"):
        proc(one, images=[np.zeros((40, 40, 3), np.float32)])
    with pytest.raises(ValueError, match="HxWx3"):
        proc(one, images=[np.zeros((40, 40, 4), np.uint8)])
    with pytest.raises(TypeError, match="image must be"):
        proc(one, images=[123])
    with pytest.raises(ValueError, match="at least 2 frames"):
        proc("<|video_pad|>", videos=[[img]])
    with pytest.raises(TypeError, match="list of frames"):
        proc("<|video_pad|>", videos=[img])
    with pytest.raises(ValueError, match="same size"):
        proc("<|video_pad|>", videos=[[img, rand_image(48, 64)]])
    with pytest.raises(ValueError, match="padding_side"):
        proc("x", padding_side="middle")
    with pytest.raises(ValueError, match="does not exist"):
        Processor.from_pretrained(tmp_path / "nope")


def test_from_pretrained_reads_preprocessor_config(tmp_path):
    import json

    (tmp_path / "preprocessor_config.json").write_text(json.dumps(
        {"size": {"shortest_edge": 3136, "longest_edge": 128 * 128}, "patch_size": 16, "merge_size": 2,
         "temporal_patch_size": 2, "image_mean": [0.5] * 3, "image_std": [0.5] * 3}))
    p = Processor.from_pretrained(tmp_path)
    img = rand_image(640, 480, seed=4)
    pv, grid = p.preprocess_images([img])
    ref = hf_image_processor(3136, 128 * 128)(img, return_tensors="pt")
    assert torch.equal(grid, ref["image_grid_thw"]) and torch.equal(pv, ref["pixel_values"])
    assert Processor.from_pretrained(None).max_pixels == 16777216


@pytest.mark.slow
def test_call_matches_hf_qwen3vl_processor():
    """HF's Qwen3VLProcessor (its placeholder expansion, timestamps, batching, mm_token_type_ids) with HF's
    tokenizer over the same vocabulary. Its video processor needs torchvision, so ours stands in for the
    video pixels; the rest of HF's video path (metadata -> timestamps -> text) is HF's own."""
    from transformers import Qwen3VLProcessor
    from transformers.image_processing_base import BatchFeature
    from transformers.video_utils import VideoMetadata

    from tests.test_tokenizer import hf_qwen35_tokenizer

    ours = Processor()

    class VideoStandIn:
        merge_size, temporal_patch_size = 2, 2

        def __call__(self, videos, **kwargs):
            pv, grid, _ = ours.preprocess_videos(videos, fps=2.0)
            meta = [VideoMetadata(total_num_frames=len(v), fps=2.0, frames_indices=list(range(len(v))))
                    for v in videos]
            return BatchFeature({"pixel_values_videos": pv, "video_grid_thw": grid, "video_metadata": meta})

    class HFProcessor(Qwen3VLProcessor):
        def check_argument_for_proper_class(self, name, arg):  # the stand-in is not a registered class
            return None

    hf = HFProcessor(image_processor=hf_image_processor(), tokenizer=hf_qwen35_tokenizer(),
                     video_processor=VideoStandIn())
    imgs = [rand_image(50, 40, seed=1), rand_image(333, 517, seed=2), rand_image(640, 480, "RGBA", seed=3)]
    vids = [[rand_image(96, 64, seed=i) for i in range(5)], [rand_image(64, 64, seed=i) for i in range(4)]]
    msgs_a = [{"role": "system", "content": "Be brief."},
              {"role": "user", "content": [{"type": "image"}, {"type": "video"},
                                           {"type": "text", "text": "Compare them, please. 日本語"}]}]
    msgs_b = [{"role": "user", "content": [{"type": "image"}, {"type": "image"}, {"type": "video"},
                                           {"type": "text", "text": "What changed?"}]}]
    texts = [render_chat(msgs_a), render_chat(msgs_b)]
    for side in ("left", "right"):
        want = hf(text=texts, images=imgs, videos=vids, return_tensors="pt", padding=True, padding_side=side)
        got = ours(texts, images=imgs, videos=vids, padding_side=side)
        for key in ("input_ids", "attention_mask", "mm_token_type_ids", "pixel_values", "image_grid_thw",
                    "pixel_values_videos", "video_grid_thw"):
            assert torch.equal(got[key], want[key]), (side, key)
