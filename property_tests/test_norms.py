"""Norms family checks beyond the generic ones (property_tests/test_ops.py runs every norms kernel against its
reference on random inputs, the real widths and misaligned pointers): the LayerNorm kernel shapes the wrapper
does not pick by default, and the launch on torch's current stream."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, strategies as st

from kernels.registry import REGISTRY
from property_tests.cases import FLOAT_DTYPES
from property_tests.cases.norms import add_bias_layer_norm_cases, build_add_bias_layer_norm, build_layer_norm, \
    layer_norm_cases
from property_tests.harness import check_case

pytestmark = pytest.mark.gpu


def test_launch_follows_torch_current_stream():
    """The NVRTC launch goes on torch's current stream (here a side stream), so ordering holds."""
    x, w, b, eps = build_layer_norm(4096, 1152, torch.bfloat16).on("cuda")
    spec = REGISTRY["layer_norm"]
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        torch.cuda._sleep(50_000_000)
        xs = x * 1  # written on s after the sleep: a kernel on another stream would read it unwritten
        y2 = spec.kernels["nvrtc"](xs, w, b, eps) * 2  # queued on s behind the kernel
    torch.cuda.current_stream().wait_stream(s)
    assert spec.tol[torch.bfloat16].ok(y2 / 2, spec.reference(x, w, b, eps))


@pytest.mark.parametrize("r", [1, 2])
@given(case=st.one_of(layer_norm_cases(), add_bias_layer_norm_cases()))
def test_layer_norm_cta_kernel(r, case):
    """The CTA-per-row LayerNorm kernel with each rows-per-thread-group R, on widths the wrapper would send
    to the warp kernel too (row counts here are mostly not multiples of R)."""
    import kernels.norms as N

    N._R_FORCE = r
    try:
        check_case(REGISTRY[case.op], "nvrtc", case, "cuda")
    finally:
        N._R_FORCE = None


@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=str)
@pytest.mark.parametrize("npt", [1, 2, 3, 4, 5, 6, 8])
@pytest.mark.parametrize("op", ["layer_norm", "add_bias_layer_norm"])
def test_layer_norm_warp_kernel_every_npt(op, npt, dtype):
    """Each vectors-per-lane instantiation of the warp kernel, with a partly filled last slot."""
    import kernels.norms as N

    vec = N._VECS[dtype][0]
    width = (32 * (npt - 1) + 17) * vec
    assert next(n for n in N._WARP_NPT if 32 * n >= width // vec) == npt
    build = build_layer_norm if op == "layer_norm" else build_add_bias_layer_norm
    check_case(REGISTRY[op], "nvrtc", build(13, width, dtype, seed=npt), "cuda")
