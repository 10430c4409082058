"""Tiny random Qwen3.5 checkpoints written by transformers' own `save_pretrained` (the peer for parity tests).

Session-scoped fixtures (import them into a test module):
    dense_tied, dense_untied, moe  ->  TinyCheckpoint(path, hf): the directory and the HF model loaded from it.
Importing `one_torch_thread` too makes the module run torch on one thread (autouse).
Each checkpoint is built once per process (fixed seed) and shared by every module that imports the fixtures.

Sizes are toy but exercise every path: 4 decoder layers [DeltaNet, attention, DeltaNet, attention], GQA 4/2,
head_dim 64 with partial rotary (16 dims, mRoPE section [3, 3, 2] interleaved), GVA 2 key / 4 value heads,
a 2-block ViT (head_dim 16) with an 8x8 position table (so images both smaller and larger than it).
Token ids: text < 300; 300 image pad, 301 video pad, 302 vision start, 303 vision end.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

IMAGE, VIDEO, VSTART, VEND = 300, 301, 302, 303
VOCAB_TEXT = 300  # random prompt tokens are drawn below this

TEXT = dict(
    vocab_size=320, hidden_size=64, intermediate_size=96, num_hidden_layers=4,
    layer_types=["linear_attention", "full_attention", "linear_attention", "full_attention"],
    num_attention_heads=4, num_key_value_heads=2, head_dim=64,
    linear_conv_kernel_dim=4, linear_key_head_dim=16, linear_value_head_dim=16,
    linear_num_key_heads=2, linear_num_value_heads=4,
    rope_parameters=dict(rope_type="default", rope_theta=1e7, partial_rotary_factor=0.25, mrope_interleaved=True,
                         mrope_section=[3, 3, 2]),
    initializer_range=0.1,
)
VISION = dict(depth=2, hidden_size=32, intermediate_size=48, num_heads=2, out_hidden_size=64,
              num_position_embeddings=64, initializer_range=0.1)
MOE = dict(num_experts=4, num_experts_per_tok=2, moe_intermediate_size=24, shared_expert_intermediate_size=40)
IDS = dict(image_token_id=IMAGE, video_token_id=VIDEO, vision_start_token_id=VSTART, vision_end_token_id=VEND)


@dataclass
class TinyCheckpoint:
    path: Path
    hf: torch.nn.Module  # the transformers model, eval mode, fp32


@contextlib.contextmanager
def no_mkldnn():
    """HF's depthwise conv1d takes ~50 ms per call through oneDNN on this CPU; the native path ~1 ms."""
    prev = torch.backends.mkldnn.enabled
    torch.backends.mkldnn.enabled = False
    try:
        yield
    finally:
        torch.backends.mkldnn.enabled = prev


def _perturb(model: torch.nn.Module, seed: int) -> None:
    """Give norm weights and biases (HF inits them to 0 / 1) random values, so (1+w) vs w and biases matter."""
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=g)
            if name.endswith(("norm.weight", "layernorm.weight", "norm1.weight", "norm2.weight", "bias")):
                p.add_(0.2 * noise)  # (1+w) weights ~N(0, .2), LayerNorm / gated ~N(1, .2), biases ~N(0, .2)


def build(kind: str, root: Path) -> TinyCheckpoint:
    from transformers import (Qwen3_5Config, Qwen3_5ForConditionalGeneration, Qwen3_5MoeConfig,
                              Qwen3_5MoeForConditionalGeneration)

    torch.manual_seed({"dense_tied": 0, "dense_untied": 1, "moe": 2}[kind])
    if kind == "moe":
        text = {k: v for k, v in TEXT.items() if k != "intermediate_size"} | MOE
        cfg = Qwen3_5MoeConfig(text_config=text | dict(tie_word_embeddings=False), vision_config=VISION, **IDS,
                               tie_word_embeddings=False)
        model = Qwen3_5MoeForConditionalGeneration(cfg)
    else:
        tie = kind == "dense_tied"
        cfg = Qwen3_5Config(text_config=TEXT | dict(tie_word_embeddings=tie), vision_config=VISION, **IDS,
                            tie_word_embeddings=tie)
        model = Qwen3_5ForConditionalGeneration(cfg)
    _perturb(model, {"dense_tied": 0, "dense_untied": 1, "moe": 2}[kind])
    path = root / kind
    model.save_pretrained(path)
    hf = type(model).from_pretrained(path, dtype=torch.float32).eval()
    return TinyCheckpoint(path, hf)


_BUILT: dict[str, TinyCheckpoint] = {}


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """Toy shapes run 10-20x faster on one thread: with 2 workers on 2 cores, OpenMP's spinning threads
    oversubscribe the CPU. Restored after the module."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _get(kind, tmp_path_factory) -> TinyCheckpoint:
    if kind not in _BUILT:
        _BUILT[kind] = build(kind, tmp_path_factory.mktemp("tiny_hf"))
    return _BUILT[kind]


@pytest.fixture(scope="session")
def dense_tied(tmp_path_factory) -> TinyCheckpoint:
    return _get("dense_tied", tmp_path_factory)


@pytest.fixture(scope="session")
def dense_untied(tmp_path_factory) -> TinyCheckpoint:
    return _get("dense_untied", tmp_path_factory)


@pytest.fixture(scope="session")
def moe(tmp_path_factory) -> TinyCheckpoint:
    return _get("moe", tmp_path_factory)


# ------------------------------------------------------------------------------------------------ inputs

def image_tokens(grid) -> list[int]:
    t, h, w = grid
    return [VSTART] + [IMAGE] * (t * h * w // 4) + [VEND]


def video_tokens(grid, gen) -> list[int]:
    """One `<time> <vs> pads <ve>` group per temporal patch (a random text token stands in for the time)."""
    t, h, w = grid
    out = []
    for _ in range(t):
        out += rand_text(1, gen) + [VSTART] + [VIDEO] * (h * w // 4) + [VEND]
    return out


def rand_text(n: int, gen) -> list[int]:
    return torch.randint(0, VOCAB_TEXT, (n,), generator=gen).tolist()


def pixels(grids, gen) -> torch.Tensor:
    n = sum(t * h * w for t, h, w in grids)
    return torch.randn(n, 1536, generator=gen)


def left_pad(rows: list[list[int]], pad: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    S = max(len(r) for r in rows)
    ids = torch.full((len(rows), S), pad, dtype=torch.long)
    mask = torch.zeros(len(rows), S, dtype=torch.long)
    for b, r in enumerate(rows):
        ids[b, S - len(r):] = torch.tensor(r)
        mask[b, S - len(r):] = 1
    return ids, mask


def mm_token_types(ids: torch.Tensor) -> torch.Tensor:
    return (ids == IMAGE).long() + 2 * (ids == VIDEO).long()


def hf_logits(hf, **inputs) -> torch.Tensor:
    with torch.no_grad(), no_mkldnn():
        return hf(**inputs, mm_token_type_ids=mm_token_types(inputs["input_ids"])).logits


def hf_generate(hf, **inputs) -> torch.Tensor:
    with torch.no_grad(), no_mkldnn():
        return hf.generate(**inputs, mm_token_type_ids=mm_token_types(inputs["input_ids"]))


