"""bias + GELU in Numba (tanh and erf forms): the twin of the NVRTC kernel behind kernels.bias_gelu (wrapper
kernels.activations.bias_gelu_numba, registry variant "numba"). Elementwise over the flat [rows*cols] tensor with
a grid-stride loop."""

from __future__ import annotations

import math

import numpy as np
from numba import cuda

from . import by_io

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

