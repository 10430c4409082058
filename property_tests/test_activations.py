"""Activations family checks beyond the generic ones (property_tests/test_ops.py runs every kernel against its
reference on random contiguous inputs, the real shapes and misaligned pointers): the strided views the language
model hands the gates without a copy, and graph capture at decode sizes."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, strategies as st

from kernels.registry import REGISTRY
from property_tests.cases import FLOAT_DTYPES, act, gen
from property_tests.harness import compare

pytestmark = pytest.mark.gpu


def _poisoned(shape, dtype):
    return torch.full(shape, float("nan"), dtype=dtype, device="cuda")


@given(t=st.integers(1, 40), heads=st.integers(1, 8), d=st.sampled_from((256, 128, 40, 7, 1)),
       dtype=st.sampled_from(FLOAT_DTYPES), seed=st.integers(0, 2**31 - 1))
def test_sigmoid_gate_on_the_q_proj_view(t, heads, d, dtype, seed):
    """gate = q_proj(x).view(T, H, 2 d)[..., d:]: a view with row stride 2 d (odd d: the scalar path), o a view
    of the other half; the output is contiguous and matches the reference on contiguous copies."""
    g = gen(seed)
    qg = act(g, (t, heads, 2 * d), dtype, 3.0).cuda()
    o, gate = qg[..., :d], qg[..., d:]
    assert t * heads == 1 or not gate.is_contiguous()
    spec = REGISTRY["sigmoid_gate"]
    out = _poisoned((t, heads, d), dtype)
    got = spec.kernels["nvrtc"](o, gate, out=out)
    assert got is out
    compare(spec, got, spec.reference(o.contiguous(), gate.contiguous()), f"sigmoid_gate view {t}x{heads}x{d}",
            dtype)


@given(t=st.integers(1, 40), i=st.sampled_from((3584, 1024, 100, 33, 1)), lead3=st.booleans(),
       dtype=st.sampled_from(FLOAT_DTYPES), seed=st.integers(0, 2**31 - 1))
def test_silu_mul_on_the_fused_gemm_halves(t, i, lead3, dtype, seed):
    """silu_mul(gu[..., :I], gu[..., I:]) (views with row stride 2 I) and silu_mul_fused(gu) agree with the
    reference on contiguous copies."""
    g = gen(seed)
    shape = (t, 2, 2 * i) if lead3 else (t, 2 * i)
    gu = act(g, shape, dtype, 3.0).cuda()
    gate, up = gu[..., :i], gu[..., i:]
    want = REGISTRY["silu_mul"].reference(gate.contiguous(), up.contiguous())
    got = REGISTRY["silu_mul"].kernels["nvrtc"](gate, up, out=_poisoned(want.shape, dtype))
    compare(REGISTRY["silu_mul"], got, want, f"silu_mul halves {shape}", dtype)
    got = REGISTRY["silu_mul_fused"].kernels["nvrtc"](gu, out=_poisoned(want.shape, dtype))
    compare(REGISTRY["silu_mul_fused"], got, want, f"silu_mul_fused {shape}", dtype)


def test_gates_take_many_rows():
    """More row groups than gridDim.y allows (65535): the kernel strides over rows."""
    rows = 65535 * 4 * 8 + 5  # width 8 bf16: one vector, 8 row groups of 4 rows a CTA
    o = torch.randn(rows, 8, device="cuda", dtype=torch.bfloat16)
    g = torch.randn(rows, 8, device="cuda", dtype=torch.bfloat16)
    spec = REGISTRY["sigmoid_gate"]
    compare(spec, spec.kernels["nvrtc"](o, g), spec.reference(o, g), "sigmoid_gate many rows", torch.bfloat16)


@pytest.mark.parametrize("op", ["silu_mul", "silu_mul_fused", "sigmoid_gate"])
def test_gate_graph_capture(op):
    """A decode-sized call captured in a CUDA graph and replayed gives the eager result (no host sync inside)."""
    spec = REGISTRY[op]
    args = spec.hook("real")(torch.bfloat16, tokens=1)[-1].on("cuda")
    fn = spec.kernels["nvrtc"]
    fn(*args)
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        got = fn(*args)
    graph.replay()
    torch.cuda.synchronize()
    compare(spec, got, spec.reference(*args), f"{op} graph")
