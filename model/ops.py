"""The op namespace the model is written against: `ops_for("reference")` or `ops_for("kernels", config, dtype)`.

"kernels" takes an op from `kernels.registry` where it lists a kernel that covers the checkpoint (the spec's
`covers(config, dtype)`: head dims, conv width, dtype, ...) and the reference elsewhere, so a checkpoint with a
shape no kernel is built for still runs, never failing deep inside a forward. The decision is made once, when the
model is built; `placement(backend, config, dtype, why=True)` says which ops run where and why.
"""

from __future__ import annotations

from types import SimpleNamespace

import reference

BACKENDS = ("reference", "kernels")
NO_KERNEL = "no kernel"

# every op the model calls (docs/op_catalogue.md lists them with their kernels)
MODEL_OPS = (
    "patch_embed", "vision_pos_taps", "add_pos_embed", "vision_rope_cos_sin", "vision_cu_seqlens",
    "layer_norm", "add_bias_layer_norm", "qkv_bias_rope", "bias_gelu", "attention",
    "rope_index", "scatter_image_embeds",
    "rms_norm", "add_rms_norm", "mrope_cos_sin", "apply_rope", "sigmoid_gate", "silu_mul",
    "causal_conv1d", "gated_delta_rule", "gated_rms_norm", "decode_attention", "moe_topk", "moe_mlp",
    "moe_router_topk",
    "kv_cache_append", "qk_norm_rope", "silu_mul_fused", "fused_gated_delta_rule",
)


def _registry() -> dict:
    """kernels.registry.REGISTRY, or {} without a kernels package."""
    try:
        from kernels.registry import REGISTRY
    except ModuleNotFoundError as e:
        if e.name == "kernels":  # no kernels package: everything on the reference
            return {}
        if e.name == "kernels.registry":  # another distribution's `kernels`: refuse, never silently the reference
            import kernels
            raise ImportError(
                f"the `kernels` package at {getattr(kernels, '__file__', '?')} is not this project's: Hugging Face's "
                "`kernels` distribution (a dependency of transformers >= 5.25) has the same import name; run "
                "`pip uninstall kernels` and reinstall qwen35-kernels, and keep transformers < 5.25") from None
        raise
    return REGISTRY


def coverage(backend: str = "kernels", config=None, dtype=None) -> dict[str, str | None]:
    """{op: None where its kernel runs, else why the reference runs it}. config (model.config.ModelConfig) and dtype
    None: the shape and dtype checks are skipped (every op that has a kernel runs it)."""
    _check_backend(backend)
    if backend == "reference":
        return {name: "reference backend" for name in MODEL_OPS}
    registry, out = _registry(), {}
    for name in MODEL_OPS:
        spec = registry.get(name)
        if spec is None or spec.kernel is None:
            out[name] = NO_KERNEL
        else:
            out[name] = None if config is None else spec.coverage(config, dtype)
    return out


def placement(backend: str = "kernels", config=None, dtype=None, *, why: bool = False) -> dict[str, str]:
    """{op name: "kernels" or "reference"} for every op the model uses; why=True: "reference: <reason>"."""
    return {name: "kernels" if r is None else (f"reference: {r}" if why else "reference")
            for name, r in coverage(backend, config, dtype).items()}


def uncovered(backend: str = "kernels", config=None, dtype=None) -> dict[str, str]:
    """{op: reason} for the ops that have a kernel which does not cover this checkpoint (what strict=True refuses)."""
    if backend == "reference":
        return {}
    return {n: r for n, r in coverage(backend, config, dtype).items() if r not in (None, NO_KERNEL)}


def ops_for(backend: str = "reference", config=None, dtype=None):
    """The op namespace for a backend: the `reference` module, or the covering kernels overlaid on it."""
    _check_backend(backend)
    if backend == "reference":
        return reference
    registry = _registry()
    return SimpleNamespace(**{n: registry[n].kernel if r is None else getattr(reference, n, None)
                              for n, r in coverage(backend, config, dtype).items()})


def _check_backend(backend):
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {list(BACKENDS)}, got {backend!r}")
