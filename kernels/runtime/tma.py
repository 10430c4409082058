"""Tensor-memory-accelerator (TMA) descriptors (Hopper, sm_90+), passed to kernels by value.

    tm = tensor_map(k, box=(128, 1, 64))        # 128-byte CUtensorMap of a [T, H, D] tensor, boxes of 128 x 1 x 64
    launch(kernel, grid, block, o.data_ptr(), ..., tm, shared_mem=nbytes)      # kernels/runtime/launch.py

A kernel takes a descriptor as `const __grid_constant__ qkern::TmaDesc` (128 bytes, 64-byte aligned;
kernels/cuda/include/tma.cuh) and copies boxes with cp.async.bulk.tensor; box reads reaching out of the tensor's
bounds land as zeros and box writes there are dropped. Shapes, strides and boxes are given in torch's dimension
order (outermost first); the descriptor lists them innermost first, as the copy instructions' coordinates do.
Descriptors are cached by (address, shape, strides, dtype, box, swizzle): the hot path of a launch is one lookup.
"""

from __future__ import annotations

import ctypes
from collections import OrderedDict

import torch

_DTYPES = {torch.bfloat16: "BFLOAT16", torch.float16: "FLOAT16", torch.float32: "FLOAT32",
           torch.int32: "INT32", torch.uint8: "UINT8"}
_SWIZZLES = {0: "NONE", 32: "32B", 64: "64B", 128: "128B"}
_CACHE: OrderedDict = OrderedDict()  # key -> 128-byte descriptor
_CACHE_SIZE = 256


class TmaDesc(ctypes.Structure):
    _fields_ = [("w", ctypes.c_uint64 * 16)]

    def getPtr(self) -> int:  # how cuLaunchKernel's (values, types) form takes a struct passed by value
        return ctypes.addressof(self)


def tensor_map(t: torch.Tensor, box: tuple[int, ...], swizzle: int = 128) -> TmaDesc:
    """CUtensorMap of a CUDA tensor of rank 1-5 with unit innermost stride; `box` the copy's box per dimension
    (outermost first, each 1-256 elements), `swizzle` the shared-memory layout (0, 32, 64 or 128 bytes: the inner
    box row must be at most that many bytes). Out-of-bounds elements read as zero."""
    key = (t.data_ptr(), t.shape, t.stride(), t.dtype, box, swizzle)
    hit = _CACHE.get(key)
    if hit is not None:
        _CACHE.move_to_end(key)
        return hit
    from cuda.bindings import driver

    from .checks import check_aligned16, check_cuda

    if not isinstance(t, torch.Tensor):
        raise TypeError(f"tensor must be a torch.Tensor, got {type(t).__name__}")
    if t.dtype not in _DTYPES:
        raise ValueError(f"tensor dtype {t.dtype} has no TMA element type (supported: {tuple(_DTYPES)})")
    if not 1 <= t.dim() <= 5:
        raise ValueError(f"a TMA descriptor covers 1 to 5 dimensions, got a tensor of rank {t.dim()}")
    box = tuple(box)
    if len(box) != t.dim() or not all(isinstance(b, int) and 1 <= b <= 256 for b in box):
        raise ValueError(f"box must give 1-256 elements for each of the tensor's {t.dim()} dimensions, got {box!r}")
    if swizzle not in _SWIZZLES:
        raise ValueError(f"swizzle must be one of {tuple(_SWIZZLES)} bytes, got {swizzle!r}")
    es = t.element_size()
    if t.stride(-1) != 1:
        raise ValueError(f"the innermost dimension must be contiguous (stride 1), got strides {t.stride()}")
    if any((s * es) % 16 for s in t.stride()[:-1]):
        raise ValueError(f"outer strides must be multiples of 16 bytes for the copy engine, got {t.stride()} "
                         f"elements of {es} bytes")
    if (box[-1] * es) % 16 or (swizzle and box[-1] * es > swizzle):
        raise ValueError(f"the inner box row ({box[-1]} x {es} bytes) must be a multiple of 16 bytes"
                         + (f" and at most the {swizzle}-byte swizzle" if swizzle else ""))
    check_cuda(tensor=t)
    check_aligned16(tensor=t)
    rank = t.dim()
    u64, u32 = driver.cuuint64_t, driver.cuuint32_t  # older cuda-bindings take no plain ints here
    err, tmap = driver.cuTensorMapEncodeTiled(
        getattr(driver.CUtensorMapDataType, f"CU_TENSOR_MAP_DATA_TYPE_{_DTYPES[t.dtype]}"), rank, t.data_ptr(),
        [u64(n) for n in reversed(t.shape)], [u64(s * es) for s in reversed(t.stride()[:-1])],
        [u32(b) for b in reversed(box)], [u32(1)] * rank,
        driver.CUtensorMapInterleave.CU_TENSOR_MAP_INTERLEAVE_NONE,
        getattr(driver.CUtensorMapSwizzle, f"CU_TENSOR_MAP_SWIZZLE_{_SWIZZLES[swizzle]}"),
        driver.CUtensorMapL2promotion.CU_TENSOR_MAP_L2_PROMOTION_L2_256B,
        driver.CUtensorMapFloatOOBfill.CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE)
    if int(err) != 0:
        raise RuntimeError(f"cuTensorMapEncodeTiled failed ({err}) for shape {tuple(t.shape)} {t.dtype}, box {box}")
    desc = TmaDesc()
    ctypes.memmove(ctypes.addressof(desc), tmap.getPtr(), 128)
    _CACHE[key] = desc
    if len(_CACHE) > _CACHE_SIZE:
        _CACHE.popitem(last=False)
    return desc


def tensor_map_3d(t: torch.Tensor, box_cols: int, box_rows: int) -> TmaDesc:
    """The attention kernels' descriptor: a contiguous [T, H, D] bf16/fp16 tensor, boxes of box_rows x 1 head x
    box_cols columns in the 128-byte swizzle (so box_cols x element size must be 128 bytes)."""
    key = (t.data_ptr(), t.shape, t.stride(), t.dtype, (box_rows, 1, box_cols), 128)
    hit = _CACHE.get(key)  # the hot path: checked and encoded before
    if hit is not None:
        _CACHE.move_to_end(key)
        return hit
    from .checks import check_input

    check_input("tensor", t, ndim=3, dtypes=(torch.bfloat16, torch.float16))
    if not (isinstance(box_rows, int) and 1 <= box_rows <= 256):
        raise ValueError(f"box_rows must be an int in [1, 256] (the copy engine's limit), got {box_rows!r}")
    if box_cols * t.element_size() != 128:
        raise ValueError(f"the 128-byte swizzle needs 128-byte box rows, got {box_cols} x {t.element_size()} bytes")
    if (t.shape[2] * t.element_size()) % 16:
        raise ValueError(f"rows of the tensor must be a multiple of 16 bytes for the copy engine, got D = {t.shape[2]}")
    return tensor_map(t, (box_rows, 1, box_cols), 128)
