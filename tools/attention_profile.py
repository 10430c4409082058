"""Run chosen attention tile shapes once each on one benchmark case, for a profiler (Nsight Compute).

    PYTHONPATH=. ncu --section SpeedOfLight ... python3 tools/attention_profile.py vit_d72_h16_1x4096 ws_192x128 mma_128x64

Every argument after the case tag is a label prefix (kernels.attention variant labels); each matching variant runs
twice (the first call compiles and warms up; profile with --launch-skip as needed).
"""

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.bench_attention import CASES, make_inputs  # noqa: E402
from kernels.attention import all_variants, run_variant  # noqa: E402

if __name__ == "__main__":
    tag, prefixes = sys.argv[1], tuple(sys.argv[2:])
    case = next(c for c in CASES if c.tag == tag)
    q, k, v, cu = make_inputs(case)
    out = torch.empty_like(q)
    for var in all_variants(case.d, q.device):
        if var.label().startswith(prefixes):
            for _ in range(2):
                run_variant(var, q, k, v, cu, case.causal, case.d ** -0.5, out, None)
            torch.cuda.synchronize()
            print(var.label(), flush=True)
