"""reference.causal_conv1d vs independent formulations.

  * F.conv1d(groups=C) per sequence (left zero padding, or the carried state prepended): fp64, 1e-12.
  * HF transformers' causal_conv1d_fn (prefill) and causal_conv1d_update (one-token decode): fp32, 1e-6.
  * state carry: prefill of a prefix then token-by-token decode == one pass (fp64, 1e-12; states exact).
  * state_out (including the in-place update state_out=state) and the max_seqlen hint.
"""

import pytest
import torch
import torch.nn.functional as F

import reference as ref

hf = pytest.importorskip("transformers.models.qwen3_5.modeling_qwen3_5")


def cu_of(lengths):
    return torch.tensor([0] + list(lengths), dtype=torch.int64).cumsum(0).to(torch.int32)


def split_at(lengths):
    return [(a, b) for a, b in zip(cu_of(lengths)[:-1].tolist(), cu_of(lengths)[1:].tolist())]


def conv_inputs(lengths, C, K, dtype, with_state, seed=0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(sum(lengths), C, generator=gen, dtype=torch.float64).to(dtype)
    w = torch.randn(C, K, generator=gen, dtype=torch.float64).to(dtype)
    state = torch.randn(len(lengths), C, K - 1, generator=gen, dtype=torch.float64).to(dtype) if with_state else None
    return x, w, state


@pytest.mark.parametrize("with_state", [False, True])
@pytest.mark.parametrize("K", [4, 2, 1])
def test_causal_conv1d_vs_torch_conv(K, with_state):
    lengths = [6, 0, 1, 2, 9]  # includes sequences shorter than K-1
    C = 5
    x, w, state = conv_inputs(lengths, C, K, torch.float64, with_state)
    y, new_state = ref.causal_conv1d(x, w, cu_of(lengths), state)
    assert y.shape == x.shape and new_state.shape == (len(lengths), C, K - 1)
    for s, (a, b) in enumerate(split_at(lengths)):
        prev = state[s] if with_state else torch.zeros(C, K - 1, dtype=x.dtype)
        full = torch.cat([prev, x[a:b].T], dim=1)[None]  # [1, C, K-1+L]
        if b > a:  # F.conv1d rejects an input shorter than the kernel
            want = F.silu(F.conv1d(full, w[:, None, :], groups=C))[0].T  # valid conv -> [L, C]
            torch.testing.assert_close(y[a:b], want, rtol=0, atol=1e-12)
        assert torch.equal(new_state[s], full[0, :, full.shape[2] - (K - 1):])


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_causal_conv1d_vs_hf(dtype):
    lengths, C, K = [7, 3, 12], 6, 4
    x, w, _ = conv_inputs(lengths, C, K, dtype, False, seed=1)
    y, state = ref.causal_conv1d(x, w, cu_of(lengths))
    tol = 1e-6 if dtype == torch.float32 else 1e-2
    for s, (a, b) in enumerate(split_at(lengths)):
        # HF works in weight dtype; give it fp32 weights for the prefill comparison
        want = hf.causal_conv1d_fn(x[a:b].float().T[None], w.float(), activation="silu")[0].T
        torch.testing.assert_close(y[a:b].float(), want, rtol=tol, atol=tol)
    # HF decode step: its conv_state holds K inputs, of which only the last K-1 matter (randomise the first)
    xn, _, _ = conv_inputs([1] * len(lengths), C, K, dtype, False, seed=2)
    y1, state1 = ref.causal_conv1d(xn, w, cu_of([1] * len(lengths)), state)
    hf_state = torch.cat([torch.randn(len(lengths), C, 1).to(dtype), state], dim=2).float()
    want = hf.causal_conv1d_update(xn.float()[:, :, None], hf_state, w.float(), activation="silu")[:, :, 0]
    torch.testing.assert_close(y1.float(), want, rtol=tol, atol=tol)
    assert torch.equal(state1.float(), hf_state[:, :, 1:])  # HF updated its conv_state in place


@pytest.mark.parametrize("split", [0, 1, 3, 5])
def test_causal_conv1d_prefill_then_decode(split):
    lengths, C, K = [8, 5], 4, 4
    x, w, state0 = conv_inputs(lengths, C, K, torch.float64, True, seed=3)
    y_all, s_all = ref.causal_conv1d(x, w, cu_of(lengths), state0)
    (a0, b0), (a1, b1) = split_at(lengths)
    # prefill the first `split` tokens of each sequence in one call ...
    pre = torch.cat([x[a0:a0 + split], x[a1:a1 + split]])
    y_pre, state = ref.causal_conv1d(pre, w, cu_of([split, split]), state0)
    ys = [y_pre[:split]], [y_pre[split:]]
    # ... then decode one token per sequence per call (T = n)
    for t in range(split, max(lengths)):
        live = [t < L for L in lengths]
        rows = [x[a + t:a + t + 1] for (a, _), ok in zip(split_at(lengths), live) if ok]
        y_step, new = ref.causal_conv1d(torch.cat(rows), w, cu_of([int(ok) for ok in live]), state)
        state = new
        for s, ok in enumerate(live):
            if ok:
                ys[s].append(y_step[sum(live[:s]):sum(live[:s]) + 1])
    torch.testing.assert_close(torch.cat(ys[0] + ys[1]), y_all, rtol=0, atol=1e-12)
    assert torch.equal(state, s_all)


def test_causal_conv1d_bad_input():
    x, w, state = conv_inputs([3, 2], 4, 4, torch.float32, True)
    cu = cu_of([3, 2])
    cases = [
        (dict(x=x[0]), "x"),
        (dict(x=x.to(torch.int32)), "x"),
        (dict(weight=w[:3]), "weight"),
        (dict(weight=w[:, :, None]), "weight"),
        (dict(cu_seqlens=cu_of([3, 1])), "cu_seqlens"),
        (dict(cu_seqlens=cu.float()), "cu_seqlens"),
        (dict(state=state[:1]), "state"),
        (dict(state=state[:, :, :2]), "state"),
        (dict(state=state.double()), "state"),
        (dict(state=state.to("meta")), "device"),
    ]
    for change, match in cases:
        args = {**dict(x=x, weight=w, cu_seqlens=cu, state=state), **change}
        with pytest.raises(ValueError, match=match):
            ref.causal_conv1d(**args)




@pytest.mark.parametrize("lengths", [[6, 0, 1, 2], [1, 1, 1], [0]])
def test_causal_conv1d_state_out_in_place(lengths):
    """state_out receives the new state; state_out=state updates it in place with the same result."""
    x, w, state = conv_inputs(lengths, 5, 4, torch.float64, True, seed=4)
    cu = cu_of(lengths)
    y, want = ref.causal_conv1d(x, w, cu, state)
    out = torch.full_like(state, float("nan"))
    y1, got = ref.causal_conv1d(x, w, cu, state, state_out=out)
    assert got is out and torch.equal(out, want) and torch.equal(y1, y)
    inplace = state.clone()
    y2, got = ref.causal_conv1d(x, w, cu, inplace, state_out=inplace)
    assert got is inplace and torch.equal(inplace, want) and torch.equal(y2, y)
    for s, L in enumerate(lengths):  # a zero-length sequence keeps its state
        if L == 0:
            assert torch.equal(want[s], state[s])


def test_causal_conv1d_max_seqlen_hint():
    x, w, state = conv_inputs([3, 5], 4, 4, torch.float64, True)
    cu = cu_of([3, 5])
    y, s = ref.causal_conv1d(x, w, cu, state)
    for hint in (5, 9):  # the exact maximum or more
        y1, s1 = ref.causal_conv1d(x, w, cu, state, max_seqlen=hint)
        assert torch.equal(y1, y) and torch.equal(s1, s)
    for bad in (4, -1, 2.0, True):
        with pytest.raises(ValueError, match="max_seqlen"):
            ref.causal_conv1d(x, w, cu, state, max_seqlen=bad)
    with pytest.raises(ValueError, match="state_out"):
        ref.causal_conv1d(x, w, cu, state, state_out=state.float())
    with pytest.raises(ValueError, match="state_out"):
        ref.causal_conv1d(x, w, cu, state, state_out=state[:1])
