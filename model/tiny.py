"""A tiny random-weight Qwen3.5 checkpoint in the Hugging Face layout, written without transformers.

Used by the CLI when no --model is given and by tests: the real architecture (hybrid DeltaNet / gated
attention, interleaved mRoPE, ViT + merger, tied embeddings, real 248k vocabulary) at toy width, so the
whole pipeline runs in seconds on a CPU. The text it generates is gibberish: the weights are random.

Tensor names and shapes follow docs/model.md section 5.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import torch

TINY_NAME = "tiny-qwen3_5"
TINY_VERSION = 3  # bump when the checkpoint below changes, so cached copies are rebuilt
SEED = 0

TEXT = dict(
    vocab_size=248320, hidden_size=64, intermediate_size=128, num_hidden_layers=4,
    num_attention_heads=4, num_key_value_heads=2, head_dim=64,
    linear_num_key_heads=2, linear_num_value_heads=4, linear_key_head_dim=16, linear_value_head_dim=16,
    linear_conv_kernel_dim=4,
)
# head_dim 64 with the real partial_rotary_factor 0.25 gives 16 rotary dims = 8 frequencies, split
# T/H/W as [3, 3, 2] (interleaved), so every mRoPE axis is exercised.
MROPE_SECTION = [3, 3, 2]
# vision head_dim 64 (128 / 2 heads): a head size the kernels backend supports, so `--backend kernels` runs too
VISION = dict(depth=2, hidden_size=128, num_heads=2, intermediate_size=128, out_hidden_size=64, patch_size=16,
              temporal_patch_size=2, spatial_merge_size=2, in_channels=3, num_position_embeddings=2304)


def default_cache_dir() -> Path:
    """$QWEN35_KERNELS_CACHE, else ~/.cache/qwen35-kernels."""
    env = os.environ.get("QWEN35_KERNELS_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "qwen35-kernels"


def ensure_tiny_checkpoint(cache_dir: str | os.PathLike | None = None) -> Path:
    """Path of the tiny checkpoint under `cache_dir` (default: `default_cache_dir()`), writing it first if
    missing or from an older version. Written into a temporary directory and renamed into place, so a
    reader never sees a half-written checkpoint."""
    root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    final = root / TINY_NAME
    if _is_current(final):
        return final
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{TINY_NAME}-", dir=root))
    try:
        write_tiny_checkpoint(tmp)
        if final.exists():  # stale version (or a concurrent writer finished first)
            if _is_current(final):
                shutil.rmtree(tmp)
                return final
            shutil.rmtree(final, ignore_errors=True)
        try:
            os.rename(tmp, final)
        except OSError:  # another process renamed its copy in between
            if not _is_current(final):
                raise
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final


def _is_current(path: Path) -> bool:
    try:
        cfg = json.loads((path / "config.json").read_text())
    except (OSError, ValueError):
        return False
    return cfg.get("qwen35_kernels_tiny_version") == TINY_VERSION and (path / "model.safetensors").is_file()


def tiny_config() -> dict:
    """config.json of the tiny checkpoint (HF `qwen3_5` format)."""
    n = TEXT["num_hidden_layers"]
    text = dict(
        model_type="qwen3_5_text", **TEXT, hidden_act="silu", rms_norm_eps=1e-6, attention_bias=False,
        attn_output_gate=True, max_position_embeddings=262144, tie_word_embeddings=True,
        full_attention_interval=4,
        layer_types=["full_attention" if (i + 1) % 4 == 0 else "linear_attention" for i in range(n)],
        rope_parameters=dict(rope_type="default", rope_theta=10000000.0, partial_rotary_factor=0.25,
                             mrope_interleaved=True, mrope_section=MROPE_SECTION),
        bos_token_id=248044, eos_token_id=248046, pad_token_id=248044,
    )
    vision = dict(model_type="qwen3_5", **VISION, hidden_act="gelu_pytorch_tanh", deepstack_visual_indexes=[])
    return dict(
        architectures=["Qwen3_5ForConditionalGeneration"], model_type="qwen3_5", dtype="bfloat16",
        image_token_id=248056, video_token_id=248057, vision_start_token_id=248053, vision_end_token_id=248054,
        tie_word_embeddings=True, text_config=text, vision_config=vision,
        qwen35_kernels_tiny_version=TINY_VERSION,
    )


def tiny_state_dict(seed: int = SEED) -> dict[str, torch.Tensor]:
    """Random weights (fixed seed), bf16, named as in an official checkpoint. lm_head is tied, so absent."""
    g = torch.Generator().manual_seed(seed)

    def normal(*shape, std=0.02, mean=0.0):
        return torch.randn(*shape, generator=g) * std + mean

    def linear(n_out, n_in):  # 1/sqrt(fan-in): every layer moves the residual, so the text is not one token
        return normal(n_out, n_in, std=n_in ** -0.5)

    out = {}
    # Vision tower.
    D, I, P, T = VISION["hidden_size"], VISION["intermediate_size"], VISION["patch_size"], VISION["temporal_patch_size"]
    m2 = VISION["spatial_merge_size"] ** 2
    v = "model.visual."
    out[v + "patch_embed.proj.weight"] = normal(D, VISION["in_channels"], T, P, P)
    out[v + "patch_embed.proj.bias"] = normal(D)
    out[v + "pos_embed.weight"] = normal(VISION["num_position_embeddings"], D)
    for b in range(VISION["depth"]):
        k = f"{v}blocks.{b}."
        for norm in ("norm1", "norm2"):  # LayerNorm: weight near 1, small bias
            out[k + norm + ".weight"] = normal(D, std=0.1, mean=1.0)
            out[k + norm + ".bias"] = normal(D)
        out[k + "attn.qkv.weight"], out[k + "attn.qkv.bias"] = normal(3 * D, D), normal(3 * D)
        out[k + "attn.proj.weight"], out[k + "attn.proj.bias"] = normal(D, D), normal(D)
        out[k + "mlp.linear_fc1.weight"], out[k + "mlp.linear_fc1.bias"] = normal(I, D), normal(I)
        out[k + "mlp.linear_fc2.weight"], out[k + "mlp.linear_fc2.bias"] = normal(D, I), normal(D)
    out[v + "merger.norm.weight"], out[v + "merger.norm.bias"] = normal(D, std=0.1, mean=1.0), normal(D)
    out[v + "merger.linear_fc1.weight"], out[v + "merger.linear_fc1.bias"] = normal(m2 * D, m2 * D), normal(m2 * D)
    out[v + "merger.linear_fc2.weight"] = normal(VISION["out_hidden_size"], m2 * D)
    out[v + "merger.linear_fc2.bias"] = normal(VISION["out_hidden_size"])

    # Language model. (1+w) RMSNorm weights are stored zero-centred: small noise around 0.
    H, F = TEXT["hidden_size"], TEXT["intermediate_size"]
    hq, hkv, hd = TEXT["num_attention_heads"], TEXT["num_key_value_heads"], TEXT["head_dim"]
    nk, nv = TEXT["linear_num_key_heads"], TEXT["linear_num_value_heads"]
    dk, dv, kc = TEXT["linear_key_head_dim"], TEXT["linear_value_head_dim"], TEXT["linear_conv_kernel_dim"]
    t = "model.language_model."
    out[t + "embed_tokens.weight"] = normal(TEXT["vocab_size"], H)
    for i, kind in enumerate(tiny_config()["text_config"]["layer_types"]):
        k = f"{t}layers.{i}."
        out[k + "input_layernorm.weight"] = normal(H, std=0.1)
        out[k + "post_attention_layernorm.weight"] = normal(H, std=0.1)
        if kind == "linear_attention":
            a, conv = k + "linear_attn.", 2 * nk * dk + nv * dv
            out[a + "in_proj_qkv.weight"] = linear(conv, H)
            out[a + "in_proj_z.weight"] = linear(nv * dv, H)
            out[a + "in_proj_b.weight"] = linear(nv, H)
            out[a + "in_proj_a.weight"] = linear(nv, H)
            out[a + "conv1d.weight"] = normal(conv, 1, kc, std=0.3)  # fan-in of a depthwise tap is only kc
            out[a + "A_log"] = torch.empty(nv).uniform_(1.0, 16.0, generator=g).log()
            out[a + "dt_bias"] = normal(nv, std=0.1, mean=1.0)
            out[a + "norm.weight"] = normal(dv, std=0.1, mean=1.0)  # gated RMSNorm uses plain w
            out[a + "out_proj.weight"] = linear(H, nv * dv)
        else:
            a = k + "self_attn."
            out[a + "q_proj.weight"] = linear(hq * hd * 2, H)  # per head [q | gate]
            out[a + "k_proj.weight"] = linear(hkv * hd, H)
            out[a + "v_proj.weight"] = linear(hkv * hd, H)
            out[a + "o_proj.weight"] = linear(H, hq * hd)
            out[a + "q_norm.weight"] = normal(hd, std=0.1)
            out[a + "k_norm.weight"] = normal(hd, std=0.1)
        out[k + "mlp.gate_proj.weight"] = linear(F, H)
        out[k + "mlp.up_proj.weight"] = linear(F, H)
        out[k + "mlp.down_proj.weight"] = linear(H, F)
    out[t + "norm.weight"] = normal(H, std=0.1)
    return {name: w.to(torch.bfloat16).contiguous() for name, w in out.items()}


def write_tiny_checkpoint(path: str | os.PathLike) -> None:
    """Write config.json, preprocessor configs, generation_config.json and model.safetensors into `path`."""
    from safetensors.torch import save_file

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    mean_std = dict(image_mean=[0.5, 0.5, 0.5], image_std=[0.5, 0.5, 0.5])
    patches = dict(patch_size=16, temporal_patch_size=2, merge_size=2)
    files = {
        "config.json": tiny_config(),
        "preprocessor_config.json": dict(size=dict(shortest_edge=65536, longest_edge=16777216), **patches,
                                         **mean_std, image_processor_type="Qwen2VLImageProcessorFast",
                                         processor_class="Qwen3VLProcessor"),
        "video_preprocessor_config.json": dict(size=dict(shortest_edge=4096, longest_edge=25165824), **patches,
                                               **mean_std, video_processor_type="Qwen3VLVideoProcessor",
                                               processor_class="Qwen3VLProcessor"),
        "generation_config.json": dict(bos_token_id=248044, eos_token_id=[248046, 248044], pad_token_id=248044),
    }
    for name, content in files.items():
        (path / name).write_text(json.dumps(content, indent=2) + "\n")
    save_file(tiny_state_dict(), str(path / "model.safetensors"), metadata={"format": "pt"})
