"""bias + GELU in Numba (tanh and erf forms): the twin of the NVRTC kernel behind kernels.bias_gelu
(registry variant "numba"). Elementwise over the flat [rows*cols] tensor with a grid-stride loop."""

from __future__ import annotations

import math

import numpy as np
import torch
from numba import cuda

from ..runtime.checks import check_input, check_out, check_same_dtype
from ..runtime.numba_interop import check_kernel_device, launch
from . import by_io, elementwise_launch, io_key

HALF = np.float32(0.5)
ONE = np.float32(1.0)
SQRT_HALF = np.float32(0.7071067811865476)  # 1/sqrt(2)
SQRT_2_OVER_PI = np.float32(0.7978845608028654)
GELU_C = np.float32(0.044715)


def make_bias_gelu(load, store):
    @cuda.jit
    def bias_gelu_kernel(x, bias, y, n, cols, has_bias, tanh_form):
        """y = gelu(x + bias[col]); x, y: flat [n = rows*cols]; tanh_form: 1 = tanh approximation, 0 = erf."""
        for i in range(cuda.grid(1), n, cuda.gridsize(1)):
            v = load(x, i)
            if has_bias:
                v = v + load(bias, i % cols)
            if tanh_form:
                g = HALF * v * (ONE + math.tanh(SQRT_2_OVER_PI * (v + GELU_C * v * v * v)))
            else:
                g = HALF * v * (ONE + math.erf(v * SQRT_HALF))
            store(y, i, g)

    return bias_gelu_kernel


BIAS_GELU = by_io(make_bias_gelu)


def bias_gelu(x, bias, approximate: str = "tanh", *, out=None):
    """Numba twin of reference.bias_gelu: gelu(x + bias), x [N, I] (fp32/fp16/bf16), bias [I] or None
    (written into `out` when given: same shape and dtype as x, contiguous)."""
    check_input("x", x, ndim=2)
    if bias is not None:
        check_input("bias", bias, shape=(x.shape[1],))
    check_same_dtype(x.dtype, bias=bias)
    if approximate not in ("tanh", "none"):
        raise ValueError(f'approximate must be "tanh" or "none", got {approximate!r}')
    y = torch.empty_like(x) if out is None else check_out("out", out, tuple(x.shape), x.dtype)
    check_kernel_device(x=x, bias=bias, out=out)
    n = x.numel()
    if n >= 2**31:
        raise ValueError(f"x has {n} elements; this kernel indexes with int32")
    launch(BIAS_GELU[io_key(x.dtype)], *elementwise_launch(n), x, x if bias is None else bias, y,
           np.int32(n), np.int32(x.shape[1]), np.int32(bias is not None), np.int32(approximate == "tanh"))
    return y
