"""kernels.gemm.skinny_linear (the decode step's GEMMs) against the fp32 product of the same operands.

Bound: each output is one fp32 dot product rounded once to the dtype, so |got - want| <= 1 ulp of the dtype
at |want| plus the fp32 accumulation error (K * 2^-24 * sum |x w|): checked as |got - want| <= 2^-7 |want| +
1e-5 sum_k |x w| for bf16 (2^-10 for fp16). silu_mul: the products are rounded before silu, so the reference
rounds them too. Outputs are poisoned with NaN (an unwritten element fails)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from hypothesis import example, given, strategies as st

pytestmark = pytest.mark.gpu

EPS = {torch.bfloat16: 2.0**-7, torch.float16: 2.0**-10}


def _check(got, want, scale, dtype, what):
    bound = EPS[dtype] * want.abs() + 1e-5 * scale + 1e-30
    bad = ~((got.float() - want).abs() <= bound)  # NaN (an unwritten, poisoned output) fails too
    if bad.any():
        i = tuple(int(v) for v in bad.nonzero()[0])
        raise AssertionError(f"{what}: {int(bad.sum())} of {bad.numel()} outside the bound ({int(got.isnan().sum())} "
                             f"NaN), max diff {(got.float() - want).abs().max().item():.3g}; first at {i}: got "
                             f"{got[i].item():.6g} want {want[i].item():.6g} bound {bound[i].item():.3g}")


@given(m=st.sampled_from((1, 2, 5, 8, 9, 16, 17, 32)), n=st.sampled_from((1, 15, 16, 17, 100, 512, 6176)),
       k=st.sampled_from((32, 64, 96, 256, 1024, 3584)), dtype=st.sampled_from((torch.bfloat16, torch.float16)),
       strided=st.booleans(), silu=st.booleans(), ksplit=st.sampled_from((None, 1, 2, 4)),
       seed=st.integers(0, 2**31 - 1))
@example(m=32, n=17, k=64, dtype=torch.float16, strided=True, silu=True, ksplit=None, seed=248365)  # s3r1 failure
def test_skinny_linear_matches_fp32(m, n, k, dtype, strided, silu, ksplit, seed):
    """Every build, the K split over a cluster (ksplit 2, 4: k = 32 leaves most warps without a step) included."""
    from kernels.gemm import skinny_linear

    if silu and ksplit not in (None, 1):
        ksplit = 1
    g = torch.Generator(device="cuda").manual_seed(seed)
    rows = 2 * n if silu else n
    w = (torch.randn(rows, k, device="cuda", generator=g) * 0.05).to(dtype)
    xs = torch.randn(m, k + (40 if strided else 0), device="cuda", generator=g).to(dtype)
    x = xs[:, 8:8 + k] if strided else xs  # a row-strided view (row stride k + 40, offset 16 bytes)
    out = torch.full((m, n), float("nan"), dtype=dtype, device="cuda")
    got = skinny_linear(x, w, silu_mul=silu, out=out, ksplit=ksplit)
    assert got is out
    prod = x.double() @ w.double().T
    scale = (x.double().abs() @ w.double().abs().T)
    if silu:
        gate, up = prod[:, :n].to(dtype).double(), prod[:, n:].to(dtype).double()
        want = F.silu(gate) * up
        # the kernel rounds its fp32 sums, the reference the exact products: near a rounding boundary the two
        # roundings of gate or up may differ by an ulp (s3r1/s3r2: fp16 m 32 n 17 k 64, 1.6 output ulps), so the
        # bound takes one ulp of each through silu(g) u: ulp(g) |silu'(g) u| + ulp(u) |silu(g)|
        sg = torch.sigmoid(gate)
        flip = EPS[dtype] * (gate.abs() * (sg * (1 + gate * (1 - sg))).abs() * up.abs() + up.abs() * F.silu(gate).abs())
        scale = scale[:, :n] * up.abs() + scale[:, n:] * gate.abs() + 1.0 + flip / 1e-5
        _check(got, want.float(), scale.float(), dtype, f"silu m{m} n{n} k{k}")
    else:
        _check(got, prod.float(), scale.float(), dtype, f"m{m} n{n} k{k}")


def test_skinny_linear_real_shapes_and_graph():
    """The 0.8B decode GEMMs (1, 8 and 32 rows) against F.linear, captured in a CUDA graph and replayed."""
    from kernels.gemm import skinny_linear

    dtype = torch.bfloat16
    for n, k in ((6176, 1024), (2048, 1024), (1024, 2048), (7168, 1024), (1024, 3584), (248320, 1024)):
        w = (torch.randn(n, k, device="cuda") * 0.03).to(dtype)
        for m in (1, 8, 32):
            x = torch.randn(m, k, device="cuda").to(dtype)
            want = x.float() @ w.float().T
            for ks in (None, 1, 2, 4) if n <= 2048 else (None,):
                out = torch.full((m, n), float("nan"), dtype=dtype, device="cuda")
                skinny_linear(x, w, out=out, ksplit=ks)  # compiled / loaded before capture
                graph = torch.cuda.CUDAGraph()
                with torch.cuda.graph(graph):
                    skinny_linear(x, w, out=out, ksplit=ks)
                out.fill_(float("nan"))
                graph.replay()
                torch.cuda.synchronize()
                _check(out, want, x.float().abs() @ w.float().abs().T, dtype, f"real m{m} n{n} k{k} ksplit {ks}")


def test_skinny_linear_refuses_what_it_cannot_take():
    from kernels.gemm import skinny_linear, skinny_ok

    w = torch.zeros(16, 64, device="cuda", dtype=torch.bfloat16)
    for x, why in ((torch.zeros(33, 64, device="cuda", dtype=torch.bfloat16), "33 rows"),
                   (torch.zeros(1, 64, device="cuda"), "fp32"),
                   (torch.zeros(1, 48, device="cuda", dtype=torch.bfloat16), "K % 32")):
        assert not skinny_ok(x, w if x.shape[1] == 64 else w[:, :48]), why
        with pytest.raises(ValueError, match="skinny_linear takes"):
            skinny_linear(x, w if x.shape[1] == 64 else w[:, :48].contiguous())
    with pytest.raises(ValueError, match="even row count"):
        skinny_linear(torch.zeros(1, 64, device="cuda", dtype=torch.bfloat16), w[:15], silu_mul=True)
    for ks, silu in ((3, False), (2, True), (0, False)):
        with pytest.raises(ValueError, match="ksplit must be"):
            skinny_linear(torch.zeros(1, 64, device="cuda", dtype=torch.bfloat16), w, silu_mul=silu, ksplit=ks)


@given(m=st.integers(1, 32), parts=st.lists(st.integers(0, 70), min_size=1, max_size=4),
       seed=st.integers(0, 2**31 - 1))
def test_skinny_linear_split_parts(m, parts, seed):
    """split=: each part is a contiguous tensor equal to its columns of the unsplit product (bitwise: the same
    kernel computes both)."""
    from kernels.gemm import skinny_linear

    n = sum(parts)
    if n == 0:
        parts, n = parts + [1] if len(parts) < 4 else parts[:3] + [1], sum(parts) + 1
    g = torch.Generator(device="cuda").manual_seed(seed)
    w = (torch.randn(n, 256, device="cuda", generator=g) * 0.05).to(torch.bfloat16)
    x = torch.randn(m, 256, device="cuda", generator=g).to(torch.bfloat16)
    ks = 1 + seed % 3 if seed % 3 < 2 else 4  # the K split's stores go through the same column split
    whole = skinny_linear(x, w, ksplit=ks)
    got = skinny_linear(x, w, split=tuple(parts), ksplit=ks)
    assert len(got) == len(parts)
    c = 0
    for t, k in zip(got, parts):
        assert t.shape == (m, k) and t.is_contiguous()
        assert torch.equal(t, whole[:, c: c + k])
        c += k
    with pytest.raises(ValueError, match="split must be"):
        skinny_linear(x, w, split=(n + 1,))


@given(m=st.sampled_from((1, 3, 8, 12, 32)), heads=st.sampled_from((1, 2, 8)), d=st.sampled_from((8, 64, 256)),
       dtype=st.sampled_from((torch.bfloat16, torch.float16)), ksplit=st.sampled_from((1, 2, 4)),
       seed=st.integers(0, 2**31 - 1))
def test_skinny_linear_gate_equals_sigmoid_gate_then_product(m, heads, d, dtype, ksplit, seed):
    """gate=: the o_proj of gated attention with the gate folded into the operand load equals sigmoid_gate (the
    kernel) followed by the plain skinny product, bitwise; gate is the strided half of a [M, H, 2 d] tensor."""
    from kernels.activations import sigmoid_gate
    from kernels.gemm import skinny_linear

    k = heads * d
    if k % 32:
        return
    g = torch.Generator(device="cuda").manual_seed(seed)
    qg = (torch.randn(m, heads, 2 * d, device="cuda", generator=g) * 3).to(dtype)
    o = torch.randn(m, heads, d, device="cuda", generator=g).to(dtype)
    w = (torch.randn(100, k, device="cuda", generator=g) * 0.05).to(dtype)
    gate = qg[..., d:]
    want = skinny_linear(sigmoid_gate(o, gate).view(m, k), w, ksplit=ksplit)
    got = skinny_linear(o.view(m, k), w, gate=gate, ksplit=ksplit)
    assert torch.equal(got, want)


ULP = {torch.bfloat16: 2.0**-8, torch.float16: 2.0**-11}


def _fold_check(got, y, w, silu, n, dtype, what, ulps):
    """got against the product of the separately normed operand y (the norm kernel's output): the folded norm
    computes y's statistics in another order, so an element may differ by an ulp or two; slack ulps * |y| |w|."""
    prod = y.double() @ w.double().T
    scale = y.double().abs() @ w.double().abs().T
    slack = ulps * ULP[dtype] * scale
    if silu:
        gate, up = prod[:, :n].to(dtype).double(), prod[:, n:].to(dtype).double()
        want = F.silu(gate) * up
        bound = scale[:, :n] * up.abs() + scale[:, n:] * gate.abs() + 1.0
        slack = (slack[:, :n] * up.abs() + slack[:, n:] * (gate.abs() + 1)) * 2
        _check(got, want.float(), (bound + slack / 1e-5).float(), dtype, what)
    else:
        _check(got, prod.float(), (scale + slack / 1e-5).float(), dtype, what)


@given(m=st.sampled_from((1, 2, 5, 8)), k=st.sampled_from((256, 1024, 2560)), n=st.sampled_from((16, 100, 1040)),
       silu=st.booleans(), parts=st.booleans(), ksplit=st.sampled_from((None, 1, 2, 4)),
       dtype=st.sampled_from((torch.bfloat16, torch.float16)), seed=st.integers(0, 2**31 - 1))
def test_skinny_linear_add_rms_fold(m, k, n, silu, parts, ksplit, dtype, seed):
    """add_rms=: the product of add_rms_norm(x, residual, w)'s y, and residual_out bitwise equal to the norm
    kernel's; with split= and silu_mul too (the folds the model uses before in_proj, qkv_proj and gate_up)."""
    from kernels.gemm import fold_ok, skinny_linear
    from kernels.norms import add_rms_norm

    if silu:
        ksplit, parts = 1, False
    g = torch.Generator(device="cuda").manual_seed(seed)
    rows = 2 * n if silu else n
    w = (torch.randn(rows, k, device="cuda", generator=g) * 0.05).to(dtype)
    x = torch.randn(m, k, device="cuda", generator=g).to(dtype)
    res = (torch.randn(m, k, device="cuda", generator=g) * 4).to(dtype)
    nw = (torch.randn(k, device="cuda", generator=g) * 0.5).to(dtype)
    y, want_res = add_rms_norm(x, res, nw, 1e-6)
    assert fold_ok("add", x, res)
    kw = dict(silu_mul=silu, ksplit=ksplit, add_rms=(res, nw, 1e-6))
    if parts:
        cut = (n // 3, n - n // 3)
        got, got_res = skinny_linear(x, w, split=cut, **kw)
        got = torch.cat(got, 1)
    else:
        out = torch.full((m, n), float("nan"), dtype=dtype, device="cuda")
        got, got_res = skinny_linear(x, w, out=out, **kw)
        assert got is out
    assert torch.equal(got_res, want_res), "residual_out differs from add_rms_norm's"
    _fold_check(got, y, w, silu, n, dtype, f"add_rms m{m} n{n} k{k} silu {silu} ksplit {ksplit}", 1)


@given(m=st.sampled_from((1, 3, 8)), heads=st.sampled_from((1, 4, 16)), d=st.sampled_from((8, 64, 128)),
       n=st.sampled_from((16, 1024, 2560)), ksplit=st.sampled_from((None, 1, 2, 4)),
       dtype=st.sampled_from((torch.bfloat16, torch.float16)), seed=st.integers(0, 2**31 - 1))
def test_skinny_linear_gated_rms_fold(m, heads, d, n, ksplit, dtype, seed):
    """gated_rms=: the product of gated_rms_norm(o, z, w)'s y (the DeltaNet output norm before out_proj); z a
    strided view (the z part of a wider projection output)."""
    from kernels.gemm import fold_ok, skinny_linear
    from kernels.norms import gated_rms_norm

    k = heads * d
    if k % 32:
        return
    g = torch.Generator(device="cuda").manual_seed(seed)
    o = torch.randn(m, heads, d, device="cuda", generator=g).to(dtype)
    zz = (torch.randn(m, heads, 2 * d, device="cuda", generator=g) * 2).to(dtype)
    z = zz[..., d:]
    nw = (1 + 0.3 * torch.randn(d, device="cuda", generator=g)).to(dtype)
    w = (torch.randn(n, k, device="cuda", generator=g) * 0.05).to(dtype)
    y = gated_rms_norm(o, z, nw, 1e-6).reshape(m, k)
    assert fold_ok("gated", o.view(m, k), z)
    out = torch.full((m, n), float("nan"), dtype=dtype, device="cuda")
    got = skinny_linear(o.view(m, k), w, out=out, ksplit=ksplit, gated_rms=(z, nw, 1e-6))
    _fold_check(got, y, w, False, n, dtype, f"gated_rms m{m} h{heads} d{d} n{n} ksplit {ksplit}", 3)


def test_skinny_linear_folds_refuse_what_they_cannot_take():
    from kernels.gemm import fold_ok, skinny_linear

    dt = torch.bfloat16
    w = torch.zeros(16, 256, device="cuda", dtype=dt)
    nw = torch.ones(256, device="cuda", dtype=dt)
    x9 = torch.zeros(9, 256, device="cuda", dtype=dt)
    assert not fold_ok("add", x9, x9)
    with pytest.raises(ValueError, match="add_rms takes"):
        skinny_linear(x9, w, add_rms=(x9, nw, 1e-6))
    x = torch.zeros(1, 256, device="cuda", dtype=dt)
    with pytest.raises(ValueError, match="exclude one another"):
        skinny_linear(x, w, add_rms=(x, nw, 1e-6), gated_rms=(x.view(1, 2, 128), nw[:128], 1e-6))
    with pytest.raises(ValueError, match="residual must be"):
        skinny_linear(x, w, add_rms=(x9, nw, 1e-6))
    with pytest.raises(ValueError, match="norm_weight must be"):
        skinny_linear(x, w, add_rms=(x, nw[:128], 1e-6))
    with pytest.raises(ValueError, match="add_rms must be"):
        skinny_linear(x, w, add_rms=(x, nw))
    x96 = torch.zeros(1, 96, device="cuda", dtype=dt)
    assert not fold_ok("add", x96, x96)  # K % 256
    with pytest.raises(ValueError, match="gated_rms takes"):
        skinny_linear(x96, torch.zeros(16, 96, device="cuda", dtype=dt),
                      gated_rms=(x96.view(1, 4, 24), torch.ones(24, device="cuda", dtype=dt), 1e-6))


@given(m=st.sampled_from((1, 3, 8, 17, 32)), n=st.sampled_from((1, 16, 17, 31, 33, 100, 8224)),
       k=st.sampled_from((32, 256, 1024)), parts=st.booleans(), dtype=st.sampled_from((torch.bfloat16, torch.float16)),
       seed=st.integers(0, 2**31 - 1))
def test_skinny_linear_wide_tiles_equal_narrow(m, n, k, parts, dtype, seed):
    """tile_rows=32 (two 16-row blocks a CTA) computes every output as the 16-row build does: bitwise equal, with
    and without split= (N not a multiple of 32: the second block's rows past N are not stored)."""
    from kernels.gemm import skinny_linear

    g = torch.Generator(device="cuda").manual_seed(seed)
    w = (torch.randn(n, k, device="cuda", generator=g) * 0.05).to(dtype)
    x = torch.randn(m, k, device="cuda", generator=g).to(dtype)
    if parts and n > 1:
        cut = (n // 2, n - n // 2)
        want = torch.cat(skinny_linear(x, w, split=cut), 1)
        got = torch.cat(skinny_linear(x, w, split=cut, tile_rows=32), 1)
    else:
        want = skinny_linear(x, w)
        out = torch.full((m, n), float("nan"), dtype=dtype, device="cuda")
        got = skinny_linear(x, w, tile_rows=32, out=out)
    assert torch.equal(got, want)
    with pytest.raises(ValueError, match="tile_rows must be"):
        skinny_linear(x, w, tile_rows=24)
    with pytest.raises(ValueError, match="tile_rows must be"):
        skinny_linear(x, torch.cat([w, w]), tile_rows=32, silu_mul=True)
