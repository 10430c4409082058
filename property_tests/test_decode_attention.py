"""kernels.decode_attention (flash-decoding) and kernels.kv_cache_append vs their references.

decode_attention on the GPU: B of 1..9 rows of different cache lengths (0, 1 and exactly S included), GQA ratios
1..24 (Qwen3.5's 8:2, 16:4, 24:4, 32:2 and smaller; over 16 query heads a kv head takes two row groups), head_dim
256, bf16 and fp16, int32 and int64 lengths, default and forced split counts (so contexts cross chunk boundaries
and both the direct and the combine path run), cache slots past each row's length filled with NaN (a read of one
poisons the output), outputs poisoned with NaN (an unwritten row fails). Also a long context, caches strided over
rows and slots, a CUDA graph replayed with new lengths, and torch's current stream.
Tolerance (kernel vs the fp32 reference on the same inputs): P is rounded to the cache dtype before the PV product
and the output once, as in the prefill attention kernel: bf16 rel-L2 <= 1e-2, max-abs <= 4e-2; fp16 2e-3, 6e-3.

kv_cache_append: bit-exact against the reference (prefill, chunked prefill, decode; fp32/fp16/bf16), and with
validate=False writes past the capacity are dropped while every other slot matches.

Bad input (CPU, before any device check): dtype, shape, layout, alignment, hints; lengths beyond the cache (read
back when validate=True).
"""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import example, given, strategies as st

import reference
gpu = pytest.mark.gpu
TOL = {torch.bfloat16: (1e-2, 4e-2), torch.float16: (2e-3, 6e-3)}  # (rel-L2, max-abs in units of max(1, |ref|))
HEADS = [(8, 2), (16, 4), (24, 4), (32, 2), (1, 1), (2, 1), (3, 1), (4, 4), (6, 2), (24, 1)]  # (Hq, Hkv)
D = 256


@st.composite
def decode_cases(draw, max_S=700):
    B = draw(st.integers(1, 9))
    S = draw(st.integers(1, max_S))
    special = st.sampled_from([0, 1, S, max(0, S - 1), min(S, 64), min(S, 65)])
    lengths = draw(st.lists(st.one_of(special, st.integers(0, S)), min_size=B, max_size=B))
    hq, hkv = draw(st.sampled_from(HEADS))
    dtype = draw(st.sampled_from([torch.bfloat16, torch.float16]))
    len_dtype = draw(st.sampled_from([torch.int32, torch.int64]))
    splits = draw(st.sampled_from([None, None, 1, 2, 3, 7, 16]))
    scale = draw(st.sampled_from([None, 0.05, 0.3]))
    seed = draw(st.integers(0, 2**16))
    return dict(B=B, S=S, lengths=lengths, hq=hq, hkv=hkv, dtype=dtype, len_dtype=len_dtype, splits=splits,
                scale=scale, seed=seed)


def make_decode(B, S, lengths, hq, hkv, dtype, len_dtype, seed, device="cuda", poison=True):
    g = torch.Generator(device=device).manual_seed(seed)
    q = torch.randn(B, hq, D, device=device, generator=g).to(dtype)
    kc = torch.randn(B, S, hkv, D, device=device, generator=g).to(dtype)
    vc = torch.randn(B, S, hkv, D, device=device, generator=g).to(dtype)
    if poison:  # slots past each row's length: any read of them poisons the output
        for b, L in enumerate(lengths):
            kc[b, L:], vc[b, L:] = math.nan, math.nan
    return q, kc, vc, torch.tensor(lengths, dtype=len_dtype, device=device)


def check_close(out, want):
    assert out.dtype == want.dtype and out.shape == want.shape
    assert not out.isnan().any(), f"NaN in {int(out.isnan().sum())} output elements (unwritten or a NaN slot read)"
    rel_tol, abs_tol = TOL[want.dtype]
    o, r = out.double(), want.double()
    rel = float((o - r).norm() / r.norm().clamp_min(1e-30)) if float(r.norm()) > 0 else float((o - r).norm())
    mx = float((o - r).abs().max()) / max(1.0, float(r.abs().max())) if r.numel() else 0.0
    assert rel <= rel_tol and mx <= abs_tol, (rel, mx)


def _run(case, **kw):
    import kernels.decode_attention as K

    q, kc, vc, lengths = make_decode(case["B"], case["S"], case["lengths"], case["hq"], case["hkv"], case["dtype"],
                                     case["len_dtype"], case["seed"])
    want = reference.decode_attention(q, kc, vc, lengths, scale=case["scale"])
    out = torch.full_like(q, math.nan)
    heuristic = K.num_splits
    if case["splits"] is not None:  # this split count instead of the heuristic's (the kernels take any)
        K.num_splits = lambda *_: case["splits"]
    try:
        got = K.decode_attention(q, kc, vc, lengths, case["scale"], out=out, **kw)
    finally:
        K.num_splits = heuristic
    torch.cuda.synchronize()
    assert got is out
    check_close(out, want)
    zero = [b for b, L in enumerate(case["lengths"]) if L == 0]
    assert not out[zero].any(), "a length-0 row must give 0"


@gpu
@given(case=decode_cases())
@example(case=dict(B=1, S=1, lengths=[1], hq=8, hkv=2, dtype=torch.bfloat16, len_dtype=torch.int32, splits=None,
                   scale=None, seed=0))
@example(case=dict(B=3, S=130, lengths=[0, 130, 1], hq=16, hkv=4, dtype=torch.float16, len_dtype=torch.int64,
                   splits=None, scale=None, seed=1))
@example(case=dict(B=2, S=600, lengths=[600, 257], hq=32, hkv=2, dtype=torch.bfloat16, len_dtype=torch.int32,
                   splits=7, scale=None, seed=2))
@example(case=dict(B=9, S=200, lengths=[5, 0, 200, 64, 65, 1, 128, 129, 199], hq=24, hkv=4, dtype=torch.bfloat16,
                   len_dtype=torch.int32, splits=None, scale=0.3, seed=3))
@example(case=dict(B=2, S=300, lengths=[300, 0], hq=24, hkv=1, dtype=torch.float16, len_dtype=torch.int32,
                   splits=3, scale=None, seed=4))
def test_decode_attention_matches_reference(case):
    _run(case)


@gpu
@given(case=decode_cases(max_S=300))
def test_decode_attention_hints_and_plain_launch(case):
    """max_length (the longest row) and validate=False change nothing; nor does launching the combine kernel in
    plain stream order instead of the programmatic (PDL) launch."""
    import kernels.decode_attention as K

    saved, K.PDL = K.PDL, False
    try:
        _run(case, max_length=max(case["lengths"]), validate=False)
    finally:
        K.PDL = saved


@gpu
@given(case=decode_cases(max_S=900))
@example(case=dict(B=1, S=600, lengths=[600], hq=8, hkv=2, dtype=torch.bfloat16, len_dtype=torch.int32, splits=64,
                   scale=None, seed=11))  # 60 chunks: 8 groups, two merge levels
@example(case=dict(B=3, S=900, lengths=[900, 0, 77], hq=24, hkv=4, dtype=torch.float16, len_dtype=torch.int64,
                   splits=9, scale=None, seed=12))
@example(case=dict(B=1, S=500, lengths=[500], hq=3, hkv=1, dtype=torch.bfloat16, len_dtype=torch.int32, splits=7,
                   scale=None, seed=13))  # B Hq splits = 21 partials: the second-level arrays still 16-byte aligned
def test_decode_attention_fused_merge(case):
    """FUSE: the split kernel's last CTAs merge the chunks (arrival counters, no combine kernel)."""
    import kernels.decode_attention as K

    saved, K.FUSE = K.FUSE, True
    try:
        for _ in range(2):  # twice: the counters must be back at 0 after a launch
            _run(case)
    finally:
        K.FUSE = saved


@gpu
@given(case=decode_cases(max_S=900), early=st.sampled_from([1, 2, 8]), min_tiles=st.sampled_from([0, 4]))
@example(case=dict(B=2, S=700, lengths=[700, 65], hq=8, hkv=2, dtype=torch.bfloat16, len_dtype=torch.int32,
                   splits=2, scale=None, seed=16), early=2, min_tiles=0)
def test_decode_attention_early_prefetch(case, early, min_tiles):
    """EARLY (L2 prefetches of each CTA's first tiles before the wait for the kernel before, for the length read
    before it) changes nothing."""
    import kernels.decode_attention as K

    saved = K.EARLY, K.EARLY_MIN_TILES
    K.EARLY, K.EARLY_MIN_TILES = early, min_tiles
    try:
        _run(case)
    finally:
        K.EARLY, K.EARLY_MIN_TILES = saved


@gpu
@given(case=decode_cases(max_S=900))
@example(case=dict(B=4, S=300, lengths=[0, 1, 300, 64], hq=8, hkv=2, dtype=torch.bfloat16, len_dtype=torch.int32,
                   splits=7, scale=None, seed=18))  # an empty row, one-chunk rows, a full one
def test_decode_attention_combine_all(case):
    """COMBINE_ALL: every chunk writes a partial (empty ones lse = -inf) and the combine merges all of them without
    reading the lengths; empty rows still give 0."""
    import kernels.decode_attention as K

    saved, K.COMBINE_ALL = K.COMBINE_ALL, True
    try:
        _run(case)
    finally:
        K.COMBINE_ALL = saved


@gpu
@pytest.mark.parametrize("fuse,early,combine_all", [(False, 0, False), (True, 0, False), (False, 2, False),
                                                    (False, 0, True), (True, 0, True)])
def test_graph_replay_fused_and_not(fuse, early, combine_all):
    import kernels.decode_attention as K

    saved = K.FUSE, K.EARLY, K.EARLY_MIN_TILES, K.COMBINE_ALL
    K.FUSE, K.EARLY, K.EARLY_MIN_TILES, K.COMBINE_ALL = fuse, early, 0, combine_all
    try:
        test_decode_attention_graph_replay_with_new_lengths()
    finally:
        K.FUSE, K.EARLY, K.EARLY_MIN_TILES, K.COMBINE_ALL = saved


@gpu
def test_programmatic_launch_works():
    """The split and combine kernels' PDL launches did not fall back (on sm_90, where they exist)."""
    import kernels.decode_attention as K
    from kernels.runtime import launch

    saved, launch.PDL = launch.PDL, True  # off by default (kernels/runtime/launch.py): asked for here
    try:
        _run(dict(B=1, S=3000, lengths=[3000], hq=8, hkv=2, dtype=torch.bfloat16, len_dtype=torch.int32,
                  splits=None, scale=None, seed=10))
    finally:
        launch.PDL = saved
    if torch.cuda.get_device_capability()[0] >= 9:
        assert K.PDL and launch.PDL_ERROR is None, launch.PDL_ERROR


@gpu
@pytest.mark.parametrize("B,S,lengths", [(1, 40000, [40000]), (2, 20000, [19999, 7001])])
def test_decode_attention_long_context(B, S, lengths):
    _run(dict(B=B, S=S, lengths=lengths, hq=8, hkv=2, dtype=torch.bfloat16, len_dtype=torch.int32, splits=None,
              scale=None, seed=5))


@gpu
def test_decode_attention_strided_cache():
    """A layer's slice of a [layers, B, S, Hkv, d] buffer, and a cache padded between slots."""
    from kernels.decode_attention import decode_attention

    q, kc, vc, lengths = make_decode(3, 150, [150, 3, 77], 8, 2, torch.bfloat16, torch.int32, 6)
    big_k = torch.full((2, 3, 150, 2, D), math.nan, dtype=torch.bfloat16, device="cuda")
    big_v = torch.full((3, 150, 3, 2, D), math.nan, dtype=torch.bfloat16, device="cuda")
    big_k[1] = kc
    big_v[:, :, 1] = vc
    want = reference.decode_attention(q, kc, vc, lengths)
    check_close(decode_attention(q, big_k[1], big_v[:, :, 1], lengths), want)


@gpu
def test_decode_attention_graph_replay_with_new_lengths():
    """Captured once (validate=False: no host read), replayed after the lengths change on the device."""
    from kernels.decode_attention import decode_attention

    S = 5000
    q, kc, vc, lengths = make_decode(2, S, [S, S], 16, 4, torch.bfloat16, torch.int32, 7, poison=False)
    out = torch.full_like(q, math.nan)
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        decode_attention(q, kc, vc, lengths, validate=False, out=out)
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        decode_attention(q, kc, vc, lengths, validate=False, out=out)
    for new in ([1, 4999], [0, 130], [S, 64], [2500, 2501]):
        lengths.copy_(torch.tensor(new, dtype=torch.int32))
        out.fill_(math.nan)
        graph.replay()
        torch.cuda.synchronize()
        check_close(out, reference.decode_attention(q, kc, vc, lengths))


@gpu
def test_decode_attention_follows_current_stream():
    from kernels.decode_attention import decode_attention

    q, kc, vc, lengths = make_decode(1, 3000, [3000], 8, 2, torch.bfloat16, torch.int32, 8)
    want = reference.decode_attention(q, kc, vc, lengths)
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        torch.cuda._sleep(50_000_000)
        q2 = q * 1  # written on s after the sleep: a kernel on another stream would read it unwritten
        out = decode_attention(q2, kc, vc, lengths, validate=False) * 1
    torch.cuda.current_stream().wait_stream(s)
    check_close(out, want)


def test_num_splits_fill_the_gpu():
    """Host-side split choice: enough CTAs for 132 SMs at batch 1, few splits at large batch, capped by tiles."""
    from kernels.decode_attention import num_splits

    assert num_splits(2, 128, 132) == 64      # B=1, 8:2 heads, 8k slots: 128 CTAs of 2 tiles
    assert num_splits(4, 512, 132) == 32      # B=1, 16:4 heads, 32k slots
    assert num_splits(64, 4096, 132) == 2     # B=32
    assert num_splits(128, 128, 132) == 1     # B=32, 4 kv heads
    assert num_splits(16, 2048, 132) == 8     # B=8
    assert num_splits(2, 1, 132) == 1         # at most one tile: no split
    assert num_splits(264, 4096, 132) == 1    # two full waves without splitting
    for ctas in range(1, 300, 7):
        for tiles in (1, 5, 64, 4096):
            s = num_splits(ctas, tiles, 132)
            assert 1 <= s <= max(1, min(tiles, 1024))


# ------------------------------------------------------------------------------------------------ kv_cache_append
@st.composite
def append_cases(draw):
    B = draw(st.integers(1, 9))
    S = draw(st.integers(1, 40))
    mode = draw(st.sampled_from(["prefill", "chunk", "decode"]))
    lengths, new = [], []
    for _ in range(B):
        L = 0 if mode == "prefill" else draw(st.integers(0, S - 1 if mode == "decode" else S))
        n = 1 if mode == "decode" else draw(st.integers(0, S - L))
        lengths.append(L)
        new.append(n)
    hkv = draw(st.sampled_from([1, 2, 4]))
    d = draw(st.sampled_from([256, 8, 5, 1]))  # 5, 1: not a multiple of the vector width
    dtype = draw(st.sampled_from([torch.bfloat16, torch.float16, torch.float32]))
    idx = draw(st.sampled_from([torch.int32, torch.int64]))
    return dict(B=B, S=S, lengths=lengths, new=new, hkv=hkv, d=d, dtype=dtype, idx=idx, seed=draw(st.integers(0, 99)))


def make_append(c, device):
    g = torch.Generator().manual_seed(c["seed"])
    T = sum(c["new"])
    k, v = (torch.randn(T, c["hkv"], c["d"], generator=g).to(c["dtype"]).to(device) for _ in range(2))
    kc, vc = (torch.randn(c["B"], c["S"], c["hkv"], c["d"], generator=g).to(c["dtype"]).to(device) for _ in range(2))
    cu = torch.tensor([0] + c["new"]).cumsum(0).to(c["idx"]).to(device)
    return k, v, kc, vc, cu, torch.tensor(c["lengths"], dtype=c["idx"], device=device)


def _bits_equal(a, b):
    return torch.equal(a.contiguous().view(torch.uint8), b.contiguous().view(torch.uint8))


@gpu
@given(c=append_cases(), validate=st.booleans())
@example(c=dict(B=1, S=1, lengths=[0], new=[1], hkv=2, d=256, dtype=torch.bfloat16, idx=torch.int32, seed=0),
         validate=False)
@example(c=dict(B=4, S=7, lengths=[0, 3, 7, 2], new=[7, 0, 0, 5], hkv=1, d=5, dtype=torch.float16,
                idx=torch.int64, seed=1), validate=True)
def test_kv_cache_append_exact(c, validate):
    from kernels.decode_attention import kv_cache_append

    k, v, kc, vc, cu, lengths = make_append(c, "cuda")
    want_k, want_v = kc.clone(), vc.clone()
    reference.kv_cache_append(k, v, want_k, want_v, cu, lengths)
    assert kv_cache_append(k, v, kc, vc, cu, lengths, validate=validate) is None
    torch.cuda.synchronize()
    assert _bits_equal(kc, want_k) and _bits_equal(vc, want_v)


@gpu
def test_kv_cache_append_overflow_is_dropped():
    """validate=False cannot see the lengths: tokens whose slot is past S (or a negative length's slots below 0)
    are not written; everything else lands as the reference puts it."""
    from kernels.decode_attention import kv_cache_append

    c = dict(B=3, S=6, lengths=[4, 6, -2], new=[4, 1, 3], hkv=2, d=256, dtype=torch.bfloat16, idx=torch.int32,
             seed=3)
    k, v, kc, vc, cu, lengths = make_append(c, "cuda")
    want_k, want_v = kc.clone(), vc.clone()
    for b, (L, n) in enumerate(zip(c["lengths"], c["new"])):
        for i in range(n):
            if 0 <= L + i < c["S"]:
                want_k[b, L + i], want_v[b, L + i] = k[int(cu[b]) + i], v[int(cu[b]) + i]
    kv_cache_append(k, v, kc, vc, cu, lengths, validate=False)
    torch.cuda.synchronize()
    assert _bits_equal(kc, want_k) and _bits_equal(vc, want_v)
    with pytest.raises(ValueError, match="capacity"):
        kv_cache_append(k, v, kc, vc, cu, lengths)


@gpu
def test_append_then_decode_equals_reference():
    """Prefill through kv_cache_append, then one decode step (append + attention), as the model runs them."""
    from kernels.decode_attention import decode_attention, kv_cache_append

    B, S, hq, hkv = 2, 300, 8, 2
    g = torch.Generator(device="cuda").manual_seed(9)
    prompt = [200, 37]
    kc = torch.full((B, S, hkv, D), math.nan, dtype=torch.bfloat16, device="cuda")
    vc = kc.clone()
    k, v = (torch.randn(sum(prompt), hkv, D, device="cuda", generator=g).bfloat16() for _ in range(2))
    cu = torch.tensor([0] + prompt, device="cuda").cumsum(0).to(torch.int32)
    lengths = torch.zeros(B, dtype=torch.int32, device="cuda")
    kv_cache_append(k, v, kc, vc, cu, lengths, validate=False)
    lengths += torch.tensor(prompt, dtype=torch.int32, device="cuda")
    k1, v1 = (torch.randn(B, hkv, D, device="cuda", generator=g).bfloat16() for _ in range(2))
    kv_cache_append(k1, v1, kc, vc, torch.arange(B + 1, dtype=torch.int32, device="cuda"), lengths, validate=False)
    lengths += 1
    q = torch.randn(B, hq, D, device="cuda", generator=g).bfloat16()
    out = decode_attention(q, kc, vc, lengths, validate=False)
    rk, rv = kc.clone().fill_(0), vc.clone().fill_(0)
    for b, n in enumerate(prompt):
        s0 = int(cu[b])
        rk[b, :n], rv[b, :n] = k[s0:s0 + n], v[s0:s0 + n]
        rk[b, n], rv[b, n] = k1[b], v1[b]
    check_close(out, reference.decode_attention(q, rk, rv, lengths))


# -------------------------------------------------------------------------------------------------- bad input (CPU)
def _good_decode():
    q, kc, vc, lengths = make_decode(2, 9, [3, 9], 8, 2, torch.bfloat16, torch.int32, 0, device="cpu", poison=False)
    return dict(q=q, k_cache=kc, v_cache=vc, lengths=lengths)


@pytest.mark.parametrize("change,match", [
    (dict(q=torch.zeros(2, 8, D), k_cache=torch.zeros(2, 9, 2, D), v_cache=torch.zeros(2, 9, 2, D)),
     "bf16 or fp16"),  # fp32
    (dict(q=torch.zeros(2, 8, 128, dtype=torch.bfloat16), k_cache=torch.zeros(2, 9, 2, 128, dtype=torch.bfloat16),
          v_cache=torch.zeros(2, 9, 2, 128, dtype=torch.bfloat16)), "head_dim"),
    (dict(k_cache=torch.zeros(2, 9, 2, D, dtype=torch.float16)), "dtype"),
    (dict(lengths=torch.tensor([1.0, 2.0])), "lengths"),
    (dict(lengths=torch.tensor([1, 2, 3], dtype=torch.int32)), "lengths"),
    (dict(k_cache=torch.zeros(3, 9, 2, D, dtype=torch.bfloat16)), "k_cache"),
    (dict(v_cache=torch.zeros(2, 8, 2, D, dtype=torch.bfloat16)), "v_cache"),
    (dict(k_cache=torch.zeros(2, 9, 3, D, dtype=torch.bfloat16), v_cache=torch.zeros(2, 9, 3, D,
                                                                                       dtype=torch.bfloat16)), "heads"),
    (dict(q=torch.zeros(8, 2, D, dtype=torch.bfloat16).transpose(0, 1)), "q must be contiguous"),
    (dict(k_cache=torch.zeros(2, 9, D, 2, dtype=torch.bfloat16).transpose(2, 3)), "k_cache must have contiguous"),
    (dict(v_cache=torch.zeros(2 * 9 * 2 * D + 1, dtype=torch.bfloat16)[1:].view(2, 9, 2, D)), "v_cache must be 16"),
    (dict(lengths=torch.zeros(4, dtype=torch.int32)[::2]), "lengths must be contiguous"),
    (dict(max_length=10), "max_length"),
    (dict(max_length=3.0), "max_length"),
    (dict(scale=-1.0), "scale"),
    (dict(out=torch.zeros(2, 8, D)), "out"),
    (dict(out=torch.zeros(2, 8, D - 1, dtype=torch.bfloat16)), "out"),
    (dict(lengths=torch.tensor([3, 10], dtype=torch.int32)), "CUDA"),  # structure fine: the device check speaks
])
def test_decode_attention_bad_input(change, match):
    from kernels.decode_attention import decode_attention

    with pytest.raises((ValueError, TypeError), match=match):
        decode_attention(**{**_good_decode(), **change})


@gpu
@pytest.mark.parametrize("lengths,max_length", [([3, 10], None), ([-1, 2], None), ([3, 9], 8)])
def test_decode_attention_lengths_checked_when_validating(lengths, max_length):
    from kernels.decode_attention import decode_attention

    args = {k: v.cuda() for k, v in _good_decode().items()}
    args["lengths"] = torch.tensor(lengths, dtype=torch.int32, device="cuda")
    with pytest.raises(ValueError, match="lengths|max_length"):
        decode_attention(**args, max_length=max_length)


def _good_append():
    c = dict(B=2, S=5, lengths=[4, 3], new=[1, 2], hkv=2, d=8, dtype=torch.bfloat16, idx=torch.int32, seed=0)
    k, v, kc, vc, cu, lengths = make_append(c, "cpu")
    return dict(k=k, v=v, k_cache=kc, v_cache=vc, cu_seqlens=cu, lengths=lengths)


@pytest.mark.parametrize("change,match", [
    (dict(k=torch.zeros(3, 2, 8)), "dtype"),
    (dict(v=torch.zeros(3, 2, 4, dtype=torch.bfloat16)), "v"),
    (dict(k_cache=torch.zeros(2, 5, 1, 8, dtype=torch.bfloat16),
          v_cache=torch.zeros(2, 5, 1, 8, dtype=torch.bfloat16)), "k_cache"),
    (dict(cu_seqlens=torch.tensor([0, 3], dtype=torch.int32)), "cu_seqlens"),
    (dict(lengths=torch.tensor([0, 0, 0], dtype=torch.int32)), "lengths"),
    (dict(lengths=torch.tensor([0.0, 0.0])), "lengths"),
    (dict(k=torch.zeros(2, 3, 8, dtype=torch.bfloat16).transpose(0, 1)), "k must be contiguous"),
    (dict(k_cache=torch.zeros(2, 5, 8, 2, dtype=torch.bfloat16).transpose(2, 3)), "k_cache must have contiguous"),
    (dict(lengths=torch.tensor([5, 3], dtype=torch.int32)), "CUDA"),  # capacity is read only after the device check
])
def test_kv_cache_append_bad_input(change, match):
    from kernels.decode_attention import kv_cache_append

    with pytest.raises((ValueError, TypeError), match=match):
        kv_cache_append(**{**_good_append(), **change})


# ------------------------------------------------------------------------------------------- compile (CPU)
@pytest.mark.compile
@pytest.mark.parametrize("arch", ["sm_80", "sm_90"])
def test_split_kernel_does_not_spill(arch):
    """The split kernel keeps a 16 x 256 fp32 accumulator per warp (128 registers a thread) next to the scores and
    pointers, close to the 255-register limit: a spill would cost most of its bandwidth. ptxas -v says."""
    import io
    import re

    from cuda.core import Program, ProgramOptions

    from kernels.decode_attention import SOURCE
    from kernels.runtime.nvrtc import cuda_include_dirs, read_source

    names = tuple(e for e in SOURCE.exprs if "split" in e or "combine" in e)
    log = io.StringIO()
    opts = ProgramOptions(arch=arch, std="c++17", include_path=list(cuda_include_dirs()), ptxas_options=["-v"])
    Program(read_source(SOURCE.file), code_type="c++", options=opts).compile("cubin", name_expressions=names,
                                                                           logs=log)
    report = log.getvalue()
    spills = [int(x) for x in re.findall(r"(\d+) bytes spill stores", report)]
    # one line per kernel, plus one per call of the non-inlined early_prefetch (its own frame, no spill either)
    assert len(spills) >= len(names) and not any(spills), report
