"""reference.norms against torch (F.layer_norm, plain formulas) and HF (Qwen3_5RMSNorm, Qwen3_5RMSNormGated).

Tolerances: fp64 1e-12; fp32 2e-6 (a few ulp, different reduction orders); bf16 against HF bit-exact where
the formulas round at the same points, else one bf16 ulp (rtol 2^-7).
"""

import pytest
import torch
import torch.nn.functional as F

from reference import add_bias_layer_norm, add_rms_norm, gated_rms_norm, l2norm, layer_norm, rms_norm

hf = pytest.importorskip("transformers.models.qwen3_5.modeling_qwen3_5")

TOL = {torch.float64: 1e-12, torch.float32: 2e-6}


def rand(*shape, dtype=torch.float32, seed=0, scale=1.0, shift=0.0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(*shape, generator=g, dtype=torch.float64) * scale + shift).to(dtype)


# ---------------------------------------------------------------- layer_norm
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("affine", ["both", "weight", "none"])
def test_layer_norm_matches_torch(dtype, affine):
    x = rand(7, 48, dtype=dtype, seed=1, scale=3.0, shift=2.0)  # offset mean: tests the centring
    w = rand(48, dtype=dtype, seed=2) if affine != "none" else None
    b = rand(48, dtype=dtype, seed=3) if affine == "both" else None
    got = layer_norm(x, w, b, eps=1e-6)
    want = F.layer_norm(x, (48,), w, b, eps=1e-6)
    assert got.dtype == dtype
    torch.testing.assert_close(got, want, rtol=TOL[dtype], atol=TOL[dtype])


def test_layer_norm_bf16_rounds_once():
    x, w, b = rand(5, 32, dtype=torch.bfloat16, seed=4), rand(32, dtype=torch.bfloat16, seed=5), rand(32, seed=6).bfloat16()
    want = F.layer_norm(x.double(), (32,), w.double(), b.double(), eps=1e-6)
    torch.testing.assert_close(layer_norm(x, w, b).double(), want, rtol=2**-8, atol=1e-6)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("with_bias", [True, False])
def test_add_bias_layer_norm_matches_torch(dtype, with_bias):
    x, res = rand(6, 40, dtype=dtype, seed=7), rand(6, 40, dtype=dtype, seed=8, scale=4.0)
    bias = rand(40, dtype=dtype, seed=9) if with_bias else None
    w, nb = rand(40, dtype=dtype, seed=10), rand(40, dtype=dtype, seed=11)
    y, res_out = add_bias_layer_norm(x, bias, res, w, nb, eps=1e-6)
    want_res = res + x + (bias if with_bias else 0)
    torch.testing.assert_close(res_out, want_res, rtol=TOL[dtype], atol=TOL[dtype])
    torch.testing.assert_close(y, F.layer_norm(want_res, (40,), w, nb, eps=1e-6), rtol=TOL[dtype] * 4, atol=TOL[dtype] * 4)


def test_add_bias_layer_norm_bf16_rounding_choice():
    """residual_out is the fp32 sum rounded once; y is LayerNorm of that stored bf16 stream."""
    bf = torch.bfloat16
    x, res, bias = rand(6, 32, dtype=bf, seed=12), rand(6, 32, dtype=bf, seed=13), rand(32, dtype=bf, seed=14)
    w, nb = rand(32, dtype=bf, seed=15), rand(32, dtype=bf, seed=16)
    y, res_out = add_bias_layer_norm(x, bias, res, w, nb)
    assert res_out.dtype == y.dtype == bf
    assert torch.equal(res_out, (res.double() + x.double() + bias.double()).to(bf))  # fp32 sum exact for these magnitudes
    want = F.layer_norm(res_out.double(), (32,), w.double(), nb.double(), eps=1e-6)
    torch.testing.assert_close(y.double(), want, rtol=2**-8, atol=1e-6)


# ---------------------------------------------------------------- rms_norm / add_rms_norm
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_rms_norm_matches_hf(dtype):
    x = rand(3, 5, 64, dtype=dtype, seed=20, scale=2.0)
    norm = hf.Qwen3_5RMSNorm(64, eps=1e-6)
    with torch.no_grad():
        norm.weight.copy_(rand(64, seed=21, scale=0.1))
    norm = norm.to(dtype)
    with torch.no_grad():
        want = norm(x)
    got = rms_norm(x, norm.weight.detach(), eps=1e-6)
    assert got.dtype == dtype
    if dtype == torch.bfloat16:
        assert torch.equal(got, want)  # same fp32 ops, one rounding
    else:
        torch.testing.assert_close(got, want, rtol=TOL[dtype], atol=TOL[dtype])


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_rms_norm_plain_weight(dtype):
    x, w = rand(4, 32, dtype=dtype, seed=22), rand(32, dtype=dtype, seed=23)
    want = x / torch.sqrt((x * x).sum(-1, keepdim=True) / 32 + 1e-5) * w
    torch.testing.assert_close(rms_norm(x, w, eps=1e-5, unit_offset=False), want, rtol=TOL[dtype], atol=TOL[dtype])
    want1 = x / torch.sqrt((x * x).sum(-1, keepdim=True) / 32 + 1e-5) * (1 + w)
    torch.testing.assert_close(rms_norm(x, w, eps=1e-5), want1, rtol=TOL[dtype], atol=TOL[dtype])


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_add_rms_norm_matches_hf(dtype):
    x, res = rand(6, 48, dtype=dtype, seed=24), rand(6, 48, dtype=dtype, seed=25, scale=3.0)
    norm = hf.Qwen3_5RMSNorm(48)
    with torch.no_grad():
        norm.weight.copy_(rand(48, seed=26, scale=0.1))
    norm = norm.to(dtype)
    with torch.no_grad():
        want_res = res + x  # HF's decoder residual add
        want = norm(want_res)
    y, res_out = add_rms_norm(x, res, norm.weight.detach())
    assert torch.equal(res_out, want_res)
    if dtype == torch.bfloat16:
        assert torch.equal(y, want)
    else:
        torch.testing.assert_close(y, want, rtol=TOL[dtype], atol=TOL[dtype])


# ---------------------------------------------------------------- gated_rms_norm
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_gated_rms_norm_matches_hf(dtype):
    x, z = rand(2, 5, 3, 32, dtype=dtype, seed=30, scale=2.0), rand(2, 5, 3, 32, dtype=dtype, seed=31, scale=2.0)
    norm = hf.Qwen3_5RMSNormGated(32, eps=1e-6)
    with torch.no_grad():
        norm.weight.copy_(rand(32, seed=32, scale=0.2, shift=1.0))
    norm = norm.to(dtype)
    with torch.no_grad():
        want = norm(x, z)
    got = gated_rms_norm(x, z, norm.weight.detach(), eps=1e-6)
    assert got.dtype == dtype
    if dtype == torch.bfloat16:
        assert torch.equal(got, want)  # the same three roundings as HF
    else:
        torch.testing.assert_close(got, want, rtol=TOL[dtype], atol=TOL[dtype])


def test_gated_rms_norm_fp64_formula():
    x, z, w = rand(4, 16, dtype=torch.float64, seed=33), rand(4, 16, dtype=torch.float64, seed=34), rand(16, dtype=torch.float64, seed=35)
    want = x / torch.sqrt((x * x).mean(-1, keepdim=True) + 1e-6) * w * (z / (1 + torch.exp(-z)))
    torch.testing.assert_close(gated_rms_norm(x, z, w), want, rtol=1e-12, atol=1e-12)


# ---------------------------------------------------------------- l2norm
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_l2norm_formula(dtype):
    x = rand(3, 4, 128, dtype=dtype, seed=40)
    want = x / torch.sqrt((x.double() ** 2).sum(-1, keepdim=True) + 1e-6).to(dtype)
    got = l2norm(x, eps=1e-6)
    assert got.dtype == dtype
    torch.testing.assert_close(got, want, rtol=TOL[dtype], atol=TOL[dtype])
    torch.testing.assert_close(got, hf.l2norm(x, eps=1e-6), rtol=TOL[dtype], atol=TOL[dtype])


def test_l2norm_bf16_in_fp32():
    x = rand(5, 64, dtype=torch.bfloat16, seed=41)
    xf = x.float()
    assert torch.equal(l2norm(x), (xf * torch.rsqrt((xf * xf).sum(-1, keepdim=True) + 1e-6)).bfloat16())


def test_zero_rows_stay_finite():
    z = torch.zeros(2, 8)
    assert torch.equal(l2norm(z), z)
    assert torch.equal(rms_norm(z, torch.zeros(8)), z)
    assert torch.isfinite(layer_norm(z, None, None)).all()


# ---------------------------------------------------------------- bad input
X, W = torch.zeros(4, 8), torch.zeros(8)

BAD = [
    # (call, argument name expected in the message)
    (lambda: layer_norm(torch.zeros(2, 3, 8), W, W), "x"),
    (lambda: layer_norm(X.int(), W, W), "x"),
    (lambda: layer_norm(X, torch.zeros(7), W), "weight"),
    (lambda: layer_norm(X, W, W.double()), "bias"),
    (lambda: layer_norm(X, W, W, eps=-1.0), "eps"),
    (lambda: add_bias_layer_norm(X, torch.zeros(9), X, W, W), "bias"),
    (lambda: add_bias_layer_norm(X, W, torch.zeros(4, 9), W, W), "residual"),
    (lambda: add_bias_layer_norm(X, W, X.double(), W, W), "residual"),
    (lambda: add_bias_layer_norm(X, W, X, torch.zeros(9), W), "weight"),
    (lambda: add_bias_layer_norm(X, W, X, W, torch.zeros(9)), "norm_bias"),
    (lambda: add_bias_layer_norm(X, W, X, W, W, eps=float("nan")), "eps"),
    (lambda: rms_norm(X, torch.zeros(9)), "weight"),
    (lambda: rms_norm(X, W.half()), "weight"),
    (lambda: rms_norm(torch.zeros(()), torch.zeros(1)), "x"),
    (lambda: rms_norm(X, W, eps="1e-6"), "eps"),
    (lambda: add_rms_norm(X, torch.zeros(4, 7), W), "residual"),
    (lambda: add_rms_norm(X, X.bfloat16(), W), "residual"),
    (lambda: add_rms_norm(X, X, torch.zeros(3)), "weight"),
    (lambda: gated_rms_norm(X, torch.zeros(4, 7), W), "z"),
    (lambda: gated_rms_norm(X, X.double(), W), "z"),
    (lambda: gated_rms_norm(X, X, torch.zeros(3)), "weight"),
    (lambda: l2norm(X.long()), "x"),
    (lambda: l2norm(X, eps=-1e-6), "eps"),
]


@pytest.mark.parametrize("call,name", BAD, ids=[f"{i}-{n}" for i, (_, n) in enumerate(BAD)])
def test_bad_input(call, name):
    with pytest.raises(ValueError, match=name):
        call()


def test_non_tensor_is_type_error():
    with pytest.raises(TypeError, match="x"):
        rms_norm([1.0, 2.0], W)


def test_device_mismatch():
    with pytest.raises(ValueError, match="device"):
        layer_norm(X, W.to("meta"), None)
    with pytest.raises(ValueError, match="device"):
        rms_norm(X, W.to("meta"))
    with pytest.raises(ValueError, match="device"):
        gated_rms_norm(X, X.to("meta"), W)
