"""Per-CTA timeline of the Hopper attention kernel (diagnostic build with -DATTN_TIMING: %globaltimer stamps).

    PYTHONPATH=. python3 scripts/attention_timing.py

Stamps per CTA: entry, after the CTA barrier, producer issued Q, consumer warpgroup 0 has Q and K_0, key loop done,
epilogue done. Printed as medians over CTAs for d72 H16 at 8x784 and 1x4096, for the 192x128 and 256x64 tiles.
"""
import sys, ctypes, torch
sys.path.insert(0, '.')
from kernels.attention import WS_CANDIDATES, _LOG2E
from kernels.runtime.nvrtc import compile_source, read_source, set_max_dynamic_shared_memory
from kernels.runtime.tma import launch_raw, tensor_map_3d
from cuda.core import Device
Device(0).set_current()
for v in WS_CANDIDATES[72][:2]:
    for L, nseg in ((784, 8), (4096, 1)):
        hq, d = 16, 72
        name = v.name(torch.bfloat16, d, False)
        mod = compile_source(read_source("attention.cu"), (name,), "sm_90a", ("-DATTN_TIMING",))
        kern = mod.get_kernel(name)
        smem = v.smem_bytes(d); set_max_dynamic_shared_memory(kern, smem)
        T = L * nseg
        q, k, vv = (torch.randn(T, hq, d, device="cuda").to(torch.bfloat16) for _ in range(3))
        cu = torch.arange(0, nseg + 1, device="cuda", dtype=torch.int32) * L
        tiles = (T + nseg * (v.bm - 1)) // v.bm
        grid = hq * tiles
        tb = torch.zeros(grid * 8, dtype=torch.int64, device="cuda")
        out = torch.empty_like(q)
        for rep in range(3):
            tb.zero_()
            launch_raw(kern, (grid, 1, 1), (v.threads, 1, 1), smem, [ctypes.c_void_p(out.data_ptr()), ctypes.c_void_p(tb.data_ptr()),
                ctypes.c_void_p(cu.data_ptr()), ctypes.c_int(nseg), ctypes.c_int(hq), ctypes.c_int(hq), ctypes.c_float(d ** -0.5 * _LOG2E),
                tensor_map_3d(q, 64, v.bm), tensor_map_3d(k, 64, v.bn), tensor_map_3d(vv, 64, v.bn),
                tensor_map_3d(out, 64, 64)])
            torch.cuda.synchronize()
        t = tb.view(grid, 8).cpu().double()
        ok = (t[:, 0] > 0) & (t[:, 5] > 0)
        t = t[ok]
        t0 = t[:, 0].min()
        span = (t[:, 5].max() - t0) / 1e3
        d = lambda a, b: ((t[:, b] - t[:, a]) / 1e3)
        print(f"{v.label()} L={L} nseg={nseg}: CTAs {int(ok.sum())}/{grid}, kernel span {span:.1f} us; per CTA (median us): "
              f"entry->sync {d(0,1).median():.2f}, sync->Q issued {d(1,2).median():.2f}, issued->Q+K0 landed {d(2,3).median():.2f}, "
              f"loop {d(3,4).median():.2f}, epilogue {d(4,5).median():.2f}, total {d(0,5).median():.2f}; "
              f"gap between CTAs on the grid (start of CTA i+132 - end of CTA i, median) "
              f"{((t[132:, 0] - t[:-132, 5]) / 1e3).median():.2f}" if len(t) > 132 else "")
