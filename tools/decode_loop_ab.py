"""A/B of the decode loop's host side in one process (random weights at a model size's real shapes, bf16, H200):
how each step's tokens reach the block buffer the host reads (a device-to-device memcpy, the default, or an
elementwise kernel: no copy-engine hand-off between two graph replays) and how many tokens a call decodes (the
loop's start and end amortised over 32 or 128 tokens). The graph replay of one step alone is
tools/lm_decode_profile.py's graph_us_per_step.

    python3 tools/decode_loop_ab.py --size 0.8B --batch 1 --out $OUT

Variants alternate over --rounds; reported: the best tokens/s of each (lm_e2e_gpu.ours_decode's measure).
JSON: write_results("decode_loop_ab").
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from benchmarks.common import write_results  # noqa: E402


def _kernel_store(self, dst):
    torch.add(self.tok, 0, out=dst)


def main(argv=None) -> int:
    import lm_e2e_gpu as E

    from model.generate import DecodeSession

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", default="0.8B")
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    hf = E.build_hf(args.size)
    m = E.build_ours(hf, args.size)
    del hf
    torch.cuda.empty_cache()
    memcpy_store = DecodeSession._store
    variants = {"memcpy_n32": (memcpy_store, 32), "kernel_n32": (_kernel_store, 32),
                "memcpy_n128": (memcpy_store, 128), "kernel_n128": (_kernel_store, 128)}
    best = {v: 0.0 for v in variants}
    for _ in range(args.rounds):
        for v, (store, n) in variants.items():
            DecodeSession._store = store
            best[v] = max(best[v], E.ours_decode(m, args.batch, n, 2)["tokens_per_s"])
    DecodeSession._store = memcpy_store
    rec = dict(size=args.size, batch=args.batch, rounds=args.rounds) | {v + "_tokens_per_s": round(t, 1)
                                                                       for v, t in best.items()}
    print(rec, flush=True)
    print(f"wrote {write_results('decode_loop_ab', [rec], out_dir=args.out)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
