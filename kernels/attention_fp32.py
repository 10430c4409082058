"""Packed varlen attention in plain fp32 (kernels/cuda/attention_fp32.cu), twin of `reference.attention`.

    out = attention_fp32(q[T,Hq,d], k[T,Hkv,d], v[T,Hkv,d], cu_seqlens, causal)      # [T,Hq,d] fp32
    out, lse = attention_fp32(..., return_lse=True)                                  # lse [T,Hq] fp32

The exactness path for fp32 models: CUDA-core fp32 fma (tensor cores would round q, k, p and v to tf32),
online softmax with expf/logf. Same meaning and arguments as `kernels.attention` (the bf16/fp16 tensor-core
kernel): each segment attends only within itself, causal or not, Hq a multiple of Hkv (GQA),
d in SUPPORTED_HEAD_DIMS.

Host synchronisation: the grid is (ceil(max_seqlen / 32), Hq, segments) and CTAs past their segment's end
exit, so with `max_seqlen` given (a host int >= the longest segment) and `validate=False` nothing is read
back from the device. `validate=True` (the default) copies cu_seqlens to the host once to check it (starts
at 0, never decreases, ends at T) and that `max_seqlen`, if given, covers the longest segment; without
`max_seqlen` the longest segment is read from that copy (one sync even with validate=False).
"""

from __future__ import annotations


import torch

from reference._checks import check_cu_seqlens, check_divides, check_tensor

from .runtime.checks import check_aligned16, check_attention_scalars, check_cuda, check_input, check_out
from .runtime.dispatch import NvrtcSource, cbool, ceil_div
from .runtime.nvrtc import f32, i32

__all__ = ["attention_fp32", "SUPPORTED_HEAD_DIMS"]

SUPPORTED_HEAD_DIMS = (64, 72, 80, 128, 256)  # those of kernels.attention; each is one template instantiation

# Tile constants of the .cu (namespace attn32): NW warps of R query rows per CTA, BN keys per step.
_NW, _R, _BN = 4, 8, 32
BLOCK_ROWS = _NW * _R  # query rows per CTA
_MAX_GRID_YZ = 65535   # CUDA's limit on gridDim.y (heads) and gridDim.z (segments)


def _expr(d: int, causal: bool) -> str:
    return f"attn32::attn_fp32<{d}, {cbool(causal)}>"


SOURCE = NvrtcSource("attention_fp32.cu", tuple(_expr(d, c) for d in SUPPORTED_HEAD_DIMS for c in (False, True)))


def smem_bytes(d: int) -> int:
    """Dynamic shared memory of one CTA; mirrors attn32::Smem<D>::FLOATS: Q [BM][d], K [BN][d+4], V [BN][d],
    P [NW][BN][R+4], fp32."""
    return 4 * (BLOCK_ROWS * d + _BN * (d + 4) + _BN * d + _NW * _BN * (_R + 4))


def _validate(q, k, v, cu_seqlens, causal, scale, out, max_seqlen, validate) -> tuple[float, int | None]:
    """Checks every argument (structure first, CUDA devices last); returns (scale, max_seqlen or None)."""
    fp32 = (torch.float32,)
    for name, t in (("q", q), ("k", k), ("v", v)):
        if isinstance(t, torch.Tensor) and t.dim() == 3 and t.dtype in (torch.bfloat16, torch.float16):
            raise ValueError(f"{name} is {t.dtype}: attention_fp32 takes fp32 only (use kernels.attention)")
        check_input(name, t, ndim=3, dtypes=fp32)
    T, Hq, d = q.shape
    check_input("k", k, shape=(T, k.shape[1], d), dtypes=fp32)
    check_input("v", v, shape=tuple(k.shape), dtypes=fp32)
    if d not in SUPPORTED_HEAD_DIMS:
        raise ValueError(f"head dim d={d} is not supported (supported: {SUPPORTED_HEAD_DIMS})")
    check_divides("Hkv (k heads)", k.shape[1], "Hq (q heads)", Hq)
    if Hq > _MAX_GRID_YZ:
        raise ValueError(f"Hq={Hq} exceeds {_MAX_GRID_YZ} (grid y)")
    scale = check_attention_scalars(causal, scale, d, max_seqlen)
    check_tensor("cu_seqlens", cu_seqlens, ndim=1, dtypes=(torch.int32, torch.int64))
    nseg = cu_seqlens.numel() - 1
    if nseg < 1:
        raise ValueError(f"cu_seqlens must have at least 2 entries (one segment), got {cu_seqlens.numel()}")
    if nseg > _MAX_GRID_YZ:
        raise ValueError(f"cu_seqlens has {nseg} segments, more than {_MAX_GRID_YZ} (grid z)")
    if out is not None:
        check_out("out", out, (T, Hq, d), torch.float32)
    if validate or max_seqlen is None:
        cu = cu_seqlens.detach().to("cpu", torch.int64)  # the one host sync
        if validate:
            check_cu_seqlens(cu, T)
        longest = int((cu[1:] - cu[:-1]).max())
        if max_seqlen is None:
            max_seqlen = longest
        elif max_seqlen < longest:
            raise ValueError(f"max_seqlen={max_seqlen} is shorter than the longest segment ({longest})")
    check_cuda(q=q, k=k, v=v, cu_seqlens=cu_seqlens, out=out)
    check_aligned16(q=q, k=k, v=v, out=out)  # float4 loads and stores
    return scale, max_seqlen


def attention_fp32(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cu_seqlens: torch.Tensor, causal: bool,
                   scale: float | None = None, return_lse: bool = False, out: torch.Tensor | None = None,
                   max_seqlen: int | None = None, validate: bool = True):
    """Varlen fp32 attention over packed segments; see the module docstring.

    q [T,Hq,d], k/v [T,Hkv,d] fp32, contiguous, on one CUDA device; cu_seqlens int32 [n+1] (int64 is
    converted on the device); scale defaults to 1/sqrt(d). Returns out [T,Hq,d] fp32 (written into `out`
    when given), and lse [T,Hq] fp32 (natural log of the softmax denominator of the scaled scores) when
    return_lse.
    """
    scale, max_seqlen = _validate(q, k, v, cu_seqlens, causal, scale, out, max_seqlen, validate)
    T, Hq, d = q.shape
    if out is None:
        out = torch.empty_like(q)
    lse = torch.empty((T, Hq), device=q.device, dtype=torch.float32) if return_lse else None
    tiles = ceil_div(max_seqlen, BLOCK_ROWS)
    if T > 0 and tiles > 0:
        if cu_seqlens.dtype != torch.int32:
            cu_seqlens = cu_seqlens.to(torch.int32)
        SOURCE.launch(q.get_device(), _expr(d, causal), (tiles, Hq, cu_seqlens.numel() - 1), (32 * _NW, 1, 1),
                      q.data_ptr(), k.data_ptr(), v.data_ptr(), out.data_ptr(), 0 if lse is None else lse.data_ptr(),
                      cu_seqlens.data_ptr(), i32(Hq), i32(k.shape[1]), f32(scale), shared_mem=smem_bytes(d))
    return (out, lse) if return_lse else out
