"""Per-CTA timeline of the Hopper attention kernel (diagnostic build with -DATTN_TIMING: %globaltimer stamps).

    PYTHONPATH=. python3 scripts/attention_timing.py [extra NVRTC options, e.g. -DSOME_TRIAL_MACRO]

The timing build writes 6 stamps per CTA into the lse argument (a [grid][8] u64 buffer there): entry, after the
CTA barrier, producer issued Q, consumer warpgroup 0 has Q and K_0, key loop done, epilogue done. Printed as
medians over CTAs for d72 H16 at 8x784 and 1x4096, for the 192x128 and 256x64 tiles; also the median duration
of a segment's short last tile against a full one, and the CTA time summed over CTAs divided by SMs x kernel
span (1.0 = no SM ever idle). %globaltimer ticks every ~0.25-0.5 us, so single steps are that coarse.
"""

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from kernels.attention import WS_CANDIDATES, run_variant  # noqa: E402


def main(extra=()):
    hq, d = 16, 72
    for v in WS_CANDIDATES[d][:2]:  # 192x128, 256x64
        for L, nseg in ((784, 8), (4096, 1)):
            T = L * nseg
            q, k, vv = (torch.randn(T, hq, d, device="cuda").to(torch.bfloat16) for _ in range(3))
            cu = torch.arange(0, nseg + 1, device="cuda", dtype=torch.int32) * L
            rows = v.bm * v.rounds_for(d, False)
            grid = hq * ((T + nseg * (rows - 1)) // rows)  # run_variant's grid
            stamps = torch.zeros(grid * 8, dtype=torch.int64, device="cuda")
            out = torch.empty_like(q)
            for _ in range(3):  # the first call compiles and warms up; keep the last
                stamps.zero_()
                run_variant(v, q, k, vv, cu, False, d ** -0.5, out, stamps.view(torch.float32),
                            options=("-DATTN_TIMING",) + tuple(extra))
                torch.cuda.synchronize()
            t = stamps.view(grid, 8).cpu().double()
            ran = (t[:, 0] > 0) & (t[:, 5] > 0)
            per_seg = -(-L // v.bm)  # tiles per segment; the last is a tail when L % BM != 0
            tail = (torch.arange(grid) // hq) % per_seg == per_seg - 1
            dur = (t[:, 5] - t[:, 0]) / 1e3
            busy = dur[ran].sum().item() / (torch.cuda.get_device_properties(0).multi_processor_count
                                              * (t[ran, 5].max() - t[ran, 0].min()).item() / 1e3)
            tails = (f"tail CTAs {dur[ran & tail].median().item():.2f} us, full {dur[ran & ~tail].median().item():.2f}"
                     if L % v.bm else f"full CTAs {dur[ran].median().item():.2f} us")
            print(f"{v.label()} L={L} nseg={nseg}: {tails}; CTA-time / (SMs x span) {busy:.2f}", flush=True)
            t = t[ran]
            step = lambda a, b: ((t[:, b] - t[:, a]) / 1e3).median().item()  # noqa: E731
            print(f"{v.label()} L={L} nseg={nseg}: {len(t)}/{grid} CTAs, kernel span "
                  f"{(t[:, 5].max() - t[:, 0].min()).item() / 1e3:.1f} us; per CTA (median us): entry->barrier "
                  f"{step(0, 1):.2f}, barrier->Q issued {step(1, 2):.2f}, Q issued->Q+K0 landed {step(2, 3):.2f}, "
                  f"key loop {step(3, 4):.2f}, epilogue {step(4, 5):.2f}, total {step(0, 5):.2f}", flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])  # extra NVRTC options for an A/B build
