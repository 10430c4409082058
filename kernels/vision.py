"""The vision family's kernels, with the signatures and results of reference.vision:

  patch_embed          the Conv3d (stride == kernel) as the GEMM it is: cuBLAS through torch, bias in the epilogue
                       (cuDNN's conv3d picks pathological algorithms for this shape, so it is never called)
  add_pos_embed        NVRTC (kernels/cuda/vision.cu): the bilinear position embedding gathered and added in one pass
  vision_pos_taps, vision_rope_cos_sin, vision_cu_seqlens
                       Numba (kernels/numba/vision.py): the per-patch tables, computed from grid_thw on the device

grid_thw stays on the device (kernels read it as int64: an int32 grid is widened on the device). Output sizes need
one number the device holds (N = sum(t*h*w) patches, or sum(t) segments): pass it as `num_patches` /
`num_segments` (the model knows N from pixel_values.shape[0]) and the call makes no host sync; leave it None and
the wrapper reads grid_thw once, which also validates its values. With an explicit count the values are trusted:
patches past the grid's total come out NaN.

The Numba kernels take CUDA tensors on a GPU run (a CPU tensor is an error), CPU tensors in the Numba simulator.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from reference._checks import check_grid_thw

from .runtime.checks import check_cuda, check_input, check_out, check_same_dtype
from .runtime.dispatch import CTYPES, NvrtcSource, ceil_div, split_row, vec_width
from .runtime.nvrtc import i32

__all__ = ["patch_embed", "vision_pos_taps", "add_pos_embed", "vision_rope_cos_sin", "vision_cu_seqlens"]

_GRID_DTYPES = (torch.int32, torch.int64)


def _pos_int(name: str, v) -> int:
    if not isinstance(v, int) or isinstance(v, bool) or v <= 0:
        raise ValueError(f"{name} must be a positive int, got {v!r}")
    return v


def _count(name: str, v) -> int:
    if not isinstance(v, int) or isinstance(v, bool) or v < 0:
        raise ValueError(f"{name} must be a non-negative int or None, got {v!r}")
    return v


def _check_grid(grid_thw, merge: int, need_values: bool) -> list | None:
    """Structure and device always; values (positive, h and w multiples of merge) only when read to the host."""
    from .runtime.numba_interop import check_kernel_device

    check_input("grid_thw", grid_thw, ndim=2, dtypes=_GRID_DTYPES)
    if grid_thw.shape[1] != 3:
        raise ValueError(f"grid_thw must have shape (n, 3), got {tuple(grid_thw.shape)}")
    if grid_thw.shape[0] == 0:
        raise ValueError("grid_thw must have at least one (t, h, w) row, got shape (0, 3)")
    check_kernel_device(grid_thw=grid_thw)
    if not need_values:
        return None
    return check_grid_thw(grid_thw, "grid_thw", merge).tolist()  # the one host read


def _outs(out, names, shapes, dtypes, grid_thw) -> tuple:
    """New output tensors, or the caller's `out` tuple checked (shape, dtype, contiguous, device)."""
    from .runtime.numba_interop import check_kernel_device

    if out is None:
        return tuple(torch.empty(s, dtype=d, device=grid_thw.device) for s, d in zip(shapes, dtypes))
    if not isinstance(out, (tuple, list)) or len(out) != len(names):
        raise ValueError(f"out must be a tuple ({', '.join(names)})")
    for name, t, s, d in zip(names, out, shapes, dtypes):
        check_out(f"out ({name})", t, s, d)
    check_kernel_device(grid_thw=grid_thw, **{f"out ({n})": t for n, t in zip(names, out)})
    return tuple(out)


def vision_pos_taps(grid_thw: torch.Tensor, side: int = 48, merge: int = 2, *, num_patches: int | None = None,
                    out: tuple[torch.Tensor, torch.Tensor] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Bilinear taps of the side x side position table for every patch (see reference.vision_pos_taps).

    grid_thw: int32/int64 [n, 3] on the kernel device. num_patches: sum(t*h*w) if known (no host sync).
    Returns index int32 [4, N] and weight fp32 [4, N] (into `out` = (index, weight) when given),
    bit-identical to the reference.
    """
    from .numba import elementwise_launch
    from .numba.vision import pos_taps_kernel
    from .runtime.numba_interop import launch

    _pos_int("merge", merge)
    _pos_int("side", side)
    grids = _check_grid(grid_thw, merge, num_patches is None)
    n = sum(t * h * w for t, h, w in grids) if grids is not None else _count("num_patches", num_patches)
    index, weight = _outs(out, ("index", "weight"), ((4, n), (4, n)), (torch.int32, torch.float32), grid_thw)
    launch(pos_taps_kernel, *elementwise_launch(n), grid_thw.long(), np.int64(grid_thw.shape[0]), np.int64(side),
           np.int64(merge), np.int64(n), index, weight)
    return index, weight


def patch_embed(pixel_values: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """pixel_values [N, C*T*P*P], weight [D, C, T, P, P], bias [D] or None -> [N, D] (one cuBLAS GEMM)."""
    check_input("pixel_values", pixel_values, ndim=2)
    check_input("weight", weight, ndim=5)
    d = weight.shape[0]
    if pixel_values.shape[1] != weight[0].numel():
        raise ValueError(f"pixel_values rows must have C*T*P*P = {weight[0].numel()} values for weight "
                         f"{tuple(weight.shape)}, got shape {tuple(pixel_values.shape)}")
    if bias is not None:
        check_input("bias", bias, shape=(d,))
    check_same_dtype(pixel_values.dtype, weight=weight, bias=bias)
    check_cuda(pixel_values=pixel_values, weight=weight, bias=bias)
    return F.linear(pixel_values, weight.reshape(d, -1), bias)


_APE_VECS = {torch.float32: (4, 2, 1), torch.float16: (8, 4, 2, 1), torch.bfloat16: (8, 4, 2, 1)}
_APE_ROWS_PER_THREAD = 4  # ROWS in the kernel


def _ape_expr(dtype, vec: int) -> str:
    return f"vision::add_pos_embed_kernel<{CTYPES[dtype]}, {vec}>"


SOURCE = NvrtcSource("vision.cu", tuple(_ape_expr(dt, v) for dt, vecs in _APE_VECS.items() for v in vecs))


def add_pos_embed(x: torch.Tensor, table: torch.Tensor, index: torch.Tensor, weight: torch.Tensor, *,
                  out: torch.Tensor | None = None) -> torch.Tensor:
    """x [N, D] + sum_k weight[k] * table[index[k]]: table [R, D] (x's dtype), index int32 [4, N],
    weight fp32 [4, N] -> [N, D]. One pass, no [4N, D] intermediate.

    Indices are not range-checked on the host (that would need a device sync): a row whose index is outside
    [0, R) comes out as NaN instead of reading out of bounds.
    """
    check_input("x", x, ndim=2)
    n, d = x.shape
    check_input("table", table, ndim=2)
    if table.shape[1] != d or table.shape[0] < 1:
        raise ValueError(f"table must have shape (rows >= 1, {d}), got {tuple(table.shape)}")
    check_input("index", index, shape=(4, n), dtypes=(torch.int32,))
    check_input("weight", weight, shape=(4, n), dtypes=(torch.float32,))
    check_same_dtype(x.dtype, table=table)
    y = torch.empty_like(x) if out is None else check_out("out", out, (n, d), x.dtype)
    device = check_cuda(x=x, table=table, index=index, weight=weight, out=out)
    if y.numel() == 0:
        return y
    vec = vec_width(x.dtype, d, x, table, y, candidates=_APE_VECS[x.dtype])
    ctas, block = split_row(d // vec)
    grid = (ctas, min(ceil_div(n, _APE_ROWS_PER_THREAD), 65535), 1)
    SOURCE.launch(device, _ape_expr(x.dtype, vec), grid, (block, 1, 1), x.data_ptr(), table.data_ptr(),
                  index.data_ptr(), weight.data_ptr(), y.data_ptr(), i32(n), i32(d), i32(table.shape[0]))
    return y


_INV_FREQ: dict = {}


def _inv_freq(head_dim: int, theta: float, device: torch.device) -> torch.Tensor:
    """reference.rope.inv_freq's fp32 table (built on the CPU, as the reference does), cached on `device`."""
    key = (head_dim, float(theta), device)
    t = _INV_FREQ.get(key)
    if t is None:
        from reference.rope import inv_freq

        t = _INV_FREQ[key] = inv_freq(head_dim // 2, theta).to(device)
    return t


def vision_rope_cos_sin(grid_thw: torch.Tensor, head_dim: int, theta: float = 1e4, merge: int = 2, *,
                        num_patches: int | None = None,
                        out: tuple[torch.Tensor, torch.Tensor] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """2D RoPE tables of the ViT (see reference.vision_rope_cos_sin): cos, sin fp32 [N, head_dim/2]
    (into `out` = (cos, sin) when given).

    grid_thw: int32/int64 [n, 3]; head_dim a multiple of 4. num_patches: sum(t*h*w) if known (no host sync).
    """
    from .numba import elementwise_launch
    from .numba.vision import rope_cos_sin_kernel
    from .runtime.numba_interop import launch

    _pos_int("merge", merge)
    if _pos_int("head_dim", head_dim) % 4:
        raise ValueError(f"head_dim must be a multiple of 4, got {head_dim}")
    if not isinstance(theta, (int, float)) or isinstance(theta, bool) or not theta > 0:
        raise ValueError(f"theta must be a positive number, got {theta!r}")
    grids = _check_grid(grid_thw, merge, num_patches is None)
    n = sum(t * h * w for t, h, w in grids) if grids is not None else _count("num_patches", num_patches)
    freq = _inv_freq(head_dim, theta, grid_thw.device)
    cos, sin = _outs(out, ("cos", "sin"), ((n, head_dim // 2),) * 2, (torch.float32,) * 2, grid_thw)
    launch(rope_cos_sin_kernel, *elementwise_launch(cos.numel()), grid_thw.long(), np.int64(grid_thw.shape[0]),
           np.int64(merge), np.int64(n), freq, np.int64(head_dim // 4), cos, sin)
    return cos, sin


def vision_cu_seqlens(grid_thw: torch.Tensor, *, num_segments: int | None = None,
                      out: torch.Tensor | None = None) -> torch.Tensor:
    """ViT attention segment bounds (see reference.vision_cu_seqlens): int32 [sum(t) + 1] (into `out`).

    num_segments: sum(t) if known (no host sync); with it, the values of grid_thw are not checked.
    """
    from .numba import elementwise_launch
    from .numba.vision import cu_seqlens_kernel
    from .runtime.numba_interop import launch

    grids = _check_grid(grid_thw, 1, num_segments is None)
    if grids is not None:
        n_seg = sum(t for t, _, _ in grids)
        if sum(t * h * w for t, h, w in grids) >= 2**31:
            raise ValueError("grid_thw has too many patches for int32 cu_seqlens")
    else:
        n_seg = _count("num_segments", num_segments)
    (cu,) = _outs(None if out is None else (out,), ("out",), ((n_seg + 1,),), (torch.int32,), grid_thw)
    launch(cu_seqlens_kernel, *elementwise_launch(n_seg + 1), grid_thw.long(), np.int64(grid_thw.shape[0]),
           np.int64(n_seg + 1), cu)
    return cu
