"""The one CUDA-graph capture and timer: capture() (warm-up on a side stream, then the capture) and
graph_replay_ms (device time of a replayed graph), used by the model's decode GEMM choice (model/language.py), the
benchmark suites (benchmarks/common.py), the GPU tests and tools."""

from __future__ import annotations

import torch


def capture(body, *, warmup: int = 1) -> torch.cuda.CUDAGraph:
    """A CUDA graph holding one call of body() (which may launch many kernels). body() runs `warmup` times on a side
    stream first (kernel loads, allocator settling: a capture allows neither)."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(warmup):
            body()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        body()
    return graph


def graph_replay_ms(body, *, warmup: int = 1, replays: int = 3) -> float:
    """Device ms of one replay of the graph of body() (capture()), the best of `replays` replays after one that
    warms the graph."""
    graph = capture(body, warmup=warmup)
    graph.replay()
    best = float("inf")
    for _ in range(replays):
        t0, t1 = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        t0.record()
        graph.replay()
        t1.record()
        t1.synchronize()
        best = min(best, t0.elapsed_time(t1))
    del graph
    return best
