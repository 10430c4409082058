"""Rotary embeddings (NVRTC, kernels/cuda/rope.cu), with the signatures of reference/rope.py.

qkv_bias_rope (vision): writes q, k, v as contiguous [N, H, hd], the layout the attention kernel reads.
qk_norm_rope (language model): q/gate split + (1 + w) q/k RMSNorm + partial RoPE (+ KV-cache write) in one pass;
apply_rope: the rotation alone; mrope_cos_sin: the mRoPE tables from the position ids on the GPU;
rope_index (Numba, kernels/numba/rope.py): the mRoPE position ids of a prompt.
"""

from __future__ import annotations

import numpy as np
import torch

from reference._checks import check_grid_thw, check_tensor
from reference.decode_attention import check_append_fits
from reference.rope import inv_freq, mrope_axes

from .runtime import device as _dev
from .runtime.checks import check_cuda, check_input, check_out, check_same_dtype
from .runtime.dispatch import CTYPES, NvrtcSource, cbool, ceil_div, split_row
from .runtime.nvrtc import f32, i32, i64

__all__ = ["qkv_bias_rope", "qk_norm_rope", "apply_rope", "mrope_cos_sin", "rope_index"]

HEAD_DIMS = (64, 72, 80, 128)
# (VP, VV): elements per pair access (must divide hd/2) and per v access (must divide hd); (1, 1) when a
# pointer is not 16-byte aligned. For 16-bit types hd=72 has hd/2 = 36, so VP is 4 there.
_VARIANTS = {torch.float32: ((4, 4), (1, 1)), torch.float16: ((8, 8), (4, 8), (1, 1)),
             torch.bfloat16: ((8, 8), (4, 8), (1, 1))}
_ROWS_PER_THREAD = 4  # ROWS in the kernel


def _expr(dtype, vp: int, vv: int, has_bias: bool) -> str:
    return f"rope::qkv_bias_rope_kernel<{CTYPES[dtype]}, {vp}, {vv}, {cbool(has_bias)}>"


_VISION_EXPRS = tuple(_expr(dt, vp, vv, b) for dt, vs in _VARIANTS.items() for vp, vv in vs for b in (True, False))


def qkv_bias_rope(qkv: torch.Tensor, bias: torch.Tensor | None, cos: torch.Tensor, sin: torch.Tensor,
                  num_heads: int, *, out: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None):
    """qkv [N, 3*H*hd] (+ bias [3*H*hd] or None) -> (q, k, v) each [N, H, hd]; NeoX rotary on q and k with
    cos, sin fp32 [N, hd/2]; hd in (64, 72, 80, 128)."""
    check_input("qkv", qkv, ndim=2)
    if isinstance(num_heads, bool) or not isinstance(num_heads, int) or num_heads < 1:
        raise ValueError(f"num_heads must be a positive int, got {num_heads!r}")
    n, width = qkv.shape
    if width % (3 * num_heads):
        raise ValueError(f"qkv width {width} is not 3 * num_heads ({num_heads}) * head_dim")
    hd = width // (3 * num_heads)
    if hd not in HEAD_DIMS:
        raise ValueError(f"head_dim {hd} (= qkv width {width} / (3 * {num_heads} heads)) is not supported; "
                         f"kernels are built for {HEAD_DIMS}")
    if bias is not None:
        check_input("bias", bias, shape=(width,))
    check_input("cos", cos, shape=(n, hd // 2), dtypes=(torch.float32,))
    check_input("sin", sin, shape=(n, hd // 2), dtypes=(torch.float32,))
    check_same_dtype(qkv.dtype, bias=bias)
    shape = (n, num_heads, hd)
    if out is None:
        q, k, v = (torch.empty(shape, dtype=qkv.dtype, device=qkv.device) for _ in range(3))
    else:
        if not isinstance(out, (tuple, list)) or len(out) != 3:
            raise ValueError("out must be a triple (q, k, v)")
        q, k, v = (check_out(f"out[{i}]", t, shape, qkv.dtype) for i, t in enumerate(out))
    device = check_cuda(qkv=qkv, bias=bias, cos=cos, sin=sin, q=q, k=k, v=v)
    if n == 0:
        return q, k, v
    aligned = all(t.data_ptr() % 16 == 0 for t in (qkv, bias, cos, sin, q, k, v) if t is not None)
    vp, vv = next(((vp, vv) for vp, vv in _VARIANTS[qkv.dtype]
                   if (vp, vv) == (1, 1) or (aligned and (hd // 2) % vp == 0 and hd % vv == 0)))
    items = 2 * num_heads * (hd // 2) // vp + num_heads * hd // vv
    ctas, block = split_row(items)
    grid = (ctas, min(ceil_div(n, _ROWS_PER_THREAD), 65535), 1)
    SOURCE.launch(device, _expr(qkv.dtype, vp, vv, bias is not None), grid, (block, 1, 1),
                  qkv.data_ptr(), 0 if bias is None else bias.data_ptr(), cos.data_ptr(), sin.data_ptr(),
                  q.data_ptr(), k.data_ptr(), v.data_ptr(), i32(n), i32(num_heads), i32(hd))
    return q, k, v


# ---------------------------------------------------------------------------------------------------------------
# language model: qk_norm_rope (q/gate split + q/k RMSNorm + partial RoPE + optional KV-cache write), apply_rope,
# mrope_cos_sin
# ---------------------------------------------------------------------------------------------------------------
_MAX_VEC = {torch.float32: 4, torch.float16: 8, torch.bfloat16: 8}
_EPL = (1, 2, 4, 8, 16)  # elements per lane: a warp covers a head of up to 32 * 16 = 512 dims
MAX_HEAD_DIM = 32 * _EPL[-1]
_WARPS, _IPW = 4, 4  # warps per CTA (as in the source) and heads per warp (IPW: the group sharing cos/sin)
_DECODE_TOKENS = 64  # calls of at most this many tokens (decode) take one head a warp


def _qk_variants(dtype) -> tuple[tuple[int, int], ...]:
    """(VEC, NV) pairs: for each elements-per-lane E, the widest vector and, as the fallback, scalars."""
    out = []
    for e in _EPL:
        for vec in (min(e, _MAX_VEC[dtype]), 1):
            if (vec, e // vec) not in out:
                out.append((vec, e // vec))
    return tuple(out)


def _qk_expr(dtype, vec: int, nv: int, ipw: int = 4, lean: bool = True, minb: int = 0) -> str:
    tail = f", {minb}" if minb else ""
    return f"rope::qk_norm_rope_kernel<{CTYPES[dtype]}, {vec}, {nv}, {ipw}, {cbool(lean)}{tail}>"


def _staged_expr(dtype) -> str:
    return f"rope::qk_norm_rope_staged<{CTYPES[dtype]}>"


QK_TRIALS = (1, 2, 8)  # other heads-per-warp builds of the 16-bit d <= 256 variant, for timing trials
# (heads per item, ring depth[, L2 prefetch bytes, streaming stores]) builds of the streaming prefill kernel; the
# last four are timing trials (rope.cu qk_norm_rope_stream: PF, CS). H200 (round r2, tools/rope_conv1d_ab.py, 16k
# tokens, 8 / 16 / 24 heads): PF 256 / 128 and CS stores gain nothing (apply_rope (4, 3): 41.6 / 76.3 / 113.4 us; PF
# 256 41.7 / 77.5 / 113.8, PF 128 41.3 / 77.3 / 113.1, CS 42.0 / 78.2 / 115.2)
STREAM_BUILDS = ((4, 3), (2, 4), (4, 4), (4, 2), (4, 3, 256, False), (4, 3, 128, False), (4, 3, 0, True))
LEAN_MINB_TRIALS = (4, 5, 8)  # register-budget trials of the lean 4-heads-a-warp build (CTAs an SM; the rule: 6)
# the prefill calls' budget (0: the rule; else one of LEAN_MINB_TRIALS). H200 (round s3r2), 16k tokens: 5 CTAs an SM
# (94 registers, no spill) 60.7 / 105.6 / 146.8 us at 8:2 / 16:4 / 24:4 heads = 68 / 78 / 78 % of copy, the rule's
# 6 (80 registers + 24 B spill) 60.4 / 115.8 / 160.4 us; 8 (72 B spill) 53-57 %
LEAN_MINB = 5


def _stream_expr(dtype, ipw: int, stages: int, pf: int = 0, cs: bool = False) -> str:
    tail = f", {pf}, {cbool(cs)}" if pf or cs else ""
    return f"rope::qk_norm_rope_stream<{CTYPES[dtype]}, {ipw}, {stages}{tail}>"


SOURCE = NvrtcSource("rope.cu", _VISION_EXPRS + tuple(_qk_expr(dt, v, n, _IPW, lean) for dt in _MAX_VEC
                                                      for v, n in _qk_variants(dt) for lean in (True, False))
                      + tuple(_qk_expr(dt, 8, 1, i, lean) for dt in (torch.float16, torch.bfloat16) for i in QK_TRIALS
                              for lean in (True, False))
                      + tuple(_qk_expr(dt, 8, 1, _IPW, True, m) for dt in (torch.float16, torch.bfloat16)
                              for m in LEAN_MINB_TRIALS)
                      + tuple(_staged_expr(dt) for dt in (torch.float16, torch.bfloat16))
                      + tuple(_stream_expr(dt, *b) for dt in (torch.float16, torch.bfloat16)
                              for b in STREAM_BUILDS)
                      + ("rope::mrope_cos_sin_kernel",))


def _pick_qk(dtype, d: int, *tensors) -> tuple[int, int]:
    e = next(e for e in _EPL if 32 * e >= d)
    vec = min(e, _MAX_VEC[dtype])
    if d % vec or any(t is not None and t.data_ptr() % (vec * dtype.itemsize) for t in tensors):
        vec = 1
    return vec, e // vec


def _check_tables(cos, sin, rows: int, d: int) -> int:
    """cos, sin fp32 contiguous [rows, r] with 2r <= d; returns r."""
    check_input("cos", cos, ndim=2, dtypes=(torch.float32,))
    check_input("sin", sin, shape=tuple(cos.shape), dtypes=(torch.float32,))
    if cos.shape[0] != rows:
        raise ValueError(f"cos must have {rows} rows (one per token), got shape {tuple(cos.shape)}")
    r = cos.shape[1]
    if 2 * r > d:
        raise ValueError(f"cos covers 2*{r} rotary dims but the head_dim is {d}")
    return r


def _check_eps(eps) -> float:
    if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not eps >= 0:
        raise ValueError(f"eps must be a non-negative float, got {eps!r}")
    return float(eps)


def _outs(out, n: int, shapes, dtype):
    """The `out=` tensors (a tuple of n, entries may be None) checked, or fresh ones."""
    if out is None:
        out = (None,) * n
    if not isinstance(out, (tuple, list)) or len(out) != n:
        raise ValueError(f"out must be a tuple of {n} tensors (or None entries)")
    return tuple(torch.empty(s, dtype=dtype, device=dev) if o is None else check_out(f"out[{i}]", o, s, dtype)
                 for i, (o, (s, dev)) in enumerate(zip(out, shapes)))


_STAGED_SMEM = 48 * 1024  # a staged CTA's shared memory at most (no opt-in; 4 CTAs an SM on the H200)


def _staged_tokens(dtype, d: int, r: int, H: int, q_ts: int, q_hs: int, *tensors) -> int:
    """Tokens a CTA of the staged build takes (0: the staged build does not apply). It serves 16-bit q/k without a
    cache write, d <= 256 and d % 8 == 0, r % 8 == 0, every tensor and row 16-byte aligned."""
    if dtype not in (torch.float16, torch.bfloat16) or d > 256 or d % 8 or r % 8 or q_ts % 8 or q_hs % 8:
        return 0
    if any(t is not None and t.data_ptr() % 16 for t in tensors):
        return 0
    per_token = H * d * 2 + 2 * r * 4
    return max(0, min(64, (_STAGED_SMEM - 2 * d * 2) // per_token))  # <= 64: narrow rows still spread


# The prefill build where the staged one applies (16-bit, no cache, d <= 256, aligned) and T > _DECODE_TOKENS:
# "staged", "lean" (the warp-per-heads kernel, 4 heads a warp), or (IPW, STAGES) of the streaming kernel
# (qk_norm_rope_stream, one of STREAM_BUILDS); one for qk_norm_rope, one for apply_rope. H200, 16k tokens, 8:2 /
# 16:4 / 24:4 heads (rounds s3r1 / s3r2, A/B in one process): qk_norm_rope lean 68/71/71 % of copy (78 % at
# 16:4 and 24:4 with LEAN_MINB = 5), streaming (4, 3) 63/67/68 %, staged 58/60/61 %; apply_rope (8/16/24 heads)
# streaming (4, 3) 83/86/87 %, staged 75/84/86 %.
QK_PREFILL: object = "lean"
# round r2 (plain launches): apply_rope (4, 2) 40.2 / 76.0 / 113.2 us = 83.6 / 87.1 / 87.3 % of copy vs (4, 3)
# 41.6 / 78.3 / 113.5. qk_norm_rope: lean 61.4 / 106.3 / 146.3 us beat every streaming build (best (4, 2): 66.7 /
# 121.1 / 167.9); the streaming kernel without the norm takes 50.5 / 95.5 / 131.9 and with q from a contiguous copy
# the same as from qg: the norm's arithmetic, not the skipped gate half, is what the streaming qk path pays for.
ROPE_PREFILL: object = (4, 2)
STREAM_CTAS_PER_SM = 4  # the streaming grid: at most this many CTAs an SM (shared memory permitting), one wave


def _launch_stream(device, build, q_in, q_ts, q_hs, k_in, qw, kw, cos, sin, q_out, k_out, T, Hq, Hkv, d, r, norm,
                   eps) -> None:
    ipw, stages = build[:2]
    smem = 8 * stages * (ipw * d * 2 + 2 * r * 4)
    items = T * (ceil_div(Hq, ipw) + ceil_div(Hkv, ipw))
    per_sm = max(1, min(STREAM_CTAS_PER_SM, (_dev.max_shared_memory(device) + 1024) // (smem + 1024)))
    grid = max(1, min(ceil_div(items, 8), per_sm * _dev.sm_count(device)))
    ptr = lambda t: 0 if t is None else t.data_ptr()  # noqa: E731
    SOURCE.launch(device, _stream_expr(q_in.dtype, *build), (grid, 1, 1), (256, 1, 1),
                  q_in.data_ptr(), i64(q_ts), i32(q_hs), ptr(k_in), ptr(qw), ptr(kw), cos.data_ptr(), sin.data_ptr(),
                  q_out.data_ptr(), ptr(k_out), i32(T), i32(Hq), i32(Hkv), i32(d), i32(r), i32(norm), f32(eps),
                  shared_mem=smem, pdl=True)


def _launch_qk(device, q_in, q_ts, q_hs, k_in, qw, kw, cos, sin, q_out, k_out, v, k_cache, v_cache, cu, lengths,
               T, Hq, Hkv, d, r, norm, eps, ipw=None, lean=None, build=None, minb=0):
    tb = 0 if k_cache is not None or ipw is not None or lean is not None else _staged_tokens(
        q_in.dtype, d, r, Hq + Hkv, q_ts, q_hs, q_in, k_in, qw, kw, cos, sin, q_out, k_out)
    if build is None:
        build = QK_PREFILL if norm else ROPE_PREFILL
    if tb and T > _DECODE_TOKENS and build == "lean":
        tb = 0  # the warp-per-heads kernel below
    if (tb and T > _DECODE_TOKENS and Hq + Hkv and build != "staged"
            and T * (ceil_div(Hq, build[0]) + ceil_div(Hkv, build[0])) < 2**31 - 2**26):  # 32-bit items
        _launch_stream(device, build, q_in, q_ts, q_hs, k_in, qw, kw, cos, sin, q_out, k_out, T, Hq, Hkv, d, r,
                       norm, eps)
        return
    if tb and T and Hq + Hkv:
        ptr = lambda t: 0 if t is None else t.data_ptr()  # noqa: E731
        smem = tb * (Hq + Hkv) * d * 2 + tb * 2 * r * 4 + 2 * d * 2
        SOURCE.launch(device, _staged_expr(q_in.dtype), (ceil_div(T, tb), 1, 1), (256, 1, 1),
                      q_in.data_ptr(), i64(q_ts), i32(q_hs), ptr(k_in), ptr(qw), ptr(kw), cos.data_ptr(),
                      sin.data_ptr(), q_out.data_ptr(), ptr(k_out), i32(T), i32(Hq), i32(Hkv), i32(d), i32(r),
                      i32(norm), f32(eps), i32(tb), shared_mem=smem, pdl=True)
        return
    vec, nv = _pick_qk(q_in.dtype, d, q_in, k_in, qw, kw, q_out, k_out, v, k_cache, v_cache)
    if ipw is None and T <= _DECODE_TOKENS:
        ipw = 1  # decode sizes: a warp a head (shortest per-warp chain; H200: 2.4 vs 3.0 us at 1 token, 8:2 heads)
    ipw = ipw if ipw in QK_TRIALS and (vec, nv) == (8, 1) else _IPW  # a trial build, or the default
    # one warp per group of ipw q (or k, or with a cache v) heads of a token
    warps = T * (ceil_div(Hq, ipw) + ceil_div(Hkv, ipw) * (2 if k_cache is not None else 1))
    if warps == 0:
        return
    B, S = (k_cache.shape[0], k_cache.shape[1]) if k_cache is not None else (1, 0)
    # lean build: a rotated element's partner in another lane (r a multiple of the lane's elements) and, for the
    # float4 loads of the tables, 16-byte aligned cos/sin; else the general build (partners through shared memory)
    e = vec * nv
    lean = r % e == 0 and (e % 4 != 0 or (cos.data_ptr() | sin.data_ptr()) % 16 == 0) and lean is not False
    ptr = lambda t: 0 if t is None else t.data_ptr()  # noqa: E731
    minb = minb or (LEAN_MINB if T > _DECODE_TOKENS else 0)
    minb = minb if minb in LEAN_MINB_TRIALS and lean and (vec, nv, ipw) == (8, 1, _IPW) else 0
    SOURCE.launch(device, _qk_expr(q_in.dtype, vec, nv, ipw, lean, minb), (ceil_div(warps, _WARPS), 1, 1),
                  (32 * _WARPS, 1, 1),
                  q_in.data_ptr(), i64(q_ts), i32(q_hs), ptr(k_in), ptr(qw), ptr(kw), cos.data_ptr(), sin.data_ptr(),
                  q_out.data_ptr(), ptr(k_out), ptr(v), ptr(k_cache), ptr(v_cache), ptr(cu),
                  i32(cu is not None and cu.dtype == torch.int64), ptr(lengths),
                  i32(lengths is not None and lengths.dtype == torch.int64), i32(T), i32(Hq), i32(Hkv), i32(d),
                  i32(r), i32(B), i32(S), i32(norm), f32(eps), pdl=True)


def qk_norm_rope(qg: torch.Tensor, k: torch.Tensor, q_weight: torch.Tensor, k_weight: torch.Tensor,
                 cos: torch.Tensor, sin: torch.Tensor, eps: float = 1e-6, *, v: torch.Tensor | None = None,
                 k_cache: torch.Tensor | None = None, v_cache: torch.Tensor | None = None,
                 cu_seqlens: torch.Tensor | None = None, lengths: torch.Tensor | None = None,
                 validate: bool = True, out=None, _ipw=None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Gated attention input side in one pass (see reference.qk_norm_rope): returns (q, gate, k).

    qg [T, Hq, 2d] and k [T, Hkv, d] contiguous, one dtype; q_weight, k_weight [d] of that dtype; cos, sin fp32
    [T, r], 2r <= d <= 512. q and k are written once (contiguous [T, H, d]); gate is returned as the strided
    view qg[..., d:] (no pass over it: the consumer, sigmoid_gate, reads it in place), or copied into out[1]
    when the caller gives one. Cache write (all of v, k_cache, v_cache, cu_seqlens, lengths): as
    kv_cache_append; slots past S-1 are dropped. validate=True checks cu_seqlens and the cache capacity on the
    host (reads the device); pass validate=False under CUDA-graph capture (decode).
    out: optional (q, gate, k) tensors, entries may be None.
    """
    check_input("qg", qg, ndim=3)
    T, Hq, d2 = qg.shape
    if d2 % 2:
        raise ValueError(f"qg must have shape (T, Hq, 2*head_dim), got {tuple(qg.shape)} (odd last dim)")
    d = d2 // 2
    if d > MAX_HEAD_DIM:
        raise ValueError(f"head_dim {d} is above the kernel's {MAX_HEAD_DIM}")
    check_input("k", k, ndim=3, dtypes=(qg.dtype,))
    if k.shape[0] != T or k.shape[2] != d:
        raise ValueError(f"k must have shape ({T}, Hkv, {d}), got {tuple(k.shape)}")
    Hkv = k.shape[1]
    check_input("q_weight", q_weight, shape=(d,), dtypes=(qg.dtype,))
    check_input("k_weight", k_weight, shape=(d,), dtypes=(qg.dtype,))
    r = _check_tables(cos, sin, T, d)
    eps = _check_eps(eps)
    cache = (v, k_cache, v_cache, cu_seqlens, lengths)
    if any(t is not None for t in cache) and any(t is None for t in cache):
        raise ValueError("the cache write needs all of v, k_cache, v_cache, cu_seqlens, lengths (or none of them)")
    if k_cache is not None:
        check_input("v", v, shape=(T, Hkv, d), dtypes=(qg.dtype,))
        check_input("k_cache", k_cache, ndim=4, dtypes=(qg.dtype,))
        B, S = k_cache.shape[:2]
        if tuple(k_cache.shape[2:]) != (Hkv, d):
            raise ValueError(f"k_cache must have shape (B, S, {Hkv}, {d}), got {tuple(k_cache.shape)}")
        check_input("v_cache", v_cache, shape=tuple(k_cache.shape), dtypes=(qg.dtype,))
        check_input("cu_seqlens", cu_seqlens, shape=(B + 1,), dtypes=(torch.int32, torch.int64))
        check_input("lengths", lengths, shape=(B,), dtypes=(torch.int32, torch.int64))
    dev = qg.device
    if out is not None and not (isinstance(out, (tuple, list)) and len(out) == 3):
        raise ValueError("out must be a triple (q, gate, k) (entries may be None)")
    q_out, g_out, k_out = (None, None, None) if out is None else out
    q_out, k_out = _outs((q_out, k_out), 2, (((T, Hq, d), dev), ((T, Hkv, d), dev)), qg.dtype)
    if g_out is not None:
        check_out("out[1]", g_out, (T, Hq, d), qg.dtype)
    if k_cache is not None and validate:  # reads cu_seqlens and lengths on the host (kv_cache_append's check)
        check_append_fits(cu_seqlens, lengths, S, T)
    device = check_cuda(qg=qg, k=k, q_weight=q_weight, k_weight=k_weight, cos=cos, sin=sin, v=v, k_cache=k_cache,
                        v_cache=v_cache, cu_seqlens=cu_seqlens, lengths=lengths, q_out=q_out, k_out=k_out,
                        g_out=g_out)
    _launch_qk(device, qg, Hq * d2, d2, k, q_weight, k_weight, cos, sin, q_out, k_out, v, k_cache, v_cache,
               cu_seqlens, lengths, T, Hq, Hkv, d, r, 1, eps, _ipw)
    gate = qg[..., d:]
    if g_out is not None:
        gate = g_out.copy_(gate)
    return q_out, gate, k_out


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, *, out: torch.Tensor | None = None
               ) -> torch.Tensor:
    """Partial NeoX RoPE on the first 2r dims of every head (see reference.apply_rope): x [S, H, d] contiguous,
    d <= 512; cos, sin fp32 [S, r]. Returns a new contiguous [S, H, d] (or out)."""
    check_input("x", x, ndim=3)
    S, H, d = x.shape
    if d > MAX_HEAD_DIM:
        raise ValueError(f"head_dim {d} is above the kernel's {MAX_HEAD_DIM}")
    r = _check_tables(cos, sin, S, d)
    (y,) = _outs((out,), 1, (((S, H, d), x.device),), x.dtype)
    device = check_cuda(x=x, cos=cos, sin=sin, out=y)
    _launch_qk(device, x, H * d, d, None, None, None, cos, sin, y, None, None, None, None, None, None,
               S, H, 0, d, r, 0, 0.0)
    return y


_TABLES: dict = {}  # (rotary_dim, theta, device index) -> the reference's fp32 inv_freq table on that device


def _inv_freq(rotary_dim: int, theta: float, device: int) -> torch.Tensor:
    key = (rotary_dim, float(theta), device)
    t = _TABLES.get(key)
    if t is None:
        if torch.cuda.is_current_stream_capturing():
            raise RuntimeError("mrope_cos_sin builds its inv_freq table with a host copy: call it once for this "
                               "rotary_dim/theta before capturing a CUDA graph")
        t = _TABLES[key] = inv_freq(rotary_dim, theta, torch.device("cuda", device))
    return t


def mrope_cos_sin(positions: torch.Tensor, rotary_dim: int, theta: float, section=(11, 11, 10),
                  interleaved: bool = True, *, out=None) -> tuple[torch.Tensor, torch.Tensor]:
    """mRoPE tables on the GPU (see reference.mrope_cos_sin): positions int32/int64 [3, S] (any strides, e.g. an
    expand of one row) -> cos, sin fp32 [S, rotary_dim/2] (or the pair `out`). Bit-identical angles to the
    reference (same fp32 inv_freq table, same fp32 product); cos/sin within a few fp32 ulps."""
    check_tensor("positions", positions, ndim=2, dtypes=(torch.int32, torch.int64))
    if positions.shape[0] != 3:
        raise ValueError(f"positions must have shape (3, S), got {tuple(positions.shape)}")
    if isinstance(rotary_dim, bool) or not isinstance(rotary_dim, int) or rotary_dim <= 0 or rotary_dim % 2:
        raise ValueError(f"rotary_dim must be a positive even int, got {rotary_dim!r}")
    if not theta > 0:
        raise ValueError(f"theta must be positive, got {theta!r}")
    r = rotary_dim // 2
    mrope_axes(r, section, interleaved)  # validates section against the layout
    s_t, s_h, s_w = (int(s) for s in section)
    n = positions.shape[1]
    cos, sin = _outs(out, 2, (((n, r), positions.device),) * 2, torch.float32)
    device = check_cuda(positions=positions, cos=cos, sin=sin)
    inv = _inv_freq(rotary_dim, theta, device)
    if n:
        SOURCE.launch(device, "rope::mrope_cos_sin_kernel", (ceil_div(n * r, 256), 1, 1), (256, 1, 1),
                      positions.data_ptr(), i32(positions.dtype == torch.int64), i64(positions.stride(0)),
                      i64(positions.stride(1)), inv.data_ptr(), i32(n), i32(r), i32(s_t), i32(s_h), i32(s_w),
                      i32(bool(interleaved)), cos.data_ptr(), sin.data_ptr(), pdl=True)
    return cos, sin


_INT_DTYPES = (torch.int32, torch.int64)


def rope_index(input_ids: torch.Tensor, image_grid_thw: torch.Tensor | None, video_grid_thw: torch.Tensor | None,
               image_token_id: int = 248056, video_token_id: int = 248057,
               merge: int = 2, *, out: torch.Tensor | None = None) -> tuple[torch.Tensor, int]:
    """Qwen3.5 mRoPE position ids for one sequence (see reference.rope_index), Numba (kernels/numba/rope.py).

    input_ids: int32/int64 [S]; image_grid_thw / video_grid_thw: int32/int64 [n, 3] or None.
    Returns (positions int64 [3, S] (into `out` when given), delta int). Raises ValueError when the pad
    tokens do not match the grids: wrong counts before the launch, pads of a grid that do not lie together after
    it (the kernel finds them). Runs once per prompt and reads a few numbers back to the host (the grids, the
    pad counts, and delta, an int as in the reference). Tensors are CUDA tensors on a GPU run, CPU tensors in
    the Numba simulator.
    """
    from .numba import elementwise_launch
    from .numba.rope import rope_index_kernel
    from .runtime.numba_interop import check_kernel_device, launch

    check_input("input_ids", input_ids, ndim=1, dtypes=_INT_DTYPES)
    if input_ids.shape[0] == 0:
        raise ValueError("input_ids must not be empty")
    if not isinstance(merge, int) or isinstance(merge, bool) or merge <= 0:
        raise ValueError(f"merge must be a positive int, got {merge!r}")
    for name, tok in (("image_token_id", image_token_id), ("video_token_id", video_token_id)):
        if not isinstance(tok, int) or isinstance(tok, bool):
            raise ValueError(f"{name} must be an int, got {tok!r}")
    if image_token_id == video_token_id:
        raise ValueError(f"image_token_id and video_token_id must differ, both are {image_token_id}")
    for name, g in (("image_grid_thw", image_grid_thw), ("video_grid_thw", video_grid_thw)):
        if g is not None:
            check_input(name, g, ndim=2, dtypes=_INT_DTYPES)
    dev, s = input_ids.device, input_ids.shape[0]
    if out is not None:
        check_out("out", out, (3, s), torch.int64)
    check_kernel_device(input_ids=input_ids, image_grid_thw=image_grid_thw, video_grid_thw=video_grid_thw, out=out)

    grids, need = [], []
    for name, g, per_frame in (("image_grid_thw", image_grid_thw, False), ("video_grid_thw", video_grid_thw, True)):
        if g is None:
            g = torch.zeros(0, 3, dtype=torch.int64, device=dev)
        thw = check_grid_thw(g, name, merge).tolist()  # host read of a few ints: values and token counts
        grids.append(g.long())  # the kernel reads int64 ids and grids (one compiled variant)
        need.append(sum(t * h * w for t, h, w in thw) // merge**2)
    img_grid, vid_grid = grids

    is_img, is_vid = input_ids == image_token_id, input_ids == video_token_id
    cimg, cvid = torch.cumsum(is_img, 0), torch.cumsum(is_vid, 0)  # int64 inclusive prefix counts
    have = torch.stack([cimg[-1], cvid[-1]]).tolist()  # a host read, so that wrong counts never launch
    for name, tok, n, want in (("image_grid_thw", image_token_id, have[0], need[0]),
                               ("video_grid_thw", video_token_id, have[1], need[1])):
        if n != want:
            raise ValueError(f"input_ids has {n} tokens with id {tok}, but {name} needs {want}")
    pos = torch.empty(3, s, dtype=torch.int64, device=dev) if out is None else out
    err = torch.full((1,), s, dtype=torch.int64, device=dev)
    launch(rope_index_kernel, *elementwise_launch(s), input_ids.long(), cimg, cvid, img_grid,
           np.int64(img_grid.shape[0]), vid_grid, np.int64(vid_grid.shape[0]), np.int64(image_token_id),
           np.int64(video_token_id), np.int64(merge), pos, err)

    first_bad, top = torch.stack([err[0], pos.max()]).tolist()
    if first_bad < s:  # found by the kernel: where each pad lies is only known on the device
        raise ValueError(f"input_ids[{first_bad}] is a pad token whose grid (image, or video frame) does not lie "
                         f"on consecutive pad tokens of its kind")
    return pos, top + 1 - s
