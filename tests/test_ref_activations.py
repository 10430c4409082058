"""reference.activations against torch (F.gelu both approximations, F.silu, torch.sigmoid).

Tolerances: fp64 1e-12, fp32 2e-6; bf16 checks the single rounding of the fp32 result (bit-exact against the
same fp32 math done by torch).
"""

import pytest
import torch
import torch.nn.functional as F

from reference import bias_gelu, sigmoid_gate, silu_mul, silu_mul_fused

TOL = {torch.float64: 1e-12, torch.float32: 2e-6}


def rand(*shape, dtype=torch.float32, seed=0, scale=3.0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(*shape, generator=g, dtype=torch.float64) * scale).to(dtype)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("approximate", ["tanh", "none"])
@pytest.mark.parametrize("with_bias", [True, False])
def test_bias_gelu_matches_torch(dtype, approximate, with_bias):
    x = rand(9, 40, dtype=dtype, seed=1)
    b = rand(40, dtype=dtype, seed=2) if with_bias else None
    got = bias_gelu(x, b, approximate)
    want = F.gelu(x + (b if with_bias else 0), approximate=approximate)
    assert got.dtype == dtype and got.shape == x.shape
    torch.testing.assert_close(got, want, rtol=TOL[dtype], atol=TOL[dtype])


def test_bias_gelu_approximations_differ():
    """Guards against the two forms being swapped: they differ by ~1e-4 around |x| ~ 2."""
    x = torch.linspace(-4, 4, 101, dtype=torch.float64)[None]
    assert (bias_gelu(x, None, "tanh") - bias_gelu(x, None, "none")).abs().max() > 1e-4


@pytest.mark.parametrize("approximate", ["tanh", "none"])
def test_bias_gelu_bf16_rounds_once(approximate):
    x, b = rand(4, 32, dtype=torch.bfloat16, seed=3), rand(32, dtype=torch.bfloat16, seed=4)
    want = F.gelu(x.double() + b.double(), approximate=approximate)
    torch.testing.assert_close(bias_gelu(x, b, approximate).double(), want, rtol=2**-8, atol=1e-6)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_silu_mul_matches_torch(dtype):
    g, u = rand(7, 33, dtype=dtype, seed=5), rand(7, 33, dtype=dtype, seed=6)
    got = silu_mul(g, u)
    assert got.dtype == dtype
    torch.testing.assert_close(got, F.silu(g) * u, rtol=TOL[dtype], atol=TOL[dtype])


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16])
def test_silu_mul_fused_is_the_fused_gemm_swiglu(dtype):
    """One GEMM with the gate_proj and up_proj weights stacked (gate first) then silu_mul_fused equals the two
    separate GEMMs through F.silu * up (torch.chunk splits the fused output independently of the reference)."""
    x, wg, wu = rand(2, 5, 24, seed=11), rand(40, 24, seed=12, scale=0.3), rand(40, 24, seed=13, scale=0.3)
    gu = (x @ torch.cat([wg, wu]).T).to(dtype)
    got = silu_mul_fused(gu)
    g, u = torch.chunk(gu.double(), 2, dim=-1)
    want = F.silu(g) * u
    assert got.dtype == dtype and got.shape == (2, 5, 40)
    tol = 2**-8 if dtype == torch.bfloat16 else TOL[dtype]  # bf16: the one rounding of the fp32 result
    torch.testing.assert_close(got.double(), want, rtol=tol, atol=tol)
    loose = 0.05 if dtype == torch.bfloat16 else 1e-5  # against the unfused fp32 GEMMs (gu rounded to dtype)
    torch.testing.assert_close(got.double(), (F.silu(x @ wg.T) * (x @ wu.T)).double(), rtol=loose, atol=loose)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_sigmoid_gate_matches_torch(dtype):
    o, g = rand(5, 3, 16, dtype=dtype, seed=7), rand(5, 3, 16, dtype=dtype, seed=8)
    got = sigmoid_gate(o, g)
    assert got.dtype == dtype and got.shape == o.shape
    torch.testing.assert_close(got, o / (1 + torch.exp(-g)), rtol=TOL[dtype], atol=TOL[dtype])


def test_bf16_single_rounding():
    bf = torch.bfloat16
    g, u = rand(6, 32, dtype=bf, seed=9), rand(6, 32, dtype=bf, seed=10)
    assert torch.equal(silu_mul(g, u), (F.silu(g.float()) * u.float()).to(bf))
    assert torch.equal(sigmoid_gate(g, u), (g.float() * torch.sigmoid(u.float())).to(bf))


X = torch.zeros(4, 8)
BAD = [
    (lambda: bias_gelu(torch.zeros(2, 3, 8), None), "x"),
    (lambda: bias_gelu(X.int(), None), "x"),
    (lambda: bias_gelu(X, torch.zeros(7)), "bias"),
    (lambda: bias_gelu(X, torch.zeros(8, dtype=torch.float64)), "bias"),
    (lambda: bias_gelu(X, None, approximate="erf"), "approximate"),
    (lambda: silu_mul(X, torch.zeros(4, 7)), "up"),
    (lambda: silu_mul(X, X.half()), "up"),
    (lambda: silu_mul(X.long(), X), "gate"),
    (lambda: silu_mul_fused(torch.zeros(4, 7)), "gate_up"),
    (lambda: silu_mul_fused(torch.zeros(())), "gate_up"),
    (lambda: silu_mul_fused(X.int()), "gate_up"),
    (lambda: sigmoid_gate(X, torch.zeros(8, 4)), "gate"),
    (lambda: sigmoid_gate(X, X.double()), "gate"),
    (lambda: sigmoid_gate(X.bool(), X), "o"),
]


@pytest.mark.parametrize("call,name", BAD, ids=[f"{i}-{n}" for i, (_, n) in enumerate(BAD)])
def test_bad_input(call, name):
    with pytest.raises(ValueError, match=name):
        call()


def test_device_mismatch():
    with pytest.raises(ValueError, match="device"):
        silu_mul(X, X.to("meta"))
    with pytest.raises(ValueError, match="device"):
        bias_gelu(X, torch.zeros(8, device="meta"))
