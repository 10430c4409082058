"""Time the registry's ops on their real 0.8B / 9B / 27B shapes beside their peers and write results JSON.

    python3 -m benchmarks [--families vision,norms] [--ops layer_norm] [--tokens 4096,16384] [--out DIR]

Every op of kernels.registry with a kernel and real shapes (property_tests/cases/<family>.py: x_real, x_peers);
see benchmarks.common.time_registry for what is measured. Needs a GPU.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import torch

from benchmarks.common import BENCH_TOKENS, time_registry, write_results
from kernels.registry import REGISTRY


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--families", default="", help="comma-separated families (default: all)")
    ap.add_argument("--ops", default="", help="comma-separated ops (default: all of the families)")
    ap.add_argument("--tokens", default=",".join(map(str, BENCH_TOKENS)))
    ap.add_argument("--out", default=os.environ.get("OUT"), help="results directory (default benchmarks/results)")
    a = ap.parse_args()
    if not torch.cuda.is_available():
        print("no CUDA device")
        return 2
    fams = {f for f in a.families.split(",") if f}
    ops = [o for o in a.ops.split(",") if o] or [n for n, s in REGISTRY.items() if not fams or s.family in fams]
    unknown = [o for o in ops if o not in REGISTRY]
    if unknown:
        ap.error(f"unknown ops {unknown}")
    records = time_registry(ops, tuple(int(t) for t in a.tokens.split(",")))
    path = write_results("ops", records, out_dir=Path(a.out) if a.out else None)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
