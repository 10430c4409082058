"""Tiny random-weight language models for the GPU tests of the kernels backend (tests/test_lm_kernels.py,
tests/test_lm_moe.py): one set of fp32 weights per config, a model per (backend, dtype) built once."""

from __future__ import annotations

import torch

import model as M
from model.config import ModelConfig
from model.loader import expected_shapes


def random_weights(raw: dict) -> dict:
    """fp32 CPU weights: linears ~N(0, 0.05), (1+w) norms ~N(0, 0.1), gated-norm weight ~1 + N(0, 0.1); a MoE
    router ~N(0, 0.5), so the top-k is well separated (fp32 summation order cannot swap two experts)."""
    g = torch.Generator().manual_seed(0)
    weights = {}
    for name, shape in expected_shapes(ModelConfig.from_dict(raw)).items():
        t = torch.randn(shape, generator=g)
        if name.endswith("A_log"):
            t = torch.empty(shape).uniform_(0.0, 2.7, generator=g)
        elif name.endswith("dt_bias"):
            t = 1.0 + 0.1 * t
        elif name.endswith("linear_attn.norm.weight") or "visual" in name and "norm" in name:
            t = 1.0 + 0.1 * t if name.endswith("weight") else 0.1 * t
        elif name.endswith("norm.weight") or name.endswith("layernorm.weight"):
            t = 0.1 * t
        elif name.endswith("conv1d.weight"):
            t = 0.3 * t
        elif name.endswith("mlp.gate.weight"):
            t = 0.5 * t
        else:
            t = 0.05 * t
        weights[name] = t
    return weights


class TinyModels:
    """model_for(backend, dtype, graphs): the config's model on the GPU, built once per (backend, dtype) and reset
    (graphs on or off, one prefill chunk, decode blocks of 8, no cached sessions) on every call."""

    def __init__(self, raw: dict):
        self.raw, self._weights, self._models = raw, None, {}

    def __call__(self, backend: str, dtype=torch.float32, graphs: bool = True) -> M.Model:
        key = (backend, dtype)
        if key not in self._models:
            if self._weights is None:
                self._weights = random_weights(self.raw)
            w = {k: v.to("cuda", dtype) for k, v in self._weights.items()}
            self._models[key] = M.Model(ModelConfig.from_dict(self.raw), w, backend=backend,
                                        cuda_graphs=backend == "kernels")
        m = self._models[key]
        m.cuda_graphs = graphs and backend == "kernels"
        m.prefill_chunk, m.decode_block = 8192, 8
        m._sessions.clear()
        return m
