"""Sparse MoE (docs/model.md 3.7): router top-k and the routed SwiGLU experts.

The shared expert and its sigmoid gate are composed outside these ops:
    out = moe_mlp(x, gate_up, down, *moe_topk(x @ W_router^T, k)) + sigmoid(x @ w_sg^T) * shared_mlp(x)
Precision: fp32 math (fp64 when the input is fp64).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ._checks import check_float, check_same_device, check_tensor

__all__ = ["moe_topk", "moe_mlp"]


def _compute_dtype(t: torch.Tensor) -> torch.dtype:
    return torch.float64 if t.dtype == torch.float64 else torch.float32


def moe_topk(router_logits: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Softmax over all E experts, keep the k largest probabilities, renormalise them to sum to 1.

    router_logits: [T, E]; k: int, 1 <= k <= E.
    Returns (weights [T, k] fp32 (fp64 for fp64 logits), experts [T, k] int64), each row ordered by decreasing
    logit. Order rule: the experts are ranked by their logit (exactly the probability order, since softmax is
    monotone, but free of the rounding that can make two different logits give one fp32 probability); equal
    logits are ordered by lower expert index first, so the choice is deterministic and any implementation that
    compares the logits (as fp32, or fp64 for fp64 input) gets the same experts.
    weights[t, j] = p[t, e_j] / sum_j' p[t, e_j'] with p = softmax(logits[t]) over all E experts.
    """
    check_float("router_logits", router_logits, ndim=2)
    E = router_logits.shape[1]
    if isinstance(k, bool) or not isinstance(k, int):
        raise TypeError(f"k must be an int, got {type(k).__name__}")
    if not 1 <= k <= E:
        raise ValueError(f"k must lie in [1, E={E}], got {k}")
    logits = router_logits.to(_compute_dtype(router_logits))
    probs = torch.softmax(logits, dim=-1)  # [T, E]
    # a stable descending sort of the logits puts the lower index first among equal logits
    experts = torch.sort(logits, dim=-1, descending=True, stable=True).indices[:, :k]
    top = probs.gather(1, experts)
    weights = top / top.sum(dim=-1, keepdim=True)
    return weights, experts.to(torch.int64)


def moe_mlp(x: torch.Tensor, gate_up: torch.Tensor, down: torch.Tensor, weights: torch.Tensor,
            experts: torch.Tensor) -> torch.Tensor:
    """Routed SwiGLU experts: out[t] = sum_j weights[t, j] * Expert_{experts[t, j]}(x[t]).

    x: [T, H]; gate_up: [E, 2I, H] (rows 0:I gate G_e, rows I:2I up U_e); down: [E, H, I];
    weights: [T, k] float; experts: [T, k] int32/int64 in [0, E).
    Expert_e(x) = down[e] @ (silu(G_e @ x) * (U_e @ x)).  Accumulated in fp32; returns [T, H] in x.dtype.
    """
    check_float("x", x, ndim=2)
    check_float("gate_up", gate_up, ndim=3)
    check_float("down", down, ndim=3)
    check_float("weights", weights, ndim=2)
    check_tensor("experts", experts, ndim=2, dtypes=(torch.int32, torch.int64))
    check_same_device(x=x, gate_up=gate_up, down=down, weights=weights, experts=experts)
    T, H = x.shape
    E, two_i = gate_up.shape[0], gate_up.shape[1]
    if two_i % 2 != 0:
        raise ValueError(f"gate_up must have an even number of rows (2I), got shape {tuple(gate_up.shape)}")
    I = two_i // 2
    check_tensor("gate_up", gate_up, shape=(E, 2 * I, H))
    check_tensor("down", down, shape=(E, H, I))
    check_tensor("weights", weights, shape=(T, None))
    check_tensor("experts", experts, shape=tuple(weights.shape))
    if experts.numel() and (int(experts.min()) < 0 or int(experts.max()) >= E):
        raise ValueError(f"experts must lie in [0, E={E}), got min {int(experts.min())}, max {int(experts.max())}")

    acc = _compute_dtype(x)
    out = torch.zeros(T, H, dtype=acc, device=x.device)
    for e in torch.unique(experts).tolist():  # only the experts that received tokens
        rows, slots = torch.nonzero(experts == e, as_tuple=True)  # token t, and where e sits in its top-k
        h = x[rows].to(acc) @ gate_up[e].to(acc).T  # [m, 2I]
        act = F.silu(h[:, :I]) * h[:, I:]  # [m, I]
        y = act @ down[e].to(acc).T  # [m, H]
        out.index_add_(0, rows, y * weights[rows, slots].to(acc)[:, None])
    return out.to(x.dtype)
