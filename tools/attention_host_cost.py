"""Host (Python) cost of one attention call, which queued timings pay when a kernel is short (d72 8x784: ~85 us).

    PYTHONPATH=. python3 tools/attention_host_cost.py

Prints the wall time per call of kernels.attention and of run_variant with the GPU kept busy (so launches never
wait), and cProfile's top entries for run_variant.
"""

import cProfile
import pstats
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from kernels.attention import WS_256x64, attention, run_variant  # noqa: E402


def per_call_us(fn, n=200):
    for _ in range(10):
        fn()
    torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(n):
        fn()
    host = (time.perf_counter() - t) / n * 1e6
    torch.cuda.synchronize()
    return host


def main():
    hq, d, L, nseg = 16, 72, 784, 8
    q, k, v = (torch.randn(L * nseg, hq, d, device="cuda").to(torch.bfloat16) for _ in range(3))
    cu = torch.arange(0, nseg + 1, device="cuda", dtype=torch.int32) * L
    out = torch.empty_like(q)
    calls = {
        "attention(validate=False)": lambda: attention(q, k, v, cu, False, out=out, max_seqlen=L, validate=False),
        "attention()": lambda: attention(q, k, v, cu, False, out=out, max_seqlen=L),
        "run_variant": lambda: run_variant(WS_256x64, q, k, v, cu, False, d ** -0.5, out, None),
    }
    for name, fn in calls.items():
        print(f"{name:28s} {per_call_us(fn):7.1f} us host per call", flush=True)
    prof = cProfile.Profile()
    prof.enable()
    for _ in range(200):
        calls["run_variant"]()
    prof.disable()
    torch.cuda.synchronize()
    pstats.Stats(prof).sort_stats("tottime").print_stats(14)


if __name__ == "__main__":
    main()
