"""Inputs of the norms family (layer_norm, add_bias_layer_norm, ...): builders, strategies, real shapes, bad inputs,
peers. The functions are found by name from kernels.registry (x_cases, x_example, x_real, x_bad, x_peers)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from hypothesis import strategies as st

from . import Bad, Case, act, dtypes, per_size, real_widths, rows, scales, seeds, shifts, vec, widths

VIT_WIDTHS = (768, 1024, 1152)        # D of the 0.8B / 4B / 9B+ towers
AFFINE = ((True, True), (True, True), (True, False), (False, True), (False, False))


def build_layer_norm(n, d, dtype, seed=0, scale=1.0, shift=0.0, affine=(True, True)) -> Case:
    g = torch.Generator().manual_seed(seed)
    x = act(g, (n, d), dtype, scale, shift)
    w = vec(g, d, dtype, 1.0) if affine[0] else None
    b = vec(g, d, dtype, 0.0) if affine[1] else None
    return Case("layer_norm", (x, w, b, 1e-6), (((n, d), dtype),), f"{n}x{d}")


def build_add_bias_layer_norm(n, d, dtype, seed=0, scale=1.0, shift=0.0, with_bias=True,
                              affine=(True, True)) -> Case:
    g = torch.Generator().manual_seed(seed)
    x = act(g, (n, d), dtype, scale, shift)
    bias = vec(g, d, dtype, 0.0, scale) if with_bias else None
    residual = act(g, (n, d), dtype, scale)
    w = vec(g, d, dtype, 1.0) if affine[0] else None
    nb = vec(g, d, dtype, 0.0) if affine[1] else None
    return Case("add_bias_layer_norm", (x, bias, residual, w, nb, 1e-6), (((n, d), dtype),) * 2, f"{n}x{d}")


# ------------------------------------------------------------------------------------------------ layer_norm
@st.composite
def _layer_norm(draw, small):
    s = draw(scales)
    return build_layer_norm(draw(rows(small)), draw(widths(VIT_WIDTHS, small)), draw(dtypes(small)), draw(seeds),
                            s, draw(shifts) * s, affine=draw(st.sampled_from(AFFINE)))


def layer_norm_cases(small: bool = False):
    return _layer_norm(small)


def layer_norm_example(dtype=torch.bfloat16) -> Case:
    return build_layer_norm(3, 40, dtype)


def layer_norm_real(dtype=torch.bfloat16, tokens: int = 4096) -> list[Case]:
    return per_size(("vit_hidden",), lambda d: build_layer_norm(tokens, d, dtype, seed=d))


def layer_norm_bad(device) -> list[Bad]:
    x, w, b, eps = layer_norm_example(torch.float32).on(device)
    return [
        Bad("x not a tensor", (x.tolist(), w, b), "x must be a torch.Tensor", TypeError, reference=True),
        Bad("x 1-D", (x[0], w, b), "x must have 2 dimensions", reference=True),
        Bad("x int", (x.int(), w.int(), b.int()), "x must have dtype", reference=True),
        Bad("x fp64", (x.double(), w.double(), b.double()), "x must have dtype"),  # kernels: fp32/fp16/bf16
        Bad("weight shape", (x, w[:-1], b), "weight must have shape", reference=True),
        Bad("bias dtype", (x, w, b.half()), "bias must have the input dtype|bias must have dtype", reference=True),
        Bad("eps negative", (x, w, b, -1.0), "eps must be", reference=True),
        Bad("x strided", (x.t().contiguous().t(), w, b), "x must be contiguous"),
    ]


def layer_norm_peers(args) -> dict:
    x, w, b, eps = args
    return {"torch": lambda: F.layer_norm(x, (x.shape[1],), w, b, eps)}


# ---------------------------------------------------------------------------------------- add_bias_layer_norm
@st.composite
def _add_bias_layer_norm(draw, small):
    s = draw(scales)
    return build_add_bias_layer_norm(draw(rows(small)), draw(widths(VIT_WIDTHS, small)), draw(dtypes(small)),
                                     draw(seeds), s, draw(shifts) * s,
                                     with_bias=draw(st.sampled_from((True, True, False))),
                                     affine=draw(st.sampled_from(((True, True), (True, False), (False, False)))))


def add_bias_layer_norm_cases(small: bool = False):
    return _add_bias_layer_norm(small)


def add_bias_layer_norm_example(dtype=torch.bfloat16) -> Case:
    return build_add_bias_layer_norm(3, 40, dtype)


def add_bias_layer_norm_real(dtype=torch.bfloat16, tokens: int = 4096) -> list[Case]:
    return per_size(("vit_hidden",), lambda d: build_add_bias_layer_norm(tokens, d, dtype, seed=d))


def add_bias_layer_norm_bad(device) -> list[Bad]:
    x, bias, res, w, nb, eps = add_bias_layer_norm_example().on(device)
    strided = torch.zeros(2 * x.shape[1], dtype=x.dtype, device=x.device)[::2]
    return [
        Bad("bias shape", (x, bias[:-1], res, w, nb, eps), "bias must have shape", reference=True),
        Bad("residual shape", (x, bias, res[:-1], w, nb, eps), "residual must have shape", reference=True),
        Bad("residual dtype", (x, bias, res.half(), w, nb, eps), "residual must have the input dtype"),
        Bad("norm_bias strided", (x, bias, res, w, strided, eps), "norm_bias must be contiguous"),
        Bad("x fp64", (x.double(), bias, res, w, nb, eps), "x must have dtype"),
        Bad("x int", (x.int(), bias, res, w, nb, eps), "x must have dtype"),
        Bad("x 1-D", (x.reshape(-1), bias, res, w, nb, eps), "x must have 2 dimensions"),
        Bad("x strided", (x.t().contiguous().t(), bias, res, w, nb, eps), "x must be contiguous"),
        Bad("out not a pair", (x, bias, res, w, nb, eps), "out must be a pair", kwargs={"out": torch.empty_like(x)}),
    ]


def add_bias_layer_norm_peers(args) -> dict:
    x, bias, res, w, nb, eps = args

    def run():  # HF's formulation: two adds, then the norm
        r = res + (x + bias)
        return F.layer_norm(r, (x.shape[1],), w, nb, eps), r
    return {"torch": run}


# ------------------------------------------------------------------------------- the language model's RMSNorms
# Widths: the LM hidden sizes (decoder and final norms), head_dim (the q/k head norms on [T, H, 256]) and the
# DeltaNet head dim (gated norm and l2norm on [T, H, 128]).
LM_WIDTHS = (1024, 2048, 2560, 4096, 5120, 256, 128)


@st.composite
def _lead(draw, small):
    """Leading shape: rows, or (tokens, heads) like the per-head norms."""
    n = draw(rows(small))
    return (n,) if draw(st.booleans()) else (n, draw(st.integers(1, 3 if small else 8)))


def _weight(g, d, dtype, unit_offset: bool) -> torch.Tensor:
    """Zero-centred weights for (1 + w), weights around 1 for a plain scale."""
    return vec(g, d, dtype, 0.0 if unit_offset else 1.0)


def build_rms_norm(lead, d, dtype, seed=0, scale=1.0, shift=0.0, unit_offset=True) -> Case:
    g = torch.Generator().manual_seed(seed)
    shape = (*lead, d)
    return Case("rms_norm", (act(g, shape, dtype, scale, shift), _weight(g, d, dtype, unit_offset), 1e-6,
                             unit_offset), ((shape, dtype),), "x".join(map(str, shape)))


def build_add_rms_norm(lead, d, dtype, seed=0, scale=1.0, shift=0.0, unit_offset=True) -> Case:
    g = torch.Generator().manual_seed(seed)
    shape = (*lead, d)
    x, res = act(g, shape, dtype, scale, shift), act(g, shape, dtype, scale)
    return Case("add_rms_norm", (x, res, _weight(g, d, dtype, unit_offset), 1e-6, unit_offset),
                ((shape, dtype),) * 2, "x".join(map(str, shape)))


def build_gated_rms_norm(lead, d, dtype, seed=0, scale=1.0, shift=0.0) -> Case:
    g = torch.Generator().manual_seed(seed)
    shape = (*lead, d)
    x, z = act(g, shape, dtype, scale, shift), act(g, shape, dtype, 2.0)
    return Case("gated_rms_norm", (x, z, _weight(g, d, dtype, False), 1e-6), ((shape, dtype),),
                "x".join(map(str, shape)))


def build_l2norm(lead, d, dtype, seed=0, scale=1.0, shift=0.0) -> Case:
    g = torch.Generator().manual_seed(seed)
    shape = (*lead, d)
    return Case("l2norm", (act(g, shape, dtype, scale, shift), 1e-6), ((shape, dtype),), "x".join(map(str, shape)))


@st.composite
def _rms(draw, build, small, extra=()):
    s = draw(scales)
    kw = {k: draw(v) for k, v in extra}
    return build(draw(_lead(small)), draw(widths(LM_WIDTHS, small)), draw(dtypes(small)), draw(seeds), s,
                 draw(shifts) * s, **kw)


_UNIT = (("unit_offset", st.booleans()),)


def rms_norm_cases(small: bool = False):
    return _rms(build_rms_norm, small, _UNIT)


def add_rms_norm_cases(small: bool = False):
    return _rms(build_add_rms_norm, small, _UNIT)


def gated_rms_norm_cases(small: bool = False):
    return _rms(build_gated_rms_norm, small)


def l2norm_cases(small: bool = False):
    return _rms(build_l2norm, small)


def rms_norm_example(dtype=torch.bfloat16) -> Case:
    return build_rms_norm((3,), 40, dtype)


def add_rms_norm_example(dtype=torch.bfloat16) -> Case:
    return build_add_rms_norm((3,), 40, dtype)


def gated_rms_norm_example(dtype=torch.bfloat16) -> Case:
    return build_gated_rms_norm((3, 2), 40, dtype)


def l2norm_example(dtype=torch.bfloat16) -> Case:
    return build_l2norm((3, 2), 40, dtype)


def _labelled(size: str, c: Case, what: str) -> Case:
    c.label = f"{size}-{what}-{c.label}"
    return c


def rms_norm_real(dtype=torch.bfloat16, tokens: int = 4096) -> list[Case]:
    """The decoder/final norms on [tokens, hidden] and the q head norm on [tokens, heads, 256]."""
    out = [_labelled(size, build_rms_norm((tokens,), d, dtype, seed=d), "hidden")
           for size, (d,) in real_widths("hidden")]
    out += [_labelled(size, build_rms_norm((tokens, h), hd, dtype, seed=h), "qnorm")
            for size, (h, hd) in real_widths("heads", "head_dim")]
    return out


def add_rms_norm_real(dtype=torch.bfloat16, tokens: int = 4096) -> list[Case]:
    return [_labelled(size, build_add_rms_norm((tokens,), d, dtype, seed=d), "hidden")
            for size, (d,) in real_widths("hidden")]


def gated_rms_norm_real(dtype=torch.bfloat16, tokens: int = 4096) -> list[Case]:
    return [_labelled(size, build_gated_rms_norm((tokens, h), dv, dtype, seed=h), "gdn")
            for size, (h, dv) in real_widths("gdn_v_heads", "gdn_head_dim")]


def l2norm_real(dtype=torch.bfloat16, tokens: int = 4096) -> list[Case]:
    """DeltaNet q/k: [tokens, key heads, 128]."""
    return [_labelled(size, build_l2norm((tokens, h), dk, dtype, seed=h), "gdn_qk")
            for size, (h, dk) in real_widths("gdn_k_heads", "gdn_head_dim")]


def _strided(x: torch.Tensor) -> torch.Tensor:
    """Same shape and values, a layout the kernels refuse: a strided last dim ([n, d]), or leading dims that no
    one row stride describes ([n, h, d]). (Row views with a unit last-dim stride are fine: test_norms.py.)"""
    return x.transpose(0, 1).contiguous().transpose(0, 1) if x.dim() >= 2 else x.repeat_interleave(2)[::2]


def _layout(name: str) -> str:
    return f"{name} must have a last-dim stride of 1|{name}'s leading dims must collapse"


def rms_norm_bad(device) -> list[Bad]:
    x, w, eps, uo = rms_norm_example(torch.float32).on(device)
    return [
        Bad("x not a tensor", (x.tolist(), w), "x must be a torch.Tensor", TypeError, reference=True),
        Bad("x 0-d", (x[0, 0], w[:1]), "x must have at least 1 dimension", reference=True),
        Bad("x int", (x.int(), w.int()), "x must have dtype", reference=True),
        Bad("x fp64", (x.double(), w.double()), "x must have dtype"),
        Bad("weight shape", (x, w[:-1]), "weight must have shape", reference=True),
        Bad("weight dtype", (x, w.half()), "weight must have the input dtype|weight must have dtype", reference=True),
        Bad("eps negative", (x, w, -1e-6), "eps must be", reference=True),
        Bad("unit_offset not a bool", (x, w, 1e-6, 1), "unit_offset must be a bool", TypeError),
        Bad("x strided", (_strided(x), w), _layout("x")),
    ]


def add_rms_norm_bad(device) -> list[Bad]:
    x, res, w, eps, uo = add_rms_norm_example(torch.float32).on(device)
    return [
        Bad("residual shape", (x, res[:-1], w), "residual must have shape", reference=True),
        Bad("residual dtype", (x, res.half(), w), "residual must have the input dtype|residual must have dtype",
            reference=True),
        Bad("weight shape", (x, res, w[:-1]), "weight must have shape", reference=True),
        Bad("x fp64", (x.double(), res.double(), w.double()), "x must have dtype"),
        Bad("eps nan", (x, res, w, float("nan")), "eps must be", reference=True),
        Bad("residual strided", (x, _strided(res), w), _layout("residual")),
        Bad("out not a pair", (x, res, w), "out must be a pair", kwargs={"out": torch.empty_like(x)}),
    ]


def gated_rms_norm_bad(device) -> list[Bad]:
    x, z, w, eps = gated_rms_norm_example(torch.float32).on(device)
    return [
        Bad("z shape", (x, z[:-1], w), "z must have shape", reference=True),
        Bad("z dtype", (x, z.double(), w), "z must have the input dtype|z must have dtype", reference=True),
        Bad("weight shape", (x, z, w[:-1]), "weight must have shape", reference=True),
        Bad("x 0-d", (x[0, 0, 0], z[0, 0, 0], w[:1]), "x must have at least 1 dimension", reference=True),
        Bad("x int", (x.int(), z.int(), w.int()), "x must have dtype", reference=True),
        Bad("z strided", (x, _strided(z), w), _layout("z")),
    ]


def l2norm_bad(device) -> list[Bad]:
    x, eps = l2norm_example(torch.float32).on(device)
    return [
        Bad("x int", (x.long(),), "x must have dtype", reference=True),
        Bad("x 0-d", (x[0, 0, 0],), "x must have at least 1 dimension", reference=True),
        Bad("eps negative", (x, -1.0), "eps must be", reference=True),
        Bad("x strided", (_strided(x),), _layout("x")),
    ]


def _hf_rms(x, w, eps, unit_offset=True):
    """HF Qwen3_5RMSNorm's formulation: fp32 statistics, several kernels."""
    xf = x.float()
    y = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)
    return (y * ((1.0 + w.float()) if unit_offset else w.float())).to(x.dtype)


def rms_norm_peers(args) -> dict:
    x, w, eps, uo = args
    return {"torch": lambda: _hf_rms(x, w, eps, uo)}


def add_rms_norm_peers(args) -> dict:
    x, res, w, eps, uo = args

    def run():
        r = res + x
        return _hf_rms(r, w, eps, uo), r
    return {"torch": run}


def gated_rms_norm_peers(args) -> dict:
    x, z, w, eps = args

    def run():  # HF Qwen3_5RMSNormGated
        xf = x.float()
        n = (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)).to(x.dtype)
        return (w * n * F.silu(z.float())).to(x.dtype)
    return {"torch": run}


def l2norm_peers(args) -> dict:
    x, eps = args

    def run():  # fla / HF l2norm
        xf = x.float()
        return (xf * torch.rsqrt((xf * xf).sum(-1, keepdim=True) + eps)).to(x.dtype)
    return {"torch": run}
