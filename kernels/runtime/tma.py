"""Tensor-memory-accelerator (TMA) descriptors and launches that pass them by value (Hopper, sm_90+).

    tm = tensor_map_3d(k, box_cols=64, box_rows=128)     # 128-byte CUtensorMap for a contiguous [T, H, D] tensor
    launch_raw(kernel, grid, block, smem, [c_ptr(o.data_ptr()), c_int(n), ..., tm])

A kernel takes a descriptor as `const __grid_constant__ TmaDesc` (128 bytes, 64-byte aligned) and reads boxes of
[box_rows rows][1 head][box_cols columns] with cp.async.bulk.tensor, in the 128-byte swizzle layout; reads out of the
tensor's bounds (columns past D, rows past T) land as zeros. cuda.core's launch takes scalars and pointers only, so
`launch_raw` goes through the driver's cuLaunchKernel with an array of pointers to ctypes values; it launches on
torch's current stream, so it can be captured in a CUDA graph (the descriptor is copied into the graph's node).
"""

from __future__ import annotations

import ctypes
from collections import OrderedDict

import torch

_DTYPES = {torch.bfloat16: "CU_TENSOR_MAP_DATA_TYPE_BFLOAT16", torch.float16: "CU_TENSOR_MAP_DATA_TYPE_FLOAT16"}
_CACHE: OrderedDict = OrderedDict()  # (ptr, shape, dtype, box) -> 128-byte descriptor
_CACHE_SIZE = 256


class TmaDesc(ctypes.Structure):
    _fields_ = [("w", ctypes.c_uint64 * 16)]


def tensor_map_3d(t: torch.Tensor, box_cols: int, box_rows: int) -> TmaDesc:
    """CUtensorMap of a contiguous [T, H, D] bf16/fp16 CUDA tensor; box = box_rows x 1 x box_cols, 128-byte swizzle,
    out-of-bounds elements read as zero. Cached by (address, shape, dtype, box)."""
    # Hot path (every launch): a contiguous tensor whose address, shape and dtype were already checked and encoded
    # (unified addressing: one device per address). Anything else takes the full checks below.
    key = (t.data_ptr(), tuple(t.shape), t.dtype, box_cols, box_rows)
    hit = _CACHE.get(key)
    if hit is not None and t.is_contiguous():
        _CACHE.move_to_end(key)
        return hit
    from cuda.bindings import driver

    from .checks import check_aligned16, check_cuda, check_input

    check_input("tensor", t, ndim=3, dtypes=tuple(_DTYPES))  # the map assumes these strides and element types
    T, H, D = t.shape
    if not (isinstance(box_rows, int) and 1 <= box_rows <= 256):
        raise ValueError(f"box_rows must be an int in [1, 256] (the copy engine's limit), got {box_rows!r}")
    check_cuda(tensor=t)
    check_aligned16(tensor=t)
    es = t.element_size()
    if (D * es) % 16:
        raise ValueError(f"rows of the tensor must be a multiple of 16 bytes for the copy engine, got D = {D}")
    if box_cols * es != 128:
        raise ValueError(f"the 128-byte swizzle needs 128-byte box rows, got {box_cols} x {es} bytes")
    u64, u32 = driver.cuuint64_t, driver.cuuint32_t  # older cuda-bindings take no plain ints here
    err, tmap = driver.cuTensorMapEncodeTiled(
        getattr(driver.CUtensorMapDataType, _DTYPES[t.dtype]), 3, t.data_ptr(),
        [u64(D), u64(H), u64(T)], [u64(D * es), u64(H * D * es)], [u32(box_cols), u32(1), u32(box_rows)],
        [u32(1), u32(1), u32(1)],
        driver.CUtensorMapInterleave.CU_TENSOR_MAP_INTERLEAVE_NONE,
        driver.CUtensorMapSwizzle.CU_TENSOR_MAP_SWIZZLE_128B,
        driver.CUtensorMapL2promotion.CU_TENSOR_MAP_L2_PROMOTION_L2_256B,
        driver.CUtensorMapFloatOOBfill.CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE)
    if int(err) != 0:
        raise RuntimeError(f"cuTensorMapEncodeTiled failed ({err}) for shape {tuple(t.shape)} {t.dtype}")
    desc = TmaDesc()
    ctypes.memmove(ctypes.addressof(desc), tmap.getPtr(), 128)
    _CACHE[key] = desc
    if len(_CACHE) > _CACHE_SIZE:
        _CACHE.popitem(last=False)
    return desc


_FUNCTIONS: dict = {}  # id(kernel) -> (kernel, CUfunction): the driver handle, built once per kernel


def _current_raw_stream(device_index: int) -> int:
    """torch's current stream on that device as a raw handle (torch.cuda.current_stream() builds a Python Stream
    object per call, a third of a short launch's host time)."""
    raw = getattr(torch._C, "_cuda_getCurrentRawStream", None)
    return raw(device_index) if raw is not None else torch.cuda.current_stream(device_index).cuda_stream


def launch_raw(kernel, grid, block, shared_mem: int, args, device_index: int | None = None) -> None:
    """cuLaunchKernel on torch's current stream of `device_index` (default: the current device); `args` are ctypes
    objects, one per kernel parameter, in order."""
    from cuda.bindings import driver

    ptrs = (ctypes.c_void_p * len(args))(*[ctypes.addressof(a) for a in args])
    entry = _FUNCTIONS.get(id(kernel))
    if entry is None or entry[0] is not kernel:
        h = kernel.handle if hasattr(kernel, "handle") else kernel._handle
        entry = _FUNCTIONS[id(kernel)] = (kernel, driver.CUfunction(int(h)))
    if device_index is None:
        device_index = torch.cuda.current_device()
    stream = driver.CUstream(_current_raw_stream(device_index))
    (err,) = driver.cuLaunchKernel(entry[1], *grid, *block, shared_mem, stream, ctypes.addressof(ptrs), 0)
    if int(err) != 0:
        raise RuntimeError(f"cuLaunchKernel failed: {err}")
