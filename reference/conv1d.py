"""The Gated DeltaNet's short causal conv (docs/model.md 3.6): depthwise, causal, fused SiLU, with state.

Packed layout: tokens of n sequences concatenated on axis 0, `cu_seqlens` int32/int64 [n+1] marks the boundaries
(zero-length sequences allowed). The per-sequence state [n, C, K-1] carries the K-1 inputs that precede each
sequence, so a prefill can be resumed by a later call (e.g. decode: T = n, one token per sequence).

Precision: fp32 math (fp64 when x is fp64); y and the state in x's dtype. Strided inputs are accepted: layout
rules belong to the kernels.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ._checks import check_cu_seqlens, check_float, check_same_device, check_tensor

__all__ = ["causal_conv1d"]


def _segments(cu_seqlens: torch.Tensor) -> list[tuple[int, int]]:
    cu = cu_seqlens.detach().to("cpu", torch.int64).tolist()
    return list(zip(cu[:-1], cu[1:]))


def causal_conv1d(x: torch.Tensor, weight: torch.Tensor, cu_seqlens: torch.Tensor,
                  state: torch.Tensor | None = None, *, state_out: torch.Tensor | None = None,
                  max_seqlen: int | None = None, validate: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """Depthwise causal conv over each sequence, then SiLU.

    x: [T, C] packed tokens of n sequences; weight: [C, K] (the HF conv1d.weight [C, 1, K] squeezed);
    cu_seqlens: int [n+1]; state: [n, C, K-1] or None (zeros), same dtype as x: the K-1 inputs that precede each
    sequence, oldest first (state[s, :, -1] is the input right before the sequence's first token).

    For a token at position t of sequence s, with xs = concat(state[s].T, x[sequence s]) ([K-1+L, C]):
        y[t, c] = silu( sum_{j=0..K-1} weight[c, j] * xs[t + j, c] )        (weight[:, K-1] hits the current token)
    new_state[s] = the last K-1 rows of xs, transposed ([C, K-1]); for a sequence shorter than K-1 it still
    contains the tail of the old state (a zero-length sequence keeps its state).

    state_out: optional [n, C, K-1] tensor of x's dtype that receives new_state and is returned as it; it may be
      `state` itself (the in-place decode update: every read of the old state happens before it is overwritten).
    max_seqlen: optional hint, the longest sequence's length (kernels size their grid by it instead of reading
      cu_seqlens on the host); checked here. It may exceed the true maximum, never fall short of it.
    validate: a kernel hint (False: skip the host check of cu_seqlens, which reads the device); the reference
      reads cu_seqlens anyway, so it always checks.
    Returns (y [T, C] in x.dtype, new_state [n, C, K-1] in x.dtype).
    """
    check_float("x", x, ndim=2)
    check_float("weight", weight, ndim=2)
    T, C = x.shape
    check_tensor("weight", weight, shape=(C, None))
    K = weight.shape[1]
    if K < 1:
        raise ValueError(f"weight must have at least one tap, got shape {tuple(weight.shape)}")
    check_cu_seqlens(cu_seqlens, T)
    n = cu_seqlens.numel() - 1
    for name, t in (("state", state), ("state_out", state_out)):
        if t is not None:
            check_float(name, t, shape=(n, C, K - 1))
            if t.dtype != x.dtype:
                raise ValueError(f"{name} must have the dtype of x ({x.dtype}), got {t.dtype}")
    check_same_device(x=x, weight=weight, cu_seqlens=cu_seqlens, state=state, state_out=state_out)
    segments = _segments(cu_seqlens)
    if max_seqlen is not None:
        if isinstance(max_seqlen, bool) or not isinstance(max_seqlen, int) or max_seqlen < 0:
            raise ValueError(f"max_seqlen must be a non-negative int or None, got {max_seqlen!r}")
        longest = max(b - a for a, b in segments)
        if max_seqlen < longest:
            raise ValueError(f"max_seqlen={max_seqlen} is shorter than the longest sequence ({longest} tokens)")

    acc = torch.float64 if x.dtype == torch.float64 else torch.float32
    w = weight.to(acc)
    y = torch.empty(T, C, dtype=acc, device=x.device)
    new_state = torch.empty(n, C, K - 1, dtype=x.dtype, device=x.device)
    for s, (a, b) in enumerate(segments):
        prev = torch.zeros(K - 1, C, dtype=acc, device=x.device) if state is None else state[s].to(acc).T
        xs = torch.cat([prev, x[a:b].to(acc)], dim=0)  # [K-1+L, C]
        L = b - a
        y[a:b] = sum(w[:, j] * xs[j:j + L] for j in range(K))  # tap j sees the input K-1-j steps back
        new_state[s] = xs[xs.shape[0] - (K - 1):].T.to(x.dtype)
    if state_out is not None:
        new_state = state_out.copy_(new_state)  # new_state was built from copies, so state_out may alias state
    return F.silu(y).to(x.dtype), new_state
