"""One table of every op: its reference, its kernels, the dtypes they take and how close they must come.

    from kernels.registry import REGISTRY, kernel_for
    spec = REGISTRY["layer_norm"]          # OpSpec
    spec.kernels                           # {"nvrtc": kernels.norms.layer_norm, ...}; {} = reference only
    kernel_for("layer_norm")               # the default kernel (nvrtc, else numba); kernel_for(name, "numba")

Property tests, benchmarks and the model's "kernels" backend (model/ops.py) all read this table, so it also
documents coverage: an op with an empty `kernels` dict runs on its reference everywhere.
Tolerances compare a kernel's output with the reference run on the same inputs (the reference computes in fp32
or fp64 and rounds once to the input dtype): relative L2 error ||out - ref|| / ||ref||, plus a max-abs bound in
units of max(1, max|ref|). NaN or inf never passes. Index ops are exact.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch

import reference as R

from . import activations, gemm, glue, norms, pos_embed, rope, vision
from .attention import attention as attention_nvrtc  # kernels.attention is also the function's name
from .numba import activations as numba_activations, norms as numba_norms


@dataclass(frozen=True)
class Tol:
    rel_l2: float
    max_abs: float  # in units of max(1, max|ref|)

    def errors(self, out: torch.Tensor, ref: torch.Tensor) -> tuple[float, float]:
        """(relative L2 error, max abs error / max(1, max|ref|)); inf when out has a NaN/inf or a bad shape."""
        if out.shape != ref.shape:
            return float("inf"), float("inf")
        o, r = out.detach().double(), ref.detach().double()
        if not bool(torch.isfinite(o).all()):
            return float("inf"), float("inf")
        if o.numel() == 0:
            return 0.0, 0.0
        diff = o - r
        rel = float(diff.norm() / r.norm()) if float(r.norm()) > 0 else float(diff.norm())
        return rel, float(diff.abs().max()) / max(1.0, float(r.abs().max()))

    def ok(self, out: torch.Tensor, ref: torch.Tensor) -> bool:
        rel, mx = self.errors(out, ref)
        return rel <= self.rel_l2 and mx <= self.max_abs


FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
# fp32 math rounded once: a bf16/fp16 result is within half an ulp of the reference's, plus fp32 noise.
ROUNDED_ONCE = {torch.float32: Tol(1e-5, 1e-5), torch.float16: Tol(1e-3, 2e-3), torch.bfloat16: Tol(5e-3, 1e-2)}


@dataclass(frozen=True)
class OpSpec:
    name: str
    reference: Callable
    kernels: dict[str, Callable] = field(default_factory=dict)  # variant ("nvrtc", "numba", "cublas") -> callable
    dtypes: tuple[torch.dtype, ...] = FLOAT_DTYPES               # float input dtypes the kernels take
    tol: dict = field(default_factory=lambda: dict(ROUNDED_ONCE))  # dtype -> Tol
    exact: bool = False                                           # index ops: outputs must be equal

    @property
    def kernel(self) -> Callable | None:
        """The default kernel: nvrtc, else numba, else cublas (GEMMs through torch), else None (reference only)."""
        return next((self.kernels[v] for v in ("nvrtc", "numba", "cublas") if v in self.kernels), None)


def _spec(name: str, dtypes=FLOAT_DTYPES, tol=None, exact=False, **kernels) -> OpSpec:
    return OpSpec(name, getattr(R, name), dict(kernels), tuple(dtypes),
                  {} if exact else dict(tol if tol is not None else ROUNDED_ONCE), exact)


_INDEX = {"dtypes": (), "exact": True}  # integer/index ops

REGISTRY: dict[str, OpSpec] = {s.name: s for s in (
    # vision tower
    _spec("patch_embed", cublas=gemm.patch_embed),
    _spec("vision_pos_taps", numba=vision.vision_pos_taps, **_INDEX),
    _spec("add_pos_embed", nvrtc=pos_embed.add_pos_embed),
    _spec("vision_rope_cos_sin", dtypes=(torch.float32,), numba=vision.vision_rope_cos_sin),
    _spec("vision_cu_seqlens", numba=vision.vision_cu_seqlens, **_INDEX),
    _spec("layer_norm", nvrtc=norms.layer_norm, numba=numba_norms.layer_norm),
    _spec("add_bias_layer_norm", nvrtc=norms.add_bias_layer_norm),
    _spec("qkv_bias_rope", nvrtc=rope.qkv_bias_rope),
    _spec("bias_gelu", nvrtc=activations.bias_gelu, numba=numba_activations.bias_gelu),
    # bf16/fp16 on tensor cores (P is rounded to the input dtype before PV); fp32 on the exact SIMT kernel
    _spec("attention", nvrtc=attention_nvrtc,
          tol={torch.bfloat16: Tol(1e-2, 4e-2), torch.float16: Tol(2e-3, 6e-3), torch.float32: Tol(2e-5, 2e-5)}),
    _spec("attention_mask", **_INDEX),  # reference only, by design
    # multimodal glue
    _spec("rope_index", numba=glue.rope_index, **_INDEX),
    _spec("scatter_image_embeds", exact=True, numba=glue.scatter_image_embeds),  # a copy: bit-exact
    # language model
    _spec("rms_norm"),
    _spec("add_rms_norm"),
    _spec("mrope_cos_sin", dtypes=(torch.float32,)),
    _spec("apply_rope"),
    _spec("sigmoid_gate"),
    _spec("silu_mul"),
    _spec("causal_conv1d"),
    _spec("l2norm"),
    _spec("gated_delta_rule"),
    _spec("gated_rms_norm"),
    _spec("decode_attention"),
    _spec("moe_topk"),
    _spec("moe_mlp"),
)}


def kernel_for(name: str, variant: str | None = None) -> Callable:
    """The kernel for op `name`: `variant` ("nvrtc", "numba") or the default one. KeyError if there is none."""
    if name not in REGISTRY:
        raise KeyError(f"unknown op {name!r}; known: {sorted(REGISTRY)}")
    spec = REGISTRY[name]
    if variant is None:
        if spec.kernel is None:
            raise KeyError(f"op {name!r} has no kernel yet (reference only)")
        return spec.kernel
    if variant not in spec.kernels:
        raise KeyError(f"op {name!r} has no {variant!r} kernel; it has {sorted(spec.kernels)}")
    return spec.kernels[variant]
