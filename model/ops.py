"""The op namespace the model is written against: `ops_for("reference")` or `ops_for("kernels")`.

"kernels" takes an op from `kernels` where `kernels.registry` lists a kernel for it and the reference elsewhere;
`placement(backend)` says which ops run where.
"""

from __future__ import annotations

from types import SimpleNamespace

import reference

BACKENDS = ("reference", "kernels")

# every op the model calls (names from docs/op_catalogue.md)
MODEL_OPS = (
    "patch_embed", "vision_pos_taps", "add_pos_embed", "vision_rope_cos_sin", "vision_cu_seqlens",
    "layer_norm", "add_bias_layer_norm", "qkv_bias_rope", "bias_gelu", "attention",
    "rope_index", "scatter_image_embeds",
    "rms_norm", "add_rms_norm", "mrope_cos_sin", "apply_rope", "sigmoid_gate", "silu_mul",
    "causal_conv1d", "gated_delta_rule", "gated_rms_norm", "decode_attention", "moe_topk", "moe_mlp",
    "kv_cache_append",
)


def _kernel_impls() -> dict:
    """{op name: default kernel} for the model's ops that `kernels.registry` has a kernel for ({} without it)."""
    try:
        from kernels.registry import REGISTRY
    except ModuleNotFoundError as e:  # no kernels package (or no registry yet): everything on the reference
        if e.name not in ("kernels", "kernels.registry"):
            raise
        return {}
    return {name: REGISTRY[name].kernel for name in MODEL_OPS
            if name in REGISTRY and REGISTRY[name].kernel is not None}


def placement(backend: str = "kernels") -> dict[str, str]:
    """{op name: "kernels" or "reference"} for every op the model uses."""
    _check_backend(backend)
    impls = _kernel_impls() if backend == "kernels" else {}
    return {name: "kernels" if name in impls else "reference" for name in MODEL_OPS}


def ops_for(backend: str = "reference"):
    """The op namespace for a backend: the `reference` module, or kernels overlaid on it."""
    _check_backend(backend)
    if backend == "reference":
        return reference
    impls = _kernel_impls()
    return SimpleNamespace(**{n: impls.get(n, getattr(reference, n, None)) for n in MODEL_OPS})


def _check_backend(backend):
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {list(BACKENDS)}, got {backend!r}")
