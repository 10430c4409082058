"""The attention family on the GPU: kernels.attention (tensor cores, bf16/fp16) against reference.attention
in fp32, and kernels.attention.attention_fp32 (plain fp32 CUDA cores) against it in fp64. The generic registry tests
(property_tests/test_ops.py, tests/test_bad_input.py) run the public op as well; this module adds every tile
shape, tail tiles, determinism, graph capture and the fp32 kernel's own checks.

Tensor-core kernel. Inputs: random packed segments (lengths 0..300, including length-1 segments, zero-length
segments and one-segment batches), head dims 64/72/80/128/256, GQA ratios 1/2/4, causal and not, bf16 and fp16,
and every candidate tile shape (so the non-default shapes stay correct too). Outputs are NaN-poisoned before the call
so an unwritten row fails. The reference runs on the same (rounded) inputs in fp32.

Tolerances (kernel output vs fp32 reference): P is rounded to the input dtype before the PV product and the
output is rounded once: the registry's tolerance of the op, bf16 (8-bit mantissa) rel-L2 <= 1e-2 and max-abs <=
4e-2, fp16 (11-bit) rel-L2 <= 2e-3 and max-abs <= 6e-3 (in units of max(1, max|ref|)). lse is computed in fp32
from the same inputs: abs <= 1e-3.

fp32 kernel. Inputs: random packed segments (lengths 0..300, including length-1 and zero-length segments and
lengths around the 32-row tiles), head dims 64/72/80/128/256, GQA ratios 1/2/4, causal and not, scales d^-1/2 x
{1/2, 1, 2}, int32 and int64 cu_seqlens, max_seqlen given (sometimes larger than needed) or not. Tolerance against
the fp64 reference on the same fp32 inputs: relative L2 error <= 1e-5 and max abs error <= 1e-5 * max(1, max|ref|)
on the output, abs error <= 1e-5 on lse (10x inside the 1e-4 the fp32 model needs; tf32 tensor cores, ~1e-3, could
not meet it). Its compile tests (every instantiation for sm_80 and sm_90, no spills on sm_90) and CPU argument
checks run without a GPU.
"""

from __future__ import annotations

import io
import math
import re

import pytest
import torch
from hypothesis import example, given, strategies as st

import reference
from kernels.attention import SUPPORTED_HEAD_DIMS, all_variants, attention, run_variant
from kernels.attention import FP32_SOURCE as SOURCE, SUPPORTED_HEAD_DIMS as FP32_HEAD_DIMS, attention_fp32
from kernels.registry import REGISTRY
from kernels.runtime.nvrtc import compile_source, cuda_include_dirs, read_source

TOL = REGISTRY["attention"].tol  # {dtype: Tol}: the op's one tolerance per dtype


def assert_close(out, ref, label=""):
    """The registry tolerance of the attention op, out against an fp32 (or fp64) reference."""
    tol = TOL[out.dtype]
    rel, mx = tol.errors(out, ref)
    assert rel <= tol.rel_l2 and mx <= tol.max_abs, f"{label} rel L2 {rel:.3g} (tol {tol.rel_l2}), max abs {mx:.3g}"


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
    assert_close(out, ref_out)
    if lse is not None:
        assert torch.isfinite(lse).all()
        assert (lse - ref_lse).abs().max().item() <= 1e-3


segments = st.lists(st.integers(0, 300), min_size=1, max_size=5).filter(lambda ls: sum(ls) > 0)


@pytest.mark.gpu
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


@pytest.mark.gpu
@given(lengths=segments, causal=st.booleans(), scale=st.floats(0.01, 1.0), seed=st.integers(0, 2**16))
def test_public_entry_point(lengths, causal, scale, seed):
    """attention() itself: variant choice, out=, return_lse, scale, int64 cu_seqlens."""
    q, k, v, cu = make(lengths, 8, 2, 72, torch.bfloat16, seed)
    out = torch.full_like(q, math.nan)
    res, lse = attention(q, k, v, cu.long(), causal, scale=scale, return_lse=True, out=out,
                         max_seqlen=max(lengths))
    assert res is out
    check(out, lse, q, k, v, cu, causal, scale)


@pytest.mark.gpu
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
        assert_close(out[sl], ref, f"segment at {start}")
        start += L


@pytest.mark.gpu
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
        assert_close(out, ref, variant.label())
        again = torch.full_like(q, math.nan)
        run_variant(variant, q, k, v, cu, causal, d ** -0.5, again, None)
        assert torch.equal(out, again), variant.label()


@pytest.mark.gpu
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


@pytest.mark.gpu
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("kernel", ["tensor_cores", "fp32"])
def test_deterministic(kernel, causal):
    """Same inputs -> bitwise the same output and lse, run after run (a moving error would be a race); both
    kernels."""
    if kernel == "fp32":
        fn, (q, k, v, cu) = attention_fp32, make32([700, 1, 333, 0, 100], 8, 2, 72, 7)
    else:
        fn, (q, k, v, cu) = attention, make([700, 1, 333, 2048], 16, 4, 72, torch.bfloat16, 7)
    o1, l1 = fn(q, k, v, cu, causal, return_lse=True)
    for _ in range(3):
        o2, l2 = fn(q, k, v, cu, causal, return_lse=True)
        assert torch.equal(o1, o2) and torch.equal(l1, l2)


@pytest.mark.gpu
def test_empty_tokens():
    q = torch.empty(0, 4, 72, device="cuda", dtype=torch.bfloat16)
    cu = torch.zeros(2, dtype=torch.int32, device="cuda")
    assert attention(q, q[:, :2], q[:, :2], cu, False).shape == (0, 4, 72)


# ====================================================================================================
# the fp32 SIMT kernel
# ====================================================================================================
RTOL = 1e-5  # rel-L2 and max-abs (in units of max(1, max|ref|)) on the output
LSE_TOL = 1e-5


def make32(lengths, hq, hkv, d, seed, device="cuda"):
    g = torch.Generator(device=device).manual_seed(seed)
    T = sum(lengths)
    q, k, v = (torch.randn(T, h, d, device=device, generator=g) for h in (hq, hkv, hkv))
    cu = torch.tensor([0] + list(lengths), dtype=torch.int64).cumsum(0).to(device=device, dtype=torch.int32)
    return q, k, v, cu


def check32(out, lse, q, k, v, cu, causal, scale=None):
    ref_out, ref_lse = reference.attention(q.double(), k.double(), v.double(), cu, causal, scale=scale,
                                           return_lse=True)
    assert out.dtype == torch.float32 and not out.isnan().any(), "unwritten (NaN) output rows"
    err = out.double() - ref_out
    rel = (err.norm() / ref_out.norm().clamp_min(1e-30)).item()
    mx = err.abs().max().item() / max(1.0, ref_out.abs().max().item()) if err.numel() else 0.0
    assert rel <= RTOL and mx <= RTOL, f"rel-L2 {rel:.3g}, max-abs {mx:.3g}"
    if lse is not None:
        assert lse.dtype == torch.float32 and torch.isfinite(lse).all()
        lerr = (lse.double() - ref_lse).abs().max().item() if lse.numel() else 0.0
        assert lerr <= LSE_TOL, f"lse abs error {lerr:.3g}"


# ---------------------------------------------------------------------------------------------- GPU: values

segments32 = st.lists(st.one_of(st.integers(0, 300), st.sampled_from([0, 1, 31, 32, 33, 64, 65])),
                    min_size=1, max_size=5).filter(lambda ls: sum(ls) > 0)


@pytest.mark.gpu
@given(lengths=segments32, d=st.sampled_from(FP32_HEAD_DIMS), hkv=st.sampled_from([1, 2]),
       ratio=st.sampled_from([1, 2, 4]), causal=st.booleans(), scale_mul=st.sampled_from([None, 0.5, 2.0]),
       cu64=st.booleans(), slack=st.sampled_from([None, 0, 7]), seed=st.integers(0, 2**16))
@example(lengths=[1], d=72, hkv=2, ratio=1, causal=False, scale_mul=None, cu64=False, slack=None, seed=0)
@example(lengths=[1, 1, 1], d=64, hkv=1, ratio=4, causal=True, scale_mul=None, cu64=False, slack=0, seed=1)
@example(lengths=[130, 0, 1, 64, 200], d=72, hkv=2, ratio=2, causal=True, scale_mul=None, cu64=True, slack=7,
         seed=2)
@example(lengths=[0, 257, 0], d=256, hkv=2, ratio=4, causal=True, scale_mul=2.0, cu64=False, slack=None, seed=3)
@example(lengths=[33, 31], d=80, hkv=1, ratio=2, causal=False, scale_mul=0.5, cu64=False, slack=0, seed=4)
@example(lengths=[300], d=128, hkv=2, ratio=1, causal=True, scale_mul=None, cu64=False, slack=None, seed=5)
def test_fp32_matches_fp64_reference(lengths, d, hkv, ratio, causal, scale_mul, cu64, slack, seed):
    q, k, v, cu = make32(lengths, hkv * ratio, hkv, d, seed)
    scale = None if scale_mul is None else scale_mul / math.sqrt(d)
    out = torch.full_like(q, math.nan)
    max_seqlen = None if slack is None else max(lengths) + slack
    res, lse = attention_fp32(q, k, v, cu.long() if cu64 else cu, causal, scale=scale, return_lse=True, out=out,
                              max_seqlen=max_seqlen)
    assert res is out and lse.shape == (q.shape[0], q.shape[1])
    check32(out, lse, q, k, v, cu, causal, scale)
    alone = attention_fp32(q, k, v, cu, causal, scale=scale)  # no out=, no lse: the same numbers
    assert torch.equal(alone, out)


@pytest.mark.gpu
@pytest.mark.parametrize("d, lengths, hq, hkv, causal", [
    (72, [784] * 3 + [1000], 16, 16, False),   # ViT: several images, multi-wave grid
    (256, [1000, 1500], 8, 2, True),           # LM prefill, GQA 4
    (64, [2048], 4, 4, True),
])
def test_fp32_realistic_shapes(d, lengths, hq, hkv, causal):
    """Long segments32 (many key tiles) against fp64 SDPA per segment (an independent formulation)."""
    q, k, v, cu = make32(lengths, hq, hkv, d, 0)
    out, lse = attention_fp32(q, k, v, cu, causal, return_lse=True, max_seqlen=max(lengths), validate=False)
    start = 0
    for L in lengths:
        sl = slice(start, start + L)
        qs, ks, vs = (t[sl].double().transpose(0, 1) for t in (q, k, v))  # [H, L, d]
        r = hq // hkv
        ks, vs = ks.repeat_interleave(r, 0), vs.repeat_interleave(r, 0)
        ref = torch.nn.functional.scaled_dot_product_attention(qs, ks, vs, is_causal=causal).transpose(0, 1)
        err = out[sl].double() - ref
        assert (err.norm() / ref.norm()).item() <= RTOL and err.abs().max().item() <= RTOL
        scores = (qs @ ks.transpose(1, 2)) / math.sqrt(d)
        if causal:
            scores = scores.masked_fill(torch.ones(L, L, dtype=torch.bool, device="cuda").triu(1), -math.inf)
        assert (lse[sl].double() - torch.logsumexp(scores, -1).T).abs().max().item() <= LSE_TOL
        start += L


@pytest.mark.gpu
def test_fp32_cuda_graph_capture():
    """validate=False with max_seqlen reads nothing back, so the call can be captured and replayed."""
    q, k, v, cu = make32([50, 0, 90], 4, 2, 80, 11)
    out = torch.full_like(q, math.nan)
    attention_fp32(q, k, v, cu, True, out=out, max_seqlen=90)  # compiles and validates once
    out.fill_(math.nan)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        attention_fp32(q, k, v, cu, True, out=out, max_seqlen=90, validate=False)
    graph.replay()
    torch.cuda.synchronize()
    check32(out, None, q, k, v, cu, True)


@pytest.mark.gpu
def test_fp32_empty_tokens():
    q = torch.empty(0, 4, 72, device="cuda")
    cu = torch.zeros(3, dtype=torch.int32, device="cuda")
    out, lse = attention_fp32(q, q[:, :2], q[:, :2], cu, False, return_lse=True)
    assert out.shape == (0, 4, 72) and lse.shape == (0, 4)


# ---------------------------------------------------------------------------------------------- CPU: errors

def cpu_args(T=6, hq=4, hkv=2, d=72):
    q, k, v, cu = make32([T - 2, 2], hq, hkv, d, 0, device="cpu")
    return q, k, v, cu


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float64])
def test_rejects_non_fp32(dtype):
    q, k, v, cu = cpu_args()
    with pytest.raises(ValueError, match="q"):
        attention_fp32(q.to(dtype), k, v, cu, False)
    with pytest.raises(ValueError, match="v"):
        attention_fp32(q, k, v.to(dtype), cu, False)


def test_bf16_message_points_to_tensor_core_kernel():
    q, k, v, cu = cpu_args()
    with pytest.raises(ValueError, match="kernels.attention"):
        attention_fp32(q.bfloat16(), k.bfloat16(), v.bfloat16(), cu, False)


def test_rejects_cpu_tensors():
    q, k, v, cu = cpu_args()
    with pytest.raises(ValueError, match="CUDA"):
        attention_fp32(q, k, v, cu, False)


@pytest.mark.gpu
def test_rejects_mixed_devices():
    q, k, v, cu = make32([4, 2], 4, 2, 72, 0)
    with pytest.raises(ValueError, match="cu_seqlens.*CUDA"):
        attention_fp32(q, k, v, cu.cpu(), False)
    with pytest.raises(ValueError, match="v.*CUDA"):
        attention_fp32(q, k, v.cpu(), cu, False)
    with pytest.raises(ValueError, match="aligned"):  # float4 access needs 16-byte aligned data
        base = torch.empty(q.numel() + 1, device="cuda")
        attention_fp32(base[1:].view(q.shape).copy_(q), k, v, cu, False)


def test_rejects_bad_shapes():
    q, k, v, cu = cpu_args()
    with pytest.raises(ValueError, match="Hq"):  # 3 query heads over 2 kv heads
        attention_fp32(q[:, :3].contiguous(), k, v, cu, False)
    with pytest.raises(ValueError, match="k must have shape"):  # head dim differs
        attention_fp32(q, k[..., :64].contiguous(), v[..., :64].contiguous(), cu, False)
    with pytest.raises(ValueError, match="v must have shape"):
        attention_fp32(q, k, v[:, :1].contiguous(), cu, False)
    with pytest.raises(ValueError, match="k must have shape"):  # token count differs
        attention_fp32(q, k[:5].contiguous(), v[:5].contiguous(), cu, False)
    with pytest.raises(ValueError, match="head dim"):
        q2, k2, v2, cu2 = cpu_args(d=96)
        attention_fp32(q2, k2, v2, cu2, False)
    with pytest.raises(ValueError, match="dimensions"):
        attention_fp32(q[0], k, v, cu, False)
    with pytest.raises(ValueError, match="contiguous"):
        attention_fp32(q.transpose(0, 1).contiguous().transpose(0, 1), k, v, cu, False)
    with pytest.raises(TypeError, match="q"):
        attention_fp32(q.numpy(), k, v, cu, False)


def test_rejects_bad_cu_seqlens_and_scalars():
    q, k, v, cu = cpu_args()
    for bad, msg in [(cu.float(), "cu_seqlens"), (cu[:1], "at least 2"), (torch.tensor([0, 5, 4, 6]), "non-decreasing"),
                     (torch.tensor([0, 3, 5], dtype=torch.int32), "end at"),
                     (torch.tensor([1, 3, 6], dtype=torch.int32), "start at 0"), (cu[None], "cu_seqlens")]:
        with pytest.raises(ValueError, match=msg):
            attention_fp32(q, k, v, bad, False)
    with pytest.raises(ValueError, match="max_seqlen"):  # shorter than the longest segment (4)
        attention_fp32(q, k, v, cu, False, max_seqlen=3)
    with pytest.raises(ValueError, match="max_seqlen"):
        attention_fp32(q, k, v, cu, False, max_seqlen=-1)
    with pytest.raises(TypeError, match="causal"):
        attention_fp32(q, k, v, cu, 1)
    with pytest.raises(ValueError, match="scale"):
        attention_fp32(q, k, v, cu, False, scale=-1.0)
    with pytest.raises(ValueError, match="out"):
        attention_fp32(q, k, v, cu, False, out=torch.empty(6, 4, 64))
    with pytest.raises(ValueError, match="out"):
        attention_fp32(q, k, v, cu, False, out=torch.empty(6, 4, 72, dtype=torch.float64))


# ---------------------------------------------------------------------------------------------- compile

def test_every_head_dim_is_instantiated():
    assert set(SOURCE.exprs) == {f"attn32::attn_fp32<{d}, {c}>" for d in FP32_HEAD_DIMS
                                 for c in ("false", "true")}


@pytest.mark.compile
@pytest.mark.parametrize("arch", ["sm_80", "sm_90"])
def test_fp32_compiles(arch):
    mod = compile_source(read_source("attention/fp32.cu"), SOURCE.exprs, arch)
    cubin = bytes(mod.code)
    assert cubin[:4] == b"\x7fELF"
    mapping = {(k.decode() if isinstance(k, bytes) else k): v for k, v in (mod.symbol_mapping or {}).items()}
    for e in SOURCE.exprs:
        sym = mapping[e]
        assert (sym if isinstance(sym, bytes) else sym.encode()) in cubin, f"{e} missing from the {arch} cubin"


@pytest.mark.compile
def test_fp32_no_register_spills_sm90():
    from cuda.core import Program, ProgramOptions

    log = io.StringIO()
    opts = ProgramOptions(arch="sm_90", std="c++17", include_path=list(cuda_include_dirs()), ptxas_options=["-v"])
    Program(read_source("attention/fp32.cu"), code_type="c++", options=opts).compile(
        "cubin", name_expressions=SOURCE.exprs, logs=log)
    report = log.getvalue()
    spills = [int(x) for x in re.findall(r"(\d+) bytes spill stores", report)]
    assert len(spills) == len(SOURCE.exprs) and not any(spills), report
