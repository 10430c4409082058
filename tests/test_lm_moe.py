"""The MoE language model (qwen3_5_moe) on the `kernels` backend against the `reference` backend, end to end, and
the kernels' MoE layer against HF's Qwen3_5MoeSparseMoeBlock (GPU only).

A tiny random MoE checkpoint with the real per-head widths (as tests/test_lm_kernels.py) and 16 experts, top 4,
expert width 64, shared expert 96, so every MoE layer routes tokens to some experts and leaves others empty.
Bounds:
  * placement: no MoE op on the reference (moe_router_topk, moe_topk, moe_mlp run the kernels);
  * one-pass logits, kernels vs reference: fp32 max|diff| / max|ref| < 1e-3; bf16 relative L2 < 5e-2;
  * fp32 greedy tokens identical to the reference backend's (a batch of rows of different lengths);
  * the CUDA-graph decode (bf16) captured and equal to the eager decode token for token;
  * the kernels' layer (fused router top-k + moe_mlp with the shared expert) vs HF's block in fp32: same experts,
    output 1e-4 relative; bf16 at the 35B-A3B widths (fewer experts) relative L2 < 2e-2.
"""

from __future__ import annotations

import pytest
import torch

from tests._lm_gpu import (TinyModels, check_greedy_matches_reference_fp32, check_logits_match_reference,
                           rows_batch)

pytestmark = pytest.mark.gpu

MOE = dict(num_experts=16, num_experts_per_tok=4, moe_intermediate_size=64, shared_expert_intermediate_size=96)
RAW = dict(
    model_type="qwen3_5_moe", tie_word_embeddings=False, image_token_id=500, video_token_id=501,
    vision_start_token_id=502, vision_end_token_id=503,
    text_config=dict(vocab_size=512, hidden_size=256, num_hidden_layers=4,
                     layer_types=["linear_attention", "full_attention", "linear_attention", "full_attention"],
                     num_attention_heads=4, num_key_value_heads=2, head_dim=256, linear_conv_kernel_dim=4,
                     linear_key_head_dim=128, linear_value_head_dim=128, linear_num_key_heads=2,
                     linear_num_value_heads=4, **MOE,
                     rope_parameters=dict(rope_type="default", rope_theta=1e7, partial_rotary_factor=0.25,
                                          mrope_interleaved=True, mrope_section=[11, 11, 10])),
    vision_config=dict(depth=1, hidden_size=128, intermediate_size=256, num_heads=2, out_hidden_size=256,
                       num_position_embeddings=64),
)
MOE_OPS = ("moe_router_topk", "moe_topk", "moe_mlp")
model_for = TinyModels(RAW)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_placement_runs_moe_on_kernels(dtype):
    where = model_for("kernels", dtype).placement(why=True)
    assert all(where[n] == "kernels" for n in MOE_OPS), {n: where[n] for n in MOE_OPS}


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_logits_kernels_match_reference(dtype):
    check_logits_match_reference(model_for, dtype)


def test_greedy_tokens_match_reference_fp32():
    check_greedy_matches_reference_fp32(model_for)


def test_graph_decode_equals_eager_bf16():
    _, ids, mask = rows_batch((37, 12, 64, 5))  # a full bucket: both paths run the same shapes
    eager = model_for("kernels", torch.bfloat16, graphs=False).generate_ids(ids, attention_mask=mask,
                                                                            max_new_tokens=20, eos_token_ids=[])
    m = model_for("kernels", torch.bfloat16, graphs=True)
    assert not m.lm.capture_blockers(), m.lm.capture_blockers()
    got = m.generate_ids(ids, attention_mask=mask, max_new_tokens=20, eos_token_ids=[])
    assert m.last_decode_mode == "graph", m.last_decode_mode
    assert torch.equal(got, eager)


# ------------------------------------------------------------------------------------------ HF's block
def _hf_block(E, k, H, I, S, scale, seed=0):
    hf = pytest.importorskip("transformers.models.qwen3_5_moe.modeling_qwen3_5_moe")
    from transformers.models.qwen3_5_moe.configuration_qwen3_5_moe import Qwen3_5MoeTextConfig

    cfg = Qwen3_5MoeTextConfig(hidden_size=H, num_experts=E, num_experts_per_tok=k, moe_intermediate_size=I,
                               shared_expert_intermediate_size=S)
    cfg._experts_implementation = "eager"
    torch.manual_seed(seed)
    block = hf.Qwen3_5MoeSparseMoeBlock(cfg).eval()
    with torch.no_grad():
        for name, p in block.named_parameters():
            p.normal_(0, 0.5 if name == "gate.weight" else scale)
    return block.cuda()


def _ours(block, x, k):
    from kernels import moe

    sh = block.shared_expert
    w, e = moe.moe_router_topk(x, block.gate.weight, k) if x.shape[0] <= 64 else \
        moe.moe_topk(torch.nn.functional.linear(x, block.gate.weight), k)
    return moe.moe_mlp(x, block.experts.gate_up_proj, block.experts.down_proj, w, e, shared_gate=sh.gate_proj.weight,
                       shared_up=sh.up_proj.weight, shared_down=sh.down_proj.weight,
                       shared_expert_gate=block.shared_expert_gate.weight, validate=False), e


@pytest.mark.parametrize("T", [1, 5, 40, 300])
def test_layer_matches_hf_block_fp32(T):
    E, k, H, I, S = 16, 4, 256, 64, 96
    block = _hf_block(E, k, H, I, S, H ** -0.5)
    x = torch.randn(T, H, device="cuda", generator=torch.Generator("cuda").manual_seed(T))
    with torch.no_grad():
        want = block(x[None])[0]
        _, _, hf_idx = block.gate(x)
        got, experts = _ours(block, x, k)
    assert torch.equal(experts, hf_idx)
    err = float((got - want).abs().max() / want.abs().max())
    assert err < 1e-4, err


@pytest.mark.parametrize("T", [1, 8, 200])
def test_layer_matches_hf_block_bf16_real_widths(T):
    E, k, H, I, S = 32, 8, 2048, 512, 512  # 35B-A3B's widths, 32 of its 256 experts
    block = _hf_block(E, k, H, I, S, H ** -0.5).to(torch.bfloat16)
    x = torch.randn(T, H, device="cuda", generator=torch.Generator("cuda").manual_seed(T)).bfloat16()
    with torch.no_grad():
        want = block(x[None])[0].float()
        got = _ours(block, x, k)[0].float()
    err = float((got - want).norm() / want.norm())
    print(f"\nT={T} bf16 rel L2 vs HF {err:.2e}")
    assert err < 2e-2, err
