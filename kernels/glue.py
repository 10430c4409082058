"""Multimodal glue on the GPU (Numba kernel): same signature and exact result as reference.scatter_image_embeds.

It runs once per prompt and reads one number back to the host: it checks that the number of placeholders
equals the number of image rows. Tensors are CUDA tensors on a GPU run (a CPU tensor is an error), CPU tensors
in the Numba simulator.
"""

from __future__ import annotations

import ctypes

import numpy as np
import torch

from .runtime.checks import check_input, check_out
from .runtime.dispatch import CTYPES, NvrtcSource

__all__ = ["scatter_image_embeds"]

# a copy moves bits: each float dtype travels as the integer type of its width
_BITS = {torch.float32: torch.int32, torch.float16: torch.int16, torch.bfloat16: torch.int16,
         torch.float64: torch.int64}


def scatter_image_embeds(token_embeds: torch.Tensor, image_embeds: torch.Tensor, is_image: torch.Tensor, *,
                         out: torch.Tensor | None = None, validate: bool = True) -> torch.Tensor:
    """Replace the placeholder rows, in order, by the image rows (see reference.scatter_image_embeds).

    token_embeds: [S, H]; image_embeds: [M, H], same dtype; is_image: bool [S] with exactly M True entries.
    Returns a new [S, H] (or `out`, same shape and dtype, not overlapping the inputs); a bit-exact copy.
    validate=False skips the one host read (the count of True entries): for a caller that has counted them on
    the host, so that the copy queues behind the vision tower without waiting for it.
    """
    from .numba import elementwise_launch
    from .numba.glue import scatter_rows_kernel
    from .runtime.numba_interop import check_kernel_device, launch

    check_input("token_embeds", token_embeds, ndim=2, dtypes=tuple(_BITS))
    s, h = token_embeds.shape
    check_input("image_embeds", image_embeds, ndim=2, dtypes=(token_embeds.dtype,))
    if image_embeds.shape[1] != h:
        raise ValueError(f"image_embeds must have shape (M, {h}) to match token_embeds, got "
                         f"{tuple(image_embeds.shape)}")
    check_input("is_image", is_image, shape=(s,), dtypes=(torch.bool,))
    if out is not None:
        check_out("out", out, (s, h), token_embeds.dtype)
    check_kernel_device(token_embeds=token_embeds, image_embeds=image_embeds, is_image=is_image, out=out)
    ordinal = torch.cumsum(is_image, 0)
    count = (int(ordinal[-1]) if s else 0) if validate else image_embeds.shape[0]  # the one host read
    if count != image_embeds.shape[0]:
        raise ValueError(f"is_image marks {count} positions but image_embeds has {image_embeds.shape[0]} rows")
    out = torch.empty_like(token_embeds) if out is None else out
    bits = _BITS[token_embeds.dtype]
    launch(scatter_rows_kernel, *elementwise_launch(out.numel()), token_embeds.view(bits), image_embeds.view(bits),
           is_image, ordinal, out.view(bits), np.int64(out.numel()), np.int64(h))
    return out


# ------------------------------------------------------------------------------------------ decode-step glue (NVRTC)
_GLUE = NvrtcSource("glue.cu", tuple(
    [f"glue::decode_prologue<{CTYPES[dt]}>" for dt in (torch.bfloat16, torch.float16, torch.float32)]
    + [f"glue::greedy_select<{CTYPES[dt]}>" for dt in (torch.bfloat16, torch.float16, torch.float32)]
    + [f"glue::split_columns<{CTYPES[dt]}, {v}>" for dt in (torch.bfloat16, torch.float16, torch.float32)
       for v in (16 // dt.itemsize, 1)]))


class _Parts(ctypes.Structure):
    """glue.cu's Parts, passed by value."""
    _fields_ = [("out", ctypes.c_uint64 * 4), ("start", ctypes.c_int * 4), ("width", ctypes.c_int * 4)]


def split_columns(y: torch.Tensor, starts: tuple[int, ...], widths: tuple[int, ...]) -> tuple[torch.Tensor, ...]:
    """Columns [starts[j], starts[j] + widths[j]) of y [T, N] (unit column stride) as contiguous [T, widths[j]]
    tensors, up to 4 parts, in one kernel (a fused projection's parts after cuBLAS, which writes y whole: one launch
    instead of one copy per part). Equal to y[:, s:s + w].contiguous() for each part. No host read."""
    from .runtime.checks import check_cuda
    from .runtime.nvrtc import i32, i64

    if not isinstance(y, torch.Tensor) or y.dim() != 2 or y.stride(1) != 1 or y.dtype not in CTYPES:
        raise ValueError(f"y must be a [T, N] float tensor with unit column stride, got "
                         f"{tuple(y.shape) if isinstance(y, torch.Tensor) else type(y).__name__}")
    starts, widths = tuple(int(s) for s in starts), tuple(int(w) for w in widths)
    if not 1 <= len(starts) == len(widths) <= 4 or any(w < 0 or s < 0 or s + w > y.shape[1]
                                                       for s, w in zip(starts, widths)):
        raise ValueError(f"starts and widths must be 1 to 4 column ranges inside y's {y.shape[1]} columns, got "
                         f"{starts}, {widths}")
    device = check_cuda(y=y)
    T = y.shape[0]
    parts = tuple(torch.empty(T, w, dtype=y.dtype, device=y.device) for w in widths)
    total = sum(widths)
    if T == 0 or total == 0:
        return parts
    vec = 16 // y.element_size()
    if any(v % vec for v in (*starts, *widths, y.stride(0))) or y.data_ptr() % 16:
        vec = 1
    spec = _Parts()
    for j, (s, w, t) in enumerate(zip(starts, widths, parts)):
        spec.out[j], spec.start[j], spec.width[j] = t.data_ptr(), s, w
    row_vecs = total // vec
    _GLUE.launch(device, f"glue::split_columns<{CTYPES[y.dtype]}, {vec}>", (-(-row_vecs // 128), T, 1),
                 (128, 1, 1), y.data_ptr(), i64(y.stride(0)), spec, i32(row_vecs), pdl=True)
    return parts


def _glue_source():
    return _GLUE


_TICKETS: dict = {}  # (device, rows) -> int32 zeros: greedy_select's per-row tickets (each call leaves them 0)
# logits per CTA of greedy_select: 248320 -> 122 CTAs a row (8192 gave 31 CTAs a row, 8.1 us on an H200 for
# 0.5 MB at batch 1: benchmarks/results/lm_decode_profile-H200-2026-12-02.json)
_SELECT_CHUNK = 2048


def decode_prologue(tokens: torch.Tensor, embed: torch.Tensor, lengths: torch.Tensor, rope_delta: torch.Tensor,
                    cos: torch.Tensor, sin: torch.Tensor):
    """The inputs of one decode step in one kernel: (embed[tokens] [B, H], cos[p] and sin[p] [B, R] fp32,
    lengths + 1 int32 [B]) with p = clamp(lengths + rope_delta, 0, capacity - 1), capacity = cos.shape[0].
    tokens int64 [B] (ids outside [0, V) read row 0: no host check, graph-capturable); embed [V, H] with
    H % (16 bytes) == 0; lengths int32 [B]; rope_delta int64 [B]; cos, sin fp32 [capacity, R] contiguous."""
    from .runtime.checks import check_cuda
    from .runtime.nvrtc import i32

    check_input("tokens", tokens, ndim=1, dtypes=(torch.int64,))
    B = tokens.shape[0]
    check_input("embed", embed, ndim=2)
    V, H = embed.shape
    if (H * embed.element_size()) % 16 or embed.data_ptr() % 16:
        raise ValueError(f"embed rows must be whole 16-byte vectors (16-byte aligned), got width {H} of "
                         f"{embed.dtype}")
    check_input("lengths", lengths, shape=(B,), dtypes=(torch.int32,))
    check_input("rope_delta", rope_delta, shape=(B,), dtypes=(torch.int64,))
    check_input("cos", cos, ndim=2, dtypes=(torch.float32,))
    check_input("sin", sin, shape=tuple(cos.shape), dtypes=(torch.float32,))
    device = check_cuda(tokens=tokens, embed=embed, lengths=lengths, rope_delta=rope_delta, cos=cos, sin=sin)
    cap, R = cos.shape
    x = torch.empty(B, H, dtype=embed.dtype, device=embed.device)
    co = torch.empty(B, R, dtype=torch.float32, device=embed.device)
    so = torch.empty_like(co)
    attend = torch.empty(B, dtype=torch.int32, device=embed.device)
    if B:
        _glue_source().launch(device, f"glue::decode_prologue<{CTYPES[embed.dtype]}>", (B, 1, 1), (128, 1, 1),
                              tokens.data_ptr(), embed.data_ptr(), lengths.data_ptr(), rope_delta.data_ptr(),
                              cos.data_ptr(), sin.data_ptr(), x.data_ptr(), co.data_ptr(), so.data_ptr(),
                              attend.data_ptr(), i32(V), i32(H), i32(R), i32(cap), pdl=True)  # glue.cu: PDL
    return x, co, so, attend


def greedy_select(logits: torch.Tensor, done: torch.Tensor, eos: torch.Tensor, pad: torch.Tensor,
                  out: torch.Tensor) -> torch.Tensor:
    """Greedy token choice and the stop rule in one kernel: out = where(done, pad, argmax(logits, -1)); done |=
    out is one of eos (model.generate.select_tokens + stop_update). logits [B, V] (unit column stride); done bool
    [B] (updated in place); eos int64 [E]; pad int64 []; out int64 [B] (written). Graph-capturable."""
    from .runtime.checks import check_cuda
    from .runtime.nvrtc import i32, i64

    if not isinstance(logits, torch.Tensor) or logits.dim() != 2 or logits.stride(1) != 1 or \
            logits.dtype not in (torch.bfloat16, torch.float16, torch.float32):
        raise ValueError("logits must be a [B, V] float tensor with unit column stride")
    B, V = logits.shape
    check_input("done", done, shape=(B,), dtypes=(torch.bool,))
    check_input("eos", eos, ndim=1, dtypes=(torch.int64,))
    check_input("pad", pad, shape=(), dtypes=(torch.int64,))
    check_input("out", out, shape=(B,), dtypes=(torch.int64,))
    if V < 1:
        raise ValueError("logits must have at least one column")
    device = check_cuda(logits=logits, done=done, eos=eos, pad=pad, out=out)
    if B == 0:
        return out
    chunks = -(-V // _SELECT_CHUNK)
    key = (device, B)
    ticket = _TICKETS.get(key)
    if ticket is None:
        ticket = _TICKETS[key] = torch.zeros(B, dtype=torch.int32, device=logits.device)
    part_v = torch.empty(B, chunks, dtype=torch.float32, device=logits.device)
    part_i = torch.empty(B, chunks, dtype=torch.int32, device=logits.device)
    _glue_source().launch(device, f"glue::greedy_select<{CTYPES[logits.dtype]}>", (chunks, B, 1), (256, 1, 1),
                          logits.data_ptr(), i64(logits.stride(0)), i32(V), i32(_SELECT_CHUNK), part_v.data_ptr(),
                          part_i.data_ptr(), ticket.data_ptr(), done.data_ptr(), eos.data_ptr(), i32(eos.numel()),
                          pad.data_ptr(), out.data_ptr(), pdl=True)  # a programmatic launch (glue.cu)
    return out
