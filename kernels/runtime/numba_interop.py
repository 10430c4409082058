"""Numba CUDA kernels on torch tensors, written once: device arrays, torch's stream, a cheap launch, sim shims.

    from kernels.runtime.numba_interop import launch, check_kernel_device
    launch(my_kernel, grid, block, x, w, y, np.int32(n), np.float32(eps))   # tensors + typed numpy scalars

Two modes, fixed when `numba.cuda` is first imported:
  * GPU: tensors must be CUDA tensors; kernels run on torch's current stream (so they order with torch ops
    and can be captured in a CUDA graph).
  * Simulator (NUMBA_ENABLE_CUDASIM=1, the CPU-only CI): tensors must be CPU tensors and are passed as
    `t.numpy()` (shared memory, so kernel writes land in the tensor). The simulator has no `as_cuda_array`,
    no `external_stream`, no warp shuffles/votes and no bf16; `install_sim_shims()` adds the shuffles and votes.

bf16 tensors are passed as their int16 bit pattern (torch exports bf16 as '<V2', useless to Numba); kernels
convert with `kernels.numba.load_bf16/store_bf16`.

Launch cost. The plain route (`kernel[grid, block, external_stream](as_cuda_array(t), ...)`) costs ~200 us of
host time per launch: every call builds DeviceNDArrays through __cuda_array_interface__ (and syncs on its
stream), wraps the stream, types every argument and re-marshals it. `launch()` instead compiles once per
(kernel, argument types, device) through Numba, keeps the resulting cuda.core kernel, and on later calls
flattens the tensors itself into Numba's array ABI (meminfo, parent, nitems, itemsize, data, shape,
stride) and launches it through `kernels.runtime.launch.launch` (the NVRTC kernels' one launch path) on torch's
current stream. `launch_plain()`
keeps the Numba route for comparison and for testing the fast path against it.
property_tests/test_runtime.py::test_cached_launch_cuts_host_overhead measures the host time per launch of both
routes.
"""

from __future__ import annotations

import threading
import warnings

import numpy as np

if not hasattr(np, "row_stack"):  # numba-cuda 0.30 uses np.row_stack, removed in NumPy 2.5 (GPU image)
    np.row_stack = np.vstack

import numba  # noqa: E402
import torch  # noqa: E402
from numba import cuda  # noqa: E402
from numba import types as nb_types  # noqa: E402
from numba.cuda import config as _numba_config  # noqa: E402

SIM: bool = bool(_numba_config.ENABLE_CUDASIM)
"""True when Numba runs kernels in its CPU simulator (no GPU): tensors must then be CPU tensors."""

if not SIM:
    from . import launch as _launch  # the launch path of the NVRTC kernels, on torch's stream

# torch dtype -> the numpy dtype a kernel sees (bf16 travels as its int16 bits)
_NP_DTYPE = {
    torch.float32: np.float32, torch.float16: np.float16, torch.bfloat16: np.int16, torch.float64: np.float64,
    torch.int8: np.int8, torch.uint8: np.uint8, torch.int16: np.int16, torch.int32: np.int32,
    torch.int64: np.int64, torch.bool: np.bool_,
}
_NB_DTYPE = {k: numba.from_dtype(np.dtype(v)) for k, v in _NP_DTYPE.items()}


# --------------------------------------------------------------------------------------------------------------
# argument checks specific to Numba kernels
# --------------------------------------------------------------------------------------------------------------
def check_kernel_device(**tensors) -> None:
    """Every tensor (None skipped) is on the kernel device: one CUDA device on a GPU run, the CPU in the
    simulator (a CPU tensor on a GPU run is an error, never a silent copy). Raises ValueError naming it."""
    if not SIM:
        from .checks import check_cuda

        check_cuda(**tensors)
        return
    for name, t in tensors.items():
        if t is not None and t.device.type != "cpu":
            raise ValueError(f"{name} must be a CPU tensor: the Numba CUDA simulator is on "
                             f"(NUMBA_ENABLE_CUDASIM=1), got device {t.device}")


# --------------------------------------------------------------------------------------------------------------
# torch tensor -> Numba array, torch stream -> Numba stream
# --------------------------------------------------------------------------------------------------------------
def _kernel_view(t: torch.Tensor) -> torch.Tensor:
    t = t.detach().view(-1)
    return t.view(torch.int16) if t.dtype == torch.bfloat16 else t


def to_device_array(t: torch.Tensor):
    """Zero-copy flat (1-D) Numba view of a contiguous tensor: a device array on the GPU, `t.numpy()` in the
    simulator."""
    t = _kernel_view(t)
    if SIM:
        if t.device.type != "cpu":
            raise ValueError(f"the Numba simulator needs CPU tensors, got device {t.device}")
        return t.numpy()
    # sync=False: we launch on torch's current stream, which already orders after the tensor's producer
    return cuda.from_cuda_array_interface(t.__cuda_array_interface__, owner=t, sync=False)


_NUMBA_STREAMS: dict = {}


def torch_stream():
    """torch's current stream as a Numba stream (cached by handle); 0 (the only choice) in the simulator."""
    if SIM:
        return 0
    handle = torch.cuda.current_stream().cuda_stream
    s = _NUMBA_STREAMS.get(handle)
    if s is None:
        s = _NUMBA_STREAMS[handle] = cuda.external_stream(handle)
    return s


def _sim_arg(a):
    if isinstance(a, torch.Tensor):
        return to_device_array(a)
    _check_scalar(a)
    return a


def _check_scalar(a) -> None:
    # Python int/float would be typed int64/float64 by Numba (and float64 math in the kernel): be explicit
    if not isinstance(a, (np.integer, np.floating, np.bool_)):
        raise TypeError(f"kernel scalars must be numpy scalars (np.int32, np.float32, ...), got {type(a).__name__}")


def launch_plain(kernel, grid, block, *args, shared_mem: int = 0) -> None:
    """Launch through Numba's own dispatcher (slow on the GPU: ~170-200 us of host time). See `launch`."""
    if _empty(grid):
        return
    if SIM:
        kernel[grid, block, 0, shared_mem](*[_sim_arg(a) for a in args])
        return
    for a in args:
        if not isinstance(a, torch.Tensor):
            _check_scalar(a)
    kernel[grid, block, torch_stream(), shared_mem](*[
        to_device_array(a) if isinstance(a, torch.Tensor) else a for a in args])


# --------------------------------------------------------------------------------------------------------------
# the cached launch path
# --------------------------------------------------------------------------------------------------------------
def numba_signature(args) -> tuple:
    """Numba argument types for kernel arguments: flat C-contiguous arrays for tensors, numpy scalars as is."""
    sig = []
    for a in args:
        if isinstance(a, torch.Tensor):
            sig.append(nb_types.Array(_NB_DTYPE[a.dtype], 1, "C"))
        else:
            _check_scalar(a)
            sig.append(numba.from_dtype(np.asarray(a).dtype))
    return tuple(sig)


def _arg_key(a):
    return a.dtype if isinstance(a, torch.Tensor) else type(a)


def _flatten_args(args) -> list:
    """Numba's kernel ABI for a 1-D array: (meminfo, parent, nitems, itemsize, data, shape, stride_in_bytes)."""
    out = []
    for a in args:
        if isinstance(a, torch.Tensor):
            n, item = a.numel(), a.element_size()
            out += [0, 0, n, item, a.data_ptr(), n, item]
        else:
            out.append(a)
    return out


_FAST: dict = {}  # (kernel, device, arg key) -> launch.Kernel, or None when only the plain path works
_FAST_LOCK = threading.Lock()
_warned_fallback = False


def _build_fast(kernel, args):
    """Compile `kernel` for these argument types (Numba JIT, first call only) and return it as a launch.Kernel."""
    global _warned_fallback
    from .nvrtc import Device

    Device(torch.cuda.current_device()).set_current()  # the primary context, which torch and Numba share
    compiled = kernel.compile(numba_signature(args))
    try:
        cc_kernel = compiled._codelibrary.get_cufunc().kernel  # numba-cuda >= 0.2x: a cuda.core Kernel
    except AttributeError:  # internals moved: stay correct, just slow
        if not _warned_fallback:
            warnings.warn("numba-cuda internals changed: Numba kernels fall back to the slow launch path")
            _warned_fallback = True
        return None
    return _launch.Kernel(getattr(kernel, "__name__", "numba kernel"), torch.cuda.current_device(), cc_kernel)


def launch(kernel, grid, block, *args, shared_mem: int = 0) -> None:
    """Launch a `@cuda.jit` kernel on torch tensors and numpy scalars, on torch's current stream.

    kernel: a Numba CUDA dispatcher (not yet configured). grid, block: int or tuple. args: contiguous tensors
    on one kernel device (see `check_kernel_device`), which the kernel sees as flat 1-D arrays (bf16 as
    int16 bits), and numpy scalars (np.int32, np.float32, ...; Python numbers are refused so the kernel's
    types are explicit).
    A grid with a zero dimension launches nothing.
    """
    if _empty(grid):
        return
    if SIM:
        kernel[grid, block, 0, shared_mem](*[_sim_arg(a) for a in args])
        return
    dev = next((a.get_device() for a in args if isinstance(a, torch.Tensor)), -1)
    if dev >= 0 and dev != torch.cuda.current_device():
        with torch.cuda.device(dev):  # kernels, streams and launches belong to the tensors' device
            return launch(kernel, grid, block, *args, shared_mem=shared_mem)
    key = (kernel, dev, tuple(_arg_key(a) for a in args))
    k = _FAST.get(key, False)
    if k is False:
        with _FAST_LOCK:
            k = _FAST.get(key, False)
            if k is False:
                k = _FAST[key] = _build_fast(kernel, args)
    if k is None:
        launch_plain(kernel, grid, block, *args, shared_mem=shared_mem)
        return
    _launch.launch(k, grid, block, *_flatten_args(args), shared_mem=shared_mem)


def _empty(grid) -> bool:
    return (grid == 0) if isinstance(grid, int) else any(g == 0 for g in grid)


# --------------------------------------------------------------------------------------------------------------
# simulator shims: warp shuffles and votes (numba-cuda 0.30's simulator has none)
# --------------------------------------------------------------------------------------------------------------
# Each call is an exchange through a per-block buffer between two block-wide barriers, so it is correct only
# when every live thread of the block makes the same sequence of shuffle calls (the usual full-mask reduction).
# Threads that already returned are fine; a shuffle inside a branch that only some warps take deadlocks.
_WARP = 32


def _exchange(value):
    th = threading.current_thread()
    buf = th._manager.__dict__.setdefault("_shim_xchg", {})  # one buffer per simulated block
    buf[th.thread_id] = value
    th.syncthreads()
    return th, buf


def _finish(th, result):
    th.syncthreads()  # nobody overwrites the buffer until everyone has read it
    return result


def _lane_read(th, buf, src_lane, own):
    return buf.get(th.thread_id - th.thread_id % _WARP + src_lane, own)


def _shfl_sync(self, mask, value, src_lane):
    th, buf = _exchange(value)
    return _finish(th, _lane_read(th, buf, int(src_lane) % _WARP, value))


def _shfl_up_sync(self, mask, value, delta):
    th, buf = _exchange(value)
    lane = th.thread_id % _WARP
    return _finish(th, _lane_read(th, buf, lane - delta, value) if lane - delta >= 0 else value)


def _shfl_down_sync(self, mask, value, delta):
    th, buf = _exchange(value)
    lane = th.thread_id % _WARP
    return _finish(th, _lane_read(th, buf, lane + delta, value) if lane + delta < _WARP else value)


def _shfl_xor_sync(self, mask, value, lane_mask):
    th, buf = _exchange(value)
    return _finish(th, _lane_read(th, buf, (th.thread_id % _WARP) ^ int(lane_mask), value))


def _warp_values(th, buf):
    base = th.thread_id - th.thread_id % _WARP
    return [buf[i] for i in range(base, base + _WARP) if i in buf]


def _ballot_sync(self, mask, predicate):
    th, buf = _exchange(bool(predicate))
    base = th.thread_id - th.thread_id % _WARP
    return _finish(th, sum(1 << i for i in range(_WARP) if buf.get(base + i, False)))


def _all_sync(self, mask, predicate):
    th, buf = _exchange(bool(predicate))
    return _finish(th, int(all(_warp_values(th, buf))))


def _any_sync(self, mask, predicate):
    th, buf = _exchange(bool(predicate))
    return _finish(th, int(any(_warp_values(th, buf))))


def _activemask(self):
    return 0xFFFFFFFF


def install_sim_shims() -> bool:
    """Add warp shuffles/votes to the simulator's fake `cuda` module; no-op (False) off the simulator."""
    if not SIM:
        return False
    from numba.cuda.simulator import kernelapi

    cls = kernelapi.FakeCUDAModule
    for name, fn in {
        "shfl_sync": _shfl_sync, "shfl_up_sync": _shfl_up_sync, "shfl_down_sync": _shfl_down_sync,
        "shfl_xor_sync": _shfl_xor_sync, "ballot_sync": _ballot_sync, "all_sync": _all_sync,
        "any_sync": _any_sync, "activemask": _activemask,
    }.items():
        if not hasattr(cls, name):
            setattr(cls, name, fn)
    return True


install_sim_shims()
