"""The one way an NVRTC kernel is loaded and launched: one cache of loaded kernels, one launch function.

    k = get_kernel("norms.cu", "norms::layer_norm<__nv_bfloat16, 8>", SOURCE_EXPRS)   # compiled once, cached
    launch(k, grid, block, x.data_ptr(), i32(n), f32(eps), shared_mem=nbytes, device=x.get_device())

A kernel is compiled (kernels/runtime/nvrtc.py, cached in memory and on disk) for the device's own arch or the one
asked for ('sm_90a'), loaded once per device, and launched with cuLaunchKernel on torch's current stream of that
device, so launches are ordered with torch's work and can be captured in a CUDA graph. Dynamic shared memory
above the default 48 KB is allowed once per kernel, the first time a launch asks for it.

Arguments, in the kernel's parameter order: a Python int is a pointer (`t.data_ptr()`, or 0 for null) or any
64-bit integer; numpy scalars (i32, i64, u32, f32 from nvrtc.py) are passed as those C types; ctypes scalars as
they are, and a ctypes Structure by value (a TMA descriptor, kernels/runtime/tma.py, is one argument).

Programmatic dependent launch (sm_90): `launch(..., pdl=True)` lets the kernel be scheduled while the previous
kernel of the stream still runs, hiding the launch gap between the small kernels of a decode step. Only for
kernels that follow the protocol in kernels/cuda/include/ptx.cuh (griddepcontrol.wait before the first dependent
read or any write, in every thread; launch_dependents as early as possible). A CUDA-graph capture keeps the
launches as programmatic edges. On by default. kernels/runtime/pdl_audit.py checks the protocol in every kernel's
machine code (CI runs it): rope.cu's decode kernel once read its q/k rows above the wait (invariant loads the
compiler hoisted), which made graph-replayed decode differ from eager decode behind the early-triggering skinny
GEMM. QWEN35_PDL=0 (or PDL = False) makes every launch a plain one (A/B timing); PDL_OFF = {"norms.cu", ...}
(QWEN35_PDL_OFF=norms.cu,...) does so for the kernels of those sources only; a driver that refuses a programmatic
launch of a kernel gets plain ones of it from then on, and PDL_ERROR says why.
"""

from __future__ import annotations

import ctypes
import os

import numpy as np
import torch

from . import device as _device
from . import nvrtc

_DEFAULT_SMEM = 48 * 1024
PDL = os.environ.get("QWEN35_PDL", "1") == "1"  # programmatic dependent launches where asked for (module doc)
# source files (e.g. "norms.cu") whose kernels launch plainly even when asked for PDL (QWEN35_PDL_OFF=a.cu,b.cu)
PDL_OFF: set = {f for f in os.environ.get("QWEN35_PDL_OFF", "").split(",") if f}
PDL_ERROR: str | None = None  # why the driver last refused a programmatic launch (that kernel launches plainly)
# argument type -> (conversion or None, ctypes type of the kernel parameter). cuLaunchKernel's (values, types) form
# packs Python ints and floats under c_long / c_int / c_float in C (numpy scalars would go through ctypes objects,
# 30x slower), so numpy scalars become Python numbers first; pointers are 64-bit.
_ARGS = {int: (None, ctypes.c_int64), float: (None, ctypes.c_double), np.int32: (int, ctypes.c_int),
         np.int64: (int, ctypes.c_int64), np.uint32: (int, ctypes.c_uint32), np.uint64: (int, ctypes.c_uint64),
         np.float32: (float, ctypes.c_float), np.float64: (float, ctypes.c_double), np.bool_: (bool, ctypes.c_bool)}


class Kernel:
    """A loaded kernel on one device: the driver handle cuLaunchKernel takes, and the dynamic shared memory it is
    allowed so far."""

    __slots__ = ("name", "device", "obj", "func", "smem_allowed", "file", "pdl_ok")

    def __init__(self, name: str, device: int, obj, file: str = ""):
        from cuda.bindings import driver

        self.name, self.device, self.obj, self.file = name, device, obj, file
        self.pdl_ok = True  # False once the driver refused a programmatic launch of this kernel
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
        k = _KERNELS[key] = Kernel(expr, dev, mod.get_kernel(expr), file)
    return k


def _current_raw_stream(device: int) -> int:
    """torch's current stream on that device as a raw handle (torch.cuda.current_stream() builds a Python Stream
    object per call, a large part of a short launch's host time)."""
    raw = getattr(torch._C, "_cuda_getCurrentRawStream", None)
    return raw(device) if raw is not None else torch.cuda.current_stream(device).cuda_stream


_SIGNATURES: dict = {}  # tuple of argument types -> (ctypes types, [(index, conversion)])


def _signature(sig: tuple) -> tuple:
    types, conv = [], []
    for i, t in enumerate(sig):
        e = _ARGS.get(t)
        if e is not None:
            types.append(e[1])
            if e[0] is not None:
                conv.append((i, e[0]))
        elif issubclass(t, ctypes.Structure):
            types.append(None)
        elif issubclass(t, ctypes._SimpleCData):
            types.append(t)
        else:
            raise TypeError(f"kernel argument {i} of type {t.__name__}: pass an int pointer, a numpy scalar "
                            f"(i32/i64/u32/f32) or a ctypes object")
    return tuple(types), conv


def _params(args: tuple) -> tuple[tuple, tuple]:
    """(values, ctypes types) of the kernel parameters, as cuLaunchKernel's kernelParams takes them (a ctypes
    Structure, passed by value, has type None and gives its address through getPtr()). The types are worked out
    once per signature."""
    sig = tuple(map(type, args))
    e = _SIGNATURES.get(sig)
    if e is None:
        e = _SIGNATURES[sig] = _signature(sig)
    types, conv = e
    if conv:
        args = list(args)
        for i, f in conv:
            args[i] = f(args[i])
        args = tuple(args)
    return args, types


def _dim3(x) -> tuple[int, int, int]:
    if type(x) is tuple and len(x) == 3:
        return x
    if isinstance(x, int):
        return x, 1, 1
    return tuple(x) + (1,) * (3 - len(x))


def _launch_programmatic(kernel: Kernel, grid, block, shared_mem: int, stream, params) -> None:
    """cuLaunchKernelEx with programmatic stream serialisation (sm_90 PDL): the kernel may be scheduled while the
    previous kernel in the stream still runs, and must itself wait (griddepcontrol.wait) before reading its output."""
    from cuda.bindings import driver

    cfg = driver.CUlaunchConfig()
    cfg.gridDimX, cfg.gridDimY, cfg.gridDimZ = _dim3(grid)
    cfg.blockDimX, cfg.blockDimY, cfg.blockDimZ = _dim3(block)
    cfg.sharedMemBytes, cfg.hStream = shared_mem, stream
    attr = driver.CUlaunchAttribute()
    attr.id = driver.CUlaunchAttributeID.CU_LAUNCH_ATTRIBUTE_PROGRAMMATIC_STREAM_SERIALIZATION
    attr.value.programmaticStreamSerializationAllowed = 1
    cfg.attrs, cfg.numAttrs = [attr], 1
    (err,) = driver.cuLaunchKernelEx(cfg, kernel.func, params, 0)
    if int(err) != 0:
        raise RuntimeError(f"cuLaunchKernelEx({kernel.name}, programmatic) failed: {err}")


def launch(kernel: Kernel, grid, block, *args, shared_mem: int = 0, pdl: bool = False) -> None:
    """cuLaunchKernel on torch's current stream of the kernel's device; `args` one per kernel parameter, grid and
    block an int or a tuple of up to 3. pdl: a programmatic dependent launch on sm_90 for a kernel that follows
    ptx.cuh's protocol (module doc; PDL / PDL_OFF turn it off); elsewhere a plain launch."""
    global PDL_ERROR
    from cuda.bindings import driver

    dev = kernel.device
    if dev != torch.cuda.current_device():  # the launch runs in the current context: make it the kernel's
        with torch.cuda.device(dev):
            return launch(kernel, grid, block, *args, shared_mem=shared_mem, pdl=pdl)
    if shared_mem > kernel.smem_allowed:
        kernel.allow_shared_memory(shared_mem)
    params = _params(args)
    stream = driver.CUstream(_current_raw_stream(dev))
    if pdl and PDL and kernel.pdl_ok and kernel.file not in PDL_OFF and _device.capability(dev)[0] >= 9:
        try:
            return _launch_programmatic(kernel, grid, block, shared_mem, stream, params)
        except RuntimeError as e:  # refused (driver, launch shape): plain launches of it (stream order is correct)
            kernel.pdl_ok, PDL_ERROR = False, str(e)
    (err,) = driver.cuLaunchKernel(kernel.func, *_dim3(grid), *_dim3(block), shared_mem, stream, params, 0)
    if int(err) != 0:
        raise RuntimeError(f"cuLaunchKernel({kernel.name}) failed: {err}")
