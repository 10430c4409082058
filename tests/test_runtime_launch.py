"""The NVRTC launch machinery without a GPU: kernel-parameter packing, TMA descriptor checks, and the compile cache
key following the shared headers."""

import ctypes

import numpy as np
import pytest
import torch

from kernels.runtime import launch, nvrtc
from kernels.runtime.tma import TmaDesc, tensor_map


def test_params_types_follow_the_arguments():
    """Pointers and 64-bit ints as c_int64, numpy scalars as their C types (converted to Python numbers, which
    cuLaunchKernel packs in C), a TMA descriptor by value (type None, address through getPtr)."""
    desc = TmaDesc()
    vals, types = launch._params((123, np.int32(-3), np.float32(1.5), np.int64(2**40), np.uint32(7), desc))
    assert types == (ctypes.c_int64, ctypes.c_int, ctypes.c_float, ctypes.c_int64, ctypes.c_uint32, None)
    assert vals[:5] == (123, -3, 1.5, 2**40, 7) and type(vals[1]) is int and type(vals[2]) is float
    assert vals[5] is desc and desc.getPtr() == ctypes.addressof(desc)
    assert ctypes.sizeof(TmaDesc) == 128


def test_params_reject_untyped_arguments():
    with pytest.raises(TypeError, match="numpy scalar"):
        launch._params(("a string",))
    with pytest.raises(TypeError, match="numpy scalar"):
        launch._params((torch.zeros(1),))


def test_dim3():
    assert launch._dim3(5) == (5, 1, 1) and launch._dim3((2, 3)) == (2, 3, 1) and launch._dim3((1, 2, 3)) == (1, 2, 3)


@pytest.mark.parametrize("make, box, swizzle, match", [
    (lambda: torch.zeros(2, 2, 2, 2, 2, 8, dtype=torch.bfloat16), (1, 1, 1, 1, 1, 8), 0, "1 to 5 dimensions"),
    (lambda: torch.zeros(8, 64, dtype=torch.bfloat16), (8,), 128, "each of the tensor's 2 dimensions"),
    (lambda: torch.zeros(8, 64, dtype=torch.bfloat16), (300, 64), 128, "1-256"),
    (lambda: torch.zeros(64, 8, dtype=torch.bfloat16).t(), (8, 8), 0, "innermost dimension must be contiguous"),
    (lambda: torch.zeros(8, 12, dtype=torch.bfloat16), (8, 8), 0, "multiples of 16 bytes"),
    (lambda: torch.zeros(8, 128, dtype=torch.bfloat16), (8, 128), 128, "at most the 128-byte swizzle"),
    (lambda: torch.zeros(8, 64, dtype=torch.bfloat16), (8, 64), 96, "swizzle must be one of"),
    (lambda: torch.zeros(8, 64, dtype=torch.float64), (8, 16), 0, "no TMA element type"),
    (lambda: torch.zeros(8, 64, dtype=torch.bfloat16), (8, 64), 128, "CUDA"),
])
def test_tensor_map_checks(make, box, swizzle, match):
    """tensor_map (any rank, any box) checks before touching the driver; a valid CPU tensor fails on its device."""
    with pytest.raises(ValueError, match=match):
        tensor_map(make(), box, swizzle)


def test_compile_key_follows_headers(monkeypatch, tmp_path):
    """A changed header under kernels/cuda changes the digest that keys the compile cache."""
    (tmp_path / "include").mkdir()
    (tmp_path / "include" / "a.cuh").write_text("#pragma once\n")
    monkeypatch.setattr(nvrtc, "CUDA_DIR", tmp_path)
    nvrtc.headers_digest.cache_clear()
    try:
        d1 = nvrtc.headers_digest()
        (tmp_path / "include" / "a.cuh").write_text("#pragma once\n// changed\n")
        nvrtc.headers_digest.cache_clear()
        assert nvrtc.headers_digest() != d1
    finally:
        nvrtc.headers_digest.cache_clear()


@pytest.mark.sim
def test_numba_launch_refuses_python_scalars():
    """A Python float would be typed float64 by Numba (fp64 math); the Numba launcher wants numpy scalars."""
    from kernels.numba.activations import BIAS_GELU
    from kernels.runtime.numba_interop import SIM, launch

    x = torch.randn(2, 8, device="cuda" if torch.cuda.is_available() and not SIM else "cpu")
    with pytest.raises(TypeError, match="numpy scalars"):
        launch(BIAS_GELU["f"], 1, 32, x, x, x, 16, np.int32(8), np.int32(0), np.int32(1))


def test_package_data_ships_every_cuda_source():
    """A wheel install reads kernels/cuda/** through nvrtc.read_source: pyproject's package-data must match every
    .cu/.cuh file there (shared headers and the attention sources live in subfolders)."""
    import fnmatch
    import tomllib
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    globs = tomllib.loads((root / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]["kernels"]
    sources = [p.relative_to(root / "kernels").as_posix() for p in (root / "kernels" / "cuda").rglob("*")
               if p.suffix in (".cu", ".cuh")]
    missing = [s for s in sources if not any(fnmatch.fnmatch(s, g) and s.count("/") == g.count("/") for g in globs)]
    assert sources and not missing, f"not in [tool.setuptools.package-data] kernels: {missing}"
