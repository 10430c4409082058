"""Decode attention against a static KV cache, and the cache write that fills it.

Cache layout: k_cache, v_cache [B, S, Hkv, d], one row per sequence, S = capacity (slots). `lengths[B]` counts
the valid slots of each row: slots 0 .. lengths[b]-1 hold the keys/values of tokens 0 .. lengths[b]-1 of
sequence b; the slots past that are never read (they may hold garbage, NaN included).
GQA: with r = Hq / Hkv, kv head j serves query heads j*r .. j*r+r-1 (query head h reads kv head h // r).

Precision: scores, softmax and the weighted sum in fp32 (fp64 for fp64 inputs); the output has q's dtype.
Strided inputs are accepted: the reference is the math, layout rules belong to the kernels.
"""

from __future__ import annotations

import torch

from ._checks import check_cu_seqlens, check_divides, check_float, check_same_device, check_tensor

__all__ = ["decode_attention", "kv_cache_append"]

_INT = (torch.int32, torch.int64)


def _compute_dtype(t: torch.Tensor) -> torch.dtype:
    """fp32 math, unless the caller already works in fp64."""
    return torch.float64 if t.dtype == torch.float64 else torch.float32


def _check_caches(k_cache, v_cache, B: int | None, Hkv: int | None, d: int | None) -> tuple[int, int, int, int]:
    """k_cache, v_cache [B, S, Hkv, d] of one float dtype; returns (B, S, Hkv, d)."""
    check_float("k_cache", k_cache, ndim=4)
    check_float("v_cache", v_cache, ndim=4)
    check_tensor("k_cache", k_cache, shape=(B, None, Hkv, d))
    B, S, Hkv, d = k_cache.shape
    check_tensor("v_cache", v_cache, shape=(B, S, Hkv, d))
    if v_cache.dtype != k_cache.dtype:
        raise ValueError(f"k_cache and v_cache must share a dtype, got {k_cache.dtype}, {v_cache.dtype}")
    return B, S, Hkv, d


# Argument checks, shared with the kernel wrappers (kernels/decode_attention.py): the structural ones need no
# device read; the *_lengths / *_fits ones read lengths and cu_seqlens back to the host.

def check_decode_args(q, k_cache, v_cache, lengths) -> tuple[int, int, int, int, int]:
    """Ranks, shapes, dtypes and devices of decode_attention's tensors; returns (B, Hq, d, S, Hkv)."""
    check_float("q", q, ndim=3)
    check_tensor("lengths", lengths, ndim=1, dtypes=_INT)
    check_same_device(q=q, k_cache=k_cache, v_cache=v_cache, lengths=lengths)
    B, Hq, d = q.shape
    B, S, Hkv, d = _check_caches(k_cache, v_cache, B, None, d)
    if k_cache.dtype != q.dtype:
        raise ValueError(f"q, k_cache, v_cache must share a dtype, got {q.dtype}, {k_cache.dtype}, {v_cache.dtype}")
    check_tensor("lengths", lengths, shape=(B,))
    check_divides("Hkv (cache heads)", Hkv, "Hq (q heads)", Hq)
    return B, Hq, d, S, Hkv


def check_max_length(max_length, S: int, longest: int = 0) -> None:
    """max_length (a kernel hint: no row is longer) must be None or an int in [longest row, S]."""
    if max_length is None:
        return
    if isinstance(max_length, bool) or not isinstance(max_length, int) or not longest <= max_length <= S:
        raise ValueError(f"max_length must be an int in [longest row {longest}, S={S}], got {max_length!r}")


def check_decode_lengths(lengths, S: int, max_length=None) -> None:
    """Reads lengths: each in [0, S], and max_length (if given) covers the longest."""
    lens = lengths.detach().to("cpu", torch.int64)
    if lens.numel() and (int(lens.min()) < 0 or int(lens.max()) > S):
        raise ValueError(f"lengths must lie in [0, S={S}] (the cache capacity), got {lens.tolist()}")
    check_max_length(max_length, S, int(lens.max()) if lens.numel() else 0)


def check_append_args(k, v, k_cache, v_cache, cu_seqlens, lengths) -> tuple[int, int]:
    """Ranks, shapes, dtypes and devices of kv_cache_append's tensors (cu_seqlens' size, not its values);
    returns (B, S)."""
    check_float("k", k, ndim=3)
    check_float("v", v, ndim=3)
    check_tensor("cu_seqlens", cu_seqlens, ndim=1, dtypes=_INT)
    check_tensor("lengths", lengths, ndim=1, dtypes=_INT)
    check_same_device(k=k, v=v, k_cache=k_cache, v_cache=v_cache, cu_seqlens=cu_seqlens, lengths=lengths)
    T, Hkv, d = k.shape
    check_tensor("v", v, shape=(T, Hkv, d))
    B, S, Hkv, d = _check_caches(k_cache, v_cache, None, Hkv, d)
    if k.dtype != k_cache.dtype or v.dtype != k_cache.dtype:
        raise ValueError(f"k, v, k_cache, v_cache must share a dtype, got {k.dtype}, {v.dtype}, {k_cache.dtype}, "
                         f"{v_cache.dtype}")
    if cu_seqlens.numel() != B + 1:
        raise ValueError(f"cu_seqlens must have B+1 = {B + 1} entries (one segment per cache row), "
                         f"got {cu_seqlens.numel()}")
    check_tensor("lengths", lengths, shape=(B,))
    return B, S


def check_append_fits(cu_seqlens, lengths, S: int, T: int):
    """Reads cu_seqlens and lengths: cu_seqlens valid for T new tokens, every row's new tokens fit the capacity S.
    Returns (lengths, cu, new token counts) as int64 CPU tensors."""
    check_cu_seqlens(cu_seqlens, T)
    cu = cu_seqlens.detach().to("cpu", torch.int64)
    lens = lengths.detach().to("cpu", torch.int64)
    new = cu[1:] - cu[:-1]
    if lens.numel() and (int(lens.min()) < 0 or int((lens + new).max()) > S):
        raise ValueError(f"lengths + new tokens must lie in [0, S={S}] (the cache capacity), got lengths "
                         f"{lens.tolist()} + new {new.tolist()}")
    return lens, cu, new


def decode_attention(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, lengths: torch.Tensor,
                     scale: float | None = None, *, max_length: int | None = None,
                     validate: bool = True) -> torch.Tensor:
    """One new query per sequence attending to its KV cache (the new token's k/v already written to the cache).

    q: [B, Hq, d]; k_cache, v_cache: [B, S, Hkv, d] (Hkv divides Hq); lengths: int32/int64 [B], 0 <= lengths[b] <= S.
    out[b, h] = sum_{j < lengths[b]} softmax_j(scale * q[b,h] . k_cache[b,j,h//r]) * v_cache[b, j, h//r]
    A row of length 0 attends to nothing: its output is 0 (the empty sum).
    scale: default d ** -0.5.  Returns [B, Hq, d] in q.dtype.
    max_length, validate: kernel hints (no row is longer than max_length, known on the host; skip the host
    check of lengths, which reads the device). The reference reads lengths anyway, so it always checks them,
    and checks that max_length, when given, covers the longest row.
    """
    B, Hq, d, S, Hkv = check_decode_args(q, k_cache, v_cache, lengths)
    check_decode_lengths(lengths, S, max_length)
    scale = d ** -0.5 if scale is None else float(scale)
    lens = lengths.detach().to("cpu", torch.int64)

    acc = _compute_dtype(q)
    r = Hq // Hkv
    out = torch.zeros(B, Hq, d, dtype=acc, device=q.device)
    for b in range(B):
        L = int(lens[b])
        if L == 0:
            continue  # no keys: the empty sum
        kb = k_cache[b, :L].to(acc).repeat_interleave(r, dim=1)  # [L, Hq, d]
        vb = v_cache[b, :L].to(acc).repeat_interleave(r, dim=1)
        scores = torch.einsum("hd,jhd->hj", q[b].to(acc), kb) * scale  # [Hq, L]
        out[b] = torch.einsum("hj,jhd->hd", torch.softmax(scores, dim=-1), vb)
    return out.to(q.dtype)


def kv_cache_append(k: torch.Tensor, v: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                    cu_seqlens: torch.Tensor, lengths: torch.Tensor, *, validate: bool = True) -> None:
    """Write packed new keys/values into each row's next free cache slots, in place.

    k, v: [T, Hkv, d], the new tokens of B sequences packed on axis 0; cu_seqlens int [B+1] marks them (ends at T):
    sequence b's tokens are k[cu[b] : cu[b+1]]. k_cache, v_cache: [B, S, Hkv, d] of k's dtype.
    lengths: int [B], the tokens already cached per row (not updated here).
    Token i of sequence b goes to slot lengths[b] + i:  k_cache[b, lengths[b] + i] = k[cu[b] + i]  (same for v).
      prefill: lengths = 0;  chunked prefill: lengths = the tokens of earlier chunks;  decode: cu = arange(B+1).
    Overflow: lengths[b] + (cu[b+1] - cu[b]) must not exceed S; the reference raises ValueError. (The kernel
    cannot read lengths on the host when replayed from a CUDA graph: it drops writes past slot S-1, and the
    caller checks capacity where it knows the lengths.)
    validate: a kernel hint (skip the host checks that read cu_seqlens and lengths); the reference always checks.
    Returns None.
    """
    B, S = check_append_args(k, v, k_cache, v_cache, cu_seqlens, lengths)
    lens, cu, new = check_append_fits(cu_seqlens, lengths, S, k.shape[0])
    for b in range(B):
        L, n, c = int(lens[b]), int(new[b]), int(cu[b])
        k_cache[b, L:L + n] = k[c:c + n]
        v_cache[b, L:L + n] = v[c:c + n]
