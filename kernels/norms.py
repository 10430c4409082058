"""LayerNorm and RMSNorm-family kernels (NVRTC, kernels/cuda/norms.cu) with the signatures and meaning of
reference.norms; layer_norm_numba is layer_norm's Numba twin (kernels/numba/norms.py).

Each wrapper validates its arguments, allocates the outputs (or checks `out=`, which the property tests
fill with NaN), picks the widest vector the width and pointers allow, and launches one kernel.
"""

from __future__ import annotations

import math
from functools import lru_cache

import torch

from reference._checks import check_tensor

from .runtime.checks import KERNEL_DTYPES, check_cuda, check_input, check_out, check_rows, check_same_dtype
from .runtime.dispatch import CTYPES, NvrtcSource, cbool, ceil_div, vec_width
from .runtime.nvrtc import f32, i32, i64

__all__ = ["layer_norm", "add_bias_layer_norm", "rms_norm", "add_rms_norm", "gated_rms_norm", "l2norm",
           "layer_norm_numba"]

_VECS = {torch.float32: (4, 2, 1), torch.float16: (8, 4, 2, 1), torch.bfloat16: (8, 4, 2, 1)}
# Three kernels, by row width in vectors (nvec):
#  * warp kernel: one row per warp, NPT vectors a lane, no barriers; for 16-byte vectors and nvec <= 32 * 8
#    (the ViT widths). Fastest where it applies: H100, LN 16384 x 1152 bf16, 26.6 us vs 32.3 us for the CTA
#    kernel (benchmarks/results/vision_ops-*.json has both).
#  * CTA kernel: one row (R rows) per CTA of up to 1024 threads, one vector a thread; other widths up to 1024
#    vectors (narrower vectors, wider rows). R = 2 doubles the loads in flight, for plain LN on many rows.
#  * loop kernel: any width, re-reads x from cache.
_WARP_NPT = (1, 2, 3, 4, 5, 6, 8)
_WARP_ROWS = 4       # warps (rows) per CTA
_MAX_THREADS = 1024  # CTA kernel: one vector per thread
_ROWS = (1, 2)       # CTA kernel: rows per thread group (R)


def _warp_expr(dtype, vec: int, npt: int, add: bool) -> str:
    return f"norms::layer_norm_warp_kernel<{CTYPES[dtype]}, {vec}, {npt}, {cbool(add)}>"


def _reg_expr(dtype, vec: int, r: int, add: bool) -> str:
    return f"norms::layer_norm_kernel<{CTYPES[dtype]}, {vec}, {r}, {cbool(add)}>"


def _loop_expr(dtype, add: bool) -> str:
    return f"norms::layer_norm_loop_kernel<{CTYPES[dtype]}, {cbool(add)}>"


# RMSNorm family (rms_norm_kernel<T, VEC, NPT, MODE>): blockDim.x threads per row, NPT vectors a thread in
# registers, one reduction. MODE numbers match RmsMode in norms.cu.
_RMS_MODES = {"rms_norm": 0, "add_rms_norm": 1, "gated_rms_norm": 2, "l2norm": 3}
# Vectors of 16 bytes (every real width) or scalars (odd widths, misaligned views): each instantiation costs
# compile time (~0.1 s), so odd widths get two, and rows up to 8 * 1024 vectors fit the register kernel.
_RMS_VECS = {dt: (v[0], 1) for dt, v in _VECS.items()}
# NPT (vectors a thread) by "16-byte vectors": 8 16-byte vectors spill (add/gated) under the 64 registers that
# 1024-thread CTAs allow, so the widest fast rows are 1024 threads x 4 vectors (32768 bf16).
_RMS_NPT = {True: (1, 2, 4), False: (1, 8)}
_RMS_ROW_THREADS = 128   # threads per CTA when a row needs fewer (several rows per CTA)
_RMS_FEW_ROWS = 2048     # fewer rows (decode): one vector a thread, weights loaded with the row (see the kernel)


def _rms_expr(dtype, vec: int, npt: int, mode: int) -> str:
    return f"norms::rms_norm_kernel<{CTYPES[dtype]}, {vec}, {npt}, {mode}>"


def _rms_loop_expr(dtype, mode: int) -> str:
    return f"norms::rms_norm_loop_kernel<{CTYPES[dtype]}, {mode}>"


_RMS_EXPRS = ([_rms_expr(dt, v, n, m) for dt, vecs in _RMS_VECS.items() for v in vecs
               for n in _RMS_NPT[v == vecs[0]] for m in _RMS_MODES.values()]
              + [_rms_loop_expr(dt, m) for dt in _VECS for m in _RMS_MODES.values()])

SOURCE = NvrtcSource("norms.cu", tuple(
    [_warp_expr(dt, vecs[0], n, a) for dt, vecs in _VECS.items() for n in _WARP_NPT for a in (False, True)]
    + [_reg_expr(dt, v, r, a) for dt, vecs in _VECS.items() for v in vecs for r in _ROWS for a in (False, True)]
    + [_loop_expr(dt, a) for dt in _VECS for a in (False, True)]
    + _RMS_EXPRS))


def _ptr(t) -> int:
    return 0 if t is None else t.data_ptr()


def _check_eps(eps) -> float:
    if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not math.isfinite(eps) or eps < 0:
        raise ValueError(f"eps must be a finite number >= 0, got {eps!r}")
    return float(eps)


def _launch(add: bool, device, x, bias, residual, weight, norm_bias, y, residual_out, eps: float,
            cta_rows: int | None = None) -> None:
    cols = x.shape[-1]
    if y.numel() == 0:
        return
    rows = x.numel() // cols
    vec = vec_width(x.dtype, cols, x, bias, residual, weight, norm_bias, y, residual_out,
                    candidates=_VECS[x.dtype])
    nvec = cols // vec
    args = (_ptr(x), _ptr(bias), _ptr(residual), _ptr(weight), _ptr(norm_bias), _ptr(y), _ptr(residual_out),
            i32(rows), i32(cols), f32(eps))
    if cta_rows is None and vec == _VECS[x.dtype][0] and nvec <= 32 * _WARP_NPT[-1]:
        npt = next(n for n in _WARP_NPT if 32 * n >= nvec)
        SOURCE.launch(device, _warp_expr(x.dtype, vec, npt, add), (ceil_div(rows, _WARP_ROWS), 1, 1),
                      (32, _WARP_ROWS, 1), *args)
    elif nvec <= _MAX_THREADS:  # blockDim.x threads per row group, blockDim.y groups per CTA
        tx = ceil_div(nvec, 32) * 32
        ty = max(1, 128 // tx)
        r = cta_rows or (2 if rows >= 8192 and not add else 1)
        SOURCE.launch(device, _reg_expr(x.dtype, vec, r, add), (ceil_div(rows, r * ty), 1, 1), (tx, ty, 1), *args)
    else:  # wide rows (or odd widths over 1024): one CTA per row, re-reading x from cache
        SOURCE.launch(device, _loop_expr(x.dtype, add), (rows, 1, 1), (_MAX_THREADS, 1, 1), *args)


def _check_vec(name: str, t, d: int) -> None:
    """A per-channel parameter [d] (None allowed: no bias / scale 1 / shift 0)."""
    if t is not None:
        check_input(name, t, shape=(d,))


def _check_cta_rows(cta_rows) -> None:
    if cta_rows is not None and cta_rows not in _ROWS:
        raise ValueError(f"cta_rows must be None or one of {_ROWS}, got {cta_rows!r}")


def layer_norm(x: torch.Tensor, weight: torch.Tensor | None, bias: torch.Tensor | None, eps: float = 1e-6, *,
               out: torch.Tensor | None = None, cta_rows: int | None = None) -> torch.Tensor:
    """LayerNorm over the last dim with fp32 statistics: x [N, D], weight [D] or None, bias [D] or None -> [N, D].

    cta_rows: run the CTA kernel with this many rows per thread group (1 or 2) instead of the kernel the shape
    picks (the tests and benchmarks compare the kernels with it)."""
    check_input("x", x, ndim=2)
    d = x.shape[1]
    _check_vec("weight", weight, d)
    _check_vec("bias", bias, d)
    check_same_dtype(x.dtype, weight=weight, bias=bias)
    eps = _check_eps(eps)
    _check_cta_rows(cta_rows)
    y = torch.empty_like(x) if out is None else check_out("out", out, tuple(x.shape), x.dtype)
    device = check_cuda(x=x, weight=weight, bias=bias, out=out)
    _launch(False, device, x, None, None, weight, bias, y, None, eps, cta_rows)
    return y


def add_bias_layer_norm(x: torch.Tensor, bias: torch.Tensor | None, residual: torch.Tensor,
                        weight: torch.Tensor | None, norm_bias: torch.Tensor | None, eps: float = 1e-6, *,
                        out: tuple[torch.Tensor, torch.Tensor] | None = None,
                        cta_rows: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """residual_out = residual + x + bias (fp32, rounded once); y = layer_norm(residual_out as stored).

    x, residual [N, D]; bias, weight, norm_bias [D] or None. Returns (y, residual_out). cta_rows: as in
    layer_norm.
    """
    check_input("x", x, ndim=2)
    d = x.shape[1]
    _check_vec("bias", bias, d)
    check_input("residual", residual, shape=tuple(x.shape))
    _check_vec("weight", weight, d)
    _check_vec("norm_bias", norm_bias, d)
    check_same_dtype(x.dtype, bias=bias, residual=residual, weight=weight, norm_bias=norm_bias)
    eps = _check_eps(eps)
    _check_cta_rows(cta_rows)
    if out is None:
        y, residual_out = torch.empty_like(x), torch.empty_like(x)
    else:
        if not isinstance(out, (tuple, list)) or len(out) != 2:
            raise ValueError("out must be a pair (y, residual_out)")
        y = check_out("out[0] (y)", out[0], tuple(x.shape), x.dtype)
        residual_out = check_out("out[1] (residual_out)", out[1], tuple(x.shape), x.dtype)
    device = check_cuda(x=x, bias=bias, residual=residual, weight=weight, norm_bias=norm_bias, y=y,
                        residual_out=residual_out)
    _launch(True, device, x, bias, residual, weight, norm_bias, y, residual_out, eps, cta_rows)
    return y, residual_out


# ------------------------------------------------------------------------------------------ RMSNorm family
@lru_cache(maxsize=None)
def _rms_config(nvec: int, full: bool, few_rows: bool = False) -> tuple[int, int] | None:
    """(threads per row, vectors per thread) for a row of `nvec` vectors; None: too wide, use the loop kernel.

    Up to 32 vectors: one vector a thread, a power-of-two group of lanes per row (several rows share a warp:
    the DeltaNet dv=128 and head_dim 256 rows are 16 and 32 bf16 vectors). few_rows (decode sizes): one vector
    a thread up to 1024 vectors, so each thread loads its weights with its row (on an H200, add_rms_norm
    1 x 5120 bf16 took 3.2 us as 160 x 4, the weights read after the reduction). Otherwise up to 32 * max NPT:
    one warp per row (no shared memory, no barrier), but 2 warps of 2 vectors where it would take 4 (hidden 1024
    bf16 is 64 x 2). Wider: the fewest idle lanes over the instantiated NPT (ties: closest to 4 vectors a thread: enough loads in flight, few registers), e.g.
    hidden 2048 / 2560 / 4096 / 5120 bf16: 64 x 4, 160 x 2, 128 x 4, 160 x 4 (threads x vectors).
    """
    npts = _RMS_NPT[full]
    if nvec <= 32:
        return 1 << max(0, (nvec - 1).bit_length()), 1
    if few_rows and nvec <= _MAX_THREADS:
        return ceil_div(nvec, 32) * 32, 1
    if nvec <= 32 * npts[-1]:
        n = next(n for n in npts if 32 * n >= nvec)
        # two warps of 2 vectors a thread instead of one warp of 4 (hidden 1024 bf16 on an H200, 16k tokens:
        # rms_norm 84 -> 92 % of copy, add_rms_norm 92 -> 96 %; tools/norms_gpu.py --ab)
        return (64, 2) if n == 4 and 2 in npts else (32, n)
    best = None
    for n in npts:
        tx = ceil_div(ceil_div(nvec, n), 32) * 32
        if tx <= _MAX_THREADS:
            key = (tx * n - nvec, abs(n - 4))
            if best is None or key < best[0]:
                best = (key, tx, n)
    return None if best is None else (best[1], best[2])


def _rms_launch(op: str, device, x, other, weight, y, residual_out, eps: float, w_offset: float) -> None:
    if y.numel() == 0:
        return
    rows, cols, sx = check_rows("x", x)
    so = 0 if other is None else check_rows("residual" if op == "add_rms_norm" else "z", other)[2]
    vecs = _RMS_VECS[x.dtype]
    vec = vec_width(x.dtype, math.gcd(cols, sx, so), x, other, weight, y, residual_out, candidates=vecs)
    mode = _RMS_MODES[op]
    args = (x.data_ptr(), _ptr(other), _ptr(weight), y.data_ptr(), _ptr(residual_out), i32(rows), i32(cols),
            i64(sx), i64(so), f32(eps), f32(w_offset))
    cfg = _rms_config(cols // vec, vec == vecs[0], rows < _RMS_FEW_ROWS)
    if cfg is None:
        SOURCE.launch(device, _rms_loop_expr(x.dtype, mode), (rows, 1, 1), (_MAX_THREADS, 1, 1), *args, pdl=True)
        return
    tx, npt = cfg
    ty = max(1, _RMS_ROW_THREADS // tx)
    # programmatic launches (norms.cu): the next kernel's launch and its weight loads overlap this one
    SOURCE.launch(device, _rms_expr(x.dtype, vec, npt, mode), (ceil_div(rows, ty), 1, 1), (tx, ty, 1), *args,
                  pdl=True)


def _check_rows_input(name: str, t, shape: tuple | None = None) -> None:
    """A normalised input: [..., D] with unit last-dim stride and leading dims that collapse to one row stride
    (contiguous, or a view such as q_proj's q half), no copy."""
    check_tensor(name, t, shape=shape, dtypes=KERNEL_DTYPES)
    if t.dim() == 0:
        raise ValueError(f"{name} must have at least 1 dimension (the normalised one), got a 0-d tensor")
    check_rows(name, t)


def _check_unit_offset(unit_offset) -> float:
    if not isinstance(unit_offset, bool):
        raise TypeError(f"unit_offset must be a bool, got {type(unit_offset).__name__}")
    return 1.0 if unit_offset else 0.0


def _new(x) -> torch.Tensor:
    """A contiguous output of x's shape (x may be a strided view)."""
    return torch.empty(x.shape, dtype=x.dtype, device=x.device)


def _out1(out, x) -> torch.Tensor:
    return _new(x) if out is None else check_out("out", out, tuple(x.shape), x.dtype)


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float = 1e-6, unit_offset: bool = True, *,
             out: torch.Tensor | None = None) -> torch.Tensor:
    """x * rsqrt(mean(x^2) + eps) * (1 + weight) (unit_offset) or * weight, fp32 statistics.

    x: [..., D], any leading shape ([T, hidden], the q/k head norms' [T, H, 256]), contiguous or a row view with
    unit last-dim stride (e.g. the q half of q_proj's [T, H, 512] output); weight: [D]. Returns a contiguous y.
    """
    _check_rows_input("x", x)
    check_input("weight", weight, shape=(x.shape[-1],))
    check_same_dtype(x.dtype, weight=weight)
    eps, w_offset = _check_eps(eps), _check_unit_offset(unit_offset)
    y = _out1(out, x)
    device = check_cuda(x=x, weight=weight, out=out)
    _rms_launch("rms_norm", device, x, None, weight, y, None, eps, w_offset)
    return y


def add_rms_norm(x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor, eps: float = 1e-6,
                 unit_offset: bool = True, *, out: tuple[torch.Tensor, torch.Tensor] | None = None
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """residual_out = round(residual + x); y = rms_norm(residual_out as stored). Returns (y, residual_out).

    x, residual: [..., D], same shape and dtype (row views allowed, as for rms_norm); weight: [D]. The outputs
    are contiguous; out=(y, residual) updates the residual stream in place when it is contiguous.
    """
    _check_rows_input("x", x)
    _check_rows_input("residual", residual, tuple(x.shape))
    check_input("weight", weight, shape=(x.shape[-1],))
    check_same_dtype(x.dtype, residual=residual, weight=weight)
    eps, w_offset = _check_eps(eps), _check_unit_offset(unit_offset)
    if out is None:
        y, residual_out = _new(x), _new(x)
    else:
        if not isinstance(out, (tuple, list)) or len(out) != 2:
            raise ValueError("out must be a pair (y, residual_out)")
        y = check_out("out[0] (y)", out[0], tuple(x.shape), x.dtype)
        residual_out = check_out("out[1] (residual_out)", out[1], tuple(x.shape), x.dtype)
    device = check_cuda(x=x, residual=residual, weight=weight, y=y, residual_out=residual_out)
    _rms_launch("add_rms_norm", device, x, residual, weight, y, residual_out, eps, w_offset)
    return y, residual_out


def gated_rms_norm(x: torch.Tensor, z: torch.Tensor, weight: torch.Tensor, eps: float = 1e-6, *,
                   out: torch.Tensor | None = None) -> torch.Tensor:
    """DeltaNet output norm: rms_norm(x, weight, unit_offset=False) * silu(z) with HF's two intermediate
    roundings. x, z: [..., dv], same shape and dtype (e.g. [T, Hv, 128]; row views allowed); weight: [dv]."""
    _check_rows_input("x", x)
    _check_rows_input("z", z, tuple(x.shape))
    check_input("weight", weight, shape=(x.shape[-1],))
    check_same_dtype(x.dtype, z=z, weight=weight)
    eps = _check_eps(eps)
    y = _out1(out, x)
    device = check_cuda(x=x, z=z, weight=weight, out=out)
    _rms_launch("gated_rms_norm", device, x, z, weight, y, None, eps, 0.0)
    return y


def l2norm(x: torch.Tensor, eps: float = 1e-6, *, out: torch.Tensor | None = None) -> torch.Tensor:
    """x * rsqrt(sum(x^2) + eps) over the last dim, fp32 statistics. x: [..., d] (row views allowed)."""
    _check_rows_input("x", x)
    eps = _check_eps(eps)
    y = _out1(out, x)
    device = check_cuda(x=x, out=out)
    _rms_launch("l2norm", device, x, None, None, y, None, eps, 0.0)
    return y


def layer_norm_numba(x: torch.Tensor, weight: torch.Tensor | None, bias: torch.Tensor | None, eps: float = 1e-6, *,
                     out: torch.Tensor | None = None) -> torch.Tensor:
    """layer_norm's Numba twin (registry variant "numba", kernel in kernels/numba/norms.py): x [N, D]
    (fp32/fp16/bf16), weight/bias [D] or None -> [N, D] (written into `out` when given: same shape and dtype as
    x, contiguous). CUDA tensors on a GPU, CPU tensors in the Numba simulator."""
    import numpy as np

    from .numba import io_key
    from .numba.norms import LAYER_NORM, threads_per_row
    from .runtime.numba_interop import check_kernel_device, launch

    check_input("x", x, ndim=2)
    n, d = x.shape
    for name, t in (("weight", weight), ("bias", bias)):
        if t is not None:
            check_input(name, t, shape=(d,))
    check_same_dtype(x.dtype, weight=weight, bias=bias)
    if not isinstance(eps, (int, float)) or isinstance(eps, bool) or not eps >= 0:
        raise ValueError(f"eps must be a non-negative number, got {eps!r}")
    y = torch.empty_like(x) if out is None else check_out("out", out, tuple(x.shape), x.dtype)
    check_kernel_device(x=x, weight=weight, bias=bias, out=out)
    if d == 0:
        return y
    launch(LAYER_NORM[io_key(x.dtype)], n, threads_per_row(d), x, x if weight is None else weight,
           x if bias is None else bias, y, np.int32(d), np.float32(eps),
           np.int32(weight is not None), np.int32(bias is not None))
    return y
