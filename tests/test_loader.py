"""Checkpoint loading: layouts (single file, shards + index, per-expert or fused MoE, tied or not, mtp.*),
config parsing, and a clear error for every malformed checkpoint."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

import model as M
from model.config import ModelConfig
from model.loader import EMBED, LM_HEAD, expected_shapes, load_weights
from tests._tiny_hf import dense_tied, dense_untied, moe, one_torch_thread  # noqa: F401

EXPERTS0 = "model.language_model.layers.0.mlp.experts"


def clone(src, dst, mutate=None, config=None):
    """Copy a checkpoint directory; `mutate(state) -> state` rewrites its tensors, `config(dict)` its config."""
    shutil.copytree(src, dst)
    if mutate is not None:
        state = load_file(dst / "model.safetensors")
        save_file(mutate(state), str(dst / "model.safetensors"), metadata={"format": "pt"})
    if config is not None:
        cfg = json.loads((dst / "config.json").read_text())
        config(cfg)
        (dst / "config.json").write_text(json.dumps(cfg))
    return dst


def hf_state(ckpt) -> dict:
    return {k: v.detach() for k, v in ckpt.hf.state_dict().items()}


# ------------------------------------------------------------------------------------------------ layouts

def test_dense_weights_equal_hf_state(dense_untied):
    cfg, w = load_weights(dense_untied.path)
    ref = hf_state(dense_untied)
    assert set(w) == set(expected_shapes(cfg)) == set(ref)
    for k, t in w.items():
        assert torch.equal(t, ref[k]), k
    assert not torch.equal(w[LM_HEAD], w[EMBED])


def test_tied_lm_head_aliases_embedding(dense_tied):
    from safetensors import safe_open
    with safe_open(str(dense_tied.path / "model.safetensors"), "pt") as f:
        assert LM_HEAD not in f.keys()  # HF does not store the tied head
    cfg, w = load_weights(dense_tied.path)
    assert cfg.tie_word_embeddings
    assert w[LM_HEAD] is w[EMBED]


def test_moe_per_expert_and_fused_storage_load_the_same(moe, tmp_path):
    from safetensors import safe_open
    with safe_open(str(moe.path / "model.safetensors"), "pt") as f:
        assert f"{EXPERTS0}.0.gate_proj.weight" in f.keys()  # transformers writes per-expert tensors
    cfg, per_expert = load_weights(moe.path)
    ref = hf_state(moe)
    for k in (f"{EXPERTS0}.gate_up_proj", f"{EXPERTS0}.down_proj"):
        assert torch.equal(per_expert[k], ref[k])

    def fuse(state):
        out = {k: v for k, v in state.items() if ".mlp.experts." not in k}
        for i in range(cfg.text.num_hidden_layers):
            p = f"model.language_model.layers.{i}.mlp.experts"
            out[p + ".gate_up_proj"] = ref[p + ".gate_up_proj"].clone()
            out[p + ".down_proj"] = ref[p + ".down_proj"].clone()
        return out

    fused_dir = clone(moe.path, tmp_path / "fused", fuse)
    _, fused = load_weights(fused_dir)
    assert set(fused) == set(per_expert)
    for k in fused:
        assert torch.equal(fused[k], per_expert[k]), k


def test_sharded_checkpoint_with_index(dense_untied, tmp_path):
    state = load_file(dense_untied.path / "model.safetensors")
    names = sorted(state)
    d = tmp_path / "sharded"
    d.mkdir()
    shutil.copy(dense_untied.path / "config.json", d)
    shards = {"model-00001-of-00002.safetensors": names[::2], "model-00002-of-00002.safetensors": names[1::2]}
    weight_map = {}
    for fname, keys in shards.items():
        save_file({k: state[k] for k in keys}, str(d / fname), metadata={"format": "pt"})
        weight_map.update({k: fname for k in keys})
    (d / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    _, w = load_weights(d, progress=True)  # the progress bar path runs too
    _, ref = load_weights(dense_untied.path)
    assert set(w) == set(ref) and all(torch.equal(w[k], ref[k]) for k in w)
    (d / "model-00002-of-00002.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="model-00002-of-00002"):
        load_weights(d)


def test_mtp_tensors_are_ignored(dense_tied, tmp_path):
    d = clone(dense_tied.path, tmp_path / "mtp", lambda s: s | {"mtp.fc.weight": torch.zeros(4, 4),
                                                              "mtp.layers.0.input_layernorm.weight": torch.zeros(4)})
    _, w = load_weights(d)
    assert not any(k.startswith("mtp.") for k in w)


def test_dtype_and_device_options(dense_tied):
    _, w = load_weights(dense_tied.path, dtype=torch.bfloat16)
    assert all(t.dtype == torch.bfloat16 for t in w.values())
    m = M.load(dense_tied.path, dtype="float16")
    assert m.dtype == torch.float16 and m.device.type == "cpu"
    with pytest.raises(ValueError, match="dtype"):
        load_weights(dense_tied.path, dtype="float8")


# ------------------------------------------------------------------------------------------------ config

def test_config_fields(dense_tied, moe):
    cfg = ModelConfig.from_pretrained(dense_tied.path)
    hf = dense_tied.hf.config
    assert cfg.model_type == "qwen3_5" and not cfg.is_moe and cfg.tie_word_embeddings
    assert cfg.text.layer_types == tuple(hf.text_config.layer_types)
    assert cfg.text.mrope_section == (3, 3, 2) and cfg.text.rotary_dim == 16 and cfg.text.rope_theta == 1e7
    assert cfg.vision.head_dim == 16 and cfg.vision.pos_side == 8
    assert (cfg.image_token_id, cfg.video_token_id) == (300, 301)
    mcfg = ModelConfig.from_pretrained(moe.path)
    assert mcfg.model_type == "qwen3_5_moe" and mcfg.is_moe and not mcfg.tie_word_embeddings
    assert (mcfg.text.num_experts, mcfg.text.num_experts_per_tok, mcfg.text.moe_intermediate_size,
            mcfg.text.shared_expert_intermediate_size) == (4, 2, 24, 40)


def test_eos_and_pad_from_generation_config(dense_tied, tmp_path):
    d = shutil.copytree(dense_tied.path, tmp_path / "gen")
    (d / "generation_config.json").write_text(json.dumps({"eos_token_id": [7, 9], "pad_token_id": 5}))
    cfg = ModelConfig.from_pretrained(d)
    assert cfg.eos_token_ids == (7, 9) and cfg.pad_token_id == 5


def test_default_layer_types_and_bad_rope(dense_tied):
    raw = json.loads((dense_tied.path / "config.json").read_text())
    del raw["text_config"]["layer_types"]
    cfg = ModelConfig.from_dict(raw)
    assert cfg.text.layer_types == ("linear_attention",) * 3 + ("full_attention",)
    raw["text_config"]["rope_parameters"]["mrope_interleaved"] = False
    with pytest.raises(ValueError, match="mrope_interleaved"):
        ModelConfig.from_dict(raw)


# ------------------------------------------------------------------------------------------------ errors

def test_missing_tensor_is_named(dense_untied, tmp_path):
    name = "model.language_model.layers.1.self_attn.k_norm.weight"
    d = clone(dense_untied.path, tmp_path / "c", lambda s: {k: v for k, v in s.items() if k != name})
    with pytest.raises(ValueError, match=rf"missing: {name}"):
        load_weights(d)


def test_untied_checkpoint_without_lm_head_is_an_error(dense_untied, tmp_path):
    d = clone(dense_untied.path, tmp_path / "c", lambda s: {k: v for k, v in s.items() if k != LM_HEAD})
    with pytest.raises(ValueError, match=rf"missing: {LM_HEAD}"):
        load_weights(d)


def test_unexpected_tensor_is_named(dense_untied, tmp_path):
    d = clone(dense_untied.path, tmp_path / "c", lambda s: s | {"model.visual.extra.weight": torch.zeros(3)})
    with pytest.raises(ValueError, match=r"unexpected: model\.visual\.extra\.weight"):
        load_weights(d)


def test_misshaped_tensor_is_named_with_shapes(dense_untied, tmp_path):
    name = "model.visual.blocks.1.attn.qkv.weight"
    d = clone(dense_untied.path, tmp_path / "c", lambda s: s | {name: torch.zeros(95, 32)})
    with pytest.raises(ValueError, match=rf"misshaped: {name}: expected \[96, 32\], got \[95, 32\]"):
        load_weights(d)


def test_missing_or_misshaped_expert_is_named(moe, tmp_path):
    name = f"{EXPERTS0}.3.up_proj.weight"
    d = clone(moe.path, tmp_path / "c", lambda s: {k: v for k, v in s.items() if k != name})
    with pytest.raises(ValueError, match=rf"missing: {name}"):
        load_weights(d)
    d = clone(moe.path, tmp_path / "d", lambda s: s | {name: torch.zeros(23, 64)})
    with pytest.raises(ValueError, match=rf"misshaped: {name}: expected \[24, 64\], got \[23, 64\]"):
        load_weights(d)
    d = clone(moe.path, tmp_path / "e", lambda s: s | {f"{EXPERTS0}.4.up_proj.weight": torch.zeros(24, 64)})
    with pytest.raises(ValueError, match=rf"unexpected: {EXPERTS0}\.4\.up_proj\.weight"):
        load_weights(d)


def test_config_that_does_not_match_the_tensors(dense_untied, tmp_path):
    d = clone(dense_untied.path, tmp_path / "c", config=lambda c: c["text_config"].update(hidden_size=48))
    with pytest.raises(ValueError, match="misshaped"):
        load_weights(d)


def test_unknown_model_type(dense_untied, tmp_path):
    d = clone(dense_untied.path, tmp_path / "c", config=lambda c: c.update(model_type="llama"))
    with pytest.raises(ValueError, match="unsupported model_type 'llama'"):
        M.load(d)


def test_missing_directory_config_and_files(tmp_path, dense_untied):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        M.load(tmp_path / "nope")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(FileNotFoundError, match="config.json"):
        M.load(empty)
    only_cfg = tmp_path / "only_cfg"
    only_cfg.mkdir()
    shutil.copy(dense_untied.path / "config.json", only_cfg)
    with pytest.raises(FileNotFoundError, match="safetensors"):
        M.load(only_cfg)
    (only_cfg / "model.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(ValueError, match="cannot read safetensors"):
        M.load(only_cfg)
    (only_cfg / "config.json").write_text("{not json")
    with pytest.raises(ValueError, match="cannot read"):
        M.load(only_cfg)
