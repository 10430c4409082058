"""LayerNorm kernels (NVRTC, kernels/cuda/norms.cu) with the signatures and meaning of reference.norms.

Each wrapper validates its arguments, allocates the outputs (or checks `out=`, which the property tests
fill with NaN), picks the widest vector the width and pointers allow, and launches one kernel.
"""

from __future__ import annotations

import math

import torch

from .runtime.checks import check_cuda, check_input, check_out, check_same_dtype
from .runtime.dispatch import CTYPES, NvrtcSource, cbool, ceil_div, vec_width
from .runtime.nvrtc import f32, i32

__all__ = ["layer_norm", "add_bias_layer_norm"]

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
_R_FORCE: int | None = None  # tests/benchmarks: force the CTA kernel with this R


def _warp_expr(dtype, vec: int, npt: int, add: bool) -> str:
    return f"layer_norm_warp_kernel<{CTYPES[dtype]}, {vec}, {npt}, {cbool(add)}>"


def _reg_expr(dtype, vec: int, r: int, add: bool) -> str:
    return f"layer_norm_kernel<{CTYPES[dtype]}, {vec}, {r}, {cbool(add)}>"


def _loop_expr(dtype, add: bool) -> str:
    return f"layer_norm_loop_kernel<{CTYPES[dtype]}, {cbool(add)}>"


SOURCE = NvrtcSource("norms.cu", tuple(
    [_warp_expr(dt, vecs[0], n, a) for dt, vecs in _VECS.items() for n in _WARP_NPT for a in (False, True)]
    + [_reg_expr(dt, v, r, a) for dt, vecs in _VECS.items() for v in vecs for r in _ROWS for a in (False, True)]
    + [_loop_expr(dt, a) for dt in _VECS for a in (False, True)]))


def _ptr(t) -> int:
    return 0 if t is None else t.data_ptr()


def _check_eps(eps) -> float:
    if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not math.isfinite(eps) or eps < 0:
        raise ValueError(f"eps must be a finite number >= 0, got {eps!r}")
    return float(eps)


def _launch(add: bool, device, x, bias, residual, weight, norm_bias, y, residual_out, eps: float) -> None:
    cols = x.shape[-1]
    if y.numel() == 0:
        return
    rows = x.numel() // cols
    vec = vec_width(x.dtype, cols, x, bias, residual, weight, norm_bias, y, residual_out,
                    candidates=_VECS[x.dtype])
    nvec = cols // vec
    args = (_ptr(x), _ptr(bias), _ptr(residual), _ptr(weight), _ptr(norm_bias), _ptr(y), _ptr(residual_out),
            i32(rows), i32(cols), f32(eps))
    if _R_FORCE is None and vec == _VECS[x.dtype][0] and nvec <= 32 * _WARP_NPT[-1]:
        npt = next(n for n in _WARP_NPT if 32 * n >= nvec)
        SOURCE.launch(device, _warp_expr(x.dtype, vec, npt, add), (ceil_div(rows, _WARP_ROWS), 1, 1),
                      (32, _WARP_ROWS, 1), *args)
    elif nvec <= _MAX_THREADS:  # blockDim.x threads per row group, blockDim.y groups per CTA
        tx = ceil_div(nvec, 32) * 32
        ty = max(1, 128 // tx)
        r = _R_FORCE or (2 if rows >= 8192 and not add else 1)
        SOURCE.launch(device, _reg_expr(x.dtype, vec, r, add), (ceil_div(rows, r * ty), 1, 1), (tx, ty, 1), *args)
    else:  # wide rows (or odd widths over 1024): one CTA per row, re-reading x from cache
        SOURCE.launch(device, _loop_expr(x.dtype, add), (rows, 1, 1), (_MAX_THREADS, 1, 1), *args)


def _check_vec(name: str, t, d: int) -> None:
    """A per-channel parameter [d] (None allowed: no bias / scale 1 / shift 0)."""
    if t is not None:
        check_input(name, t, shape=(d,))


def layer_norm(x: torch.Tensor, weight: torch.Tensor | None, bias: torch.Tensor | None, eps: float = 1e-6, *,
               out: torch.Tensor | None = None) -> torch.Tensor:
    """LayerNorm over the last dim with fp32 statistics: x [N, D], weight [D] or None, bias [D] or None -> [N, D]."""
    check_input("x", x, ndim=2)
    d = x.shape[1]
    _check_vec("weight", weight, d)
    _check_vec("bias", bias, d)
    check_same_dtype(x.dtype, weight=weight, bias=bias)
    eps = _check_eps(eps)
    y = torch.empty_like(x) if out is None else check_out("out", out, tuple(x.shape), x.dtype)
    device = check_cuda(x=x, weight=weight, bias=bias, out=out)
    _launch(False, device, x, None, None, weight, bias, y, None, eps)
    return y


def add_bias_layer_norm(x: torch.Tensor, bias: torch.Tensor | None, residual: torch.Tensor,
                        weight: torch.Tensor | None, norm_bias: torch.Tensor | None, eps: float = 1e-6, *,
                        out: tuple[torch.Tensor, torch.Tensor] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """residual_out = residual + x + bias (fp32, rounded once); y = layer_norm(residual_out as stored).

    x, residual [N, D]; bias, weight, norm_bias [D] or None. Returns (y, residual_out).
    """
    check_input("x", x, ndim=2)
    d = x.shape[1]
    _check_vec("bias", bias, d)
    check_input("residual", residual, shape=tuple(x.shape))
    _check_vec("weight", weight, d)
    _check_vec("norm_bias", norm_bias, d)
    check_same_dtype(x.dtype, bias=bias, residual=residual, weight=weight, norm_bias=norm_bias)
    eps = _check_eps(eps)
    if out is None:
        y, residual_out = torch.empty_like(x), torch.empty_like(x)
    else:
        if not isinstance(out, (tuple, list)) or len(out) != 2:
            raise ValueError("out must be a pair (y, residual_out)")
        y = check_out("out[0] (y)", out[0], tuple(x.shape), x.dtype)
        residual_out = check_out("out[1] (residual_out)", out[1], tuple(x.shape), x.dtype)
    device = check_cuda(x=x, bias=bias, residual=residual, weight=weight, norm_bias=norm_bias, y=y,
                        residual_out=residual_out)
    _launch(True, device, x, bias, residual, weight, norm_bias, y, residual_out, eps)
    return y, residual_out
