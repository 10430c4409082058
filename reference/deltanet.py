"""Gated DeltaNet pieces (docs/model.md 3.6): the gated delta rule (the short causal conv is in conv1d.py).

Packed layout: tokens of n sequences concatenated on axis 0, `cu_seqlens` int32/int64 [n+1] marks the boundaries
(zero-length sequences allowed). Per-sequence state is carried in [n, ...] tensors, so a prefill can be resumed
by a later call (e.g. decode: T = n, one token per sequence).

Precision: fp32 math (fp64 when the main input is fp64); outputs in the input dtype, recurrent states in the compute
dtype (fp32, or fp64 for fp64 inputs). Strided inputs are accepted: layout rules belong to the kernels.
"""

from __future__ import annotations

import torch

from ._checks import check_cu_seqlens, check_divides, check_float, check_same_device, check_tensor
from .norms import l2norm

__all__ = ["gated_delta_rule", "chunked_gated_delta_rule", "gdn_gates", "fused_gated_delta_rule"]


def _compute_dtype(t: torch.Tensor) -> torch.dtype:
    return torch.float64 if t.dtype == torch.float64 else torch.float32


def _segments(cu_seqlens: torch.Tensor) -> list[tuple[int, int]]:
    cu = cu_seqlens.detach().to("cpu", torch.int64).tolist()
    return list(zip(cu[:-1], cu[1:]))


# ---------------------------------------------------------------------------------------------------------------
# gated delta rule
# ---------------------------------------------------------------------------------------------------------------

def _check_gdr(q, k, v, g, beta, cu_seqlens, initial_state):
    """Shared validation for both forms; returns (n, Hk, Hv, dk, dv)."""
    check_float("q", q, ndim=3)
    check_float("k", k, ndim=3)
    check_float("v", v, ndim=3)
    check_float("g", g, ndim=2)
    check_float("beta", beta, ndim=2)
    if k.dtype != q.dtype or v.dtype != q.dtype:
        raise ValueError(f"q, k, v must share a dtype, got q={q.dtype}, k={k.dtype}, v={v.dtype}")
    T, Hk, dk = q.shape
    check_tensor("k", k, shape=(T, Hk, dk))
    check_tensor("v", v, shape=(T, None, None))
    Hv, dv = v.shape[1], v.shape[2]
    check_divides("Hk (key heads)", Hk, "Hv (value heads)", Hv)
    check_tensor("g", g, shape=(T, Hv))
    check_tensor("beta", beta, shape=(T, Hv))
    check_cu_seqlens(cu_seqlens, T)
    n = cu_seqlens.numel() - 1
    if initial_state is not None:
        check_float("initial_state", initial_state, shape=(n, Hv, dk, dv))
    check_same_device(q=q, k=k, v=v, g=g, beta=beta, cu_seqlens=cu_seqlens, initial_state=initial_state)
    return n, Hk, Hv, dk, dv


def _check_outs(q, v, cu_seqlens, n, Hv, dk, dv, out, final_state, max_seqlen):
    """The optional out= pair / final_state= tensor and the max_seqlen hint (shared by both forms); returns the
    tensors for o and the final state (None where not given)."""
    acc = _compute_dtype(q)
    out, final_state = split_out_pair(out, final_state)
    if out is not None:
        check_tensor("out", out, shape=tuple(v.shape), dtypes=(v.dtype,))
    if final_state is not None:
        check_tensor("final_state", final_state, shape=(n, Hv, dk, dv), dtypes=(acc,))
    check_same_device(q=q, out=out, final_state=final_state)
    if max_seqlen is not None:
        if isinstance(max_seqlen, bool) or not isinstance(max_seqlen, int) or max_seqlen < 0:
            raise ValueError(f"max_seqlen must be a non-negative int or None, got {max_seqlen!r}")
        longest = max((b - a for a, b in _segments(cu_seqlens)), default=0)
        if max_seqlen < longest:
            raise ValueError(f"max_seqlen={max_seqlen} is shorter than the longest sequence ({longest} tokens)")
    return out, final_state


def split_out_pair(out, final_state):
    """out= is the pair (o, final_state) (either None), as for every op with several outputs; final_state= alone
    names the state's tensor (e.g. initial_state itself, in place), which is then given once."""
    if out is None:
        return None, final_state
    if not isinstance(out, (tuple, list)) or len(out) != 2:
        got = f"{len(out)} items" if isinstance(out, (tuple, list)) else type(out).__name__
        raise ValueError(f"out must be the pair (o, final_state) (either may be None), got {got}")
    if out[1] is not None and final_state is not None:
        raise ValueError("give the final state's tensor once: out=(o, final_state) or final_state=, not both")
    return out[0], (out[1] if out[1] is not None else final_state)


def _finish(o, final, v, out, final_state):
    """Round o to v's dtype; write into out= / final_state= when given (final_state may alias initial_state:
    the state was read into a copy before this point)."""
    o = o.to(v.dtype)
    if out is not None:
        o = out.copy_(o)
    if final_state is not None:
        final = final_state.copy_(final)
    return o, final


def _prepare_gdr(q, k, v, g, beta, scale, use_qk_l2norm):
    """Cast to the compute dtype, l2-normalise q/k if asked, scale q, and expand key heads to value heads (GVA)."""
    acc = _compute_dtype(q)
    Hk, dk, Hv = q.shape[1], q.shape[2], v.shape[1]
    qf, kf = q.to(acc), k.to(acc)
    if use_qk_l2norm:  # on the already upcast tensors, so no rounding back to the input dtype
        qf, kf = l2norm(qf, eps=1e-6), l2norm(kf, eps=1e-6)
    qf = qf * (dk ** -0.5 if scale is None else float(scale))
    # GVA: value head h reads key head h // (Hv / Hk), i.e. consecutive value heads share a key head
    qf = qf.repeat_interleave(Hv // Hk, dim=1)  # [T, Hv, dk]
    kf = kf.repeat_interleave(Hv // Hk, dim=1)
    return qf, kf, v.to(acc), g.to(acc), beta.to(acc), acc


def gated_delta_rule(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, g: torch.Tensor, beta: torch.Tensor,
                     cu_seqlens: torch.Tensor, initial_state: torch.Tensor | None = None,
                     scale: float | None = None, use_qk_l2norm: bool = False, *, out: torch.Tensor | None = None,
                     final_state: torch.Tensor | None = None, max_seqlen: int | None = None,
                     validate: bool = True):
    """The gated delta rule as a token-by-token recurrence (the spec; docs/model.md 3.6).

    q, k: [T, Hk, dk]; v: [T, Hv, dv] (Hk divides Hv; value head h uses key head h // (Hv/Hk));
    g: [T, Hv] log-decay (<= 0 in the model); beta: [T, Hv] write strength (in (0, 1) in the model);
    cu_seqlens: int [n+1]; initial_state: [n, Hv, dk, dv] or None (zeros).
    q and k are used as given: Qwen3.5 l2-normalises them first (reference.l2norm), which the caller either does
    itself or requests with use_qk_l2norm=True (HF's use_qk_l2norm_in_kernel; eps 1e-6, in fp32).
    q is then multiplied by `scale` (default dk ** -0.5).

    Per sequence and value head, with state S [dk, dv] starting at initial_state:
        S   = exp(g_t) * S                       decay
        u   = S^T k_t                            what the state currently predicts for k_t   [dv]
        S   = S + k_t (x) beta_t (v_t - u)       delta-rule write                             [dk, dv]
        o_t = S^T q_t                                                                         [dv]
    Returns (o [T, Hv, dv] in v.dtype, final_state [n, Hv, dk, dv] in the compute dtype).
    out: optional pair (o's [T, Hv, dv] tensor of v's dtype, final state's [n, Hv, dk, dv] tensor of the compute
    dtype), either None, that receive the results; final_state: the final state's tensor alone, which may be
    initial_state itself (the in-place decode step). Tensors given are returned.
    max_seqlen: optional hint, the longest sequence's length (kernels pick their path by it instead of reading
    cu_seqlens); checked here. validate: a kernel hint (False: skip the host check
    of cu_seqlens, which reads the device); the reference reads cu_seqlens anyway, so it always checks.
    """
    n, Hk, Hv, dk, dv = _check_gdr(q, k, v, g, beta, cu_seqlens, initial_state)
    out, final_state = _check_outs(q, v, cu_seqlens, n, Hv, dk, dv, out, final_state, max_seqlen)
    qf, kf, vf, gf, bf, acc = _prepare_gdr(q, k, v, g, beta, scale, use_qk_l2norm)
    o = torch.empty(v.shape, dtype=acc, device=v.device)
    final = torch.empty(n, Hv, dk, dv, dtype=acc, device=v.device)
    for s, (a, b) in enumerate(_segments(cu_seqlens)):
        S = (torch.zeros(Hv, dk, dv, dtype=acc, device=v.device) if initial_state is None
             else initial_state[s].to(acc))
        for t in range(a, b):
            S = torch.exp(gf[t])[:, None, None] * S
            u = torch.einsum("hkv,hk->hv", S, kf[t])
            S = S + kf[t][:, :, None] * (bf[t][:, None] * (vf[t] - u))[:, None, :]
            o[t] = torch.einsum("hkv,hk->hv", S, qf[t])
        final[s] = S
    return _finish(o, final, v, out, final_state)


def chunked_gated_delta_rule(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, g: torch.Tensor,
                             beta: torch.Tensor, cu_seqlens: torch.Tensor,
                             initial_state: torch.Tensor | None = None, scale: float | None = None,
                             use_qk_l2norm: bool = False, chunk_size: int = 64, *,
                             out: torch.Tensor | None = None, final_state: torch.Tensor | None = None,
                             max_seqlen: int | None = None, validate: bool = True):
    """The same op as `gated_delta_rule`, computed chunk by chunk (the form the prefill kernels use).

    Same arguments (out=, final_state=, max_seqlen= included), meaning and return value; chunk_size >= 1. Sequences are cut into chunks of chunk_size
    tokens (the last one shorter, no padding). Inside a chunk (positions i = 1..L, entry state S0, per value head):
      G_i = g_1 + ... + g_i                 cumulative log-decay, so the decay from j to i is exp(G_i - G_j)
      w_j = the value row token j writes,   w_j = beta_j (v_j - u_j)   ([dv])
    Unrolling the recurrence, the (decayed) state that token j reads is exp(G_j) S0 + sum_{m<j} exp(G_j - G_m) k_m w_m^T,
    so the writes satisfy a unit lower-triangular system (the "UT transform"):
      w_j + beta_j sum_{m<j} exp(G_j - G_m) (k_j . k_m) w_m = beta_j v_j - beta_j exp(G_j) S0^T k_j
      i.e. (I + A) W = diag(beta) V - diag(beta exp(G)) K S0,   A[j,m] = beta_j exp(G_j - G_m) k_j.k_m  (m < j)
    Then, with D[i,j] = exp(G_i - G_j) for j <= i (else 0):
      O      = diag(exp(G)) Q S0 + (D * Q K^T) W                              outputs of the chunk  [L, dv]
      S_next = exp(G_L) S0 + K^T diag(exp(G_L - G)) W                         state after the chunk [dk, dv]
    """
    if not isinstance(chunk_size, int) or chunk_size < 1:
        raise ValueError(f"chunk_size must be a positive int, got {chunk_size!r}")
    n, Hk, Hv, dk, dv = _check_gdr(q, k, v, g, beta, cu_seqlens, initial_state)
    out, final_state = _check_outs(q, v, cu_seqlens, n, Hv, dk, dv, out, final_state, max_seqlen)
    qf, kf, vf, gf, bf, acc = _prepare_gdr(q, k, v, g, beta, scale, use_qk_l2norm)
    # head-major views [Hv, T, ...] so that every chunk is a batch of per-head matrices
    qh, kh, vh = qf.transpose(0, 1), kf.transpose(0, 1), vf.transpose(0, 1)
    gh, bh = gf.transpose(0, 1), bf.transpose(0, 1)
    o = torch.empty(Hv, v.shape[0], dv, dtype=acc, device=v.device)
    final = torch.empty(n, Hv, dk, dv, dtype=acc, device=v.device)
    for s, (a, b) in enumerate(_segments(cu_seqlens)):
        S = (torch.zeros(Hv, dk, dv, dtype=acc, device=v.device) if initial_state is None
             else initial_state[s].to(acc))
        for c0 in range(a, b, chunk_size):
            c1 = min(c0 + chunk_size, b)
            L = c1 - c0
            Q, K, V = qh[:, c0:c1], kh[:, c0:c1], vh[:, c0:c1]  # [Hv, L, dk|dv]
            bet = bh[:, c0:c1, None]  # [Hv, L, 1]
            G = torch.cumsum(gh[:, c0:c1], dim=1)  # [Hv, L]
            lower = torch.ones(L, L, dtype=torch.bool, device=v.device).tril()  # j <= i
            # decay between positions, exp(G_i - G_j); masked before exp so j > i cannot overflow
            D = torch.exp((G[:, :, None] - G[:, None, :]).masked_fill(~lower, float("-inf")))  # [Hv, L, L]
            A = (bet * (K @ K.transpose(1, 2)) * D).tril(-1)  # strictly lower
            eye = torch.eye(L, dtype=acc, device=v.device)
            rhs = bet * V - (bet * torch.exp(G)[..., None] * K) @ S  # [Hv, L, dv]
            W = torch.linalg.solve_triangular(eye + A, rhs, upper=False, unitriangular=True)
            o[:, c0:c1] = torch.exp(G)[..., None] * (Q @ S) + (D * (Q @ K.transpose(1, 2))) @ W
            S = torch.exp(G[:, -1])[:, None, None] * S + (K * torch.exp(G[:, -1:] - G)[..., None]).transpose(1, 2) @ W
        final[s] = S
    return _finish(o.transpose(0, 1), final, v, out, final_state)


def gdn_gates(a: torch.Tensor, b: torch.Tensor, A_log: torch.Tensor, dt_bias: torch.Tensor):
    """The gate and write strength of the gated delta rule from their projections (HF Qwen3.5, in fp32):
        g    = -exp(A_log) * softplus(a + dt_bias)      log-decay, <= 0          [T, Hv] fp32
        beta = sigmoid(b)                                write strength in (0, 1) [T, Hv] fp32
    a, b: [T, Hv] (any float dtype); A_log, dt_bias: [Hv]. Returns (g, beta), both fp32 (fp64 for fp64 a).
    """
    check_float("a", a, ndim=2)
    check_float("b", b, shape=tuple(a.shape))
    Hv = a.shape[1]
    check_float("A_log", A_log, shape=(Hv,))
    check_float("dt_bias", dt_bias, shape=(Hv,))
    check_same_device(a=a, b=b, A_log=A_log, dt_bias=dt_bias)
    acc = _compute_dtype(a)
    g = -torch.exp(A_log.to(acc)) * torch.nn.functional.softplus(a.to(acc) + dt_bias.to(acc))
    return g, torch.sigmoid(b.to(acc))


def fused_gated_delta_rule(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, a: torch.Tensor, b: torch.Tensor,
                           A_log: torch.Tensor, dt_bias: torch.Tensor, cu_seqlens: torch.Tensor,
                           initial_state: torch.Tensor | None = None, scale: float | None = None,
                           use_qk_l2norm: bool = False, *, out=None, final_state: torch.Tensor | None = None,
                           max_seqlen: int | None = None, validate: bool = True):
    """gated_delta_rule with its gate and write strength taken from the projections: g, beta = gdn_gates(a, b,
    A_log, dt_bias) (a, b [T, Hv]; A_log, dt_bias [Hv]), then gated_delta_rule(q, k, v, g, beta, ...) with the
    other arguments as given. The kernels fuse the two (no [T, Hv] g/beta tensors in between)."""
    g, beta = gdn_gates(a, b, A_log, dt_bias)
    return gated_delta_rule(q, k, v, g, beta, cu_seqlens, initial_state, scale, use_qk_l2norm, out=out,
                            final_state=final_state, max_seqlen=max_seqlen, validate=validate)
