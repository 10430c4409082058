"""Sparse MoE (docs/model.md 3.7): router top-k and the routed SwiGLU experts.

The layer (HF's Qwen3_5MoeSparseMoeBlock):
    out = moe_mlp(x, gate_up, down, *moe_topk(x @ W_router^T, k)) + sigmoid(x @ w_sg^T) * shared_mlp(x)
where the sigmoid-gated shared expert may be passed to moe_mlp (shared_gate/up/down, shared_expert_gate) so a
kernel can fuse it into the combine.
Precision: fp32 math (fp64 when the input is fp64).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ._checks import check_float, check_same_device, check_tensor

__all__ = ["moe_topk", "moe_router_topk", "moe_mlp"]


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


def moe_router_topk(x: torch.Tensor, router_weight: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The router and its top-k in one op: moe_topk(x @ router_weight^T, k) with the logits kept in fp32 (fp64 for
    fp64 input), not rounded to x.dtype (so a kernel may fuse the two without a rounding step in between).

    x: [T, H]; router_weight: [E, H] (HF's mlp.gate.weight), one float dtype. Returns moe_topk's (weights, experts).
    """
    check_float("x", x, ndim=2)
    check_float("router_weight", router_weight, ndim=2)
    check_tensor("router_weight", router_weight, shape=(None, x.shape[1]))
    if router_weight.dtype != x.dtype:
        raise ValueError(f"router_weight must have the input dtype {x.dtype}, got {router_weight.dtype}")
    check_same_device(x=x, router_weight=router_weight)
    acc = _compute_dtype(x)
    return moe_topk(x.to(acc) @ router_weight.to(acc).T, k)


def check_mlp_shapes(x, gate_up, down, weights, experts) -> tuple[int, int, int, int, int]:
    """(T, H, E, I, k) of moe_mlp's operands, checking that their shapes fit together (the ranks, dtypes and
    devices are each caller's to check first); kernels.moe_mlp runs the same checks."""
    T, H = x.shape
    E, two_i = gate_up.shape[0], gate_up.shape[1]
    if two_i % 2 != 0:
        raise ValueError(f"gate_up must have an even number of rows (2I), got shape {tuple(gate_up.shape)}")
    I = two_i // 2
    check_tensor("gate_up", gate_up, shape=(E, 2 * I, H))
    check_tensor("down", down, shape=(E, H, I))
    check_tensor("weights", weights, shape=(T, None))
    check_tensor("experts", experts, shape=tuple(weights.shape))
    return T, H, E, I, weights.shape[1]


def check_shared(x: torch.Tensor, shared_gate, shared_up, shared_down, shared_expert_gate) -> int | None:
    """The shared expert's weights: all four or none; returns its width S (None without it)."""
    given = [t is not None for t in (shared_gate, shared_up, shared_down, shared_expert_gate)]
    if not any(given):
        return None
    if not all(given):
        raise ValueError("shared_gate, shared_up, shared_down and shared_expert_gate go together: pass all four or "
                         "none")
    H = x.shape[1]
    check_float("shared_gate", shared_gate, ndim=2)
    S = shared_gate.shape[0]
    check_tensor("shared_gate", shared_gate, shape=(S, H))
    check_float("shared_up", shared_up, shape=(S, H))
    check_float("shared_down", shared_down, shape=(H, S))
    check_float("shared_expert_gate", shared_expert_gate, shape=(1, H))
    check_same_device(x=x, shared_gate=shared_gate, shared_up=shared_up, shared_down=shared_down,
                      shared_expert_gate=shared_expert_gate)
    return S


def moe_mlp(x: torch.Tensor, gate_up: torch.Tensor, down: torch.Tensor, weights: torch.Tensor,
            experts: torch.Tensor, *, shared_gate: torch.Tensor | None = None, shared_up: torch.Tensor | None = None,
            shared_down: torch.Tensor | None = None,
            shared_expert_gate: torch.Tensor | None = None, validate: bool = True) -> torch.Tensor:
    """Routed SwiGLU experts: out[t] = sum_j weights[t, j] * Expert_{experts[t, j]}(x[t]) (+ the shared expert).

    x: [T, H]; gate_up: [E, 2I, H] (rows 0:I gate G_e, rows I:2I up U_e); down: [E, H, I];
    weights: [T, k] float; experts: [T, k] int32/int64 in [0, E).
    Expert_e(x) = down[e] @ (silu(G_e @ x) * (U_e @ x)).
    With the shared expert (all four or none; HF's mlp.shared_expert.{gate,up,down}_proj.weight [S, H], [S, H],
    [H, S] and mlp.shared_expert_gate.weight [1, H]), out[t] += sigmoid(shared_expert_gate . x[t]) *
    shared_down @ (silu(shared_gate @ x[t]) * (shared_up @ x[t])): the whole MoE layer after the router.
    Accumulated in fp32; returns [T, H] in x.dtype.
    validate: check the experts' range (reads them back); the kernel's hint, accepted here so one call serves both
    (this reference reads the routing on the host anyway).
    """
    check_float("x", x, ndim=2)
    check_float("gate_up", gate_up, ndim=3)
    check_float("down", down, ndim=3)
    check_float("weights", weights, ndim=2)
    check_tensor("experts", experts, ndim=2, dtypes=(torch.int32, torch.int64))
    check_same_device(x=x, gate_up=gate_up, down=down, weights=weights, experts=experts)
    T, H, E, I, _ = check_mlp_shapes(x, gate_up, down, weights, experts)
    if validate and experts.numel() and (int(experts.min()) < 0 or int(experts.max()) >= E):
        raise ValueError(f"experts must lie in [0, E={E}), got min {int(experts.min())}, max {int(experts.max())}")

    S = check_shared(x, shared_gate, shared_up, shared_down, shared_expert_gate)

    acc = _compute_dtype(x)
    out = torch.zeros(T, H, dtype=acc, device=x.device)
    if S is not None:
        xa = x.to(acc)
        act = F.silu(xa @ shared_gate.to(acc).T) * (xa @ shared_up.to(acc).T)  # [T, S]
        out += torch.sigmoid(xa @ shared_expert_gate.to(acc).T) * (act @ shared_down.to(acc).T)
    for e in torch.unique(experts).tolist():  # only the experts that received tokens
        rows, slots = torch.nonzero(experts == e, as_tuple=True)  # token t, and where e sits in its top-k
        h = x[rows].to(acc) @ gate_up[e].to(acc).T  # [m, 2I]
        act = F.silu(h[:, :I]) * h[:, I:]  # [m, I]
        y = act @ down[e].to(acc).T  # [m, H]
        out.index_add_(0, rows, y * weights[rows, slots].to(acc)[:, None])
    return out.to(x.dtype)
