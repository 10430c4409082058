"""The PDL audit (kernels/runtime/pdl_audit.py) on small kernels compiled for sm_90 (NVRTC, no GPU): it must flag
a global load or store above griddepcontrol.wait through an undeclared pointer, pass a declared one, pass accesses
after the wait, and see that wait_for_primary_grid(p) keeps an invariant (__restrict__) load through p below the
wait. property_tests/test_compile.py runs it on every real source.
"""

from __future__ import annotations

import pytest

from kernels.runtime import nvrtc, pdl_audit

pytestmark = pytest.mark.compile

SRC = r'''
#include "include/ptx.cuh"
using namespace qkern;

// plain pointers: neither load nor store may cross the wait's memory clobber, so they stay where written
__global__ void load_early(const float* x, float* y) {
    const float a = x[threadIdx.x];
    wait_for_primary_grid();
    y[threadIdx.x] = a;
}

// pdl-early: x -- a constant table, for this test
template <int N>
__global__ void load_declared(const float* x, float* y) {
    const float a = x[threadIdx.x * N];
    wait_for_primary_grid();
    y[threadIdx.x] = a;
}

__global__ void store_early(const float* x, float* y) {
    y[threadIdx.x] = 1.f;
    wait_for_primary_grid();
    y[threadIdx.x + 256] = x[threadIdx.x];
}

__global__ void after_wait(const float* x, float* y) {
    wait_for_primary_grid();
    y[threadIdx.x] = x[threadIdx.x];
}

__global__ void laundered(const float* __restrict__ x, const float* __restrict__ w, float* __restrict__ y, int n) {
    float acc = w[threadIdx.x];
    wait_for_primary_grid(x);
    for (int i = threadIdx.x; i < n; i += blockDim.x) acc += x[i];
    y[threadIdx.x] = acc;
}

__global__ void no_wait(const float* x, float* y) { y[threadIdx.x] = x[threadIdx.x]; }
'''
EXPRS = ("load_early", "load_declared<2>", "store_early", "after_wait", "laundered", "no_wait")


@pytest.fixture(scope="module")
def problems():
    mod = nvrtc.compile_source(SRC, EXPRS, "sm_90")
    out = pdl_audit.audit_module(SRC, EXPRS, mod, label="test.cu")
    return {e: [p for p in out if p.startswith(f"test.cu {e}:")] for e in EXPRS}


def test_flags_a_load_above_the_wait(problems):
    assert problems["load_early"] and all("LDG" in p and p.endswith("reads x") for p in problems["load_early"])


def test_passes_a_declared_early_read(problems):
    assert problems["load_declared<2>"] == []


def test_flags_a_store_above_the_wait(problems):
    assert problems["store_early"] and all("STG" in p and p.endswith("reads y") for p in problems["store_early"])


def test_passes_accesses_after_the_wait(problems):
    assert problems["after_wait"] == []
    assert problems["no_wait"] == []  # no wait at all: not a programmatic kernel, nothing to check


def test_a_pointer_named_to_the_wait_stays_below_it(problems):
    """w (not named) may be read early and is declared nowhere: the only violation allowed is through w."""
    assert all(p.endswith("reads w") for p in problems["laundered"]), problems["laundered"]


def test_signature_parsing():
    sig = pdl_audit.kernel_signature(SRC, "load_declared<2>")
    assert sig.params == ["x", "y"] and sig.pointer == [True, True] and sig.early == {"x"}
    sig = pdl_audit.kernel_signature(SRC, "laundered")
    assert sig.params == ["x", "w", "y", "n"] and sig.pointer == [True, True, True, False] and sig.early == set()


def test_the_real_sources_are_found():
    """Every source with programmatic kernels is audited (a missed one would pass unchecked)."""
    names = set(pdl_audit.waiting_sources())
    assert {"rope.cu", "gemm.cu", "norms.cu", "deltanet.cu", "decode_attention.cu", "moe.cu", "conv1d.cu",
            "glue.cu", "activations.cu"} <= names, names


def test_rope_decode_kernel_needs_its_pointers_named():
    """The hazard on this toolchain (NVRTC 13.0): without the pointers named to the wait, rope.cu's decode kernel
    reads the rotation angles (written by the step's gather before it) above griddepcontrol.wait, invariant loads
    the wait does not order; with them named, nothing undeclared is early."""
    expr = "rope::qk_norm_rope_kernel<__nv_bfloat16, 8, 2, 4, false>"
    src = nvrtc.read_source("rope.cu")
    named = "wait_for_primary_grid(src, cos, sin, cu, lengths);"
    assert named in src
    bare = src.replace(named, "wait_for_primary_grid();")
    assert pdl_audit.audit_module(src, (expr,), nvrtc.compile_source(src, (expr,), "sm_90"), label="rope.cu") == []
    found = pdl_audit.audit_module(bare, (expr,), nvrtc.compile_source(bare, (expr,), "sm_90"), label="rope.cu")
    assert any(n in p for p in found for n in ("q_in", "k_in", "v_in", "cos", "sin")), (
        "the compiler no longer hoists these loads above a bare wait: this control no longer shows the hazard")


def test_cli_refuses_an_unknown_source(capsys):
    """A source with no programmatic kernels (or a typo) is an error naming the ones there are, not a silent pass."""
    assert pdl_audit.main(["--source", "no_such.cu"]) == 2
    err = capsys.readouterr().err
    assert "no programmatic kernels in no_such.cu" in err and "rope.cu" in err
