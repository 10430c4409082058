"""The vision tower replayed from CUDA graphs, one graph per grid set, with a bound on how many are kept.

A ViT forward on a small image is hundreds of short kernels, so launch overhead dominates; a graph replays them
in one go. The per-grid tables (position taps, rotary cos/sin, cu_seqlens) are built once when the graph is
captured and stay in the entry, so a replay does no host work but one copy of the pixels in and one copy out.
Each graph keeps its own memory pool (graphs replayed in any order must not share one), so the cache is an LRU
bounded both by count and by the device bytes its entries hold.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

import torch


@dataclass
class _Entry:
    graph: torch.cuda.CUDAGraph
    pixels: torch.Tensor  # static input [N, patch_dim]
    out: torch.Tensor  # static output [N/4, out_hidden]
    tables: dict  # the per-grid tables the graph reads: they must live as long as the graph
    nbytes: int


class GraphedVisionTower:
    """Wraps a `model.vision.VisionTower` on CUDA; call it like the tower: (pixel_values, grid_thw) -> embeds."""

    def __init__(self, tower, *, max_graphs: int = 8, max_bytes: int = 8 << 30):
        if max_graphs < 1:
            raise ValueError(f"max_graphs must be >= 1, got {max_graphs}")
        self.tower, self.max_graphs, self.max_bytes = tower, max_graphs, max_bytes
        self._cache: OrderedDict[tuple, _Entry] = OrderedDict()

    @staticmethod
    def _key(grid_thw: torch.Tensor) -> tuple:
        return tuple(tuple(int(v) for v in row) for row in grid_thw.tolist())

    def __len__(self) -> int:
        return len(self._cache)

    @property
    def cached_bytes(self) -> int:
        return sum(e.nbytes for e in self._cache.values())

    def clear(self) -> None:
        self._cache.clear()
        torch.cuda.empty_cache()

    def __call__(self, pixel_values: torch.Tensor, grid_thw: torch.Tensor) -> torch.Tensor:
        key = self._key(grid_thw)  # grid_thw normally lives on the CPU (the processor's output): no device sync
        entry = self._cache.get(key)
        if entry is None:
            entry = self._capture(pixel_values, grid_thw)
            self._cache[key] = entry
            self._evict()
        else:
            self._cache.move_to_end(key)
        if pixel_values.shape != entry.pixels.shape:
            raise ValueError(f"pixel_values has shape {tuple(pixel_values.shape)}, but grid_thw {list(key)} needs "
                             f"{tuple(entry.pixels.shape)}")
        entry.pixels.copy_(pixel_values, non_blocking=True)
        entry.graph.replay()
        return entry.out.clone()

    def _evict(self) -> None:
        while len(self._cache) > 1 and (len(self._cache) > self.max_graphs or self.cached_bytes > self.max_bytes):
            self._cache.popitem(last=False)

    def _capture(self, pixel_values: torch.Tensor, grid_thw: torch.Tensor) -> _Entry:
        tower = self.tower
        dev = tower.device
        if dev.type != "cuda":
            raise ValueError("GraphedVisionTower needs the tower's weights on a CUDA device")
        pixels = torch.empty(pixel_values.shape, device=dev, dtype=tower.dtype)
        pixels.copy_(pixel_values)
        tables = tower.prepare(grid_thw)  # built once per grid set, outside the graph
        before = torch.cuda.memory_reserved(dev)
        side = torch.cuda.Stream(dev)
        side.wait_stream(torch.cuda.current_stream(dev))
        with torch.cuda.stream(side):  # warm-up: compiles kernels and settles the allocator before capture
            for _ in range(2):
                tower.forward(pixels, tables)
        torch.cuda.current_stream(dev).wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            out = tower.forward(pixels, tables)
        torch.cuda.synchronize(dev)
        nbytes = max(0, torch.cuda.memory_reserved(dev) - before) + pixels.numel() * pixels.element_size()
        return _Entry(graph, pixels, out, tables, nbytes)
