"""reference.attention vs independent formulations.

* attention: torch SDPA run separately on each segment in fp64 (tolerance 1e-12 for fp64 inputs; fp32 inputs
  1e-5 relative; bf16 inputs 1e-2 relative, from the rounding of q/k/v/out).
* lse: torch.logsumexp of the explicit per-segment fp64 score matrix (fp32 result: 1e-5 absolute).
* attention_mask: a double loop over (i, j), exact.
(decode_attention: tests/test_ref_decode_attention.py)
"""

import pytest
import torch
import torch.nn.functional as F

import reference as ref

SEGMENTS = {
    "mixed": [5, 0, 1, 7, 3],  # includes zero-length and length-1 segments
    "single": [9],
    "ones": [1, 1, 1],
    "empty_edges": [0, 4, 0],
}
HEADS = [(4, 4), (4, 2), (6, 1)]  # (Hq, Hkv): MHA, GQA, MQA


def cu_of(lengths):
    return torch.tensor([0] + lengths, dtype=torch.int32).cumsum(0).to(torch.int32)


def sdpa_per_segment(q, k, v, lengths, causal, scale):
    """fp64 SDPA on each segment; GQA by repeating kv heads (head h reads kv head h // r)."""
    r = q.shape[1] // k.shape[1]
    out, start = [], 0
    for L in lengths:
        qs, ks, vs = (t[start:start + L].double().transpose(0, 1) for t in (q, k, v))  # [H, L, d]
        ks, vs = ks.repeat_interleave(r, 0), vs.repeat_interleave(r, 0)
        if L:
            out.append(F.scaled_dot_product_attention(qs, ks, vs, is_causal=causal, scale=scale).transpose(0, 1))
        start += L
    return torch.cat(out) if out else q.new_zeros(0, *q.shape[1:]).double()


def lse_per_segment(q, k, lengths, causal, scale):
    r = q.shape[1] // k.shape[1]
    out, start = [], 0
    for L in lengths:
        qs, ks = q[start:start + L].double(), k[start:start + L].double().repeat_interleave(r, 1)
        s = torch.einsum("ihd,jhd->ihj", qs, ks) * scale  # [L, H, L]
        if causal:
            s = s.masked_fill(torch.ones(L, L, dtype=torch.bool).triu(1)[:, None, :], float("-inf"))
        out.append(torch.logsumexp(s, dim=-1))
        start += L
    return torch.cat(out)


def make_qkv(T, hq, hkv, d, dtype, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(T, h, d, generator=gen, dtype=torch.float64).to(dtype) for h in (hq, hkv, hkv)]


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("hq,hkv", HEADS)
@pytest.mark.parametrize("seg", list(SEGMENTS))
def test_attention_vs_sdpa_fp64(seg, hq, hkv, causal):
    lengths = SEGMENTS[seg]
    q, k, v = make_qkv(sum(lengths), hq, hkv, 16, torch.float64)
    out, lse = ref.attention(q, k, v, cu_of(lengths), causal, return_lse=True)
    assert out.dtype == torch.float64 and out.shape == q.shape and lse.shape == q.shape[:2]
    torch.testing.assert_close(out, sdpa_per_segment(q, k, v, lengths, causal, 16 ** -0.5), rtol=0, atol=1e-12)
    torch.testing.assert_close(lse, lse_per_segment(q, k, lengths, causal, 16 ** -0.5), rtol=0, atol=1e-12)


@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-5), (torch.float16, 2e-3), (torch.bfloat16, 1e-2)])
@pytest.mark.parametrize("causal", [False, True])
def test_attention_low_precision(dtype, tol, causal):
    lengths = SEGMENTS["mixed"]
    q, k, v = make_qkv(sum(lengths), 4, 2, 32, dtype, seed=1)
    scale = 0.3  # a non-default scale
    out, lse = ref.attention(q, k, v, cu_of(lengths), causal, scale=scale, return_lse=True)
    assert out.dtype == dtype and lse.dtype == torch.float32
    want = sdpa_per_segment(q, k, v, lengths, causal, scale)
    assert torch.linalg.norm(out.double() - want) / torch.linalg.norm(want) < tol
    # lse is computed in fp32 from the exactly representable (upcast) inputs
    torch.testing.assert_close(lse.double(), lse_per_segment(q, k, lengths, causal, scale), rtol=0, atol=1e-5)


@pytest.mark.parametrize("causal", [False, True])
def test_attention_mask_vs_loops(causal):
    lengths = SEGMENTS["mixed"]
    seg_of = [s for s, L in enumerate(lengths) for _ in range(L)]
    T = len(seg_of)
    want = torch.tensor([[seg_of[i] == seg_of[j] and (j <= i or not causal) for j in range(T)] for i in range(T)])
    for dt in (torch.int32, torch.int64):
        got = ref.attention_mask(cu_of(lengths).to(dt), causal)
        assert got.dtype == torch.bool and torch.equal(got, want)


def test_attention_no_tokens():
    q, k, v = make_qkv(0, 2, 1, 8, torch.float32)
    out, lse = ref.attention(q, k, v, torch.tensor([0, 0], dtype=torch.int32), True, return_lse=True)
    assert out.shape == (0, 2, 8) and lse.shape == (0, 2)


# ----------------------------------------------------------------------------------------------------------------
# bad input
# ----------------------------------------------------------------------------------------------------------------

def _good():
    q, k, v = make_qkv(6, 4, 2, 8, torch.float32)
    return dict(q=q, k=k, v=v, cu_seqlens=torch.tensor([0, 2, 6], dtype=torch.int32), causal=True)


@pytest.mark.parametrize("change,match", [
    (dict(q=torch.zeros(6, 4, 8, dtype=torch.int32)), "q"),
    (dict(q=torch.zeros(6, 32)), "q"),
    (dict(k=torch.zeros(6, 3, 8), v=torch.zeros(6, 3, 8)), "heads"),
    (dict(k=torch.zeros(6, 2, 4)), "k"),
    (dict(v=torch.zeros(6, 2, 4)), "v"),
    (dict(k=torch.zeros(5, 2, 8)), "k"),
    (dict(v=torch.zeros(6, 2, 8, dtype=torch.float64)), "dtype"),
    (dict(k=torch.zeros(6, 2, 8, device="meta")), "device"),
    (dict(cu_seqlens=torch.tensor([0, 2, 5], dtype=torch.int32)), "cu_seqlens"),
    (dict(cu_seqlens=torch.tensor([0, 4, 2, 6], dtype=torch.int32)), "cu_seqlens"),
    (dict(cu_seqlens=torch.tensor([1, 2, 6], dtype=torch.int32)), "cu_seqlens"),
    (dict(cu_seqlens=torch.tensor([0.0, 6.0])), "cu_seqlens"),
    (dict(cu_seqlens=torch.tensor([6], dtype=torch.int32)), "cu_seqlens"),
])
def test_attention_bad_input(change, match):
    with pytest.raises(ValueError, match=match):
        ref.attention(**{**_good(), **change})


def test_attention_bad_types():
    with pytest.raises(TypeError, match="q"):
        ref.attention(**{**_good(), "q": [[0.0]]})
    with pytest.raises(TypeError, match="causal"):
        ref.attention_mask(torch.tensor([0, 3]), causal=1)
    with pytest.raises(ValueError, match="cu_seqlens"):
        ref.attention_mask(torch.tensor([0, 3, 1]), causal=False)


def test_kernel_hints_are_checked():
    """max_seqlen / validate are kernel hints; the reference accepts them and rejects a max_seqlen too small."""
    import reference as R

    q = torch.randn(7, 2, 8, dtype=torch.float64)
    cu = torch.tensor([0, 3, 7], dtype=torch.int32)
    want = R.attention(q, q, q, cu, False)
    assert torch.equal(R.attention(q, q, q, cu, False, max_seqlen=4, validate=False), want)
    with pytest.raises(ValueError, match="max_seqlen"):
        R.attention(q, q, q, cu, False, max_seqlen=3)
