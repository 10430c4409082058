"""The conv1d family's kernel (causal_conv1d) beside torch eager on the real model shapes (bf16), from
kernels.registry: a 4096 / 16384-token prefill and the 1 / 8 / 64-row decode step of the 0.8B, 9B and 27B
DeltaNet convs (C = 6144, 8192, 10240).

    pytest benchmarks/bench_conv1d.py -m bench --benchmark-only -p no:xdist
    python3 -m benchmarks --families conv1d      # the same cases as a table (graph-replayed device time, GB/s,
                                                 # % of copy, x peer) and results JSON
    python3 benchmarks/bench_conv1d.py --trials  # the kernel's other (vec, chunk, unroll) builds, graph-replayed

Cases, peers and bytes come from the registry (property_tests/cases/conv1d.py).
"""

import sys

import pytest

from benchmarks.common import family_params, run_family_bench


@pytest.mark.bench
@pytest.mark.gpu
@pytest.mark.parametrize("op,tokens,index,impl", family_params("conv1d"))
def test_bench(benchmark, op, tokens, index, impl):
    run_family_bench(benchmark, op, tokens, index, impl)


def trials(tokens: int = 16384) -> list[dict]:
    """Graph-replayed time of the default build and each of kernels.conv1d.TRIALS on every real case (bf16)."""
    import torch

    from benchmarks.common import copy_bandwidth_TBps, graph_ms
    from kernels import conv1d
    from kernels.registry import REGISTRY
    from property_tests.cases.conv1d import causal_conv1d_real

    spec, copy = REGISTRY["causal_conv1d"], copy_bandwidth_TBps()
    out = []
    for case in causal_conv1d_real(torch.bfloat16, tokens=tokens):
        args, kw = case.on("cuda"), case.kwargs_on("cuda")
        nbytes = spec.bytes_of(case)
        row = {"case": case.label}
        for trial in (None,) + conv1d.TRIALS:
            ms = graph_ms(lambda: conv1d.causal_conv1d(*args, **kw, _trial=trial))
            row[str(trial or "default")] = (round(ms * 1e3, 2), round(100 * nbytes / (ms * 1e-3) / 1e12 / copy, 1))
        out.append(row)
        print(row["case"], "  ".join(f"{k}: {v[0]} us {v[1]} %copy" for k, v in row.items() if k != "case"),
              flush=True)
    return out


if __name__ == "__main__" and "--trials" in sys.argv:
    trials()
