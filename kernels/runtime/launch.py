"""The one way an NVRTC kernel is loaded and launched: one cache of loaded kernels, one launch function.

    k = get_kernel("norms.cu", "norms::layer_norm<__nv_bfloat16, 8>", SOURCE_EXPRS)   # compiled once, cached
    launch(k, grid, block, x.data_ptr(), i32(n), f32(eps), shared_mem=nbytes, device=x.get_device())

A kernel is compiled (kernels/runtime/nvrtc.py, cached in memory and on disk) for the device's own arch or the one
asked for ('sm_90a'), loaded once per device, and launched with cuLaunchKernel on torch's current stream of that
device, so launches are ordered with torch's work and can be captured in a CUDA graph. Dynamic shared memory
above the default 48 KB is allowed once per kernel, the first time a launch asks for it.

Arguments, in the kernel's parameter order: a Python int is a pointer (`t.data_ptr()`, or 0 for null); numpy
scalars (i32, i64, u32, f32 from nvrtc.py) are passed as those C types; ctypes objects are passed as they are,
so a by-value struct such as a TMA descriptor (kernels/runtime/tma.py) is one argument.
"""

from __future__ import annotations

import ctypes

import numpy as np
import torch

from . import device as _device
from . import nvrtc

_DEFAULT_SMEM = 48 * 1024
_CTYPES = {int: ctypes.c_void_p, np.int32: ctypes.c_int32, np.int64: ctypes.c_int64, np.uint32: ctypes.c_uint32,
           np.float32: ctypes.c_float}


class Kernel:
    """A loaded kernel on one device: the driver handle cuLaunchKernel takes, and the dynamic shared memory it is
    allowed so far."""

    __slots__ = ("name", "device", "obj", "func", "smem_allowed")

    def __init__(self, name: str, device: int, obj):
        from cuda.bindings import driver

        self.name, self.device, self.obj = name, device, obj
        h = obj.handle if hasattr(obj, "handle") else obj._handle
        # cuda.core >= 1.x loads libraries (a CUkernel, launched in the current context); older ones a CUfunction
        self.func = driver.CUfunction(int(h))
        self.smem_allowed = _DEFAULT_SMEM

    def allow_shared_memory(self, nbytes: int) -> None:
        """Allow launches with up to `nbytes` of dynamic shared memory (the attribute is set on the device)."""
        from cuda.bindings import driver

        attr = driver.CUfunction_attribute.CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES
        h = self.obj.handle if hasattr(self.obj, "handle") else self.obj._handle
        if isinstance(h, driver.CUfunction):
            (err,) = driver.cuFuncSetAttribute(h, attr, int(nbytes))
        else:
            hk = h if isinstance(h, driver.CUkernel) else driver.CUkernel(int(h))
            (err,) = driver.cuKernelSetAttribute(attr, int(nbytes), hk, driver.CUdevice(self.device))
        if int(err) != 0:
            raise RuntimeError(f"setting {self.name}'s dynamic shared memory to {nbytes} bytes failed: {err}")
        self.smem_allowed = int(nbytes)


_KERNELS: dict = {}  # (file, expr, options, arch, device) -> Kernel: every loaded NVRTC kernel


def get_kernel(file: str, expr: str, exprs: tuple[str, ...] | None = None, *, options: tuple[str, ...] = (),
               arch: str | None = None, device: int | None = None) -> Kernel:
    """Kernel `expr` of kernels/cuda/<file> on `device` (default: the current one), compiled for `arch` (default:
    the device's). The first call compiles `exprs` (every instantiation to build with it; default: expr alone) in
    one NVRTC run, or loads them from the disk cache."""
    dev = torch.cuda.current_device() if device is None else device
    key = (file, expr, options, arch, dev)
    k = _KERNELS.get(key)
    if k is None:
        from .nvrtc import Device

        if dev != torch.cuda.current_device():  # load in the device's own context, and leave torch's current
            with torch.cuda.device(dev):
                return get_kernel(file, expr, exprs, options=options, arch=arch, device=dev)
        exprs = tuple(exprs) if exprs else (expr,)
        if expr not in exprs:
            raise KeyError(f"{expr!r} is not an instantiation listed for {file}")
        Device(dev).set_current()  # the primary context, which torch shares
        mod = nvrtc.compile_source(nvrtc.read_source(file), exprs, arch or _device.arch(dev), tuple(options))
        k = _KERNELS[key] = Kernel(expr, dev, mod.get_kernel(expr))
    return k


def _current_raw_stream(device: int) -> int:
    """torch's current stream on that device as a raw handle (torch.cuda.current_stream() builds a Python Stream
    object per call, a large part of a short launch's host time)."""
    raw = getattr(torch._C, "_cuda_getCurrentRawStream", None)
    return raw(device) if raw is not None else torch.cuda.current_stream(device).cuda_stream


def _as_ctype(a):
    conv = _CTYPES.get(type(a))
    if conv is not None:
        return conv(a)
    if isinstance(a, (ctypes._SimpleCData, ctypes.Structure)):
        return a
    raise TypeError(f"kernel argument {a!r} of type {type(a).__name__}: pass an int pointer, a numpy scalar "
                    f"(i32/i64/u32/f32) or a ctypes object")


def _dim3(x) -> tuple[int, int, int]:
    if type(x) is tuple and len(x) == 3:
        return x
    if isinstance(x, int):
        return x, 1, 1
    return tuple(x) + (1,) * (3 - len(x))


def launch(kernel: Kernel, grid, block, *args, shared_mem: int = 0) -> None:
    """cuLaunchKernel on torch's current stream of the kernel's device; `args` one per kernel parameter, grid and
    block an int or a tuple of up to 3."""
    from cuda.bindings import driver

    dev = kernel.device
    if dev != torch.cuda.current_device():  # the launch runs in the current context: make it the kernel's
        with torch.cuda.device(dev):
            return launch(kernel, grid, block, *args, shared_mem=shared_mem)
    if shared_mem > kernel.smem_allowed:
        kernel.allow_shared_memory(shared_mem)
    vals = [_as_ctype(a) for a in args]
    ptrs = (ctypes.c_void_p * len(vals))(*[ctypes.addressof(v) for v in vals])
    stream = driver.CUstream(_current_raw_stream(dev))
    (err,) = driver.cuLaunchKernel(kernel.func, *_dim3(grid), *_dim3(block), shared_mem, stream,
                                   ctypes.addressof(ptrs), 0)
    if int(err) != 0:
        raise RuntimeError(f"cuLaunchKernel({kernel.name}) failed: {err}")
