"""Gated DeltaNet kernels (NVRTC, kernels/cuda/deltanet.cu) with the signature and meaning of reference.deltanet.

    o, final = gated_delta_rule(q, k, v, g, beta, cu_seqlens, initial_state, use_qk_l2norm=True)

Two paths, both exact implementations of the recurrence (the choice only changes speed):
  * chunked prefill (bf16/fp16): gdn_chunk_prep (per 64-token chunk and value head, fully parallel: the
    triangular solve and the WY factors W, U on tensor cores) then gdn_chunk_state (per sequence, value head and
    block of dv columns: the chunks in order, the state in fp32 registers, outputs written as it goes);
  * recurrent (decode, one token per sequence, and every fp32 call): gdn_recurrent, token by token.
The l2 normalisation of q and k (use_qk_l2norm) is fused into both. No host synchronisation: the chunk map is
found on the device, so the calls can be captured in a CUDA graph (pass validate=False there). The path is picked
from shapes and the max_seqlen hint (recurrent when max_seqlen <= 8, or without a hint when T <= 2 n).

Layout: q, k [T, Hk, 128] and v [T, Hv, 128] may be strided over tokens (rows of one [T, C] projection), with
heads contiguous (stride(1) == 128, stride(2) == 1), token strides a multiple of 8 elements and 16-byte aligned
data; g and beta [T, Hv] (copied to fp32 contiguous if they are not); states fp32 [n, Hv, 128, 128] contiguous.
final_state= may be initial_state itself: the decode step updates the state in place.
"""

from __future__ import annotations

import math

import torch

from reference._checks import check_cu_seqlens, check_divides, check_tensor
from reference.deltanet import split_out_pair

from .runtime import device as _device
from .runtime import launch as _rt_launch
from .runtime.checks import check_cuda, check_input
from .runtime.dispatch import CTYPES, NvrtcSource, cbool
from .runtime.nvrtc import f32, i32, i64

__all__ = ["gated_delta_rule", "fused_gated_delta_rule"]

D = 128        # dk = dv: the only head size the kernels are built for (every Qwen3.5 checkpoint)
BT = 64        # chunk length of the prefill
DTYPES = (torch.float32, torch.float16, torch.bfloat16)
CHUNK_DTYPES = (torch.float16, torch.bfloat16)
STATE_BV = (16, 32, 64)   # dv columns per state-pass CTA
STATE_STAGES = (2, 3)     # chunks of inputs buffered by the state pass (the deepest that fits is used)
REC_BV = (16, 32)         # dv columns per recurrent CTA of 128 threads
# gdn_recurrent_warp builds (BV dv columns per one-warp CTA, CPL columns per lane); WARP_SHAPE is the one used.
# H200, graph-replayed, batch 1 (16/16 | 16/64 heads), us: (8, 8) 3.72 | 7.47, (8, 4) 2.72 | 4.43, (4, 4) 3.38 |
# 7.40, (16, 8) 2.72 | 5.72, (16, 4) 2.63 | 3.68; as programmatic dependent launches 0.4 us less each
WARP_SHAPES = ((8, 8), (8, 4), (4, 4), (16, 8), (16, 4))
WARP_SHAPE = (16, 4)
WARP_MAX_HEADS = 256      # n * Hv up to which the one-warp kernel runs
DECODE_PDL = True         # the one-warp decode kernel as a programmatic dependent launch (sm_90)
# One chunk step of the warp-specialised state pass by BV, us (a CTA an SM at every BV; H200, graph-replayed,
# (prefill - prep) / 512 chunks at 1x32768 tokens, rounds s2r2/s3r2: BV 16 at 16/16 heads, 32 at 16/32, 64 at
# 16/64, one wave each): the pick minimises waves x cost
STATE_STEP_COST = {16: 1.76, 32: 2.35, 64: 3.31}
# Hopper (sm_90a): the state pass as clusters of STATE_CLUSTER CTAs (consecutive dv blocks of one head) that share
# the chunk's W, Q, K, Aqk rows through multicast bulk copies (1 = no cluster, the sm_80/sm_90 kernel): by BV, or
# STATE_CLUSTER for every BV where it is set (the trials in tools/deltanet_gpu.py). Off: bitwise equal but 1.3-2.9x
# slower on an H200 at every BV and cluster size (16/16 1x32768: 1.35 ms plain, 2.47-3.91 clustered): one bulk copy
# a 256-byte row is far too many copy-engine operations, and the L2 reads it saves were not the limit
STATE_CLUSTER_BY_BV = {16: 1, 32: 1, 64: 1}
STATE_CLUSTER: int | None = None
STATE_CLUSTERS = (2, 4, 8)
RECURRENT_MAX_SEQLEN = 8  # with a max_seqlen hint at or below this, the recurrent kernel runs
# The transposed state pass gdn_chunk_state_t<NC, KW> (S^T as mma fragments that feed the next product; one or two
# barriers a chunk): NC groups of 16 dv columns a CTA, each split over KW warps by dk. STATE_T_STEP_COST: one
# chunk step of a CTA, us, in the units of STATE_STEP_COST (one CTA an SM: the stages fill shared memory).
# STATE_KERNEL: "auto" picks the fewest waves x step cost over both passes, "t" / "w" only that pass.
# Measured the same way (round s3r2: 16/16 and 16/64 heads, 1x32768): it wins where the warp-specialised pass
# needs BV 64 (16/64 heads, packed batches), not at 16/16 x one sequence (BV 16: 1.76 us against 2.21 at best).
STATE_KERNEL = "auto"
STATE_T_BUILDS = ((1, 2), (1, 4), (2, 2), (2, 4), (4, 1), (4, 2))
STATE_T_STEP_COST = {(1, 2): 2.80, (1, 4): 2.21, (2, 2): 2.45, (2, 4): 2.93, (4, 1): 3.0, (4, 2): 3.25}
STATE_T_FORCE: tuple[int, int] | None = None  # trials: this (NC, KW) for every shape


HOPPER_SMEM = 232448  # opt-in shared memory per block on sm_90, the most any target allows


# gdn_chunk_prep's compact layout (the T operands written over A: 53 KB, four CTAs an SM instead of three)
PREP_COMPACT = True


def prep_smem_bytes(compact: bool = False) -> int:
    """Dynamic shared memory of gdn_chunk_prep (the layout at the top of the kernel)."""
    if compact:
        return 2 * BT * (D + 8) * 2 + 2 * BT * (BT + 8) * 2 + 4 * BT * 4
    return 2 * BT * (D + 8) * 2 + 2 * BT * (BT + 8) * 2 + BT * (BT + 1) * 4 + 4 * BT * 4


def state_smem_bytes(bv: int, ns: int = 2) -> int:
    """Dynamic shared memory of gdn_chunk_state<BV, NS> (StateLayout in the kernel)."""
    su = bv + 8
    stage = (3 * BT * (D + 8) + BT * su + BT * (BT + 8)) * 2 + 3 * BT * 4
    return ns * stage + (D * su + 2 * BT * su) * 2


def _state_mc_expr(dtype, bv: int, ns: int, cl: int) -> str:
    return f"deltanet::gdn_chunk_state_mc<{CTYPES[dtype]}, {bv}, {ns}, {cl}>"


def _state_mc_ns(bv: int) -> int:
    """Stages of the cluster build of the state pass: the deepest that fits in Hopper's shared memory."""
    return max(ns for ns in STATE_STAGES if state_smem_bytes(bv, ns) + 64 <= HOPPER_SMEM)


def state_t_smem_bytes(build: tuple[int, int], ns: int) -> int:
    """Dynamic shared memory of gdn_chunk_state_t<NC, KW, NS>: NS stages (StateLayout of 16 NC columns), the fp32
    partials of every warp when KW > 1, a 64x24 output tile a column group."""
    nc, kw = build
    su = 16 * nc + 8
    stage = (3 * BT * (D + 8) + BT * su + BT * (BT + 8)) * 2 + 3 * BT * 4
    partials = nc * kw * 2 * 8 * 32 * 16 if kw > 1 else 0
    return ns * stage + partials + nc * BT * 24 * 2


def _state_t_expr(dtype, build: tuple[int, int], ns: int) -> str:
    return f"deltanet::gdn_chunk_state_t<{CTYPES[dtype]}, {build[0]}, {build[1]}, {ns}>"


def pick_state_t(n: int, Hv: int, sms: int, smem_limit: int) -> tuple[tuple[int, int], int]:
    """((NC, KW), NS) of the transposed state pass: the fewest waves x step cost (one CTA an SM), the deepest
    pipeline that fits."""
    fits = [b for b in STATE_T_BUILDS if state_t_smem_bytes(b, 2) <= smem_limit]
    if STATE_T_FORCE is not None:
        build = STATE_T_FORCE
    else:
        build = min(fits, key=lambda b: (-(-(n * Hv * (D // (16 * b[0]))) // sms)) * STATE_T_STEP_COST[b])
    ns = max(ns for ns in STATE_STAGES if ns == STATE_STAGES[0] or state_t_smem_bytes(build, ns) <= smem_limit)
    return build, ns


def _t_wins(n: int, Hv: int, sms: int, smem_limit: int) -> bool:
    """STATE_KERNEL "auto": the transposed pass's best waves x step cost beats the warp-specialised pass's."""
    def cost(cols, c):
        return (-(-(n * Hv * (D // cols)) // sms)) * c
    build, _ = pick_state_t(n, Hv, sms, smem_limit)
    bv = pick_state_bv(n, Hv, sms, smem_limit)
    return cost(16 * build[0], STATE_T_STEP_COST[build]) < cost(bv, STATE_STEP_COST[bv])


def _prep_expr(dtype, gate: bool, compact: bool = False) -> str:
    return f"deltanet::gdn_chunk_prep<{CTYPES[dtype]}, {cbool(gate)}, {cbool(compact)}>"


def _state_expr(dtype, bv: int, ns: int) -> str:
    return f"deltanet::gdn_chunk_state<{CTYPES[dtype]}, {bv}, {ns}>"


def _rec_expr(dtype, bv, gate: bool) -> str:
    """bv: an int (gdn_recurrent, 128 threads) or a (BV, CPL) pair (gdn_recurrent_warp)."""
    if isinstance(bv, tuple):
        return f"deltanet::gdn_recurrent_warp<{CTYPES[dtype]}, {cbool(gate)}, {bv[0]}, {bv[1]}>"
    return f"deltanet::gdn_recurrent<{CTYPES[dtype]}, {bv}, {cbool(gate)}>"


SOURCE = NvrtcSource("deltanet.cu", tuple(
    [_prep_expr(dt, gate, cmp) for dt in CHUNK_DTYPES for gate in (False, True) for cmp in (False, True)]
    + [_state_expr(dt, bv, ns) for dt in CHUNK_DTYPES for bv in STATE_BV for ns in STATE_STAGES
       if state_smem_bytes(bv, ns) <= HOPPER_SMEM]
    + [_state_t_expr(dt, b, ns) for dt in CHUNK_DTYPES for b in STATE_T_BUILDS for ns in STATE_STAGES
       if state_t_smem_bytes(b, ns) <= HOPPER_SMEM]
    + [_rec_expr(dt, bv, gate) for dt in DTYPES for bv in REC_BV + WARP_SHAPES for gate in (False, True)]))


MC_EXPRS = tuple(_state_mc_expr(dt, bv, _state_mc_ns(bv), cl) for dt in CHUNK_DTYPES for bv in STATE_BV
                 for cl in STATE_CLUSTERS if (D // bv) % cl == 0)


def pick_state_stages(bv: int, smem_limit: int) -> int:
    """The deepest input pipeline of the state pass that fits in shared memory."""
    return max(ns for ns in STATE_STAGES if ns == STATE_STAGES[0] or state_smem_bytes(bv, ns) <= smem_limit)


def _device_info(device: int) -> tuple[int, int]:
    """(SM count, opt-in shared memory per block) of a device (kernels.runtime.device, cached there)."""
    return _device.sm_count(device), _device.max_shared_memory(device)


def pick_state_bv(n: int, Hv: int, sms: int, smem_limit: int) -> int:
    """dv columns per state-pass CTA: the fewest waves x step cost among the BVs that fit in shared memory."""
    fits = [bv for bv in STATE_BV if state_smem_bytes(bv) <= smem_limit]
    if not fits:
        raise ValueError(f"the deltanet state kernel needs {state_smem_bytes(STATE_BV[0])} bytes of shared memory "
                         f"per block; this device allows {smem_limit}")
    return min(fits, key=lambda bv: (-(-(n * Hv * (D // bv)) // sms)) * STATE_STEP_COST[bv])


def pick_recurrent_bv(n: int, Hv: int, sms: int):
    """Small batches: one-warp CTAs (WARP_SHAPE: (BV, CPL)) (no barriers, 16 CTAs per head and row); else 128-thread CTAs,
    narrow column blocks (more CTAs) while the grid is small, wider ones (fewer repeated q/k loads) when not.
    H200, graph-replayed: the 128-thread kernel took 4.7 us at batch 1 (16 heads) against FLA's one-warp 3.5 us,
    and moved the state at 91-95 % of the copy rate at batches 32 and 256."""
    if n * Hv <= WARP_MAX_HEADS:
        return WARP_SHAPE
    return 16 if n * Hv * (D // 32) < 2 * sms else 32


def _launch(device: int, expr: str, grid, smem: int, *args, threads: int = 128, pdl: bool = False) -> None:
    SOURCE.launch(device, expr, grid, (threads, 1, 1), *args, shared_mem=smem, pdl=pdl)


def _check_rows(name: str, t: torch.Tensor) -> None:
    """Heads contiguous inside a token; the token stride a multiple of 8 elements; 16-byte aligned data."""
    if t.numel() == 0:  # no row is read, and torch gives empty tensors arbitrary strides
        return
    if t.stride(2) != 1 or t.stride(1) != D or t.stride(0) % 8 or t.stride(0) < t.shape[1] * D:
        raise ValueError(f"{name} must have contiguous heads (strides (s, 128, 1) with s a multiple of 8 and "
                         f">= {t.shape[1] * D}), got strides {t.stride()}; pass {name}.contiguous()")
    if t.data_ptr() % 16:
        raise ValueError(f"{name} must be 16-byte aligned (got a view at storage offset {t.storage_offset()})")


def _validate(q, k, v, gates: dict, cu_seqlens, initial_state, scale, use_qk_l2norm, out, final_state,
              max_seqlen, validate, fused: bool = False):
    """Every check, structure first and devices last; gates: {name: tensor} of the gate inputs ([T, Hv] g, beta;
    fused: a, b [T, Hv] in q's dtype, contiguous, and A_log, dt_bias [Hv])."""
    for name, t in (("q", q), ("k", k), ("v", v)):
        check_tensor(name, t, ndim=3, dtypes=DTYPES)
    if not (q.dtype == k.dtype == v.dtype):
        raise ValueError(f"q, k, v must share a dtype, got q={q.dtype}, k={k.dtype}, v={v.dtype}")
    T, Hk, dk = q.shape
    check_tensor("k", k, shape=(T, Hk, dk))
    check_tensor("v", v, shape=(T, None, None))
    Hv, dv = v.shape[1], v.shape[2]
    if dk != D or dv != D:
        raise ValueError(f"the deltanet kernels need dk = dv = {D}, got dk={dk}, dv={dv}")
    check_divides("Hk (key heads)", Hk, "Hv (value heads)", Hv)
    for name, t in gates.items():
        check_tensor(name, t, shape=(Hv,) if name in ("A_log", "dt_bias") else (T, Hv), dtypes=DTYPES)
        if fused and name in ("a", "b"):
            if t.dtype != q.dtype:
                raise ValueError(f"{name} must have q's dtype {q.dtype} (the projection's output), got {t.dtype}")
            if not t.is_contiguous():
                raise ValueError(f"{name} must be contiguous, got strides {t.stride()}")
    for name, t in (("q", q), ("k", k), ("v", v)):
        _check_rows(name, t)
    check_tensor("cu_seqlens", cu_seqlens, ndim=1, dtypes=(torch.int32, torch.int64))
    if cu_seqlens.numel() < 2:
        raise ValueError(f"cu_seqlens must have at least 2 entries (one segment), got {cu_seqlens.numel()}")
    n = cu_seqlens.numel() - 1
    out, final_state = split_out_pair(out, final_state)
    for name, t in (("initial_state", initial_state), ("final_state", final_state)):
        if t is not None:
            check_input(name, t, shape=(n, Hv, D, D), dtypes=(torch.float32,))
    if out is not None:
        check_input("out", out, shape=(T, Hv, D), dtypes=(v.dtype,))
    for name, t in (("initial_state", initial_state), ("final_state", final_state), ("out", out)):
        if t is not None and t.data_ptr() % 16:
            raise ValueError(f"{name} must be 16-byte aligned (got a view at storage offset {t.storage_offset()})")
    if scale is None:
        scale = dk ** -0.5
    elif isinstance(scale, bool) or not isinstance(scale, (int, float)) or not math.isfinite(scale):
        raise ValueError(f"scale must be a finite number or None, got {scale!r}")
    if not isinstance(use_qk_l2norm, bool):
        raise TypeError(f"use_qk_l2norm must be a bool, got {type(use_qk_l2norm).__name__}")
    if max_seqlen is not None and (isinstance(max_seqlen, bool) or not isinstance(max_seqlen, int)
                                   or max_seqlen < 0):
        raise ValueError(f"max_seqlen must be a non-negative int or None, got {max_seqlen!r}")
    if validate:  # reads cu_seqlens on the host: pass validate=False inside a CUDA graph
        check_cu_seqlens(cu_seqlens, T)
        if max_seqlen is not None:
            longest = int((cu_seqlens[1:] - cu_seqlens[:-1]).max())
            if max_seqlen < longest:
                raise ValueError(f"max_seqlen={max_seqlen} is shorter than the longest sequence ({longest} tokens)")
    device = check_cuda(q=q, k=k, v=v, **gates, cu_seqlens=cu_seqlens, initial_state=initial_state,
                        out=out, final_state=final_state)
    return n, Hk, Hv, float(scale), device, out, final_state


def _f32(t: torch.Tensor) -> torch.Tensor:
    return t if t.dtype == torch.float32 and t.is_contiguous() else t.float().contiguous()


def gated_delta_rule(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, g: torch.Tensor, beta: torch.Tensor,
                     cu_seqlens: torch.Tensor, initial_state: torch.Tensor | None = None,
                     scale: float | None = None, use_qk_l2norm: bool = False, *, out=None,
                     final_state: torch.Tensor | None = None, max_seqlen: int | None = None,
                     validate: bool = True):
    """reference.gated_delta_rule on the GPU: returns (o [T, Hv, 128] in v.dtype, final_state [n, Hv, 128, 128]
    fp32). out= is the pair (o, final_state) (either None); final_state= alone may be initial_state (in place).
    See the module docstring for the layouts and the two paths."""
    n, Hk, Hv, scale, device, out, final_state = _validate(q, k, v, dict(g=g, beta=beta), cu_seqlens, initial_state,
                                                           scale, use_qk_l2norm, out, final_state, max_seqlen,
                                                           validate)
    return _run(q, k, v, (_f32(g), _f32(beta), 0, 0, 0, 0), False, cu_seqlens, initial_state, scale,
                use_qk_l2norm, out, final_state, max_seqlen, n, Hk, Hv, device)


def fused_gated_delta_rule(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, a: torch.Tensor, b: torch.Tensor,
                           A_log: torch.Tensor, dt_bias: torch.Tensor, cu_seqlens: torch.Tensor,
                           initial_state: torch.Tensor | None = None, scale: float | None = None,
                           use_qk_l2norm: bool = False, *, out=None, final_state: torch.Tensor | None = None,
                           max_seqlen: int | None = None, validate: bool = True):
    """reference.fused_gated_delta_rule on the GPU: the gates g = -exp(A_log) softplus(a + dt_bias) and
    beta = sigmoid(b) computed in the kernels as they load a and b ([T, Hv] contiguous, q's dtype: the raw
    projection outputs); A_log and dt_bias [Hv] (copied to fp32 if they are not). Otherwise gated_delta_rule."""
    n, Hk, Hv, scale, device, out, final_state = _validate(q, k, v, dict(a=a, b=b, A_log=A_log, dt_bias=dt_bias),
                                                           cu_seqlens, initial_state, scale, use_qk_l2norm, out,
                                                           final_state, max_seqlen, validate, fused=True)
    return _run(q, k, v, (0, 0, a, b, _f32(A_log), _f32(dt_bias)), True, cu_seqlens, initial_state, scale,
                use_qk_l2norm, out, final_state, max_seqlen, n, Hk, Hv, device)


def _ptr(x) -> int:
    return x if isinstance(x, int) else x.data_ptr()


def _run(q, k, v, gates, gate: bool, cu_seqlens, initial_state, scale, use_qk_l2norm, out, final_state,
         max_seqlen, n, Hk, Hv, device):
    T = q.shape[0]
    if out is None:
        out = torch.empty(T, Hv, D, dtype=v.dtype, device=v.device)
    if final_state is None:
        final_state = torch.empty(n, Hv, D, D, dtype=torch.float32, device=v.device)
    cu = cu_seqlens if cu_seqlens.dtype == torch.int32 else cu_seqlens.to(torch.int32)
    gate_ptrs = tuple(_ptr(x) for x in gates)
    h0 = 0 if initial_state is None else initial_state.data_ptr()
    sms, smem_limit = _device_info(device)
    recurrent = (q.dtype == torch.float32 or
                 (max_seqlen <= RECURRENT_MAX_SEQLEN if max_seqlen is not None else T <= 2 * n))
    if recurrent:
        bv = pick_recurrent_bv(n, Hv, sms)
        # every sequence one token long (T == n, max_seqlen 1): token s is row s, cu_seqlens is not read
        direct = max_seqlen == 1 and T == n
        args = (q.data_ptr(), k.data_ptr(), v.data_ptr(), i64(q.stride(0)), i64(k.stride(0)), i64(v.stride(0)),
                *gate_ptrs, cu.data_ptr(), i32(Hk), i32(Hv), f32(scale), i32(use_qk_l2norm),
                h0, final_state.data_ptr(), out.data_ptr(), i64(out.stride(0)), i32(direct))
        warp = isinstance(bv, tuple)
        _launch(device, _rec_expr(q.dtype, bv, gate), (D // (bv[0] if warp else bv), Hv, n), 0, *args,
                threads=32 if warp else 128, pdl=DECODE_PDL and warp)
        return out, final_state
    slots = (T + n * (BT - 1)) // BT  # an upper bound on the chunk count that needs no read of cu_seqlens
    if slots > 65535:
        raise ValueError(f"too many chunks for one call ({slots} > 65535): split the batch")
    w = torch.empty(T, Hv, D, dtype=q.dtype, device=q.device)
    u = torch.empty_like(w)
    aqk = torch.empty(T, Hv, BT, dtype=q.dtype, device=q.device)
    gc = torch.empty(Hv, T, dtype=torch.float32, device=q.device)  # head-major
    rq, rk = torch.empty_like(gc), torch.empty_like(gc)
    if slots > 0:
        _launch(device, _prep_expr(q.dtype, gate, PREP_COMPACT), (Hv, slots, 1), prep_smem_bytes(PREP_COMPACT),
                q.data_ptr(), k.data_ptr(), v.data_ptr(), *gate_ptrs, cu.data_ptr(), i32(n),
                i64(q.stride(0)), i64(k.stride(0)), i64(v.stride(0)), i32(Hk), i32(Hv), f32(scale),
                i32(use_qk_l2norm), w.data_ptr(), u.data_ptr(), aqk.data_ptr(), gc.data_ptr(), rq.data_ptr(),
                rk.data_ptr(), i32(T))
    args = (q.data_ptr(), k.data_ptr(), i64(q.stride(0)), i64(k.stride(0)), i32(Hk), i32(Hv),
            w.data_ptr(), u.data_ptr(), aqk.data_ptr(), gc.data_ptr(), rq.data_ptr(), rk.data_ptr(), cu.data_ptr(),
            h0, final_state.data_ptr(), out.data_ptr(), i64(out.stride(0)), i32(T))
    if STATE_KERNEL == "t" or (STATE_KERNEL == "auto" and _t_wins(n, Hv, sms, smem_limit)):
        build, ns = pick_state_t(n, Hv, sms, smem_limit)
        _launch(device, _state_t_expr(q.dtype, build, ns), (D // (16 * build[0]), Hv, n),
                state_t_smem_bytes(build, ns), *args, threads=32 * build[0] * build[1])
        return out, final_state
    bv = pick_state_bv(n, Hv, sms, smem_limit)
    ns = pick_state_stages(bv, smem_limit)
    cl = STATE_CLUSTER_BY_BV.get(bv, 1) if STATE_CLUSTER is None else STATE_CLUSTER
    if cl > 1 and (D // bv) % cl == 0 and _device.is_hopper(device):
        ns = _state_mc_ns(bv)
        kern = _rt_launch.get_kernel("deltanet.cu", _state_mc_expr(q.dtype, bv, ns, cl), MC_EXPRS, arch="sm_90a",
                                     device=device)
        _rt_launch.launch(kern, (D // bv, Hv, n), (256, 1, 1), *args, shared_mem=state_smem_bytes(bv, ns) + 64)
        return out, final_state
    _launch(device, _state_expr(q.dtype, bv, ns), (D // bv, Hv, n), state_smem_bytes(bv, ns), *args, threads=256)
    return out, final_state
