"""Pointwise activations (NVRTC, kernels/cuda/activations.cu) with the signatures and meaning of
reference.activations: bias + GELU (ViT), SwiGLU (silu_mul, silu_mul_fused) and the attention output gate;
bias_gelu_numba is bias_gelu's Numba twin (kernels/numba/activations.py)."""

from __future__ import annotations

import math

import torch

from reference._checks import check_tensor

from .runtime.checks import KERNEL_DTYPES, check_cuda, check_input, check_out, check_rows, check_same_dtype
from .runtime.dispatch import CTYPES, NvrtcSource, cbool, ceil_div, split_row, vec_width
from .runtime.nvrtc import i32, i64

__all__ = ["bias_gelu", "silu_mul", "silu_mul_fused", "sigmoid_gate", "bias_gelu_numba"]

_VECS = {torch.float32: (4, 2, 1), torch.float16: (8, 4, 2, 1), torch.bfloat16: (8, 4, 2, 1)}
_APPROX = {"tanh": True, "none": False}
_ROWS_PER_THREAD = 4  # ROWS in the kernel


def _expr(dtype, vec: int, tanh: bool) -> str:
    return f"activations::bias_gelu_kernel<{CTYPES[dtype]}, {vec}, {cbool(tanh)}>"


# gate_kernel<T, VEC, OP>: OP numbers match GateOp in activations.cu. 16-byte vectors or scalars (odd widths,
# odd row strides, misaligned views).
_GATE_OPS = {"silu_mul": 0, "sigmoid_gate": 1}
_GATE_VECS = {dt: (v[0], 1) for dt, v in _VECS.items()}
_GATE_THREADS = 256   # per CTA (blockDim.x column vectors x blockDim.y row groups)
_GATE_ROWS = (1, 4)   # ROWS in the kernel: rows a thread handles per step (4: tools/norms_gpu.py --ab only)


def _gate_rows(rows: int, nvec: int) -> int:
    """Rows a thread handles: 1 at every size. On the H200 one row a thread ran the prefill sizes at 4.2-4.4 TB/s
    (4 rows: 2.9-3.2 TB/s) and the decode sizes in 1.5-1.9 us (4 rows: ~4.2 us at 8 tokens): short per-thread
    chains, and the grid alone keeps enough loads in flight (tools/norms_gpu.py --ab)."""
    return 1


def _gate_expr(dtype, vec: int, op: int, rows: int) -> str:
    return f"activations::gate_kernel<{CTYPES[dtype]}, {vec}, {op}, {rows}>"


SOURCE = NvrtcSource("activations.cu", tuple(
    [_expr(dt, v, t) for dt, vecs in _VECS.items() for v in vecs for t in (True, False)]
    + [_gate_expr(dt, v, op, r) for dt, vecs in _GATE_VECS.items() for v in vecs for op in _GATE_OPS.values()
       for r in _GATE_ROWS]))


def bias_gelu(x: torch.Tensor, bias: torch.Tensor | None, approximate: str = "tanh", *,
              out: torch.Tensor | None = None) -> torch.Tensor:
    """gelu(x + bias): x [N, I], bias [I] or None; approximate "tanh" (gelu_pytorch_tanh) or "none" (erf)."""
    check_input("x", x, ndim=2)
    cols = x.shape[1]
    if bias is not None:
        check_input("bias", bias, shape=(cols,))
    check_same_dtype(x.dtype, bias=bias)
    if approximate not in _APPROX:
        raise ValueError(f"approximate must be 'tanh' or 'none', got {approximate!r}")
    y = torch.empty_like(x) if out is None else check_out("out", out, tuple(x.shape), x.dtype)
    device = check_cuda(x=x, bias=bias, out=out)
    if y.numel() == 0:
        return y
    rows = x.shape[0]
    vec = vec_width(x.dtype, cols, x, bias, y, candidates=_VECS[x.dtype])
    ctas, block = split_row(cols // vec)
    grid = (ctas, min(ceil_div(rows, _ROWS_PER_THREAD), 65535), 1)
    SOURCE.launch(device, _expr(x.dtype, vec, _APPROX[approximate]), grid, (block, 1, 1),
                  x.data_ptr(), 0 if bias is None else bias.data_ptr(), y.data_ptr(), i32(rows), i32(cols))
    return y


# ------------------------------------------------------------------------------------------ two-input gates
def _gate_launch(op: str, a: torch.Tensor, b: torch.Tensor, y: torch.Tensor, device: int) -> None:
    rows, cols, sa = check_rows("gate" if op == "silu_mul" else "o", a)
    _, _, sb = check_rows("up" if op == "silu_mul" else "gate", b)
    if rows == 0:
        return
    vec = vec_width(a.dtype, math.gcd(cols, sa, sb), a, b, y, candidates=_GATE_VECS[a.dtype])
    nvec = cols // vec
    per = _gate_rows(rows, nvec)
    ctas_x, tx = split_row(nvec, _GATE_THREADS)
    ty = max(1, min(_GATE_THREADS // tx, ceil_div(rows, per)))
    grid = (ctas_x, min(ceil_div(rows, ty * per), 65535), 1)
    SOURCE.launch(device, _gate_expr(a.dtype, vec, _GATE_OPS[op], per), grid, (tx, ty, 1),
                  a.data_ptr(), b.data_ptr(), y.data_ptr(), i32(rows), i32(cols), i64(sa), i64(sb),
                  pdl=True)  # a programmatic launch (activations.cu's gate_kernel)


def _check_pair(a_name: str, a, b_name: str, b) -> None:
    """Two inputs of one shape and dtype; strided views allowed (checked by _rows at launch)."""
    check_tensor(a_name, a, dtypes=KERNEL_DTYPES)
    check_tensor(b_name, b, shape=tuple(a.shape), dtypes=KERNEL_DTYPES)
    check_same_dtype(a.dtype, **{b_name: b})
    check_rows(a_name, a)
    check_rows(b_name, b)


def silu_mul(gate: torch.Tensor, up: torch.Tensor, *, out: torch.Tensor | None = None) -> torch.Tensor:
    """SwiGLU silu(gate) * up. gate, up: [..., I], one shape and dtype; each contiguous or a view whose last dim
    has stride 1 and whose leading dims collapse to one row stride (e.g. the halves of a fused gate/up output).
    Returns a contiguous [..., I] in gate.dtype."""
    _check_pair("gate", gate, "up", up)
    y = torch.empty(gate.shape, dtype=gate.dtype, device=gate.device) if out is None else \
        check_out("out", out, tuple(gate.shape), gate.dtype)
    device = check_cuda(gate=gate, up=up, out=out)
    _gate_launch("silu_mul", gate, up, y, device)
    return y


def silu_mul_fused(gate_up: torch.Tensor, *, out: torch.Tensor | None = None) -> torch.Tensor:
    """SwiGLU on a fused gate/up GEMM output: gate_up [..., 2I] = [gate | up] -> silu(gate) * up [..., I].
    Reads the two halves in place (no split copy)."""
    check_tensor("gate_up", gate_up, dtypes=KERNEL_DTYPES)
    if gate_up.dim() == 0 or gate_up.shape[-1] % 2:
        raise ValueError(f"gate_up must have an even last dim ([..., 2I] = [gate | up]), got shape "
                         f"{tuple(gate_up.shape)}")
    i = gate_up.shape[-1] // 2
    gate, up = gate_up[..., :i], gate_up[..., i:]
    check_rows("gate_up", gate_up)
    y = torch.empty(gate.shape, dtype=gate.dtype, device=gate.device) if out is None else \
        check_out("out", out, tuple(gate.shape), gate.dtype)
    device = check_cuda(gate_up=gate_up, out=out)
    _gate_launch("silu_mul", gate, up, y, device)
    return y


def sigmoid_gate(o: torch.Tensor, gate: torch.Tensor, *, out: torch.Tensor | None = None) -> torch.Tensor:
    """Attention output gate o * sigmoid(gate). o, gate: [..., d] (e.g. [T, Hq, 256]), one shape and dtype; gate
    may be the strided view q_proj(x).view(T, Hq, 2 d)[..., d:] (row stride 2 d), o likewise any view with unit
    last-dim stride. Returns a contiguous tensor of o's shape and dtype."""
    _check_pair("o", o, "gate", gate)
    y = torch.empty(o.shape, dtype=o.dtype, device=o.device) if out is None else \
        check_out("out", out, tuple(o.shape), o.dtype)
    device = check_cuda(o=o, gate=gate, out=out)
    _gate_launch("sigmoid_gate", o, gate, y, device)
    return y


def bias_gelu_numba(x: torch.Tensor, bias: torch.Tensor | None, approximate: str = "tanh", *,
                    out: torch.Tensor | None = None) -> torch.Tensor:
    """bias_gelu's Numba twin (registry variant "numba", kernel in kernels/numba/activations.py): gelu(x + bias),
    x [N, I] (fp32/fp16/bf16), bias [I] or None (written into `out` when given: same shape and dtype as x,
    contiguous). CUDA tensors on a GPU, CPU tensors in the Numba simulator."""
    import numpy as np

    from .numba import elementwise_launch, io_key
    from .numba.activations import BIAS_GELU
    from .runtime.numba_interop import check_kernel_device, launch

    check_input("x", x, ndim=2)
    if bias is not None:
        check_input("bias", bias, shape=(x.shape[1],))
    check_same_dtype(x.dtype, bias=bias)
    if approximate not in ("tanh", "none"):
        raise ValueError(f'approximate must be "tanh" or "none", got {approximate!r}')
    y = torch.empty_like(x) if out is None else check_out("out", out, tuple(x.shape), x.dtype)
    check_kernel_device(x=x, bias=bias, out=out)
    n = x.numel()
    if n >= 2**31:
        raise ValueError(f"x has {n} elements; this kernel indexes with int32")
    launch(BIAS_GELU[io_key(x.dtype)], *elementwise_launch(n), x, x if bias is None else bias, y,
           np.int32(n), np.int32(x.shape[1]), np.int32(bias is not None), np.int32(approximate == "tanh"))
    return y
