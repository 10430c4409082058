"""Inputs of the rope family (qkv_bias_rope, rope_index, mrope_cos_sin, apply_rope, ...): builders, strategies,
real shapes, bad inputs, peers. Found by name from kernels.registry."""

from __future__ import annotations

import torch
from hypothesis import strategies as st

from . import Bad, Case, act, dtypes, per_size, real_widths, rows, seeds, vec
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
    return per_size(("vit_hidden", "vit_heads"), lambda d, h: build_qkv_bias_rope(tokens, h, d // h, dtype, seed=d))


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
        Bad("too few pads", (ids, t([[1, 2, 4], [1, 2, 4]]), None, IMG, VID),
            "input_ids has 2 tokens with id 90.*needs 4", reference=True),
        Bad("no video pads", (ids, ig, t([[2, 2, 2]]), IMG, VID), "input_ids has 0 tokens with id 91.*needs 2",
            reference=True),
        # where the pads lie is checked by the kernel itself (device_check: the call launches)
        Bad("pads split by text", (t([1, IMG, 5, IMG, 2]), ig, None, IMG, VID), r"input_ids\[3\]", reference=True,
            device_check=True),
        Bad("image pad in a video frame", (t([VID, IMG, VID, IMG]), ig, t([[1, 2, 4]]), IMG, VID), r"input_ids\[2\]",
            reference=True, device_check=True),
    ]


# ------------------------------------------------------------------------------------------------ mrope_cos_sin
# (H4) Qwen3.5's layout (64 rotary dims, (11, 11, 10), interleaved) and others that fit both layouts
MROPE_LAYOUTS = ((64, (11, 11, 10), True), (64, (16, 8, 8), False), (16, (4, 2, 2), True), (8, (2, 1, 1), True),
                 (2, (1, 0, 0), True), (128, (24, 20, 20), True))


def build_mrope_cos_sin(S, rotary_dim, section, interleaved, dtype=torch.int64, seed=0, max_pos=262144,
                        theta=1e7, text=False) -> Case:
    g = torch.Generator().manual_seed(seed)
    pos = torch.randint(0, max_pos, (1 if text else 3, S), generator=g).to(dtype)
    pos = pos.expand(3, S) if text else pos  # text: one row seen three times (stride 0), as the model builds it
    r = rotary_dim // 2
    return Case("mrope_cos_sin", (pos, rotary_dim, theta, section, interleaved), (((S, r), torch.float32),) * 2,
                f"{S}x{rotary_dim}{'' if interleaved else '-chunked'}{'-text' if text else ''}")


@st.composite
def _mrope_cos_sin(draw, small):
    rd, sec, inter = draw(st.sampled_from(MROPE_LAYOUTS))
    return build_mrope_cos_sin(draw(rows(small)), rd, sec, inter, draw(st.sampled_from((torch.int32, torch.int64))),
                               draw(seeds), draw(st.sampled_from((50, 5000, 262144))),
                               draw(st.sampled_from((1e7, 1e4))), draw(st.booleans()))


def mrope_cos_sin_cases(small: bool = False):
    return _mrope_cos_sin(small)


def mrope_cos_sin_example(dtype=None) -> Case:
    return build_mrope_cos_sin(5, 64, (11, 11, 10), True)


def mrope_cos_sin_real(dtype=None, tokens: int = 4096) -> list[Case]:
    """Qwen3.5 (every size): a prompt of `tokens` positions, and one decode step of 64 rows."""
    return [build_mrope_cos_sin(tokens, 64, (11, 11, 10), True, max_pos=tokens),
            build_mrope_cos_sin(64, 64, (11, 11, 10), True, text=True)]


def mrope_cos_sin_bad(device) -> list[Bad]:
    pos = mrope_cos_sin_example().args[0].to(device)
    return [
        Bad("positions 2 rows", (pos[:2], 64, 1e7), "positions must have shape", reference=True),
        Bad("positions float", (pos.float(), 64, 1e7), "positions must have dtype", reference=True),
        Bad("positions 1-D", (pos[0], 64, 1e7), "positions must have 2 dimensions", reference=True),
        Bad("rotary_dim odd", (pos, 63, 1e7), "rotary_dim must be", reference=True),
        Bad("rotary_dim 0", (pos, 0, 1e7), "rotary_dim must be", reference=True),
        Bad("section sum", (pos, 64, 1e7, (11, 11, 11)), "section must be", reference=True),
        Bad("section layout", (pos, 8, 1e7, (0, 2, 2)), "does not fit", reference=True),
        Bad("theta 0", (pos, 64, 0.0), "theta must be positive", reference=True),
        Bad("out not a pair", (pos, 64, 1e7), "out must be a tuple of 2", kwargs={"out": torch.empty(5, 32)}),
    ]


def mrope_cos_sin_peers(args) -> dict:
    """torch eager: HF's formulation (axis gather, fp32 angle, cos/sin), the inv_freq table built outside."""
    pos, rd, theta, section, inter = args[:5]
    from reference.rope import inv_freq, mrope_axes
    axis = mrope_axes(rd // 2, section, inter).to(pos.device)
    inv = inv_freq(rd, theta, pos.device)

    def run():
        angle = pos[axis].T.float() * inv
        return angle.cos(), angle.sin()
    return {"torch": run}


# ------------------------------------------------------------------------------------------------ apply_rope
def build_apply_rope(S, H, d, r, dtype, seed=0, scale=1.0, max_pos=1000) -> Case:
    g = torch.Generator().manual_seed(seed)
    x = act(g, (S, H, d), dtype, scale)
    angle = torch.rand((S, r), generator=g) * max_pos
    return Case("apply_rope", (x, angle.cos(), angle.sin()), (((S, H, d), dtype),), f"{S}x{H}x{d}-r{r}")


_LM_HEAD_DIMS = (256, 128, 64, 72, 80, 6, 10, 250, 510, 512)


@st.composite
def _head(draw):
    """(d, r): the real 256 / 32, other head dims (odd multiples of 2 included), r from 0 (no rotation) to d/2."""
    d = draw(st.one_of(st.sampled_from(_LM_HEAD_DIMS), st.integers(1, 512)))
    r = draw(st.one_of(st.just(min(32, d // 2)), st.integers(0, d // 2)))
    return d, r


@st.composite
def _apply_rope(draw, small):
    d, r = draw(_head())
    return build_apply_rope(draw(rows(small)), draw(st.integers(1, 6)), d, r, draw(dtypes(small)), draw(seeds),
                            draw(st.sampled_from((0.1, 1.0, 10.0))))


def apply_rope_cases(small: bool = False):
    return _apply_rope(small)


def apply_rope_example(dtype=torch.bfloat16) -> Case:
    return build_apply_rope(3, 2, 256, 32, dtype)


def apply_rope_real(dtype=torch.bfloat16, tokens: int = 4096) -> list[Case]:
    """q heads of each size at `tokens` tokens (head_dim 256, 64 rotary dims)."""
    out = []
    for size, (h,) in real_widths("heads"):
        c = build_apply_rope(tokens, h, 256, 32, dtype, seed=h)
        c.label = f"{size}-q-{c.label}"
        out.append(c)
    return out


def apply_rope_bad(device) -> list[Bad]:
    x, cos, sin = apply_rope_example(torch.float32).on(device)
    return [
        Bad("x 2-D", (x[0], cos, sin), "x must have 3 dimensions", reference=True),
        Bad("x int", (x.int(), cos, sin), "x must have dtype", reference=True),
        Bad("x fp64", (x.double(), cos, sin), "x must have dtype"),
        Bad("x strided", (x.transpose(0, 1).contiguous().transpose(0, 1), cos, sin), "x must be contiguous"),
        Bad("head_dim 513", (torch.zeros(3, 1, 513, device=device), cos, sin), "head_dim 513 is above"),
        Bad("cos rows", (x, cos[:2], sin[:2]), "cos must have 3 rows", reference=True),
        Bad("cos too wide", (x[..., :60].contiguous(), cos, sin), "rotary dims but", reference=True),
        Bad("sin shape", (x, cos, sin[:, :4]), "sin must have shape", reference=True),
        Bad("cos fp16", (x, cos.half(), sin.half()), "cos must have dtype", reference=True),
        Bad("out dtype", (x, cos, sin), r"out\[0\] must have dtype", kwargs={"out": torch.empty_like(x).half()}),
    ]


def _eager_rope(t, c, s):
    """HF-style partial rotate-half in fp32 on the first 2r dims (c, s [S, 1, r])."""
    r = c.shape[-1]
    tf = t.float()
    x1, x2 = tf[..., :r], tf[..., r:2 * r]
    return torch.cat([x1 * c - x2 * s, x2 * c + x1 * s, tf[..., 2 * r:]], dim=-1).to(t.dtype)


def apply_rope_peers(args) -> dict:
    x, cos, sin = args[:3]
    c, s = cos[:, None], sin[:, None]
    return {"torch": lambda: _eager_rope(x, c, s)}


# ------------------------------------------------------------------------------------------------ qk_norm_rope
def build_qk_norm_rope(T, hq, hkv, d, r, dtype, seed=0, scale=1.0, eps=1e-6, cache=None, label="") -> Case:
    """cache: None, or (lengths [B] already cached, new tokens per row [B], capacity S): adds v, the NaN-filled caches
    (their written slots are checked by property_tests/test_rope.py), cu_seqlens and lengths as keyword args."""
    g = torch.Generator().manual_seed(seed)
    qg, k = act(g, (T, hq, 2 * d), dtype, scale), act(g, (T, hkv, d), dtype, scale)
    wq, wk = vec(g, d, dtype, 0.0, 0.3), vec(g, d, dtype, 0.0, 0.3)  # zero-centred (1 + w) weights
    angle = torch.rand((T, r), generator=g) * 1000
    kwargs = {}
    if cache is not None:
        cached, new, S = cache
        B = len(new)
        kwargs = dict(v=act(g, (T, hkv, d), dtype, scale),
                      k_cache=torch.full((B, S, hkv, d), float("nan"), dtype=dtype),
                      v_cache=torch.full((B, S, hkv, d), float("nan"), dtype=dtype),
                      cu_seqlens=torch.tensor([0] + list(new)).cumsum(0).to(torch.int32),
                      lengths=torch.tensor(cached, dtype=torch.int32))
    return Case("qk_norm_rope", (qg, k, wq, wk, angle.cos(), angle.sin(), eps),
                (((T, hq, d), dtype), ((T, hq, d), dtype), ((T, hkv, d), dtype)),
                label or f"{T}x{hq}:{hkv}x{d}-r{r}{'' if cache is None else '-cache'}", kwargs)


@st.composite
def _cache_rows(draw, small):
    """(cached lengths, new tokens, capacity S) that fit: rows of different lengths, empty rows, decode (1 each)."""
    B = draw(st.integers(1, 3 if small else 6))
    decode = draw(st.booleans())
    new = [1] * B if decode else draw(st.lists(st.integers(0, 5), min_size=B, max_size=B))
    S = draw(st.integers(max(max(new), 1), 12))
    cached = [draw(st.integers(0, S - n)) for n in new]
    return cached, new, S


@st.composite
def _qk_norm_rope(draw, small):
    d, r = draw(_head())
    hkv = draw(st.integers(1, 4))
    hq = hkv * draw(st.integers(1, 4))
    dtype, seed, scale = draw(dtypes(small)), draw(seeds), draw(st.sampled_from((0.1, 1.0, 10.0)))
    if draw(st.booleans()):
        cached, new, S = draw(_cache_rows(small))
        return build_qk_norm_rope(sum(new), hq, hkv, d, r, dtype, seed, scale, cache=(cached, new, S))
    return build_qk_norm_rope(draw(rows(small)), hq, hkv, d, r, dtype, seed, scale)


def qk_norm_rope_cases(small: bool = False):
    return _qk_norm_rope(small)


def qk_norm_rope_example(dtype=torch.bfloat16) -> Case:
    return build_qk_norm_rope(3, 4, 2, 256, 32, dtype, cache=([0, 2], [2, 1], 4))


def qk_norm_rope_real(dtype=torch.bfloat16, tokens: int = 4096) -> list[Case]:
    """Per size (head_dim 256, 64 rotary dims): a prefill of `tokens` tokens (no cache), and decode steps of 1, 8
    and 64 rows writing k/v into a 1024-slot cache at different lengths (host checks off, as in the model)."""
    out = []
    for size, (hq, hkv) in real_widths("heads", "kv_heads"):
        out.append(build_qk_norm_rope(tokens, hq, hkv, 256, 32, dtype, seed=hq, label=f"{size}-prefill-{tokens}"))
        for B in (1, 8, 64):
            c = build_qk_norm_rope(B, hq, hkv, 256, 32, dtype, seed=B, cache=([(977 * b) % 1000 for b in range(B)],
                                                                             [1] * B, 1024), label=f"{size}-decode-b{B}")
            c.kwargs["validate"] = False
            out.append(c)
    return out


def qk_norm_rope_bad(device) -> list[Bad]:
    c = qk_norm_rope_example(torch.float32)
    qg, k, wq, wk, cos, sin, eps = c.on(device)
    kw = c.kwargs_on(device)
    base = (qg, k, wq, wk, cos, sin, eps)

    def args(**ch):
        names = ("qg", "k", "q_weight", "k_weight", "cos", "sin", "eps")
        return tuple(ch.get(n, a) for n, a in zip(names, base))
    return [
        Bad("qg odd", args(qg=qg[..., :-1].contiguous()), "qg must have shape", reference=True),
        Bad("qg 2-D", args(qg=qg[0]), "qg must have 3 dimensions", reference=True),
        Bad("qg strided", args(qg=qg.transpose(0, 1).contiguous().transpose(0, 1)), "qg must be contiguous"),
        Bad("qg fp64", args(qg=qg.double()), "qg must have dtype"),
        Bad("k head_dim", args(k=k[..., :128].contiguous()), "k must have shape", reference=True),
        Bad("k tokens", args(k=k[:2]), "k must have shape", reference=True),
        Bad("k dtype", args(k=k.half()), "k must have dtype"),
        Bad("q_weight shape", args(q_weight=wq[:4]), "q_weight must have shape", reference=True),
        Bad("k_weight dtype", args(k_weight=wk.half()), "k_weight must have dtype"),
        Bad("cos rows", args(cos=cos[:2], sin=sin[:2]), "cos must have 3 rows", reference=True),
        Bad("cos too wide", args(cos=torch.zeros(3, 200, device=device), sin=torch.zeros(3, 200, device=device)),
            "rotary dims but", reference=True),
        Bad("eps negative", args(eps=-1.0), "eps must be", reference=True),
        Bad("head_dim 513", (torch.zeros(3, 1, 1026, device=device), torch.zeros(3, 1, 513, device=device),
                             torch.zeros(513, device=device), torch.zeros(513, device=device), cos, sin, eps),
            "head_dim 513 is above"),
        Bad("cache half given", base, "needs all of", kwargs={"v": kw["v"]}, reference=True),
        Bad("cache overflow", base, "cache capacity", kwargs={**kw, "lengths": kw["lengths"] + 2}, reference=True),
        Bad("k_cache heads", base, "k_cache must have shape", kwargs={**kw, "k_cache": kw["k_cache"][:, :, :1].contiguous()},
            reference=True),
        Bad("cu_seqlens rows", base, "cu_seqlens must have", kwargs={**kw, "cu_seqlens": kw["cu_seqlens"][:2]},
            reference=True),
        Bad("lengths float", base, "lengths must have dtype", kwargs={**kw, "lengths": kw["lengths"].float()},
            reference=True),
        Bad("out not a triple", base, "out must be a triple", kwargs={"out": (None, None)}),
    ]


def qk_norm_rope_peers(args, **kwargs) -> dict:
    """torch eager, the composition the model used: contiguous q/gate copies, HF's RMSNorm (fp32, (1 + w), rounded),
    rotate-half in fp32; for decode the cache rows written by index assignment (the model's old decode path)."""
    qg, k, wq, wk, cos, sin, eps = args[:7]
    d = k.shape[2]
    c, s = cos[:, None], sin[:, None]

    def norm(t, w):
        tf = t.float()
        return (tf * torch.rsqrt(tf.pow(2).mean(-1, keepdim=True) + eps) * (1.0 + w.float())).to(t.dtype)

    def run():
        q, gate = qg[..., :d].contiguous(), qg[..., d:].contiguous()
        return _eager_rope(norm(q, wq), c, s), gate, _eager_rope(norm(k, wk), c, s)
    return {"torch": run}
