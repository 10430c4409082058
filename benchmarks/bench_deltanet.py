"""The deltanet family's kernel (gated_delta_rule) beside flash-linear-attention 0.6.0 (when importable) on the
real model shapes (bf16), from kernels.registry: a 4096 / 16384-token prefill and the 1 / 8-row decode step of
the 0.8B (16/16 heads), 9B (16/32), 27B (16/48) and 397B (16/64) DeltaNet layers.

    pytest benchmarks/bench_deltanet.py -m bench --benchmark-only -p no:xdist
    python3 -m benchmarks --families deltanet     # the same cases as a table and results JSON
    python3 tools/deltanet_gpu.py --bench         # the issue's shapes (1x4096, 1x32768, 8x1024; decode 1/32/256),
                                                  # queued and graph-replayed, TFLOP/s and state bytes vs copy

Cases, peers and FLOPs come from the registry (property_tests/cases/deltanet.py).
"""

import pytest

from benchmarks.common import family_params, run_family_bench


@pytest.mark.bench
@pytest.mark.gpu
@pytest.mark.parametrize("op,tokens,index,impl", family_params("deltanet"))
def test_bench(benchmark, op, tokens, index, impl):
    run_family_bench(benchmark, op, tokens, index, impl)
