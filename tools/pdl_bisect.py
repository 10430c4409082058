"""Which source file's programmatic launches make the tiny test models' decode nondeterministic (GPU only).

    python3 tools/pdl_bisect.py [--reps 3] [--models dense,moe] [--out DIR]

For each setting (PDL off; on everywhere; on everywhere but one source; on in one source only) the tiny bf16
models of the GPU tests (tests/_lm_gpu.py, tests/test_lm_moe.py) generate the same greedy batch `reps` times
eagerly and `reps` times from the CUDA graph; every run is compared with the PDL-off eager tokens. A setting whose
runs all match is clean. Prefill graphs are off (QWEN35_PREFILL_GRAPHS=0): the decode loop alone is under test.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("QWEN35_PREFILL_GRAPHS", "0")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

import kernels.runtime.launch as L  # noqa: E402
from tests._lm_gpu import rows_batch  # noqa: E402

SOURCES = ("gemm.cu", "norms.cu", "rope.cu", "conv1d.cu", "deltanet.cu", "decode_attention.cu", "activations.cu",
           "glue.cu", "moe.cu")


def _models(names):
    out = {}
    if "dense" in names:
        from tests.test_lm_kernels import model_for
        out["dense"] = model_for
    if "moe" in names:
        from tests.test_lm_moe import model_for as moe_for
        out["moe"] = moe_for
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--models", default="dense,moe")
    ap.add_argument("--out", default=None, help="results directory (default: none written)")
    ap.add_argument("--settings", default=None, help="comma-separated setting names (default: all)")
    a = ap.parse_args()
    _, ids, mask = rows_batch((37, 12, 64, 5))
    kw = dict(attention_mask=mask, max_new_tokens=20, eos_token_ids=[])
    settings = [("off", False, set()), ("on", True, set())]
    settings += [(f"on but {f}", True, {f}) for f in SOURCES]
    settings += [(f"only {f}", True, set(SOURCES) - {f}) for f in SOURCES]
    if a.settings:
        settings = [x for x in settings if x[0] in a.settings.split(",")]
    records = []
    for mname, model_for in _models(a.models.split(",")).items():
        L.PDL, L.PDL_OFF = False, set()
        ref = model_for("kernels", torch.bfloat16, graphs=False).generate_ids(ids, **kw)
        for name, pdl, off in settings:
            L.PDL, L.PDL_OFF = pdl, set(off)
            t0 = time.time()
            bad = {}
            for graphs in (False, True):
                m = model_for("kernels", torch.bfloat16, graphs=graphs)  # a fresh session: captured now
                diffs = []
                for _ in range(a.reps):
                    got = m.generate_ids(ids, **kw)
                    diffs.append(int((got != ref).sum()))
                bad["graph" if graphs else "eager"] = diffs
            rec = dict(model=mname, setting=name, mismatched_tokens=bad, mode=m.last_decode_mode,
                       clean=not any(any(v) for v in bad.values()), s=round(time.time() - t0, 1))
            records.append(rec)
            print(json.dumps(rec), flush=True)
    L.PDL, L.PDL_OFF = False, set()
    if a.out:  # <out>/pdl_bisect-<card>-<date>.json with card, commit, date
        from benchmarks.common import write_results
        print(f"wrote {write_results('pdl_bisect', records, extra=dict(reps=a.reps), out_dir=a.out)}")


if __name__ == "__main__":
    main()
