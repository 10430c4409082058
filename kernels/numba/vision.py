"""Numba kernels for the ViT's per-patch tables: position-embedding taps, 2D RoPE angles, segment bounds.

They read grid_thw on the device, so a model call needs no host sync: every thread finds its image by
walking the few (t, h, w) rows (O(n_images) per thread, n_images is small), then decodes its patch's
(row, col) from the merge-block order (see reference/vision.py). grid_thw arrives flat [n*3] int64.
Items are covered by grid-stride loops.
"""

from __future__ import annotations

import math

import numba
import numpy as np
from numba import cuda

ONE64 = np.float64(1.0)
NAN32 = np.float32(np.nan)


@cuda.jit(device=True)
def find_image(grid, n_img, i):
    """(g, first patch of image g) for packed patch i; g == n_img when i lies past the last image."""
    start = 0
    for g in range(n_img):
        count = grid[3 * g] * grid[3 * g + 1] * grid[3 * g + 2]
        if i < start + count:
            return g, start
        start += count
    return n_img, start


@cuda.jit(device=True)
def patch_row_col(j, w, merge):
    """(row, col) of patch j (0 <= j < h*w) of one temporal slice, in merge-block order."""
    blocks_w = w // merge
    row = (j // (merge * merge * blocks_w)) * merge + (j // merge) % merge
    col = ((j // (merge * merge)) % blocks_w) * merge + j % merge
    return row, col


@cuda.jit(device=True)
def axis_taps(pos, size, side):
    """Bilinear align_corners taps on one axis: (lo, hi, frac). Integer split of pos*(side-1)/(size-1) into
    quotient and remainder, so lo is exact; frac in fp64, as the reference computes it."""
    den = max(size - 1, 1)
    num = pos * (side - 1)
    lo = num // den
    return lo, min(lo + 1, side - 1), numba.float64(num % den) / numba.float64(den)


@cuda.jit
def pos_taps_kernel(grid, n_img, side, merge, n_patches, index, weight):
    """index int32 / weight fp32, flat [4, n_patches]: taps k = (r0,c0), (r0,c1), (r1,c0), (r1,c1).
    Weights are products in fp64 rounded once to fp32 (the reference's math, bit for bit). Patches past the
    grid's total (a num_patches larger than sum(t*h*w)) get index 0 and a NaN weight, so they are visible."""
    for i in range(cuda.grid(1), n_patches, cuda.gridsize(1)):
        g, start = find_image(grid, n_img, i)
        if g == n_img:
            for k in range(4):
                index[k * n_patches + i] = 0
                weight[k * n_patches + i] = NAN32
            continue
        h, w = grid[3 * g + 1], grid[3 * g + 2]
        row, col = patch_row_col((i - start) % (h * w), w, merge)
        r0, r1, dr = axis_taps(row, h, side)
        c0, c1, dc = axis_taps(col, w, side)
        index[i] = r0 * side + c0
        index[n_patches + i] = r0 * side + c1
        index[2 * n_patches + i] = r1 * side + c0
        index[3 * n_patches + i] = r1 * side + c1
        weight[i] = (ONE64 - dr) * (ONE64 - dc)
        weight[n_patches + i] = (ONE64 - dr) * dc
        weight[2 * n_patches + i] = dr * (ONE64 - dc)
        weight[3 * n_patches + i] = dr * dc


@cuda.jit
def rope_cos_sin_kernel(grid, n_img, merge, n_patches, inv_freq, quarter, cos, sin):
    """cos, sin: fp32 flat [n_patches, 2*quarter]; column j < quarter is row * inv_freq[j], the rest
    col * inv_freq[j - quarter] (fp32 products, as the reference). One item per output element.
    Patches past the grid's total get NaN."""
    half = 2 * quarter
    for e in range(cuda.grid(1), n_patches * half, cuda.gridsize(1)):
        i = e // half
        j = e % half
        g, start = find_image(grid, n_img, i)
        if g == n_img:
            cos[e] = NAN32
            sin[e] = NAN32
            continue
        h, w = grid[3 * g + 1], grid[3 * g + 2]
        row, col = patch_row_col((i - start) % (h * w), w, merge)
        if j < quarter:
            angle = numba.float32(row) * inv_freq[j]
        else:
            angle = numba.float32(col) * inv_freq[j - quarter]
        cos[e] = math.cos(angle)
        sin[e] = math.sin(angle)


@cuda.jit
def cu_seqlens_kernel(grid, n_img, n_out, cu):
    """cu int32 [n_out]: cu[s] = first patch of attention segment s (one per image and temporal slice);
    entries past the last segment hold the total patch count."""
    for s in range(cuda.grid(1), n_out, cuda.gridsize(1)):
        seg = 0
        patch = 0
        g = 0
        while g < n_img:
            t = grid[3 * g]
            hw = grid[3 * g + 1] * grid[3 * g + 2]
            if s < seg + t:
                patch += (s - seg) * hw
                break
            seg += t
            patch += t * hw
            g += 1
        cu[s] = patch
