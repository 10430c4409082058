"""What every NVRTC wrapper shares after validation: the C++ type of a dtype, the vector width a launch may
use, and the NVRTC source of a kernel family with every template instantiation it may launch.

    SOURCE = NvrtcSource("norms.cu", ("norms::layer_norm<__nv_bfloat16, 8>", ...))
    SOURCE.launch(device, "norms::layer_norm<__nv_bfloat16, 8>", grid, block, x.data_ptr(), i32(n),
                  shared_mem=nbytes)

All instantiations of one source are compiled together once (cached on disk by kernels/runtime/nvrtc.py),
loaded and launched by kernels/runtime/launch.py, and `SOURCES` lists them so the compile tests can build each
one for sm_80 and sm_90 without a GPU.
"""

from __future__ import annotations

import torch

from . import launch as _launch

CTYPES = {torch.float32: "float", torch.float16: "__half", torch.bfloat16: "__nv_bfloat16"}

SOURCES: dict[str, "NvrtcSource"] = {}


def ceil_div(a: int, b: int) -> int:
    return -(-a // b)


def cbool(b: bool) -> str:
    return "true" if b else "false"


def split_row(items: int, max_block: int = 256) -> tuple[int, int]:
    """(CTAs, threads per CTA) covering `items` work items of a row with few idle lanes: the fewest CTAs of at
    most `max_block` threads, each a whole number of warps (e.g. 144 -> 1 x 160, 538 -> 3 x 192)."""
    ctas = ceil_div(items, max_block)
    return ctas, ceil_div(ceil_div(items, ctas), 32) * 32


def vec_width(dtype: torch.dtype, divides: int, *tensors, candidates=None) -> int:
    """The widest vector (elements; 16 bytes at most) that divides `divides` and to which every tensor's
    data pointer is aligned; 1 (scalar) in the worst case. `candidates`, if given, limits the choice."""
    size = dtype.itemsize
    ptrs = 0
    for t in tensors:
        if t is not None:
            ptrs |= t.data_ptr()  # aligned to 2^k bytes iff every pointer is
    for vec in candidates or (16 // size, 8 // size, 4 // size, 2 // size, 1):
        if vec >= 1 and divides % vec == 0 and ptrs % (vec * size) == 0:
            return vec
    return 1


class NvrtcSource:
    """kernels/cuda/<file> and the full list of name expressions (template instantiations) built from it."""

    def __init__(self, file: str, exprs: tuple[str, ...], options: tuple[str, ...] = ()):
        self.file, self.exprs, self.options = file, tuple(exprs), tuple(options)
        SOURCES[file] = self

    def kernel(self, expr: str, device: int | None = None) -> _launch.Kernel:
        """The loaded kernel for `device` (default: the current one); the first call compiles every
        instantiation (or loads them from the disk cache)."""
        return _launch.get_kernel(self.file, expr, self.exprs, options=self.options, device=device)

    def launch(self, device: int, expr: str, grid, block, *args, shared_mem: int = 0, pdl: bool = False) -> None:
        """Launch `expr` on the current torch stream of CUDA device `device` (pdl: see launch.launch)."""
        _launch.launch(_launch.get_kernel(self.file, expr, self.exprs, options=self.options, device=device),
                       grid, block, *args, shared_mem=shared_mem, pdl=pdl)
