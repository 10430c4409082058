"""The Gated DeltaNet's short causal conv (NVRTC, kernels/cuda/conv1d.cu), signature of reference.causal_conv1d.

One kernel serves the varlen packed prefill and the one-token decode step (T = n, cu_seqlens = arange(n+1)).
With validate=False no host synchronisation: cu_seqlens is read on the device only, the number of sequences comes
from its shape, and the grid is sized by the `max_seqlen` hint (default T, an upper bound: the model passes
max_seqlen=1 in decode and the longest prompt in prefill). So a call can be captured in a CUDA graph.
"""

from __future__ import annotations

import math

import torch

from reference._checks import check_cu_seqlens, check_tensor

from .runtime.checks import KERNEL_DTYPES, check_cuda, check_input, check_out
from .runtime.dispatch import CTYPES, NvrtcSource, cbool, ceil_div, vec_width
from .runtime.nvrtc import i32, i64

__all__ = ["causal_conv1d"]

KERNEL_SIZE = 4        # the taps the kernel is built for (Qwen3.5's linear_conv_kernel_dim)
_BLOCK = 128           # threads per CTA (__launch_bounds__ in the source)
_CHUNK = 16            # positions per thread (CH)
_MAX_GRID_Z = 65535    # chunks past this are looped over inside the kernel
_VECS = {torch.float32: (4, 2, 1), torch.float16: (8, 4, 2, 1), torch.bfloat16: (8, 4, 2, 1)}


_UNROLL = 4           # positions whose loads are in flight together on the register path (U)
# other builds for timing trials (16-bit types): (vec, CH, U, cp.async); the round-1 default was (8, 16, 4, False)
TRIALS = ((8, 16, 4, False), (4, 16, 8, False), (8, 8, 4, True))


def _expr(dtype, vec: int, chunk: int = _CHUNK, unroll: int = _UNROLL, use_async: bool | None = None) -> str:
    """The instantiation; cp.async loads by default wherever a thread moves 16-byte vectors."""
    if use_async is None:
        use_async = vec * dtype.itemsize == 16
    return f"conv1d::causal_conv1d_kernel<{CTYPES[dtype]}, {vec}, {chunk}, {unroll}, {cbool(use_async)}>"


def _coal_ok(dtype, vec: int) -> bool:
    """The decode kernel's coalesced state path exists: a thread's 3 x vec state elements are whole 16-byte chunks."""
    return 3 * vec * dtype.itemsize % 16 == 0


def _decode_expr(dtype, vec: int, coal: bool = False) -> str:
    return f"conv1d::causal_conv1d_decode<{CTYPES[dtype]}, {vec}, {cbool(coal)}>"


SOURCE = NvrtcSource("conv1d.cu", tuple(_expr(dt, v) for dt, vs in _VECS.items() for v in vs)
                     + tuple(_expr(dt, *t) for dt in (torch.float16, torch.bfloat16) for t in TRIALS)
                     + tuple(_decode_expr(dt, v, c) for dt, vs in _VECS.items() for v in vs
                             for c in ((False, True) if _coal_ok(dt, v) else (False,))))
DECODE_KERNEL = True  # max_seqlen <= 1 (a decode step): the one-token kernel (PDL, one memory round trip)
# its coalesced state path (where it exists: _coal_ok, state rows 16-byte aligned) from this many rows. H200 (round
# s3r2): 64 rows 3.72 -> 3.38 us (0.8B), 3.94 -> 3.46 (9B), 4.24 -> 3.74 (27B); 1 row 1.68 -> 1.83 (slower)
DECODE_COAL = True
DECODE_COAL_MIN_ROWS = 32
# threads per CTA of the decode kernel (a multiple of 32, at most 128): DECODE_SMALL_BLOCK below DECODE_SMALL_ROWS
# rows, DECODE_BLOCK from there. H200 (round r2, tools/rope_conv1d_ab.py, bf16, 0.8B / 9B / 27B channels, plain
# launches): 64 threads at 8 rows 2.58 / 2.65 / 2.58 -> 2.35 / 2.50 / 2.39 us, at 1 row 2.49 / 2.43 / 2.49 -> 2.31 /
# 2.31 / 2.36 (PDL on: 8 rows 2.03 / 2.22 / 2.34 -> 1.87 / 1.90 / 2.00); at 64 rows 128 stays (64: 3.32 / 3.75 / 4.18
# vs 3.30 / 3.70 / 3.98). Two or four rows a thread (the kernel's ROWS, weights loaded once) lost everywhere (64 rows:
# 3.47-4.49 us), so only ROWS = 1 is built.
DECODE_SMALL_ROWS = 32
DECODE_SMALL_BLOCK = 64
DECODE_BLOCK = 128


def causal_conv1d(x: torch.Tensor, weight: torch.Tensor, cu_seqlens: torch.Tensor,
                  state: torch.Tensor | None = None, *, state_out: torch.Tensor | None = None,
                  max_seqlen: int | None = None, validate: bool = True, out=None,
                  _trial=None) -> tuple[torch.Tensor, torch.Tensor]:
    """Depthwise causal conv (K = 4 taps) + SiLU over packed sequences; see reference.causal_conv1d.

    x: [T, C] (rows may be strided: x.stride(1) == 1); weight: [C, 4] of x's dtype; cu_seqlens: int32/int64 [n+1]
    on x's device; state: [n, C, 3] of x's dtype or None (zeros).
    state_out: [n, C, 3] that receives the new state (may be `state` itself: the in-place decode update).
    max_seqlen: the longest sequence's length if known (sizes the grid). Default T (an upper bound).
    validate: check cu_seqlens (starts at 0, non-decreasing, ends at T) and max_seqlen against it on the host,
      which reads the device; pass False on hot paths and under CUDA-graph capture (then both are trusted: a
      max_seqlen below the true maximum leaves outputs unwritten, a bad cu_seqlens reads out of bounds).
    out: optional pair (y [T, C], new_state) to write into (either may be None; new_state is state_out's alias).
    Returns (y [T, C], new_state [n, C, 3]).
    """
    if out is not None and not (isinstance(out, (tuple, list)) and len(out) == 2):
        raise ValueError("out must be a pair (y, new_state) (entries may be None)")
    y_out, s_out = (None, None) if out is None else out
    if s_out is not None and state_out is not None and s_out is not state_out:
        raise ValueError("give the new state's tensor once: state_out= or out[1], not two different tensors")
    state_out = state_out if state_out is not None else s_out

    check_tensor("x", x, ndim=2, dtypes=KERNEL_DTYPES)
    T, C = x.shape
    if C > 1 and x.stride(1) != 1 or T > 1 and x.stride(0) < C:
        raise ValueError(f"x must have unit channel stride and rows that do not overlap, got strides {x.stride()}")
    check_tensor("weight", weight, ndim=2, dtypes=(x.dtype,))
    if tuple(weight.shape) != (C, KERNEL_SIZE):
        raise ValueError(f"weight must have shape ({C}, {KERNEL_SIZE}) (C channels x {KERNEL_SIZE} taps: the kernel "
                         f"is built for kernel size {KERNEL_SIZE}), got {tuple(weight.shape)}")
    check_input("weight", weight, shape=(C, KERNEL_SIZE), dtypes=(x.dtype,))
    check_input("cu_seqlens", cu_seqlens, ndim=1, dtypes=(torch.int32, torch.int64))
    n = cu_seqlens.numel() - 1
    if n < 1:
        raise ValueError(f"cu_seqlens must have at least 2 entries (one sequence), got {cu_seqlens.numel()}")
    if n > 65535:
        raise ValueError(f"at most 65535 sequences per call (grid.y), got {n}")
    shape_state = (n, C, KERNEL_SIZE - 1)
    if state is not None:
        check_out("state", state, shape_state, x.dtype)
    if state_out is None:
        state_out = torch.empty(shape_state, dtype=x.dtype, device=x.device)
    else:
        check_out("state_out", state_out, shape_state, x.dtype)
    y = torch.empty((T, C), dtype=x.dtype, device=x.device) if y_out is None else check_out("out[0]", y_out, (T, C), x.dtype)
    if max_seqlen is None:
        max_seqlen = T
    elif isinstance(max_seqlen, bool) or not isinstance(max_seqlen, int) or max_seqlen < 0:
        raise ValueError(f"max_seqlen must be a non-negative int or None, got {max_seqlen!r}")
    if validate:  # reads cu_seqlens on the host: before the device check, so it words its own errors on CPU too
        check_cu_seqlens(cu_seqlens, T)
        longest = int((cu_seqlens[1:] - cu_seqlens[:-1]).max())
        if max_seqlen < longest:
            raise ValueError(f"max_seqlen={max_seqlen} is shorter than the longest sequence ({longest} tokens)")
    device = check_cuda(x=x, weight=weight, cu_seqlens=cu_seqlens, state=state, state_out=state_out, y=y)
    if C == 0:
        return y, state_out

    # the vector width must divide C and the row stride, and every pointer must be aligned to it
    vec = vec_width(x.dtype, C if T <= 1 else math.gcd(C, x.stride(0)), x, weight, state, state_out, y,
                    candidates=_VECS[x.dtype])
    if max_seqlen <= 1 and DECODE_KERNEL and _trial is None:
        coal = DECODE_COAL and n >= DECODE_COAL_MIN_ROWS and _coal_ok(x.dtype, vec) and all(
            t is None or t.data_ptr() % 16 == 0 for t in (state, state_out))
        block = DECODE_BLOCK if n >= DECODE_SMALL_ROWS else DECODE_SMALL_BLOCK
        block = block if block in (32, 64, 96, 128) else _BLOCK
        grid = (ceil_div(C // vec, block), n, 1)
        SOURCE.launch(device, _decode_expr(x.dtype, vec, coal), grid, (block, 1, 1),
                      x.data_ptr(), i64(x.stride(0)), weight.data_ptr(), cu_seqlens.data_ptr(),
                      i32(cu_seqlens.dtype == torch.int64), 0 if state is None else state.data_ptr(),
                      state_out.data_ptr(), y.data_ptr(), i32(C), i32(T), i32(n), pdl=True)
        return y, state_out
    chunk, unroll, use_async = _CHUNK, _UNROLL, None
    if _trial is not None and x.dtype != torch.float32 and vec == _VECS[x.dtype][0]:  # a timing trial (16-bit)
        vec, chunk, unroll, use_async = _trial
    nchunks = max(1, ceil_div(max_seqlen, chunk))
    grid = (ceil_div(C // vec, _BLOCK), n, min(nchunks, _MAX_GRID_Z))
    SOURCE.launch(device, _expr(x.dtype, vec, chunk, unroll, use_async), grid, (_BLOCK, 1, 1),
                  x.data_ptr(), i64(x.stride(0)), weight.data_ptr(), cu_seqlens.data_ptr(),
                  i32(cu_seqlens.dtype == torch.int64), 0 if state is None else state.data_ptr(),
                  state_out.data_ptr(), y.data_ptr(), i32(C), i32(nchunks))
    return y, state_out
