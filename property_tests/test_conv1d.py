"""causal_conv1d beyond the generic registry tests (property_tests/test_ops.py runs the random cases, the real shapes
and the two-call split): what the model relies on in decode and what the generic harness cannot express.

  * prefill of a prefix, then one-token decode steps with the state updated in place (state_out=state,
    validate=False, max_seqlen=1) == one longer prefill (outputs and final state);
  * state_out=state in prefill too == out of place; strided x rows; the chunk loop past the grid's z limit;
  * a decode step captured in a CUDA graph and replayed step after step (new inputs copied in) == eager;
  * every timing-trial variant (kernels.conv1d.TRIALS) == the reference, so their timings compare like with like;
  * the one-token decode kernel (max_seqlen <= 1), with and without its coalesced state path, at 32 to 128
    threads a CTA: sequences of 0 and 1 tokens mixed (rows not at their own index, so its guess of row s fails), no state, a
    separate or in-place new state, strided rows, int64 cu_seqlens, outputs poisoned with NaN.
GPU only (NVRTC).
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings, strategies as st

import reference as R
from kernels import conv1d as K
from kernels.registry import REGISTRY
from property_tests.cases.conv1d import REAL_CHANNELS, build_causal_conv1d
from property_tests.harness import compare

pytestmark = pytest.mark.gpu
if not torch.cuda.is_available():
    pytest.skip("needs a CUDA device", allow_module_level=True)

SPEC = REGISTRY["causal_conv1d"]
DT = st.sampled_from((torch.float32, torch.float16, torch.bfloat16))


def _cu(lengths, device="cuda", dtype=torch.int32):
    return torch.tensor([0] + list(lengths), dtype=torch.int64).cumsum(0).to(device, dtype)


def _rows(x, lengths, step):
    """The token `step` of every sequence (one-token decode rows), from a packed x."""
    starts = _cu(lengths, "cpu").tolist()[:-1]
    return torch.stack([x[a + step] for a in starts])


@settings(max_examples=10)
@given(prefix=st.integers(0, 20), steps=st.integers(1, 6), n=st.integers(1, 5),
       C=st.sampled_from((8, 100, 1153) + REAL_CHANNELS), dtype=DT, seed=st.integers(0, 2**31 - 1))
def test_prefill_then_decode_equals_longer_prefill(prefix, steps, n, C, dtype, seed):
    total = prefix + steps
    case = build_causal_conv1d([total] * n, C, dtype, seed)
    x, w, _, state0 = case.on("cuda")
    y_all, s_all = R.causal_conv1d(x, w, _cu([total] * n), state0)
    # prefill of the first `prefix` tokens of every sequence ...
    idx = torch.cat([torch.arange(s * total, s * total + prefix) for s in range(n)]).cuda()
    state = state0.clone()
    y_pre, st_ = K.causal_conv1d(x[idx], w, _cu([prefix] * n), state, state_out=state, max_seqlen=prefix,
                                 validate=False)
    assert st_ is state
    ys = [y_pre.view(n, prefix, C)]
    # ... then one token per sequence per call, the state updated in place
    dec_cu = _cu([1] * n)
    for t in range(prefix, total):
        y1, _ = K.causal_conv1d(_rows(x, [total] * n, t), w, dec_cu, state, state_out=state, max_seqlen=1,
                                validate=False)
        ys.append(y1[:, None])
    torch.cuda.synchronize()
    compare(SPEC, (torch.cat(ys, 1).reshape(n * total, C), state), (y_all, s_all), "prefill+decode", dtype)


@settings(max_examples=10)
@given(lengths=st.lists(st.integers(0, 40), min_size=1, max_size=4), C=st.sampled_from((5, 64, 1000, 6144)),
       dtype=DT, pad=st.sampled_from((0, 8, 3)), seed=st.integers(0, 2**31 - 1))
def test_in_place_and_strided_rows(lengths, C, dtype, pad, seed):
    case = build_causal_conv1d(lengths, C, dtype, seed)
    x, w, cu, state = case.on("cuda")
    want = R.causal_conv1d(x, w, cu, state)
    wide = torch.full((x.shape[0], C + pad), float("nan"), dtype=dtype, device="cuda")
    wide[:, :C] = x
    xs = wide[:, :C]  # rows C + pad apart (pad 3: no vector width divides the stride, scalar path)
    inplace = state.clone()
    got = K.causal_conv1d(xs, w, cu, inplace, state_out=inplace)
    assert got[1] is inplace
    torch.cuda.synchronize()
    compare(SPEC, got, want, f"in place, row stride {C + pad}", dtype)


def test_chunk_loop_past_grid_limit(monkeypatch):
    """More chunks than grid.z: the kernel loops over them (forced here with a grid limit of 2)."""
    monkeypatch.setattr(K, "_MAX_GRID_Z", 2)
    case = build_causal_conv1d([100, 3, 0, 57], 40, torch.float32, seed=5)
    args = case.on("cuda")
    got = K.causal_conv1d(*args)
    torch.cuda.synchronize()
    compare(SPEC, got, R.causal_conv1d(*args), "grid z 2")


@pytest.mark.parametrize("rows", [1, 8, 64])
def test_decode_step_replayed_from_a_graph(rows):
    C, dtype = 6144, torch.bfloat16
    case = build_causal_conv1d([1] * rows, C, dtype, seed=rows)
    x, w, cu, state0 = case.on("cuda")
    state = state0.clone()
    xin = torch.empty_like(x)

    def step():
        return K.causal_conv1d(xin, w, cu, state, state_out=state, max_seqlen=1, validate=False)
    xin.copy_(x)
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):  # warm-up (compile) outside the capture
        step()
    torch.cuda.current_stream().wait_stream(side)
    state.copy_(state0)
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        y_graph, _ = step()
    state.copy_(state0)  # capture does not run the kernel; start from the initial state
    want_state = state0.clone()
    for t in range(3):
        xt = x * (t + 1)
        xin.copy_(xt)
        g.replay()
        y_ref, want_state = R.causal_conv1d(xt, w, cu, want_state)
        torch.cuda.synchronize()
        compare(SPEC, (y_graph, state), (y_ref, want_state), f"graph replay {t}", dtype)


@pytest.mark.parametrize("trial", K.TRIALS)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_trial_variants(trial, dtype):
    case = build_causal_conv1d([40, 0, 17, 1], 6144, dtype, seed=9)
    args = case.on("cuda")
    got = K.causal_conv1d(*args, _trial=trial)
    torch.cuda.synchronize()
    compare(SPEC, got, R.causal_conv1d(*args), f"trial {trial}", dtype)


@settings(max_examples=15)
@given(lengths=st.lists(st.integers(0, 1), min_size=1, max_size=70), C=st.sampled_from((1, 5, 64, 1000, 1153) +
       REAL_CHANNELS), dtype=DT, state_kind=st.sampled_from(("none", "out", "inplace")), pad=st.sampled_from((0, 8, 3)),
       cu64=st.booleans(), validate=st.booleans(), coal=st.booleans(),
       block=st.sampled_from((32, 64, 128)), seed=st.integers(0, 2**31 - 1))
def test_decode_kernel_zero_or_one_token(lengths, C, dtype, state_kind, pad, cu64, validate, coal, block, seed):
    """The one-token kernel: every build (coalesced state path or not) at 32 to 128 threads a CTA."""
    case = build_causal_conv1d(lengths, C, dtype, seed, cu_dtype=torch.int64 if cu64 else torch.int32)
    x, w, cu, state = case.on("cuda")
    want = R.causal_conv1d(x, w, cu, None if state_kind == "none" else state)
    wide = torch.full((x.shape[0], C + pad), float("nan"), dtype=dtype, device="cuda")
    wide[:, :C] = x
    xs = wide[:, :C]
    nan_state = torch.full_like(state, float("nan"))
    st_in = None if state_kind == "none" else state.clone()
    st_out = st_in if state_kind == "inplace" else nan_state
    y = torch.full((x.shape[0], C), float("nan"), dtype=dtype, device="cuda")
    names = ("DECODE_COAL", "DECODE_COAL_MIN_ROWS", "DECODE_SMALL_BLOCK", "DECODE_BLOCK")
    saved = tuple(getattr(K, n) for n in names)
    for n, v in zip(names, (coal, 1, block, block)):
        setattr(K, n, v)
    try:
        got = K.causal_conv1d(xs, w, cu, st_in, state_out=st_out, max_seqlen=1, validate=validate, out=(y, None))
    finally:
        for n, v in zip(names, saved):
            setattr(K, n, v)
    assert got[0] is y and got[1] is st_out
    torch.cuda.synchronize()
    compare(SPEC, got, want, f"decode kernel {state_kind}, lengths {lengths}", dtype)
    if state_kind == "out":
        assert torch.equal(st_in, state), "the old state must not change when the new one goes elsewhere"

