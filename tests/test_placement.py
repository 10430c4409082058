"""The kernels backend decides per op, when the model is built, whether its kernel covers the checkpoint; where it
does not, the op runs on the reference and placement(why=True) says why; strict=True refuses the checkpoint.

The decision needs no GPU: a tiny checkpoint whose language model and vision tower have head_dim 16 (no attention
kernel is built for it) is built on the CPU. On a GPU the same model's logits must then run on backend="kernels"
and match the reference backend (an op whose `covers` says yes but whose kernel refuses would fail there).
"""

from __future__ import annotations

import copy

import pytest
import torch

import model as M
import reference
from model.config import ModelConfig
from model.loader import expected_shapes
from model.ops import MODEL_OPS, NO_KERNEL, coverage, ops_for, placement, uncovered
from model.tiny import tiny_config

HEAD_DIM = 16


def odd_config() -> ModelConfig:
    raw = copy.deepcopy(tiny_config())
    t, v = raw["text_config"], raw["vision_config"]
    t.update(vocab_size=512, head_dim=HEAD_DIM, linear_key_head_dim=HEAD_DIM, linear_value_head_dim=HEAD_DIM)
    t["rope_parameters"].update(partial_rotary_factor=0.5, mrope_section=[2, 1, 1])  # 8 rotary dims, 4 frequencies
    v.update(hidden_size=32, num_heads=2, intermediate_size=64)  # vision head_dim 16 too
    raw["image_token_id"], raw["video_token_id"] = 500, 501
    raw["vision_start_token_id"], raw["vision_end_token_id"] = 502, 503
    return ModelConfig.from_dict(raw)


def weights(cfg: ModelConfig, device="cpu", dtype=torch.float32) -> dict:
    g = torch.Generator().manual_seed(0)
    out = {}
    for name, shape in expected_shapes(cfg).items():
        t = 0.05 * torch.randn(shape, generator=g)
        if name.endswith("A_log"):
            t = torch.rand(shape, generator=g)
        out[name] = t.to(device, dtype)
    return out


def test_head_dim_16_attention_falls_back_with_a_reason():
    cfg = odd_config()
    why = placement("kernels", cfg, torch.bfloat16, why=True)
    assert why["attention"].startswith("reference: ") and f"head_dim {HEAD_DIM}" in why["attention"], why["attention"]
    assert "qkv_bias_rope" in why and f"head_dim {HEAD_DIM}" in why["qkv_bias_rope"]
    assert why["gated_delta_rule"].startswith("reference: ") and f"dk={HEAD_DIM}" in why["gated_delta_rule"]
    ns = ops_for("kernels", cfg, torch.bfloat16)
    assert ns.attention is reference.attention and ns.qkv_bias_rope is reference.qkv_bias_rope
    # without a config nothing is checked: every op that has a kernel runs it
    assert placement("kernels")["attention"] == "kernels"


def test_every_op_is_placed_and_reasons_are_one_line():
    cfg = odd_config()
    cov = coverage("kernels", cfg, torch.bfloat16)
    assert set(cov) == set(MODEL_OPS)
    for op, why in cov.items():
        assert why is None or (isinstance(why, str) and why and "\n" not in why), (op, why)
        if why is None:
            assert getattr(ops_for("kernels", cfg, torch.bfloat16), op) is not getattr(reference, op, None)
    assert set(uncovered("kernels", cfg, torch.bfloat16)) <= {op for op, w in cov.items() if w not in (None, NO_KERNEL)}
    assert "attention" in uncovered("kernels", cfg, torch.bfloat16)


def test_dtype_the_kernels_do_not_take_falls_back():
    """fp64 weights: element-wise kernels take fp32/fp16/bf16 only, so they run on the reference."""
    why = placement("kernels", odd_config(), torch.float64, why=True)
    assert why["layer_norm"].startswith("reference: ") and "float64" in why["layer_norm"]


def test_dtype_rule_holds_for_ops_with_shape_rules_too():
    """decode_attention has shape rules (covers) and takes bf16/fp16 only: an fp32 checkpoint runs it on the
    reference (its kernel raised inside decode before the dtype rule applied to ops with covers)."""
    cfg = ModelConfig.from_dict(tiny_config())
    why = placement("kernels", cfg, torch.float32, why=True)
    assert why["decode_attention"].startswith("reference: ") and "float32" in why["decode_attention"]


def test_model_placement_and_strict():
    cfg = odd_config()
    w = weights(cfg)
    m = M.Model(cfg, w, backend="kernels", cuda_graphs=False)
    where, why = m.placement(), m.placement(why=True)
    assert set(where) == set(MODEL_OPS) and set(where.values()) <= {"kernels", "reference"}
    assert where["attention"] == "reference" and f"head_dim {HEAD_DIM}" in why["attention"]
    assert m.ops.attention is reference.attention
    with pytest.raises(ValueError, match=r"strict=True: the kernels do not cover this checkpoint: .*attention: "
                                         r".*head_dim 16") as e:
        M.Model(cfg, w, backend="kernels", cuda_graphs=False, strict=True)
    assert "\n" not in str(e.value)
    ref = M.Model(cfg, w, backend="reference", strict=True)  # the reference backend covers everything
    assert set(ref.placement().values()) == {"reference"}


def test_load_strict_refuses_before_reading_weights(tmp_path, monkeypatch):
    import json

    import model.model as MM

    raw = odd_config().extra
    (tmp_path / "config.json").write_text(json.dumps(raw))

    def no_weights(*a, **k):
        raise AssertionError("strict load read the weights before refusing")
    monkeypatch.setattr(MM, "load_weights", no_weights)
    with pytest.raises(ValueError, match="attention: .*head_dim 16"):
        M.load(tmp_path, backend="kernels", strict=True)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_kernels_backend_runs_a_checkpoint_it_does_not_fully_cover(dtype):
    """logits on backend="kernels" for the head_dim-16 checkpoint: no kernel fails inside the forward, and the
    result matches the reference backend's."""
    cfg = odd_config()
    w = weights(cfg, "cuda", dtype)
    ids = torch.randint(0, 500, (2, 23), generator=torch.Generator().manual_seed(1))
    mask = torch.ones_like(ids)
    mask[1, :7] = 0
    got = M.Model(cfg, w, backend="kernels", cuda_graphs=False).logits(ids, attention_mask=mask).float()
    want = M.Model(cfg, w, backend="reference").logits(ids, attention_mask=mask).float()
    real = mask.bool().cuda()
    err = (got[real] - want[real]).norm() / want[real].norm()
    assert torch.isfinite(got[real]).all() and err < (1e-3 if dtype == torch.float32 else 5e-2), float(err)


def test_every_op_the_model_calls_is_placed():
    """An op the model calls but MODEL_OPS leaves out would silently run on its reference on every backend."""
    import re
    from pathlib import Path

    called = set()
    for f in (Path(__file__).resolve().parent.parent / "model").glob("*.py"):
        text = f.read_text()
        called |= set(re.findall(r"\bops\.([a-z_0-9]+)\(", text)) | set(re.findall(r"\bop\(\"([a-z_0-9]+)\"\)", text))
    assert called, "found no op calls in model/: the patterns above are out of date"
    missing = called - set(MODEL_OPS)
    assert not missing, f"ops the model calls but model.ops.MODEL_OPS does not list: {sorted(missing)}"


def test_a_foreign_kernels_package_is_refused(monkeypatch):
    """Hugging Face's `kernels` distribution has this project's import name: found in its place, the kernels
    backend must say so, not silently run every op on the reference."""
    import sys
    import types

    monkeypatch.delitem(sys.modules, "kernels.registry", raising=False)
    monkeypatch.setitem(sys.modules, "kernels", types.ModuleType("kernels"))
    with pytest.raises(ImportError, match="is not this project's.*pip uninstall kernels"):
        placement("kernels")
