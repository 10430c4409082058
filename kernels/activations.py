"""Bias + GELU (NVRTC, kernels/cuda/activations.cu) with the signature and meaning of reference.bias_gelu."""

from __future__ import annotations

import torch

from .runtime.checks import check_cuda, check_input, check_out, check_same_dtype
from .runtime.dispatch import CTYPES, NvrtcSource, cbool, ceil_div, split_row, vec_width
from .runtime.nvrtc import i32

__all__ = ["bias_gelu"]

_VECS = {torch.float32: (4, 2, 1), torch.float16: (8, 4, 2, 1), torch.bfloat16: (8, 4, 2, 1)}
_APPROX = {"tanh": True, "none": False}
_ROWS_PER_THREAD = 4  # ROWS in the kernel


def _expr(dtype, vec: int, tanh: bool) -> str:
    return f"bias_gelu_kernel<{CTYPES[dtype]}, {vec}, {cbool(tanh)}>"


SOURCE = NvrtcSource("activations.cu", tuple(
    _expr(dt, v, t) for dt, vecs in _VECS.items() for v in vecs for t in (True, False)))


def bias_gelu(x: torch.Tensor, bias: torch.Tensor | None, approximate: str = "tanh", *,
              out: torch.Tensor | None = None) -> torch.Tensor:
    """gelu(x + bias): x [N, I], bias [I] or None; approximate "tanh" (gelu_pytorch_tanh) or "none" (erf)."""
    check_input("x", x, ndim=2)
    cols = x.shape[1]
    if bias is not None:
        check_input("bias", bias, shape=(cols,))
    check_same_dtype(x.dtype, bias=bias)
    if approximate not in _APPROX:
        raise ValueError(f"approximate must be 'tanh' or 'none', got {approximate!r}")
    y = torch.empty_like(x) if out is None else check_out("out", out, tuple(x.shape), x.dtype)
    device = check_cuda(x=x, bias=bias, out=out)
    if y.numel() == 0:
        return y
    rows = x.shape[0]
    vec = vec_width(x.dtype, cols, x, bias, y, candidates=_VECS[x.dtype])
    ctas, block = split_row(cols // vec)
    grid = (ctas, min(ceil_div(rows, _ROWS_PER_THREAD), 65535), 1)
    SOURCE.launch(device, _expr(x.dtype, vec, _APPROX[approximate]), grid, (block, 1, 1),
                  x.data_ptr(), 0 if bias is None else bias.data_ptr(), y.data_ptr(), i32(rows), i32(cols))
    return y
