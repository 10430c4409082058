"""CUDA C++ compiled at run time by NVRTC (through cuda.core), cached, launched on torch's current stream.

    mod = compile_source(src, ("layer_norm<__nv_bfloat16>",), arch="sm_90")   # works without a GPU
    k = get_kernel("norms.cu", "layer_norm<__nv_bfloat16>")                    # for the current device
    launch(k, grid, block, smem_bytes, x.data_ptr(), i32(n), f32(eps))         # on torch.cuda.current_stream()

Compilation is keyed by (source text, name expressions, arch, options, NVRTC version) and cached in memory and
on disk (~/.cache/qwen35-kernels/cubin, or $QWEN35_KERNELS_CACHE). We always emit a CUBIN for the exact arch:
NVRTC PTX newer than the driver cannot be JIT-loaded, and cuda.core's "ptx" target needs a driver.
Scalars must be passed typed (i32/i64/f32): cuda.core passes a Python int as a pointer and a float as double.
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
from functools import lru_cache
from pathlib import Path

import numpy as np

try:  # cuda-core >= 0.4 / 1.x
    from cuda.core import Device, LaunchConfig, ObjectCode, Program, ProgramOptions, launch as _cc_launch
except ImportError:  # pragma: no cover - older cuda-core
    from cuda.core.experimental import Device, LaunchConfig, ObjectCode, Program, ProgramOptions
    from cuda.core.experimental import launch as _cc_launch

CUDA_DIR = Path(__file__).resolve().parent.parent / "cuda"

i32 = np.int32
i64 = np.int64
u32 = np.uint32
f32 = np.float32


class KernelCompileError(RuntimeError):
    """NVRTC rejected a source; the message carries NVRTC's log."""


@lru_cache(maxsize=1)
def cuda_include_dirs() -> tuple[str, ...]:
    """Directories holding cuda_bf16.h (pip wheels first, then a system toolkit), plus CCCL if found."""
    cands: list[str] = []
    try:
        import cuda.pathfinder as pf

        for lib in ("cudart", "nvrtc"):
            try:
                d = pf.find_nvidia_header_directory(lib)
                if d:
                    cands.append(str(d))
            except Exception:
                pass
    except ImportError:  # pragma: no cover
        pass
    for env in ("CUDA_HOME", "CUDA_PATH"):
        if os.environ.get(env):
            cands.append(os.path.join(os.environ[env], "include"))
    cands += ["/usr/local/cuda/include"] + sorted(glob.glob("/usr/local/cuda-*/include"))
    found = [d for d in cands if os.path.exists(os.path.join(d, "cuda_bf16.h"))]
    if not found:
        raise FileNotFoundError(
            "cuda_bf16.h not found: pip install 'cuda-toolkit[cudart,crt]==13.0.*' (or set CUDA_HOME)")
    dirs = [found[0]]
    if os.path.isdir(os.path.join(found[0], "cccl")):
        dirs.append(os.path.join(found[0], "cccl"))
    return tuple(dirs + [str(CUDA_DIR)])


@lru_cache(maxsize=1)
def nvrtc_version() -> tuple[int, int]:
    from cuda.bindings import nvrtc

    err, major, minor = nvrtc.nvrtcVersion()
    return int(major), int(minor)


def _cache_dir() -> Path:
    d = Path(os.environ.get("QWEN35_KERNELS_CACHE", Path.home() / ".cache" / "qwen35-kernels")) / "cubin"
    d.mkdir(parents=True, exist_ok=True)
    return d


def read_source(name: str) -> str:
    """The text of kernels/cuda/<name>."""
    return (CUDA_DIR / name).read_text()


_MEM_CACHE: dict[str, ObjectCode] = {}


def _extra_options(options: tuple[str, ...]) -> dict:
    """Map a few nvcc-style flags onto ProgramOptions fields (-D NAME=VAL, --use_fast_math, -lineinfo)."""
    kw: dict = {}
    defines = []
    for o in options:
        if o.startswith("-D"):
            defines.append(o[2:])
        elif o in ("--use_fast_math", "-use_fast_math"):
            kw["use_fast_math"] = True
        elif o == "-lineinfo":
            kw["line_info"] = True
        else:
            raise ValueError(f"unsupported NVRTC option {o!r}")
    if defines:
        kw["define_macro"] = [tuple(d.split("=", 1)) if "=" in d else d for d in defines]
    return kw


def compile_source(source: str, name_expressions: tuple[str, ...], arch: str,
                   options: tuple[str, ...] = (), *, use_disk_cache: bool = True) -> ObjectCode:
    """NVRTC-compile `source` to a CUBIN for `arch` ('sm_80', 'sm_90', 'sm_90a'); no GPU or driver needed."""
    name_expressions = tuple(name_expressions)
    key = hashlib.sha256(json.dumps(
        [source, name_expressions, arch, list(options), nvrtc_version()]).encode()).hexdigest()
    if key in _MEM_CACHE:
        return _MEM_CACHE[key]
    path = _cache_dir() / f"{key}.cubin"
    meta = path.with_suffix(".json")
    if use_disk_cache and path.exists() and meta.exists():
        try:
            mapping = {k: v.encode() for k, v in json.loads(meta.read_text()).items()}
            mod = ObjectCode.from_cubin(path.read_bytes(), symbol_mapping=mapping)
            _MEM_CACHE[key] = mod
            return mod
        except Exception:  # a corrupt cache entry is rebuilt below
            pass
    opts = ProgramOptions(arch=arch, std="c++17", include_path=list(cuda_include_dirs()), name="qwen35_kernels",
                          **_extra_options(options))
    try:
        mod = Program(source, code_type="c++", options=opts).compile("cubin", name_expressions=name_expressions)
    except Exception as e:  # cuda.core raises with NVRTC's log in the message
        raise KernelCompileError(f"NVRTC failed for {arch}: {e}") from e
    if use_disk_cache:
        try:
            tmp = path.with_suffix(f".tmp{os.getpid()}")
            tmp.write_bytes(bytes(mod.code))
            os.replace(tmp, path)
            meta.write_text(json.dumps({k: (v.decode() if isinstance(v, bytes) else v)
                                        for k, v in (mod.symbol_mapping or {}).items()}))
        except OSError:
            pass
    _MEM_CACHE[key] = mod
    return mod


def device_arch(device_index: int | None = None) -> str:
    import torch

    idx = torch.cuda.current_device() if device_index is None else device_index
    major, minor = torch.cuda.get_device_capability(idx)
    return f"sm_{major}{minor}"


_KERNELS: dict = {}


def get_kernel(source_name: str, name: str, name_expressions: tuple[str, ...] | None = None,
               options: tuple[str, ...] = (), arch: str | None = None):
    """Kernel `name` from kernels/cuda/<source_name>, compiled for the current device (cached).

    `name_expressions` lists every instantiation to build with it (so one compile serves all dtypes);
    it defaults to (name,).
    """
    import torch

    dev_idx = torch.cuda.current_device()
    key = (dev_idx, source_name, name, options, arch)
    k = _KERNELS.get(key)
    if k is None:
        dev = Device(dev_idx)
        dev.set_current()  # the primary context, which torch shares
        exprs = tuple(name_expressions) if name_expressions else (name,)
        if name not in exprs:
            exprs = exprs + (name,)
        mod = compile_source(read_source(source_name), exprs, arch or device_arch(dev_idx), options)
        k = mod.get_kernel(name)
        _KERNELS[key] = k
    return k


class _TorchStream:
    """torch.cuda.Stream in the __cuda_stream__ protocol (works for any torch version)."""

    def __init__(self, handle: int):
        self._h = handle

    def __cuda_stream__(self):
        return (0, self._h)


_STREAMS: dict = {}


def current_stream():
    """cuda.core Stream wrapping torch's current stream (not owned; cached by handle)."""
    import torch

    ts = torch.cuda.current_stream()
    key = (ts.device_index, int(ts.cuda_stream))
    s = _STREAMS.get(key)
    if s is None:
        s = Device(ts.device_index).create_stream(_TorchStream(key[1]))
        _STREAMS[key] = s
    return s


_CONFIGS: dict = {}


def launch(kernel, grid, block, shared_mem: int, *args) -> None:
    """Launch on torch's current stream (so it can be captured in a CUDA graph)."""
    key = (grid, block, shared_mem)
    cfg = _CONFIGS.get(key)
    if cfg is None:
        cfg = LaunchConfig(grid=grid, block=block, shmem_size=shared_mem)
        _CONFIGS[key] = cfg
    _cc_launch(current_stream(), cfg, kernel, *args)


def set_max_dynamic_shared_memory(kernel, nbytes: int) -> None:
    """Allow a kernel more than 48 KB of dynamic shared memory (needed once per kernel)."""
    from cuda.bindings import driver

    attr = driver.CUfunction_attribute.CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES
    h = kernel.handle if hasattr(kernel, "handle") else kernel._handle
    if isinstance(h, driver.CUfunction):
        (err,) = driver.cuFuncSetAttribute(h, attr, int(nbytes))
    else:  # cuda.core >= 1.x loads libraries: the handle is a CUkernel, set per device
        import torch

        hk = h if isinstance(h, driver.CUkernel) else driver.CUkernel(int(h))
        (err,) = driver.cuKernelSetAttribute(attr, int(nbytes), hk, driver.CUdevice(torch.cuda.current_device()))
    if int(err) != 0:
        raise RuntimeError(f"cuFuncSetAttribute(MAX_DYNAMIC_SHARED_SIZE_BYTES={nbytes}) failed: {err}")
