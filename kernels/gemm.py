"""GEMM-shaped ops go to cuBLAS through torch, in the model dtype, with the bias in the GEMM's epilogue.

patch_embed is a Conv3d whose stride equals its kernel: exactly a GEMM on the flattened weight. cuDNN's conv3d
picks pathological algorithms for this shape, so the kernels never call it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .runtime.checks import check_cuda, check_input, check_same_dtype

__all__ = ["patch_embed"]


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
