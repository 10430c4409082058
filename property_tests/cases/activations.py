"""Inputs of the activations family (bias_gelu, ...): builders, strategies, real shapes, bad inputs, peers.
The functions are found by name from kernels.registry (x_cases, x_example, x_real, x_bad, x_peers)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from hypothesis import strategies as st

from . import Bad, Case, act, dtypes, real_widths, rows, seeds, shifts, vec, widths

MLP_WIDTHS = (3072, 4096, 4304)       # I of the 0.8B / 4B / 9B+ towers


def build_bias_gelu(n, d, dtype, seed=0, scale=1.0, shift=0.0, approximate="tanh", with_bias=True) -> Case:
    g = torch.Generator().manual_seed(seed)
    x = act(g, (n, d), dtype, scale, shift)
    bias = vec(g, d, dtype, 0.0, scale) if with_bias else None
    return Case("bias_gelu", (x, bias, approximate), (((n, d), dtype),), f"{n}x{d}-{approximate}")


@st.composite
def _bias_gelu(draw, small):
    s = draw(st.sampled_from((0.1, 1.0, 3.0, 10.0)))
    return build_bias_gelu(draw(rows(small)),
                           draw(widths(MLP_WIDTHS + (768, 1152), small)), draw(dtypes(small)), draw(seeds), s,
                           draw(shifts) * s, approximate=draw(st.sampled_from(("tanh", "none"))),
                           with_bias=draw(st.sampled_from((True, True, False))))


def bias_gelu_cases(small: bool = False):
    return _bias_gelu(small)


def bias_gelu_example(dtype=torch.bfloat16) -> Case:
    return build_bias_gelu(3, 40, dtype)


def bias_gelu_real(dtype=torch.bfloat16, tokens: int = 4096) -> list[Case]:
    """The blocks' fc1 epilogue (tanh) at each tower's MLP width; the merger's (exact GELU) at 4 x hidden."""
    out = []
    for size, (i, d) in real_widths("vit_mlp", "vit_hidden"):
        for width, approx, where in ((i, "tanh", "mlp"), (4 * d, "none", "merger")):
            c = build_bias_gelu(tokens if where == "mlp" else tokens // 4, width, dtype, seed=width,
                                approximate=approx)
            c.label = f"{size}-{where}-{c.label}"
            out.append(c)
    return out


def bias_gelu_bad(device) -> list[Bad]:
    x, b, _ = bias_gelu_example(torch.float32).on(device)
    return [
        Bad("approximate", (x, b, "sigmoid"), "approximate must be", reference=True),
        Bad("bias shape", (x, b[:-1]), "bias must have shape", reference=True),
        Bad("bias dtype", (x, b.half()), "bias must have the input dtype|bias must have dtype", reference=True),
        Bad("x 1-D", (x[0], b), "x must have 2 dimensions", reference=True),
        Bad("x fp64", (x.double(), b.double()), "x must have dtype"),
        Bad("x int", (x.int(), b.int()), "x must have dtype", reference=True),
        Bad("x strided", (x.t().contiguous().t(), b), "x must be contiguous"),
    ]


def bias_gelu_peers(args) -> dict:
    x, bias, approximate = args
    return {"torch": lambda: F.gelu(x + bias, approximate=approximate)}
