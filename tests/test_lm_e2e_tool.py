"""tools/lm_e2e_gpu.py's CPU-side parts: the floors' arithmetic, the configs it builds, the case plan and the
time estimates of --budget-s, and tools/lm_decode_profile.py's op-labelling wrapper (the model must compute the
same thing through it) and its graph timeline's charges; tools/moe_gpu.py's decode floor."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

import model as M
from model.config import ModelConfig
from model.generate import DecodeSession, Sampling
from tests._tiny_hf import dense_untied, one_torch_thread  # noqa: F401

_spec = importlib.util.spec_from_file_location("lm_e2e_gpu", Path(__file__).parents[1] / "tools" / "lm_e2e_gpu.py")
E = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(E)
_spec = importlib.util.spec_from_file_location("lm_decode_profile",
                                               Path(__file__).parents[1] / "tools" / "lm_decode_profile.py")
P = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(P)


def test_configs_and_floors():
    cfg = {s: ModelConfig.from_dict(E.hf_config(s).to_dict()).text for s in E.SIZES}
    assert [cfg[s].hidden_size for s in E.SIZES] == [1024, 2560, 4096, 5120]
    assert all(c.layer_types.count("full_attention") * 4 == c.num_hidden_layers for c in cfg.values())
    # 0.8B: about 0.5 G decoder GEMM weights + the 254 M-entry tied lm_head, in bf16: ~1.5 GB a step
    assert 0.45e9 < E.lm_linear_params(cfg["0.8B"]) < 0.55e9
    b1 = E.decode_bytes(cfg["0.8B"], 1, 1024)
    assert 1.4e9 < b1 < 1.6e9
    assert E.decode_bytes(cfg["9B"], 32, 1024) > 32 * 24 * 32 * 128 * 128 * 4 * 2  # states dominate at batch 32
    # prefill FLOPs: 2 per weight per token plus the causal attention products
    t = cfg["9B"]
    assert E.prefill_flops(t, 8192) == pytest.approx(2 * 8192 * E.lm_linear_params(t) + 2 * t.vocab_size * 4096
                                                     + 8 * 2 * 8192 ** 2 * 16 * 256)


def test_labelled_ops_leave_the_decode_step_unchanged(dense_untied):
    m = M.load(dense_untied.path)
    outs = []
    for wrapped in (False, True):
        sess = DecodeSession(m.lm, 2, 16, Sampling(), graphs=False)
        sess.begin(torch.randn(2, m.config.text.vocab_size, generator=torch.Generator().manual_seed(0)), 2, [], 0)
        if wrapped:
            with P.labelled(m.lm):
                assert m.lm.ops.rms_norm.__name__ == "inner"
                for _ in range(3):
                    sess.advance()
        else:
            for _ in range(3):
                sess.advance()
        outs.append((sess.tok.clone(), sess.cache.recurrent[0].clone()))
    assert torch.equal(outs[0][0], outs[1][0]) and torch.equal(outs[0][1], outs[1][1])
    assert m.lm.ops.rms_norm.__name__ != "inner"  # restored


def test_plan_pieces_and_estimates():
    """--models/--cases/--batches select the pieces; every default piece of one size is estimated under 70 s
    (the GPU-round cap) at 0.8B and the estimates grow with the model."""
    args = E.argparse.Namespace(quick=False, cases="decode", batches=None)
    p = E.plan(args, "0.8B")
    assert p["decode"] == [1, 8, 32, 128] and p["hf_decode"] == [1, 8, 32, 128]
    assert p["prefill"] == [] and p["profile"] == [] and not p["image"]
    p = E.plan(E.argparse.Namespace(quick=False, cases="prefill,image", batches="1,8"), "9B")
    assert p["prefill"] == [1024, 8192] and p["image"] and p["decode"] == []
    for case in ("decode_bs1", "decode_bs128", "prefill_8192", "ttft_image1024_64tok", "decode_step_profile_bs1"):
        assert E.estimate_s("0.8B", "ours", case) < E.estimate_s("9B", "ours", case) < 70
        assert E.estimate_s("0.8B", "ours", case) <= E.estimate_s("0.8B", "hf_sdpa", case)


def test_timeline_charges():
    """The graph timeline's charges: overlapped kernels (PDL) are charged only past the latest end before them, a
    gap goes to the kernel after it, and the charges add up to the wall time (not the summed durations)."""
    ks = [(20.0, 25.0, "a"), (0.0, 10.0, "a"), (5.0, 12.0, "b"), (6.0, 9.0, "c"), (12.0, 13.0, "c")]
    wall, by = P.charges(ks)
    assert wall == 25.0
    assert by == {"a": (2, 15.0, 22.0), "b": (1, 7.0, 2.0), "c": (2, 4.0, 1.0)}
    assert sum(c for _, _, c in by.values()) == wall


def test_moe_step_bytes_count_touched_experts():
    """tools/moe_gpu.py's decode floor: the non-expert weights (not the embedding, a gather) plus, per layer, the
    experts the routing touched, or their uniform-routing expectation when no count is given."""
    import types

    spec = importlib.util.spec_from_file_location("moe_gpu", Path(__file__).parents[1] / "tools" / "moe_gpu.py")
    G = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(G)
    E, k, L = 8, 2, 2
    w = {"embed_tokens.weight": torch.zeros(100, 4), "lm_head.weight": torch.zeros(10, 4)}
    for i in range(L):
        w[f"layers.{i}.mlp.experts.gate_up_proj"] = torch.zeros(E, 6, 4)
        w[f"layers.{i}.mlp.experts.down_proj"] = torch.zeros(E, 4, 3)
    lm = types.SimpleNamespace(cfg=types.SimpleNamespace(num_experts=E, num_experts_per_tok=k, num_hidden_layers=L),
                               w=w)
    per_expert = (6 * 4 + 4 * 3) * 4  # fp32 bytes of one expert's gate/up and down
    assert G._step_bytes(lm, 1, [2, 5]) == 10 * 4 * 4 + 7 * per_expert
    assert G._step_bytes(lm, 1) == pytest.approx(10 * 4 * 4 + L * E * per_expert * k / E)
    assert G._step_bytes(lm, 32) == pytest.approx(10 * 4 * 4 + L * E * per_expert * (1 - (1 - k / E) ** 32))
