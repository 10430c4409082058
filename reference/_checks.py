"""Argument checks shared by the reference ops (and reused by the kernel wrappers).

Every failure raises ValueError (TypeError for a wrong Python type) with a message that names the argument.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch

FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)


def check_tensor(name: str, t, *, ndim: int | None = None, shape: Iterable | None = None,
                 dtypes: Iterable[torch.dtype] | None = None) -> torch.Tensor:
    """Check that `t` is a tensor with the given rank, shape (None = any size on that axis) and dtype."""
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if ndim is not None and t.dim() != ndim:
        raise ValueError(f"{name} must have {ndim} dimensions, got shape {tuple(t.shape)}")
    if shape is not None:
        shape = tuple(shape)
        if t.dim() != len(shape) or any(s is not None and s != d for s, d in zip(shape, t.shape)):
            want = tuple("*" if s is None else s for s in shape)
            raise ValueError(f"{name} must have shape {want}, got {tuple(t.shape)}")
    if dtypes is not None:
        dtypes = tuple(dtypes)
        if t.dtype not in dtypes:
            raise ValueError(f"{name} must have dtype in {[str(d) for d in dtypes]}, got {t.dtype}")
    return t


def check_float(name: str, t, **kw) -> torch.Tensor:
    return check_tensor(name, t, dtypes=FLOAT_DTYPES, **kw)


def check_same_device(**tensors) -> None:
    devs = {n: t.device for n, t in tensors.items() if isinstance(t, torch.Tensor)}
    if len(set(devs.values())) > 1:
        raise ValueError(f"tensors are on different devices: {', '.join(f'{n}={d}' for n, d in devs.items())}")


def check_cu_seqlens(cu_seqlens, total: int, name: str = "cu_seqlens") -> torch.Tensor:
    """cu_seqlens: int32/int64 [n+1], starts at 0, non-decreasing, ends at `total`."""
    check_tensor(name, cu_seqlens, ndim=1, dtypes=(torch.int32, torch.int64))
    if cu_seqlens.numel() < 2:
        raise ValueError(f"{name} must have at least 2 entries (one segment), got {cu_seqlens.numel()}")
    cs = cu_seqlens.detach().to("cpu", torch.int64)
    if int(cs[0]) != 0:
        raise ValueError(f"{name} must start at 0, got {int(cs[0])}")
    if bool((cs[1:] < cs[:-1]).any()):
        raise ValueError(f"{name} must be non-decreasing, got {cs.tolist()}")
    if int(cs[-1]) != total:
        raise ValueError(f"{name} must end at the total token count {total}, got {int(cs[-1])}")
    return cu_seqlens


def check_grid_thw(grid_thw, name: str = "grid_thw", merge: int = 2) -> torch.Tensor:
    """grid_thw: integer [n, 3] of (t, h, w) patch grids, positive, h and w multiples of `merge`."""
    check_tensor(name, grid_thw, ndim=2, dtypes=(torch.int32, torch.int64))
    if grid_thw.shape[1] != 3:
        raise ValueError(f"{name} must have shape (n, 3), got {tuple(grid_thw.shape)}")
    g = grid_thw.detach().cpu()
    if bool((g <= 0).any()):
        raise ValueError(f"{name} entries must be positive, got {g.tolist()}")
    if bool(((g[:, 1:] % merge) != 0).any()):
        raise ValueError(f"{name} h and w must be multiples of merge={merge}, got {g.tolist()}")
    return grid_thw


def check_divides(name_a: str, a: int, name_b: str, b: int) -> None:
    """Raise unless a divides b (e.g. kv heads divide query heads)."""
    if a <= 0 or b % a != 0:
        raise ValueError(f"{name_b}={b} must be a positive multiple of {name_a}={a}")
