"""Glue family checks beyond the generic ones (property_tests/test_ops.py): scatter_image_embeds copies bits,
signed zeros, infinities and subnormals included."""

from __future__ import annotations

import pytest
import torch

from kernels.registry import REGISTRY
from property_tests.harness import compare


@pytest.mark.sim
def test_scatter_image_embeds_bf16_bits(device):
    spec = REGISTRY["scatter_image_embeds"]
    tok = torch.tensor([[1.5, -0.0], [3.0, float("inf")], [2.0, -7.0]], dtype=torch.bfloat16)
    img = torch.tensor([[-1.0, 1e-40]], dtype=torch.bfloat16)
    mask = torch.tensor([False, True, False])
    got = spec.kernels["numba"](tok.to(device), img.to(device), mask.to(device))
    compare(spec, got, spec.reference(tok, img, mask), "bf16 bits")
