"""Inputs of the norms family (layer_norm, add_bias_layer_norm, ...): builders, strategies, real shapes, bad inputs,
peers. The functions are found by name from kernels.registry (x_cases, x_example, x_real, x_bad, x_peers)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from hypothesis import strategies as st

from . import Bad, Case, act, dtypes, real_widths, rows, scales, seeds, shifts, vec, widths

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
    out = []
    for size, (d,) in real_widths("vit_hidden"):
        c = build_layer_norm(tokens, d, dtype, seed=d)
        c.label = f"{size}-{c.label}"
        out.append(c)
    return out


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
    out = []
    for size, (d,) in real_widths("vit_hidden"):
        c = build_add_bias_layer_norm(tokens, d, dtype, seed=d)
        c.label = f"{size}-{c.label}"
        out.append(c)
    return out


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
