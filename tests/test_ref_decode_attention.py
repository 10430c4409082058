"""reference.decode_attention and reference.kv_cache_append vs independent formulations.

* decode_attention: `attention` (causal) on the concatenated cache rows, the last row of each segment = the new
  query; cache rows past each length are NaN so any read of them fails. A length-0 row gives zeros.
* kv_cache_append: a loop over tokens that writes one slot at a time (exact); packed prefill, chunked prefill
  (two appends equal one) and decode (cu = arange(B+1)).
"""

import pytest
import torch

import reference as ref

HEADS = [(4, 4), (4, 2), (6, 1), (8, 2)]  # (Hq, Hkv): MHA, GQA, MQA


def _cache(B, S, hkv, d, dtype, gen):
    return [torch.randn(B, S, hkv, d, generator=gen, dtype=torch.float64).to(dtype) for _ in range(2)]


@pytest.mark.parametrize("hq,hkv", HEADS)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_decode_attention_vs_attention(hq, hkv, dtype):
    gen = torch.Generator().manual_seed(2)
    B, S, d = 5, 9, 16
    lengths = torch.tensor([1, 9, 0, 4, 6], dtype=torch.int32)
    q = torch.randn(B, hq, d, generator=gen, dtype=torch.float64).to(dtype)
    kc, vc = _cache(B, S, hkv, d, dtype, gen)
    for b, L in enumerate(lengths.tolist()):  # unused cache rows: reading them would poison the output
        kc[b, L:], vc[b, L:] = float("nan"), float("nan")
    out = ref.decode_attention(q, kc, vc, lengths)
    assert out.dtype == dtype and out.shape == q.shape and not out.isnan().any()
    assert torch.equal(out[2], torch.zeros_like(out[2]))  # length 0: the empty sum

    # packed prefill formulation: segment b = cache rows 0..L-1, its last query row is the new token
    live = [b for b, L in enumerate(lengths.tolist()) if L > 0]
    lens = lengths[live]
    ks = torch.cat([kc[b, :L] for b, L in zip(live, lens.tolist())])
    vs = torch.cat([vc[b, :L] for b, L in zip(live, lens.tolist())])
    qs = torch.randn(ks.shape[0], hq, d, generator=gen, dtype=torch.float64).to(dtype)
    cu = torch.cat([torch.zeros(1, dtype=torch.int32), lens.cumsum(0).to(torch.int32)])
    qs[cu[1:] - 1] = q[live]
    want = ref.attention(qs, ks, vs, cu, causal=True)[cu[1:] - 1]
    tol = 1e-12 if dtype == torch.float64 else 1e-6
    torch.testing.assert_close(out[live], want, rtol=tol, atol=tol)


def test_decode_attention_scale_and_low_precision():
    """A non-default scale, bf16 inputs: fp32 math on the upcast values, rounded once."""
    gen = torch.Generator().manual_seed(3)
    q = torch.randn(2, 4, 32, generator=gen).bfloat16()
    kc, vc = _cache(2, 7, 2, 32, torch.bfloat16, gen)
    lengths = torch.tensor([7, 3])
    out = ref.decode_attention(q, kc, vc, lengths, scale=0.3)
    want = ref.decode_attention(q.double(), kc.double(), vc.double(), lengths, scale=0.3)
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out.double(), want, rtol=0, atol=2 ** -7 * float(want.abs().max()))


def test_decode_attention_hints():
    gen = torch.Generator().manual_seed(4)
    q = torch.randn(2, 4, 8, generator=gen, dtype=torch.float64)
    kc, vc = _cache(2, 5, 2, 8, torch.float64, gen)
    lengths = torch.tensor([2, 4], dtype=torch.int32)
    want = ref.decode_attention(q, kc, vc, lengths)
    assert torch.equal(ref.decode_attention(q, kc, vc, lengths, max_length=4, validate=False), want)
    assert torch.equal(ref.decode_attention(q, kc, vc, lengths, max_length=5), want)
    for bad in (3, 6, 4.0, True):
        with pytest.raises(ValueError, match="max_length"):
            ref.decode_attention(q, kc, vc, lengths, max_length=bad)


def _append_loop(k, v, kc, vc, cu, lengths):
    """Slot by slot: token i of sequence b -> slot lengths[b] + i."""
    kc, vc = kc.clone(), vc.clone()
    for b in range(kc.shape[0]):
        for i in range(int(cu[b + 1] - cu[b])):
            kc[b, int(lengths[b]) + i] = k[int(cu[b]) + i]
            vc[b, int(lengths[b]) + i] = v[int(cu[b]) + i]
    return kc, vc


def _packed(n, hkv, d, dtype, gen):
    return [torch.randn(n, hkv, d, generator=gen, dtype=torch.float64).to(dtype) for _ in range(2)]


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
@pytest.mark.parametrize("new,lengths", [
    ([3, 0, 5, 1], [0, 0, 0, 0]),  # prefill (a row with no tokens)
    ([2, 1, 3, 4], [5, 0, 2, 4]),  # chunked prefill: earlier chunks cached
    ([1, 1, 1, 1], [0, 7, 3, 6]),  # decode, one row filled to capacity
])
def test_kv_cache_append_vs_loop(dtype, new, lengths):
    gen = torch.Generator().manual_seed(5)
    B, S, hkv, d = 4, 8, 2, 8
    cu = torch.tensor([0] + new).cumsum(0).to(torch.int32)
    lengths = torch.tensor(lengths, dtype=torch.int32)
    k, v = _packed(sum(new), hkv, d, dtype, gen)
    kc, vc = _cache(B, S, hkv, d, dtype, gen)
    want_k, want_v = _append_loop(k, v, kc, vc, cu, lengths)
    assert ref.kv_cache_append(k, v, kc, vc, cu, lengths) is None
    assert torch.equal(kc, want_k) and torch.equal(vc, want_v)


def test_kv_cache_append_chunks_equal_one_pass():
    """Prefill in two chunks (lengths = the first chunk) fills the cache as one prefill does."""
    gen = torch.Generator().manual_seed(6)
    B, S, hkv, d = 3, 10, 2, 4
    first, second = [4, 0, 2], [3, 5, 1]
    k1, v1 = _packed(sum(first), hkv, d, torch.float32, gen)
    k2, v2 = _packed(sum(second), hkv, d, torch.float32, gen)
    cu1 = torch.tensor([0] + first).cumsum(0)
    cu2 = torch.tensor([0] + second).cumsum(0)
    kc, vc = torch.zeros(B, S, hkv, d), torch.zeros(B, S, hkv, d)
    ref.kv_cache_append(k1, v1, kc, vc, cu1, torch.zeros(B, dtype=torch.int64))
    ref.kv_cache_append(k2, v2, kc, vc, cu2, torch.tensor(first))
    both = [n1 + n2 for n1, n2 in zip(first, second)]
    split = lambda t, cu: [t[cu[b]:cu[b + 1]] for b in range(B)]  # noqa: E731
    k = torch.cat([torch.cat(p) for p in zip(split(k1, cu1), split(k2, cu2))])
    v = torch.cat([torch.cat(p) for p in zip(split(v1, cu1), split(v2, cu2))])
    kc1, vc1 = torch.zeros(B, S, hkv, d), torch.zeros(B, S, hkv, d)
    ref.kv_cache_append(k, v, kc1, vc1, torch.tensor([0] + both).cumsum(0), torch.zeros(B, dtype=torch.int64))
    assert torch.equal(kc, kc1) and torch.equal(vc, vc1)


# ----------------------------------------------------------------------------------------------------------------
# bad input
# ----------------------------------------------------------------------------------------------------------------

def _good_decode():
    gen = torch.Generator().manual_seed(0)
    return dict(q=torch.randn(2, 4, 8, generator=gen), k_cache=torch.randn(2, 5, 2, 8, generator=gen),
                v_cache=torch.randn(2, 5, 2, 8, generator=gen), lengths=torch.tensor([1, 5], dtype=torch.int32))


@pytest.mark.parametrize("change,match", [
    (dict(lengths=torch.tensor([-1, 5], dtype=torch.int32)), "lengths"),
    (dict(lengths=torch.tensor([1, 6], dtype=torch.int32)), "lengths"),
    (dict(lengths=torch.tensor([1, 2, 3], dtype=torch.int32)), "lengths"),
    (dict(lengths=torch.tensor([1.0, 2.0])), "lengths"),
    (dict(k_cache=torch.zeros(2, 5, 3, 8), v_cache=torch.zeros(2, 5, 3, 8)), "heads"),
    (dict(k_cache=torch.zeros(3, 5, 2, 8)), "k_cache"),
    (dict(v_cache=torch.zeros(2, 4, 2, 8)), "v_cache"),
    (dict(k_cache=torch.zeros(2, 5, 2, 8, dtype=torch.float16)), "dtype"),
    (dict(v_cache=torch.zeros(2, 5, 2, 8, dtype=torch.float16)), "dtype"),
    (dict(q=torch.zeros(2, 4, 8, 1)), "q"),
    (dict(lengths=torch.tensor([1, 5], device="meta")), "device"),
])
def test_decode_attention_bad_input(change, match):
    with pytest.raises(ValueError, match=match):
        ref.decode_attention(**{**_good_decode(), **change})


def _good_append():
    return dict(k=torch.zeros(3, 2, 8), v=torch.zeros(3, 2, 8), k_cache=torch.zeros(2, 5, 2, 8),
                v_cache=torch.zeros(2, 5, 2, 8), cu_seqlens=torch.tensor([0, 1, 3], dtype=torch.int32),
                lengths=torch.tensor([4, 3], dtype=torch.int32))


@pytest.mark.parametrize("change,match", [
    (dict(lengths=torch.tensor([5, 3], dtype=torch.int32)), "capacity"),  # 5 + 1 > S
    (dict(lengths=torch.tensor([4, 4], dtype=torch.int32)), "capacity"),  # 4 + 2 > S
    (dict(lengths=torch.tensor([-1, 0], dtype=torch.int32)), "lengths"),
    (dict(lengths=torch.tensor([0, 0, 0], dtype=torch.int32)), "lengths"),
    (dict(lengths=torch.tensor([0.0, 0.0])), "lengths"),
    (dict(cu_seqlens=torch.tensor([0, 3], dtype=torch.int32)), "cu_seqlens"),  # one segment for two rows
    (dict(cu_seqlens=torch.tensor([0, 1, 2], dtype=torch.int32)), "cu_seqlens"),  # does not end at T
    (dict(v=torch.zeros(3, 2, 4)), "v"),
    (dict(k=torch.zeros(3, 2, 8, dtype=torch.float16)), "dtype"),
    (dict(v_cache=torch.zeros(2, 5, 2, 8, dtype=torch.float16)), "dtype"),
    (dict(k_cache=torch.zeros(2, 5, 1, 8), v_cache=torch.zeros(2, 5, 1, 8)), "k_cache"),
    (dict(v_cache=torch.zeros(2, 6, 2, 8)), "v_cache"),
    (dict(k_cache=torch.zeros(2, 5, 2, 8, device="meta")), "device"),
])
def test_kv_cache_append_bad_input(change, match):
    with pytest.raises(ValueError, match=match):
        ref.kv_cache_append(**{**_good_append(), **change})
