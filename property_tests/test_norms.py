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
    import dataclasses
    import functools

    import kernels.norms as N

    spec = REGISTRY[case.op]
    forced = dataclasses.replace(spec, kernels={"cta": functools.partial(getattr(N, case.op), cta_rows=r)})
    check_case(forced, "cta", case, "cuda")


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


# ------------------------------------------------------------------------------------------------ RMSNorm family
RMS_OPS = ("rms_norm", "add_rms_norm", "gated_rms_norm", "l2norm")


def _rms_case(op, lead, d, dtype, seed=0):
    from property_tests.cases import norms as C

    return getattr(C, f"build_{op}")(lead, d, dtype, seed=seed)


def _rms_widths(dtype) -> list[int]:
    """One width per launch configuration of kernels.norms._rms_config: lane groups below a warp, a warp with
    1 / 2 / 4 vectors a lane, CTAs with 1 / 2 / 4 vectors a thread, and the scalar path (odd widths) with 1 and 8
    elements a thread; each with a partly filled last slot where the configuration allows one."""
    import kernels.norms as N

    vec = N._RMS_VECS[dtype][0]
    return [1, 3 * vec, 16 * vec, 32 * vec, 40 * vec, 100 * vec, 160 * vec, 289 * vec, 320 * vec, 1000 * vec,
            1024 * vec, 7, 999, 1153, 5119]


@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=str)
@pytest.mark.parametrize("op", RMS_OPS)
def test_rms_every_launch_config(op, dtype):
    """Each width at the decode-sized configurations (few rows) and, with the few-rows threshold at 0, at the
    ones larger calls get."""
    import kernels.norms as N

    seen = set()
    few = N._RMS_FEW_ROWS
    try:
        for threshold in (few, 0):
            N._RMS_FEW_ROWS = threshold
            for d in _rms_widths(dtype):
                vec = N._RMS_VECS[dtype][0] if d % N._RMS_VECS[dtype][0] == 0 else 1
                seen.add((vec, N._rms_config(d // vec, vec != 1, threshold > 0)))
                for lead in ((1,), (13,), (5, 3)):
                    check_case(REGISTRY[op], "nvrtc", _rms_case(op, lead, d, dtype, seed=d), "cuda")
    finally:
        N._RMS_FEW_ROWS = few
    tx_npt = {cfg for _, cfg in seen}
    # a warp of 4 vectors a lane became two warps of 2 (kernels.norms._rms_config), so 64 x 2 stands for it
    assert {(32, 1), (32, 2), (64, 2)} <= tx_npt and any(t < 32 for t, _ in tx_npt)
    assert {n for t, n in tx_npt if t > 32} >= {1, 2, 4} and any(v == 1 and c[1] == 8 for v, c in seen)


@pytest.mark.parametrize("op", RMS_OPS)
@given(data=st.data())
def test_rms_loop_kernel(op, data):
    """The any-width loop kernel (the wrapper sends only rows of more than 4096 16-byte vectors there)."""
    import kernels.norms as N

    case = data.draw(REGISTRY[op].hook("cases")(), label="case")
    config = N._rms_config
    N._rms_config = lambda *a: None
    try:
        check_case(REGISTRY[op], "nvrtc", case, "cuda")
    finally:
        N._rms_config = config


@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=str)
def test_rms_norm_very_wide_rows_take_the_loop_kernel(dtype):
    import kernels.norms as N

    vec = N._RMS_VECS[dtype][0]
    d = 4097 * vec
    assert N._rms_config(d // vec, True) is None
    for op in RMS_OPS:
        check_case(REGISTRY[op], "nvrtc", _rms_case(op, (2,), d, dtype, seed=1), "cuda")


def test_add_rms_norm_in_place_residual():
    """out=(y, residual): the residual stream updated in place (each element is read before the same thread
    writes it), as a decoder layer would call it."""
    x, res, w, eps, uo = _rms_case("add_rms_norm", (37,), 4096, torch.bfloat16).on("cuda")
    want_y, want_r = REGISTRY["add_rms_norm"].reference(x, res, w, eps, uo)
    y = torch.full_like(x, float("nan"))
    got_y, got_r = REGISTRY["add_rms_norm"].kernels["nvrtc"](x, res, w, eps, uo, out=(y, res))
    assert got_r is res
    assert torch.equal(got_r, want_r)
    assert REGISTRY["add_rms_norm"].tol[torch.bfloat16].ok(got_y, want_y)


@pytest.mark.parametrize("op", RMS_OPS)
def test_rms_graph_capture(op):
    """A decode-sized call captured in a CUDA graph and replayed gives the eager result (no host sync inside)."""
    spec = REGISTRY[op]
    case = spec.hook("real")(torch.bfloat16, tokens=1)[-1]
    args = case.on("cuda")
    fn = spec.kernels["nvrtc"]
    fn(*args)  # compile and load outside the capture
    torch.cuda.synchronize()
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        got = fn(*args)
    g.replay()
    torch.cuda.synchronize()
    from property_tests.harness import compare

    compare(spec, got, spec.reference(*args), f"{op} graph")


@pytest.mark.parametrize("op", RMS_OPS)
@given(t=st.integers(1, 40), heads=st.integers(1, 8), d=st.sampled_from((256, 128, 40, 7, 1)),
       dtype=st.sampled_from(FLOAT_DTYPES), seed=st.integers(0, 2**31 - 1))
def test_rms_on_row_views(op, t, heads, d, dtype, seed):
    """The normalised inputs as row views without a copy: the q half of q_proj's [T, H, 2 d] output (row stride
    2 d; odd d takes the scalar path), the other inputs likewise; outputs contiguous, equal to the reference on
    contiguous copies."""
    from property_tests.cases import act, gen
    from property_tests.harness import compare

    spec = REGISTRY[op]
    case = _rms_case(op, (t, heads), d, dtype, seed=seed)
    args = list(case.on("cuda"))
    g = gen(seed)
    views = []
    for i, a in enumerate(args):
        if isinstance(a, torch.Tensor) and a.dim() == 3:
            big = act(g, (t, heads, 2 * d), dtype).cuda()
            big[..., d:] = a
            args[i] = big[..., d:]
            views.append(i)
    assert views and (t * heads == 1 or not args[0].is_contiguous())
    want = spec.reference(*[a.contiguous() if isinstance(a, torch.Tensor) else a for a in args])
    from property_tests.harness import call_poisoned

    got = call_poisoned(spec, spec.kernels["nvrtc"], case, "cuda", tuple(args), {})
    torch.cuda.synchronize()
    for o in (got if isinstance(got, tuple) else (got,)):
        assert o.is_contiguous()
    compare(spec, got, want, f"{op} views {t}x{heads}x{d}", dtype)
