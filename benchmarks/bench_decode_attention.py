"""Decode attention benchmarks: kernels.decode_attention beside torch SDPA with every backend, on the same card.

Each case is B rows of one new query against a cache of `ctx` tokens (all rows full: lengths = ctx = S), head_dim
256, bf16. Bytes counted: the K and V slots the rows use, B * ctx * Hkv * 256 * 2 * 2 (q and the output are under
0.1 % of it), for every implementation alike. SDPA gets its favourite layout, made outside the timing: q
[B, Hq, 1, d] and the cache slice as [B, Hkv, ctx, d] contiguous with enable_gqa=True (or the kv heads repeated
to Hq where a backend refuses GQA; the bytes counted stay the same). Timings are CUDA-graph replays
(benchmarks.common.graph_ms). Run `pytest -m bench -p no:xdist benchmarks/bench_decode_attention.py`;
tools/decode_attention_gpu.py times the same cases standalone, with % of the copy ceiling, and writes JSON.
"""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch

D = 256
SDPA_BACKENDS = ("FLASH_ATTENTION", "EFFICIENT_ATTENTION", "CUDNN_ATTENTION", "MATH")
MATH_MAX_BYTES = 4 << 30  # the math backend materialises the repeated heads: skip it on caches above this


@dataclass(frozen=True)
class Case:
    B: int
    ctx: int
    hq: int
    hkv: int

    @property
    def tag(self) -> str:
        return f"b{self.B}_ctx{self.ctx // 1024}k_{self.hq}:{self.hkv}" if self.ctx >= 1024 else \
            f"b{self.B}_ctx{self.ctx}_{self.hq}:{self.hkv}"

    @property
    def kv_bytes(self) -> int:
        return self.B * self.ctx * self.hkv * D * 2 * 2


# B = 1, 8, 32 at 1k .. 128k tokens with Qwen3.5's 8:2 heads, and one case per other ratio; the goal's cases first
CASES = [Case(1, 8192, 8, 2), Case(1, 32768, 8, 2), Case(32, 8192, 8, 2), Case(1, 131072, 8, 2),
         Case(32, 32768, 8, 2), Case(8, 8192, 8, 2), Case(8, 32768, 8, 2), Case(1, 32768, 16, 4),
         Case(1, 32768, 24, 4), Case(1, 32768, 32, 2), Case(32, 8192, 24, 4), Case(1, 1024, 8, 2),
         Case(8, 1024, 8, 2), Case(32, 1024, 8, 2), Case(8, 131072, 8, 2), Case(32, 131072, 8, 2)]


def make_inputs(case: Case, dtype=torch.bfloat16, seed=0):
    """q [B, Hq, d], k_cache, v_cache [B, ctx, Hkv, d], lengths int32 [B] = ctx, on the GPU."""
    g = torch.Generator(device="cuda").manual_seed(seed)
    q = torch.randn(case.B, case.hq, D, device="cuda", dtype=dtype, generator=g)
    kc = torch.randn(case.B, case.ctx, case.hkv, D, device="cuda", dtype=dtype, generator=g)
    vc = torch.randn(case.B, case.ctx, case.hkv, D, device="cuda", dtype=dtype, generator=g)
    lengths = torch.full((case.B,), case.ctx, dtype=torch.int32, device="cuda")
    return q, kc, vc, lengths


def ours_fn(case: Case, q, kc, vc, lengths):
    from kernels.decode_attention import decode_attention

    out = torch.empty_like(q)
    return lambda: decode_attention(q, kc, vc, lengths, validate=False, max_length=case.ctx, out=out)


def sdpa_fn(case: Case, q, kc, vc, backend: str):
    """(closure, layout note) running SDPA with one backend; raises RuntimeError if the backend refuses the case."""
    import torch.nn.functional as F
    from torch.nn.attention import SDPBackend, sdpa_kernel

    if backend == "MATH" and case.kv_bytes * case.hq // case.hkv > MATH_MAX_BYTES:
        raise RuntimeError(f"skipped: math would materialise {case.kv_bytes * case.hq // case.hkv >> 30} GiB")
    be = getattr(SDPBackend, backend)
    qb = q[:, :, None, :]  # [B, Hq, 1, d]
    kb, vb = (c.transpose(1, 2).contiguous() for c in (kc, vc))  # [B, Hkv, ctx, d]
    try:
        with sdpa_kernel([be]):
            F.scaled_dot_product_attention(qb, kb, vb, enable_gqa=True)
        torch.cuda.synchronize()

        def run():
            with sdpa_kernel([be]):
                return F.scaled_dot_product_attention(qb, kb, vb, enable_gqa=True)
        return run, "gqa"
    except RuntimeError:
        torch.cuda.synchronize()
    r = case.hq // case.hkv
    kr, vr = (c.repeat_interleave(r, 1) for c in (kb, vb))
    del kb, vb

    def run_rep():
        with sdpa_kernel([be]):
            return F.scaled_dot_product_attention(qb, kr, vr)
    with sdpa_kernel([be]):
        run_rep()  # raises if the backend refuses this case too
    return run_rep, "repeated heads"


BENCH_CASES = [c for c in CASES if c.ctx <= 32768]


@pytest.mark.bench
@pytest.mark.gpu
@pytest.mark.parametrize("impl", ("ours",) + SDPA_BACKENDS)
@pytest.mark.parametrize("case", BENCH_CASES, ids=lambda c: c.tag)
def test_bench_decode_attention(benchmark, case, impl):
    q, kc, vc, lengths = make_inputs(case)
    if impl == "ours":
        fn = ours_fn(case, q, kc, vc, lengths)
    else:
        try:
            fn, _ = sdpa_fn(case, q, kc, vc, impl)
        except RuntimeError as e:
            pytest.skip(f"SDPA {impl}: {str(e)[:80]}")
    benchmark.group = f"decode_attention-{case.tag}-bf16"
    benchmark.extra_info.update(kv_bytes=case.kv_bytes)

    def run():
        fn()
        torch.cuda.synchronize()

    benchmark.pedantic(run, warmup_rounds=3, rounds=30)
