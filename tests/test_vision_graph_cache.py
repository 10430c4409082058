"""The CUDA-graph cache's bounds (count and bytes), checked on CPU with stand-in entries (capture needs a GPU;
tests/test_vision_kernels_model.py checks the graphs themselves on one)."""

from __future__ import annotations

import pytest
import torch

from model.vision_graph import GraphedVisionTower, _Entry


def _entry(nbytes: int) -> _Entry:
    return _Entry(graph=None, pixels=torch.empty(0), out=torch.empty(0), tables={}, nbytes=nbytes)


def test_lru_by_count_and_bytes():
    g = GraphedVisionTower(tower=None, max_graphs=3, max_bytes=100)
    for i in range(3):
        g._cache[(i,)] = _entry(30)
        g._evict()
    assert list(g._cache) == [(0,), (1,), (2,)] and g.cached_bytes == 90
    g._cache.move_to_end((0,))  # a replay makes an entry the most recent
    g._cache[(3,)] = _entry(30)
    g._evict()  # 4 entries > 3 and 120 bytes > 100: the least recently used goes first
    assert list(g._cache) == [(2,), (0,), (3,)]
    g._cache[(4,)] = _entry(95)
    g._evict()  # over the byte bound: evict until it fits, but always keep the newest entry
    assert list(g._cache) == [(4,)]
    g._cache[(5,)] = _entry(500)
    g._evict()
    assert list(g._cache) == [(5,)]  # a single entry larger than the bound is still kept (it was just captured)


def test_key_and_bad_arguments():
    assert GraphedVisionTower._key(torch.tensor([[1, 4, 6], [2, 2, 2]])) == ((1, 4, 6), (2, 2, 2))
    with pytest.raises(ValueError, match="max_graphs"):
        GraphedVisionTower(tower=None, max_graphs=0)


def test_cpu_tower_is_a_clear_error():
    class CpuTower:
        device, dtype = torch.device("cpu"), torch.float32

    with pytest.raises(ValueError, match="CUDA"):
        GraphedVisionTower(CpuTower())(torch.zeros(4, 1536), torch.tensor([[1, 2, 2]]))
