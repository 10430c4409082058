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
    after warm-up on a side stream (as capture requires)."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(3):
            fn()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for _ in range(n):
            fn()
    graph.replay()
    torch.cuda.synchronize()
    best = float("inf")
    for _ in range(3):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        graph.replay()
        b.record()
        b.synchronize()
        best = min(best, a.elapsed_time(b) / n)
    del graph
    return best


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
