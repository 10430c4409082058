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

__all__ = ["skinny_linear", "skinny_ok", "default_ksplit", "skinny_ksplits"]

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


# (silu, column tiles, steps in flight) built: more steps in flight for small grids (see gemm.cu)
_SKINNY_BUILDS = (("false", 1, 4), ("false", 1, 8), ("true", 1, 4), ("false", 2, 2), ("true", 2, 2),
                  ("false", 4, 2), ("true", 4, 2))
_SMALL_GRID = 264  # CTAs: below ~2 per SM of an H200, the 8-step build


def _skinny_expr(dtype, silu: bool, nt: int, u: int, xgate: bool = False, ksplit: int = 1) -> str:
    b = lambda v: "true" if v else "false"  # noqa: E731
    if ksplit > 1:
        return f"gemm::skinny_gemm_split<{CTYPES[dtype]}, {b(silu)}, {nt}, {u}, {b(xgate)}, {ksplit}>"
    return f"gemm::skinny_gemm<{CTYPES[dtype]}, {b(silu)}, {nt}, {u}, {b(xgate)}>"


# K split over a cluster of 2 or 4 CTAs (gemm.cu's skinny_gemm_split) for the plain product: N = 1024-2048
# projections have 64-128 16-row blocks, too few CTAs to draw the H200's bandwidth (down_proj 1024 x 3584 took
# 5.1 us, 1.4 TB/s, on 64 CTAs: benchmarks/results/lm_decode_profile-H200-2026-12-02.json)
KSPLITS = (1, 2, 4)
_SPLIT_BUILDS = tuple((nt, 8 if nt == 1 else 2) for nt in _SKINNY_TILES)
# the gated-x builds (sigmoid_gate folded into o_proj) exist for the plain product only
SOURCE = NvrtcSource("gemm.cu", tuple(
    [_skinny_expr(dt, s == "true", nt, u, xg) for dt in _SKINNY_DTYPES for s, nt, u in _SKINNY_BUILDS
     for xg in ((False, True) if s == "false" else (False,))]
    + [_skinny_expr(dt, False, nt, u, xg, ks) for dt in _SKINNY_DTYPES for nt, u in _SPLIT_BUILDS
       for xg in (False, True) for ks in KSPLITS[1:]]))


def default_ksplit(n: int, k: int, silu_mul: bool, device: int) -> int:
    """The K split skinny_linear takes without ksplit=: the largest of KSPLITS whose grid still fits one wave of
    2 CTAs an SM (the 8-step build's occupancy) with at least one k step for every warp; 1 for silu_mul and
    before sm_90."""
    if silu_mul or capability(device)[0] < 9:  # clusters: sm_90
        return 1
    ctas, steps = ceil_div(n, _SKINNY_ROWS), k // 32
    for ks in KSPLITS[::-1]:
        if ks == 1 or (ctas * ks <= 2 * sm_count(device) and steps >= ks * _SKINNY_THREADS // 32):
            return ks
    return 1


def skinny_ok(x: torch.Tensor, weight: torch.Tensor) -> bool:
    """Whether skinny_linear takes these operands (else use F.linear): CUDA, bf16/fp16, x [M <= 32, K] with unit
    column stride, weight [N, K] contiguous, K % 32 == 0, 16-byte aligned rows. Reads nothing on the device."""
    return (x.is_cuda and x.dim() == 2 and x.dtype in _SKINNY_DTYPES and weight.dtype == x.dtype
            and 1 <= x.shape[0] <= SKINNY_MAX_ROWS and weight.dim() == 2 and x.shape[1] == weight.shape[1]
            and x.shape[1] % 32 == 0 and x.stride(1) == 1 and x.stride(0) % 8 == 0 and weight.is_contiguous()
            and x.data_ptr() % 16 == 0 and weight.data_ptr() % 16 == 0)


def skinny_ksplits(kind: str, weight: torch.Tensor) -> tuple[int, ...]:
    """The K splits worth timing for a weight [N, K] (model.language's choice per shape): 1, and 2 / 4 where the
    plain grid is under two waves of 2 CTAs an SM and every warp keeps a k step (not for silu_mul: kind 'silu')."""
    if kind == "silu" or capability(weight.get_device())[0] < 9:
        return (1,)
    n, k = weight.shape
    ctas = ceil_div(n, _SKINNY_ROWS)
    return tuple(ks for ks in KSPLITS if ks == 1 or (ctas < 4 * sm_count(weight.get_device())
                                                     and k // 32 >= ks * _SKINNY_THREADS // 32))


def skinny_linear(x: torch.Tensor, weight: torch.Tensor, *, silu_mul: bool = False, split: tuple | None = None,
                  gate: torch.Tensor | None = None, out: torch.Tensor | None = None, ksplit: int | None = None):
    """x @ weight.T for a few rows (decode): x [M, K] (1 <= M <= 32; a row-strided view is fine), weight [N, K]
    -> [M, N] in x.dtype (fp32 accumulation, one rounding). silu_mul: weight is the fused [gate; up] [2I, K] and
    the result silu(x gate.T) * (x up.T) [M, I] (each product rounded first, as F.linear then silu_mul_fused).
    split: column counts (up to 4, summing to N) of a fused projection: returns a tuple of contiguous [M, n_j]
    tensors instead of one (no slicing copies; not with out= or silu_mul). gate: the product takes
    x * sigmoid(gate) instead of x (the attention output gate folded into o_proj; rounded as sigmoid_gate stores
    it): x [M, H d] = [M, H, d] viewed flat, gate [M, H, d] with unit last stride (e.g. the half of q_proj's
    [M, H, 2 d] output), d % 8 == 0; not with silu_mul. ksplit: K split over a cluster of that many CTAs (1, 2,
    4; not with silu_mul; default default_ksplit: the small-N projections; clusters need sm_90, elsewhere it is
    1). No host read (graph-capturable)."""
    if not isinstance(x, torch.Tensor) or not isinstance(weight, torch.Tensor):
        raise TypeError("x and weight must be tensors")
    if not skinny_ok(x, weight):
        raise ValueError(f"skinny_linear takes CUDA bf16/fp16 x [M <= {SKINNY_MAX_ROWS}, K] (unit column stride, row "
                         f"stride a multiple of 8) and a contiguous weight [N, K] of x's dtype with K % 32 == 0, "
                         f"16-byte aligned; got x {tuple(x.shape)} {x.dtype} strides {x.stride()}, weight "
                         f"{tuple(weight.shape)} {weight.dtype}; use F.linear")
    m, n = x.shape[0], weight.shape[0]
    if silu_mul:
        if n % 2:
            raise ValueError(f"silu_mul needs the fused [gate; up] weight with an even row count, got {n}")
        n //= 2
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
    gargs = (0, i64(0), i32(8), i32(0))
    if gate is not None:
        if silu_mul or gate.dim() != 3 or gate.shape[0] != m or gate.shape[1] * gate.shape[2] != x.shape[1] \
                or gate.dtype != x.dtype or gate.stride(2) != 1 or gate.shape[2] % 8 or gate.stride(1) % 8 \
                or gate.stride(0) % 8 or gate.data_ptr() % 16:
            raise ValueError(f"gate must be [M, H, d] of x's dtype with H d = K, d % 8 == 0, unit last stride and "
                             f"16-byte aligned rows (not with silu_mul); got {tuple(gate.shape)} strides "
                             f"{gate.stride()} for x {tuple(x.shape)}")
        gargs = (gate.data_ptr(), i64(gate.stride(0)), i32(gate.shape[2]), i32(gate.stride(1)))
    if ksplit is not None and (ksplit not in KSPLITS or (silu_mul and ksplit != 1)):
        raise ValueError(f"ksplit must be None or one of {KSPLITS} (1 with silu_mul), got {ksplit!r}")
    device = check_cuda(x=x, weight=weight, out=out, gate=gate)
    if n:
        nt = 1 if m <= 8 else 2 if m <= 16 else 4
        ctas = ceil_div(n, _SKINNY_ROWS)
        ks = default_ksplit(n, x.shape[1], silu_mul, device) if ksplit is None else ksplit
        if ks > 1 and capability(device)[0] < 9:  # no clusters: one CTA a row block (gemm.cu)
            ks = 1
        if ks > 1:  # clusters of ks CTAs along y (gemm.cu's skinny_gemm_split)
            expr, grid = _skinny_expr(x.dtype, False, nt, dict(_SPLIT_BUILDS)[nt], gate is not None, ks), (ctas, ks, 1)
        else:
            u = 2 if nt > 1 else 8 if not silu_mul and ctas < _SMALL_GRID else 4
            expr, grid = _skinny_expr(x.dtype, silu_mul, nt, u, gate is not None), (ctas, 1, 1)
        SOURCE.launch(device, expr, grid, (_SKINNY_THREADS, 1, 1), x.data_ptr(), i64(x.stride(0)), weight.data_ptr(),
                      spec, i32(m), i32(n), i32(x.shape[1]), *gargs, pdl=SKINNY_PDL)
    return parts if split is not None else out
