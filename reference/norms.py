"""Normalisations: the ViT's LayerNorm (+ fused residual/bias add), the LM's RMSNorms, and the DeltaNet l2norm.

All statistics and products are computed in fp32 (fp64 for fp64 input) and the result is rounded once to the
input dtype, unless a docstring names an extra rounding that HF does and we copy on purpose.
Weights, biases and residuals must have the input's dtype. Normalisation is over the last dim.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ._checks import check_float, check_same_device, check_tensor

__all__ = ["layer_norm", "add_bias_layer_norm", "rms_norm", "add_rms_norm", "gated_rms_norm", "l2norm"]


def _check_eps(eps) -> float:
    if not isinstance(eps, (int, float)) or isinstance(eps, bool) or not eps >= 0:
        raise ValueError(f"eps must be a non-negative number, got {eps!r}")
    return float(eps)


def _check_vec(name: str, t, dim: int, dtype: torch.dtype, optional: bool = False) -> None:
    """A per-channel parameter: [dim] with the input's dtype (or None where allowed)."""
    if t is None and optional:
        return
    check_tensor(name, t, shape=(dim,), dtypes=(dtype,))


def _acc(x: torch.Tensor) -> torch.dtype:
    return torch.promote_types(x.dtype, torch.float32)


def layer_norm(x: torch.Tensor, weight: torch.Tensor | None, bias: torch.Tensor | None,
               eps: float = 1e-6) -> torch.Tensor:
    """LayerNorm over the last dim with fp32 statistics (mean, then biased variance of x - mean).

    x: [N, D]; weight: [D] or None (scale 1); bias: [D] or None (shift 0). Returns [N, D] in x.dtype:
    (x - mean) * rsqrt(var + eps) * weight + bias.
    """
    check_float("x", x, ndim=2)
    d = x.shape[1]
    _check_vec("weight", weight, d, x.dtype, optional=True)
    _check_vec("bias", bias, d, x.dtype, optional=True)
    eps = _check_eps(eps)
    check_same_device(x=x, weight=weight, bias=bias)
    acc = _acc(x)
    xa = x.to(acc)
    mean = xa.mean(-1, keepdim=True)
    centred = xa - mean
    y = centred * torch.rsqrt((centred * centred).mean(-1, keepdim=True) + eps)
    if weight is not None:
        y = y * weight.to(acc)
    if bias is not None:
        y = y + bias.to(acc)
    return y.to(x.dtype)


def add_bias_layer_norm(x: torch.Tensor, bias: torch.Tensor | None, residual: torch.Tensor,
                        weight: torch.Tensor | None, norm_bias: torch.Tensor | None,
                        eps: float = 1e-6) -> tuple[torch.Tensor, torch.Tensor]:
    """The ViT's residual step fused with the next LayerNorm: a GEMM output (without its bias) joins the stream.

    x: [N, D] (e.g. attn.proj or mlp.linear_fc2 output before bias); bias: [D] or None; residual: [N, D];
    weight, norm_bias: [D] or None, the next LayerNorm's parameters.
    Returns (y, residual_out), both [N, D] in x.dtype:
      residual_out = round(residual + x + bias), summed in fp32 and rounded once to x.dtype;
      y = layer_norm(residual_out, weight, norm_bias, eps) taken over residual_out *as stored* (after the
          rounding), so the norm sees exactly the stream the next step adds to.
    HF rounds twice in bf16 (round(residual + round(x + bias))); TurboMind does the same.
    """
    check_float("x", x, ndim=2)
    d = x.shape[1]
    _check_vec("bias", bias, d, x.dtype, optional=True)
    check_tensor("residual", residual, shape=x.shape, dtypes=(x.dtype,))
    _check_vec("weight", weight, d, x.dtype, optional=True)
    _check_vec("norm_bias", norm_bias, d, x.dtype, optional=True)
    check_same_device(x=x, bias=bias, residual=residual, weight=weight, norm_bias=norm_bias)
    acc = _acc(x)
    total = residual.to(acc) + x.to(acc)
    if bias is not None:
        total = total + bias.to(acc)
    residual_out = total.to(x.dtype)
    return layer_norm(residual_out, weight, norm_bias, eps), residual_out


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float = 1e-6, unit_offset: bool = True) -> torch.Tensor:
    """RMSNorm over the last dim: x * rsqrt(mean(x^2) + eps) * scale, all in fp32, rounded once.

    x: [..., D]; weight: [D]. scale = 1 + weight when unit_offset (Qwen3.5 decoder, final and q/k norms store
    a zero-centred weight), else weight. Returns [..., D] in x.dtype (HF Qwen3_5RMSNorm numerics).
    """
    check_float("x", x)
    if x.dim() == 0:
        raise ValueError("x must have at least 1 dimension")
    _check_vec("weight", weight, x.shape[-1], x.dtype)
    eps = _check_eps(eps)
    check_same_device(x=x, weight=weight)
    acc = _acc(x)
    xa = x.to(acc)
    scale = 1.0 + weight.to(acc) if unit_offset else weight.to(acc)
    return (xa * torch.rsqrt(xa.pow(2).mean(-1, keepdim=True) + eps) * scale).to(x.dtype)


def add_rms_norm(x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor, eps: float = 1e-6,
                 unit_offset: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """Residual add fused with the next RMSNorm.

    x, residual: [..., D], same shape and dtype; weight: [D].
    Returns (y, residual_out): residual_out = round(residual + x) (one rounding, same as HF's add) and
    y = rms_norm(residual_out, weight, eps, unit_offset), taken over residual_out as stored.
    """
    check_float("x", x)
    check_tensor("residual", residual, shape=x.shape, dtypes=(x.dtype,))
    check_same_device(x=x, residual=residual)
    acc = _acc(x)
    residual_out = (residual.to(acc) + x.to(acc)).to(x.dtype)
    return rms_norm(residual_out, weight, eps, unit_offset), residual_out


def gated_rms_norm(x: torch.Tensor, z: torch.Tensor, weight: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """DeltaNet output norm (HF Qwen3_5RMSNormGated): rms_norm(x, weight, unit_offset=False) * silu(z).

    x, z: [..., dv] (per value head), same shape and dtype; weight: [dv], plain scale (not 1 + w).
    Numerics follow HF, including its two intermediate roundings to x.dtype:
      n = round(x * rsqrt(mean(x^2) + eps))        statistics in fp32
      p = round(weight * n)                         product in fp32, rounded
      y = round(p * silu(z))                        gate in fp32
    With fp32 input all roundings are exact no-ops beyond fp32's own.
    """
    check_float("x", x)
    if x.dim() == 0:
        raise ValueError("x must have at least 1 dimension")
    check_tensor("z", z, shape=x.shape, dtypes=(x.dtype,))
    _check_vec("weight", weight, x.shape[-1], x.dtype)
    eps = _check_eps(eps)
    check_same_device(x=x, z=z, weight=weight)
    acc = _acc(x)
    xa = x.to(acc)
    n = (xa * torch.rsqrt(xa.pow(2).mean(-1, keepdim=True) + eps)).to(x.dtype)
    p = (weight.to(acc) * n.to(acc)).to(x.dtype)
    return (p.to(acc) * F.silu(z.to(acc))).to(x.dtype)


def l2norm(x: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """x * rsqrt(sum(x^2) + eps) over the last dim, in fp32 (DeltaNet q/k). x: [..., d] -> [..., d] in x.dtype."""
    check_float("x", x)
    if x.dim() == 0:
        raise ValueError("x must have at least 1 dimension")
    eps = _check_eps(eps)
    xa = x.to(_acc(x))
    return (xa * torch.rsqrt((xa * xa).sum(-1, keepdim=True) + eps)).to(x.dtype)
