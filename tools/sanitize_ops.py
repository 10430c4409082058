"""Every NVRTC kernel of the registry once on small inputs, for compute-sanitizer (memcheck, racecheck, ...).

    compute-sanitizer --tool memcheck --error-exitcode 3 python3 tools/sanitize_ops.py [--ops a,b] [--real ROWS]

Each op runs its example input at every dtype it takes and, with --real, its first real-model case at ROWS rows,
checked against the reference like the property tests (so a sanitizer run is also a correctness run). The
sanitizer itself decides the exit code for memory errors; a wrong answer exits 1.
"""

from __future__ import annotations

import argparse
import sys
import time

import torch

sys.path.insert(0, ".")
from kernels.registry import REGISTRY  # noqa: E402
from property_tests.harness import check_case  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ops", default="", help="comma-separated op names (default: every op with an NVRTC kernel)")
    ap.add_argument("--real", type=int, default=0, help="also the first real-model case at this many rows")
    args = ap.parse_args()
    wanted = [o for o in args.ops.split(",") if o]
    unknown = [o for o in wanted if o not in REGISTRY]
    if unknown:
        raise SystemExit(f"unknown op(s) {unknown}: pick from {sorted(REGISTRY)}")
    failed = []
    for name, spec in REGISTRY.items():
        if "nvrtc" not in spec.kernels or (wanted and name not in wanted):
            continue
        t0 = time.perf_counter()
        cases = []
        for dtype in spec.dtypes or (None,):
            cases.append(spec.hook("example")() if dtype is None else spec.hook("example")(dtype))
            if args.real and spec.hook("real") is not None and dtype is not None:
                cases += spec.hook("real")(dtype, args.real)[:1]
        for case in cases:
            try:
                check_case(spec, "nvrtc", case, "cuda")
            except AssertionError as e:
                failed.append(f"{name} [{case.label}]: {str(e).splitlines()[0]}")
        torch.cuda.synchronize()
        print(f"{name}: {len(cases)} cases in {time.perf_counter() - t0:.1f} s", flush=True)
    for f in failed:
        print("WRONG", f)
    print(f"{'FAILED' if failed else 'OK'}: {len(failed)} wrong answers")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
