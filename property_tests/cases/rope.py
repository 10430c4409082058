"""Inputs of the rope family (qkv_bias_rope, rope_index, mrope_cos_sin, apply_rope, ...): builders, strategies,
real shapes, bad inputs, peers. Found by name from kernels.registry."""

from __future__ import annotations

import torch
from hypothesis import strategies as st

from . import Bad, Case, act, dtypes, real_widths, rows, seeds, vec
from .vision import grid_rows

HEAD_DIMS = (64, 72, 80, 128)


# ------------------------------------------------------------------------------------------------ qkv_bias_rope
def build_qkv_bias_rope(n, heads, hd, dtype, seed=0, scale=1.0, with_bias=True, max_pos=100) -> Case:
    g = torch.Generator().manual_seed(seed)
    width = 3 * heads * hd
    qkv = act(g, (n, width), dtype, scale)
    bias = vec(g, width, dtype, 0.0, scale) if with_bias else None
    angle = torch.rand((n, hd // 2), generator=g) * max_pos  # fp32 angles, like vision_rope_cos_sin
    return Case("qkv_bias_rope", (qkv, bias, angle.cos(), angle.sin(), heads),
                (((n, heads, hd), dtype),) * 3, f"{n}x{heads}x{hd}")


@st.composite
def _qkv_bias_rope(draw, small):
    return build_qkv_bias_rope(draw(rows(small)), draw(st.integers(1, 16)), draw(st.sampled_from(HEAD_DIMS)),
                               draw(dtypes(small)), draw(seeds), draw(st.sampled_from((0.1, 1.0, 10.0))),
                               with_bias=draw(st.sampled_from((True, True, False))))


def qkv_bias_rope_cases(small: bool = False):
    return _qkv_bias_rope(small)


def qkv_bias_rope_example(dtype=torch.bfloat16) -> Case:
    return build_qkv_bias_rope(3, 2, 64, dtype)


def qkv_bias_rope_real(dtype=torch.bfloat16, tokens: int = 4096) -> list[Case]:
    out = []
    for size, (d, h) in real_widths("vit_hidden", "vit_heads"):
        c = build_qkv_bias_rope(tokens, h, d // h, dtype, seed=d)
        c.label = f"{size}-{c.label}"
        out.append(c)
    return out


def qkv_bias_rope_bad(device) -> list[Bad]:
    qkv, bias, cos, sin, heads = qkv_bias_rope_example().on(device)
    bad = [
        Bad("bias shape", (qkv, bias[:-3], cos, sin, heads), "bias must have shape"),
        Bad("cos shape", (qkv, bias, cos[:, :-1].contiguous(), sin, heads), "cos must have shape"),
        Bad("sin dtype", (qkv, bias, cos, sin.double(), heads), "sin must have dtype"),
        Bad("heads do not divide", (qkv, bias, cos, sin, 5), "qkv width"),
        Bad("heads 0", (qkv, bias, cos, sin, 0), "num_heads must be"),
        Bad("qkv fp64", (qkv.double(), bias, cos, sin, heads), "qkv must have dtype"),
        Bad("qkv int", (qkv.int(), bias, cos, sin, heads), "qkv must have dtype"),
        Bad("qkv 1-D", (qkv.reshape(-1), bias, cos, sin, heads), "qkv must have 2 dimensions"),
        Bad("qkv strided", (qkv.t().contiguous().t(), bias, cos, sin, heads), "qkv must be contiguous"),
        Bad("out not a triple", (qkv, bias, cos, sin, heads), "out must be a",
            kwargs={"out": torch.empty(3, 2, 64, dtype=qkv.dtype, device=device)}),
    ]
    for hd in (32, 96, 66):  # head dims without an instantiation
        a = build_qkv_bias_rope(3, 2, hd, torch.bfloat16).on(device)
        bad.append(Bad(f"head_dim {hd}", a, f"head_dim {hd} .* is not supported"))
    return bad


def _rotate_half(t):
    h = t.shape[-1] // 2
    return torch.cat([-t[..., h:], t[..., :h]], dim=-1)


def qkv_bias_rope_peers(args) -> dict:
    """HF's formulation; the full cos/sin is built once per forward (outside the timed call), as HF does."""
    qkv, bias, cos, sin, heads = args
    n, hd = qkv.shape[0], qkv.shape[1] // (3 * heads)
    c2, s2 = torch.cat([cos, cos], -1)[:, None], torch.cat([sin, sin], -1)[:, None]

    def run():
        q, k, v = (qkv + bias).view(n, 3, heads, hd).unbind(1)
        rot = [(t.float() * c2 + _rotate_half(t.float()) * s2).to(qkv.dtype) for t in (q, k)]
        return rot[0], rot[1], v.contiguous()
    return {"torch": run}


# ------------------------------------------------------------------------------------------------ rope_index
IMG, VID, VS, VE = 90, 91, 80, 81  # small ids: pads, vision start/end (the real ones are 248056/7, 248053/4)


@st.composite
def prompts(draw):
    """(input_ids, image_grid_thw or None, video_grid_thw or None) as the processor lays them out: text runs,
    images (<vs> pads <ve>), videos with one <vs> frame <ve> group per temporal patch behind a timestamp
    token, and sometimes two grids back to back with no text between them."""
    ids, images, videos = [], [], []

    def text(k):
        ids.extend(draw(st.lists(st.integers(0, 79), min_size=k, max_size=k + 4)))

    text(0)
    for _ in range(draw(st.integers(0, 4))):
        kind = draw(st.sampled_from(("image", "video", "image_tight")))
        t, h, w = draw(grid_rows(8, 3))
        if kind == "video":
            videos.append((t, h, w))
            for _ in range(t):
                ids.extend([7, VS] + [VID] * (h * w // 4) + [VE])  # 7: a timestamp token
        else:
            images.append((1, h, w))
            ids.extend(([VS] if kind == "image" else []) + [IMG] * (h * w // 4) + ([VE] if kind == "image" else []))
        text(0)
    if not ids:
        ids = [1]
    dtype = draw(st.sampled_from((torch.int32, torch.int64)))
    grid = lambda rows: torch.tensor(rows, dtype=draw(st.sampled_from((torch.int32, torch.int64)))) if rows else None  # noqa: E731
    return torch.tensor(ids, dtype=dtype), grid(images), grid(videos)


def build_rope_index(ids, image_grid, video_grid) -> Case:
    return Case("rope_index", (ids, image_grid, video_grid, IMG, VID), (((3, ids.shape[0]), torch.int64),),
                f"S={ids.shape[0]}")


@st.composite
def _rope_index(draw, small):
    return build_rope_index(*draw(prompts()))


def rope_index_cases(small: bool = False):
    return _rope_index(small)


def rope_index_example(dtype=None) -> Case:
    return build_rope_index(torch.tensor([1, VS, IMG, IMG, VE, 2]), torch.tensor([[1, 2, 4]]), None)


def rope_index_real(dtype=None, tokens: int = 4096) -> list[Case]:
    """A prompt of text around one image of about `tokens` patches (tokens / 4 pad tokens)."""
    side = max(2, 2 * round(tokens ** 0.5 / 2))
    ids = torch.tensor([1] * 20 + [VS] + [IMG] * (side * side // 4) + [VE] + [2] * 30)
    return [build_rope_index(ids, torch.tensor([[1, side, side]]), None)]


def rope_index_bad(device) -> list[Bad]:
    ig = torch.tensor([[1, 2, 4]], device=device)  # 2 image tokens
    ids = torch.tensor([1, IMG, IMG, 2], device=device)
    t = lambda rows: torch.tensor(rows, device=device)  # noqa: E731
    return [
        Bad("ids 2-D", (ids[None], ig, None, IMG, VID), "input_ids.*dimensions", reference=True),
        Bad("ids float", (ids.float(), ig, None, IMG, VID), "input_ids.*dtype", reference=True),
        Bad("ids empty", (ids[:0], ig, None, IMG, VID), "input_ids.*empty", reference=True),
        Bad("grid not mergeable", (ids, t([[1, 3, 4]]), None, IMG, VID), "image_grid_thw.*multiples", reference=True),
        Bad("video grid shape", (ids, ig, t([[1, 2]]), IMG, VID), "video_grid_thw", reference=True),
        Bad("merge 0", (ids, ig, None, IMG, VID), "merge", kwargs={"merge": 0}, reference=True),
        Bad("same pad ids", (ids, ig, None, IMG, IMG), "differ"),
        Bad("too few pads", (ids, t([[1, 2, 4], [1, 2, 4]]), None, IMG, VID), "input_ids has 2 tokens with id 90.*needs 4",
            reference=True),
        Bad("no video pads", (ids, ig, t([[2, 2, 2]]), IMG, VID), "input_ids has 0 tokens with id 91.*needs 2",
            reference=True),
        Bad("pads split by text", (t([1, IMG, 5, IMG, 2]), ig, None, IMG, VID), r"input_ids\[3\]", reference=True),
        Bad("image pad in a video frame", (t([VID, IMG, VID, IMG]), ig, t([[1, 2, 4]]), IMG, VID), r"input_ids\[2\]",
            reference=True),
    ]
