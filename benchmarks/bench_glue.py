"""The glue family's kernels beside their peers on the real model shapes (bf16), from kernels.registry.

    pytest benchmarks/bench_glue.py -m bench --benchmark-only -p no:xdist
    python3 -m benchmarks --families glue        # the same cases as a table (graph-replayed device time, GB/s,
                                                 # % of copy, x peer) and results JSON

Cases, peers, bytes and FLOPs come from the registry (property_tests/cases/glue.py); a new op of the family
is picked up without an edit here.
"""

import pytest

from benchmarks.common import family_params, run_family_bench


@pytest.mark.bench
@pytest.mark.gpu
@pytest.mark.parametrize("op,tokens,index,impl", family_params("glue"))
def test_bench(benchmark, op, tokens, index, impl):
    run_family_bench(benchmark, op, tokens, index, impl)
