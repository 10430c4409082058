"""Shared benchmark helpers: event timing, the card's measured ceilings, and results JSON.

Every suite times our kernel beside its peer in the same process and reports ratios plus the roofline
(achieved GB/s or TFLOP/s over the ceiling measured in the same run).
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import statistics
import subprocess
from functools import lru_cache
from pathlib import Path

import torch

RESULTS_DIR = Path(__file__).resolve().parent / "results"


def cuda_time_ms(fn, *, warmup: int = 5, iters: int = 30) -> float:
    """Median device time of fn() in ms, each call bracketed by CUDA events (after warm-up)."""
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(iters):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        fn()
        b.record()
        b.synchronize()
        times.append(a.elapsed_time(b))
    return statistics.median(times)


def queued_ms(fn, n: int = 20) -> float:
    """Device time per call with n calls queued back to back (the host's launch cost hidden, as in a CUDA graph):
    the best of 3 such batches, after warm-up."""
    for _ in range(3):
        fn()
    torch.cuda.synchronize()
    best = float("inf")
    for _ in range(3):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        for _ in range(n):
            fn()
        b.record()
        b.synchronize()
        best = min(best, a.elapsed_time(b) / n)
    return best


def graph_ms(fn, n: int = 20) -> float:
    """Device time per call of n calls captured in one CUDA graph and replayed: no host cost at all, so a short
    kernel behind a slow Python wrapper is timed as the GPU runs it (how the vision tower runs). Best of 3 replays,
    after warm-up on a side stream (as capture requires): kernels.runtime.timing.graph_replay_ms."""
    from kernels.runtime.timing import graph_replay_ms

    def body():
        for _ in range(n):
            fn()
    return graph_replay_ms(body, warmup=1 if n >= 3 else 3) / n


@lru_cache(maxsize=1)
def copy_bandwidth_TBps() -> float:
    """Device-to-device copy of 2 GiB, counting bytes read plus written: the bandwidth ceiling."""
    n = 1 << 30
    src = torch.empty(n, dtype=torch.uint8, device="cuda").random_(0, 255)
    dst = torch.empty_like(src)
    ms = cuda_time_ms(lambda: dst.copy_(src), warmup=3, iters=20)
    del src, dst
    return 2 * n / (ms * 1e-3) / 1e12


@lru_cache(maxsize=1)
def bf16_gemm_TFLOPs() -> float:
    """8192^3 bf16 matrix product on random data through cuBLAS: the matrix-unit ceiling."""
    n = 8192
    a = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    ms = cuda_time_ms(lambda: a @ b, warmup=3, iters=10)
    return 2 * n**3 / (ms * 1e-3) / 1e12


def git_commit() -> str:
    """The commit measured: $QWEN35_COMMIT (set it where the tree has no .git, e.g. the GPU machine), else git."""
    if os.environ.get("QWEN35_COMMIT"):
        return os.environ["QWEN35_COMMIT"]
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                             cwd=Path(__file__).resolve().parent, timeout=10)
        rev = out.stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain"], capture_output=True, text=True,
                               cwd=Path(__file__).resolve().parent, timeout=10).stdout.strip()
        return (rev + ("-dirty" if dirty else "")) if rev else "unknown"
    except Exception:
        return "unknown"


def card_name() -> str:
    return torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"


def write_results(suite: str, records: list[dict], extra: dict | None = None, out_dir: Path | None = None) -> Path:
    """Write benchmarks/results/<suite>-<card>-<date>.json with card, commit, date, versions and records."""
    out_dir = Path(out_dir) if out_dir else RESULTS_DIR
    out_dir.mkdir(parents=True, exist_ok=True)
    today = _dt.date.today().isoformat()
    card = card_name()
    payload = {
        "suite": suite, "card": card, "commit": git_commit(), "date": today,
        "torch": torch.__version__, "cuda": torch.version.cuda,
        **(extra or {}), "records": records,
    }
    slug = card.replace("NVIDIA ", "").replace(" ", "_").replace("/", "_")
    path = out_dir / f"{suite}-{slug}-{today}.json"
    path.write_text(json.dumps(payload, indent=1))
    return path


# --------------------------------------------------------------------------------------- registry benchmarks
BENCH_TOKENS = (4096, 16384)  # rows of the real-shape cases: a 1024^2 image / a 4k prompt, and a 2048^2 image


def family_params(family: str, tokens=BENCH_TOKENS) -> list:
    """pytest params (op, tokens, index, impl) for every op of `family` in kernels.registry that has a kernel
    and real shapes (x_real): each of its kernel variants and each peer (x_peers), at each token count. The
    cases are enumerated on tiny CPU inputs (their number and order do not depend on `tokens`)."""
    import pytest

    from kernels.registry import by_family

    out = []
    for spec in by_family().get(family, []):
        real = spec.hook("real")
        if not spec.kernels or real is None:
            continue
        for index, case in enumerate(_real(spec, 8)):
            peers = spec.hook("peers")
            names = list(spec.kernels) + (list(peers(case.on("cpu"))) if peers else [])
            for t in tokens:
                out += [pytest.param(spec.name, t, index, impl, id=f"{spec.name}-{index}-{t}-{impl}")
                        for impl in names]
    return out


def _real(spec, tokens: int, index: int | None = None, dtype=torch.bfloat16):
    cases = spec.hook("real")(dtype, tokens=tokens) if spec.dtypes else spec.hook("real")(tokens=tokens)
    return cases if index is None else cases[index]


def impl_fn(spec, impl: str, case, device="cuda"):
    """A zero-argument callable running `impl` (a kernel variant or a peer's name) on the case, on `device`."""
    args, kwargs = case.on(device), case.kwargs_on(device)
    if impl in spec.kernels:
        fn = spec.kernels[impl]
        return lambda: fn(*args, **kwargs)
    return spec.hook("peers")(args)[impl]


def family_bench(family: str):
    """The pytest-benchmark test of a family: every (op, tokens, case, implementation) of family_params. A
    benchmarks/bench_<family>.py holds `test_bench = family_bench("<family>")`."""
    import pytest

    @pytest.mark.bench
    @pytest.mark.gpu
    @pytest.mark.parametrize("op,tokens,index,impl", family_params(family))
    def test_bench(benchmark, op, tokens, index, impl):
        run_family_bench(benchmark, op, tokens, index, impl)
    return test_bench


def run_family_bench(benchmark, op: str, tokens: int, index: int, impl: str) -> None:
    """One pytest-benchmark run: op's real case `index` at `tokens` rows, implementation `impl`; min_bytes and
    flops (kernels.registry) go to extra_info for the roofline."""
    from kernels.registry import REGISTRY

    spec = REGISTRY[op]
    case = _real(spec, tokens, index)
    fn = impl_fn(spec, impl, case)
    benchmark.group = f"{case.label}-bf16"
    benchmark.extra_info.update(min_bytes=spec.bytes_of(case), flops=spec.flops_of(case))

    def run():
        fn()
        torch.cuda.synchronize()

    benchmark.pedantic(run, warmup_rounds=3, rounds=30)


def time_registry(ops, tokens=BENCH_TOKENS, dtype=torch.bfloat16, log=print) -> list[dict]:
    """Time every kernel variant and peer of each op's real cases, each beside the others in this process:
    device time of 20 calls replayed from a CUDA graph (queued launches where a call cannot be captured), GB/s and
    % of the copy ceiling, TFLOP/s and % of the bf16 GEMM ceiling where the op has FLOPs, and the ratio to the
    fastest peer. Returns one record per (case, implementation)."""
    from kernels.registry import REGISTRY

    copy = copy_bandwidth_TBps()
    gemm = bf16_gemm_TFLOPs()
    log(f"ceilings on {card_name()}: copy {copy * 1e3:.0f} GB/s, bf16 GEMM {gemm:.0f} TFLOP/s")
    log(f"{'case':44s} {'impl':22s} {'us':>9s} {'GB/s':>7s} {'%copy':>6s} {'TFLOP/s':>8s} {'x peer':>7s}")
    records = []
    for op in ops:
        spec = REGISTRY[op]
        if not spec.kernels or spec.hook("real") is None:
            continue
        for t in tokens:
            for case in _real(spec, t, dtype=dtype):
                args, kwargs = case.on("cuda"), case.kwargs_on("cuda")
                fns = {v: (lambda f: lambda: f(*args, **kwargs))(f) for v, f in spec.kernels.items()}
                fns.update(spec.hook("peers")(args) if spec.hook("peers") else {})
                names, times = list(fns), {}
                for impl in names + names[::-1]:  # two passes, the second reversed: keep each one's best
                    fn = fns[impl]
                    try:
                        ms, how = graph_ms(fn), "graph"
                    except Exception:  # a host sync or a non-capturable path: queued launches instead
                        torch.cuda.synchronize()
                        ms, how = queued_ms(fn), "queued"
                    times[impl] = min((ms, how), times.get(impl, (float("inf"), how)))
                nbytes, flops = spec.bytes_of(case), spec.flops_of(case)
                best_peer = min((times[n][0] for n in names if n not in spec.kernels), default=None)
                for impl in names:
                    ms, how = times[impl]
                    s = ms * 1e-3
                    rec = {"op": op, "case": case.label, "tokens": t, "dtype": str(dtype).replace("torch.", ""),
                           "impl": impl, "us": round(ms * 1e3, 2), "timing": how, "min_bytes": nbytes,
                           "GBps": round(nbytes / s / 1e9, 1), "pct_of_copy": round(100 * nbytes / s / 1e12 / copy, 1),
                           "TFLOPs": round(flops / s / 1e12, 1) if flops else None,
                           "pct_of_gemm": round(100 * flops / s / 1e12 / gemm, 1) if flops else None,
                           "x_best_peer": round(best_peer / ms, 2) if best_peer and impl in spec.kernels else None}
                    records.append(rec)
                    log(f"{case.label[:44]:44s} {impl[:22]:22s} {rec['us']:9.1f} {rec['GBps']:7.0f} "
                        f"{rec['pct_of_copy']:6.1f} {rec['TFLOPs'] or 0:8.1f} {rec['x_best_peer'] or 0:7.2f}")
    return records
