"""Argument checks for the kernel wrappers, run before anything is compiled or launched.

They reuse reference/_checks.py and add what a kernel needs on top: a dtype the kernels are built for,
a contiguous layout, and every tensor on one CUDA device (a CPU tensor handed to a GPU kernel is an
error, never a silent copy). Wrappers check structure first and devices last, so each mistake gets
its own message even on a CPU-only machine. Every failure is a ValueError (TypeError for a non-tensor)
that names the argument.
"""

from __future__ import annotations

import torch

from reference._checks import check_tensor

KERNEL_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def check_input(name: str, t, *, ndim: int | None = None, shape: tuple | None = None,
                dtypes: tuple = KERNEL_DTYPES) -> torch.Tensor:
    """Rank (ndim) or exact shape, dtype, and a contiguous layout."""
    # the common case cheaply (this runs on every launch); check_tensor words the errors
    if not (isinstance(t, torch.Tensor) and t.dtype in dtypes
            and (t.shape == shape if shape is not None else ndim is None or t.dim() == ndim)):
        check_tensor(name, t, ndim=ndim, shape=shape, dtypes=dtypes)
    if not t.is_contiguous():
        raise ValueError(f"{name} must be contiguous, got strides {t.stride()} for shape {tuple(t.shape)}")
    return t


def check_same_dtype(dtype: torch.dtype, **tensors) -> None:
    """Every given tensor (None skipped) has `dtype` (the activations' dtype)."""
    for name, t in tensors.items():
        if t is not None and t.dtype != dtype:
            raise ValueError(f"{name} must have the input dtype {dtype}, got {t.dtype}")


def check_cuda(**tensors) -> int:
    """Every given tensor (None skipped) is on one CUDA device; returns that device's index."""
    dev = None
    for name, t in tensors.items():
        if t is None:
            continue
        if not t.is_cuda:
            raise ValueError(f"{name} must be on a CUDA device, got {t.device} (kernels never copy inputs)")
        if dev is None:
            dev = t.get_device()
        elif t.get_device() != dev:
            raise ValueError(f"{name} is on {t.device} but the other inputs are on cuda:{dev}")
    return dev


def check_out(name: str, out, shape: tuple, dtype: torch.dtype) -> torch.Tensor:
    """An `out=` tensor: exactly the result's shape and dtype, contiguous (its device is checked with the rest)."""
    check_input(name, out, shape=shape, dtypes=(dtype,))
    return out


def check_attention_scalars(causal, scale, d: int, max_seqlen) -> float:
    """causal a bool, scale a positive finite number (None -> 1/sqrt(d)), max_seqlen a non-negative int or
    None; returns the scale as a float. Shared by every attention wrapper."""
    import math

    if not isinstance(causal, bool):
        raise TypeError(f"causal must be a bool, got {type(causal).__name__}")
    if scale is None:
        scale = 1.0 / math.sqrt(d)
    elif isinstance(scale, bool) or not isinstance(scale, (int, float)):
        raise TypeError(f"scale must be a float or None, got {type(scale).__name__}")
    scale = float(scale)
    if not (math.isfinite(scale) and scale > 0):
        raise ValueError(f"scale must be a positive finite number, got {scale}")
    if max_seqlen is not None and (isinstance(max_seqlen, bool) or not isinstance(max_seqlen, int)
                                   or max_seqlen < 0):
        raise ValueError(f"max_seqlen must be a non-negative int or None, got {max_seqlen!r}")
    return scale


def check_aligned16(**tensors) -> None:
    """Every given tensor (None skipped) starts on a 16-byte boundary (kernels that move 16-byte vectors)."""
    for name, t in tensors.items():
        if t is not None and t.data_ptr() % 16:
            raise ValueError(f"{name} must be 16-byte aligned (got a view at storage offset {t.storage_offset()})")


def check_rows(name: str, t: torch.Tensor) -> tuple[int, int, int]:
    """(rows, cols, row stride) of t read as a [rows, cols] matrix with unit column stride, without a copy: a
    contiguous tensor, or a view such as a half of a fused GEMM output or every other 256-block of q_proj's
    output. ValueError unless t's last dim has stride 1 and its leading dims collapse to one row stride."""
    cols = t.shape[-1] if t.dim() else 1
    if t.numel() == 0:
        return 0, cols, cols
    if cols > 1 and t.stride(-1) != 1:
        raise ValueError(f"{name} must have a last-dim stride of 1, got strides {t.stride()} for shape "
                         f"{tuple(t.shape)}; pass {name}.contiguous()")
    try:
        m = t.view(-1, cols)
    except RuntimeError:
        raise ValueError(f"{name}'s leading dims must collapse to one row stride, got strides {t.stride()} for "
                         f"shape {tuple(t.shape)}; pass {name}.contiguous()") from None
    return m.shape[0], cols, (m.stride(0) if m.shape[0] > 1 else cols)
