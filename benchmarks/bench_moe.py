"""The moe family on an H200-class card: the registry's real cases (moe_topk, moe_mlp at the 35B-A3B / 122B-A10B /
397B-A17B widths with 12 experts, beside torch/HF-loop peers) and one whole MoE layer at the real shapes (all E
experts) beside transformers' Qwen3_5MoeSparseMoeBlock.

    pytest benchmarks/bench_moe.py -m bench --benchmark-only -p no:xdist
    python3 tools/moe_gpu.py --bench            # the same layer as a table with the floors, and results JSON

The layer is timed as the decode step runs it, replayed from a CUDA graph (HF's block reads the routing on the
host, so it runs eagerly); tools/moe_gpu.py also reports the bandwidth and GEMM floors measured in the same run.
"""

import pytest
import torch

from benchmarks.common import family_params, run_family_bench

SIZES = ("35B-A3B", "122B-A10B", "397B-A17B")
TOKENS = (1, 8, 64, 1024, 8192)


@pytest.mark.bench
@pytest.mark.gpu
@pytest.mark.parametrize("op,tokens,index,impl", family_params("moe"))
def test_bench(benchmark, op, tokens, index, impl):
    run_family_bench(benchmark, op, tokens, index, impl)


_LAYERS: dict = {}


def _layer(size):
    from tools.moe_gpu import Layer

    if size not in _LAYERS:
        _LAYERS.clear()  # one checkpoint's layer (and HF block) on the card at a time
        torch.cuda.empty_cache()
        layer = Layer(size)
        _LAYERS[size] = (layer, layer.hf_block())
    return _LAYERS[size]


@pytest.mark.bench
@pytest.mark.gpu
@pytest.mark.parametrize("impl", ["ours", "hf"])
@pytest.mark.parametrize("tokens", TOKENS)
@pytest.mark.parametrize("size", SIZES)
def test_bench_layer(benchmark, size, tokens, impl):
    from benchmarks.common import graph_ms

    layer, block = _layer(size)
    x = torch.randn(tokens, layer.H, device="cuda", dtype=torch.bfloat16)
    benchmark.group = f"moe-layer-{size}-T{tokens}"
    if impl == "ours":
        ms = graph_ms(lambda: layer.forward(x), 3 if tokens >= 1024 else 20)
        benchmark.extra_info.update(graph_ms=ms)

        def run():
            layer.forward(x)
            torch.cuda.synchronize()
    else:
        def run():
            with torch.no_grad():
                block(x[None])
            torch.cuda.synchronize()
    benchmark.pedantic(run, warmup_rounds=2, rounds=5 if tokens >= 1024 else 20)
