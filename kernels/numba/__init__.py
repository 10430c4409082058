"""Numba CUDA kernels, one module per family, plus the element helpers they share.

Kernels take flat (1-D) arrays and do fp32 math. Element access goes through a (load, store) pair chosen per
storage type, so one kernel body serves every dtype:
  * "f":    float32 / float16 arrays: load casts to float32, store casts back (round to nearest even).
  * "bf16": bf16 tensors arrive as int16 bits (see kernels.runtime.numba_interop); on the GPU the
            numba.cuda.bf16 intrinsics convert; in the simulator (no bf16 there) bit-exact numpy stand-ins do.
`by_io(factory)` builds a kernel for both pairs: `KERNELS = by_io(make_x)` then `KERNELS[io_key(t.dtype)]`.

Kernel bodies only: the public wrappers are in kernels/<family>.py (kernels.vision, kernels.rope.rope_index,
kernels.glue, kernels.norms.layer_norm_numba, kernels.activations.bias_gelu_numba).
Float constants must be np.float32 globals or numba.float32(...): a bare Python float is a double in Numba
and drags fp64 math into the PTX (tests/test_numba_compile.py checks for `.f64`).
"""

from __future__ import annotations

import numba
import numpy as np
import torch
from numba import cuda

from ..runtime.numba_interop import SIM


@cuda.jit(device=True)
def load_f(a, i):
    return numba.float32(a[i])


@cuda.jit(device=True)
def store_f(a, i, v):
    a[i] = v  # Numba converts float32 to the array's dtype (f16: round to nearest even)


if SIM:

    def load_bf16(a, i):  # a: int16 array of bf16 bits
        bits = np.array([a[i]], dtype=np.int16).view(np.uint16).astype(np.uint32) << 16
        return np.float32(bits.view(np.float32)[0])

    def store_bf16(a, i, v):  # round to nearest even, as __float2bfloat16_rn
        f = np.float32(v)
        if np.isnan(f):
            r = 0x7FC0
        else:
            u = int(np.array([f], dtype=np.float32).view(np.uint32)[0])
            r = ((u + 0x7FFF + ((u >> 16) & 1)) >> 16) & 0xFFFF
        a[i] = np.array([r], dtype=np.uint16).view(np.int16)[0]

else:
    from numba.cuda import bf16 as _bf16

    @cuda.jit(device=True)
    def load_bf16(a, i):
        return _bf16.bfloat162float(_bf16.int16_as_bfloat16(a[i]))

    @cuda.jit(device=True)
    def store_bf16(a, i, v):
        a[i] = _bf16.bfloat16_as_int16(_bf16.float2bfloat16_rn(v))


IO = {"f": (load_f, store_f), "bf16": (load_bf16, store_bf16)}


def io_key(dtype: torch.dtype) -> str:
    """Which (load, store) pair serves tensors of `dtype`."""
    return "bf16" if dtype == torch.bfloat16 else "f"


def by_io(factory) -> dict:
    """{"f": factory(load_f, store_f), "bf16": factory(load_bf16, store_bf16)}."""
    return {key: factory(*pair) for key, pair in IO.items()}


def elementwise_launch(n: int) -> tuple[int, int]:
    """(grid, block) for a grid-stride loop over n items. The simulator pays per thread and per block, not per
    item, so it gets one warp; a GPU gets up to 16 blocks of 256 per SM of an H100 (the loop covers the rest)."""
    if SIM:
        return 1, 32
    return max(1, min(-(-n // 256), 132 * 16)), 256
