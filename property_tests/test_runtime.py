"""The Numba launch path (kernels.runtime.numba_interop) on a GPU: its cached launch against Numba's own
dispatcher, torch's current stream, and its host cost per call. Kernels vs references are in test_ops.py."""

from __future__ import annotations

import pytest
import torch

from kernels.registry import REGISTRY
from property_tests.cases.norms import build_layer_norm
from property_tests.harness import compare

pytestmark = pytest.mark.gpu


def test_fast_launch_matches_numba_launch():
    """The cached launch (own argument marshalling) against Numba's own dispatcher on the same kernel."""
    import numpy as np

    from kernels.numba import io_key
    from kernels.numba.norms import LAYER_NORM, threads_per_row
    from kernels.runtime.numba_interop import launch, launch_plain

    for dtype in (torch.float32, torch.bfloat16):
        x, w, b, _ = build_layer_norm(300, 1152, dtype, seed=3).on("cuda")
        ys = []
        for go in (launch, launch_plain):
            y = torch.full_like(x, float("nan"))
            go(LAYER_NORM[io_key(dtype)], 300, threads_per_row(1152), x, w, b, y, np.int32(1152),
               np.float32(1e-6), np.int32(1), np.int32(1))
            ys.append(y)
        torch.cuda.synchronize()
        assert torch.equal(ys[0].view(torch.int16 if dtype == torch.bfloat16 else torch.int32),
                           ys[1].view(torch.int16 if dtype == torch.bfloat16 else torch.int32)), dtype


def test_launch_follows_torch_current_stream():
    spec = REGISTRY["layer_norm"]
    fn, ref = spec.kernels["numba"], spec.reference
    x, w, b, eps = build_layer_norm(4096, 1152, torch.bfloat16).on("cuda")
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        torch.cuda._sleep(50_000_000)
        xs = x * 1  # written on s after the sleep: a kernel on another stream would read it unwritten
        y = fn(xs, w, b, eps)
        y2 = y * 2
    torch.cuda.current_stream().wait_stream(s)
    compare(spec, y2 / 2, ref(x, w, b, eps), "side stream")


def test_cached_launch_cuts_host_overhead(capsys):
    """Host time per launch (tiny kernel, so the GPU keeps up): the cached path must beat Numba's own route
    (as_cuda_array + external_stream per call) by a wide margin. Prints the figures."""
    import time

    import numpy as np
    from numba import cuda

    import kernels
    from kernels.numba.activations import BIAS_GELU
    from kernels.runtime.numba_interop import launch, launch_plain

    x, b = torch.randn(1, 256, device="cuda"), torch.randn(256, device="cuda")
    y, k = torch.empty_like(x), BIAS_GELU["f"]
    scalars = (np.int32(256), np.int32(256), np.int32(1), np.int32(1))

    def numba_route():  # Numba's documented route: wrap every tensor and the stream on each call
        k[1, 256, cuda.external_stream(torch.cuda.current_stream().cuda_stream)](
            cuda.as_cuda_array(x.view(-1)), cuda.as_cuda_array(b), cuda.as_cuda_array(y.view(-1)), *scalars)

    routes = {
        "launch() (cached)": lambda: launch(k, 1, 256, x, b, y, *scalars),
        "launch_plain() (Numba dispatch, cached stream)": lambda: launch_plain(k, 1, 256, x, b, y, *scalars),
        "as_cuda_array + external_stream per call": numba_route,
        "numba bias_gelu wrapper (checks + alloc)": lambda: REGISTRY["bias_gelu"].kernels["numba"](x, b),
        "nvrtc bias_gelu wrapper (checks + alloc)": lambda: kernels.bias_gelu(x, b),
        "torch gelu(x + b)": lambda: torch.nn.functional.gelu(x + b, approximate="tanh"),
    }
    us = {}
    for name, fn in routes.items():
        for _ in range(20):
            fn()
        torch.cuda.synchronize()
        best = float("inf")
        for _ in range(5):
            t0 = time.perf_counter()
            for _ in range(300):
                fn()
            torch.cuda.synchronize()
            best = min(best, (time.perf_counter() - t0) / 300 * 1e6)
        us[name] = best
    with capsys.disabled():
        print(f"\nhost time per launch on {torch.cuda.get_device_name()} (1x256 fp32 bias_gelu, best of 5 x 300):")
        for name, t in us.items():
            print(f"  {name:50s} {t:8.1f} us")
    assert us["launch() (cached)"] * 3 < us["as_cuda_array + external_stream per call"]
