"""LayerNorm in Numba: the twin of the NVRTC kernel behind kernels.layer_norm (wrapper kernels.norms.layer_norm_numba,
registry variant "numba").

One block per row; fp32 statistics in two passes over the row (mean, then the mean of (x - mean)^2, as the
reference does), each reduced across the block with warp shuffles plus one shared-memory step.
"""

from __future__ import annotations

import math

import numba
import numpy as np
from numba import cuda

from ..runtime.numba_interop import SIM
from . import by_io

F0 = np.float32(0.0)
F1 = np.float32(1.0)
FULL_MASK = 0xFFFFFFFF


def threads_per_row(cols: int) -> int:
    """Block size for one row: a multiple of 32. The simulator costs ~0.27 s per 128 threads, so 64 there
    (still two warps, so the cross-warp step is exercised)."""
    if SIM:
        return 64
    return 128 if cols <= 2048 else 256


@cuda.jit(device=True)
def block_sum(v, red):
    """Sum of `v` over the block (every thread gets it). red: shared float32[32]. All threads must call it."""
    off = 16
    while off > 0:
        v += cuda.shfl_xor_sync(FULL_MASK, v, off)
        off //= 2
    if cuda.threadIdx.x % 32 == 0:
        red[cuda.threadIdx.x // 32] = v
    cuda.syncthreads()
    total = F0
    for w in range(cuda.blockDim.x // 32):  # same order in every thread: identical totals
        total += red[w]
    cuda.syncthreads()  # red may be reused after this
    return total


def make_layer_norm(load, store):
    @cuda.jit
    def layer_norm_kernel(x, w, b, y, cols, eps, has_w, has_b):
        """x, y: flat [rows*cols]; w, b: [cols] (ignored unless has_w / has_b); one block per row."""
        red = cuda.shared.array(32, dtype=numba.float32)
        base = cuda.blockIdx.x * cols
        t, nt = cuda.threadIdx.x, cuda.blockDim.x
        inv_cols = F1 / numba.float32(cols)

        acc = F0
        for j in range(t, cols, nt):
            acc += load(x, base + j)
        mean = block_sum(acc, red) * inv_cols

        acc = F0
        for j in range(t, cols, nt):
            d = load(x, base + j) - mean
            acc += d * d
        rstd = F1 / math.sqrt(block_sum(acc, red) * inv_cols + eps)

        for j in range(t, cols, nt):
            v = (load(x, base + j) - mean) * rstd
            if has_w:
                v = v * load(w, j)
            if has_b:
                v = v + load(b, j)
            store(y, base + j, v)

    return layer_norm_kernel


LAYER_NORM = by_io(make_layer_norm)

