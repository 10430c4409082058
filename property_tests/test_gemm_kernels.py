"""patch_embed on cuBLAS (through torch) against the reference's fp32 GEMM, and its argument checks."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, strategies as st

import kernels
import reference
from kernels.registry import REGISTRY

DTYPES = (torch.float32, torch.float16, torch.bfloat16)


@pytest.mark.gpu
@given(n=st.integers(1, 700), d=st.sampled_from([8, 72, 768, 1024, 1152]), dtype=st.sampled_from(DTYPES),
       with_bias=st.booleans(), seed=st.integers(0, 2**16))
def test_patch_embed_matches_reference(n, d, dtype, with_bias, seed):
    g = torch.Generator().manual_seed(seed)
    pv = torch.randn(n, 1536, generator=g).to("cuda", dtype)
    w = (torch.randn(d, 3, 2, 16, 16, generator=g) / 40).to("cuda", dtype)
    b = torch.randn(d, generator=g).to("cuda", dtype) if with_bias else None
    poison = torch.full((n, d), float("nan"), device="cuda", dtype=dtype)  # the block the output will reuse
    del poison
    got = kernels.patch_embed(pv, w, b)
    want = reference.patch_embed(pv, w, b)
    # one GEMM with K = 1536 accumulated in fp32 by cuBLAS: the registry's rounded-once bounds, fp32 a bit wider
    tol = REGISTRY["patch_embed"].tol[dtype]
    rel, mx = tol.errors(got, want)
    assert rel <= max(tol.rel_l2, 2e-5 if dtype == torch.float32 else 0), (rel, mx)


def test_patch_embed_bad_input():
    pv = torch.randn(4, 1536)
    w = torch.randn(8, 3, 2, 16, 16)
    with pytest.raises(ValueError, match="pixel_values"):
        kernels.patch_embed(torch.randn(4, 1000), w, None)
    with pytest.raises(ValueError, match="weight"):
        kernels.patch_embed(pv, torch.randn(8, 1536), None)
    with pytest.raises(ValueError, match="bias"):
        kernels.patch_embed(pv, w, torch.randn(7))
    with pytest.raises(ValueError, match="weight"):
        kernels.patch_embed(pv, w.double(), None)
    with pytest.raises(ValueError, match="CUDA"):
        kernels.patch_embed(pv, w, None)  # CPU tensors: an error, never a silent copy
