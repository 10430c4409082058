"""model/ vs Hugging Face transformers' Qwen3.5 (fp32, CPU, reference ops): logits, positions, vision, generate.

The peer is the transformers model saved into a tiny checkpoint by `save_pretrained` (tests/_tiny_hf.py) and
reloaded from it; ours loads the same files. Logit parity is max|ours - hf| / max|hf| over real tokens.
"""

from __future__ import annotations

import pytest
import torch

import model as M
from model.generate import filter_logits, select_tokens
from model.ops import MODEL_OPS, ops_for, placement
from tests._tiny_hf import (dense_tied, dense_untied, hf_generate, hf_logits, image_tokens,  # noqa: F401
                            left_pad, mm_token_types, moe, no_mkldnn, one_torch_thread, pixels, rand_text,
                            video_tokens)

REL_TOL = 1e-4
_OURS: dict = {}


def ours(ckpt) -> M.Model:
    key = str(ckpt.path)
    if key not in _OURS:
        _OURS[key] = M.load(ckpt.path)
    return _OURS[key]


def make_case(name: str) -> dict:
    """Model inputs (HF keyword names) for one scenario; fixed seed per scenario."""
    g = torch.Generator().manual_seed(CASES.index(name))
    if name == "text":
        rows, img, vid = [rand_text(17, g)], [], []
    elif name == "one_image":  # 4x6 patches, smaller than the 8x8 position table
        img = [(1, 4, 6)]
        rows = [rand_text(3, g) + image_tokens(img[0]) + rand_text(5, g)]
        vid = []
    elif name == "two_images":  # the second (10x8) is larger than the table: both interpolation directions
        img = [(1, 4, 6), (1, 10, 8)]
        rows = [rand_text(2, g) + image_tokens(img[0]) + rand_text(3, g) + image_tokens(img[1]) + rand_text(4, g)]
        vid = []
    elif name == "video":  # 3 temporal patches of 4x6
        vid = [(3, 4, 6)]
        rows = [rand_text(3, g) + video_tokens(vid[0], g) + rand_text(4, g)]
        img = []
    elif name == "batch2":  # left padded, a different image per row (the second row has two)
        img = [(1, 6, 4), (1, 4, 4), (1, 8, 6)]
        rows = [rand_text(2, g) + image_tokens(img[0]) + rand_text(3, g),
                rand_text(4, g) + image_tokens(img[1]) + rand_text(2, g) + image_tokens(img[2]) + rand_text(5, g)]
        vid = []
    elif name == "image_and_video":  # both towers' outputs in one prompt
        img, vid = [(1, 6, 6)], [(2, 4, 4)]
        rows = [rand_text(2, g) + video_tokens(vid[0], g) + rand_text(2, g) + image_tokens(img[0]) + rand_text(3, g)]
    elif name == "mixed_batch":  # a text-only row next to a row with a video and an image
        img, vid = [(1, 4, 8)], [(2, 6, 4)]
        rows = [rand_text(9, g),
                rand_text(2, g) + image_tokens(img[0]) + rand_text(1, g) + video_tokens(vid[0], g) + rand_text(3, g)]
    else:
        raise KeyError(name)
    ids, mask = left_pad(rows)
    case = dict(input_ids=ids, attention_mask=mask)
    if img:
        case.update(pixel_values=pixels(img, g), image_grid_thw=torch.tensor(img))
    if vid:
        case.update(pixel_values_videos=pixels(vid, g), video_grid_thw=torch.tensor(vid))
    return case


CASES = ["text", "one_image", "two_images", "video", "batch2", "image_and_video", "mixed_batch"]
CKPTS = ["dense_tied", "dense_untied", "moe"]


def rel_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max())


@pytest.mark.parametrize("ckpt_name", CKPTS)
@pytest.mark.parametrize("case_name", CASES)
def test_logits_match_hf(request, ckpt_name, case_name):
    ckpt = request.getfixturevalue(ckpt_name)
    case = make_case(case_name)
    ref = hf_logits(ckpt.hf, **case)
    got = ours(ckpt).logits(**case)
    assert got.shape == ref.shape
    real = case["attention_mask"].bool()
    assert torch.isfinite(got).all()
    assert (got[~real] == 0).all()  # padded positions are zero by contract
    rel = rel_diff(got[real], ref[real])
    print(f"\nlogits parity {ckpt_name}/{case_name}: max rel diff {rel:.2e}")
    assert rel < REL_TOL, f"{ckpt_name}/{case_name}: {rel:.3e}"


@pytest.mark.parametrize("case_name", CASES)
def test_positions_match_hf_get_rope_index(dense_tied, case_name):
    case = make_case(case_name)
    ids, mask = case["input_ids"], case["attention_mask"]
    pos_hf, delta_hf = dense_tied.hf.model.get_rope_index(
        ids, mm_token_types(ids), image_grid_thw=case.get("image_grid_thw"),
        video_grid_thw=case.get("video_grid_thw"), attention_mask=mask)
    batch = ours(dense_tied)._prepare(ids, mask, case.get("pixel_values"), case.get("image_grid_thw"),
                                      case.get("pixel_values_videos"), case.get("video_grid_thw"))
    assert torch.equal(batch.positions, pos_hf[:, mask.bool()])  # [3, T] packed, row by row
    assert batch.rope_delta.tolist() == delta_hf.flatten().tolist()


def test_vision_tower_matches_hf(dense_untied):
    g = torch.Generator().manual_seed(5)
    for grids in ([(1, 4, 6), (1, 10, 8)], [(2, 6, 4)]):  # two images of different sizes; a 2-slice video
        grid = torch.tensor(grids)
        pv = pixels(grids, g)
        with torch.no_grad(), no_mkldnn():
            ref = torch.cat(dense_untied.hf.model.get_image_features(pv, grid).pooler_output)
        got = ours(dense_untied).encode_images(pv, grid)
        assert got.shape == ref.shape
        assert rel_diff(got, ref) < REL_TOL


@pytest.mark.parametrize("ckpt_name,case_name", [("dense_tied", "text"), ("dense_untied", "batch2"),
                                                 ("moe", "one_image"), ("dense_tied", "video")])
def test_generate_greedy_matches_hf(request, ckpt_name, case_name):
    ckpt = request.getfixturevalue(ckpt_name)
    case = make_case(case_name)
    ref = hf_generate(ckpt.hf, **case, max_new_tokens=24, do_sample=False)
    m = ours(ckpt)
    got = m.generate_ids(**case, max_new_tokens=24)
    S = case["input_ids"].shape[1]
    assert ref.shape[1] == S + 24
    assert torch.equal(got, ref), f"\nours {got[:, S:].tolist()}\nhf   {ref[:, S:].tolist()}"
    t = m.last_timings
    assert {"vision_ms", "prefill_ms", "ttft_ms", "decode_tokens", "decode_s"} <= set(t) and t["decode_tokens"] == 24


def test_bf16_model_tracks_fp32(dense_tied):
    """The same checkpoint in bf16 runs every path (vision, prefill, decode) and stays near the fp32 model.
    (This toy model amplifies rounding: HF's own bf16 logits are 3-20% off its fp32 ones in max-abs terms.)"""
    case = make_case("image_and_video")
    m16 = M.load(dense_tied.path, dtype=torch.bfloat16)
    got, ref = m16.logits(**case), ours(dense_tied).logits(**case)
    assert got.dtype == torch.bfloat16
    assert float((got.float() - ref).norm() / ref.norm()) < 5e-2
    out = m16.generate_ids(**case, max_new_tokens=4)
    assert out.shape == (1, case["input_ids"].shape[1] + 4) and int(out.max()) < 320


def test_generate_stops_at_eos_and_pads_like_hf(dense_untied):
    """Row 0 hits an eos early; it is then padded while row 1 goes on (HF stopping / padding rules)."""
    case = make_case("batch2")
    S = case["input_ids"].shape[1]
    free = ours(dense_untied).generate_ids(**case, max_new_tokens=12)
    eos = int(free[0, S + 3])  # row 0 emits this at step 3 (or earlier)
    pad = 299
    ref = hf_generate(dense_untied.hf, **case, max_new_tokens=12, do_sample=False, eos_token_id=eos,
                      pad_token_id=pad)
    got = ours(dense_untied).generate_ids(**case, max_new_tokens=12, eos_token_ids=[eos], pad_token_id=pad)
    assert torch.equal(got, ref), f"\nours {got[:, S:].tolist()}\nhf   {ref[:, S:].tolist()}"
    row0 = got[0, S:].tolist()
    first = row0.index(eos)
    assert all(t == pad for t in row0[first + 1:])


def test_generate_all_rows_stop_early(dense_tied):
    case = make_case("text")
    S = case["input_ids"].shape[1]
    free = ours(dense_tied).generate_ids(**case, max_new_tokens=5)
    eos = int(free[0, S + 1])
    got = ours(dense_tied).generate_ids(**case, max_new_tokens=20, eos_token_ids=eos)
    assert got.shape[1] <= S + 2 and int(got[0, -1]) == eos


def test_sampling_is_seeded_and_top_k_1_is_greedy(dense_tied):
    m = ours(dense_tied)
    case = make_case("text")
    a = m.generate_ids(**case, max_new_tokens=8, do_sample=True, temperature=1.5, top_p=0.9, seed=3)
    b = m.generate_ids(**case, max_new_tokens=8, do_sample=True, temperature=1.5, top_p=0.9, seed=3)
    c = m.generate_ids(**case, max_new_tokens=8, do_sample=True, temperature=1.5, seed=4)
    assert torch.equal(a, b)
    assert not torch.equal(a, c)  # 8 draws at temperature 1.5 over 320 tokens: a tie is vanishingly unlikely
    greedy = m.generate_ids(**case, max_new_tokens=8)
    assert torch.equal(m.generate_ids(**case, max_new_tokens=8, do_sample=True, top_k=1, seed=0), greedy)


def test_sampling_filters_match_hf_warpers():
    """Temperature, top-k and top-p keep exactly the tokens (and scaled logits) HF's logits warpers keep."""
    from transformers.generation.logits_process import (TemperatureLogitsWarper, TopKLogitsWarper,
                                                        TopPLogitsWarper)

    g = torch.Generator().manual_seed(0)
    logits = torch.randn(6, 50, generator=g) * 3
    for temp, k, p in ((0.7, 5, 1.0), (1.3, 0, 0.8), (1.0, 10, 0.5), (2.0, 0, 0.05), (1.0, 1, 1.0)):
        ref = logits.clone()
        for warper in (TemperatureLogitsWarper(temp), TopKLogitsWarper(k) if k else None,
                       TopPLogitsWarper(p) if p < 1 else None):
            if warper is not None:
                ref = warper(None, ref)
        got = filter_logits(logits, temperature=temp, top_k=k, top_p=p)
        assert torch.equal(torch.isfinite(got), torch.isfinite(ref))
        assert torch.allclose(got[torch.isfinite(got)], ref[torch.isfinite(ref)])
        for seed in range(10):  # every draw lands on a kept token
            tok = select_tokens(logits, do_sample=True, temperature=temp, top_k=k, top_p=p,
                                generator=torch.Generator().manual_seed(seed))
            assert torch.isfinite(ref[torch.arange(6), tok]).all()
    assert torch.equal(select_tokens(logits), logits.argmax(1))


def test_generate_rejects_bad_sampling_args(dense_tied):
    m = ours(dense_tied)
    ids = make_case("text")["input_ids"]
    for kw in (dict(max_new_tokens=-1), dict(do_sample=True, temperature=0.0), dict(top_k=-2), dict(top_p=0.0),
               dict(top_p=1.5)):
        with pytest.raises(ValueError):
            m.generate_ids(ids, **({"max_new_tokens": 2} | kw))


def test_bad_inputs_are_clear_errors(dense_tied):
    m = ours(dense_tied)
    case = make_case("one_image")
    ids, mask = case["input_ids"], case["attention_mask"]
    right = torch.ones_like(mask)
    right[0, -1] = 0  # right padding
    with pytest.raises(ValueError, match="left padding"):
        m.logits(ids, attention_mask=right, pixel_values=case["pixel_values"], image_grid_thw=case["image_grid_thw"])
    with pytest.raises(ValueError, match="image"):
        m.logits(ids)  # image tokens but no pixels
    with pytest.raises(ValueError, match="grid"):
        m.logits(ids, pixel_values=case["pixel_values"])
    with pytest.raises(ValueError):  # grid describes fewer patches than given
        m.logits(ids, pixel_values=case["pixel_values"], image_grid_thw=torch.tensor([[1, 4, 4]]))
    with pytest.raises(ValueError, match="attention_mask"):
        m.logits(ids, attention_mask=mask[:, 1:])
    with pytest.raises(ValueError):
        m.logits(torch.zeros(1, 0, dtype=torch.long))


def test_kernels_backend_placement():
    where = placement("kernels")
    assert set(where) == set(MODEL_OPS) and set(where.values()) <= {"kernels", "reference"}
    ns = ops_for("kernels")
    import reference
    for name, side in where.items():
        if side == "reference":
            assert getattr(ns, name) is getattr(reference, name)
    assert set(placement("reference").values()) == {"reference"}
    assert ops_for("reference") is reference
    with pytest.raises(ValueError, match="backend"):
        ops_for("cuda")


# ------------------------------------------------------------------------------------------------ chat API

@pytest.fixture(scope="module")
def chat_model(tmp_path_factory):
    """model/tiny.py's checkpoint: real 248k vocabulary and token ids, so the processor path runs end to end."""
    from model.tiny import ensure_tiny_checkpoint
    return M.load(ensure_tiny_checkpoint(tmp_path_factory.mktemp("tiny_chat")), dtype=torch.float32)


def _image(seed, size):
    from PIL import Image
    g = torch.Generator().manual_seed(seed)
    return Image.fromarray(torch.randint(0, 256, (size[1], size[0], 3), generator=g, dtype=torch.uint8).numpy())


def test_generate_text_api(chat_model):
    m = chat_model
    img_a, img_b = _image(0, (64, 48)), _image(1, (40, 90))
    one = m.generate("What is this?", images=[img_a], max_new_tokens=6)
    assert isinstance(one, str)
    assert {"vision_ms", "prefill_ms", "ttft_ms", "decode_tokens", "decode_s"} <= set(m.last_timings)
    assert m.last_timings["vision_ms"] > 0 and 1 <= m.last_timings["decode_tokens"] <= 6
    # the same prompt as a chat with the image inside, or as a placeholder filled by `images`
    msgs = [{"role": "user", "content": [{"type": "image", "image": img_a}, {"type": "text", "text": "What is this?"}]}]
    assert m.generate(msgs, max_new_tokens=6) == one
    slots = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What is this?"}]}]
    assert m.generate(slots, images=[img_a], max_new_tokens=6) == one
    # streaming yields the same text in pieces
    pieces = list(m.generate("What is this?", images=[img_a], stream=True, max_new_tokens=6))
    assert "".join(pieces) == one
    # a batch of prompts with different images answers each as if alone (left padding is invisible)
    two = m.generate("Compare.", images=[img_b, img_a], max_new_tokens=6)
    assert m.generate(["What is this?", "Compare."], images=[[img_a], [img_b, img_a]], max_new_tokens=6) == [one, two]
    with pytest.raises(ValueError, match="one list per prompt"):
        m.generate(["a", "b"], images=[[img_a]], max_new_tokens=2)
    with pytest.raises(ValueError, match="stream"):
        m.generate(["a", "b"], stream=True, max_new_tokens=2)
