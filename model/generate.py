"""Token selection and the prefill + decode loop (HF `generate` semantics).

* Greedy unless do_sample; sampling applies temperature, then top-k, then top-p (HF's warper order) and draws
  from a `torch.Generator` seeded with `seed`.
* A row stops after it emits one of the eos ids; afterwards it receives `pad_id` (it keeps being fed, as in HF).
  The loop ends when every row has stopped or after max_new_tokens.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch


def filter_logits(logits: torch.Tensor, *, temperature: float = 1.0, top_k: int = 0,
                  top_p: float = 1.0) -> torch.Tensor:
    """Sampling filters in HF's order: logits / temperature, then top-k, then top-p (removed tokens -> -inf)."""
    logits = logits.float()
    if temperature != 1.0:
        logits = logits / temperature
    if top_k and top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        # drop the smallest tokens whose total probability stays within 1 - top_p (keep at least one)
        sorted_logits, order = torch.sort(logits, dim=-1)
        cum = sorted_logits.softmax(dim=-1).cumsum(dim=-1)
        drop = cum <= 1.0 - top_p
        drop[:, -1] = False
        logits = logits.masked_fill(drop.scatter(1, order, drop), float("-inf"))
    return logits


def select_tokens(logits: torch.Tensor, *, do_sample: bool = False, temperature: float = 1.0, top_k: int = 0,
                  top_p: float = 1.0, generator: torch.Generator | None = None) -> torch.Tensor:
    """logits [B, V] -> next token ids int64 [B]: argmax, or a draw from the filtered softmax."""
    if not do_sample:
        return logits.float().argmax(dim=-1)
    probs = filter_logits(logits, temperature=temperature, top_k=top_k, top_p=top_p).softmax(dim=-1)
    return torch.multinomial(probs.cpu(), 1, generator=generator).squeeze(1).to(logits.device)


def check_sampling(do_sample, temperature, top_k, top_p, max_new_tokens):
    if not isinstance(max_new_tokens, int) or max_new_tokens < 0:
        raise ValueError(f"max_new_tokens must be a non-negative int, got {max_new_tokens!r}")
    if do_sample and not temperature > 0:
        raise ValueError(f"temperature must be > 0 when sampling, got {temperature!r}")
    if not isinstance(top_k, int) or top_k < 0:
        raise ValueError(f"top_k must be a non-negative int (0 = off), got {top_k!r}")
    if not 0.0 < top_p <= 1.0:
        raise ValueError(f"top_p must lie in (0, 1], got {top_p!r}")


def decode_loop(lm, cache, first_logits: torch.Tensor, max_new_tokens: int, *, eos_ids, pad_id: int,
                do_sample=False, temperature=1.0, top_k=0, top_p=1.0, seed=None) -> Iterator[torch.Tensor]:
    """Yield the next token of every row ([B] int64), step by step, after a prefill that filled `cache`.

    first_logits: [B, V] logits of each row's last prompt token. The cache's `lengths` and `rope_delta` give
    each new token's slot and mRoPE position (slot + delta on all three axes).
    """
    B = first_logits.shape[0]
    dev = first_logits.device
    gen = None
    if do_sample:
        gen = torch.Generator()
        if seed is None:
            gen.seed()
        else:
            gen.manual_seed(int(seed))
    eos = torch.tensor(sorted(set(eos_ids)), dtype=torch.int64, device=dev)
    finished = torch.zeros(B, dtype=torch.bool, device=dev)
    cu = torch.arange(B + 1, dtype=torch.int32, device=dev)  # one token per row
    logits = first_logits
    for step in range(max_new_tokens):
        nxt = select_tokens(logits, do_sample=do_sample, temperature=temperature, top_k=top_k, top_p=top_p,
                            generator=gen)
        nxt = torch.where(finished, torch.full_like(nxt, pad_id), nxt)
        finished |= torch.isin(nxt, eos)
        yield nxt
        if bool(finished.all()) or step + 1 == max_new_tokens:
            return
        if int(cache.lengths.max()) >= cache.capacity:
            raise RuntimeError("KV cache is full")
        pos = (cache.lengths.long() + cache.rope_delta).expand(3, B)
        h = lm.forward(lm.embed(nxt), pos, cu, cache, decode=True)
        cache.lengths += 1
        logits = lm.head(h)
