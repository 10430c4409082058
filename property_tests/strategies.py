"""Inputs for the vision-tower ops: plain builders (also used by the benchmarks) and Hypothesis strategies.

A `Case` holds the op's positional arguments as CPU tensors built from a seed (cheap to shrink), the shapes
and dtypes of its outputs (so tests can hand the kernel NaN-filled `out=` tensors), and a short id.
Data: values ~ N(shift, scale^2) with scale log-uniform in [1e-2, 1e2] and |shift| <= 3 scale, per-channel
weights around 1 and biases around 0: real activations, without the extreme cancellation that no fp32
LayerNorm survives.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from hypothesis import strategies as st

FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
VIT_WIDTHS = (768, 1024, 1152)        # D of the 0.8B / 4B / 9B+ towers
MLP_WIDTHS = (3072, 4096, 4304)       # I of the same
ODD_WIDTHS = (1, 3, 7, 9, 33, 100, 1150, 1151, 1153, 4303, 4305, 2049)  # not a multiple of the vector width
HEAD_DIMS = (64, 72, 80, 128)
POS_TABLE_ROWS = 2304                 # 48 x 48


@dataclass
class Case:
    op: str
    args: tuple                 # positional arguments: CPU tensors, None, scalars
    out_shapes: tuple           # ((shape, dtype), ...) of the outputs, in return order
    label: str

    def on(self, device) -> tuple:
        return tuple(a.to(device) if isinstance(a, torch.Tensor) else a for a in self.args)

    def nan_outs(self, device):
        """NaN-filled output tensors: one tensor, or a tuple for ops that return several."""
        outs = tuple(torch.full(s, float("nan"), dtype=d, device=device) for s, d in self.out_shapes)
        return outs[0] if len(outs) == 1 else outs


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _act(g, shape, dtype, scale=1.0, shift=0.0) -> torch.Tensor:
    return (torch.randn(shape, generator=g) * scale + shift).to(dtype)


def _vec(g, d, dtype, around: float, spread: float = 0.5) -> torch.Tensor:
    return (around + spread * torch.randn(d, generator=g)).to(dtype)


def build_layer_norm(n, d, dtype, seed=0, scale=1.0, shift=0.0, affine=(True, True)) -> Case:
    g = _gen(seed)
    x = _act(g, (n, d), dtype, scale, shift)
    w = _vec(g, d, dtype, 1.0) if affine[0] else None
    b = _vec(g, d, dtype, 0.0) if affine[1] else None
    return Case("layer_norm", (x, w, b, 1e-6), (((n, d), dtype),), f"{n}x{d}")


def build_add_bias_layer_norm(n, d, dtype, seed=0, scale=1.0, shift=0.0, with_bias=True,
                              affine=(True, True)) -> Case:
    g = _gen(seed)
    x = _act(g, (n, d), dtype, scale, shift)
    bias = _vec(g, d, dtype, 0.0, scale) if with_bias else None
    residual = _act(g, (n, d), dtype, scale)
    w = _vec(g, d, dtype, 1.0) if affine[0] else None
    nb = _vec(g, d, dtype, 0.0) if affine[1] else None
    return Case("add_bias_layer_norm", (x, bias, residual, w, nb, 1e-6), (((n, d), dtype),) * 2, f"{n}x{d}")


def build_bias_gelu(n, d, dtype, seed=0, scale=1.0, shift=0.0, approximate="tanh", with_bias=True) -> Case:
    g = _gen(seed)
    x = _act(g, (n, d), dtype, scale, shift)
    bias = _vec(g, d, dtype, 0.0, scale) if with_bias else None
    return Case("bias_gelu", (x, bias, approximate), (((n, d), dtype),), f"{n}x{d}-{approximate}")


def build_add_pos_embed(n, d, dtype, seed=0, scale=1.0, table_rows=POS_TABLE_ROWS, grid=None) -> Case:
    """Random taps into a table of `table_rows` rows; or, with grid=(t, h, w) (n is then t*h*w), the real
    bilinear taps of that patch grid into the 48 x 48 table (neighbouring tokens share table rows)."""
    g = _gen(seed)
    if grid is not None:
        import reference

        index, weight = reference.vision_pos_taps(torch.tensor([grid]))
        n, table_rows = index.shape[1], POS_TABLE_ROWS
    else:
        index = torch.randint(0, table_rows, (4, n), generator=g, dtype=torch.int32)
        weight = torch.rand((4, n), generator=g)
        weight = weight / weight.sum(0, keepdim=True)  # bilinear weights sum to 1
    x = _act(g, (n, d), dtype, scale)
    table = _act(g, (table_rows, d), dtype, scale)
    label = f"{n}x{d}-" + (f"grid{grid[1]}x{grid[2]}" if grid else f"t{table_rows}")
    return Case("add_pos_embed", (x, table, index, weight), (((n, d), dtype),), label)


def build_qkv_bias_rope(n, heads, hd, dtype, seed=0, scale=1.0, with_bias=True, max_pos=100) -> Case:
    g = _gen(seed)
    width = 3 * heads * hd
    qkv = _act(g, (n, width), dtype, scale)
    bias = _vec(g, width, dtype, 0.0, scale) if with_bias else None
    angle = torch.rand((n, hd // 2), generator=g) * max_pos  # fp32 angles, like vision_rope_cos_sin
    return Case("qkv_bias_rope", (qkv, bias, angle.cos(), angle.sin(), heads),
                (((n, heads, hd), dtype),) * 3, f"{n}x{heads}x{hd}")


# ----------------------------------------------------------------------------------------- Hypothesis
dtypes = st.sampled_from(FLOAT_DTYPES)
seeds = st.integers(0, 2**31 - 1)
rows = st.one_of(st.just(1), st.integers(1, 40), st.sampled_from((127, 300)))
scales = st.sampled_from((1e-2, 0.1, 1.0, 10.0, 100.0))
shifts = st.sampled_from((0.0, -3.0, -1.0, 0.5, 3.0))  # in units of scale


def widths(real: tuple) -> st.SearchStrategy[int]:
    """Random widths, the real model widths, and widths that are not a multiple of any vector width."""
    return st.one_of(st.integers(1, 300), st.sampled_from(real), st.sampled_from(ODD_WIDTHS))


@st.composite
def layer_norm_cases(draw) -> Case:
    s = draw(scales)
    affine = draw(st.sampled_from(((True, True), (True, True), (True, False), (False, True), (False, False))))
    return build_layer_norm(draw(rows), draw(widths(VIT_WIDTHS)), draw(dtypes), draw(seeds), s,
                            draw(shifts) * s, affine=affine)


@st.composite
def add_bias_layer_norm_cases(draw) -> Case:
    s = draw(scales)
    return build_add_bias_layer_norm(draw(rows), draw(widths(VIT_WIDTHS)), draw(dtypes), draw(seeds), s,
                                     draw(shifts) * s, with_bias=draw(st.sampled_from((True, True, False))),
                                     affine=draw(st.sampled_from(((True, True), (True, False), (False, False)))))


@st.composite
def bias_gelu_cases(draw) -> Case:
    s = draw(st.sampled_from((0.1, 1.0, 3.0, 10.0)))
    return build_bias_gelu(draw(rows), draw(widths(MLP_WIDTHS + VIT_WIDTHS)), draw(dtypes), draw(seeds), s,
                           draw(shifts) * s, approximate=draw(st.sampled_from(("tanh", "none"))),
                           with_bias=draw(st.sampled_from((True, True, False))))


@st.composite
def add_pos_embed_cases(draw) -> Case:
    return build_add_pos_embed(draw(rows), draw(widths(VIT_WIDTHS)), draw(dtypes), draw(seeds),
                               draw(st.sampled_from((0.1, 1.0, 10.0))),
                               table_rows=draw(st.sampled_from((1, 5, POS_TABLE_ROWS))))


@st.composite
def qkv_bias_rope_cases(draw) -> Case:
    return build_qkv_bias_rope(draw(rows), draw(st.integers(1, 16)), draw(st.sampled_from(HEAD_DIMS)),
                               draw(dtypes), draw(seeds), draw(st.sampled_from((0.1, 1.0, 10.0))),
                               with_bias=draw(st.sampled_from((True, True, False))))


CASES = {
    "layer_norm": layer_norm_cases,
    "add_bias_layer_norm": add_bias_layer_norm_cases,
    "bias_gelu": bias_gelu_cases,
    "add_pos_embed": add_pos_embed_cases,
    "qkv_bias_rope": qkv_bias_rope_cases,
}
