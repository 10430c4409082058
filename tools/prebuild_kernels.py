"""Compile every NVRTC kernel the package may launch on one arch into the disk cache, in parallel, no GPU needed.

    QWEN35_KERNELS_CACHE=DIR python3 tools/prebuild_kernels.py [--arch sm_90] [--jobs N] [--what all|attention|rest]

A fresh GPU machine otherwise compiles each source the first time a test or benchmark launches it, one after
another (minutes for the warp-specialised attention tiles). The compile keys are the runtime's own
(kernels/runtime/nvrtc.py): source, every header, name expressions, arch and options, so a later run on a GPU
of that arch loads these cubins. Covers every registered NvrtcSource, every attention tile shape of
kernels.attention.all_variants (Hopper shapes too for sm_9x), both dtypes and both mask kinds, and the
DeltaNet cluster state pass (sm_90a).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor, as_completed

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _jobs(arch: str, what: str) -> list[tuple]:
    import importlib

    import kernels.gemm  # noqa: F401  (registers gemm.cu)
    import kernels.registry  # noqa: F401  (imports every family, registering its NvrtcSource)
    A = importlib.import_module("kernels.attention")  # the module (kernels.attention is also its function's name)
    DN = importlib.import_module("kernels.deltanet")
    from kernels.runtime.dispatch import SOURCES

    jobs = []
    if what in ("all", "rest"):
        jobs += [(s.file, s.exprs, arch, s.options) for s in SOURCES.values()]
        if arch.startswith("sm_9"):
            jobs.append(("deltanet.cu", DN.MC_EXPRS, "sm_90a", ()))
    if what in ("all", "attention"):
        hopper = arch.startswith("sm_9")
        A._device.is_hopper = lambda device=None: hopper  # all_variants asks the device; there is none here
        for d in A.SUPPORTED_HEAD_DIMS:
            for v in A.all_variants(d, device="cuda"):
                for dtype in A.DTYPES:
                    for causal in (False, True):
                        jobs.append((v.file, (v.name(dtype, d, causal),), getattr(v, "arch", None) or arch, ()))
    return list(dict.fromkeys(jobs))


def _build(job: tuple) -> tuple[str, float, str]:
    from kernels.runtime import nvrtc

    file, exprs, arch, options = job
    t0 = time.perf_counter()
    try:
        nvrtc.compile_source(nvrtc.read_source(file), tuple(exprs), arch, tuple(options))
        err = ""
    except Exception as e:  # a source that does not build for this arch: say so, keep going
        err = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
    return f"{file} [{exprs[0]}{' ...' if len(exprs) > 1 else ''}] {arch}", time.perf_counter() - t0, err


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--arch", default="sm_90", help="sm_80, sm_90 (H100/H200), ...")
    ap.add_argument("--jobs", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--what", choices=("all", "attention", "rest"), default="all")
    args = ap.parse_args()
    if not os.environ.get("QWEN35_KERNELS_CACHE"):
        print("note: QWEN35_KERNELS_CACHE is not set; building into the default cache folder")
    jobs = _jobs(args.arch, args.what)
    t0, failed = time.perf_counter(), 0
    with ProcessPoolExecutor(args.jobs) as pool:
        for fut in as_completed([pool.submit(_build, j) for j in jobs]):
            name, secs, err = fut.result()
            failed += bool(err)
            if err or secs > 5:
                print(f"{secs:6.1f} s  {name}  {err}", flush=True)
    print(f"{len(jobs)} builds ({failed} failed) in {time.perf_counter() - t0:.0f} s on {args.jobs} processes")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
