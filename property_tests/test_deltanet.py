"""kernels.deltanet.gated_delta_rule against the reference recurrence: family-specific checks beyond the generic
registry tests (property_tests/test_ops.py runs the random cases, the example, the real shapes, misaligned
inputs and the stateful split against the fp32 reference).

Here, on the GPU: the fp64 recurrence as the oracle (random packings with sequences of 1, 63, 64, 65 and a few
hundred tokens, head ratios 1:1 to 1:4, with and without an initial state, every dtype, outputs poisoned); both
paths (chunked and recurrent) on the same inputs; q/k/v as strided slices of one [T, C] tensor (the model's conv
output); a prefill then N in-place decode steps equals one prefill of the whole; bitwise repeatable and the same
under CUDA-graph replay; thousands of tokens (slow). Without a GPU: every instantiation compiles for sm_80 and
sm_90 without register spills (slow, compile).
"""

from __future__ import annotations

import io
import re

import pytest
import torch
from hypothesis import given, settings, strategies as st

import reference as R
from kernels import deltanet as K
from kernels.registry import REGISTRY
from kernels.runtime.timing import capture
from property_tests.cases.deltanet import build_gated_delta_rule

gpu = pytest.mark.gpu
SPEC = REGISTRY["gated_delta_rule"]
DTYPES = (torch.bfloat16, torch.float16, torch.float32)


def _errors(got, want, dtype):
    tol = SPEC.tol[dtype]
    for g, w in zip(got, want):
        rel, mx = tol.errors(g, w)
        assert rel <= tol.rel_l2 and mx <= tol.max_abs, f"{dtype}: rel {rel:.3g} (tol {tol.rel_l2}), max {mx:.3g}"


def _oracle(case):
    """reference.gated_delta_rule in fp64 on the case's (already rounded) inputs, results cast like the kernel's."""
    q, k, v, g, beta, cu, h0 = case.on("cuda")
    o, s = R.gated_delta_rule(q.double(), k.double(), v.double(), g.double(), beta.double(), cu,
                              None if h0 is None else h0.double(), **{k_: v_ for k_, v_ in case.kwargs.items()
                                                                      if k_ not in ("validate",)})
    return o.to(v.dtype), s.float()


_lengths = st.lists(st.one_of(st.sampled_from((0, 1, 63, 64, 65)), st.integers(100, 400)), min_size=1, max_size=4)


@gpu
@settings(max_examples=25)
@given(lengths=_lengths, heads=st.sampled_from(((1, 1), (2, 2), (1, 2), (2, 4), (1, 4))),
       dtype=st.sampled_from(DTYPES), with_state=st.booleans(), seed=st.integers(0, 2**31 - 1),
       hint=st.sampled_from((None, "exact")))
def test_against_fp64_recurrence(lengths, heads, dtype, with_state, seed, hint):
    kwargs = {} if hint is None else {"max_seqlen": max(lengths)}
    case = build_gated_delta_rule(lengths, *heads, dtype, seed, with_state=with_state, kwargs=kwargs)
    outs = case.nan_outs("cuda")
    got = K.gated_delta_rule(*case.on("cuda"), **case.kwargs, out=outs)
    assert got[0] is outs[0] and got[1] is outs[1]
    _errors(got, _oracle(case), dtype)


@gpu
@pytest.mark.parametrize("dtype", (torch.bfloat16, torch.float16))
def test_both_paths_agree_with_the_reference(dtype):
    """The recurrent kernel (max_seqlen <= 8) and the chunked one (no hint, T > 2n) on the same packing."""
    case = build_gated_delta_rule([5, 1, 70, 0, 130], 2, 4, dtype, seed=1)
    want = _oracle(case)
    for hint in (None, 1000):
        _errors(K.gated_delta_rule(*case.on("cuda"), use_qk_l2norm=True, max_seqlen=hint), want, dtype)
    _errors(K.gated_delta_rule(*case.on("cuda"), use_qk_l2norm=True, max_seqlen=8, validate=False), want, dtype)


@gpu
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("rows,heads", ((1, (16, 16)), (3, (2, 4)), (70, (1, 4)), (300, (2, 2))))
def test_decode_kernels(dtype, rows, heads):
    """One token per row: the one-warp kernel (n * Hv <= 256) and the 128-thread kernel (larger batches)."""
    case = build_gated_delta_rule([1] * rows, *heads, dtype, seed=rows, kwargs={"max_seqlen": 1})
    q, k, v, g, beta, cu, h0 = case.on("cuda")
    state = h0.clone()
    got = K.gated_delta_rule(q, k, v, g, beta, cu, state, use_qk_l2norm=True, final_state=state, max_seqlen=1)
    assert got[1] is state
    _errors(got, _oracle(case), dtype)


@gpu
@pytest.mark.parametrize("shape", K.WARP_SHAPES)
@pytest.mark.parametrize("pdl", (False, True))
def test_decode_warp_shapes(shape, pdl, monkeypatch):
    """Every one-warp decode build (BV columns a CTA, CPL a lane), as a plain and as a programmatic dependent
    launch, with the direct row indexing (max_seqlen=1, T == n) and through cu_seqlens (no hint)."""
    monkeypatch.setattr(K, "WARP_SHAPE", shape)
    monkeypatch.setattr(K, "DECODE_PDL", pdl)
    for hint in (1, None):
        case = build_gated_delta_rule([1] * 3, 2, 4, torch.bfloat16, seed=7, kwargs={"max_seqlen": hint})
        q, k, v, g, beta, cu, h0 = case.on("cuda")
        state = h0.clone()
        got = K.gated_delta_rule(q, k, v, g, beta, cu, state, use_qk_l2norm=True, final_state=state,
                                 max_seqlen=hint)
        _errors(got, _oracle(case), torch.bfloat16)


@gpu
@pytest.mark.parametrize("dtype", (torch.bfloat16, torch.float16))
@pytest.mark.parametrize("kern,build", [("w", None)] + [("t", b) for b in K.STATE_T_BUILDS])
def test_every_state_pass_build(kern, build, dtype, monkeypatch):
    """Every state pass (the transposed builds, the warp-specialised one) against the fp64
    recurrence: sequences ending inside a chunk, an empty one, one of a single token, with and without a state,
    the state updated in place (final_state is initial_state), outputs poisoned."""
    monkeypatch.setattr(K, "STATE_KERNEL", kern)
    monkeypatch.setattr(K, "STATE_T_FORCE", build)
    for lengths, heads, with_state in (([1, 63, 64, 65, 0, 300], (2, 4), True), ([129, 7], (1, 1), False)):
        case = build_gated_delta_rule(lengths, *heads, dtype, seed=11, with_state=with_state)
        want = _oracle(case)
        q, k, v, g, beta, cu, h0 = case.on("cuda")
        outs = case.nan_outs("cuda")
        _errors(K.gated_delta_rule(q, k, v, g, beta, cu, h0, use_qk_l2norm=True, out=outs), want, dtype)
        if h0 is not None:
            got = K.gated_delta_rule(q, k, v, g, beta, cu, h0, use_qk_l2norm=True, final_state=h0)
            assert got[1] is h0
            _errors(got, want, dtype)


@gpu
@pytest.mark.parametrize("fused", (False, True))
def test_compact_prep_equals_plain(fused, monkeypatch):
    """The prep's compact shared-memory layout (T operands written over A) gives bitwise the plain layout's
    results (the same arithmetic, other addresses)."""
    case = build_gated_delta_rule([1, 63, 64, 65, 0, 300], 2, 4, torch.bfloat16, seed=12, fused=fused)
    f = K.fused_gated_delta_rule if fused else K.gated_delta_rule
    monkeypatch.setattr(K, "PREP_COMPACT", False)
    want = f(*case.on("cuda"), use_qk_l2norm=True)
    monkeypatch.setattr(K, "PREP_COMPACT", True)
    got = f(*case.on("cuda"), use_qk_l2norm=True)
    assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])


@gpu
def test_cluster_state_pass_equals_plain(monkeypatch):
    """Hopper: the state pass in clusters sharing the chunk rows by multicast gives bitwise the plain pass's
    results (the same shared-memory tiles, the same mma order), for every BV and cluster size, on sequences that
    end inside a chunk, an empty one, and a 1:2 head ratio."""
    from kernels.runtime import device as dev

    if not dev.is_hopper(torch.cuda.current_device()):
        pytest.skip("the cluster build is sm_90a")
    case = build_gated_delta_rule([1, 63, 64, 65, 0, 300], 2, 4, torch.bfloat16, seed=8)
    args = case.on("cuda")
    monkeypatch.setattr(K, "STATE_KERNEL", "w")
    for bv in K.STATE_BV:
        monkeypatch.setattr(K, "STATE_STEP_COST", {b: (0.0 if b == bv else 1e9) for b in K.STATE_BV})
        monkeypatch.setattr(K, "STATE_CLUSTER", 1)
        want = K.gated_delta_rule(*args, use_qk_l2norm=True)
        for cl in K.STATE_CLUSTERS:
            if (K.D // bv) % cl:
                continue
            monkeypatch.setattr(K, "STATE_CLUSTER", cl)
            got = K.gated_delta_rule(*args, use_qk_l2norm=True)
            assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1]), (bv, cl)


@gpu
@pytest.mark.parametrize("dtype", DTYPES)
def test_strided_qkv_slices(dtype):
    """q, k, v as column slices of one [T, C] tensor, as the model's conv output hands them over."""
    T, Hk, Hv = 200, 2, 4
    case = build_gated_delta_rule([130, 70], Hk, Hv, dtype, seed=2)
    q, k, v, g, beta, cu, h0 = case.on("cuda")
    mixed = torch.cat([q.flatten(1), k.flatten(1), v.flatten(1)], dim=1)
    qs = mixed[:, : Hk * 128].view(T, Hk, 128)
    ks = mixed[:, Hk * 128: 2 * Hk * 128].view(T, Hk, 128)
    vs = mixed[:, 2 * Hk * 128:].view(T, Hv, 128)
    assert not qs.is_contiguous()
    _errors(K.gated_delta_rule(qs, ks, vs, g, beta, cu, h0, use_qk_l2norm=True), _oracle(case), dtype)


@gpu
@pytest.mark.parametrize("dtype", DTYPES)
def test_prefill_then_decode_steps(dtype):
    """Prefill of each sequence but its last N tokens, then N one-token decode steps updating the state in place
    (final_state=initial_state), equals one prefill of the whole."""
    lens, N = [150, 64, 1], 6
    case = build_gated_delta_rule([L + N for L in lens], 2, 4, dtype, seed=3)
    q, k, v, g, beta, cu, h0 = case.on("cuda")
    want_o, want_s = _oracle(case)
    starts = cu[:-1].tolist()
    pre = torch.tensor([t for s, L in zip(starts, lens) for t in range(s, s + L)], device="cuda")
    cu_p = torch.tensor([0] + lens, device="cuda").cumsum(0).to(torch.int32)
    pick = lambda idx: (q[idx], k[idx], v[idx], g[idx], beta[idx])  # noqa: E731
    _, state = K.gated_delta_rule(*pick(pre), cu_p, h0, use_qk_l2norm=True)
    cu_d = torch.arange(len(lens) + 1, dtype=torch.int32, device="cuda")
    for step in range(N):
        t = torch.tensor([s + L + step for s, L in zip(starts, lens)], device="cuda")
        o, s_ = K.gated_delta_rule(*pick(t), cu_d, state, use_qk_l2norm=True, final_state=state, max_seqlen=1,
                                   validate=False)
        assert s_ is state
        _errors((o,), (want_o[t],), dtype)
    _errors((state,), (want_s,), dtype)


@gpu
def test_bitwise_repeatable_and_graph_replay():
    case = build_gated_delta_rule([700, 1, 300], 2, 4, torch.bfloat16, seed=4)
    args = case.on("cuda")
    a = K.gated_delta_rule(*args, use_qk_l2norm=True)
    b = K.gated_delta_rule(*args, use_qk_l2norm=True)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    res = {}

    def run():
        res["x"] = K.gated_delta_rule(*args, use_qk_l2norm=True, max_seqlen=700, validate=False)
    capture(run).replay()
    torch.cuda.synchronize()
    assert torch.equal(res["x"][0], a[0]) and torch.equal(res["x"][1], a[1])


@gpu
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("lengths,hint", (([1, 63, 64, 65, 200], None), ([1] * 7, 1)))
def test_fused_gates(dtype, lengths, hint):
    """fused_gated_delta_rule (gates from a, b, A_log, dt_bias in the kernels) vs the fp64 reference of the
    composed form, on the chunked and the recurrent path."""
    case = build_gated_delta_rule(lengths, 2, 4, dtype, seed=6, fused=True,
                                  kwargs={} if hint is None else {"max_seqlen": hint})
    q, k, v, a, b, A_log, dt_bias, cu, h0 = case.on("cuda")
    want = R.fused_gated_delta_rule(q.double(), k.double(), v.double(), a.double(), b.double(), A_log.double(),
                                    dt_bias.double(), cu, h0.double(), **case.kwargs)
    got = K.fused_gated_delta_rule(q, k, v, a, b, A_log, dt_bias, cu, h0, **case.kwargs)
    _errors(got, (want[0].to(dtype), want[1].float()), dtype)


@gpu
@pytest.mark.slow
@pytest.mark.parametrize("heads", ((16, 16), (16, 32)))
def test_thousands_of_tokens(heads):
    """Model head counts, a 4096-token prompt beside shorter ones, against the fp64 chunked reference."""
    case = build_gated_delta_rule([4096, 1500, 3], *heads, torch.bfloat16, seed=5)
    q, k, v, g, beta, cu, h0 = case.on("cuda")
    want = R.chunked_gated_delta_rule(q.double(), k.double(), v.double(), g.double(), beta.double(), cu,
                                      h0.double(), use_qk_l2norm=True)
    _errors(K.gated_delta_rule(q, k, v, g, beta, cu, h0, use_qk_l2norm=True), (want[0].to(v.dtype), want[1].float()),
            torch.bfloat16)


@pytest.mark.compile
@pytest.mark.slow
@pytest.mark.parametrize("arch", ["sm_80", "sm_90", "sm_90a"])
def test_no_register_spills(arch):
    """sm_80/sm_90: every build of the source; sm_90a: the cluster builds of the state pass."""
    from cuda.core import Program, ProgramOptions

    from kernels.runtime.nvrtc import cuda_include_dirs, read_source

    names = K.MC_EXPRS if arch == "sm_90a" else K.SOURCE.exprs
    log = io.StringIO()
    opts = ProgramOptions(arch=arch, std="c++17", include_path=list(cuda_include_dirs()), ptxas_options=["-v"])
    Program(read_source("deltanet.cu"), code_type="c++", options=opts).compile(
        "cubin", name_expressions=names, logs=log)
    report = log.getvalue()
    spills = [int(x) for x in re.findall(r"(\d+) bytes spill stores", report)]
    assert len(spills) == len(names), report
    assert not any(spills), f"register spills:\n{report}"


def test_shared_memory_fits():
    """Every state-pass BV fits Hopper's 227 KB; sm_80's 163 KB takes BV 16 and 32 (the pick skips the rest)."""
    assert all(K.state_smem_bytes(bv) <= 232448 for bv in K.STATE_BV)
    assert all(K.state_t_smem_bytes(b, 2) <= 232448 for b in K.STATE_T_BUILDS)
    assert K.pick_state_t(1, 16, 108, 166912)[1] == 2  # sm_80: two stages fit at every warp count
    assert K.pick_state_bv(1, 16, 108, 166912) in (16, 32)
    assert K.prep_smem_bytes() <= 166912
    assert 4 * (K.prep_smem_bytes(compact=True) + 1024) <= 233472  # the compact prep: four CTAs an SM
