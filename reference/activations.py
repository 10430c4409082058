"""Pointwise activations of the ViT MLP/merger (bias + GELU), the LM MLP (SwiGLU) and the attention output gate.

Each is computed in fp32 (fp64 for fp64 input) and rounded once to the input dtype. HF rounds the GEMM output
(with its bias) and the activation separately, so bf16 results can differ from HF by one rounding.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ._checks import check_float, check_same_device, check_tensor

__all__ = ["bias_gelu", "silu_mul", "silu_mul_fused", "sigmoid_gate"]


def bias_gelu(x: torch.Tensor, bias: torch.Tensor | None, approximate: str = "tanh") -> torch.Tensor:
    """gelu(x + bias): the fc1 epilogue of the ViT MLP ("tanh", gelu_pytorch_tanh) and of the merger ("none", erf).

    x: [N, I] GEMM output without bias; bias: [I] or None, same dtype as x.
    approximate="none": 0.5 * v * (1 + erf(v / sqrt(2)));
    approximate="tanh": 0.5 * v * (1 + tanh(sqrt(2/pi) * (v + 0.044715 * v^3))).
    Returns [N, I] in x.dtype.
    """
    check_float("x", x, ndim=2)
    if bias is not None:
        check_tensor("bias", bias, shape=(x.shape[1],), dtypes=(x.dtype,))
    if approximate not in ("tanh", "none"):
        raise ValueError(f'approximate must be "tanh" or "none", got {approximate!r}')
    check_same_device(x=x, bias=bias)
    v = x.to(torch.promote_types(x.dtype, torch.float32))
    if bias is not None:
        v = v + bias.to(v.dtype)
    if approximate == "none":
        y = 0.5 * v * (1.0 + torch.erf(v * 0.5**0.5))
    else:
        y = 0.5 * v * (1.0 + torch.tanh((2.0 / torch.pi) ** 0.5 * (v + 0.044715 * v**3)))
    return y.to(x.dtype)


def _check_pair(a_name: str, a, b_name: str, b) -> None:
    check_float(a_name, a)
    check_tensor(b_name, b, shape=a.shape, dtypes=(a.dtype,))
    check_same_device(**{a_name: a, b_name: b})


def silu_mul(gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    """SwiGLU: silu(gate) * up = gate * sigmoid(gate) * up.

    gate, up: [S, I] (any shape, the same for both; same dtype). Returns the same shape in gate.dtype.
    """
    _check_pair("gate", gate, "up", up)
    g = gate.to(torch.promote_types(gate.dtype, torch.float32))
    return (g * torch.sigmoid(g) * up.to(g.dtype)).to(gate.dtype)


def silu_mul_fused(gate_up: torch.Tensor) -> torch.Tensor:
    """SwiGLU on a fused gate/up GEMM output (gate_proj and up_proj weights concatenated, gate first).

    gate_up: [..., 2I] = [gate | up] along the last dim. Returns silu(gate) * up, [..., I] in gate_up.dtype.
    """
    check_float("gate_up", gate_up)
    if gate_up.dim() == 0 or gate_up.shape[-1] % 2:
        raise ValueError(f"gate_up must have an even last dim ([..., 2I] = [gate | up]), got shape "
                         f"{tuple(gate_up.shape)}")
    i = gate_up.shape[-1] // 2
    return silu_mul(gate_up[..., :i], gate_up[..., i:])


def sigmoid_gate(o: torch.Tensor, gate: torch.Tensor) -> torch.Tensor:
    """Attention output gate: o * sigmoid(gate).

    o, gate: [S, H, d] (any shape, the same for both; same dtype). Returns the same shape in o.dtype.
    """
    _check_pair("o", o, "gate", gate)
    acc = torch.promote_types(o.dtype, torch.float32)
    return (o.to(acc) * torch.sigmoid(gate.to(acc))).to(o.dtype)
