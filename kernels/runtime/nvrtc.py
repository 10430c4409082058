"""CUDA C++ compiled at run time by NVRTC (through cuda.core) and cached; loading and launching is
kernels/runtime/launch.py.

    mod = compile_source(src, ("norms::layer_norm<__nv_bfloat16>",), arch="sm_90")   # works without a GPU

Sources include the shared device code as "include/<name>.cuh" (kernels/cuda is on the include path).
Compilation is keyed by (source text, the text of every header under kernels/cuda, name expressions, arch,
options, NVRTC version) and cached in memory and on disk (~/.cache/qwen35-kernels/cubin, or
$QWEN35_KERNELS_CACHE). We always emit a CUBIN for the exact arch: NVRTC PTX newer than the driver cannot be
JIT-loaded, and cuda.core's "ptx" target needs a driver.
Kernel scalars are passed typed (i32/i64/f32 below): launch.py passes a Python int as a 64-bit value (a pointer)
and a float as a double.
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
    from cuda.core import Device, ObjectCode, Program, ProgramOptions
except ImportError:  # pragma: no cover - older cuda-core
    from cuda.core.experimental import Device, ObjectCode, Program, ProgramOptions

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
def headers_digest() -> str:
    """sha256 over every header under kernels/cuda (names and text): part of the compile cache key, so that a
    changed header rebuilds the kernels that include it."""
    h = hashlib.sha256()
    for p in sorted(CUDA_DIR.rglob("*.cuh")):
        h.update(str(p.relative_to(CUDA_DIR)).encode() + b"\0" + p.read_bytes() + b"\0")
    return h.hexdigest()


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
        [source, headers_digest(), name_expressions, arch, list(options), nvrtc_version()]).encode()).hexdigest()
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


# ---- the call forms of the first kernels, kept for code written against them: all go through launch.py ----

def get_kernel(source_name: str, name: str, name_expressions: tuple[str, ...] | None = None,
               options: tuple[str, ...] = (), arch: str | None = None):
    """launch.get_kernel on the current device."""
    from .launch import get_kernel as _get

    exprs = tuple(name_expressions) if name_expressions else (name,)
    return _get(source_name, name, exprs if name in exprs else exprs + (name,), options=tuple(options), arch=arch)


def launch(kernel, grid, block, shared_mem: int, *args) -> None:
    """launch.launch with the dynamic shared memory as the fourth positional argument."""
    from .launch import launch as _launch

    _launch(kernel, grid, block, *args, shared_mem=shared_mem)


def set_max_dynamic_shared_memory(kernel, nbytes: int) -> None:
    """Allow a kernel more than 48 KB of dynamic shared memory (launch.launch also does it when asked for)."""
    kernel.allow_shared_memory(nbytes)
