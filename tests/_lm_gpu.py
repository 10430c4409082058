"""Tiny random-weight language models for the GPU tests of the kernels backend (tests/test_lm_kernels.py,
tests/test_lm_moe.py): one set of fp32 weights per config, a model per (backend, dtype) built once."""

from __future__ import annotations

import torch

import model as M
from model.config import ModelConfig
from model.loader import expected_shapes


# the tiny dense checkpoint of the GPU model tests: 4 layers (2 DeltaNet, 2 gated attention), real head dims
TINY_DENSE = dict(
    model_type="qwen3_5", tie_word_embeddings=False, image_token_id=500, video_token_id=501,
    vision_start_token_id=502, vision_end_token_id=503,
    text_config=dict(vocab_size=512, hidden_size=256, intermediate_size=512, num_hidden_layers=4,
                     layer_types=["linear_attention", "full_attention", "linear_attention", "full_attention"],
                     num_attention_heads=4, num_key_value_heads=2, head_dim=256, linear_conv_kernel_dim=4,
                     linear_key_head_dim=128, linear_value_head_dim=128, linear_num_key_heads=2,
                     linear_num_value_heads=4,
                     rope_parameters=dict(rope_type="default", rope_theta=1e7, partial_rotary_factor=0.25,
                                          mrope_interleaved=True, mrope_section=[11, 11, 10])),
    vision_config=dict(depth=1, hidden_size=128, intermediate_size=256, num_heads=2, out_hidden_size=256,
                       num_position_embeddings=64),
)


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


def rows_batch(lengths=(37, 12, 64), seed=0):
    """Left-padded rows of different lengths; 3 rows, so the graph path pads the batch to its bucket of 4 with an
    idle row (a zero-length prefill segment through every kernel). Returns (rows, ids, mask)."""
    g = torch.Generator().manual_seed(seed)
    rows = [torch.randint(0, 500, (n,), generator=g).tolist() for n in lengths]
    S = max(lengths)
    ids = torch.zeros(len(rows), S, dtype=torch.long)
    mask = torch.zeros(len(rows), S, dtype=torch.long)
    for b, r in enumerate(rows):
        ids[b, S - len(r):] = torch.tensor(r)
        mask[b, S - len(r):] = 1
    return rows, ids, mask


def check_logits_match_reference(model_for: TinyModels, dtype) -> None:
    """Kernels-backend logits against the reference backend's on a ragged batch: fp32 max abs diff < 1e-3 of
    max |ref|, bf16 relative L2 < 5e-2; every real position finite."""
    _, ids, mask = rows_batch()
    ref = model_for("reference", dtype).logits(ids, attention_mask=mask).float()
    got = model_for("kernels", dtype).logits(ids, attention_mask=mask).float()
    real = mask.bool().cuda()
    assert torch.isfinite(got[real]).all()
    if dtype == torch.float32:
        err = float((got[real] - ref[real]).abs().max() / ref[real].abs().max())
        print(f"\nfp32 logits max rel diff {err:.2e}")
        assert err < 1e-3
    else:
        err = float((got[real] - ref[real]).norm() / ref[real].norm())
        print(f"\nbf16 logits rel L2 {err:.2e}")
        assert err < 5e-2


def check_greedy_matches_reference_fp32(model_for: TinyModels) -> None:
    """16 greedy tokens on the kernels backend identical to the reference backend's, fp32, ragged batch."""
    _, ids, mask = rows_batch()
    ref = model_for("reference").generate_ids(ids, attention_mask=mask, max_new_tokens=16, eos_token_ids=[])
    m = model_for("kernels")
    got = m.generate_ids(ids, attention_mask=mask, max_new_tokens=16, eos_token_ids=[])
    print(f"\ndecode mode: {m.last_decode_mode}")
    assert torch.equal(got, ref), f"\nours {got[:, ids.shape[1]:].tolist()}\nref  {ref[:, ids.shape[1]:].tolist()}"
