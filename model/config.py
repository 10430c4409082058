"""The Hugging Face `config.json` of a Qwen3.5 VLM (`qwen3_5` dense, `qwen3_5_moe`), as typed dataclasses.

Only the fields the model uses are kept; defaults follow HF `Qwen3_5*Config` (docs/model.md 1.1,
3.1). `generation_config.json`, when present, supplies the eos / pad ids used by `generate`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

MODEL_TYPES = ("qwen3_5", "qwen3_5_moe")


@dataclass(frozen=True)
class VisionConfig:
    depth: int = 27
    hidden_size: int = 1152
    intermediate_size: int = 4304
    num_heads: int = 16
    in_channels: int = 3
    patch_size: int = 16
    temporal_patch_size: int = 2
    spatial_merge_size: int = 2
    out_hidden_size: int = 3584
    num_position_embeddings: int = 2304
    hidden_act: str = "gelu_pytorch_tanh"
    rope_theta: float = 10000.0

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    @property
    def patch_dim(self) -> int:  # one row of pixel_values: C * T * P * P
        return self.in_channels * self.temporal_patch_size * self.patch_size ** 2

    @property
    def pos_side(self) -> int:  # the learned position table is side x side
        return int(round(self.num_position_embeddings ** 0.5))


@dataclass(frozen=True)
class TextConfig:
    vocab_size: int = 248320
    hidden_size: int = 4096
    num_hidden_layers: int = 32
    layer_types: tuple[str, ...] = ()
    rms_norm_eps: float = 1e-6
    hidden_act: str = "silu"
    # gated full attention
    num_attention_heads: int = 16
    num_key_value_heads: int = 4
    head_dim: int = 256
    rope_theta: float = 1e7
    partial_rotary_factor: float = 0.25
    mrope_section: tuple[int, int, int] = (11, 11, 10)
    mrope_interleaved: bool = True
    # gated DeltaNet
    linear_conv_kernel_dim: int = 4
    linear_key_head_dim: int = 128
    linear_value_head_dim: int = 128
    linear_num_key_heads: int = 16
    linear_num_value_heads: int = 32
    # MLP: dense, or MoE when num_experts > 0
    intermediate_size: int = 12288
    num_experts: int = 0
    num_experts_per_tok: int = 0
    moe_intermediate_size: int = 0
    shared_expert_intermediate_size: int = 0

    @property
    def is_moe(self) -> bool:
        return self.num_experts > 0

    @property
    def rotary_dim(self) -> int:
        return int(self.head_dim * self.partial_rotary_factor)

    @property
    def linear_conv_dim(self) -> int:  # channels of in_proj_qkv / conv1d: [q | k | v]
        return 2 * self.linear_num_key_heads * self.linear_key_head_dim + \
            self.linear_num_value_heads * self.linear_value_head_dim


@dataclass(frozen=True)
class ModelConfig:
    model_type: str
    vision: VisionConfig
    text: TextConfig
    tie_word_embeddings: bool = False
    image_token_id: int = 248056
    video_token_id: int = 248057
    vision_start_token_id: int = 248053
    vision_end_token_id: int = 248054
    eos_token_ids: tuple[int, ...] = ()
    pad_token_id: int | None = None
    dtype: str | None = None  # the checkpoint's "dtype" / "torch_dtype", e.g. "bfloat16"
    extra: dict = field(default_factory=dict, compare=False, repr=False)  # the raw config.json

    @property
    def is_moe(self) -> bool:
        return self.text.is_moe

    @classmethod
    def from_dict(cls, raw: dict, generation: dict | None = None) -> "ModelConfig":
        """Build from a parsed config.json (and optionally generation_config.json)."""
        model_type = raw.get("model_type")
        if model_type not in MODEL_TYPES:
            raise ValueError(f"unsupported model_type {model_type!r}: expected one of {list(MODEL_TYPES)}")
        v = dict(raw.get("vision_config") or {})
        t = dict(raw.get("text_config") or {})
        vision = _vision_from(v)
        text = _text_from(t, moe=model_type == "qwen3_5_moe")
        # the top-level flag decides tying (HF ties lm_head to embed_tokens from the composite config)
        tie = bool(raw.get("tie_word_embeddings", t.get("tie_word_embeddings", False)))
        gen = generation or {}
        eos = gen.get("eos_token_id", t.get("eos_token_id", raw.get("eos_token_id")))
        pad = gen.get("pad_token_id", t.get("pad_token_id", raw.get("pad_token_id")))
        return cls(
            model_type=model_type, vision=vision, text=text, tie_word_embeddings=tie,
            image_token_id=int(raw.get("image_token_id", 248056)),
            video_token_id=int(raw.get("video_token_id", 248057)),
            vision_start_token_id=int(raw.get("vision_start_token_id", 248053)),
            vision_end_token_id=int(raw.get("vision_end_token_id", 248054)),
            eos_token_ids=_int_tuple(eos), pad_token_id=None if pad is None else int(pad),
            dtype=raw.get("dtype", raw.get("torch_dtype", t.get("dtype"))), extra=raw,
        )

    @classmethod
    def from_pretrained(cls, path) -> "ModelConfig":
        """Read `config.json` (and `generation_config.json` when present) from a checkpoint directory."""
        path = Path(path)
        if not path.is_dir():
            raise FileNotFoundError(f"checkpoint directory {str(path)!r} does not exist or is not a directory")
        cfg_file = path / "config.json"
        if not cfg_file.is_file():
            raise FileNotFoundError(f"no config.json in checkpoint directory {str(path)!r}")
        raw = _read_json(cfg_file)
        gen_file = path / "generation_config.json"
        gen = _read_json(gen_file) if gen_file.is_file() else None
        return cls.from_dict(raw, gen)


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"cannot read {str(path)!r}: {e}") from e
    if not isinstance(data, dict):
        raise ValueError(f"{str(path)!r} must hold a JSON object")
    return data


def _int_tuple(x) -> tuple[int, ...]:
    if x is None:
        return ()
    if isinstance(x, int):
        return (x,)
    return tuple(int(i) for i in x)


def _vision_from(v: dict) -> VisionConfig:
    d = VisionConfig()
    rope = v.get("rope_parameters") or {}
    kw = {k: v.get(k, getattr(d, k)) for k in (
        "depth", "hidden_size", "intermediate_size", "num_heads", "in_channels", "patch_size",
        "temporal_patch_size", "spatial_merge_size", "out_hidden_size", "num_position_embeddings", "hidden_act")}
    for k in ("patch_size", "temporal_patch_size"):  # HF allows a [n, n] pair; the model needs square patches
        if isinstance(kw[k], (list, tuple)):
            if len(set(kw[k])) != 1:
                raise ValueError(f"vision_config.{k} must be square, got {kw[k]}")
            kw[k] = kw[k][0]
    if rope.get("rope_type", "axial") != "axial":
        raise ValueError(f"vision_config.rope_parameters.rope_type must be 'axial', got {rope.get('rope_type')!r}")
    kw["rope_theta"] = float(rope.get("rope_theta", d.rope_theta))
    cfg = VisionConfig(**kw)
    if cfg.hidden_size % cfg.num_heads:
        raise ValueError(f"vision hidden_size {cfg.hidden_size} is not a multiple of num_heads {cfg.num_heads}")
    if cfg.pos_side ** 2 != cfg.num_position_embeddings:
        raise ValueError(f"vision num_position_embeddings {cfg.num_position_embeddings} is not a square")
    return cfg


def _text_from(t: dict, moe: bool) -> TextConfig:
    d = TextConfig()
    names = ["vocab_size", "hidden_size", "num_hidden_layers", "rms_norm_eps", "hidden_act", "num_attention_heads",
             "num_key_value_heads", "head_dim", "linear_conv_kernel_dim", "linear_key_head_dim",
             "linear_value_head_dim", "linear_num_key_heads", "linear_num_value_heads", "intermediate_size"]
    if moe:
        names += ["num_experts", "num_experts_per_tok", "moe_intermediate_size", "shared_expert_intermediate_size"]
    kw = {k: t.get(k, getattr(d, k)) for k in names}
    if moe:  # HF MoE defaults (docs 3.1) when the config leaves them out
        for k, default in (("num_experts", 256), ("num_experts_per_tok", 8), ("moe_intermediate_size", 512),
                           ("shared_expert_intermediate_size", 512)):
            kw[k] = t.get(k, default)
        if t.get("hidden_size") is None:
            kw["hidden_size"] = 2048
    if t.get("head_dim") is None:
        kw["head_dim"] = kw["hidden_size"] // kw["num_attention_heads"] if "head_dim" in t else d.head_dim
    rope = dict(t.get("rope_parameters") or {})
    rope_type = rope.get("rope_type", "default")
    if rope_type != "default":
        raise ValueError(f"text_config.rope_parameters.rope_type {rope_type!r} is not supported (only 'default')")
    kw["rope_theta"] = float(rope.get("rope_theta", t.get("rope_theta", d.rope_theta)))
    kw["partial_rotary_factor"] = float(rope.get("partial_rotary_factor", t.get("partial_rotary_factor", 0.25)))
    kw["mrope_section"] = tuple(int(s) for s in rope.get("mrope_section", d.mrope_section))
    kw["mrope_interleaved"] = bool(rope.get("mrope_interleaved", d.mrope_interleaved))
    n = kw["num_hidden_layers"]
    layer_types = t.get("layer_types")
    if layer_types is None:  # HF default: every `full_attention_interval`-th layer is full attention
        every = int(t.get("full_attention_interval", 4))
        layer_types = ["full_attention" if (i + 1) % every == 0 else "linear_attention" for i in range(n)]
    layer_types = tuple(layer_types)
    if len(layer_types) != n:
        raise ValueError(f"text_config.layer_types has {len(layer_types)} entries, num_hidden_layers is {n}")
    bad = sorted(set(layer_types) - {"full_attention", "linear_attention"})
    if bad:
        raise ValueError(f"text_config.layer_types has unknown types {bad}")
    kw["layer_types"] = layer_types
    cfg = TextConfig(**kw)
    if cfg.num_attention_heads % cfg.num_key_value_heads:
        raise ValueError("text num_attention_heads must be a multiple of num_key_value_heads")
    if cfg.linear_num_value_heads % cfg.linear_num_key_heads:
        raise ValueError("text linear_num_value_heads must be a multiple of linear_num_key_heads")
    if len(cfg.mrope_section) != 3:
        raise ValueError(f"text mrope_section must have 3 entries (t, h, w), got {cfg.mrope_section}")
    if not cfg.mrope_interleaved:  # HF Qwen3.5 always interleaves, whatever the flag says
        raise ValueError("text rope_parameters.mrope_interleaved=false is not supported: Qwen3.5 interleaves mRoPE")
    return cfg
