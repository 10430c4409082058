"""Rotary position embeddings: the ViT's fused qkv bias + 2D RoPE, the LM's interleaved mRoPE, and mRoPE ids.

Every rotation is NeoX "rotate-half": with r = cos.shape[-1] frequencies, dim j (j < r) pairs with dim j + r:
    y[j]     = x[j] * cos[j] - x[j+r] * sin[j]
    y[j + r] = x[j+r] * cos[j] + x[j] * sin[j]
cos/sin tables are fp32 [rows, r] (not duplicated to 2r as HF does). Math is fp32 (fp64 for fp64 input) and
the result is cast once to the input dtype.

Angle precision: `inv_freq` is the fp32 table HF builds, 1 / theta ** (arange(0, d, 2) / d) in fp32, and the
angle is the fp32 product position * inv_freq. So the angle carries an error of about position * 1e-7 rad
(large at long context), exactly like HF; kernels should use this same table to agree with it.
"""

from __future__ import annotations

import torch

from ._checks import check_float, check_grid_thw, check_same_device, check_tensor
from .decode_attention import kv_cache_append
from .norms import rms_norm

__all__ = ["qkv_bias_rope", "mrope_cos_sin", "apply_rope", "rope_index", "qk_norm_rope"]

_INT_DTYPES = (torch.int32, torch.int64)
_TABLE_DTYPES = (torch.float32, torch.float64)


def inv_freq(dim: int, theta: float, device=None) -> torch.Tensor:
    """fp32 [dim/2] inverse frequencies 1 / theta ** (2j / dim), j = 0 .. dim/2 - 1 (HF's fp32 formula).

    Always built on the CPU (then moved to `device`) so the table is the same bits whatever the device.
    """
    if not isinstance(dim, int) or dim <= 0 or dim % 2:
        raise ValueError(f"rotary dim must be a positive even int, got {dim!r}")
    if not theta > 0:
        raise ValueError(f"theta must be positive, got {theta!r}")
    return (1.0 / (float(theta) ** (torch.arange(0, dim, 2, dtype=torch.float32) / dim))).to(device)


def _check_cos_sin(cos, sin, rows: int) -> int:
    """cos, sin: fp32/fp64 [rows, r], same shape. Returns r."""
    check_tensor("cos", cos, ndim=2, dtypes=_TABLE_DTYPES)
    check_tensor("sin", sin, shape=cos.shape, dtypes=_TABLE_DTYPES)
    if cos.shape[0] != rows:
        raise ValueError(f"cos must have {rows} rows (one per token), got shape {tuple(cos.shape)}")
    return cos.shape[1]


def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """NeoX rotate-half of x[..., 2r] by cos/sin[..., r] (broadcast); all in x's (compute) dtype."""
    r = cos.shape[-1]
    x1, x2 = x[..., :r], x[..., r:]
    return torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], dim=-1)


def qkv_bias_rope(qkv: torch.Tensor, bias: torch.Tensor | None, cos: torch.Tensor, sin: torch.Tensor,
                  num_heads: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """ViT attention input: split the fused qkv GEMM output, add its bias, rotate q and k over the full head.

    qkv:  [N, 3*H*hd] output of x @ W_qkv^T *without* bias; row layout [q (H heads) | k | v], head-major.
    bias: [3*H*hd] or None (no bias), same dtype as qkv.
    cos, sin: fp32 [N, hd/2] from `vision_rope_cos_sin`; rotate-half over the whole head (dim j pairs j+hd/2).
    num_heads: H. Any even hd is accepted here; the kernels support hd in {64, 72, 80, 128}.
    Returns q, k, v: each a contiguous [N, H, hd] in qkv.dtype.

    Rounding: (qkv + bias) and the rotation are done in fp32 and rounded once. HF rounds the biased GEMM
    output to the model dtype before rotating, so bf16 results can differ by one rounding.
    """
    check_float("qkv", qkv, ndim=2)
    if not isinstance(num_heads, int) or num_heads <= 0:
        raise ValueError(f"num_heads must be a positive int, got {num_heads!r}")
    n, width = qkv.shape
    if width % (3 * num_heads):
        raise ValueError(f"qkv width {width} must be a multiple of 3*num_heads={3 * num_heads}")
    head_dim = width // (3 * num_heads)
    if head_dim % 2:
        raise ValueError(f"head_dim = qkv width / (3*num_heads) = {head_dim} must be even")
    if bias is not None:
        check_tensor("bias", bias, shape=(width,), dtypes=(qkv.dtype,))
    if _check_cos_sin(cos, sin, n) != head_dim // 2:
        raise ValueError(f"cos must have shape ({n}, {head_dim // 2}) for head_dim={head_dim}, got {tuple(cos.shape)}")
    check_same_device(qkv=qkv, bias=bias, cos=cos, sin=sin)

    acc = torch.promote_types(qkv.dtype, torch.float32)
    x = qkv.to(acc, copy=True)  # a fresh buffer, so v never aliases qkv
    if bias is not None:
        x = x + bias.to(acc)
    q, k, v = x.reshape(n, 3, num_heads, head_dim).unbind(1)  # each [N, H, hd]
    cos_, sin_ = cos.to(acc)[:, None, :], sin.to(acc)[:, None, :]  # [N, 1, hd/2], broadcast over heads
    q, k = _rotate(q, cos_, sin_), _rotate(k, cos_, sin_)
    return tuple(t.to(qkv.dtype).contiguous() for t in (q, k, v))


def mrope_axes(r: int, section, interleaved: bool) -> torch.Tensor:
    """int64 [r]: the position axis (0 = T, 1 = H, 2 = W) of each of the r frequencies (see mrope_cos_sin);
    raises ValueError unless section is 3 non-negative ints summing to r that fit the layout."""
    section = tuple(section)
    if len(section) != 3 or any(not isinstance(s, int) or s < 0 for s in section) or sum(section) != r:
        raise ValueError(f"section must be 3 non-negative ints summing to rotary_dim/2={r}, got {section}")
    s_t, s_h, s_w = section
    j = torch.arange(r)
    if interleaved:
        axis = torch.zeros(r, dtype=torch.long)  # T by default
        axis[(j % 3 == 1) & (j < 3 * s_h)] = 1
        axis[(j % 3 == 2) & (j < 3 * s_w)] = 2
        if tuple(int((axis == a).sum()) for a in range(3)) != section:
            raise ValueError(f"section {section} does not fit the interleaved layout of {r} frequencies")
    else:
        axis = (j >= s_t).long() + (j >= s_t + s_h).long()
    return axis


def mrope_cos_sin(positions: torch.Tensor, rotary_dim: int, theta: float,
                  section=(11, 11, 10), interleaved: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """Multimodal RoPE tables: each frequency takes its position from one of the (T, H, W) axes.

    positions: int [3, S] (rows T, H, W; from `rope_index`, or one position repeated 3 times for text).
    rotary_dim: the rotated dims per head (64 for Qwen3.5 = 256 * 0.25); r = rotary_dim/2 frequencies.
    section: (sT, sH, sW), frequencies per axis, summing to r. Frequency j uses axis
      interleaved (Qwen3-VL / Qwen3.5): H if j % 3 == 1 and j < 3*sH, W if j % 3 == 2 and j < 3*sW, else T
                                        (THW THW ... THW T H for (11, 11, 10));
      chunked (Qwen2-VL / 2.5-VL):      T for j < sT, H for j < sT + sH, else W.
    Returns cos, sin: fp32 [S, r], angle[s, j] = positions[axis(j), s] * inv_freq[j].
    """
    check_tensor("positions", positions, ndim=2, dtypes=_INT_DTYPES)
    if positions.shape[0] != 3:
        raise ValueError(f"positions must have shape (3, S), got {tuple(positions.shape)}")
    if not isinstance(rotary_dim, int) or rotary_dim <= 0 or rotary_dim % 2:
        raise ValueError(f"rotary_dim must be a positive even int, got {rotary_dim!r}")
    r = rotary_dim // 2
    axis = mrope_axes(r, section, interleaved)
    pos = positions[axis.to(positions.device)]  # [r, S]: the position driving each frequency
    angle = pos.T.to(torch.float32) * inv_freq(rotary_dim, theta, positions.device)  # [S, r] fp32
    return angle.cos(), angle.sin()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Partial NeoX RoPE: rotate the first 2*r dims of every head, pass the rest through.

    x: [S, H, d] (q or k); cos, sin: fp32 [S, r] with 2*r <= d (Qwen3.5: r = 32, d = 256).
    Returns [S, H, d] in x.dtype. HF casts cos/sin to the model dtype first; we keep them fp32.
    """
    check_float("x", x, ndim=3)
    r = _check_cos_sin(cos, sin, x.shape[0])
    if 2 * r > x.shape[2]:
        raise ValueError(f"cos covers 2*{r} rotary dims but x has head_dim {x.shape[2]}")
    check_same_device(x=x, cos=cos, sin=sin)
    acc = torch.promote_types(x.dtype, torch.float32)
    xa = x.to(acc)
    rotated = _rotate(xa[..., : 2 * r], cos.to(acc)[:, None, :], sin.to(acc)[:, None, :])
    return torch.cat([rotated, xa[..., 2 * r:]], dim=-1).to(x.dtype)


def rope_index(input_ids: torch.Tensor, image_grid_thw: torch.Tensor | None, video_grid_thw: torch.Tensor | None,
               image_token_id: int = 248056, video_token_id: int = 248057,
               merge: int = 2) -> tuple[torch.Tensor, int]:
    """Qwen3.5 mRoPE position ids (T, H, W) for one sequence.

    input_ids: int [S]. image_grid_thw / video_grid_thw: int [n, 3] pre-merge patch grids, or None.
    Walking the sequence with a running position `cur` (starting at 0):
      * a text token (anything but the two pad ids; <|vision_start|>/<|vision_end|> included) gets
        (cur, cur, cur), then cur += 1;
      * a pad token starts the next grid of its kind, which covers the next t*(h/merge)*(w/merge) tokens
        (all must be that pad id) in raster order of the merged grid: token (ti, y, x) gets
        (cur + ti, cur + y, cur + x); then cur += max(h, w) / merge.
    Videos are first split into t grids with t=1 (one per temporal patch; the prompt separates the frames
    with timestamp text), so a frame is positioned like an image. Unlike HF, which groups runs of equal token
    type, two grids back to back with no text between them are still split correctly.
    Returns (positions int64 [3, S], delta) with delta = max(positions) + 1 - S: during decode the token at
    cache position p gets p + delta on all three axes.
    """
    check_tensor("input_ids", input_ids, ndim=1, dtypes=_INT_DTYPES)
    if input_ids.shape[0] == 0:
        raise ValueError("input_ids must not be empty")
    if not isinstance(merge, int) or merge <= 0:
        raise ValueError(f"merge must be a positive int, got {merge!r}")
    grids = {}  # pad token id -> (name, list of (t, h, w))
    for name, tok, g, split_t in (("image_grid_thw", image_token_id, image_grid_thw, False),
                                  ("video_grid_thw", video_token_id, video_grid_thw, True)):
        thw = [] if g is None else check_grid_thw(g, name, merge).tolist()
        if split_t:
            thw = [(1, h, w) for t, h, w in thw for _ in range(t)]
        grids[tok] = (name, thw)

    ids = input_ids.tolist()
    for tok, (name, thw) in grids.items():
        have = sum(i == tok for i in ids)
        need = sum(t * h * w for t, h, w in thw) // merge**2
        if have != need:
            raise ValueError(f"input_ids has {have} tokens with id {tok}, but {name} needs {need}")

    pieces, cur, i, used = [], 0, 0, {tok: 0 for tok in grids}
    while i < len(ids):
        tok = ids[i]
        if tok in grids:
            name, thw = grids[tok]
            t, h, w = thw[used[tok]]
            gh, gw = h // merge, w // merge
            n = t * gh * gw
            if ids[i:i + n] != [tok] * n:
                raise ValueError(f"{name} entry {used[tok]} (after splitting videos into frames) needs {n} "
                                 f"consecutive tokens with id {tok} starting at input_ids[{i}]")
            ti, y, x = torch.meshgrid(torch.arange(t), torch.arange(gh), torch.arange(gw), indexing="ij")
            pieces.append(torch.stack([ti, y, x]).reshape(3, n) + cur)
            cur += max(gh, gw)
            used[tok] += 1
        else:
            n = 1
            while i + n < len(ids) and ids[i + n] not in grids:
                n += 1
            pieces.append(torch.arange(cur, cur + n).expand(3, n))
            cur += n
        i += n
    positions = torch.cat(pieces, dim=1).to(device=input_ids.device, dtype=torch.int64)
    return positions, int(positions.max()) + 1 - len(ids)


def qk_norm_rope(qg: torch.Tensor, k: torch.Tensor, q_weight: torch.Tensor, k_weight: torch.Tensor,
                 cos: torch.Tensor, sin: torch.Tensor, eps: float = 1e-6, *, v: torch.Tensor | None = None,
                 k_cache: torch.Tensor | None = None, v_cache: torch.Tensor | None = None,
                 cu_seqlens: torch.Tensor | None = None, lengths: torch.Tensor | None = None,
                 validate: bool = True) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The gated attention's input side: q/gate split, per-head q and k RMSNorm, partial RoPE, optional cache write.

    qg: [T, Hq, 2d], q_proj's output viewed per head as [q | gate]; k: [T, Hkv, d], k_proj's output.
    q_weight, k_weight: [d], zero-centred RMSNorm weights (scale 1 + w); eps: the RMSNorm epsilon.
    cos, sin: fp32 [T, r] (from mrope_cos_sin), 2r <= d: the first 2r dims of every head are rotated.
    Composed from the ops the model used before (and HF's roundings):
        q = apply_rope(rms_norm(qg[..., :d], q_weight, eps), cos, sin)    (rms_norm rounds to qg.dtype first)
        k = apply_rope(rms_norm(k, k_weight, eps), cos, sin)
        gate = qg[..., d:]                                                  a view of qg, no copy
    With k_cache, v_cache [B, S, Hkv, d], v [T, Hkv, d], cu_seqlens int [B+1] and lengths int [B] (all or none),
    the normed and rotated k and v of sequence b's tokens are also written to cache slots lengths[b] + i, as
    kv_cache_append(k, v, k_cache, v_cache, cu_seqlens, lengths) does (decode: cu_seqlens = arange(B+1)). Overflow
    (lengths[b] + new tokens > S): the reference raises ValueError; the kernel drops writes past slot S-1 (it cannot
    read lengths on the host under a CUDA graph), so callers check capacity where they know the lengths.
    validate: a kernel hint (False: skip the host checks that read cu_seqlens and lengths); the reference checks.
    Returns (q [T, Hq, d], gate [T, Hq, d] (strided view of qg), k [T, Hkv, d]); q and k in their inputs' dtypes.
    """
    check_float("qg", qg, ndim=3)
    check_float("k", k, ndim=3)
    T, Hq, d2 = qg.shape
    if d2 % 2:
        raise ValueError(f"qg must have shape (T, Hq, 2*head_dim), got {tuple(qg.shape)} (odd last dim)")
    d = d2 // 2
    check_tensor("k", k, shape=(T, None, d))
    check_tensor("q_weight", q_weight, shape=(d,))
    check_tensor("k_weight", k_weight, shape=(d,))
    if 2 * _check_cos_sin(cos, sin, T) > d:
        raise ValueError(f"cos covers 2*{cos.shape[1]} rotary dims but the head_dim is {d}")
    cache = (v, k_cache, v_cache, cu_seqlens, lengths)
    if any(t is not None for t in cache) and any(t is None for t in cache):
        raise ValueError("the cache write needs all of v, k_cache, v_cache, cu_seqlens, lengths (or none of them)")
    check_same_device(qg=qg, k=k, q_weight=q_weight, k_weight=k_weight, cos=cos, sin=sin)
    q = apply_rope(rms_norm(qg[..., :d], q_weight, eps), cos, sin)
    k = apply_rope(rms_norm(k, k_weight, eps), cos, sin)
    if k_cache is not None:
        kv_cache_append(k, v, k_cache, v_cache, cu_seqlens, lengths)
    return q, qg[..., d:], k
