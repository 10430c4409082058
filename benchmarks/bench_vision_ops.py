"""Vision-tower elementwise/norm ops: our kernels beside torch eager on the real ViT shapes (bf16).

    pytest benchmarks/bench_vision_ops.py -m bench --benchmark-only -p no:xdist
    python3 tools/gpu_check.py --bench        # the same cases as a table of device time, GB/s, % of copy

The inputs come from property_tests/strategies.py (the builders the property tests use), the torch twins
below are what a plain PyTorch ViT does (HF's formulation: several kernels and intermediates), and
`min_bytes` is the DRAM traffic an ideal kernel needs, for the roofline.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from kernels.registry import REGISTRY
from property_tests import strategies as S

# (op, N, width, extra): width is D, I, or (heads, head_dim) for qkv_bias_rope
SHAPES = [
    *[("layer_norm", n, d, None) for n in (4096, 16384) for d in (768, 1152)],
    *[("add_bias_layer_norm", n, d, None) for n in (4096, 16384) for d in (768, 1152)],
    *[("bias_gelu", n, i, "tanh") for n in (4096, 16384) for i in (3072, 4304)],
    ("bias_gelu", 4096, 4608, "none"),  # the merger's fc1 epilogue (4 * 1152, exact GELU)
    *[("add_pos_embed", n, d, None) for n in (4096, 16384) for d in (768, 1152)],
    *[("qkv_bias_rope", n, hh, None) for n in (4096, 16384) for hh in ((12, 64), (16, 72))],
]


def shape_id(op, n, width, extra) -> str:
    w = f"{width[0]}x{width[1]}" if isinstance(width, tuple) else str(width)
    return f"{op}-{n}x{w}" + (f"-{extra}" if extra else "")


def bench_case(op, n, width, extra, dtype=torch.bfloat16) -> S.Case:
    if op == "qkv_bias_rope":
        return S.build_qkv_bias_rope(n, width[0], width[1], dtype)
    if op == "bias_gelu":
        return S.build_bias_gelu(n, width, dtype, approximate=extra)
    if op == "add_pos_embed":  # the real taps of a square image of n patches
        side = int(round(n ** 0.5))
        return S.build_add_pos_embed(n, width, dtype, grid=(1, side, side))
    return getattr(S, f"build_{op}")(n, width, dtype)


def min_bytes(op: str, args: tuple) -> int:
    """DRAM bytes an ideal kernel moves: every input read once, every output written once."""
    x = args[0]
    es, n = x.element_size(), x.shape[0]
    if op == "layer_norm":
        return 2 * x.numel() * es + 2 * x.shape[1] * es
    if op == "add_bias_layer_norm":
        return 4 * x.numel() * es + 3 * x.shape[1] * es
    if op == "bias_gelu":
        return 2 * x.numel() * es + x.shape[1] * es
    if op == "add_pos_embed":
        return 2 * x.numel() * es + args[1].numel() * es + 4 * n * 8
    if op == "qkv_bias_rope":
        return 2 * x.numel() * es + x.shape[1] * es + 2 * args[2].numel() * 4
    raise KeyError(op)


def _rotate_half(t):
    h = t.shape[-1] // 2
    return torch.cat([-t[..., h:], t[..., :h]], dim=-1)


def eager(op: str, args: tuple):
    """A zero-argument callable running the op the way plain PyTorch (HF) does; per-forward precomputation
    (HF builds the full cos/sin once per forward, not per layer) is done here, outside the timed call."""
    if op == "layer_norm":
        x, w, b, eps = args
        return lambda: F.layer_norm(x, (x.shape[1],), w, b, eps)
    if op == "add_bias_layer_norm":
        x, bias, res, w, nb, eps = args

        def run():
            r = res + (x + bias)
            return F.layer_norm(r, (x.shape[1],), w, nb, eps), r
        return run
    if op == "bias_gelu":
        x, bias, approximate = args
        return lambda: F.gelu(x + bias, approximate=approximate)
    if op == "add_pos_embed":
        x, table, index, weight = args
        w = weight.to(x.dtype)[..., None]
        return lambda: x + (table[index] * w).sum(0)
    if op == "qkv_bias_rope":
        qkv, bias, cos, sin, heads = args
        n, hd = qkv.shape[0], qkv.shape[1] // (3 * heads)
        c2, s2 = torch.cat([cos, cos], -1)[:, None], torch.cat([sin, sin], -1)[:, None]

        def run():
            q, k, v = (qkv + bias).view(n, 3, heads, hd).unbind(1)
            rot = [(t.float() * c2 + _rotate_half(t.float()) * s2).to(qkv.dtype) for t in (q, k)]
            return rot[0], rot[1], v.contiguous()
        return run
    raise KeyError(op)


def impls(op: str, args: tuple) -> dict:
    """{impl name: zero-argument callable}: torch eager and every registered kernel variant."""
    out = {"torch": eager(op, args)}
    for variant, fn in REGISTRY[op].kernels.items():
        out[variant] = (lambda f: (lambda: f(*args)))(fn)
    return out


IMPLS = ("torch", "nvrtc", "numba")


@pytest.mark.bench
@pytest.mark.gpu
@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("shape", SHAPES, ids=[shape_id(*s) for s in SHAPES])
def test_bench_vision_op(benchmark, shape, impl):
    op = shape[0]
    args = bench_case(*shape).on("cuda")
    fns = impls(op, args)
    if impl not in fns:
        pytest.skip(f"{op} has no {impl} kernel")
    fn = fns[impl]
    benchmark.group = shape_id(*shape) + "-bf16"
    benchmark.extra_info["min_bytes"] = min_bytes(op, args)

    def run():
        fn()
        torch.cuda.synchronize()

    benchmark.pedantic(run, warmup_rounds=3, rounds=30)
