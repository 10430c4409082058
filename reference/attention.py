"""Softmax attention: packed variable-length prefill (ViT and LM). Decode against a KV cache: decode_attention.py.

Layouts (see docs/op_catalogue.md):
  * packed: tokens of all segments concatenated on axis 0, `cu_seqlens` int32/int64 [n+1] marks the boundaries
    (starts at 0, non-decreasing, ends at T; zero-length segments are allowed).
  * GQA: with r = Hq / Hkv, kv head j serves query heads j*r .. j*r+r-1 (query head h reads kv head h // r).

Precision: scores, softmax and the weighted sum are computed in fp32 (fp64 when the inputs are fp64); the output
has the dtype of q. The log-sum-exp is returned in that compute dtype (fp32, or fp64 for fp64 inputs).
Strided (non-contiguous) inputs are accepted: the reference is the math, layout rules belong to the kernels.
Memory: `attention` walks the queries in blocks, each against the keys of its own segments under the same
explicit mask (`attention_mask(..., rows=, cols=)`), so no [T, T] mask or score matrix is ever built: the largest
temporary is one [Hq, block, segment] score block of at most SCORE_ELEMENTS elements (256 MiB in fp32).
"""

from __future__ import annotations

import torch

from ._checks import check_cu_seqlens, check_divides, check_float, check_same_device, check_tensor

__all__ = ["attention_mask", "attention"]


def _compute_dtype(t: torch.Tensor) -> torch.dtype:
    """fp32 math, unless the caller already works in fp64."""
    return torch.float64 if t.dtype == torch.float64 else torch.float32


def _total_tokens(cu_seqlens) -> int:
    """Last entry of cu_seqlens (0 if it is not a usable tensor, so that check_cu_seqlens reports the problem)."""
    if isinstance(cu_seqlens, torch.Tensor) and cu_seqlens.dim() == 1 and cu_seqlens.numel() > 0:
        return int(cu_seqlens[-1])
    return 0


def attention_mask(cu_seqlens: torch.Tensor, causal: bool, rows: slice | None = None,
                   cols: slice | None = None) -> torch.Tensor:
    """The explicit mask that `attention` applies.

    cu_seqlens: int [n+1], segment boundaries of T = cu_seqlens[-1] packed tokens.
    causal:     also forbid attending to later tokens of the same segment.
    rows, cols: optional slices (step 1) of query / key tokens: the block mask[rows, cols] of the same mask,
                built without the rest of it (`attention` walks the queries in such blocks).
    Returns mask[T, T] bool on cu_seqlens' device: mask[i, j] is True when query token i may attend to key token j,
    i.e. i and j lie in the same segment (block-diagonal), and j <= i when causal.
    """
    check_cu_seqlens(cu_seqlens, _total_tokens(cu_seqlens))
    if not isinstance(causal, bool):
        raise TypeError(f"causal must be a bool, got {type(causal).__name__}")
    cu = cu_seqlens.to(torch.int64)
    total = int(cu[-1])
    qi = _positions(rows, total, "rows", cu.device)
    kj = _positions(cols, total, "cols", cu.device)
    # segment id of each token: number of boundaries cu[1:] at or below its position
    seg_q = torch.searchsorted(cu[1:], qi, right=True)
    seg_k = torch.searchsorted(cu[1:], kj, right=True)
    mask = seg_q[:, None] == seg_k[None, :]  # block-diagonal
    if causal:
        mask &= kj[None, :] <= qi[:, None]
    return mask


def _positions(sl: slice | None, total: int, name: str, device) -> torch.Tensor:
    """Token positions of a slice of 0..total-1 (all when None)."""
    if sl is None:
        return torch.arange(total, device=device)
    if not isinstance(sl, slice) or sl.step not in (None, 1):
        raise ValueError(f"{name} must be a slice with step 1 (or None), got {sl!r}")
    return torch.arange(*sl.indices(total), device=device)


# Queries per block: the [Hq, block, keys] score block is the largest temporary of `attention`. With at most
# this many score elements (4 bytes each: 256 MiB) a block still amortises the matmul well on a CPU.
SCORE_ELEMENTS = 1 << 26


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cu_seqlens: torch.Tensor, causal: bool,
              scale: float | None = None, return_lse: bool = False, *, max_seqlen: int | None = None,
              validate: bool = True):
    """Packed variable-length softmax attention, each segment attending only within itself.

    q: [T, Hq, d]; k, v: [T, Hkv, d] (Hkv divides Hq; GQA as in the module docstring).
    cu_seqlens: int [n+1], ends at T.  causal: bool.  scale: default d ** -0.5.
    out[i, h] = sum_j softmax_j(scale * q[i,h] . k[j,h//r], over j with mask[i,j]) * v[j, h//r]
    Returns out [T, Hq, d] in q.dtype, or (out, lse) with lse [T, Hq] = log sum_{j allowed} exp(scale * q[i,h].k[j]).
    max_seqlen, validate: hints for the kernels (the longest segment, known on the host; skip the host-side
    cu_seqlens check). The reference reads cu_seqlens to build its mask anyway, so it always checks it, and
    checks that max_seqlen, when given, covers the longest segment.
    """
    check_float("q", q, ndim=3)
    check_float("k", k, ndim=3)
    check_float("v", v, ndim=3)
    check_same_device(q=q, k=k, v=v, cu_seqlens=cu_seqlens)
    if k.dtype != q.dtype or v.dtype != q.dtype:
        raise ValueError(f"q, k, v must share a dtype, got q={q.dtype}, k={k.dtype}, v={v.dtype}")
    T, Hq, d = q.shape
    check_tensor("k", k, shape=(T, None, d))
    Hkv = k.shape[1]
    check_tensor("v", v, shape=(T, Hkv, d))
    check_divides("Hkv (k heads)", Hkv, "Hq (q heads)", Hq)
    check_cu_seqlens(cu_seqlens, T)
    if max_seqlen is not None:
        longest = int((cu_seqlens[1:] - cu_seqlens[:-1]).max()) if cu_seqlens.numel() > 1 else 0
        if isinstance(max_seqlen, bool) or not isinstance(max_seqlen, int) or max_seqlen < longest:
            raise ValueError(f"max_seqlen must be an int >= the longest segment ({longest}), got {max_seqlen!r}")
    scale = d ** -0.5 if scale is None else float(scale)
    acc = _compute_dtype(q)
    r = Hq // Hkv
    cu = cu_seqlens.to(torch.int64).cpu()
    out = torch.empty(T, Hq, d, dtype=acc, device=q.device)
    lse = torch.empty(Hq, T, dtype=acc, device=q.device)
    # Queries in blocks: each block's scores against the keys of the segments it touches (every other key is
    # masked for all of its rows), so no [T, T] mask or score matrix exists; memory is O(block * segment).
    i0 = 0
    while i0 < T:
        seg = int(torch.searchsorted(cu[1:], torch.tensor(i0), right=True))
        lo = int(cu[seg])  # keys start at the block's first segment
        block = max(1, SCORE_ELEMENTS // (Hq * max(1, int(cu[seg + 1]) - lo)))
        i1 = min(T, i0 + block)
        hi = int(cu[int(torch.searchsorted(cu[1:], torch.tensor(i1 - 1), right=True)) + 1])  # ... to its last's end
        if Hq * (i1 - i0) * (hi - lo) > SCORE_ELEMENTS and i1 > int(cu[seg + 1]):
            i1 = hi = int(cu[seg + 1])  # the block reached into long segments: stop at the first one's end
        mask = attention_mask(cu_seqlens, causal, rows=slice(i0, i1), cols=slice(lo, hi))  # [b, keys]
        qf = q[i0:i1].to(acc).transpose(0, 1)  # [Hq, b, d]
        kf = k[lo:hi].to(acc).repeat_interleave(r, dim=1)  # [keys, Hq, d]: q head h sees kv head h // r
        vf = v[lo:hi].to(acc).repeat_interleave(r, dim=1).transpose(0, 1)  # [Hq, keys, d]
        scores = torch.matmul(qf, kf.permute(1, 2, 0)).mul_(scale)  # [Hq, b, keys]; in place from here on
        scores.masked_fill_(~mask, float("-inf"))
        # every query row allows at least itself (it lies in its own segment), so no row is all -inf
        m = scores.amax(dim=-1, keepdim=True)  # [Hq, b, 1]
        probs = scores.sub_(m).exp_()  # unnormalised softmax; exp(-inf) = 0 on masked entries
        denom = probs.sum(dim=-1, keepdim=True)
        out[i0:i1] = (torch.matmul(probs, vf) / denom).transpose(0, 1)  # [b, Hq, d]
        lse[:, i0:i1] = (m + denom.log()).squeeze(-1)  # log sum_j exp(scale q.k_j)
        del mask, scores, probs  # before the next block's are made: one score block alive at a time
        i0 = i1
    out = out.to(q.dtype)
    if return_lse:
        return out, lse.transpose(0, 1).contiguous()  # [T, Hq]
    return out
