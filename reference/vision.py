"""Vision tower inputs: patch embedding, the interpolated position table, 2D RoPE tables and segment bounds.

Patch order. Rows of `pixel_values` (and every vision token after them) are in spatial-merge-block order, not
raster order: within one temporal slice of an (h, w) patch grid, token i is
    in_col = i % m, in_row = (i // m) % m, block_col = (i // m^2) % (w / m), block_row = i // (m^2 * w / m)
    row = block_row * m + in_row,  col = block_col * m + in_col          (m = merge = 2)
so every m*m consecutive tokens form one block for the merger. A video (t > 1) repeats the same (row, col)
sequence for each of its t slices; several images/videos are packed one after another.
"""

from __future__ import annotations

from itertools import accumulate

import torch

from ._checks import check_float, check_grid_thw, check_same_device, check_tensor
from .rope import inv_freq

__all__ = ["patch_embed", "vision_pos_taps", "add_pos_embed", "vision_rope_cos_sin", "vision_cu_seqlens"]


def _check_pos_int(name: str, v) -> int:
    if not isinstance(v, int) or isinstance(v, bool) or v <= 0:
        raise ValueError(f"{name} must be a positive int, got {v!r}")
    return v


def _check_grid(grid_thw, merge: int) -> list[list[int]]:
    """grid_thw as a list of [t, h, w]; at least one entry."""
    check_grid_thw(grid_thw, "grid_thw", _check_pos_int("merge", merge))
    if grid_thw.shape[0] == 0:
        raise ValueError("grid_thw must have at least one (t, h, w) row, got shape (0, 3)")
    return grid_thw.tolist()


def _check_hint(name: str, hint, actual: int) -> None:
    """The kernels take sizes as host ints to avoid reading grid_thw back from the device; the reference checks
    that such a hint is right (a wrong one is a clear error here, and undefined output in a kernel)."""
    if hint is not None and hint != actual:
        raise ValueError(f"{name}={hint!r} does not match grid_thw, which gives {actual}")


def _frame_coords(h: int, w: int, merge: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(row, col) int64 [h*w] of one temporal slice's patches, in merge-block order (module docstring)."""
    i = torch.arange(h * w)
    blocks_w = w // merge
    row = (i // (merge * merge * blocks_w)) * merge + (i // merge) % merge
    col = ((i // (merge * merge)) % blocks_w) * merge + i % merge
    return row, col


def patch_embed(pixel_values: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """Conv3d with stride == kernel, written as the GEMM it is.

    pixel_values: [N, C*T*P*P] (Qwen3.5: 3*2*16*16 = 1536), each row one patch flattened in (C, T, P, P) order.
    weight: [D, C, T, P, P] (the Conv3d weight); bias: [D] or None. Same dtype as pixel_values.
    Returns [N, D] = pixel_values @ weight.reshape(D, -1)^T + bias, fp32 math, in pixel_values.dtype.
    """
    check_float("pixel_values", pixel_values, ndim=2)
    check_tensor("weight", weight, ndim=5, dtypes=(pixel_values.dtype,))
    d = weight.shape[0]
    if pixel_values.shape[1] != weight[0].numel():
        raise ValueError(f"pixel_values rows must have C*T*P*P = {weight[0].numel()} values for weight "
                         f"{tuple(weight.shape)}, got shape {tuple(pixel_values.shape)}")
    if bias is not None:
        check_tensor("bias", bias, shape=(d,), dtypes=(pixel_values.dtype,))
    check_same_device(pixel_values=pixel_values, weight=weight, bias=bias)
    acc = torch.promote_types(pixel_values.dtype, torch.float32)
    out = pixel_values.to(acc) @ weight.reshape(d, -1).to(acc).T
    if bias is not None:
        out = out + bias.to(acc)
    return out.to(pixel_values.dtype)


def vision_pos_taps(grid_thw: torch.Tensor, side: int = 48, merge: int = 2, *,
                    num_patches: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Bilinear (align_corners=True) taps that resample the learned side x side position table to each grid.

    grid_thw: int [n, 3] of (t, h, w) pre-merge patch grids, h and w multiples of merge.
    For the patch at (row, col) of an h x w grid the source point is (row*(side-1)/(h-1), col*(side-1)/(w-1))
    (0 when h or w is 1). With r0 = floor, r1 = min(r0+1, side-1), dr = the fraction (same for columns), the
    4 taps k = 0..3 are (r0,c0), (r0,c1), (r1,c0), (r1,c1) with weights (1-dr)(1-dc), (1-dr)dc, dr(1-dc), dr*dc.
    Coordinates are split into integer and fraction exactly (integer division); weights are computed in fp64.
    Returns index int32 [4, N] into the flattened table (r*side + c) and weight fp32 [4, N], N = sum(t*h*w),
    patches in merge-block order, repeated over t. num_patches: optional sum(t*h*w) (a kernel hint; checked).
    """
    grids = _check_grid(grid_thw, merge)
    _check_hint("num_patches", num_patches, sum(t * h * w for t, h, w in grids))
    _check_pos_int("side", side)

    def taps(pos: torch.Tensor, size: int):
        den = max(size - 1, 1)  # size == 1: the only position is 0, mapped to 0
        num = pos * (side - 1)
        lo = num // den
        frac = (num % den).double() / den
        return lo, (lo + 1).clamp(max=side - 1), frac

    index, weight = [], []
    for t, h, w in grids:
        row, col = _frame_coords(h, w, merge)
        r0, r1, dr = taps(row, h)
        c0, c1, dc = taps(col, w)
        index.append(torch.stack([r0 * side + c0, r0 * side + c1, r1 * side + c0, r1 * side + c1]).repeat(1, t))
        weight.append(torch.stack([(1 - dr) * (1 - dc), (1 - dr) * dc, dr * (1 - dc), dr * dc]).repeat(1, t))
    dev = grid_thw.device
    return (torch.cat(index, dim=1).to(dev, torch.int32), torch.cat(weight, dim=1).to(dev, torch.float32))


def add_pos_embed(x: torch.Tensor, table: torch.Tensor, index: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """x + the bilinearly interpolated position embedding of every patch.

    x: [N, D] patch embeddings; table: [side*side, D] (pos_embed.weight), same dtype as x;
    index: int32/int64 [4, N] and weight: fp32/fp64 [4, N] from `vision_pos_taps`.
    Returns [N, D] = x + sum_k weight[k] * table[index[k]] in x.dtype: the 4 taps are summed in fp32 (k = 0..3),
    added to x in fp32, and rounded once. HF rounds the summed position embedding to the model dtype before
    adding it, so bf16 results can differ by one rounding.
    """
    check_float("x", x, ndim=2)
    n, d = x.shape
    check_tensor("table", table, ndim=2, dtypes=(x.dtype,))
    if table.shape[1] != d:
        raise ValueError(f"table must have shape (*, {d}) to match x, got {tuple(table.shape)}")
    check_tensor("index", index, shape=(4, n), dtypes=(torch.int32, torch.int64))
    check_tensor("weight", weight, shape=(4, n), dtypes=(torch.float32, torch.float64))
    check_same_device(x=x, table=table, index=index, weight=weight)
    if n and (int(index.min()) < 0 or int(index.max()) >= table.shape[0]):
        raise ValueError(f"index values must lie in [0, {table.shape[0]}), got [{int(index.min())}, "
                         f"{int(index.max())}]")
    acc = torch.promote_types(x.dtype, torch.float32)
    pos = torch.zeros(n, d, dtype=acc, device=x.device)
    for k in range(4):
        pos = pos + weight[k].to(acc)[:, None] * table[index[k].long()].to(acc)
    return (x.to(acc) + pos).to(x.dtype)


def vision_rope_cos_sin(grid_thw: torch.Tensor, head_dim: int, theta: float = 1e4, merge: int = 2, *,
                        num_patches: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """2D RoPE tables of the ViT: the first hd/4 frequencies rotate by the patch row, the next hd/4 by the column.

    grid_thw: int [n, 3]; head_dim: hd, a multiple of 4 (64, 72, 80 or 128 in real towers).
    inv_freq = 1 / theta ** (2j / (hd/2)), j < hd/4 (fp32, see `reference.rope`); rows/cols are the pre-merge
    patch coordinates in merge-block order, repeated over t (no temporal component).
    Returns cos, sin: fp32 [N, hd/2] of the angles [row * inv_freq, col * inv_freq]; `qkv_bias_rope` applies
    them NeoX-style over the whole head (dim j pairs with j + hd/2). num_patches: optional hint (checked).
    """
    grids = _check_grid(grid_thw, merge)
    _check_hint("num_patches", num_patches, sum(t * h * w for t, h, w in grids))
    if _check_pos_int("head_dim", head_dim) % 4:
        raise ValueError(f"head_dim must be a multiple of 4, got {head_dim}")
    freq = inv_freq(head_dim // 2, theta)  # [hd/4]
    rows, cols = [], []
    for t, h, w in grids:
        row, col = _frame_coords(h, w, merge)
        rows.append(row.repeat(t))
        cols.append(col.repeat(t))
    row, col = torch.cat(rows).float(), torch.cat(cols).float()
    angle = torch.cat([row[:, None] * freq, col[:, None] * freq], dim=1).to(grid_thw.device)  # [N, hd/2]
    return angle.cos(), angle.sin()


def vision_cu_seqlens(grid_thw: torch.Tensor, *, num_segments: int | None = None) -> torch.Tensor:
    """Attention segment bounds of the ViT: one segment of h*w patches per (image, temporal slice).

    grid_thw: int [n, 3]. Returns int32 [sum(t) + 1] = [0, cumsum(h*w repeated t times)].
    num_segments: optional sum(t) (a kernel hint; checked).
    """
    lengths = [h * w for t, h, w in _check_grid(grid_thw, merge=1) for _ in range(t)]
    _check_hint("num_segments", num_segments, len(lengths))
    bounds = list(accumulate(lengths, initial=0))
    if bounds[-1] >= 2**31:
        raise ValueError(f"grid_thw has {bounds[-1]} patches, too many for int32 cu_seqlens")
    return torch.tensor(bounds, dtype=torch.int32, device=grid_thw.device)
