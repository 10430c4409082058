"""One table of every op: its reference, its kernels, and everything the tests, benchmarks and model read about it.

    from kernels.registry import REGISTRY, kernel_for
    spec = REGISTRY["layer_norm"]          # OpSpec
    spec.kernels                           # {"nvrtc": kernels.norms.layer_norm, ...}; {} = reference only
    kernel_for("layer_norm")               # the default kernel (nvrtc, else numba, else cublas)

Fields of an `OpSpec` (all but `name` and `reference` optional):

  name, reference   the op and its spec (`reference.<name>`)
  family            the file stem its code lives under (reference/<family>.py, kernels/<family>.py,
                    property_tests/cases/<family>.py, benchmarks/bench_<family>.py); default: the reference's module
  kernels           {variant: callable}, variant "nvrtc" (CUDA C++), "numba", or "cublas" (GEMMs through torch)
  dtypes            float input dtypes the kernels take; () for index ops
  tol               {dtype: Tol}, ONE tolerance per dtype, read from here by every test and check
  exact             outputs must equal the reference's bit for bit (index ops, copies)
  poison            how a test catches unwritten outputs: "out" (the kernel takes `out=`; the tests pass NaN-filled
                    tensors, -1 for integers), "alloc" (no `out=`: NaN blocks are freed just before the call so the
                    caching allocator hands them to the outputs)
  min_bytes         Case -> bytes an ideal kernel moves (roofline); None = every input read once + every
                    `out=` tensor written once (Case.io_bytes)
  flops             Case -> floating-point operations (roofline), None for memory-bound ops
  split             Split: for a stateful op over packed sequences, how property_tests/harness.py cuts every
                    sequence in two and carries the state (two calls must equal one pass)
  covers            (ModelConfig, torch dtype) -> None if the kernels handle this checkpoint's shapes, else a
                    one-line reason (the model then runs this op on its reference and says why, see model.ops);
                    None = every checkpoint whose dtype is in `dtypes` (ops with dtypes () or (fp32,) take no
                    model-dtype input and are always covered)
  cases             the module holding the op's test inputs, "property_tests.cases.<family>" (test-only code:
                    hypothesis is imported there, never here, so the model can import this table). It defines,
                    by name, for op `x` (an op with a kernel must have x_cases, x_example and x_bad:
                    property_tests/test_ops.py checks; x_real and x_peers feed the benchmarks):
                      x_cases(small: bool) -> hypothesis strategy of Case   random inputs; small=True: tiny
                                               shapes, fp32/fp16 only (the Numba simulator on CPU)
                      x_example(dtype) -> Case              one small valid input (bad-input and CPU tests)
                      x_real(dtype, tokens) -> list[Case]   the 0.8B / 9B / 27B model shapes at `tokens` rows
                                                            (benchmarks: 4096+; property tests: a few hundred)
                      x_bad(device) -> list[Bad]            bad inputs and the error each must raise
                      x_peers(args) -> {name: fn()}         peer implementations for benchmarks (torch eager, SDPA)
  inplace           positions of the arguments the op writes into (kv_cache_append's caches): the tests give the
                    reference its own copies and compare those arguments after the call, like outputs

A `Case` is one call: positional `args` (+ `kwargs`), the shapes of its `out=` tensors, a label.

Adding an op = reference + kernel + one entry below + its functions in property_tests/cases/<family>.py; the generic
tests (property_tests/test_ops.py, tests/test_bad_input.py, property_tests/test_compile.py), the benchmarks
(benchmarks/bench_<family>.py, python -m benchmarks) and model.ops pick it up. Then regenerate the catalogue:
`python tools/make_catalogue.py > docs/op_catalogue.md` (tests/test_catalogue.py fails until it matches).

Tolerances compare a kernel's output with the reference run on the same inputs (the reference computes in fp32
or fp64 and rounds once to the input dtype): relative L2 error ||out - ref|| / ||ref||, plus a max-abs bound in
units of max(1, max|ref|). NaN or inf never passes. Index ops are exact.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

import reference as R

from . import activations, conv1d, deltanet, glue, norms, rope, vision
from . import moe as moe_kernels  # kernels.moe (own line: the family list above is shared)
from . import decode_attention as decode_kernels  # kernels.decode_attention (own line, as above)
from .attention import SUPPORTED_HEAD_DIMS as _ATTN_HEAD_DIMS
from .attention import attention as attention_nvrtc  # kernels.attention is also the function's name


@dataclass(frozen=True)
class Tol:
    rel_l2: float
    max_abs: float  # in units of max(1, max|ref|)

    def errors(self, out: torch.Tensor, ref: torch.Tensor) -> tuple[float, float]:
        """(relative L2 error, max abs error / max(1, max|ref|)); inf when out has a NaN/inf or a bad shape."""
        if out.shape != ref.shape:
            return float("inf"), float("inf")
        o, r = out.detach().double().cpu(), ref.detach().double().cpu()
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


@dataclass
class Case:
    """One call of an op: positional `args` (CPU tensors, None, scalars) and `kwargs`, given to the kernel and the
    reference alike; `out_shapes` ((shape, dtype), ...) of the op's `out=` tensors, in order; a short label."""
    op: str
    args: tuple
    out_shapes: tuple
    label: str
    kwargs: dict = field(default_factory=dict)

    def on(self, device) -> tuple:
        return tuple(a.to(device) if isinstance(a, torch.Tensor) else a for a in self.args)

    def kwargs_on(self, device) -> dict:
        return {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in self.kwargs.items()}

    def nan_outs(self, device):
        """Poisoned `out=` tensors (NaN, or -1 for integers): one tensor, or a tuple for several."""
        outs = tuple(torch.full(s, float("nan") if d.is_floating_point else -1, dtype=d, device=device)
                     for s, d in self.out_shapes)
        return outs[0] if len(outs) == 1 else outs

    @property
    def dtype(self) -> torch.dtype:
        """The dtype the tolerance is looked up by: the first float tensor argument's, else the first output's."""
        for a in (*self.args, *self.kwargs.values()):
            if isinstance(a, torch.Tensor) and a.is_floating_point():
                return a.dtype
        return self.out_shapes[0][1] if self.out_shapes else torch.float32

    def io_bytes(self) -> int:
        """Every tensor argument read once and every `out=` tensor written once."""
        read = sum(a.numel() * a.element_size() for a in (*self.args, *self.kwargs.values())
                   if isinstance(a, torch.Tensor))
        written = sum(torch.Size(s).numel() * torch.empty((), dtype=d).element_size() for s, d in self.out_shapes)
        return read + written


@dataclass(frozen=True)
class Bad:
    """A bad input: calling the kernel with `args`/`kwargs` must raise `error` whose message matches `match` (re.search).
    variants: the kernel variants it applies to (() = all); reference: the reference twin raises `error` too
    (device and layout rules are kernel-only, so most bad layouts set it False); device_check: the kernel itself
    finds this error on the device (rope_index's pad layout), so the call launches; every other bad input must be
    refused before anything compiles or launches (tests/test_bad_input.py)."""
    label: str
    args: tuple
    match: str
    error: type = ValueError
    kwargs: dict = field(default_factory=dict)
    variants: tuple[str, ...] = ()
    reference: bool = False
    device_check: bool = False


@dataclass(frozen=True)
class Split:
    """A stateful op over packed sequences (tokens of n sequences on axis 0, boundaries in cu_seqlens).

    tokens: positions of the arguments packed on axis 0 ([T, ...]), cut with the sequences; cu_seqlens: position of
    cu_seqlens; state: position of the initial-state argument (None = zeros), [n, ...]; outputs: indices of the
    returned tensors packed on axis 0; state_out: index of the returned final state ([n, ...]).
    """
    tokens: tuple[int, ...]
    cu_seqlens: int
    state: int
    outputs: tuple[int, ...] = (0,)
    state_out: int = 1


FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
# fp32 math rounded once: a bf16/fp16 result is within half an ulp of the reference's, plus fp32 noise.
ROUNDED_ONCE = {torch.float32: Tol(1e-5, 1e-5), torch.float16: Tol(1e-3, 2e-3), torch.bfloat16: Tol(5e-3, 1e-2)}


@dataclass(frozen=True)
class OpSpec:
    name: str
    reference: Callable
    kernels: dict[str, Callable] = field(default_factory=dict)
    dtypes: tuple[torch.dtype, ...] = FLOAT_DTYPES
    tol: dict = field(default_factory=lambda: dict(ROUNDED_ONCE))
    exact: bool = False
    family: str = ""
    poison: str = "out"
    min_bytes: Callable | None = None
    flops: Callable | None = None
    split: Split | None = None
    covers: Callable | None = None
    cases: str | None = None
    inplace: tuple[int, ...] = ()

    @property
    def kernel(self) -> Callable | None:
        """The default kernel: nvrtc, else numba, else cublas (GEMMs through torch), else None (reference only)."""
        return next((self.kernels[v] for v in ("nvrtc", "numba", "cublas") if v in self.kernels), None)

    def hook(self, what: str) -> Callable | None:
        """`<name>_<what>` from the op's cases module ("cases", "example", "real", "bad", "peers"), or None."""
        if self.cases is None:
            return None
        try:
            module = importlib.import_module(self.cases)
        except ModuleNotFoundError as e:  # the family has no cases module (yet); a broken import still raises
            if e.name != self.cases:
                raise
            return None
        return getattr(module, f"{self.name}_{what}", None)

    def bytes_of(self, case: Case) -> int:
        return self.min_bytes(case) if self.min_bytes else case.io_bytes()

    def flops_of(self, case: Case) -> float:
        return float(self.flops(case)) if self.flops else 0.0

    def coverage(self, config, dtype: torch.dtype | None = None) -> str | None:
        """None if the default kernel runs this checkpoint (model.config.ModelConfig) in `dtype` (None: any), else
        a one-line reason why not."""
        if self.kernel is None:
            return "no kernel yet"
        # the dtype rule holds whether or not the op also has shape rules (`covers`)
        if dtype is not None and self.dtypes and self.dtypes != (torch.float32,) and dtype not in self.dtypes:
            return f"the kernel takes {', '.join(str(d) for d in self.dtypes)}, not {dtype}"
        return None if self.covers is None else self.covers(config, dtype)


def _spec(name: str, dtypes=FLOAT_DTYPES, tol=None, exact=False, cases=None, **kw) -> OpSpec:
    """An OpSpec; keyword args that are not OpSpec fields are kernel variants (nvrtc=..., numba=..., cublas=...)."""
    fields = {k: kw.pop(k) for k in list(kw) if k in OpSpec.__dataclass_fields__}
    ref = getattr(R, name)
    family = fields.pop("family", None) or ref.__module__.rsplit(".", 1)[-1]
    return OpSpec(name, ref, dict(kw), tuple(dtypes), {} if exact else dict(tol if tol is not None else ROUNDED_ONCE),
                  exact, family=family, cases=cases or f"property_tests.cases.{family}", **fields)


_INDEX = {"dtypes": (), "exact": True}  # integer/index ops


# moe: the routing weights are fp32 whatever the logits' dtype; the grouped-GEMM path (bf16) rounds gate/up, the
# SwiGLU and each expert's down output to bf16 as HF's block does (an emulation on the CPU gives rel L2 ~4.2e-3
# against the fp32 reference), the other paths keep them in fp32 and round once.
_MOE_MLP_TOL = {torch.float32: Tol(2e-5, 2e-5), torch.float16: Tol(2e-3, 4e-3), torch.bfloat16: Tol(1e-2, 2e-2)}


def _moe_mlp_flops(case) -> float:
    """2 T k (2 I H + H I): gate/up and down of every routed slot."""
    x, gate_up, _, weights, _ = case.args[:5]
    return 2.0 * weights.numel() * 3 * (gate_up.shape[1] // 2) * x.shape[1]


def _moe_mlp_bytes(case) -> int:
    """The touched-weight floor: the routed (distinct) experts' gate/up and down rows, x, out, weights, experts."""
    x, gate_up, down, weights, experts = case.args[:5]
    n = int(torch.unique(experts).numel())
    per_expert = (gate_up[0].numel() + down[0].numel()) * gate_up.element_size()
    return n * per_expert + 2 * x.numel() * x.element_size() + weights.numel() * 4 + experts.numel() * 8

# gated delta rule: 16-bit tensor-core operands (W, U, the state as an mma operand) carry one rounding each per
# 64-token chunk; measured on an H200 (tools/deltanet_gpu.py --check): rel L2 ~3e-3 (bf16), ~4e-4 (fp16).
_GDR_TOL = {torch.float32: Tol(2e-5, 5e-5), torch.float16: Tol(3e-3, 1e-2), torch.bfloat16: Tol(1.5e-2, 5e-2)}


def _gdr_flops(case) -> float:
    """Matrix FLOPs of the chunked form (64-token chunks, d = 128) per value head and chunk: K K^T, Q K^T, W, U
    (4 x 2*64*64*128), W S, Q S, K^T Vn (3 x 2*64*128*128), Aqk Vn (2*64*64*128)."""
    q, v = case.args[0], case.args[2]
    cu = case.args[7 if case.op == "fused_gated_delta_rule" else 5]
    chunks = int(((cu[1:] - cu[:-1] + 63) // 64).sum())
    c, d = 64, q.shape[2]
    return float(chunks * v.shape[1] * (5 * 2 * c * c * d + 3 * 2 * c * d * d))


def _deltanet_covers(config, dtype) -> str | None:
    """DeltaNet heads of dk = dv = 128 (every Qwen3.5 size)."""
    t = config.text
    if (t.linear_key_head_dim, t.linear_value_head_dim) != (deltanet.D, deltanet.D):
        return (f"DeltaNet dk={t.linear_key_head_dim}, dv={t.linear_value_head_dim}; the kernels are built for "
                f"dk = dv = {deltanet.D}")
    return None


def _moe_covers(config, dtype) -> str | None:
    """Expert count, top-k and widths within the MoE kernels' limits (dense checkpoints never call them)."""
    t = config.text
    if not t.is_moe:
        return None
    E, k, I, H = t.num_experts, t.num_experts_per_tok, t.moe_intermediate_size, t.hidden_size
    size = dtype.itemsize if dtype is not None else 2
    for bad, why in ((E > moe_kernels.MAX_EXPERTS, f"{E} experts (the kernel takes at most {moe_kernels.MAX_EXPERTS})"),
                     (k > moe_kernels.MAX_TOPK, f"top-{k} (at most {moe_kernels.MAX_TOPK})"),
                     (k * I * 4 > moe_kernels._SMEM, f"top-k x expert width {k * I} (shared memory)"),
                     (H * size > moe_kernels._XS_SMEM, f"hidden size {H} (shared memory)")):
        if bad:
            return why
    return None


def _attention_covers(config, dtype) -> str | None:
    """Both towers' head dims must be kernel instantiations (the same set for the fp32 SIMT kernel)."""
    bad = [f"{where} head_dim {d}" for where, d in (("vision", config.vision.head_dim),
                                                     ("language model", config.text.head_dim)) if d not in _ATTN_HEAD_DIMS]
    return f"{' and '.join(bad)} not among the kernel's {_ATTN_HEAD_DIMS}" if bad else None


def _qkv_rope_covers(config, dtype) -> str | None:
    d = config.vision.head_dim
    return None if d in rope.HEAD_DIMS else f"vision head_dim {d} is not one of the kernel's {rope.HEAD_DIMS}"


def _lm_head_covers(config, dtype) -> str | None:  # qk_norm_rope, apply_rope (H4)
    d = config.text.head_dim
    return None if d <= rope.MAX_HEAD_DIM else f"text head_dim {d} is above the kernel's {rope.MAX_HEAD_DIM}"


def _conv1d_covers(config, dtype) -> str | None:  # causal_conv1d (H4)
    k = config.text.linear_conv_kernel_dim
    return None if k == conv1d.KERNEL_SIZE else f"conv kernel size {k} is not the kernel's {conv1d.KERNEL_SIZE}"


def _qk_norm_rope_bytes(case: Case) -> int:
    """One pass: the q half of qg, k, the weights and tables read; q and k written; with a cache, v read and one k
    and one v row written per token. The gate half of qg is never touched (returned as a view of qg)."""
    qg, k, wq, wk, cos, sin = case.args[:6]
    es = qg.element_size()
    nb = (qg.numel() // 2 + k.numel()) * es * 2 + (wq.numel() + wk.numel()) * es + (cos.numel() + sin.numel()) * 4
    return nb + (3 * case.kwargs["v"].numel() * es if case.kwargs.get("v") is not None else 0)


def _decode_covers(config, dtype) -> str | None:  # decode_attention (H5)
    d = config.text.head_dim
    return None if d in decode_kernels.HEAD_DIMS else f"text head_dim {d} is not one of {decode_kernels.HEAD_DIMS}"


def _decode_attention_bytes(case: Case) -> int:
    """K and V of the slots the rows use (q and the output are a rounding error beside them)."""
    kc, lengths = case.args[1], case.args[3]
    return int(lengths.clamp(0, kc.shape[1]).sum()) * kc.shape[2] * kc.shape[3] * kc.element_size() * 2


def _kv_cache_append_bytes(case: Case) -> int:
    """The new k and v read once and written once into the caches."""
    k, v = case.args[:2]
    return 2 * (k.numel() + v.numel()) * k.element_size()


def _attention_flops(case: Case) -> float:
    """4 L^2 d Hq per segment (QK^T and PV), halved when causal: the flash-attention convention."""
    q, _, _, cu, causal = case.args[:5]
    lengths = (cu[1:] - cu[:-1]).tolist()
    return sum(4.0 * L * L * q.shape[2] * q.shape[1] for L in lengths) * (0.5 if causal else 1.0)


REGISTRY: dict[str, OpSpec] = {s.name: s for s in (
    # vision tower
    _spec("patch_embed", cublas=vision.patch_embed, poison="alloc",
          flops=lambda c: 2.0 * c.args[0].shape[0] * c.args[0].shape[1] * c.args[1].shape[0]),
    _spec("vision_pos_taps", numba=vision.vision_pos_taps, **_INDEX),
    _spec("add_pos_embed", nvrtc=vision.add_pos_embed),
    _spec("vision_rope_cos_sin", dtypes=(torch.float32,), numba=vision.vision_rope_cos_sin),
    _spec("vision_cu_seqlens", numba=vision.vision_cu_seqlens, **_INDEX),
    _spec("layer_norm", nvrtc=norms.layer_norm, numba=norms.layer_norm_numba),
    _spec("add_bias_layer_norm", nvrtc=norms.add_bias_layer_norm),
    _spec("qkv_bias_rope", nvrtc=rope.qkv_bias_rope, covers=_qkv_rope_covers),
    _spec("bias_gelu", nvrtc=activations.bias_gelu, numba=activations.bias_gelu_numba),
    # bf16/fp16 on tensor cores (P is rounded to the input dtype before PV); fp32 on the exact SIMT kernel
    _spec("attention", nvrtc=attention_nvrtc, covers=_attention_covers, flops=_attention_flops,
          tol={torch.bfloat16: Tol(1e-2, 4e-2), torch.float16: Tol(2e-3, 6e-3), torch.float32: Tol(2e-5, 2e-5)}),
    _spec("attention_mask", **_INDEX),  # reference only, by design
    # multimodal glue
    _spec("rope_index", numba=rope.rope_index, **_INDEX),
    _spec("scatter_image_embeds", exact=True, numba=glue.scatter_image_embeds),  # a copy: bit-exact
    # language model
    _spec("rms_norm", nvrtc=norms.rms_norm),
    _spec("add_rms_norm", nvrtc=norms.add_rms_norm),
    _spec("mrope_cos_sin", dtypes=(torch.float32,), nvrtc=rope.mrope_cos_sin),
    _spec("apply_rope", nvrtc=rope.apply_rope, covers=_lm_head_covers),
    _spec("qk_norm_rope", nvrtc=rope.qk_norm_rope, covers=_lm_head_covers, min_bytes=_qk_norm_rope_bytes),
    _spec("sigmoid_gate", nvrtc=activations.sigmoid_gate),
    _spec("silu_mul", nvrtc=activations.silu_mul),
    _spec("silu_mul_fused", nvrtc=activations.silu_mul_fused),  # SwiGLU on a fused gate/up GEMM output
    _spec("causal_conv1d", nvrtc=conv1d.causal_conv1d, covers=_conv1d_covers,
          split=Split(tokens=(0,), cu_seqlens=2, state=3)),
    _spec("l2norm", nvrtc=norms.l2norm),
    _spec("gated_delta_rule", nvrtc=deltanet.gated_delta_rule, covers=_deltanet_covers,
          split=Split(tokens=(0, 1, 2, 3, 4), cu_seqlens=5, state=6), tol=_GDR_TOL, flops=_gdr_flops),
    _spec("fused_gated_delta_rule", nvrtc=deltanet.fused_gated_delta_rule, covers=_deltanet_covers,
          split=Split(tokens=(0, 1, 2, 3, 4), cu_seqlens=7, state=8), tol=_GDR_TOL, flops=_gdr_flops),
    _spec("gated_rms_norm", nvrtc=norms.gated_rms_norm),
    # P is rounded to the cache dtype before the PV product, as in the prefill kernel: the same tolerances
    _spec("decode_attention", dtypes=(torch.bfloat16, torch.float16), nvrtc=decode_kernels.decode_attention,
          tol={torch.bfloat16: Tol(1e-2, 4e-2), torch.float16: Tol(2e-3, 6e-3)}, covers=_decode_covers,
          min_bytes=_decode_attention_bytes),
    _spec("kv_cache_append", exact=True, nvrtc=decode_kernels.kv_cache_append, inplace=(2, 3), poison="alloc",
          min_bytes=_kv_cache_append_bytes),  # a copy into the caches (no out=): bit-exact
    _spec("moe_topk", nvrtc=moe_kernels.moe_topk, covers=_moe_covers),
    _spec("moe_router_topk", nvrtc=moe_kernels.moe_router_topk, covers=_moe_covers),  # decode: T <= 64
    _spec("moe_mlp", nvrtc=moe_kernels.moe_mlp, covers=_moe_covers, tol=_MOE_MLP_TOL, flops=_moe_mlp_flops,
          min_bytes=_moe_mlp_bytes),
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


def by_family() -> dict[str, list[OpSpec]]:
    """{family: [OpSpec, ...]} in registry order."""
    out: dict[str, list[OpSpec]] = {}
    for s in REGISTRY.values():
        out.setdefault(s.family, []).append(s)
    return out
