"""Vision family checks beyond the generic ones (property_tests/test_ops.py runs every vision kernel against its
reference on random grids and inputs, with and without the size hints): what a wrong hint or index does."""

from __future__ import annotations

import pytest
import torch

from kernels.registry import REGISTRY
from property_tests.cases.vision import build_add_pos_embed


@pytest.mark.sim
def test_explicit_count_past_the_grid_is_visible(device):
    """A num_patches larger than the grid's total must not read out of bounds: the extra rows are NaN."""
    g = torch.tensor([[1, 2, 4]], device=device)
    _, w = REGISTRY["vision_pos_taps"].kernels["numba"](g, num_patches=11)
    cos, _ = REGISTRY["vision_rope_cos_sin"].kernels["numba"](g, 8, num_patches=11)
    assert w[:, 8:].isnan().all() and not w[:, :8].isnan().any()
    assert cos[8:].isnan().all() and not cos[:8].isnan().any()


@pytest.mark.gpu
def test_add_pos_embed_bad_index_gives_nan_rows():
    """An out-of-range tap index must not read out of bounds: the nvrtc kernel turns that row into NaN."""
    x, table, index, weight = build_add_pos_embed(8, 64, torch.float32, table_rows=16).on("cuda")
    index[2, 3] = 16
    index[0, 5] = -1
    y = REGISTRY["add_pos_embed"].kernels["nvrtc"](x, table, index, weight)
    assert y.isnan().all(1).tolist() == [i in (3, 5) for i in range(8)]
