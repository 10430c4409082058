"""Inputs of the activations family (bias_gelu, ...): builders, strategies, real shapes, bad inputs, peers.
The functions are found by name from kernels.registry (x_cases, x_example, x_real, x_bad, x_peers)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from hypothesis import strategies as st

from . import Bad, Case, act, dtypes, per_size, real_widths, rows, seeds, shifts, vec, widths

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
    return (per_size(("vit_mlp",), lambda i: build_bias_gelu(tokens, i, dtype, seed=i))
            + per_size(("vit_hidden",), lambda d: build_bias_gelu(tokens // 4, 4 * d, dtype, seed=d, approximate="none")))


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


# ------------------------------------------------------------------------- the language model's gates (SwiGLU)
LM_MLP_WIDTHS = (3584, 6144, 9216, 12288, 17408)  # intermediate sizes of 0.8B / 2B / 4B / 9B / 27B


def build_silu_mul(shape, dtype, seed=0, scale=1.0) -> Case:
    g = torch.Generator().manual_seed(seed)
    shape = tuple(shape)
    return Case("silu_mul", (act(g, shape, dtype, 3.0 * scale), act(g, shape, dtype, scale)), ((shape, dtype),),
                "x".join(map(str, shape)))


def build_silu_mul_fused(shape, dtype, seed=0, scale=1.0) -> Case:
    """gate_up [..., 2I]; shape is the output's [..., I]."""
    g = torch.Generator().manual_seed(seed)
    shape = tuple(shape)
    gate, up = act(g, shape, dtype, 3.0 * scale), act(g, shape, dtype, scale)
    return Case("silu_mul_fused", (torch.cat([gate, up], -1),), ((shape, dtype),),
                "x".join(map(str, shape[:-1] + (2 * shape[-1],))))


def build_sigmoid_gate(shape, dtype, seed=0, scale=1.0) -> Case:
    g = torch.Generator().manual_seed(seed)
    shape = tuple(shape)
    return Case("sigmoid_gate", (act(g, shape, dtype, scale), act(g, shape, dtype, 3.0)), ((shape, dtype),),
                "x".join(map(str, shape)))


@st.composite
def _gate_shape(draw, small, real):
    """[rows, width] or [tokens, heads, width]."""
    w = draw(widths(real, small))
    n = draw(rows(small))
    return (n, w) if draw(st.booleans()) else (n, draw(st.integers(1, 3 if small else 8)), w)


@st.composite
def _gate(draw, build, small, real):
    return build(draw(_gate_shape(small, real)), draw(dtypes(small)), draw(seeds),
                 draw(st.sampled_from((0.1, 1.0, 3.0, 10.0))))


def silu_mul_cases(small: bool = False):
    return _gate(build_silu_mul, small, LM_MLP_WIDTHS)


def silu_mul_fused_cases(small: bool = False):
    return _gate(build_silu_mul_fused, small, LM_MLP_WIDTHS)


def sigmoid_gate_cases(small: bool = False):
    return _gate(build_sigmoid_gate, small, (256,))


def silu_mul_example(dtype=torch.bfloat16) -> Case:
    return build_silu_mul((3, 40), dtype)


def silu_mul_fused_example(dtype=torch.bfloat16) -> Case:
    return build_silu_mul_fused((3, 40), dtype)


def sigmoid_gate_example(dtype=torch.bfloat16) -> Case:
    return build_sigmoid_gate((3, 2, 40), dtype)


def _labelled(size: str, c: Case) -> Case:
    c.label = f"{size}-{c.label}"
    return c


def silu_mul_real(dtype=torch.bfloat16, tokens: int = 4096) -> list[Case]:
    return [_labelled(size, build_silu_mul((tokens, i), dtype, seed=i)) for size, (i,) in real_widths("mlp")]


def silu_mul_fused_real(dtype=torch.bfloat16, tokens: int = 4096) -> list[Case]:
    return [_labelled(size, build_silu_mul_fused((tokens, i), dtype, seed=i)) for size, (i,) in real_widths("mlp")]


def sigmoid_gate_real(dtype=torch.bfloat16, tokens: int = 4096) -> list[Case]:
    return [_labelled(size, build_sigmoid_gate((tokens, h, d), dtype, seed=h))
            for size, (h, d) in real_widths("heads", "head_dim")]


def _gap_rows(t: torch.Tensor) -> torch.Tensor:
    """t's values ([a, b, d]) with a unit last-dim stride but leading dims no single row stride describes: a
    [a, b + 1, d] buffer sliced to b rows per leading index."""
    a, b, d = t.shape
    buf = torch.zeros((a, b + 1, d), dtype=t.dtype, device=t.device)
    buf[:, :b] = t
    return buf[:, :b]


def _pair_bad(a_name: str, b_name: str, a, b) -> list[Bad]:
    """a, b: [n, h, d] examples of the two inputs."""
    return [
        Bad(f"{b_name} shape", (a, b[..., :-1]), f"{b_name} must have shape", reference=True),
        Bad(f"{b_name} dtype", (a, b.half()), f"{b_name} must have the input dtype|{b_name} must have dtype",
            reference=True),
        Bad(f"{a_name} int", (a.int(), b.int()), f"{a_name} must have dtype", reference=True),
        Bad(f"{a_name} fp64", (a.double(), b.double()), f"{a_name} must have dtype"),
        Bad(f"{a_name} last dim strided", (a.transpose(-1, -2).contiguous().transpose(-1, -2), b),
            f"{a_name} must have a last-dim stride of 1"),
        Bad(f"{b_name} rows do not collapse", (a, _gap_rows(b)), f"{b_name}'s leading dims must collapse"),
    ]


def silu_mul_bad(device) -> list[Bad]:
    g, u = build_silu_mul((3, 2, 40), torch.float32).on(device)
    return _pair_bad("gate", "up", g, u)


def sigmoid_gate_bad(device) -> list[Bad]:
    o, g = sigmoid_gate_example(torch.float32).on(device)
    return _pair_bad("o", "gate", o, g)


def silu_mul_fused_bad(device) -> list[Bad]:
    (gu,) = silu_mul_fused_example(torch.float32).on(device)
    return [
        Bad("gate_up odd width", (gu[:, :-1],), "gate_up must have an even last dim", reference=True),
        Bad("gate_up 0-d", (gu[0, 0],), "gate_up must have an even last dim", reference=True),
        Bad("gate_up int", (gu.int(),), "gate_up must have dtype", reference=True),
        Bad("gate_up fp64", (gu.double(),), "gate_up must have dtype"),
        Bad("gate_up last dim strided", (gu.t().contiguous().t(),), "gate_up must have a last-dim stride of 1"),
    ]


def silu_mul_peers(args) -> dict:
    g, u = args
    return {"torch": lambda: F.silu(g) * u}


def silu_mul_fused_peers(args) -> dict:
    (gu,) = args
    i = gu.shape[-1] // 2
    return {"torch": lambda: F.silu(gu[..., :i]) * gu[..., i:]}


def sigmoid_gate_peers(args) -> dict:
    o, g = args
    return {"torch": lambda: o * torch.sigmoid(g)}
