"""kernels.attention vs reference.attention (explicit block-diagonal / causal mask, fp32 math) on the GPU.

Inputs: random packed segments (lengths 0..300, including length-1 segments, zero-length segments and
one-segment batches), head dims 64/72/80/128/256, GQA ratios 1/2/4, causal and not, bf16 and fp16, and every
candidate tile shape (so the non-default shapes stay correct too). Outputs are NaN-poisoned before the call
so an unwritten row fails. The reference runs on the same (rounded) inputs in fp32.

Tolerances (kernel output vs fp32 reference): P is rounded to the input dtype before the PV product and the
output is rounded once, so bf16 (8-bit mantissa) gets rel-L2 <= 1e-2 and max-abs <= 4e-2, fp16 (11-bit)
rel-L2 <= 2e-3 and max-abs <= 6e-3. lse is computed in fp32 from the same inputs: abs <= 1e-3.
"""

import math

import pytest
import torch
from hypothesis import example, given, strategies as st

import reference
from kernels.attention import SUPPORTED_HEAD_DIMS, all_variants, attention, run_variant

pytestmark = pytest.mark.gpu

TOL = {torch.bfloat16: (1e-2, 4e-2), torch.float16: (2e-3, 6e-3)}  # (rel-L2, max-abs)


def variants(d):
    return all_variants(d, torch.device("cuda"))


def make(lengths, hq, hkv, d, dtype, seed):
    g = torch.Generator(device="cuda").manual_seed(seed)
    T = sum(lengths)
    q, k, v = (torch.randn(T, h, d, device="cuda", generator=g).to(dtype) for h in (hq, hkv, hkv))
    cu = torch.tensor([0] + list(lengths), dtype=torch.int32).cumsum(0).to(torch.int32).cuda()
    return q, k, v, cu


def check(out, lse, q, k, v, cu, causal, scale=None):
    ref_out, ref_lse = reference.attention(q.float(), k.float(), v.float(), cu, causal, scale=scale,
                                           return_lse=True)
    assert not out.isnan().any(), "unwritten (NaN) output rows"
    rel_tol, abs_tol = TOL[q.dtype]
    err = (out.float() - ref_out)
    rel = (err.norm() / ref_out.norm().clamp_min(1e-6)).item()
    assert rel <= rel_tol and err.abs().max().item() <= abs_tol, (rel, err.abs().max().item())
    if lse is not None:
        assert torch.isfinite(lse).all()
        assert (lse - ref_lse).abs().max().item() <= 1e-3


segments = st.lists(st.integers(0, 300), min_size=1, max_size=5).filter(lambda ls: sum(ls) > 0)


@given(lengths=segments, d=st.sampled_from(SUPPORTED_HEAD_DIMS), hkv=st.sampled_from([1, 2]),
       ratio=st.sampled_from([1, 2, 4]), causal=st.booleans(),
       dtype=st.sampled_from([torch.bfloat16, torch.float16]), which=st.integers(0, 11),
       seed=st.integers(0, 2**16))
@example(lengths=[1], d=72, hkv=2, ratio=1, causal=False, dtype=torch.bfloat16, which=0, seed=0)
@example(lengths=[1, 1, 1], d=64, hkv=1, ratio=4, causal=True, dtype=torch.float16, which=1, seed=1)
@example(lengths=[130, 0, 1, 64, 200], d=72, hkv=2, ratio=2, causal=True, dtype=torch.bfloat16, which=0, seed=2)
@example(lengths=[257], d=256, hkv=2, ratio=4, causal=True, dtype=torch.bfloat16, which=0, seed=3)
def test_attention_matches_reference(lengths, d, hkv, ratio, causal, dtype, which, seed):
    q, k, v, cu = make(lengths, hkv * ratio, hkv, d, dtype, seed)
    vs = variants(d)
    variant = vs[which % len(vs)]
    out = torch.full_like(q, math.nan)
    lse = torch.full((q.shape[0], q.shape[1]), math.nan, device="cuda")
    scale = 1.0 / math.sqrt(d)
    run_variant(variant, q, k, v, cu, causal, scale, out, lse)
    check(out, lse, q, k, v, cu, causal)


@given(lengths=segments, causal=st.booleans(), scale=st.floats(0.01, 1.0), seed=st.integers(0, 2**16))
def test_public_entry_point(lengths, causal, scale, seed):
    """attention() itself: variant choice, out=, return_lse, scale, int64 cu_seqlens."""
    q, k, v, cu = make(lengths, 8, 2, 72, torch.bfloat16, seed)
    out = torch.full_like(q, math.nan)
    res, lse = attention(q, k, v, cu.long(), causal, scale=scale, return_lse=True, out=out,
                         max_seqlen=max(lengths))
    assert res is out
    check(out, lse, q, k, v, cu, causal, scale)


@pytest.mark.parametrize("d, lengths, causal", [(72, [784] * 8, False), (72, [4096], False),
                                                (256, [1000, 3000], True), (64, [4096], False)])
def test_realistic_shapes(d, lengths, causal):
    """ViT- and LM-sized shapes (many tiles, multi-wave grids) against fp32 SDPA per segment."""
    hq, hkv = (8, 2) if causal else (16, 16)
    q, k, v, cu = make(lengths, hq, hkv, d, torch.bfloat16, 0)
    out = attention(q, k, v, cu, causal)
    start = 0
    for L in lengths:
        sl = slice(start, start + L)
        qs, ks, vs = (t[sl].float().transpose(0, 1) for t in (q, k, v))
        r = hq // hkv
        ref = torch.nn.functional.scaled_dot_product_attention(
            qs, ks.repeat_interleave(r, 0), vs.repeat_interleave(r, 0), is_causal=causal).transpose(0, 1)
        err = out[sl].float() - ref
        assert (err.norm() / ref.norm()).item() < 1e-2 and err.abs().max().item() < 4e-2
        start += L


@pytest.mark.parametrize("d, lengths, causal", [(72, [784] * 8, False), (72, [4096], False),
                                                (72, [1000, 2100], True), (64, [3000], False),
                                                (256, [1000, 3000], True)])
def test_realistic_shapes_every_variant(d, lengths, causal):
    """Every tile shape (not only the default) on ViT/LM-sized packings against fp32 SDPA per segment, output
    NaN-poisoned first; then the same call again must give bitwise the same output (a race would move it)."""
    hq, hkv = (8, 2) if causal else (16, 16)
    q, k, v, cu = make(lengths, hq, hkv, d, torch.bfloat16, 1)
    refs, start = [], 0
    for L in lengths:
        qs, ks, vs = (t[start:start + L].float().transpose(0, 1) for t in (q, k, v))
        r = hq // hkv
        refs.append(torch.nn.functional.scaled_dot_product_attention(
            qs, ks.repeat_interleave(r, 0), vs.repeat_interleave(r, 0), is_causal=causal).transpose(0, 1))
        start += L
    ref = torch.cat(refs)
    for variant in variants(d):
        out = torch.full_like(q, math.nan)
        run_variant(variant, q, k, v, cu, causal, d ** -0.5, out, None)
        err = out.float() - ref
        rel, mx = (err.norm() / ref.norm()).item(), err.abs().max().item()
        assert rel < 1e-2 and mx < 4e-2, (variant.label(), rel, mx)
        again = torch.full_like(q, math.nan)
        run_variant(variant, q, k, v, cu, causal, d ** -0.5, again, None)
        assert torch.equal(out, again), variant.label()


@pytest.mark.parametrize("d", [64, 72, 80, 128])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("causal", [False, True])
def test_tail_tiles(d, dtype, causal):
    """Every warp-specialised tile shape on segments whose last tile is short: 64 rows exactly (one warpgroup
    full, stored with TMA), 1, 17 and 58 rows, and 784-token images. Output and lse NaN-poisoned, against the fp32
    reference."""
    from kernels.attention import WsVariant

    ws = [v for v in variants(d) if isinstance(v, WsVariant)]
    if not ws:
        pytest.skip("the warp-specialised kernels need sm_90")
    for variant in ws:
        lengths = [variant.bm + 64, variant.bm + 1, 2 * variant.bm + 17, 784, variant.bm + 58]
        q, k, v, cu = make(lengths, 4, 2, d, dtype, d)
        out = torch.full_like(q, math.nan)
        lse = torch.full((q.shape[0], q.shape[1]), math.nan, device="cuda")
        run_variant(variant, q, k, v, cu, causal, d ** -0.5, out, lse)
        check(out, lse, q, k, v, cu, causal)


@pytest.mark.parametrize("causal", [False, True])
def test_deterministic(causal):
    """Same inputs -> bitwise the same output and lse, run after run (a moving error would be a race)."""
    q, k, v, cu = make([700, 1, 333, 2048], 16, 4, 72, torch.bfloat16, 7)
    o1, l1 = attention(q, k, v, cu, causal, return_lse=True)
    for _ in range(3):
        o2, l2 = attention(q, k, v, cu, causal, return_lse=True)
        assert torch.equal(o1, o2) and torch.equal(l1, l2)


def test_empty_tokens():
    q = torch.empty(0, 4, 72, device="cuda", dtype=torch.bfloat16)
    cu = torch.zeros(2, dtype=torch.int32, device="cuda")
    assert attention(q, q[:, :2], q[:, :2], cu, False).shape == (0, 4, 72)
