"""Vision QKV bias + 2D RoPE (NVRTC, kernels/cuda/rope.cu), signature of reference.qkv_bias_rope.

Writes q, k, v as contiguous [N, H, hd]: the layout the attention kernel reads.
"""

from __future__ import annotations

import torch

from .runtime.checks import check_cuda, check_input, check_out, check_same_dtype
from .runtime.dispatch import CTYPES, NvrtcSource, cbool, ceil_div, split_row
from .runtime.nvrtc import i32

__all__ = ["qkv_bias_rope"]

HEAD_DIMS = (64, 72, 80, 128)
# (VP, VV): elements per pair access (must divide hd/2) and per v access (must divide hd); (1, 1) when a
# pointer is not 16-byte aligned. For 16-bit types hd=72 has hd/2 = 36, so VP is 4 there.
_VARIANTS = {torch.float32: ((4, 4), (1, 1)), torch.float16: ((8, 8), (4, 8), (1, 1)),
             torch.bfloat16: ((8, 8), (4, 8), (1, 1))}
_ROWS_PER_THREAD = 4  # ROWS in the kernel


def _expr(dtype, vp: int, vv: int, has_bias: bool) -> str:
    return f"qkv_bias_rope_kernel<{CTYPES[dtype]}, {vp}, {vv}, {cbool(has_bias)}>"


SOURCE = NvrtcSource("rope.cu", tuple(
    _expr(dt, vp, vv, b) for dt, vs in _VARIANTS.items() for vp, vv in vs for b in (True, False)))


def qkv_bias_rope(qkv: torch.Tensor, bias: torch.Tensor | None, cos: torch.Tensor, sin: torch.Tensor,
                  num_heads: int, *, out: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None):
    """qkv [N, 3*H*hd] (+ bias [3*H*hd] or None) -> (q, k, v) each [N, H, hd]; NeoX rotary on q and k with
    cos, sin fp32 [N, hd/2]; hd in (64, 72, 80, 128)."""
    check_input("qkv", qkv, ndim=2)
    if isinstance(num_heads, bool) or not isinstance(num_heads, int) or num_heads < 1:
        raise ValueError(f"num_heads must be a positive int, got {num_heads!r}")
    n, width = qkv.shape
    if width % (3 * num_heads):
        raise ValueError(f"qkv width {width} is not 3 * num_heads ({num_heads}) * head_dim")
    hd = width // (3 * num_heads)
    if hd not in HEAD_DIMS:
        raise ValueError(f"head_dim {hd} (= qkv width {width} / (3 * {num_heads} heads)) is not supported; "
                         f"kernels are built for {HEAD_DIMS}")
    if bias is not None:
        check_input("bias", bias, shape=(width,))
    check_input("cos", cos, shape=(n, hd // 2), dtypes=(torch.float32,))
    check_input("sin", sin, shape=(n, hd // 2), dtypes=(torch.float32,))
    check_same_dtype(qkv.dtype, bias=bias)
    shape = (n, num_heads, hd)
    if out is None:
        q, k, v = (torch.empty(shape, dtype=qkv.dtype, device=qkv.device) for _ in range(3))
    else:
        if not isinstance(out, (tuple, list)) or len(out) != 3:
            raise ValueError("out must be a triple (q, k, v)")
        q, k, v = (check_out(f"out[{i}]", t, shape, qkv.dtype) for i, t in enumerate(out))
    device = check_cuda(qkv=qkv, bias=bias, cos=cos, sin=sin, q=q, k=k, v=v)
    if n == 0:
        return q, k, v
    aligned = all(t.data_ptr() % 16 == 0 for t in (qkv, bias, cos, sin, q, k, v) if t is not None)
    vp, vv = next(((vp, vv) for vp, vv in _VARIANTS[qkv.dtype]
                   if (vp, vv) == (1, 1) or (aligned and (hd // 2) % vp == 0 and hd % vv == 0)))
    items = 2 * num_heads * (hd // 2) // vp + num_heads * hd // vv
    ctas, block = split_row(items)
    grid = (ctas, min(ceil_div(n, _ROWS_PER_THREAD), 65535), 1)
    SOURCE.launch(device, _expr(qkv.dtype, vp, vv, bias is not None), grid, (block, 1, 1),
                  qkv.data_ptr(), 0 if bias is None else bias.data_ptr(), cos.data_ptr(), sin.data_ptr(),
                  q.data_ptr(), k.data_ptr(), v.data_ptr(), i32(n), i32(num_heads), i32(hd))
    return q, k, v
