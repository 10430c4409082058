"""Test-suite switches, decided once before any test module imports numba.cuda.

* HAS_GPU: torch sees a CUDA device and the simulator was not forced on.
* Without a GPU, NUMBA_ENABLE_CUDASIM defaults to 1 so `sim` tests run the Numba kernels on the CPU.
* `compile` tests build NVRTC cubins in-process (no driver needed) and Numba PTX in a subprocess with the
  simulator off, so one pytest command covers both.
* Hypothesis profiles: `ci` (few examples, derandomised, no deadline) and `gpu` (many examples). The
  profile follows HYPOTHESIS_PROFILE, else `gpu` when a GPU is present, else `ci`.
"""

import os

import numpy as np
import pytest

if not hasattr(np, "row_stack"):  # numba-cuda 0.30 uses np.row_stack, removed in NumPy 2.5 (GPU image)
    np.row_stack = np.vstack

_forced = os.environ.get("NUMBA_ENABLE_CUDASIM")
try:
    import torch

    HAS_GPU = _forced != "1" and torch.cuda.is_available()
except Exception:  # pragma: no cover
    HAS_GPU = False
if not HAS_GPU and _forced is None:
    os.environ["NUMBA_ENABLE_CUDASIM"] = "1"  # must precede the first `import numba.cuda`
SIM = os.environ.get("NUMBA_ENABLE_CUDASIM") == "1"
os.environ.setdefault("NUMBA_CUDA_LOW_OCCUPANCY_WARNINGS", "0")
if os.environ.get("PYTEST_XDIST_WORKER") and not HAS_GPU:
    # n workers on n cores: torch's own threads would oversubscribe the CPU (toy shapes run 10-20x slower)
    torch.set_num_threads(1)

from hypothesis import HealthCheck, settings  # noqa: E402

settings.register_profile(
    "ci", max_examples=8, deadline=None, derandomize=True, print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.register_profile(
    "gpu", max_examples=60, deadline=None, print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "gpu" if HAS_GPU else "ci"))


def pytest_report_header(config):
    return (f"qwen35-kernels: HAS_GPU={HAS_GPU} NUMBA_ENABLE_CUDASIM={os.environ.get('NUMBA_ENABLE_CUDASIM')} "
            f"hypothesis profile={settings._current_profile}")


def pytest_collection_modifyitems(config, items):
    skip_gpu = pytest.mark.skip(reason="needs a CUDA GPU")
    skip_sim = pytest.mark.skip(reason="Numba kernels need a GPU or NUMBA_ENABLE_CUDASIM=1")
    for item in items:
        if "gpu" in item.keywords and not HAS_GPU:
            item.add_marker(skip_gpu)
        if "sim" in item.keywords and not (HAS_GPU or SIM):
            item.add_marker(skip_sim)


@pytest.fixture(scope="session")
def device():
    """Where kernels run: 'cuda' with a GPU, else 'cpu' (Numba kernels then run in the simulator)."""
    return "cuda" if HAS_GPU else "cpu"
