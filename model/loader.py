"""Checkpoint directory (HF layout) -> config + a flat dict of weights under their HF names, checked.

* One `model.safetensors`, several shards listed in `model.safetensors.index.json`, or any `*.safetensors`.
* MoE experts end up fused: `...mlp.experts.gate_up_proj [E, 2I, H]` and `...mlp.experts.down_proj [E, H, I]`,
  whether the file stores them so or per expert (`...mlp.experts.{e}.{gate,up,down}_proj.weight`, stacked here).
* Tied embeddings: `lm_head.weight` is an alias of `model.language_model.embed_tokens.weight`.
* `mtp.*` (the multi-token-prediction head) is skipped, as HF does.
* Anything missing, unexpected or misshaped raises one ValueError that names every offending tensor.
"""

from __future__ import annotations

import json
import re
from collections import defaultdict
from contextlib import ExitStack
from pathlib import Path

import torch

from .config import ModelConfig

VISUAL = "model.visual."
LM = "model.language_model."
LM_HEAD = "lm_head.weight"
EMBED = LM + "embed_tokens.weight"

# progress bar only when loading is slow enough to watch
_PROGRESS_MIN_TENSORS = 2000
_PROGRESS_MIN_BYTES = 1 << 30

_PER_EXPERT = re.compile(r"^(?P<prefix>.+\.mlp\.experts)\.(?P<e>\d+)\.(?P<proj>gate|up|down)_proj\.weight$")

_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16,
           "float64": torch.float64, "fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def expected_shapes(cfg: ModelConfig) -> dict[str, tuple[int, ...]]:
    """Every tensor the model needs, under its HF name, with its shape (MoE experts in fused form)."""
    v, t = cfg.vision, cfg.text
    D, I = v.hidden_size, v.intermediate_size
    m = D * v.spatial_merge_size ** 2
    s = {
        VISUAL + "patch_embed.proj.weight": (D, v.in_channels, v.temporal_patch_size, v.patch_size, v.patch_size),
        VISUAL + "patch_embed.proj.bias": (D,),
        VISUAL + "pos_embed.weight": (v.num_position_embeddings, D),
        VISUAL + "merger.norm.weight": (D,), VISUAL + "merger.norm.bias": (D,),
        VISUAL + "merger.linear_fc1.weight": (m, m), VISUAL + "merger.linear_fc1.bias": (m,),
        VISUAL + "merger.linear_fc2.weight": (v.out_hidden_size, m),
        VISUAL + "merger.linear_fc2.bias": (v.out_hidden_size,),
    }
    for i in range(v.depth):
        b = f"{VISUAL}blocks.{i}."
        s.update({
            b + "norm1.weight": (D,), b + "norm1.bias": (D,), b + "norm2.weight": (D,), b + "norm2.bias": (D,),
            b + "attn.qkv.weight": (3 * D, D), b + "attn.qkv.bias": (3 * D,),
            b + "attn.proj.weight": (D, D), b + "attn.proj.bias": (D,),
            b + "mlp.linear_fc1.weight": (I, D), b + "mlp.linear_fc1.bias": (I,),
            b + "mlp.linear_fc2.weight": (D, I), b + "mlp.linear_fc2.bias": (D,),
        })
    H = t.hidden_size
    s[EMBED] = (t.vocab_size, H)
    s[LM + "norm.weight"] = (H,)
    s[LM_HEAD] = (t.vocab_size, H)
    hq, hkv, d = t.num_attention_heads, t.num_key_value_heads, t.head_dim
    nv, dv = t.linear_num_value_heads, t.linear_value_head_dim  # q/k widths enter through linear_conv_dim
    for i, kind in enumerate(t.layer_types):
        b = f"{LM}layers.{i}."
        s[b + "input_layernorm.weight"] = (H,)
        s[b + "post_attention_layernorm.weight"] = (H,)
        if kind == "full_attention":
            a = b + "self_attn."
            s.update({a + "q_proj.weight": (hq * d * 2, H), a + "k_proj.weight": (hkv * d, H),
                      a + "v_proj.weight": (hkv * d, H), a + "o_proj.weight": (H, hq * d),
                      a + "q_norm.weight": (d,), a + "k_norm.weight": (d,)})
        else:
            a = b + "linear_attn."
            C = t.linear_conv_dim
            s.update({a + "in_proj_qkv.weight": (C, H), a + "in_proj_z.weight": (nv * dv, H),
                      a + "in_proj_b.weight": (nv, H), a + "in_proj_a.weight": (nv, H),
                      a + "conv1d.weight": (C, 1, t.linear_conv_kernel_dim), a + "A_log": (nv,),
                      a + "dt_bias": (nv,), a + "norm.weight": (dv,), a + "out_proj.weight": (H, nv * dv)})
        p = b + "mlp."
        if t.is_moe:
            E, Im, Is = t.num_experts, t.moe_intermediate_size, t.shared_expert_intermediate_size
            s.update({p + "gate.weight": (E, H), p + "experts.gate_up_proj": (E, 2 * Im, H),
                      p + "experts.down_proj": (E, H, Im),
                      p + "shared_expert.gate_proj.weight": (Is, H), p + "shared_expert.up_proj.weight": (Is, H),
                      p + "shared_expert.down_proj.weight": (H, Is), p + "shared_expert_gate.weight": (1, H)})
        else:
            It = t.intermediate_size
            s.update({p + "gate_proj.weight": (It, H), p + "up_proj.weight": (It, H), p + "down_proj.weight": (H, It)})
    return s


def checkpoint_files(path: Path) -> list[Path]:
    """The safetensors files of a checkpoint directory (the index's shards when there is an index)."""
    index = path / "model.safetensors.index.json"
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise ValueError(f"cannot read the shard index {str(index)!r}: {e}") from e
        files = [path / f for f in sorted(set(weight_map.values()))]
        absent = [f.name for f in files if not f.is_file()]
        if absent:
            raise FileNotFoundError(f"shards listed in {index.name} are missing from {str(path)!r}: {absent}")
        return files
    files = sorted(path.glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"no *.safetensors files in checkpoint directory {str(path)!r}")
    return files


def load_weights(path, cfg: ModelConfig | None = None, *, device="cpu", dtype=None,
                 progress: bool | None = None, vision: bool = True) -> tuple[ModelConfig, dict[str, torch.Tensor]]:
    """Read and check a checkpoint. Returns (config, {HF name: tensor}) with every tensor of `expected_shapes`.

    Names and shapes are checked from the file headers before any data is read. dtype: torch dtype (or its
    name) for the floating-point weights; None keeps config.json's "dtype", else each tensor's stored dtype.
    progress: None = a tqdm bar for big checkpoints only (and only on a terminal).
    vision=False: the vision tower's tensors (`model.visual.*`) are skipped, neither checked, read nor allocated.
    """
    path = Path(path)
    cfg = cfg or ModelConfig.from_pretrained(path)
    target = _resolve_dtype(dtype if dtype is not None else cfg.dtype)
    files = checkpoint_files(path)

    with ExitStack() as stack:
        handles, stored = open_checkpoint(stack, cfg, path, files, vision)

        total = sum(f.stat().st_size for f in files)
        big = len(stored) >= _PROGRESS_MIN_TENSORS or total >= _PROGRESS_MIN_BYTES
        show = progress if progress is not None else (None if big else False)  # None: on a terminal only
        E = cfg.text.num_experts
        weights: dict[str, torch.Tensor] = {}
        experts: dict[str, dict[tuple[str, int], torch.Tensor]] = defaultdict(dict)
        for k, (fi, _) in _progress(list(stored.items()), show, desc=f"loading {path.name}"):
            t = handles[fi].get_tensor(k)
            if t.is_floating_point() and target is not None:
                t = t.to(target)
            t = t.to(device)
            m = _PER_EXPERT.match(k)
            if not m:
                weights[k] = t
                continue
            add_expert(weights, experts, m, t, 0, E)
    if cfg.tie_word_embeddings:
        weights[LM_HEAD] = weights[EMBED]
    return cfg, weights


def open_checkpoint(stack: ExitStack, cfg: ModelConfig, path: Path, files, vision: bool = True):
    """Open every safetensors file (closed with `stack`) and index it: (handles, stored), stored = {name: (handle
    index, shape)}. Names and shapes are checked against the config from the headers alone, before any data is
    read; vision=False drops the tower's tensors from both sides."""
    from safetensors import safe_open

    handles, stored, duplicates = [], {}, []
    for f in files:
        try:
            h = stack.enter_context(safe_open(str(f), framework="pt", device="cpu"))
        except Exception as e:  # safetensors raises its own error types for corrupt headers
            raise ValueError(f"cannot read safetensors file {str(f)!r}: {e}") from e
        handles.append(h)
        for k in h.keys():
            if k.startswith("mtp."):  # multi-token-prediction head: not used (HF ignores it too)
                continue
            if k in stored:
                duplicates.append(k)
            stored[k] = (len(handles) - 1, tuple(h.get_slice(k).get_shape()))
    if cfg.tie_word_embeddings:  # lm_head is the embedding; a stored copy is ignored, as HF re-ties it
        stored.pop(LM_HEAD, None)
    want = _on_disk_shapes(cfg, stored)
    if not vision:  # language model only: the tower's tensors are not read
        stored = {k: v for k, v in stored.items() if not k.startswith(VISUAL)}
        want = {k: v for k, v in want.items() if not k.startswith(VISUAL)}
        duplicates = [k for k in duplicates if not k.startswith(VISUAL)]
    _check(stored, want, duplicates, path)
    return handles, stored


def add_expert(weights: dict, experts: dict, m, t: torch.Tensor, e0: int, e1: int) -> None:
    """Collect one per-expert tensor (m: its _PER_EXPERT match); once experts e0..e1-1 of its layer are all in,
    fuse them into the layer's gate_up_proj / down_proj and drop the parts (bounds peak memory)."""
    group = experts[m["prefix"]]
    group[m["proj"], int(m["e"])] = t
    if len(group) == 3 * (e1 - e0):
        weights[m["prefix"] + ".gate_up_proj"] = torch.stack(
            [torch.cat([group["gate", e], group["up", e]]) for e in range(e0, e1)])
        weights[m["prefix"] + ".down_proj"] = torch.stack([group["down", e] for e in range(e0, e1)])
        del experts[m["prefix"]]


def _on_disk_shapes(cfg: ModelConfig, stored) -> dict[str, tuple[int, ...]]:
    """`expected_shapes` as stored: without a tied lm_head, and per expert where the file stores experts so."""
    want = dict(expected_shapes(cfg))
    if cfg.tie_word_embeddings:
        del want[LM_HEAD]
    per_expert = {m["prefix"] for m in map(_PER_EXPERT.match, stored) if m}
    for prefix in per_expert:
        fused = (prefix + ".gate_up_proj", prefix + ".down_proj")
        if not cfg.is_moe or fused[0] not in want or any(n in stored for n in fused):
            continue  # reported as unexpected (dense model, unknown layer, or stored both ways)
        E, H, I = want[fused[1]]  # down_proj [E, H, I]
        del want[fused[0]], want[fused[1]]
        for e in range(E):
            want.update({f"{prefix}.{e}.gate_proj.weight": (I, H), f"{prefix}.{e}.up_proj.weight": (I, H),
                         f"{prefix}.{e}.down_proj.weight": (H, I)})
    return want


def _check(stored, want, duplicates, path):
    """One ValueError naming every duplicate, missing, unexpected or misshaped tensor."""
    problems = [f"stored twice: {n}" for n in duplicates]
    problems += [f"missing: {n}" for n in want if n not in stored]
    problems += [f"unexpected: {n}" for n in stored if n not in want]
    problems += [f"misshaped: {n}: expected {list(want[n])}, got {list(stored[n][1])}" for n in want
                 if n in stored and stored[n][1] != tuple(want[n])]
    if problems:
        shown = "\n  ".join(problems[:50]) + (f"\n  ... and {len(problems) - 50} more" if len(problems) > 50 else "")
        raise ValueError(f"checkpoint {str(path)!r} does not match its config.json:\n  {shown}")


def _resolve_dtype(dtype):
    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype
    name = str(dtype).removeprefix("torch.")
    if name not in _DTYPES:
        raise ValueError(f"unsupported dtype {dtype!r}: expected one of {sorted(_DTYPES)}")
    return _DTYPES[name]


def _progress(items, show: bool | None, desc: str):
    """tqdm over items on stderr: show=True always, None only on a terminal (tqdm's disable=None), False never."""
    if show is False:
        return items
    from tqdm.auto import tqdm
    return tqdm(items, desc=desc, unit="tensor", disable=None if show is None else False, delay=1.0)
