"""The moe family beyond the generic registry tests (property_tests/test_ops.py covers moe_topk / moe_mlp on the
default path): every moe_mlp path forced on random cases, the routing metadata against a CPU counting sort, the
order rule on tied logits, repeated and out-of-range experts without validation, and CUDA-graph capture.
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings, strategies as st

import reference as ref
from kernels.registry import REGISTRY
from property_tests.cases import moe as cases
from property_tests.harness import check_case, compare

HAS_GPU = torch.cuda.is_available()
gpu = pytest.mark.skipif(not HAS_GPU, reason="needs a GPU")
pytestmark = pytest.mark.gpu

MLP, TOPK = REGISTRY["moe_mlp"], REGISTRY["moe_topk"]


def _kernels():
    from kernels import moe

    return moe


def _paths(case) -> list[str]:
    moe = _kernels()
    x, gu, dn, w, e = case.on("cuda")
    out = ["routed"]
    if w.numel() <= moe.DECODE_MAX_SLOTS:
        out.append("decode")
    if moe.grouped_ok(x, gu, dn):
        out.append("grouped")
    return out


def _check_path(case, path) -> None:
    """One case through one forced path, output poisoned, against the reference at the registry tolerance."""
    moe = _kernels()
    args, kwargs = case.on("cuda"), case.kwargs_on("cuda")
    want = ref.moe_mlp(*args, **kwargs)
    outp = case.nan_outs("cuda")
    got = moe.moe_mlp(*args, **kwargs, out=outp, path=path)
    torch.cuda.synchronize()
    assert got is outp
    compare(MLP, got, want, f"moe_mlp[{path}] {case.label}", case.dtype)


@gpu
@given(data=st.data())
def test_every_path_matches_reference(data):
    case = data.draw(cases.moe_mlp_cases(), label="case")
    for path in _paths(case):
        _check_path(case, path)


@gpu
@pytest.mark.parametrize("mode", ["random", "same", "repeat", "skewed"])
@pytest.mark.parametrize("T", [1, 3, 16, 300])
def test_routing_modes_every_path(mode, T):
    """Experts that get no token, every token to one set of experts, one expert named k times by every token,
    a hot expert beside cold ones: at decode and prefill sizes, bf16 (the grouped path) and fp32."""
    for dtype in (torch.bfloat16, torch.float32):
        for shared in (None, 40):
            case = cases.build_moe_mlp(T, 64, 48, 12, 4, dtype, seed=T, mode=mode, shared=shared)
            for path in _paths(case):
                _check_path(case, path)


@gpu
@pytest.mark.parametrize("size", list(cases.MOE_SIZES))
@pytest.mark.parametrize("T", [1, 8, 40])
def test_real_widths_every_path(size, T):
    s = cases.MOE_SIZES[size]
    case = cases.build_moe_mlp(T, s["hidden"], s["inter"], cases.REAL_EXPERTS, s["topk"], torch.bfloat16, seed=T,
                               shared=s["shared"])
    for path in _paths(case):
        _check_path(case, path)


# ------------------------------------------------------------------------------------------------ routing
def _routing_cpu(experts: torch.Tensor, E: int):
    """The metadata by a stable sort on the CPU: (offsets, perm, inv, active)."""
    flat = experts.reshape(-1).cpu()
    counts = torch.bincount(flat, minlength=E)
    offsets = torch.cat([torch.zeros(1, dtype=torch.int64), counts.cumsum(0)])
    perm = torch.sort(flat, stable=True).indices
    inv = torch.empty_like(perm)
    inv[perm] = torch.arange(flat.numel())
    nz = torch.nonzero(counts).reshape(-1)
    active = torch.full((E,), -1, dtype=torch.int64)
    active[: nz.numel()] = nz
    return offsets, perm, inv, active


@gpu
@given(T=st.one_of(st.integers(0, 50), st.sampled_from((1, 1000, 8192))),
       E=st.one_of(st.integers(1, 40), st.sampled_from((256, 512, 1024))), k=st.integers(1, 10),
       mode=st.sampled_from(cases.ROUTINGS), seed=st.integers(0, 2**31 - 1))
@settings(max_examples=30)
def test_routing_matches_cpu_sort(T, E, k, mode, seed):
    k = min(k, E)
    _, experts = cases.route(torch.Generator().manual_seed(seed), T, E, k, mode)
    got = _kernels().moe_routing(experts.cuda(), E)
    want = _routing_cpu(experts, E)
    for name, g, w in zip(("offsets", "perm", "inv", "active"), got, want):
        assert g.dtype == torch.int32
        assert torch.equal(g.cpu().long(), w), f"{name} differs (T={T}, E={E}, k={k}, {mode})"


@gpu
def test_out_of_range_experts_dropped_without_validation():
    """validate=False: a slot naming an expert outside [0, E) contributes nothing (and never reads out of
    bounds), on every path."""
    case = cases.build_moe_mlp(40, 64, 32, 8, 3, torch.bfloat16, seed=5)
    x, gu, dn, w, e = case.on("cuda")
    bad = e.clone()
    bad[::3, 1] = 8
    bad[1::5, 0] = -3
    keep = (bad >= 0) & (bad < 8)
    want = ref.moe_mlp(x, gu, dn, w * keep, torch.where(keep, bad, 0))
    moe = _kernels()
    for path in ["routed", "grouped"] if moe.grouped_ok(x, gu, dn) else ["routed"]:
        got = moe.moe_mlp(x, gu, dn, w, bad, validate=False, path=path)
        compare(MLP, got, want, f"dropped experts [{path}]", torch.bfloat16)
    got = moe.moe_mlp(x[:4], gu, dn, w[:4], bad[:4], validate=False, path="decode")
    compare(MLP, got, ref.moe_mlp(x[:4], gu, dn, (w * keep)[:4], torch.where(keep, bad, 0)[:4]), "decode dropped",
            torch.bfloat16)


# ------------------------------------------------------------------------------------------------ top-k
@gpu
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
def test_topk_ties_lower_index_first(dtype):
    """Equal logits: the lower expert index first, in the kernel as in the reference (exact experts)."""
    logits = torch.tensor([[0.0, 1.0, 1.0, 0.0, 1.0], [2.0, 2.0, 2.0, 2.0, 2.0], [-1.0, 3.0, 3.0, 3.0, 0.0]],
                          dtype=dtype)
    w, e = _kernels().moe_topk(logits.cuda(), 3)
    assert e.tolist() == [[1, 2, 4], [0, 1, 2], [1, 2, 3]]
    torch.testing.assert_close(w.cpu(), torch.tensor([[1 / 3] * 3] * 3))
    for E in (33, 256, 512):  # ties across lanes and register slots
        case = cases.build_moe_topk(64, E, 10, dtype, seed=E, mode="ties")
        check_case(TOPK, "nvrtc", case, "cuda")


@gpu
@pytest.mark.parametrize("E", [5, 40, 256, 512])
def test_topk_signed_zeros_inf_nan(E):
    """-0 and +0 are equal logits (the lower index first), -inf ranks last, NaN first (as torch.sort ranks it):
    the experts exactly as the reference's, the weights within the tolerance (NaN in both for a NaN row)."""
    g = torch.Generator().manual_seed(E)
    vals = torch.tensor([-0.0, 0.0, 0.5, float("-inf")])
    logits = vals[torch.randint(0, 4, (6, E), generator=g)]
    logits[:, 0] = 0.5  # a finite largest logit in every row
    logits[5, E // 2] = float("nan")
    k = min(E, 8)
    w, e = _kernels().moe_topk(logits.cuda(), k)
    rw, re_ = ref.moe_topk(logits, k)
    assert torch.equal(e.cpu(), re_), "experts differ from the reference"
    compare(TOPK, w[:5], rw[:5], f"signed zeros E={E}", torch.float32)
    assert bool(torch.isnan(w[5]).all()) and bool(torch.isnan(rw[5]).all())


# ------------------------------------------------------------------------------------------------ CUDA graph
@gpu
@pytest.mark.parametrize("T", [1, 8, 300])
def test_graph_capture(T):
    """Router top-k + moe_mlp captured in a CUDA graph (validate on by default: skipped while capturing), replayed on
    new inputs copied into the captured buffers, equals eager."""
    moe = _kernels()
    E, k, H, I = 32, 8, 256, 64
    g = torch.Generator().manual_seed(T)
    wr = (torch.randn(E, H, generator=g) * H ** -0.5).to("cuda", torch.bfloat16)
    gu = (torch.randn(E, 2 * I, H, generator=g) * H ** -0.5).to("cuda", torch.bfloat16)
    dn = (torch.randn(E, H, I, generator=g) * I ** -0.5).to("cuda", torch.bfloat16)
    x = torch.randn(T, H, generator=g).to("cuda", torch.bfloat16)

    def layer():
        w, e = moe.moe_topk(x @ wr.T, k)
        return moe.moe_mlp(x, gu, dn, w, e)

    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        layer()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = layer()
    for seed in (1, 2):
        x.copy_(torch.randn(T, H, generator=torch.Generator().manual_seed(seed)).to("cuda", torch.bfloat16))
        graph.replay()
        torch.cuda.synchronize()
        want = layer()
        assert torch.equal(out, want), f"T={T}: graph replay differs from eager"
        w, e = ref.moe_topk(x @ wr.T, k)
        compare(MLP, out, ref.moe_mlp(x, gu, dn, w, e), f"graph T={T}", torch.bfloat16)


@gpu
@pytest.mark.parametrize("pdl", [False, True])
def test_decode_with_and_without_programmatic_launch(pdl, monkeypatch):
    """The decode kernels' pre-wait work (experts, prefetches) is right both as programmatic dependent launches
    and as plain stream-ordered launches."""
    moe = _kernels()
    monkeypatch.setattr(moe, "PDL", pdl)
    for T, mode in ((1, "random"), (1, "repeat"), (8, "random"), (16, "skewed")):
        case = cases.build_moe_mlp(T, 256, 64, 40, 8, torch.bfloat16, seed=T, mode=mode, shared=64)
        _check_path(case, "decode")


@gpu
@pytest.mark.parametrize("split", [False, True])
def test_decode_gate_up_kernels(split, monkeypatch):
    """Both decode gate/up kernels (moe.SPLIT): H in one pass of the split kernel's CTA (2048), in two (4096), not a
    multiple of the vector (scalar build), an expert width not a multiple of its 4 rows, the shared expert wider
    than the experts, 1 to 16 tokens (an expert or the shared expert with more tokens than one reduction takes)."""
    moe = _kernels()
    monkeypatch.setattr(moe, "SPLIT", split)
    monkeypatch.setattr(moe, "MMA", False)
    for T, H, I, S, mode, dt in ((1, 2048, 64, 96, "random", torch.bfloat16), (2, 4096, 30, 0, "same", torch.bfloat16),
                                 (5, 100, 18, 40, "repeat", torch.bfloat16), (16, 256, 64, 200, "skewed", torch.float32),
                                 (3, 2048, 512, 512, "random", torch.float16)):
        case = cases.build_moe_mlp(T, H, I, 24, 8, dt, seed=T, mode=mode, shared=S or None)
        _check_path(case, "decode")


@gpu
@pytest.mark.parametrize("stream", [True, False])
def test_decode_stream_kernels(stream, monkeypatch):
    """The streaming decode kernels (moe.STREAM; the others where off) at the 35B-A3B and 397B-A17B widths (fewer
    experts), 1 to 128 slots (128 tokens of one expert each, 16 tokens of 8), an expert named twice by a token,
    every slot on one expert, a hot expert, no shared expert, a shared expert wider or narrower than the experts,
    E = 512, widths that are not a multiple of a stage's rows, bf16/fp16/fp32; and that the stream kernels ran."""
    moe = _kernels()
    monkeypatch.setattr(moe, "MMA", False)
    monkeypatch.setattr(moe, "STREAM", stream)
    monkeypatch.setattr(moe, "STREAM_MIN_TOKENS", 1)
    for T, H, I, S, E, k, mode, dt in ((1, 2048, 512, 512, 64, 8, "random", torch.bfloat16),
                                       (8, 2048, 512, 512, 64, 8, "random", torch.bfloat16),
                                       (16, 2048, 64, 96, 24, 8, "skewed", torch.bfloat16),
                                       (2, 4096, 1024, 0, 16, 10, "same", torch.bfloat16),
                                       (5, 256, 24, 40, 24, 8, "repeat", torch.float16),
                                       (3, 512, 40, 72, 24, 4, "random", torch.float32),
                                       (128, 64, 8, 16, 4, 1, "random", torch.bfloat16),
                                       (1, 64, 16, 0, 512, 8, "random", torch.bfloat16),
                                       (7, 4096, 8, 8, 9, 3, "random", torch.float32)):
        case = cases.build_moe_mlp(T, H, I, E, k, dt, seed=T + H, mode=mode, shared=S or None)
        x, gu, dn, _, _ = case.on("cuda")
        kw = case.kwargs_on("cuda")
        kinds = moe.decode_kernels(x, gu, dn, k, kw.get("shared_gate"), kw.get("shared_up"), kw.get("shared_down"))
        assert (kinds == "stream") == stream, f"{case.label}: decode kernels {kinds}"
        _check_path(case, "decode")


@gpu
@given(T=st.integers(1, 8), H=st.sampled_from((32, 64, 96, 256, 2048)), I=st.sampled_from((32, 64, 96, 512)),
       S=st.sampled_from((0, 0, 32, 64, 160)), E=st.one_of(st.integers(1, 24), st.sampled_from((64, 256, 512))),
       k=st.integers(1, 10), mode=st.sampled_from(cases.ROUTINGS),
       dtype=st.sampled_from((torch.bfloat16, torch.float16)), edt=st.sampled_from((torch.int64, torch.int32)),
       seed=st.integers(0, 2**31 - 1))
@settings(max_examples=40, deadline=None)
def test_decode_mma_kernels(T, H, I, S, E, k, mode, dtype, edt, seed):
    """The tensor-core decode kernels (moe.MMA) on random cases: 1 to 8 tokens, widths multiples of 32 up to the
    real ones, the shared expert narrower, wider or absent, 1 to 512 experts (fewer distinct experts than slots,
    an expert named twice by a token, every slot on one expert), bf16/fp16, int32/int64 experts; that they ran, match
    the reference into a NaN-poisoned output, and give the same bits twice."""
    moe = _kernels()
    k = min(k, E)
    case = cases.build_moe_mlp(T, H, I, E, k, dtype, seed=seed, mode=mode, experts_dtype=edt, shared=S or None)
    x, gu, dn, _, _ = case.on("cuda")
    kw = case.kwargs_on("cuda")
    kinds = moe.decode_kernels(x, gu, dn, k, kw.get("shared_gate"), kw.get("shared_up"), kw.get("shared_down"))
    assert kinds == "mma", f"{case.label}: decode kernels {kinds}"
    _check_path(case, "decode")
    args = case.on("cuda")
    a = moe.moe_mlp(*args, **kw, path="decode")
    b = moe.moe_mlp(*args, **kw, path="decode")
    assert torch.equal(a, b), f"{case.label}: two calls differ"


@gpu
@pytest.mark.parametrize("split,evict_first", [(1, False), (2, True)])
def test_decode_mma_builds(split, evict_first, monkeypatch):
    """Both builds of the tensor-core down kernel (K split over a cluster or not; weight loads with and without the
    L2 evict_first policy) on cases whose K steps do not divide evenly among the warps or the cluster: 1, 5 and 8
    tokens, H = 96 and the 35B-A3B width, with and without the shared expert."""
    moe = _kernels()
    monkeypatch.setattr(moe, "MMA_DOWN_SPLIT", split)
    monkeypatch.setattr(moe, "MMA_GU_EVICT_FIRST", evict_first)
    monkeypatch.setattr(moe, "MMA_DOWN_EVICT_FIRST", evict_first)
    for T, H, I, S, E, k, mode in ((1, 2048, 512, 512, 64, 8, "random"), (8, 96, 96, 0, 24, 3, "repeat"),
                                   (5, 2048, 64, 160, 512, 10, "skewed")):
        case = cases.build_moe_mlp(T, H, I, E, k, torch.bfloat16, seed=T + H, mode=mode, shared=S or None)
        x, gu, dn, _, _ = case.on("cuda")
        kw = case.kwargs_on("cuda")
        kinds = moe.decode_kernels(x, gu, dn, k, kw.get("shared_gate"), kw.get("shared_up"), kw.get("shared_down"))
        assert kinds == "mma", f"{case.label}: decode kernels {kinds}"
        _check_path(case, "decode")


def test_stream_plan_shapes():
    """The streaming kernels' launch shapes from host sizes (no GPU): at the 35B-A3B widths on 132 SMs, one token
    runs 2 gate/up CTAs an SM on 4-row-pair stages (32 KB, 2 in flight a CTA, x staged: 4 KB) and 256 down CTAs of
    8 rows, 8 warps; 8 tokens the same with 32 KB of x; x past STREAM_XS_MAX is not staged; rows that are not
    16-byte multiples, more than 512 experts or 128 slots take the other kernels."""
    from kernels import moe

    p1 = moe._stream_plan(1, 8, 256, 2048, 512, 512, 2, 132, True)
    assert (p1["R"], p1["ns"], p1["G"], p1["xs"], p1["gu_smem"]) == (4, 2, 264, 4096, 68 * 1024)
    assert (p1["RD"], p1["nw"], p1["d"], p1["down_smem"]) == (8, 8, 1, 64 * 1024)
    p8 = moe._stream_plan(8, 8, 256, 2048, 512, 512, 2, 132, True)
    assert (p8["RD"], p8["nw"], p8["d"], p8["xs"]) == (8, 8, 1, 32 * 1024) and p8["down_smem"] <= moe.STREAM_DOWN_SMEM
    assert moe._stream_plan(16, 8, 256, 2048, 512, 512, 2, 132, True)["xs"] == 0
    assert moe._stream_plan(1, 8, 256, 2044, 512, 512, 2, 132, True) is None   # H * 2 bytes not a 16-byte multiple
    assert moe._stream_plan(1, 8, 256, 2048, 500, 512, 2, 132, True) is None   # I
    assert moe._stream_plan(1, 8, 256, 2048, 512, 20, 2, 132, True) is None    # S
    assert moe._stream_plan(1, 8, 256, 2048, 512, 20, 2, 132, False) is not None  # (no shared expert: S unused)
    assert moe._stream_plan(1, 8, 513, 2048, 512, 512, 2, 132, True) is None   # E > 512
    assert moe._stream_plan(17, 8, 256, 2048, 512, 512, 2, 132, True) is None  # 136 slots


@gpu
def test_decode_stream_dropped_experts_and_graph(monkeypatch):
    """The streaming kernels drop slots whose expert lies outside [0, E) (validate=False) and replay from a CUDA
    graph with the routing changed in place between replays (the unit table is built on the device every call)."""
    moe = _kernels()
    monkeypatch.setattr(moe, "STREAM", True)
    monkeypatch.setattr(moe, "STREAM_MIN_TOKENS", 1)
    case = cases.build_moe_mlp(8, 256, 32, 16, 4, torch.bfloat16, seed=3, shared=48)
    x, gu, dn, w, e = case.on("cuda")
    kw = case.kwargs_on("cuda")
    assert moe.decode_kernels(x, gu, dn, 4, kw["shared_gate"], kw["shared_up"], kw["shared_down"]) == "stream"
    bad = e.clone()
    bad[::3, 1] = 16
    bad[1::5, 0] = -3
    keep = (bad >= 0) & (bad < 16)
    got = moe.moe_mlp(x, gu, dn, w, bad, **kw, validate=False, path="decode")
    want = ref.moe_mlp(x.cpu(), gu.cpu(), dn.cpu(), (w * keep).cpu(), torch.where(keep, bad, 0).cpu(),
                       **case.kwargs_on("cpu"))
    compare(MLP, got, want, "stream dropped experts", torch.bfloat16)
    ee = e.clone()
    out = torch.empty_like(x)
    moe.moe_mlp(x, gu, dn, w, ee, **kw, out=out, validate=False, path="decode")  # compile/load outside the capture
    torch.cuda.synchronize()
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        moe.moe_mlp(x, gu, dn, w, ee, **kw, out=out, validate=False, path="decode")
    for seed in range(3):
        _, e2 = cases.route(torch.Generator().manual_seed(seed), 8, 16, 4, ("random", "repeat", "same")[seed])
        ee.copy_(e2)
        g.replay()
        torch.cuda.synchronize()
        want = ref.moe_mlp(x.cpu(), gu.cpu(), dn.cpu(), w.cpu(), e2, **case.kwargs_on("cpu"))
        compare(MLP, out, want, f"stream graph replay {seed}", torch.bfloat16)


# ------------------------------------------------------------------------------------------------ fused router
@gpu
@given(T=st.sampled_from((1, 2, 8, 9, 64)), E=st.sampled_from((8, 33, 256, 512)), k=st.sampled_from((1, 8, 10)),
       H=st.sampled_from((16, 100, 2048, 4096)), seed=st.integers(0, 2**31 - 1))
@settings(max_examples=12)
def test_router_topk_equals_topk_of_fp32_logits(T, E, k, H, seed):
    """Gaussian data (inexact sums): the fused router's weights and experts equal moe_topk of the fp32 logits
    wherever the reference's k-th and (k+1)-th logits are apart by more than the fp32 summation error."""
    moe = _kernels()
    k = min(k, E)
    g = torch.Generator(device="cuda").manual_seed(seed)
    x = torch.randn(T, H, device="cuda", generator=g).bfloat16()
    w = (torch.randn(E, H, device="cuda", generator=g) * H ** -0.5).bfloat16()
    got_w, got_e = moe.moe_router_topk(x, w, k)
    logits = x.double() @ w.double().T
    srt = logits.sort(-1, descending=True).values
    gaps = (srt[:, :-1] - srt[:, 1:]).abs()
    clear = (gaps[:, : min(k, E - 1)] > 1e-4).all(-1) if E > 1 else torch.ones(T, dtype=torch.bool, device="cuda")
    want_w, want_e = ref.moe_topk(logits.float(), k)
    assert torch.equal(got_e[clear], want_e[clear])
    torch.testing.assert_close(got_w[clear], want_w[clear], rtol=0, atol=1e-5)


@gpu
def test_router_topk_graph_replay_resets_its_ticket():
    """The last CTA resets the ticket: replays of a captured call keep giving the right experts."""
    moe = _kernels()
    case = cases.build_moe_router_topk(8, 2048, 256, 8, torch.bfloat16, seed=3)
    x, w, k = case.on("cuda")
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        moe.moe_router_topk(x, w, k)
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out_w, out_e = moe.moe_router_topk(x, w, k)
    for seed in (1, 2, 3):
        x.copy_(cases.build_moe_router_topk(8, 2048, 256, 8, torch.bfloat16, seed=seed).args[0].cuda())
        graph.replay()
        torch.cuda.synchronize()
        want_w, want_e = ref.moe_router_topk(x, w, k)
        assert torch.equal(out_e, want_e)
        torch.testing.assert_close(out_w, want_w, rtol=0, atol=1e-6)
