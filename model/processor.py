"""Images, videos and chat messages -> model inputs, the way HF's Qwen3.5 processor builds them.

Follows transformers 5.24 (docs/model.md section 2):
* images: `Qwen2VLImageProcessorPil` (the PIL backend): RGB, smart_resize to multiples of 32, PIL bicubic,
  x/255 in float64 then float32, (x - mean) / std in float32, the frame repeated to 2 temporal slices,
  rows in merge-block order, each row flattened as (C, T, 16, 16). pixel_values are bit-identical.
* videos: `Qwen3VLVideoProcessor`: a video file sampled at `fps` as HF samples it (model.video, PyAV), or
  frames as given (a list or a directory, already sampled at `fps`), padded to an even count
  with the last frame, a video smart_resize that budgets T*H*W, (x - 255*mean) / (255*std) in float32.
  HF resizes video frames with torchvision's tensor bicubic; here each frame goes through PIL bicubic like
  an image, so video pixels may differ from HF's by resize rounding. Grids, row order and prompt are the same.
* prompt: `Qwen3VLProcessor`: each <|image_pad|> becomes prod(grid_thw)/4 pads; each <|video_pad|> becomes
  one `<{t:.1f} seconds><|vision_start|><|video_pad|>*(h*w/4)<|vision_end|>` group per temporal patch (the
  chat template's own <|vision_start|>/<|vision_end|> around it stay, as in HF).
"""

from __future__ import annotations

import json
import math
import os
import re
from pathlib import Path

import numpy as np
import PIL.Image
import PIL.ImageOps
import torch

from .tokenizer import IMAGE_PAD, IM_END, IM_START, VIDEO_PAD, VISION_END, VISION_START, Tokenizer, load_tokenizer
from .video import VIDEO_SUFFIXES, SampledVideo, is_video_file, read_video

# Qwen3.5 preprocessor_config.json / video_preprocessor_config.json values (used when a file is absent).
PATCH_SIZE = 16
TEMPORAL_PATCH_SIZE = 2
MERGE_SIZE = 2
IMAGE_MIN_PIXELS = 256 * 256  # size.shortest_edge
IMAGE_MAX_PIXELS = 4096 * 4096  # size.longest_edge
VIDEO_MIN_PIXELS = 4096  # budget for T*H*W
VIDEO_MAX_PIXELS = 25165824
MEAN = (0.5, 0.5, 0.5)
STD = (0.5, 0.5, 0.5)
RESCALE = 1 / 255
MAX_ASPECT_RATIO = 200
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")


# --------------------------------------------------------------------------------------------- sizes

def smart_resize(height: int, width: int, factor: int = 32, min_pixels: int = IMAGE_MIN_PIXELS,
                 max_pixels: int = IMAGE_MAX_PIXELS) -> tuple[int, int]:
    """(h, w) multiples of `factor`, close to (height, width), with min_pixels <= h*w <= max_pixels."""
    _check_aspect(height, width)
    h = round(height / factor) * factor  # Python round: half to even, as HF
    w = round(width / factor) * factor
    if h * w > max_pixels:
        beta = math.sqrt(height * width / max_pixels)
        h = max(factor, math.floor(height / beta / factor) * factor)
        w = max(factor, math.floor(width / beta / factor) * factor)
    elif h * w < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        h = math.ceil(height * beta / factor) * factor
        w = math.ceil(width * beta / factor) * factor
    return h, w


def video_smart_resize(num_frames: int, height: int, width: int, temporal_factor: int = 2, factor: int = 32,
                       min_pixels: int = VIDEO_MIN_PIXELS, max_pixels: int = VIDEO_MAX_PIXELS) -> tuple[int, int]:
    """Frame (h, w) for a video: like smart_resize, but the pixel budget counts all frames (T*H*W)."""
    if num_frames < temporal_factor:
        raise ValueError(f"a video needs at least {temporal_factor} frames, got {num_frames}")
    if height < factor or width < factor:  # tiny frames: first scale up so the short side reaches `factor`
        scale = max(factor / height, factor / width)
        height, width = int(height * scale), int(width * scale)
    _check_aspect(height, width)
    h = round(height / factor) * factor
    w = round(width / factor) * factor
    t = round(num_frames / temporal_factor) * temporal_factor
    if t * h * w > max_pixels:
        beta = math.sqrt(num_frames * height * width / max_pixels)  # HF uses num_frames here, t above
        h = max(factor, math.floor(height / beta / factor) * factor)
        w = max(factor, math.floor(width / beta / factor) * factor)
    elif t * h * w < min_pixels:
        beta = math.sqrt(min_pixels / (num_frames * height * width))
        h = math.ceil(height * beta / factor) * factor
        w = math.ceil(width * beta / factor) * factor
    return h, w


def _check_aspect(height: int, width: int) -> None:
    if min(height, width) <= 0:
        raise ValueError(f"image has an empty side: {width}x{height} (WxH)")
    ratio = max(height, width) / min(height, width)
    if ratio > MAX_ASPECT_RATIO:
        raise ValueError(f"image aspect ratio must be at most {MAX_ASPECT_RATIO}, got {ratio:.1f} "
                         f"({width}x{height} WxH); crop or pad it first")


# --------------------------------------------------------------------------------------------- loading

def load_image(image) -> PIL.Image.Image:
    """An RGB PIL image from a PIL image, a file path, or a uint8 array (HxWx3, or HxW / HxWx1 grayscale).

    Same conversions as HF: a path is opened, EXIF-rotated and converted to RGB (transformers' load_image);
    a PIL image with transparency is composited onto white (transformers' convert_to_rgb).
    """
    if isinstance(image, (str, os.PathLike)):
        path = Path(image)
        if path.is_dir():
            raise ValueError(f"cannot read image {str(path)!r}: it is a directory, not an image file")
        if not path.is_file():
            raise ValueError(f"cannot read image {str(path)!r}: no such file")
        try:
            with PIL.Image.open(path) as im:
                return PIL.ImageOps.exif_transpose(im).convert("RGB")
        except (PIL.UnidentifiedImageError, OSError, ValueError) as e:
            raise ValueError(f"cannot read image {str(path)!r}: not a readable image file ({e})") from None
    if isinstance(image, PIL.Image.Image):
        if "A" in image.getbands() or image.info.get("transparency") is not None:
            rgba = image.convert("RGBA")
            white = PIL.Image.new("RGBA", rgba.size, (255, 255, 255, 255))
            return PIL.Image.alpha_composite(white, rgba).convert("RGB")
        return image.convert("RGB")
    if isinstance(image, np.ndarray):
        if image.dtype != np.uint8:
            raise ValueError(f"image array must be uint8, got {image.dtype}")
        if image.ndim == 3 and image.shape[2] == 1:
            image = image[:, :, 0]
        if not (image.ndim == 2 or (image.ndim == 3 and image.shape[2] == 3)):
            raise ValueError(f"image array must be HxWx3 (RGB) or HxW (grayscale), got shape {image.shape}; "
                             "pass images with alpha as PIL images")
        return PIL.Image.fromarray(np.ascontiguousarray(image)).convert("RGB")
    raise TypeError(f"image must be a PIL.Image, a path or a uint8 numpy array, got {type(image).__name__}")


def list_video_frames(directory) -> list[Path]:
    """The image files of a directory of video frames, sorted by name."""
    d = Path(directory)
    if d.is_file():
        raise ValueError(f"video {str(d)!r} is neither a directory of frames nor a video file "
                         f"({', '.join(VIDEO_SUFFIXES)})")
    if not d.is_dir():
        raise ValueError(f"video frames directory {str(d)!r} does not exist")
    frames = sorted(p for p in d.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not frames:
        raise ValueError(f"video frames directory {str(d)!r} has no image files ({', '.join(IMAGE_SUFFIXES)})")
    return frames


# --------------------------------------------------------------------------------------------- pixels

def patchify(frames: torch.Tensor, patch: int, merge: int, temporal: int) -> torch.Tensor:
    """[F, C, H, W] float frames (F a multiple of `temporal`) -> [F/T * H/p * W/p, C*T*p*p] rows.

    Row order: temporal patch, then merge blocks (block row, block col), then the 2x2 patches inside a
    block (row, col). Each row is one (C, T, p, p) cube flattened.
    """
    f, c, h, w = frames.shape
    gt, gh, gw = f // temporal, h // patch, w // patch
    x = frames.reshape(gt, temporal, c, gh // merge, merge, patch, gw // merge, merge, patch)
    # axes: 0 gt, 1 T, 2 C, 3 bh, 4 mh, 5 ph, 6 bw, 7 mw, 8 pw -> (gt, bh, bw, mh, mw, C, T, ph, pw)
    x = x.permute(0, 3, 6, 4, 7, 2, 1, 5, 8)
    return x.reshape(gt * gh * gw, c * temporal * patch * patch)


class Processor:
    """Qwen3.5 input processor: chat template, image/video pixels, placeholder expansion, batching."""

    def __init__(self, tokenizer: Tokenizer | None = None, *, patch_size: int = PATCH_SIZE,
                 temporal_patch_size: int = TEMPORAL_PATCH_SIZE, merge_size: int = MERGE_SIZE,
                 min_pixels: int = IMAGE_MIN_PIXELS, max_pixels: int = IMAGE_MAX_PIXELS,
                 image_mean=MEAN, image_std=STD, rescale_factor: float = RESCALE,
                 video_min_pixels: int = VIDEO_MIN_PIXELS, video_max_pixels: int = VIDEO_MAX_PIXELS,
                 video_mean=MEAN, video_std=STD):
        self.tokenizer = tokenizer if tokenizer is not None else load_tokenizer(None)
        self.patch_size, self.temporal_patch_size, self.merge_size = patch_size, temporal_patch_size, merge_size
        self.min_pixels, self.max_pixels = min_pixels, max_pixels
        self.image_mean, self.image_std, self.rescale_factor = tuple(image_mean), tuple(image_std), rescale_factor
        self.video_min_pixels, self.video_max_pixels = video_min_pixels, video_max_pixels
        self.video_mean, self.video_std = tuple(video_mean), tuple(video_std)
        tok = self.tokenizer
        self.image_token_id = tok.token_to_id(IMAGE_PAD)
        self.video_token_id = tok.token_to_id(VIDEO_PAD)
        self.vision_start_token_id = tok.token_to_id(VISION_START)
        self.vision_end_token_id = tok.token_to_id(VISION_END)
        self.pad_token_id = tok.pad_token_id
        self.eos_token_ids = tok.eos_token_ids

    @classmethod
    def from_pretrained(cls, checkpoint_dir: str | os.PathLike | None = None) -> "Processor":
        """Settings from the checkpoint's preprocessor_config.json / video_preprocessor_config.json and its
        tokenizer.json, each falling back to the Qwen3.5 defaults when absent. None: all defaults."""
        if checkpoint_dir is None:
            return cls()
        d = Path(checkpoint_dir)
        if not d.is_dir():
            raise ValueError(f"model directory {str(d)!r} does not exist")
        kw = {}
        image_cfg = _read_json(d / "preprocessor_config.json")
        size = image_cfg.get("size") or {}
        if "shortest_edge" in size:
            kw["min_pixels"] = size["shortest_edge"]
        if "longest_edge" in size:
            kw["max_pixels"] = size["longest_edge"]
        for key in ("patch_size", "temporal_patch_size", "merge_size", "image_mean", "image_std",
                    "rescale_factor", "min_pixels", "max_pixels"):  # legacy min/max_pixels win, as in HF
            if key in image_cfg:
                kw[key] = image_cfg[key]
        video_cfg = _read_json(d / "video_preprocessor_config.json")
        size = video_cfg.get("size") or {}
        for src, dst in (("shortest_edge", "video_min_pixels"), ("longest_edge", "video_max_pixels")):
            if src in size:
                kw[dst] = size[src]
        for src, dst in (("image_mean", "video_mean"), ("image_std", "video_std")):
            if src in video_cfg:
                kw[dst] = video_cfg[src]
        return cls(load_tokenizer(d), **kw)

    # ------------------------------------------------------------------------------------- chat

    def apply_chat_template(self, messages: list[dict], *, add_generation_prompt: bool = True,
                            enable_thinking: bool = False, add_vision_id: bool = False) -> str:
        """The Qwen3.5 chat prompt for `messages` (see `render_chat`)."""
        return render_chat(messages, add_generation_prompt=add_generation_prompt,
                           enable_thinking=enable_thinking, add_vision_id=add_vision_id)

    # ------------------------------------------------------------------------------------- pixels

    def preprocess_images(self, images) -> tuple[torch.Tensor, torch.Tensor]:
        """List of images -> (pixel_values float32 [sum t*h*w, C*T*p*p], image_grid_thw int64 [n, 3])."""
        rows, grids = [], []
        p, m, t = self.patch_size, self.merge_size, self.temporal_patch_size
        mean = torch.tensor(self.image_mean, dtype=torch.float32).view(-1, 1, 1)
        std = torch.tensor(self.image_std, dtype=torch.float32).view(-1, 1, 1)
        for image in images:
            img = load_image(image)
            h, w = smart_resize(img.height, img.width, p * m, self.min_pixels, self.max_pixels)
            x = _to_chw_uint8(img.resize((w, h), resample=PIL.Image.BICUBIC))
            x = (x.to(torch.float64) * self.rescale_factor).to(torch.float32)  # HF rescales in float64
            x = (x - mean) / std  # then normalises in float32
            rows.append(patchify(x.unsqueeze(0).expand(t, -1, -1, -1), p, m, t))
            grids.append([1, h // p, w // p])
        return torch.cat(rows), torch.tensor(grids, dtype=torch.int64)

    def preprocess_videos(self, videos, fps: float = 2.0):
        """List of videos (each a video file, a model.video.SampledVideo, a list of frames, or a directory of
        frame files) ->
        (pixel_values_videos float32 [rows, C*T*p*p], video_grid_thw int64 [n, 3], timestamps per video).

        A video file is decoded with PyAV and sampled at `fps` frames per second as HF's Qwen3-VL video
        processor samples it (model.video: frame budget 4..768); its frames are stamped index / video fps.
        Frames given as a list or a directory are taken as they are, as sampled at `fps`: frame i is at i / fps.
        Timestamps (seconds, one per temporal patch) are the mean time of the first and last frame of the patch.
        """
        if not fps or fps <= 0:
            raise ValueError(f"fps must be positive, got {fps}")
        rows, grids, stamps = [], [], []
        p, m, t = self.patch_size, self.merge_size, self.temporal_patch_size
        # HF's video processor fuses rescale into normalise: (x - 255*mean) / (255*std), float32.
        mean = (torch.tensor(self.video_mean, dtype=torch.float32) * (1.0 / self.rescale_factor)).view(-1, 1, 1)
        std = (torch.tensor(self.video_std, dtype=torch.float32) * (1.0 / self.rescale_factor)).view(-1, 1, 1)
        for vi, video in enumerate(videos):
            times = None
            if isinstance(video, (str, os.PathLike)) and not Path(video).is_dir() and is_video_file(video):
                video = read_video(video, fps)
            if isinstance(video, SampledVideo):  # a video file's frames, already sampled (model.video)
                frames, times = video.frames, video.times
            elif isinstance(video, (str, os.PathLike)):
                frames = list_video_frames(video)
            elif isinstance(video, (list, tuple)):
                frames = list(video)
            else:
                raise TypeError(f"video {vi} must be a video file, a list of frames or a directory of frame files, "
                                f"got {type(video).__name__}")
            frames = [load_image(f) for f in frames]
            if times is None:
                times = [i / fps for i in range(len(frames))]
            if len({f.size for f in frames}) > 1:
                raise ValueError(f"video {vi}: all frames must have the same size, got "
                                 f"{sorted({f.size for f in frames})} (WxH)")
            n = len(frames)
            h, w = video_smart_resize(n, frames[0].height, frames[0].width, t, p * m,
                                      self.video_min_pixels, self.video_max_pixels)
            x = torch.stack([_to_chw_uint8(f.resize((w, h), resample=PIL.Image.BICUBIC)) for f in frames])
            x = (x.to(torch.float32) - mean) / std
            pad = -n % t
            if pad:  # repeat the last frame up to a whole temporal patch
                x = torch.cat([x, x[-1:].expand(pad, -1, -1, -1)])
            rows.append(patchify(x, p, m, t))
            grids.append([(n + pad) // t, h // p, w // p])
            secs = times + [times[-1]] * pad
            stamps.append([(secs[i] + secs[i + t - 1]) / 2 for i in range(0, n + pad, t)])
        return torch.cat(rows), torch.tensor(grids, dtype=torch.int64), stamps

    # ------------------------------------------------------------------------------------- call

    def __call__(self, text: str | list[str], images=None, videos=None, *, padding_side: str = "left",
                 fps: float = 2.0) -> dict:
        """Tokenise prompt(s) that contain <|image_pad|> / <|video_pad|> placeholders (one per image / video,
        e.g. from `apply_chat_template`), expanding each to the number of vision tokens.

        images: a flat list of images in prompt order across the batch (PIL, path or uint8 array).
        videos: a flat list of videos, each a list of frames or a directory of frame files.
        Returns input_ids, attention_mask, mm_token_type_ids (0 text, 1 image, 2 video) as int64 [B, S],
        and pixel_values / image_grid_thw, pixel_values_videos / video_grid_thw (None when absent).
        """
        texts = [text] if isinstance(text, str) else list(text)
        if not texts or not all(isinstance(s, str) for s in texts):
            raise TypeError("text must be a str or a non-empty list of str")
        if padding_side not in ("left", "right"):
            raise ValueError(f"padding_side must be 'left' or 'right', got {padding_side!r}")
        images = _as_list(images, "images")
        videos = _as_list(videos, "videos")
        for name, token, items in (("images", IMAGE_PAD, images), ("videos", VIDEO_PAD, videos)):
            n_slots = sum(s.count(token) for s in texts)
            if n_slots != len(items):
                raise ValueError(f"the prompt has {n_slots} {token} placeholder(s) but {len(items)} {name} were "
                                 f"given; put one {VISION_START}{token}{VISION_END} in the text per item")

        out = {"pixel_values": None, "image_grid_thw": None, "pixel_values_videos": None, "video_grid_thw": None}
        merge_len = self.merge_size ** 2
        fill = {IMAGE_PAD: [], VIDEO_PAD: []}  # replacement strings, in prompt order
        if images:
            out["pixel_values"], out["image_grid_thw"] = self.preprocess_images(images)
            fill[IMAGE_PAD] = [IMAGE_PAD * (int(g.prod()) // merge_len) for g in out["image_grid_thw"]]
        if videos:
            out["pixel_values_videos"], out["video_grid_thw"], stamps = self.preprocess_videos(videos, fps)
            for g, secs in zip(out["video_grid_thw"].tolist(), stamps):
                frame_tokens = g[1] * g[2] // merge_len
                fill[VIDEO_PAD].append("".join(f"<{s:.1f} seconds>{VISION_START}{VIDEO_PAD * frame_tokens}{VISION_END}"
                                               for s in secs))

        pattern = re.compile(f"({re.escape(IMAGE_PAD)}|{re.escape(VIDEO_PAD)})")
        iters = {k: iter(v) for k, v in fill.items()}
        ids = []
        for s in texts:
            expanded = "".join(next(iters[piece]) if piece in iters else piece for piece in pattern.split(s))
            ids.append(self.tokenizer.encode(expanded))

        width = max(len(r) for r in ids)
        input_ids = torch.full((len(ids), width), self.pad_token_id, dtype=torch.int64)
        attention_mask = torch.zeros((len(ids), width), dtype=torch.int64)
        for b, r in enumerate(ids):
            span = slice(width - len(r), width) if padding_side == "left" else slice(0, len(r))
            input_ids[b, span] = torch.tensor(r, dtype=torch.int64)
            attention_mask[b, span] = 1
        mm = torch.zeros_like(input_ids)
        mm[(input_ids == self.image_token_id) & (attention_mask == 1)] = 1
        mm[(input_ids == self.video_token_id) & (attention_mask == 1)] = 2
        return {"input_ids": input_ids, "attention_mask": attention_mask, "mm_token_type_ids": mm, **out}

    def decode(self, ids, skip_special_tokens: bool = True) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=skip_special_tokens)

    def batch_decode(self, ids, skip_special_tokens: bool = True) -> list[str]:
        return [self.decode(r, skip_special_tokens) for r in ids]


# --------------------------------------------------------------------------------------------- chat

def render_chat(messages: list[dict], *, add_generation_prompt: bool = True, enable_thinking: bool = False,
                add_vision_id: bool = False) -> str:
    """Render `messages` in the Qwen3.5 chat format (no tool calling).

    messages: [{"role": "system" | "user" | "assistant", "content": str | list of items}], where an item is
    {"type": "text", "text": ...}, {"type": "image", ...} / {"image": ...} or {"type": "video", ...} /
    {"video": ...}. Each image renders as <|vision_start|><|image_pad|><|vision_end|> (video: <|video_pad|>).
    Assistant turns before the last user turn lose their <think> block; later ones keep it.
    With add_generation_prompt the assistant turn is opened; enable_thinking=False closes an empty <think>.
    """
    if not messages:
        raise ValueError("messages is empty")
    counts = {"image": 0, "video": 0}

    def content_of(msg, count: bool) -> str:
        content = msg.get("content")
        if content is None:
            return ""
        if isinstance(content, str):
            return content.strip()
        if not isinstance(content, (list, tuple)):
            raise ValueError(f"message content must be a str or a list of items, got {type(content).__name__}")
        parts = []
        for item in content:
            kind = _item_kind(item)
            if kind == "text":
                parts.append(item["text"])
                continue
            if msg.get("role") == "system":
                raise ValueError(f"a system message cannot contain {kind}s")
            if count:
                counts[kind] += 1
            if add_vision_id:
                parts.append(f"Picture {counts['image']}: " if kind == "image" else f"Video {counts['video']}: ")
            parts.append(f"{VISION_START}{IMAGE_PAD if kind == 'image' else VIDEO_PAD}{VISION_END}")
        return "".join(parts).strip()

    for i, msg in enumerate(messages):
        if not isinstance(msg, dict) or msg.get("role") not in ("system", "user", "assistant"):
            raise ValueError(f"messages[{i}] must be a dict with role 'system', 'user' or 'assistant', got {msg!r:.80}")
        if msg["role"] == "system" and i != 0:
            raise ValueError("a system message must come first")
    last_query = max((i for i, msg in enumerate(messages) if msg["role"] == "user"), default=None)
    if last_query is None:
        raise ValueError("messages has no user message")

    out = []
    for i, msg in enumerate(messages):
        role, content = msg["role"], content_of(msg, count=True)
        if role in ("system", "user"):
            out.append(f"{IM_START}{role}\n{content}{IM_END}\n")
            continue
        reasoning = msg.get("reasoning_content")
        if not isinstance(reasoning, str):
            reasoning = ""
            if "</think>" in content:
                reasoning = content.split("</think>")[0].rstrip("\n").split("<think>")[-1].lstrip("\n")
                content = content.split("</think>")[-1].lstrip("\n")
        if i > last_query:
            out.append(f"{IM_START}assistant\n<think>\n{reasoning.strip()}\n</think>\n\n{content}{IM_END}\n")
        else:
            out.append(f"{IM_START}assistant\n{content}{IM_END}\n")
    if add_generation_prompt:
        out.append(f"{IM_START}assistant\n" + ("<think>\n" if enable_thinking else "<think>\n\n</think>\n\n"))
    return "".join(out)


def collect_media(messages: list[dict]) -> tuple[list, list]:
    """The images and videos carried by message items ({"type": "image", "image": x} or {"image": x}),
    in prompt order. Items that name no media (e.g. {"type": "image"}) are skipped."""
    images, videos = [], []
    for msg in messages:
        content = msg.get("content")
        if isinstance(content, (list, tuple)):
            for item in content:
                kind = _item_kind(item)
                if kind != "text" and item.get(kind) is not None:
                    (images if kind == "image" else videos).append(item[kind])
    return images, videos


def _item_kind(item) -> str:
    if not isinstance(item, dict):
        raise ValueError(f"a content item must be a dict, got {type(item).__name__}")
    if "image" in item or "image_url" in item or item.get("type") == "image":
        return "image"
    if "video" in item or item.get("type") == "video":
        return "video"
    if "text" in item:
        return "text"
    raise ValueError(f"content item has no text, image or video: {item!r:.80}")


# --------------------------------------------------------------------------------------------- helpers

def _to_chw_uint8(img: PIL.Image.Image) -> torch.Tensor:
    return torch.from_numpy(np.asarray(img, dtype=np.uint8).copy()).permute(2, 0, 1)


def _as_list(x, name: str) -> list:
    if x is None:
        return []
    if isinstance(x, (list, tuple)):
        return list(x)
    if name == "images" and isinstance(x, (str, os.PathLike, PIL.Image.Image, np.ndarray)):
        return [x]  # a single image
    if name == "videos" and isinstance(x, (str, os.PathLike, SampledVideo)):
        return [x]  # a single video file or directory of frames
    raise TypeError(f"{name} must be a list, got {type(x).__name__}")


def _read_json(path: Path) -> dict:
    if not path.is_file():
        return {}
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"cannot read {path}: {e}") from None
