"""One-shot GPU check of the vision-tower kernels: compile, correctness, timings beside torch.

    python3 tools/gpu_check.py [--ops layer_norm,bias_gelu] [--bench] [--compile] [--out DIR]
    python3 tools/gpu_check.py --tiny        # one small call of each NVRTC kernel (for compute-sanitizer)

1. builds every NVRTC source for this GPU (cold compile time per source);
2. runs each kernel variant against the reference on a few shapes (1 row, odd widths, the real widths, each
   dtype, bias None, misaligned pointers) with NaN-poisoned outputs;
3. with --bench: times each op beside torch eager (and torch.compile with --compile) on the real ViT shapes
   of the registry (property_tests/cases/<family>.py, x_real and x_peers), prints device time, GB/s, % of device copy bandwidth and the ratio to
   torch, measures the host launch overhead, and writes results JSON (benchmarks/results/, or --out).

Device time is taken with CUDA events around a loop of calls enqueued behind `torch.cuda._sleep`, so it
measures the GPU, not Python's launch rate (a single evented call of a 15 us kernel would mostly time the
host). `single_call_us` (benchmarks.common.cuda_time_ms of one call) is reported beside it.
"""

from __future__ import annotations

import argparse
import functools
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

import kernels  # noqa: E402,F401
from benchmarks.common import _real, copy_bandwidth_TBps, cuda_time_ms, impl_fn, write_results  # noqa: E402
from kernels.registry import REGISTRY  # noqa: E402
from kernels.runtime import nvrtc  # noqa: E402
from kernels.runtime.dispatch import SOURCES  # noqa: E402
from property_tests.cases import activations as _A, norms as _N, rope as _R, vision as _V  # noqa: E402

S = argparse.Namespace(**{k: getattr(m, k) for m in (_N, _A, _V, _R) for k in dir(m) if k.startswith('build_')},
                       HEAD_DIMS=_R.HEAD_DIMS)  # the input builders of the vision ops' families

NORMS = sys.modules["kernels.norms"]

OPS = ("layer_norm", "add_bias_layer_norm", "bias_gelu", "add_pos_embed", "qkv_bias_rope")
DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def compile_all() -> dict:
    arch = nvrtc.device_arch()
    times = {}
    for name, src in SOURCES.items():
        t0 = time.perf_counter()
        nvrtc.compile_source(nvrtc.read_source(name), src.exprs, arch, use_disk_cache=False)
        times[name] = round(time.perf_counter() - t0, 2)
        src.kernel(src.exprs[0])  # warm the cache the wrappers use (this compile is the disk-cached one)
        print(f"  compiled {name:16s} {len(src.exprs):3d} instantiations for {arch} in {times[name]:.2f} s")
    return times


def correctness_cases(op: str):
    """A few cases per dtype: 1 row, odd widths, the real widths, bias None, a tiny table."""
    for dt in DTYPES:
        if op == "layer_norm":
            yield S.build_layer_norm(1, 1152, dt, 1)
            yield S.build_layer_norm(37, 1151, dt, 2, affine=(True, False))
            yield S.build_layer_norm(64, 768, dt, 3, scale=10.0, shift=5.0)
            yield S.build_layer_norm(5, 9001, dt, 4)  # the wide-row (loop) kernel
            yield S.build_layer_norm(300, 7, dt, 5)
        elif op == "add_bias_layer_norm":
            yield S.build_add_bias_layer_norm(1, 1152, dt, 1)
            yield S.build_add_bias_layer_norm(33, 1150, dt, 2, with_bias=False)
            yield S.build_add_bias_layer_norm(64, 1024, dt, 3, affine=(False, False))
            yield S.build_add_bias_layer_norm(3, 5000, dt, 4)
        elif op == "bias_gelu":
            yield S.build_bias_gelu(1, 4304, dt, 1)
            yield S.build_bias_gelu(65, 4305, dt, 2, scale=3.0, approximate="none")
            yield S.build_bias_gelu(128, 3072, dt, 3, scale=3.0, with_bias=False)
            yield S.build_bias_gelu(17, 4608, dt, 4, approximate="none")
        elif op == "add_pos_embed":
            yield S.build_add_pos_embed(1, 1152, dt, 1)
            yield S.build_add_pos_embed(77, 1151, dt, 2)
            yield S.build_add_pos_embed(64, 768, dt, 3, table_rows=3)
        elif op == "qkv_bias_rope":
            for i, hd in enumerate(S.HEAD_DIMS):
                yield S.build_qkv_bias_rope(1 + 40 * i, 16 - 3 * i, hd, dt, i, with_bias=bool(i % 2))


def _tuple(x):
    return tuple(x) if isinstance(x, (tuple, list)) else (x,)


def check_correctness(ops) -> list[dict]:
    rows, failures = [], 0
    for op in ops:
        spec = REGISTRY[op]
        for case in correctness_cases(op):
            args = case.on("cuda")
            refs = _tuple(spec.reference(*args))
            variants = list(spec.kernels.items())
            if op in ("layer_norm", "add_bias_layer_norm"):  # the CTA kernel with each R as well
                for r in (1, 2):
                    variants.append((f"nvrtc-cta-R{r}", functools.partial(getattr(NORMS, op), cta_rows=r)))
            for variant, fn in variants:
                kw = {"out": case.nan_outs("cuda")} if variant.startswith("nvrtc") else {}
                try:
                    got = _tuple(fn(*args, **kw))
                    torch.cuda.synchronize()
                    errs = [spec.tol[args[0].dtype].errors(g, r) for g, r in zip(got, refs)]
                    ok = len(got) == len(refs) and all(spec.tol[args[0].dtype].ok(g, r) for g, r in zip(got, refs))
                    msg = " ".join(f"rel={e[0]:.2e} max={e[1]:.2e}" for e in errs)
                except Exception as e:  # report and go on
                    ok, msg = False, f"{type(e).__name__}: {e}"
                failures += not ok
                rows.append({"op": op, "variant": variant, "case": case.label, "dtype": str(args[0].dtype),
                             "ok": ok, "errors": msg})
                if not ok:
                    print(f"  FAIL {op}[{variant}] {case.label} {args[0].dtype}: {msg}")
        n_op = [r for r in rows if r["op"] == op]
        print(f"  {op:22s} {sum(r['ok'] for r in n_op)}/{len(n_op)} cases within tolerance")
    # misaligned pointers (narrow-vector path)
    for op in ops:
        case = _real(REGISTRY[op], 33)[-1]  # the 9B/27B widths
        args = []
        for a in case.args:
            if isinstance(a, torch.Tensor) and a.dim() == 2:
                buf = torch.empty(a.numel() + 1, dtype=a.dtype, device="cuda")
                v = buf[1:].view(a.shape)
                v.copy_(a)
                args.append(v)
            else:
                args.append(a.cuda() if isinstance(a, torch.Tensor) else a)
        refs = _tuple(REGISTRY[op].reference(*args))
        got = _tuple(REGISTRY[op].kernels["nvrtc"](*args))
        ok = all(REGISTRY[op].tol[torch.bfloat16].ok(g, r) for g, r in zip(got, refs))
        failures += not ok
        print(f"  {op:22s} misaligned pointers: {'ok' if ok else 'FAIL'}")
    print(f"correctness: {failures} failure(s)")
    return rows


def device_us(fn, iters: int = 30, reps: int = 5) -> float:
    """Median over reps of (events around `iters` calls queued behind a GPU sleep) / iters, in us."""
    fn()
    torch.cuda.synchronize()
    out = []
    for _ in range(reps):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        torch.cuda._sleep(20_000_000)  # ~10 ms: the host enqueues everything before the GPU gets there
        a.record()
        for _ in range(iters):
            fn()
        b.record()
        b.synchronize()
        out.append(a.elapsed_time(b) * 1e3 / iters)
    return statistics.median(out)


def host_us(fn, iters: int = 2000) -> float:
    """Wall time per call of back-to-back launches of a tiny problem (the host launch rate)."""
    for _ in range(20):
        fn()
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(iters):
        fn()
    torch.cuda.synchronize()
    return (time.perf_counter() - t0) / iters * 1e6


def torch_compiled(op: str, args: tuple):
    if op == "layer_norm":
        x, w, b, eps = args
        f = torch.compile(lambda x, w, b: torch.nn.functional.layer_norm(x, (x.shape[1],), w, b, eps), dynamic=False)
        return lambda: f(x, w, b)
    if op == "bias_gelu":
        x, bias, approximate = args
        f = torch.compile(lambda x, b: torch.nn.functional.gelu(x + b, approximate=approximate), dynamic=False)
        return lambda: f(x, bias)
    return None


def bench(ops, with_compile: bool) -> tuple[list[dict], dict]:
    copy = copy_bandwidth_TBps()
    print(f"\ndevice copy bandwidth (2 GiB D2D, read+write): {copy * 1e3:.0f} GB/s")
    records = []
    hdr = f"{'case':34s} {'impl':13s} {'dev us':>8s} {'1-call us':>9s} {'GB/s':>7s} {'%copy':>6s} {'vs torch':>8s}"
    print(hdr + "\n" + "-" * len(hdr))
    shapes = [(op, t, c) for op in ops for t in (4096, 16384) for c in _real(REGISTRY[op], t)]
    for op, tokens, case in shapes:
        args = case.on("cuda")
        spec = REGISTRY[op]
        nbytes = spec.bytes_of(case)
        fns = {impl: impl_fn(spec, impl, case) for impl in list(spec.hook("peers")(args)) + list(spec.kernels)}
        if with_compile and tokens == 16384 and args[0].shape[1] in (1152, 4304):
            try:
                t0 = time.perf_counter()
                cf = torch_compiled(op, args)
                if cf is not None:
                    cf()
                    torch.cuda.synchronize()
                    fns["torch.compile"] = cf
                    print(f"  (torch.compile {op}: {time.perf_counter() - t0:.1f} s to compile)")
            except Exception as e:
                print(f"  torch.compile {op} failed: {type(e).__name__}: {e}")
        if op in ("layer_norm", "add_bias_layer_norm"):  # the CTA kernel too (kernels.norms picks the warp one)
            for r in (1, 2):
                fns[f"nvrtc-cta-R{r}"] = functools.partial(getattr(NORMS, op), *args, cta_rows=r)
        t_torch = None
        for impl, fn in fns.items():
            us = device_us(fn)
            single = cuda_time_ms(fn, warmup=3, iters=20) * 1e3
            t_torch = us if impl == "torch" else t_torch
            gbs = nbytes / (us * 1e-6) / 1e9
            rec = {"op": op, "case": case.label, "dtype": "bfloat16", "impl": impl,
                   "device_us": round(us, 2), "single_call_us": round(single, 2), "min_bytes": nbytes,
                   "GBps": round(gbs, 1), "pct_of_copy": round(100 * gbs / (copy * 1e3), 1),
                   "speedup_vs_torch_eager": round(t_torch / us, 2) if t_torch else None}
            records.append(rec)
            print(f"{rec['case']:34s} {impl:13s} {us:8.1f} {single:9.1f} {gbs:7.0f} {rec['pct_of_copy']:6.1f} "
                  f"{rec['speedup_vs_torch_eager'] or 0:8.2f}")
    # host launch overhead on a 1-row problem
    print("\nhost launch overhead (1 x 1152 bf16, wall per call, back-to-back):")
    overhead = {}
    case = S.build_layer_norm(1, 1152, torch.bfloat16).on("cuda")
    x, w, b, eps = case
    y = torch.empty_like(x)
    src = SOURCES["norms.cu"]
    k = src.kernel("norms::layer_norm_warp_kernel<__nv_bfloat16, 8, 5, false>")
    raw = (x.data_ptr(), 0, 0, w.data_ptr(), b.data_ptr(), y.data_ptr(), 0, nvrtc.i32(1), nvrtc.i32(1152), nvrtc.f32(eps))
    for name, fn in (("torch F.layer_norm", lambda: torch.nn.functional.layer_norm(x, (1152,), w, b, eps)),
                     ("kernels.layer_norm", lambda: kernels.layer_norm(x, w, b, eps)),
                     ("kernels.layer_norm out=", lambda: kernels.layer_norm(x, w, b, eps, out=y)),
                     ("nvrtc.launch only", lambda: nvrtc.launch(k, (1, 1, 1), (32, 4, 1), 0, *raw))):
        overhead[name] = round(host_us(fn), 2)
        print(f"  {name:26s} {overhead[name]:7.2f} us")
    for op in ops:
        if "numba" in REGISTRY[op].kernels and op in ("layer_norm", "bias_gelu"):
            c = (S.build_layer_norm(1, 1152, torch.bfloat16) if op == "layer_norm"
                 else S.build_bias_gelu(1, 1152, torch.bfloat16)).on("cuda")
            fn = REGISTRY[op].kernels["numba"]
            overhead[f"numba {op}"] = round(host_us(lambda: fn(*c), iters=200), 2)
            print(f"  {'numba ' + op:26s} {overhead[f'numba {op}']:7.2f} us")
    return records, {"copy_TBps": round(copy, 3), "host_overhead_us": overhead}


def tiny(ops) -> None:
    """One small call of each NVRTC kernel instantiation family (vector widths, tails, no-bias, loop kernel)."""
    cases = {
        "layer_norm": [S.build_layer_norm(3, 1152, torch.bfloat16), S.build_layer_norm(7, 37, torch.float16),
                       S.build_layer_norm(2, 1100, torch.float32), S.build_layer_norm(1, 1500, torch.bfloat16),
                       S.build_layer_norm(5, 1016, torch.float32)],
        "add_bias_layer_norm": [S.build_add_bias_layer_norm(5, 1152, torch.bfloat16),
                                S.build_add_bias_layer_norm(2, 1151, torch.float32, with_bias=False),
                                S.build_add_bias_layer_norm(1, 1501, torch.float16)],
        "bias_gelu": [S.build_bias_gelu(5, 4304, torch.bfloat16), S.build_bias_gelu(3, 33, torch.float32,
                                                                                    approximate="none"),
                      S.build_bias_gelu(9, 6, torch.float16, with_bias=False)],
        "add_pos_embed": [S.build_add_pos_embed(5, 1152, torch.bfloat16, table_rows=9),
                          S.build_add_pos_embed(3, 13, torch.float32, table_rows=2)],
        "qkv_bias_rope": [S.build_qkv_bias_rope(5, 3, 72, torch.bfloat16),
                          S.build_qkv_bias_rope(2, 2, 80, torch.float16, with_bias=False),
                          S.build_qkv_bias_rope(3, 1, 128, torch.float32), S.build_qkv_bias_rope(2, 2, 64, torch.bfloat16)],
    }
    for op in ops:
        for case in cases[op]:
            for r in ((None, 1, 2) if op in ("layer_norm", "add_bias_layer_norm") else (None,)):
                fn = REGISTRY[op].kernels["nvrtc"] if r is None else functools.partial(getattr(NORMS, op), cta_rows=r)
                fn(*case.on("cuda"))
    torch.cuda.synchronize()
    print(f"tiny: {sum(len(cases[o]) for o in ops)} calls done")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--ops", default=",".join(OPS))
    ap.add_argument("--bench", action="store_true")
    ap.add_argument("--compile", action="store_true", help="also time torch.compile (layer_norm, bias_gelu)")
    ap.add_argument("--tiny", action="store_true", help="one small call per kernel, then exit")
    ap.add_argument("--out", default=os.environ.get("OUT"), help="results directory (default benchmarks/results)")
    a = ap.parse_args()
    ops = tuple(o for o in a.ops.split(",") if o)
    if not torch.cuda.is_available():
        print("no CUDA device")
        return 2
    if a.tiny:
        tiny(ops)
        return 0
    import cuda.core

    print(f"{torch.cuda.get_device_name()} | torch {torch.__version__} | cuda-core {cuda.core.__version__} | "
          f"NVRTC {nvrtc.nvrtc_version()}")
    compile_s = compile_all()
    rows = check_correctness(ops)
    failed = sum(not r["ok"] for r in rows)
    if a.bench:
        records, extra = bench(ops, a.compile)
        extra.update({"compile_s": compile_s, "correctness_failures": failed})
        path = write_results("vision_ops", records, extra, out_dir=Path(a.out) if a.out else None)
        print(f"\nwrote {path}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
