"""The language model's rope kernels beyond the generic registry tests (property_tests/test_ops.py compares their
returned outputs on random cases): what they write besides their return values, and how the model calls them.

  * qk_norm_rope's KV-cache write: the slots each row's tokens go to hold the kernel's own k and an exact copy of
    v, every other slot keeps its NaN poison; rows of different lengths, empty rows, decode rows;
  * cache overflow with validate=False (the decode path): slots past S-1 are dropped, the rest written;
  * the gate is a view of qg (no copy) unless out[1] is given;
  * a decode step (mrope_cos_sin on a text position + qk_norm_rope with the cache write) captured in a CUDA
    graph and replayed with new lengths == the reference.
  * every build of the streaming prefill kernel (kernels.rope.STREAM_BUILDS) == the reference and the warp build,
    qk_norm_rope and apply_rope, outputs poisoned with NaN.
GPU only (NVRTC).
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings, strategies as st

import reference as R
from kernels import rope as K
from kernels.registry import REGISTRY
from property_tests.cases.rope import _cache_rows, build_qk_norm_rope
from property_tests.harness import compare

pytestmark = pytest.mark.gpu
if not torch.cuda.is_available():
    pytest.skip("needs a CUDA device", allow_module_level=True)

SPEC = REGISTRY["qk_norm_rope"]
DT = st.sampled_from((torch.float32, torch.float16, torch.bfloat16))


def _check_caches(kc, vc, kc_ref, vc_ref, k_out, v, label, dtype):
    """Same slots written (NaN elsewhere), k slots within the tolerance of the reference's and equal to the
    kernel's returned k rows, v slots bit-equal to v."""
    written = ~torch.isnan(kc_ref)
    assert torch.equal(~torch.isnan(kc), written), f"{label}: k_cache written at other slots than the reference"
    assert torch.equal(~torch.isnan(vc), ~torch.isnan(vc_ref)), f"{label}: v_cache written at other slots"
    compare(SPEC, kc[written], kc_ref[written], f"{label} k_cache", dtype)
    assert torch.equal(vc[written], vc_ref[written]), f"{label}: v_cache is not an exact copy of v"
    # the cache holds exactly the k the kernel returned: every written k slot value appears as a returned k row
    got_rows = kc[written.all(-1)]  # [n, d]
    assert got_rows.shape[0] == 0 or bool(
        (got_rows[:, None] == k_out.reshape(-1, k_out.shape[-1])[None]).all(-1).any(1).all()), \
        f"{label}: a cached k row differs from the returned k"


@settings(max_examples=20)
@given(rows=_cache_rows(False), hq_per=st.integers(1, 3), hkv=st.integers(1, 3),
       dr=st.sampled_from(((256, 32), (64, 16), (72, 36), (10, 3))), dtype=DT, seed=st.integers(0, 2**31 - 1))
def test_cache_write(rows, hq_per, hkv, dr, dtype, seed):
    cached, new, S = rows
    d, r = dr
    case = build_qk_norm_rope(sum(new), hq_per * hkv, hkv, d, r, dtype, seed, cache=(cached, new, S))
    args, kw = case.on("cuda"), case.kwargs_on("cuda")
    kw_ref = {**kw, "k_cache": kw["k_cache"].clone(), "v_cache": kw["v_cache"].clone()}
    q_ref, _, k_ref = R.qk_norm_rope(*args, **kw_ref)
    q, gate, k = K.qk_norm_rope(*args, **kw)
    torch.cuda.synchronize()
    compare(SPEC, (q, k), (q_ref, k_ref), f"cache {rows}", dtype)
    _check_caches(kw["k_cache"], kw["v_cache"], kw_ref["k_cache"], kw_ref["v_cache"], k, kw["v"], f"cache {rows}",
                  dtype)


def test_overflow_dropped_without_validation():
    """Row 0 has room for 1 of its 3 new tokens, row 1 for none, row 2 for all: slots past S-1 are dropped."""
    S, new, cached = 4, [3, 2, 2], [3, 4, 0]
    case = build_qk_norm_rope(sum(new), 2, 2, 64, 16, torch.bfloat16, seed=3, cache=(cached, new, S))
    args, kw = case.on("cuda"), case.kwargs_on("cuda")
    with pytest.raises(ValueError, match="cache capacity"):
        K.qk_norm_rope(*args, **kw)  # validate=True (the default) refuses it on the host
    q, _, k = K.qk_norm_rope(*args, **kw, validate=False)
    torch.cuda.synchronize()
    want_k = torch.full_like(kw["k_cache"], float("nan"))
    want_v = torch.full_like(kw["v_cache"], float("nan"))
    starts = [0, 3, 5]
    for b in range(3):
        for i in range(new[b]):
            if cached[b] + i < S:
                want_k[b, cached[b] + i] = k[starts[b] + i]
                want_v[b, cached[b] + i] = kw["v"][starts[b] + i]
    torch.testing.assert_close(kw["k_cache"], want_k, rtol=0, atol=0, equal_nan=True)
    torch.testing.assert_close(kw["v_cache"], want_v, rtol=0, atol=0, equal_nan=True)


def test_gate_is_a_view_unless_out_given():
    case = build_qk_norm_rope(5, 4, 2, 256, 32, torch.bfloat16, seed=1)
    args = case.on("cuda")
    qg = args[0]
    _, gate, _ = K.qk_norm_rope(*args)
    assert gate.data_ptr() == qg.data_ptr() + 256 * qg.element_size() and gate.stride() == qg[..., 256:].stride()
    outs = case.nan_outs("cuda")
    _, gate2, _ = K.qk_norm_rope(*args, out=outs)
    torch.cuda.synchronize()
    assert gate2 is outs[1] and torch.equal(gate2, qg[..., 256:])


@pytest.mark.parametrize("B", [1, 8, 64])
def test_decode_step_replayed_from_a_graph(B):
    """The model's decode step: cos/sin of each row's text position, then q/k norm + rope + cache write, captured
    once; replays with the lengths (and positions) advanced on the device agree with the reference."""
    hq, hkv, d, S, dtype = 8, 2, 256, 64, torch.bfloat16
    case = build_qk_norm_rope(B, hq, hkv, d, 32, dtype, seed=B, cache=([0] * B, [1] * B, S))
    qg, k, wq, wk, _, _, eps = case.on("cuda")
    kw = case.kwargs_on("cuda")
    lengths = torch.tensor([(7 * b) % 40 for b in range(B)], dtype=torch.int32, device="cuda")
    pos = torch.empty(3, B, dtype=torch.int64, device="cuda")

    def step():
        cos, sin = K.mrope_cos_sin(pos, 64, 1e7, (11, 11, 10), True)
        return K.qk_norm_rope(qg, k, wq, wk, cos, sin, eps, v=kw["v"], k_cache=kw["k_cache"],
                              v_cache=kw["v_cache"], cu_seqlens=kw["cu_seqlens"], lengths=lengths, validate=False)
    pos.copy_(lengths.long().expand(3, B))
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        k_seen = [step()[2].clone()]  # every k returned so far: the cache holds slots of earlier steps too
    torch.cuda.current_stream().wait_stream(side)
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        q_g, _, k_g = step()
    kc_ref, vc_ref = kw["k_cache"].clone(), kw["v_cache"].clone()
    for t in range(3):
        pos.copy_(lengths.long().expand(3, B))
        g.replay()
        cos, sin = R.mrope_cos_sin(pos, 64, 1e7, (11, 11, 10), True)
        q_ref, _, k_ref = R.qk_norm_rope(qg, k, wq, wk, cos, sin, eps, v=kw["v"], k_cache=kc_ref, v_cache=vc_ref,
                                         cu_seqlens=kw["cu_seqlens"], lengths=lengths)
        torch.cuda.synchronize()
        compare(SPEC, (q_g, k_g), (q_ref, k_ref), f"replay {t}", dtype)
        k_seen.append(k_g.clone())
        _check_caches(kw["k_cache"], kw["v_cache"], kc_ref, vc_ref, torch.cat(k_seen), kw["v"], f"replay {t}",
                      dtype)
        lengths += 1


@pytest.mark.parametrize("ipw", (None,) + K.QK_TRIALS)
def test_heads_per_warp_builds(ipw):
    """Every heads-per-warp build (the default and the timing trials) == the reference, cache write included."""
    case = build_qk_norm_rope(7, 24, 4, 256, 32, torch.bfloat16, seed=11, cache=([0, 3, 1], [3, 1, 3], 8))
    args, kw = case.on("cuda"), case.kwargs_on("cuda")
    kw_ref = {**kw, "k_cache": kw["k_cache"].clone(), "v_cache": kw["v_cache"].clone()}
    q_ref, _, k_ref = R.qk_norm_rope(*args, **kw_ref)
    q, _, k = K.qk_norm_rope(*args, **kw, _ipw=ipw)
    torch.cuda.synchronize()
    compare(SPEC, (q, k), (q_ref, k_ref), f"ipw {ipw}", torch.bfloat16)
    _check_caches(kw["k_cache"], kw["v_cache"], kw_ref["k_cache"], kw_ref["v_cache"], k, kw["v"], f"ipw {ipw}",
                  torch.bfloat16)


@pytest.mark.parametrize("T,hq,hkv,d,r,dtype", [
    (1, 8, 2, 256, 32, torch.bfloat16), (37, 8, 2, 256, 32, torch.bfloat16), (300, 24, 4, 256, 32, torch.float16),
    (19, 3, 1, 128, 16, torch.bfloat16), (5, 2, 3, 64, 8, torch.float16)])
def test_staged_build(T, hq, hkv, d, r, dtype):
    """The staged (shared-memory) build of the no-cache calls == the reference, against the warp-per-heads builds
    too (their agreement: the same rounding points); apply_rope on the same path."""
    assert K._staged_tokens(dtype, d, r, hq + hkv, hq * 2 * d, 2 * d) > 0, "the case must take the staged build"
    case = build_qk_norm_rope(T, hq, hkv, d, r, dtype, seed=T)
    args = case.on("cuda")
    out = tuple(torch.full((T, h, d), float("nan"), dtype=dtype, device="cuda") for h in (hq, hkv))
    saved = K.QK_PREFILL, K.ROPE_PREFILL
    K.QK_PREFILL = K.ROPE_PREFILL = "staged"
    try:
        q, _, k = K.qk_norm_rope(*args, out=(out[0], None, out[1]))
        x, cos, sin = args[1], args[4], args[5]
        y = torch.full_like(x, float("nan"))
        K.apply_rope(x, cos, sin, out=y)
    finally:
        K.QK_PREFILL, K.ROPE_PREFILL = saved
    q_ref, _, k_ref = R.qk_norm_rope(*args)
    q_w, _, k_w = K.qk_norm_rope(*args, _ipw=2)  # a warp-per-heads build
    torch.cuda.synchronize()
    compare(SPEC, (q, k), (q_ref, k_ref), "staged", dtype)
    compare(SPEC, (q, k), (q_w, k_w), "staged vs warp build", dtype)
    compare(REGISTRY["apply_rope"], y, R.apply_rope(x, cos, sin), "apply_rope staged", dtype)


@settings(max_examples=12)
@given(build=st.sampled_from(K.STREAM_BUILDS), T=st.one_of(st.integers(65, 400), st.sampled_from((65, 1000))),
       hq=st.integers(1, 24), hkv=st.integers(1, 8),
       dr=st.sampled_from(((256, 32), (256, 128), (128, 16), (64, 8), (16, 8), (256, 8))),
       dtype=st.sampled_from((torch.float16, torch.bfloat16)), seed=st.integers(0, 2**31 - 1))
def test_stream_build(build, T, hq, hkv, dr, dtype, seed):
    """The streaming prefill kernel (every build) == the reference and the warp build; apply_rope on it too."""
    d, r = dr
    saved = K.QK_PREFILL, K.ROPE_PREFILL
    K.QK_PREFILL = K.ROPE_PREFILL = build
    try:
        case = build_qk_norm_rope(T, hq, hkv, d, r, dtype, seed=seed)
        args = case.on("cuda")
        out = tuple(torch.full((T, h, d), float("nan"), dtype=dtype, device="cuda") for h in (hq, hkv))
        q, _, k = K.qk_norm_rope(*args, out=(out[0], None, out[1]))
        q_ref, _, k_ref = R.qk_norm_rope(*args)
        q_w, _, k_w = K.qk_norm_rope(*args, _ipw=2)  # a warp-per-heads build
        x, cos, sin = args[1], args[4], args[5]
        y = torch.full_like(x, float("nan"))
        K.apply_rope(x, cos, sin, out=y)
        torch.cuda.synchronize()
    finally:
        K.QK_PREFILL, K.ROPE_PREFILL = saved
    compare(SPEC, (q, k), (q_ref, k_ref), f"stream {build}", dtype)
    compare(SPEC, (q, k), (q_w, k_w), f"stream {build} vs warp build", dtype)
    compare(REGISTRY["apply_rope"], y, R.apply_rope(x, cos, sin), f"apply_rope stream {build}", dtype)


@pytest.mark.parametrize("minb", K.LEAN_MINB_TRIALS)
@pytest.mark.parametrize("dtype", (torch.float16, torch.bfloat16))
def test_lean_register_budget_builds(minb, dtype):
    """The lean 4-heads-a-warp build at every register budget (LEAN_MINB trials) == the reference at prefill sizes."""
    case = build_qk_norm_rope(301, 8, 2, 256, 32, dtype, seed=minb)
    args = case.on("cuda")
    out = (torch.full((301, 8, 256), float("nan"), dtype=dtype, device="cuda"), None,
           torch.full((301, 2, 256), float("nan"), dtype=dtype, device="cuda"))
    saved = K.QK_PREFILL, K.LEAN_MINB
    K.QK_PREFILL, K.LEAN_MINB = "lean", minb
    try:
        q, _, k = K.qk_norm_rope(*args, out=out)
        torch.cuda.synchronize()
    finally:
        K.QK_PREFILL, K.LEAN_MINB = saved
    compare(SPEC, (q, k), R.qk_norm_rope(*args)[::2], f"lean minb {minb}", dtype)
