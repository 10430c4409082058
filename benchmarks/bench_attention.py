"""Attention benchmarks: kernels.attention beside torch SDPA (cuDNN, flash, efficient) on the same card.

TFLOP/s counts 4 * L^2 * d * Hq per segment (halved when causal), the usual flash-attention convention, for
every implementation alike. SDPA gets its favourite layout ([B, H, S, d] contiguous, equal-length segments
as a batch, GQA heads pre-expanded outside the timing). Run with `pytest -m bench -p no:xdist
benchmarks/bench_attention.py`; tools/attention_gpu.py runs the same cases standalone and writes JSON.
"""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch


@dataclass(frozen=True)
class Case:
    tag: str
    lengths: tuple[int, ...]
    hq: int
    hkv: int
    d: int
    causal: bool

    @property
    def T(self) -> int:
        return sum(self.lengths)

    @property
    def flops(self) -> float:
        return sum(4.0 * L * L * self.d * self.hq for L in self.lengths) * (0.5 if self.causal else 1.0)

    @property
    def min_bytes(self) -> int:
        """q, k, v read once and o written once (bf16): the least traffic any kernel needs."""
        return self.T * self.d * 2 * (2 * self.hq + 2 * self.hkv)


CASES = [
    Case("vit_d72_h16_1x4096", (4096,), 16, 16, 72, False),
    Case("vit_d72_h16_1x16384", (16384,), 16, 16, 72, False),
    Case("vit_d72_h16_8x784", (784,) * 8, 16, 16, 72, False),
    Case("vit_d64_h12_1x4096", (4096,), 12, 12, 64, False),
    Case("vit_d64_h16_1x4096", (4096,), 16, 16, 64, False),
    Case("vit_d128_h16_1x4096", (4096,), 16, 16, 128, False),
    Case("lm_d256_hq8_hkv2_causal_4096", (4096,), 8, 2, 256, True),
]
SDPA_BACKENDS = ("CUDNN_ATTENTION", "FLASH_ATTENTION", "EFFICIENT_ATTENTION")


def make_inputs(case: Case, dtype=torch.bfloat16, seed=0):
    """Packed q, k, v, cu_seqlens (int32) on the GPU."""
    g = torch.Generator(device="cuda").manual_seed(seed)
    q, k, v = (torch.randn(case.T, h, case.d, device="cuda", dtype=dtype, generator=g)
               for h in (case.hq, case.hkv, case.hkv))
    cu = torch.tensor((0,) + case.lengths, dtype=torch.int32).cumsum(0).to(torch.int32).cuda()
    return q, k, v, cu


def sdpa_fn(case: Case, q, k, v, backend: str):
    """A closure running SDPA with one backend on [B, H, S, d] copies of the packed inputs (equal lengths)."""
    import torch.nn.functional as F
    from torch.nn.attention import SDPBackend, sdpa_kernel

    assert len(set(case.lengths)) == 1, "SDPA baseline needs equal segment lengths"
    B, S, r = len(case.lengths), case.lengths[0], case.hq // case.hkv
    qb = q.view(B, S, case.hq, case.d).transpose(1, 2).contiguous()
    kb = k.view(B, S, case.hkv, case.d).repeat_interleave(r, 2).transpose(1, 2).contiguous()
    vb = v.view(B, S, case.hkv, case.d).repeat_interleave(r, 2).transpose(1, 2).contiguous()
    be = getattr(SDPBackend, backend)

    def run():
        with sdpa_kernel([be]):
            return F.scaled_dot_product_attention(qb, kb, vb, is_causal=case.causal)
    return run


def ours_fn(case: Case, q, k, v, cu, variant=None):
    from kernels.attention import attention, run_variant

    out = torch.empty_like(q)
    if variant is None:
        m = max(case.lengths)
        return lambda: attention(q, k, v, cu, case.causal, out=out, max_seqlen=m, validate=False)
    scale = case.d ** -0.5
    return lambda: run_variant(variant, q, k, v, cu, case.causal, scale, out, None)


@pytest.mark.bench
@pytest.mark.gpu
@pytest.mark.parametrize("impl", ["ours"] + list(SDPA_BACKENDS))
@pytest.mark.parametrize("case", CASES, ids=lambda c: c.tag)
def test_bench_attention(benchmark, case, impl):
    q, k, v, cu = make_inputs(case)
    if impl == "ours":
        fn = ours_fn(case, q, k, v, cu)
    else:
        fn = sdpa_fn(case, q, k, v, impl)
        try:
            fn()
        except RuntimeError as e:  # a backend may refuse a head dim
            pytest.skip(f"{impl}: {e}"[:200])

    def run():
        fn()
        torch.cuda.synchronize()

    benchmark.group = f"attention-{case.tag}"
    benchmark.pedantic(run, warmup_rounds=3, rounds=20)
    benchmark.extra_info["tflops"] = case.flops / benchmark.stats.stats.median / 1e12
