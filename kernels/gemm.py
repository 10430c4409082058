"""The language model's decode-step GEMMs: a few rows against a weight read once (kernels/cuda/gemm.cu). Larger
products go to cuBLAS through torch (F.linear), in the model dtype, with the bias in the GEMM's epilogue.
"""

from __future__ import annotations

import ctypes

import torch

from .runtime.checks import check_cuda, check_input
from .runtime.device import capability, sm_count
from .runtime.dispatch import CTYPES, NvrtcSource, ceil_div
from .runtime.nvrtc import i32, i64

__all__ = ["skinny_linear", "skinny_ok", "default_ksplit", "skinny_variants", "fold_ok"]

SKINNY_MAX_ROWS = 32  # x rows per launch: up to 4 tiles of the mma's N = 8
_SKINNY_TILES = (1, 2, 4)
_SKINNY_ROWS, _SKINNY_THREADS = 16, 256  # output features per CTA, threads per CTA (gemm.cu's ROWS, WARPS * 32)
_SKINNY_DTYPES = (torch.bfloat16, torch.float16)
# programmatic dependent launch (gemm.cu): the weight stream starts before the previous kernel ends
# (tools/lm_decode_profile.py --variants nopdl sets it False for its A/B timing)
SKINNY_PDL = True


class _SplitOut(ctypes.Structure):
    """gemm.cu's SplitOut<T>, passed by value: up to 4 output parts split by columns."""
    _fields_ = [("y", ctypes.c_uint64 * 4), ("sy", ctypes.c_longlong * 4), ("cut", ctypes.c_int * 3)]


class _XNorm(ctypes.Structure):
    """gemm.cu's XNorm, passed by value: the folded norm's weight, residual output, eps and weight offset."""
    _fields_ = [("w", ctypes.c_uint64), ("res_out", ctypes.c_uint64), ("sro", ctypes.c_longlong),
                ("eps", ctypes.c_float), ("w_off", ctypes.c_float)]


# gemm.cu's XOp: what the x operand is (x; o * sigmoid(gate); add_rms_norm's y; gated_rms_norm's y)
X_PLAIN, X_SIGMOID, X_ADD_RMS, X_GATED_RMS = 0, 1, 2, 3
NORM_MAX_ROWS = 8  # the folded norms take up to 8 rows (one x tile)
_STAT_MAX = 2048  # gemm.cu's STAT_MAX


# (silu, column tiles, steps in flight) built: more steps in flight for small grids (see gemm.cu)
_SKINNY_BUILDS = (("false", 1, 4), ("false", 1, 8), ("true", 1, 4), ("false", 2, 2), ("true", 2, 2),
                  ("false", 4, 2), ("true", 4, 2))
_SMALL_GRID = 264  # CTAs: below ~2 per SM of an H200, the 8-step build


def _skinny_expr(dtype, silu: bool, nt: int, u: int, xop: int = X_PLAIN, ksplit: int = 1, rs: int = 1) -> str:
    b = "true" if silu else "false"
    if ksplit > 1:
        return f"gemm::skinny_gemm_split<{CTYPES[dtype]}, {b}, {nt}, {u}, {xop}, {ksplit}>"
    return f"gemm::skinny_gemm<{CTYPES[dtype]}, {b}, {nt}, {u}, {xop}{', 2' if rs == 2 else ''}>"


# K split over a cluster of 2 or 4 CTAs (gemm.cu's skinny_gemm_split) for the plain product: N = 1024-2048
# projections have 64-128 16-row blocks, too few CTAs to draw the H200's bandwidth (down_proj 1024 x 3584 took
# 5.1 us, 1.4 TB/s, on 64 CTAs: benchmarks/results/lm_decode_profile-H200-2026-12-02.json)
KSPLITS = (1, 2, 4)
_SPLIT_BUILDS = tuple((nt, 8 if nt == 1 else 2) for nt in _SKINNY_TILES)
# the folded norms (X_ADD_RMS, X_GATED_RMS): one x tile, 4 steps in flight (their weights are prefetched into L2
# before the wait, so more steps in registers only cost occupancy: the 8-step norm builds take 160+ registers)
_NORM_U = 4
_NORM_BUILDS = ((False, X_ADD_RMS), (True, X_ADD_RMS), (False, X_GATED_RMS))
# ... and 8 steps for the gated fold where the grid is at most one CTA an SM (out_proj N = 1024: 64 CTAs, K = 2048
# = 8 steps a warp; the 8-step fold takes 166 registers, which one CTA an SM can spare)
# tile_rows=32 (two 16-row blocks a CTA, gemm.cu's RS = 2): steps in flight by x tiles (1: 4 steps, 124
# registers; 4 (17-32 rows): 2 steps, 128 registers; 2 tiles would take 134: not built)
_WIDE_U = {1: 4, 4: 2}
# the gated-x builds (sigmoid_gate folded into o_proj) exist for the plain product only
SOURCE = NvrtcSource("gemm.cu", tuple(
    [_skinny_expr(dt, s == "true", nt, u, xg) for dt in _SKINNY_DTYPES for s, nt, u in _SKINNY_BUILDS
     for xg in ((X_PLAIN, X_SIGMOID) if s == "false" else (X_PLAIN,))]
    + [_skinny_expr(dt, False, nt, u, xg, ks) for dt in _SKINNY_DTYPES for nt, u in _SPLIT_BUILDS
       for xg in (X_PLAIN, X_SIGMOID) for ks in KSPLITS[1:]]
    + [_skinny_expr(dt, silu, 1, _NORM_U, xop, ks) for dt in _SKINNY_DTYPES for silu, xop in _NORM_BUILDS
       for ks in (KSPLITS if not silu else (1,))]
    + [_skinny_expr(dt, False, 1, 8, X_GATED_RMS) for dt in _SKINNY_DTYPES]
    + [_skinny_expr(dt, False, nt, u, X_PLAIN, 1, 2) for dt in _SKINNY_DTYPES for nt, u in _WIDE_U.items()]))


# Tried and dropped: a staged kernel for 17-32 rows (7fb7625: 64 weight rows a CTA of 8 warps through an 8-stage
# cp.async shared-memory ring, x read once per 64 rows, the CTA's whole weight block bulk-prefetched into L2 before
# the PDL wait, K split over the grid with a last-CTA reduction). It lost to cuBLAS at every 32-row decode shape of
# 0.8B, 4B and 9B on an H200 (0.8B in_proj 13.8 against 7.4 us, down_proj 12.3 at 8 K splits against 7.7; the splits
# helped only the N <= 4096 projections): benchmarks/results/skinny_gemm_staged_ab-H200-2026-12-04.json. ncu of the
# 4-warp build (skinny_gemm_staged_ncu-*): one CTA an SM, DRAM at 17 %, 49 % L2 hits, an instruction issued every
# 5.8 cycles; cuBLAS's TMA-fed 64x32 tiles keep DRAM at 41 %. A TMA-fed ring would be the next try.
def default_ksplit(n: int, k: int, silu_mul: bool, device: int) -> int:
    """The K split skinny_linear takes without ksplit=: 1. (The cluster split measured slower than one CTA a row
    block at every decode shape on an H200, round s3r1, tools/skinny_gemm_ab.py: out_proj 1024 x 2048 2.59 us
    unsplit, 3.79 split 2, 6.19 split 4; down_proj 1024 x 3584 4.47 / 4.40 / 6.79; it stays for explicit calls.)"""
    return 1


def skinny_ok(x: torch.Tensor, weight: torch.Tensor) -> bool:
    """Whether skinny_linear takes these operands (else use F.linear): CUDA, bf16/fp16, x [M <= 32, K] with unit
    column stride, weight [N, K] contiguous, K % 32 == 0, 16-byte aligned rows. Reads nothing on the device."""
    return (x.is_cuda and x.dim() == 2 and x.dtype in _SKINNY_DTYPES and weight.dtype == x.dtype
            and 1 <= x.shape[0] <= SKINNY_MAX_ROWS and weight.dim() == 2 and x.shape[1] == weight.shape[1]
            and x.shape[1] % 32 == 0 and x.stride(1) == 1 and x.stride(0) % 8 == 0 and weight.is_contiguous()
            and x.data_ptr() % 16 == 0 and weight.data_ptr() % 16 == 0)


def skinny_variants(kind: str, weight: torch.Tensor, rows: int) -> tuple[dict, ...]:
    """The skinny_linear keyword sets worth timing for a weight [N, K] and `rows` x rows (model.language's choice
    per shape): the default, and 32-row tiles (tile_rows=32) for the plain products of at most 8 rows whose 16-row
    grid takes more than one wave of 3 CTAs an SM (in_proj 8224 x 1024: 514 CTAs; 257 with 32-row tiles) and of
    17-32 rows (each x tile then feeds two row blocks)."""
    out = ({"ksplit": 1},)
    n = weight.shape[0]
    if kind in ("plain", "split") and (rows > 16 or (rows <= 8 and
                                                     ceil_div(n, _SKINNY_ROWS) > 3 * sm_count(weight.get_device()))):
        out += ({"ksplit": 1, "tile_rows": 32},)
    return out


def fold_ok(kind: str, x: torch.Tensor, other: torch.Tensor) -> bool:
    """Whether skinny_linear folds this norm into x's load: kind "add" (add_rms=, other = the residual [M, K]) or
    "gated" (gated_rms=, other = z [M, H, d]); x [M, K] as skinny_ok takes it. Reads nothing on the device."""
    m, k = x.shape
    if m > NORM_MAX_ROWS or not isinstance(other, torch.Tensor) or other.dtype != x.dtype:
        return False
    if kind == "add":
        return (other.shape == x.shape and other.stride(1) == 1 and other.stride(0) % 8 == 0
                and other.data_ptr() % 16 == 0 and k % 256 == 0 and m * k // 256 <= _STAT_MAX)
    d = other.shape[-1] if other.dim() == 3 else 0
    return (kind == "gated" and _grouped_ok(other, m, k, x.dtype) and d <= 256 and not (d // 8) & (d // 8 - 1)
            and m * (k // d) <= _STAT_MAX)


def skinny_linear(x: torch.Tensor, weight: torch.Tensor, *, silu_mul: bool = False, split: tuple | None = None,
                  gate: torch.Tensor | None = None, out: torch.Tensor | None = None, ksplit: int | None = None,
                  add_rms: tuple | None = None, gated_rms: tuple | None = None, tile_rows: int = 16):
    """x @ weight.T for a few rows (decode): x [M, K] (1 <= M <= 32; a row-strided view is fine), weight [N, K]
    -> [M, N] in x.dtype (fp32 accumulation, one rounding). silu_mul: weight is the fused [gate; up] [2I, K] and
    the result silu(x gate.T) * (x up.T) [M, I] (each product rounded first, as F.linear then silu_mul_fused).
    split: column counts (up to 4, summing to N) of a fused projection: returns a tuple of contiguous [M, n_j]
    tensors instead of one (no slicing copies; not with out= or silu_mul). ksplit: K split over a cluster of that
    many CTAs (1, 2, 4; not with silu_mul; default default_ksplit: the small-N projections; clusters need sm_90,
    elsewhere it is 1). tile_rows: output features a CTA (16, or 32 for the plain product of M <= 8 or 17-32 rows
    without ksplit or the x transforms below: half the CTAs, x read half as often). No host read
    (graph-capturable).

    The x operand may be computed on the fly from x (one kernel less; at most one of):
    gate: x * sigmoid(gate) (the attention output gate folded into o_proj; rounded as sigmoid_gate stores it):
      x [M, H d] = [M, H, d] viewed flat, gate [M, H, d] with unit last stride (e.g. the half of q_proj's
      [M, H, 2 d] output), d % 8 == 0; not with silu_mul.
    add_rms=(residual, norm_weight, eps[, unit_offset=True]): the operand is add_rms_norm(x, residual, norm_weight,
      eps, unit_offset)'s y; returns (result, residual_out) with residual_out = residual + x [M, K] (rounded, as
      add_rms_norm's). residual [M, K] (unit column stride), norm_weight [K]; M <= 8, K % 256 == 0.
    gated_rms=(z, norm_weight, eps): the operand is gated_rms_norm(x viewed [M, H, d], z, norm_weight, eps)'s y
      flat: z [M, H, d] with unit last stride, norm_weight [d], d / 8 a power of two <= 32; M <= 8; not with
      silu_mul.
    """
    if not isinstance(x, torch.Tensor) or not isinstance(weight, torch.Tensor):
        raise TypeError("x and weight must be tensors")
    if not skinny_ok(x, weight):
        raise ValueError(f"skinny_linear takes CUDA bf16/fp16 x [M <= {SKINNY_MAX_ROWS}, K] (unit column stride, row "
                         f"stride a multiple of 8) and a contiguous weight [N, K] of x's dtype with K % 32 == 0, "
                         f"16-byte aligned; got x {tuple(x.shape)} {x.dtype} strides {x.stride()}, weight "
                         f"{tuple(weight.shape)} {weight.dtype}; use F.linear")
    m, n, K = x.shape[0], weight.shape[0], x.shape[1]
    if silu_mul:
        if n % 2:
            raise ValueError(f"silu_mul needs the fused [gate; up] weight with an even row count, got {n}")
        n //= 2
    if sum(a is not None for a in (gate, add_rms, gated_rms)) > 1:
        raise ValueError("gate=, add_rms= and gated_rms= exclude one another")
    spec = _SplitOut()
    if split is not None:
        split = tuple(int(c) for c in split)
        if silu_mul or out is not None or not 1 <= len(split) <= 4 or sum(split) != n or min(split) < 0:
            raise ValueError(f"split must be 1 to 4 non-negative column counts summing to N = {n} (without "
                             f"silu_mul or out=), got {split}")
        parts = tuple(torch.empty(m, c, dtype=x.dtype, device=x.device) for c in split)
        cut = 0
        for j, t in enumerate(parts):
            spec.y[j], spec.sy[j] = t.data_ptr(), t.stride(0)
            if j:
                spec.cut[j - 1] = cut
            cut += split[j]
        for j in range(len(parts), 4):
            if j:
                spec.cut[j - 1] = n
    else:
        if out is None:
            out = torch.empty(m, n, dtype=x.dtype, device=x.device)
        else:
            check_input("out", out, shape=(m, n), dtypes=(x.dtype,))
        spec.y[0], spec.sy[0] = out.data_ptr(), out.stride(0)
        spec.cut[0] = spec.cut[1] = spec.cut[2] = n
    xop, gargs, xn, res_out, other = X_PLAIN, (0, i64(0), i32(8), i32(0)), _XNorm(), None, None
    if gate is not None:
        if silu_mul or not _grouped_ok(gate, m, K, x.dtype):
            raise ValueError(f"gate must be [M, H, d] of x's dtype with H d = K, d % 8 == 0, unit last stride and "
                             f"16-byte aligned rows (not with silu_mul); got {_desc(gate)} for x {tuple(x.shape)}")
        xop, other = X_SIGMOID, gate
        gargs = (gate.data_ptr(), i64(gate.stride(0)), i32(gate.shape[2]), i32(gate.stride(1)))
    elif add_rms is not None:
        residual, nw, eps, offset = _norm_args("add_rms", add_rms, 4)
        if not (isinstance(residual, torch.Tensor) and residual.shape == x.shape and residual.dtype == x.dtype
                and residual.stride(1) == 1 and residual.stride(0) % 8 == 0 and residual.data_ptr() % 16 == 0):
            raise ValueError(f"add_rms's residual must be [M, K] like x ({tuple(x.shape)} {x.dtype}) with unit column "
                             f"stride and 16-byte aligned rows, got {_desc(residual)}")
        _check_norm_weight("add_rms", nw, K, x.dtype)
        if m > NORM_MAX_ROWS or K % 256 or m * K // 256 > _STAT_MAX:
            raise ValueError(f"add_rms takes M <= {NORM_MAX_ROWS} rows with K % 256 == 0, got x {tuple(x.shape)}")
        xop, other = X_ADD_RMS, residual
        res_out = torch.empty(m, K, dtype=x.dtype, device=x.device)
        gargs = (residual.data_ptr(), i64(residual.stride(0)), i32(K), i32(0))
        xn.w, xn.res_out, xn.sro, xn.eps, xn.w_off = nw.data_ptr(), res_out.data_ptr(), K, eps, 1.0 if offset else 0.0
    elif gated_rms is not None:
        z, nw, eps, _ = _norm_args("gated_rms", gated_rms, 3)
        if silu_mul or not _grouped_ok(z, m, K, x.dtype):
            raise ValueError(f"gated_rms's z must be [M, H, d] of x's dtype with H d = K, d % 8 == 0, unit last "
                             f"stride and 16-byte aligned rows (not with silu_mul); got {_desc(z)} for x "
                             f"{tuple(x.shape)}")
        d = z.shape[2]
        _check_norm_weight("gated_rms", nw, d, x.dtype)
        if m > NORM_MAX_ROWS or (d // 8) & (d // 8 - 1) or d > 256 or m * (K // d) > _STAT_MAX:
            raise ValueError(f"gated_rms takes M <= {NORM_MAX_ROWS} rows and groups d with d / 8 a power of two "
                             f"<= 32, got x {tuple(x.shape)}, z {tuple(z.shape)}")
        xop, other = X_GATED_RMS, z
        gargs = (z.data_ptr(), i64(z.stride(0)), i32(d), i32(z.stride(1)))
        xn.w, xn.eps = nw.data_ptr(), eps
    if ksplit is not None and (ksplit not in KSPLITS or (silu_mul and ksplit != 1)):
        raise ValueError(f"ksplit must be None or one of {KSPLITS} (1 with silu_mul), got {ksplit!r}")
    if tile_rows not in (16, 32) or (tile_rows == 32 and (silu_mul or 8 < m <= 16 or xop != X_PLAIN
                                                          or ksplit not in (None, 1))):
        raise ValueError(f"tile_rows must be 16, or 32 for the plain product of at most 8 or of 17-32 rows (no "
                         f"silu_mul, ksplit, gate, add_rms or gated_rms), got {tile_rows!r}")
    device = check_cuda(x=x, weight=weight, out=out, other=other)
    if n:
        nt = 1 if m <= 8 else 2 if m <= 16 else 4
        ctas = ceil_div(n, _SKINNY_ROWS)
        ks = default_ksplit(n, K, silu_mul, device) if ksplit is None else ksplit
        if ks > 1 and capability(device)[0] < 9:  # no clusters: one CTA a row block (gemm.cu)
            ks = 1
        rs = tile_rows // _SKINNY_ROWS
        if rs == 2:
            u, ks, ctas = _WIDE_U[nt], 1, ceil_div(n, tile_rows)
        elif xop in (X_ADD_RMS, X_GATED_RMS):
            u = 8 if xop == X_GATED_RMS and ks == 1 and ctas <= sm_count(device) else _NORM_U
        elif ks > 1:
            u = dict(_SPLIT_BUILDS)[nt]
        else:
            u = 2 if nt > 1 else 8 if not silu_mul and ctas < _SMALL_GRID else 4
        expr = _skinny_expr(x.dtype, silu_mul, nt, u, xop, ks, rs)
        SOURCE.launch(device, expr, (ctas, ks, 1), (_SKINNY_THREADS, 1, 1), x.data_ptr(), i64(x.stride(0)),
                      weight.data_ptr(), spec, i32(m), i32(n), i32(K), *gargs, xn, pdl=SKINNY_PDL)
    elif res_out is not None:  # no columns: the residual stream still advances
        torch.add(add_rms[0], x, out=res_out)
    result = parts if split is not None else out
    return (result, res_out) if add_rms is not None else result


def _desc(t) -> str:
    return f"{tuple(t.shape)} {t.dtype} strides {t.stride()}" if isinstance(t, torch.Tensor) else type(t).__name__


def _grouped_ok(t, m: int, k: int, dtype) -> bool:
    """t [M, H, d] of dtype with H d = k, d % 8 == 0, unit last stride, 16-byte aligned rows and groups."""
    return (isinstance(t, torch.Tensor) and t.dim() == 3 and t.shape[0] == m and t.shape[1] * t.shape[2] == k
            and t.dtype == dtype and t.stride(2) == 1 and t.shape[2] % 8 == 0 and t.stride(1) % 8 == 0
            and t.stride(0) % 8 == 0 and t.data_ptr() % 16 == 0)


def _norm_args(name: str, args, most: int) -> tuple:
    """(tensor, weight, eps, unit_offset) from add_rms= / gated_rms=."""
    if not isinstance(args, (tuple, list)) or not 3 <= len(args) <= most:
        raise ValueError(f"{name} must be a tuple (tensor, norm_weight, eps{', unit_offset' if most == 4 else ''}), "
                         f"got {args!r}")
    t, w, eps = args[:3]
    offset = args[3] if len(args) > 3 else True
    if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not eps >= 0:
        raise ValueError(f"{name}'s eps must be a number >= 0, got {eps!r}")
    if not isinstance(offset, bool):
        raise TypeError(f"{name}'s unit_offset must be a bool, got {type(offset).__name__}")
    return t, w, float(eps), offset


def _check_norm_weight(name: str, w, d: int, dtype) -> None:
    if not (isinstance(w, torch.Tensor) and w.shape == (d,) and w.dtype == dtype and w.is_contiguous()
            and w.data_ptr() % 16 == 0):
        raise ValueError(f"{name}'s norm_weight must be a contiguous 16-byte aligned [{d}] tensor of {dtype}, got "
                         f"{_desc(w)}")
