"""Decode attention (flash-decoding) and the KV-cache append: NVRTC kernels in kernels/cuda/decode_attention.cu with
the signatures and meaning of reference.decode_attention.

    out = decode_attention(q, k_cache, v_cache, lengths, max_length=None, validate=False)   # CUDA-graph safe
    kv_cache_append(k, v, k_cache, v_cache, cu_seqlens, lengths, validate=False)

Host syncs: with validate=True (the default) each wrapper reads lengths (and cu_seqlens) back to check them
against the capacity, like the reference; validate=False reads nothing from the device, so the call can be captured
in a CUDA graph and replayed with new lengths. The kernels clamp every length to [0, S] and drop appended tokens
whose slot falls outside [0, S): a wrong length can give a wrong answer, never an out-of-bounds access.

The grid of decode_attention comes from host-known sizes only: B, the heads and the capacity S (or the max_length
hint, which only caps the split count); each CTA derives its key range from its row's length on the device, so the
same launch serves any lengths (CTAs past a row's end exit at once). Where a row is split, a second small kernel
merges the chunks. On sm_90 both are programmatic dependent launches (each may be scheduled while the kernel before
it runs and waits for it on the device before touching memory), which hides launch latency: the combine behind the
split kernel, and the next step's split kernel behind this combine. Where a CTA's chunk is long (EARLY_MIN_TILES),
the split kernel also prefetches its first tiles into L2 before that wait, for the length as it reads then.
"""

from __future__ import annotations

import math

import torch

from reference.decode_attention import (check_append_args, check_append_fits, check_decode_args,
                                        check_decode_lengths, check_max_length)

from .runtime import device as dev
from .runtime.checks import check_aligned16, check_cuda, check_out
from .runtime.dispatch import CTYPES, NvrtcSource, ceil_div
from .runtime.nvrtc import f32, i32, i64

__all__ = ["decode_attention", "kv_cache_append"]

HEAD_DIMS = (256,)          # instantiated head dims (Qwen3.5's full-attention layers)
ATTN_DTYPES = (torch.bfloat16, torch.float16)  # tensor-core operands
APPEND_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
_NW, _TILE, _ROWS = 4, 64, 16  # warps per CTA, key slots per pipeline stage, query rows per CTA (decode:: in the .cu)
_STAGES = (3, 2)            # cp.async ring depth: 3 where 200 KB of shared memory fit (sm_90), else 2
_LOG2E = 1.4426950408889634
_APPEND_VECS = {torch.float32: (4, 2, 1), torch.float16: (8, 4, 2, 1), torch.bfloat16: (8, 4, 2, 1)}
PREFETCH = 0  # tiles of K/V prefetched into L2 beyond the cp.async ring (kernel argument; 0 = none). 0 won on
# the H200 at every goal case (b1 8k/32k/128k, b32 8k: 2 tiles cost 0-15 %, 4 tiles up to 30 %;
# tools/decode_attention_gpu.py)
# Fused merge: the split kernel's last CTAs merge the chunks (no combine kernel). Arrival counters live in one
# buffer per device that every launch leaves zeroed, so two launches must not overlap on one device (streams
# running decode attention concurrently); the combine kernel path has no such state.
FUSE = False
# EARLY: tiles of each CTA's chunk prefetched into L2 before waiting for the kernel before (0 = none), where a
# CTA's chunk spans at least EARLY_MIN_TILES tiles. H200 (round s3r1, 2 tiles): b1 32k 22.0 -> 21.4 us, 128k
# 67.9 -> 66.4, b8 8k 36.7 -> 35.9, b32 8k unchanged; shorter chunks lose (b1 8k, 2 tiles a CTA: 8.40 -> 8.58 us;
# 1k: 5.83 -> 6.07). Tried and dropped the same round: a merge in the split kernel with every CTA waiting on an
# arrival counter (b1 8k 8.68 us, 1k 7.43: the wait costs more than the combine's launch) and starting the first
# copies for the length read before the wait (b1 8k 9.49 us).
EARLY = 2
EARLY_MIN_TILES = 4
# COMBINE_ALL: every chunk writes its partial (an empty one lse = -inf, a row's only chunk too), so the combine
# merges all `splits` entries without reading the lengths first (one dependent L2 round trip less). H200 (round
# s3r2, b3ffe5b): b1 8k 8.60 -> 8.03 us, 32k 21.88 -> 21.60, 128k 67.03 -> 66.47, 1k 5.94 -> 5.62, b8 8k 36.57 ->
# 36.04, b1 32k 16:4 36.72 -> 35.94; b32 8k 130.7 -> 131.2 (noise level).
COMBINE_ALL = True
PDL = True  # programmatic dependent launches of the split and combine kernels (False: plain, for A/B timings)


def _split_expr(dtype, d: int, stages: int) -> str:
    return f"decode_attention::decode_attention_split<{CTYPES[dtype]}, {d}, {stages}>"


def _combine_expr(dtype, d: int) -> str:
    return f"decode_attention::decode_attention_combine<{CTYPES[dtype]}, {d}>"


def _append_expr(dtype, vec: int) -> str:
    return f"decode_attention::kv_cache_append_kernel<{CTYPES[dtype]}, {vec}>"


# int32 / int64 lengths and cu_seqlens are told apart by a flag argument, not by instantiation (fewer to compile)
SOURCE = NvrtcSource("decode_attention.cu", tuple(
    [_split_expr(dt, d, st) for dt in ATTN_DTYPES for d in HEAD_DIMS for st in _STAGES]
    + [_combine_expr(dt, d) for dt in ATTN_DTYPES for d in HEAD_DIMS]
    + [_append_expr(dt, vec) for dt, vecs in _APPEND_VECS.items() for vec in vecs]))


def is64(t: torch.Tensor):
    """The kernels' `is int64` flag of an index tensor (int32 otherwise), as a C int argument."""
    return i32(t.dtype == torch.int64)


def _split_smem(d: int, stages: int) -> int:
    """Q tile + K and V rings (16-bit elements); the 4-warp merge reuses the rings."""
    ring = (_ROWS + 2 * stages * _TILE) * d * 2
    merge = _ROWS * d * 2 + _NW * _ROWS * (d + 8) * 4 + 2 * _NW * _ROWS * 4
    return max(ring, merge)


def num_splits(ctas_per_split: int, max_tiles: int, sms: int) -> int:
    """How many key chunks each (row, kv head, row group) is split into, from host-known sizes only.

    ctas_per_split = B * Hkv * row groups CTAs per chunk index; max_tiles = ceil(longest row / TILE), the longest
    row being the capacity or the max_length hint. One CTA runs per SM, so a split s takes ceil(ctas * s / sms)
    waves of CTAs that each stream ceil(max_tiles / s) tiles plus a fixed cost of about one tile (start, merge,
    partial write). The fewest splits within 3 % of the cheapest win (fewer partials to combine, no many-wave
    grids for a model's 1 % gain): on 132 SMs, B=1 with 2 kv heads and 8k slots -> 64 chunks of 2 tiles (128 CTAs);
    B=8 -> 8; B=32 -> 2; B=32 with 4 kv heads -> 1.
    """
    cap = max(1, min(max_tiles, 1024))
    costs = [ceil_div(ctas_per_split * s, sms) * (ceil_div(max_tiles, s) + 1) for s in range(1, cap + 1)]
    best = min(costs)
    return next(s for s, c in enumerate(costs, start=1) if c <= 1.03 * best)


def _check_cache_layout(name: str, t: torch.Tensor, aligned16: bool) -> None:
    """Slots of Hkv * d contiguous elements (rows and slots may be strided); with aligned16, row and slot strides
    and the start that keep every slot 16-byte aligned (the decode kernel's cp.async)."""
    _, _, hkv, d = t.shape
    if t.stride(3) != 1 or (hkv > 1 and t.stride(2) != d):
        raise ValueError(f"{name} must have contiguous [Hkv, d] slots (strides (*, *, {d}, 1)), got {t.stride()}")
    if aligned16 and t.numel() and (t.stride(0) * t.element_size() % 16 or t.stride(1) * t.element_size() % 16
                                    or t.data_ptr() % 16):
        raise ValueError(f"{name} must be 16-byte aligned with row and slot strides of whole 16-byte vectors, "
                         f"got strides {t.stride()} at storage offset {t.storage_offset()}")


def _mixed_devices(**tensors) -> None:
    """Tensors on different devices: the kernel's message (which one is not on the GPU), before the structural
    checks that would word it as the reference does. On one device (all on the CPU too) the structure is checked
    first and the device last."""
    devs = {t.device for t in tensors.values() if isinstance(t, torch.Tensor)}
    if len(devs) > 1:
        check_cuda(**{n: t for n, t in tensors.items() if isinstance(t, torch.Tensor)})


def _check_contiguous(name: str, t: torch.Tensor) -> None:
    if not t.is_contiguous():
        raise ValueError(f"{name} must be contiguous, got strides {t.stride()} for shape {tuple(t.shape)}")


def _scale(scale, d: int) -> float:
    if scale is None:
        return 1.0 / math.sqrt(d)
    if isinstance(scale, bool) or not isinstance(scale, (int, float)):
        raise TypeError(f"scale must be a float or None, got {type(scale).__name__}")
    if not (math.isfinite(scale) and scale > 0):
        raise ValueError(f"scale must be a positive finite number, got {scale}")
    return float(scale)


def decode_attention(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, lengths: torch.Tensor,
                     scale: float | None = None, *, max_length: int | None = None, validate: bool = True,
                     out: torch.Tensor | None = None) -> torch.Tensor:
    """One new query per row against its cache (reference.decode_attention): q [B, Hq, d] bf16/fp16,
    k_cache, v_cache [B, S, Hkv, d] of q's dtype, lengths int32/int64 [B] on the device -> [B, Hq, d].

    d = 256; Hkv divides Hq (any group size; 16 query heads per CTA, larger groups take several). Caches may be
    strided over rows and slots (e.g. a layer's slice of a bigger buffer) but each slot's [Hkv, d] is contiguous.
    max_length: optional host hint, no row is longer (caps the split count; the grid never depends on lengths).
    validate: read lengths back and check 0 <= lengths <= S (a host sync; pass False under CUDA graphs).
    out: optional [B, Hq, d] output (contiguous, q's dtype).
    """
    _mixed_devices(q=q, k_cache=k_cache, v_cache=v_cache, lengths=lengths, out=out)
    B, Hq, d, S, Hkv = check_decode_args(q, k_cache, v_cache, lengths)
    if q.dtype not in ATTN_DTYPES:
        raise ValueError(f"decode_attention kernels take bf16 or fp16 (tensor cores), got {q.dtype}; use the "
                         f"reference for fp32")
    if d not in HEAD_DIMS:
        raise ValueError(f"decode_attention kernels are built for head_dim in {HEAD_DIMS}, got {d}")
    scale = _scale(scale, d)
    check_max_length(max_length, S)
    _check_contiguous("q", q)
    _check_contiguous("lengths", lengths)
    _check_cache_layout("k_cache", k_cache, True)
    _check_cache_layout("v_cache", v_cache, True)
    o = torch.empty_like(q) if out is None else check_out("out", out, (B, Hq, d), q.dtype)
    check_aligned16(q=q, out=o)
    device = check_cuda(q=q, k_cache=k_cache, v_cache=v_cache, lengths=lengths, out=out)
    if validate:
        check_decode_lengths(lengths, S, max_length)
    if B == 0 or Hq == 0:
        return o
    _launch_decode(q, k_cache, v_cache, lengths, scale, max_length, o, device)
    return o


def _launch_decode(q, k_cache, v_cache, lengths, scale: float, max_length, o, device: int) -> None:
    B, Hq, d = q.shape
    S, Hkv = k_cache.shape[1], k_cache.shape[2]
    r = Hq // Hkv
    groups = ceil_div(r, _ROWS)
    sms, smem_optin = dev.sm_count(device), dev.max_shared_memory(device)
    stages = next((st for st in _STAGES if _split_smem(d, st) <= smem_optin), _STAGES[-1])
    smem = _split_smem(d, stages)
    longest = S if max_length is None else max_length
    splits = num_splits(B * Hkv * groups, max(1, ceil_div(longest, _TILE)), sms)
    early = EARLY if ceil_div(ceil_div(longest, splits), _TILE) >= EARLY_MIN_TILES else 0
    n1max = ceil_div(splits, 8)
    counters = _counters(device, B * Hkv * groups * (n1max + 1)) if FUSE and splits > 1 else None
    if splits > 1:  # per chunk: the normalised partial output [D] and its log-sum-exp, fp32 (+ per group of 8)
        n = B * Hq * splits
        n1 = B * Hq * n1max if counters is not None else 0
        # both [D] arrays first, then the log-sum-exps: the kernels move the [D] rows as float4, so each array
        # must start 16-byte aligned whatever n is (ws1_o right after ws_lse was not when n % 4 != 0)
        ws = torch.empty((n + n1) * (d + 1), dtype=torch.float32, device=q.device)
        ws_o_ptr = ws.data_ptr()
        ws1_o_ptr = ws_o_ptr + n * d * 4 if n1 else 0
        ws_lse_ptr = ws_o_ptr + (n + n1) * d * 4
        ws1_lse_ptr = ws_lse_ptr + n * 4 if n1 else 0
    else:
        ws_o_ptr = ws_lse_ptr = ws1_o_ptr = ws1_lse_ptr = 0
    len64 = is64(lengths)
    _launch_pdl(device, _split_expr(q.dtype, d, stages), (splits, Hkv * groups, B), (_NW * 32, 1, 1),
                q.data_ptr(), k_cache.data_ptr(), v_cache.data_ptr(),
                i64(k_cache.stride(0)), i64(k_cache.stride(1)), i64(v_cache.stride(0)), i64(v_cache.stride(1)),
                lengths.data_ptr(), len64, o.data_ptr(), ws_o_ptr, ws_lse_ptr,
                i32(S), i32(Hq), i32(Hkv), i32(r), i32(groups), i32(splits), f32(scale * _LOG2E), i32(PREFETCH),
                0 if counters is None else counters.data_ptr(), ws1_o_ptr, ws1_lse_ptr,
                i32(early), i32(COMBINE_ALL and splits > 1 and counters is None), shared_mem=smem)
    if splits > 1 and counters is None:
        _launch_pdl(device, _combine_expr(q.dtype, d), (Hq, B, d // 64), (256, 1, 1), ws_o_ptr, ws_lse_ptr,
                    lengths.data_ptr(), len64, o.data_ptr(), i32(S), i32(Hq), i32(splits), i32(COMBINE_ALL))


def _launch_pdl(device: int, expr: str, grid, block, *args, shared_mem: int = 0) -> None:
    """A programmatic dependent launch (sm_90; kernels/runtime/launch.py falls back to a plain one where the driver
    refuses it): the kernel may be scheduled while the one before it runs and waits for it on the device
    (griddepcontrol.wait; the split kernel lets its combine in at once, the combine lets the next decode step's
    split kernel in), which hides launch latency."""
    SOURCE.launch(device, expr, grid, block, *args, shared_mem=shared_mem, pdl=PDL)


_COUNTERS: dict = {}  # device -> zeroed uint32 arrival counters of the fused merge (every launch leaves them 0)
_OLD_COUNTERS: list = []  # replaced buffers stay alive: a captured CUDA graph may still point at one


def _counters(device: int, n: int) -> torch.Tensor | None:
    """The device's counter buffer with at least n entries; None (use the combine kernel) if it would have to be
    allocated during a CUDA-graph capture (the graph would own it)."""
    c = _COUNTERS.get(device)
    if c is None or c.numel() < n:
        if torch.cuda.is_current_stream_capturing():
            return None
        if c is not None:
            _OLD_COUNTERS.append(c)
        c = _COUNTERS[device] = torch.zeros(max(4096, 2 * n), dtype=torch.int32, device=f"cuda:{device}")
    return c


def kv_cache_append(k: torch.Tensor, v: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                    cu_seqlens: torch.Tensor, lengths: torch.Tensor, *, validate: bool = True) -> None:
    """reference.kv_cache_append on the GPU, one CTA per new token (no host loop over rows): token i of row b goes to
    slot lengths[b] + i. k, v [T, Hkv, d] contiguous; caches [B, S, Hkv, d] as in decode_attention (fp32 too).

    validate: read cu_seqlens and lengths back and check that every row's tokens fit (ValueError, as the
    reference). With validate=False nothing is read (CUDA-graph safe) and a slot outside [0, S) is not written:
    the token is dropped. Returns None.
    """
    _mixed_devices(k=k, v=v, k_cache=k_cache, v_cache=v_cache, cu_seqlens=cu_seqlens, lengths=lengths)
    B, S = check_append_args(k, v, k_cache, v_cache, cu_seqlens, lengths)
    T, Hkv, d = k.shape
    if k.dtype not in APPEND_DTYPES:
        raise ValueError(f"kv_cache_append kernels take fp32, fp16 or bf16, got {k.dtype}; use the reference for fp64")
    _check_contiguous("k", k)
    _check_contiguous("v", v)
    _check_contiguous("cu_seqlens", cu_seqlens)
    _check_contiguous("lengths", lengths)
    _check_cache_layout("k_cache", k_cache, False)
    _check_cache_layout("v_cache", v_cache, False)
    device = check_cuda(k=k, v=v, k_cache=k_cache, v_cache=v_cache, cu_seqlens=cu_seqlens, lengths=lengths)
    if validate:
        check_append_fits(cu_seqlens, lengths, S, T)
    if T == 0 or B == 0 or Hkv * d == 0:
        return None
    row = Hkv * d
    vec = next(v_ for v_ in _APPEND_VECS[k.dtype] if row % v_ == 0 and all(
        (t.data_ptr() | t.stride(0) * t.element_size() | t.stride(1) * t.element_size()) % (v_ * t.element_size())
        == 0 for t in (k_cache, v_cache)) and (k.data_ptr() | v.data_ptr()) % (v_ * k.element_size()) == 0)
    threads = min(256, ceil_div(2 * row // vec, 32) * 32)
    SOURCE.launch(device, _append_expr(k.dtype, vec), (T, 1, 1), (threads, 1, 1),
                  k.data_ptr(), v.data_ptr(), k_cache.data_ptr(), v_cache.data_ptr(),
                  i64(k_cache.stride(0)), i64(k_cache.stride(1)), i64(v_cache.stride(0)), i64(v_cache.stride(1)),
                  cu_seqlens.data_ptr(), is64(cu_seqlens), lengths.data_ptr(), is64(lengths), i32(B), i32(S),
                  i32(row))
    return None
