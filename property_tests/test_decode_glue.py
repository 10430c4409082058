"""kernels.glue.decode_prologue and greedy_select against the torch ops they replace in the decode step
(model.language.decode_step's embedding / mRoPE-angle gather / attend lengths; model.generate's argmax +
stop_update). Both are exact (copies, a comparison), so results must be bitwise equal."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, strategies as st

from model.generate import stop_update

pytestmark = pytest.mark.gpu


@given(B=st.integers(1, 40), H=st.sampled_from((8, 256, 1024, 4104)), R=st.sampled_from((1, 32, 33)),
       cap=st.integers(1, 300), dtype=st.sampled_from((torch.bfloat16, torch.float16, torch.float32)),
       seed=st.integers(0, 2**31 - 1))
def test_decode_prologue_matches_torch(B, H, R, cap, dtype, seed):
    from kernels.glue import decode_prologue

    if (H * torch.finfo(dtype).bits // 8) % 16:
        H = 16
    g = torch.Generator(device="cuda").manual_seed(seed)
    V = 97
    embed = torch.randn(V, H, device="cuda", generator=g).to(dtype)
    tokens = torch.randint(0, V, (B,), device="cuda", generator=g)
    lengths = torch.randint(0, cap, (B,), device="cuda", generator=g, dtype=torch.int32)
    delta = torch.randint(-5, 5, (B,), device="cuda", generator=g)  # a position past either end is clamped
    cos, sin = torch.randn(cap, R, device="cuda", generator=g), torch.randn(cap, R, device="cuda", generator=g)
    x, c, s, attend = decode_prologue(tokens, embed, lengths, delta, cos, sin)
    pos = (lengths.long() + delta).clamp(0, cap - 1)
    assert torch.equal(x, F.embedding(tokens, embed))
    assert torch.equal(c, cos.index_select(0, pos)) and torch.equal(s, sin.index_select(0, pos))
    assert torch.equal(attend, lengths + 1)


@given(B=st.integers(1, 9), V=st.sampled_from((1, 5, 2047, 2048, 2049, 8193, 248320)),
       dtype=st.sampled_from((torch.bfloat16, torch.float16, torch.float32)), ties=st.booleans(),
       nan=st.booleans(), seed=st.integers(0, 2**31 - 1))
def test_greedy_select_matches_argmax_and_stop_update(B, V, dtype, ties, nan, seed):
    from kernels.glue import greedy_select

    g = torch.Generator(device="cuda").manual_seed(seed)
    logits = torch.randn(B, V, device="cuda", generator=g)
    if ties:  # few distinct values: the first index of the maximum must win
        logits = logits.round()
    if nan and V > 3:
        logits[0, V // 2] = float("nan")
    logits = logits.to(dtype)
    done = torch.rand(B, device="cuda", generator=g) < 0.3
    want_tok = logits.argmax(-1)
    eos = torch.tensor([int(want_tok[-1]), -1, 7], dtype=torch.int64, device="cuda")  # the last row hits an eos
    pad = torch.tensor(3, dtype=torch.int64, device="cuda")
    want_done = done.clone()
    want = stop_update(want_tok, want_done, eos, pad)
    out = torch.full((B,), -99, dtype=torch.int64, device="cuda")
    for _ in range(2):  # twice: the per-row tickets are left at 0 for the next call
        got_done = done.clone()
        greedy_select(logits, got_done, eos, pad, out)
        assert torch.equal(out, want), (out, want)
        assert torch.equal(got_done, want_done)


def test_greedy_select_in_a_graph():
    from kernels.glue import greedy_select

    logits = torch.randn(4, 248320, device="cuda").to(torch.bfloat16)
    done = torch.zeros(4, dtype=torch.bool, device="cuda")
    eos = torch.full((8,), -1, dtype=torch.int64, device="cuda")
    pad = torch.zeros((), dtype=torch.int64, device="cuda")
    out = torch.empty(4, dtype=torch.int64, device="cuda")
    greedy_select(logits, done, eos, pad, out)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        greedy_select(logits, done, eos, pad, out)
    for _ in range(3):
        logits.copy_(torch.randn(4, 248320, device="cuda"))
        graph.replay()
        assert torch.equal(out, logits.argmax(-1))


@given(T=st.integers(1, 40), widths=st.lists(st.sampled_from((0, 1, 8, 16, 24, 512, 2048)), min_size=1, max_size=4),
       gap=st.sampled_from((0, 8, 3)), dtype=st.sampled_from((torch.bfloat16, torch.float16, torch.float32)),
       seed=st.integers(0, 2**31 - 1))
def test_split_columns_equals_contiguous_slices(T, widths, gap, dtype, seed):
    """split_columns: each part bitwise y[:, s:s + w].contiguous() (vector and scalar builds: a gap of 3 columns
    makes the starts unaligned), y a row-strided view; the parts are new contiguous tensors."""
    from kernels.glue import split_columns

    starts, c = [], gap
    for w in widths:
        starts.append(c)
        c += w + gap
    g = torch.Generator(device="cuda").manual_seed(seed)
    big = torch.randn(T, c + 8, device="cuda", generator=g).to(dtype)
    y = big[:, :c]
    got = split_columns(y, starts, widths)
    assert len(got) == len(widths)
    for t, s, w in zip(got, starts, widths):
        assert t.is_contiguous() and t.shape == (T, w)
        assert torch.equal(t, y[:, s:s + w])
    with pytest.raises(ValueError, match="column ranges"):
        split_columns(y, (c,), (1,))
