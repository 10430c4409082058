"""Bilinear position embedding add (NVRTC, kernels/cuda/vision.cu), signature of reference.add_pos_embed."""

from __future__ import annotations

import torch

from .runtime.checks import check_cuda, check_input, check_out, check_same_dtype
from .runtime.dispatch import CTYPES, NvrtcSource, ceil_div, split_row, vec_width
from .runtime.nvrtc import i32

__all__ = ["add_pos_embed"]

_VECS = {torch.float32: (4, 2, 1), torch.float16: (8, 4, 2, 1), torch.bfloat16: (8, 4, 2, 1)}
_ROWS_PER_THREAD = 4  # ROWS in the kernel


def _expr(dtype, vec: int) -> str:
    return f"vision::add_pos_embed_kernel<{CTYPES[dtype]}, {vec}>"


SOURCE = NvrtcSource("vision.cu", tuple(_expr(dt, v) for dt, vecs in _VECS.items() for v in vecs))


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
    vec = vec_width(x.dtype, d, x, table, y, candidates=_VECS[x.dtype])
    ctas, block = split_row(d // vec)
    grid = (ctas, min(ceil_div(n, _ROWS_PER_THREAD), 65535), 1)
    SOURCE.launch(device, _expr(x.dtype, vec), grid, (block, 1, 1), x.data_ptr(), table.data_ptr(),
                  index.data_ptr(), weight.data_ptr(), y.data_ptr(), i32(n), i32(d), i32(table.shape[0]))
    return y
