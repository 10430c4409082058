"""Mixture of experts on the GPU (NVRTC, kernels/cuda/moe.cu; grouped GEMMs through torch._grouped_mm), with the
signatures and meaning of reference.moe:

    weights, experts = moe_topk(router_logits, k)                  # one warp per token, fp32 softmax, top-k
    out = moe_mlp(x, gate_up, down, weights, experts)              # routed SwiGLU experts, weighted combine

moe_mlp picks one of three paths from host sizes only (so one token count always runs the same kernels, and a CUDA
graph can capture it):
  "decode"   T k <= 128 slots: each unit is one routed expert (the first slot naming it) with all the slots that
             share it, reading only the routed experts' gate/up rows, once; silu * up in the same kernel; then one
             kernel for down + the weighted combine (reads only the routed experts' down rows). 2 launches.
             Up to 8 tokens in fp16/bf16 with H, I, S multiples of 32 (MMA): gate_up_mma_kernel +
             down_mma_kernel (every unit's rows streamed into tensor-core tiles of all the tokens; docs/moe.md).
             Else on sm_90 with 16-byte rows (STREAM): gate_up_stream_kernel + down_stream_kernel (cp.async.bulk rings,
             work items spread evenly over every SM; docs/moe.md). Else gate/up: from SPLIT_MIN_TOKENS tokens
             gate_up_split_kernel (4 row pairs a step, H split over the CTA's warps, the next row blocks prefetched
             into L2; the shared expert's loads start before the router is done), below it gate_up_kernel (a warp
             per row pair); down: down_kernel.
  "grouped"  bf16 on a card with torch._grouped_mm (sm_90): routing metadata on the GPU (one CTA: counts,
             offsets, a stable permutation grouping the slots by expert), gather, grouped GEMM gate/up,
             silu_mul_fused, grouped GEMM down, combine back to token order. No host synchronisation.
  "routed"   any dtype: the routing metadata, then the decode kernels driven by it (an expert's slots chunked
             through shared memory; the fallback for fp16/fp32 and for cards without the grouped GEMM).
`validate=True` (the default) reads the experts back once to check they lie in [0, E); it is skipped while a
CUDA graph is being captured, and `validate=False` skips it on hot paths. Slots with an expert outside [0, E)
contribute nothing when not validated.
"""

from __future__ import annotations

import torch

from reference._checks import check_float, check_tensor
from reference.moe import check_mlp_shapes, check_shared

from .runtime.checks import KERNEL_DTYPES, check_cuda, check_input, check_out, check_same_dtype
from .runtime import device as _device, launch as _rt_launch
from .runtime.dispatch import CTYPES, NvrtcSource, ceil_div
from .runtime.nvrtc import i32

__all__ = ["moe_topk", "moe_router_topk", "moe_mlp", "moe_routing", "PATHS"]

PATHS = ("decode", "grouped", "routed")
MAX_EXPERTS = 512          # moe_topk: 16 logits per lane
MAX_TOPK = 32              # moe_topk: one lane per kept expert
DECODE_MAX_SLOTS = 128     # decode path: T * k (the kernel's slot list)
DECODE_PICK_SLOTS = DECODE_MAX_SLOTS  # moe_mlp picks the decode path up to this many slots (else grouped/routed)
_WARPS, _PAIRS = 8, 2      # moe.cu WARPS, PAIRS
_ROUTE_THREADS = 1024
_SMEM = 47 * 1024          # dynamic shared memory of the down kernel's act rows (48 KB default, less its static)
_XS_SMEM = 40 * 1024       # the gate/up kernel's x rows
_NPL = (4, 16)             # logits per lane of the top-k warp: E <= 128, E <= 512 (fewer builds: faster compiles)


def _vec(dtype) -> int:
    return 16 // dtype.itemsize


def _topk_expr(dtype, npl):
    return f"moe::topk_kernel<{CTYPES[dtype]}, {npl}>"


def _gate_up_expr(dtype, vec, routed, mmax):
    return f"moe::gate_up_kernel<{CTYPES[dtype]}, {vec}, {'true' if routed else 'false'}, {mmax}>"


def _split_expr(dtype, vec, mt, nq):
    return f"moe::gate_up_split_kernel<{CTYPES[dtype]}, {vec}, {_SPLIT_R}, {mt}, {nq}>"


_SPLIT_R = 4               # gate_up_split_kernel: gate/up row pairs per CTA
# the split build per (vector width, tokens per reduction, vectors per thread and row in flight)
# (two vectors per thread and row in flight spill at the 128 registers of two CTAs per SM: H is walked in passes)
_SPLIT_BUILDS = lambda v: [(w, m, 1) for w in (v, 1) for m in (1, 2)]


def _down_expr(dtype, vec):
    return f"moe::down_kernel<{CTYPES[dtype]}, {vec}>"


def _stream_expr(kind, dtype):
    return f"moe::{kind}_stream_kernel<{CTYPES[dtype]}, {_vec(dtype)}>"


def _mma_expr(kind, dtype, split=1):
    u = MMA_GU_U if kind == "gate_up" else MMA_DOWN_U
    return f"moe::{kind}_mma_kernel<{CTYPES[dtype]}, {u}" + (f", {split}>" if kind == "down" else ">")


def _gather_expr(dtype, vec):
    return f"moe::gather_kernel<{CTYPES[dtype]}, {vec}>"


def _combine_expr(dtype, vec):
    return f"moe::combine_kernel<{CTYPES[dtype]}, {vec}>"


def _router_expr(dtype, vec, tmax, npl):
    return f"moe::router_topk_kernel<{CTYPES[dtype]}, {vec}, {tmax}, {npl}>"


_ROUTER_TMAX = 8           # tokens per pass of the fused router (fewer are predicated off)
ROUTER_MAX_TOKENS = 64     # the fused router is for decode: one CTA per 8 experts reads every token's row


# The decode path for up to MMA_MAX_TOKENS tokens on the tensor cores (moe.cu gate_up_mma_kernel /
# down_mma_kernel: each unit's rows streamed with 16-byte loads into mma.sync tiles of all the tokens, as gemm.cu's
# skinny GEMM does for a dense weight) where it applies (fp16/bf16, H, I, S multiples of 32, 16-byte aligned);
# it comes before the streaming kernels. A module switch so the benchmark can time both.
MMA = True
MMA_MAX_TOKENS = 8  # moe.cu MMA_TOKENS
# The builds: k steps a warp has in flight (gate/up: two 16-row tiles, down: one), and the down kernel's K split over
# a cluster of CTAs (sm_90; one CTA before it). H200, 35B-A3B layer at 1 / 8 tokens
# (moe_mma_ab_builds-H200-2026-12-04.json): 30.3 / 123.9 us as built, 31.6 / 135.3 with the down kernel unsplit;
# gate/up with 2 steps (3 CTAs an SM) or split over a cluster pair 33-35 / 137-146 us.
MMA_GU_U, MMA_DOWN_U, MMA_DOWN_SPLIT = 4, 8, 2
# The weight loads of the gate/up and of the down kernel carry the L2 evict_first policy (read once). H200, 35B-A3B
# layer at 1 / 8 tokens (moe_mma_ab_evict_first-H200-2026-12-04.json): 28.7 / 123.6 us against 29.9 / 128.3 without.
MMA_GU_EVICT_FIRST, MMA_DOWN_EVICT_FIRST = True, True


def _dtype_exprs(dt) -> tuple[str, ...]:
    out = [_topk_expr(dt, n) for n in _NPL] + ["moe::route_kernel"]
    out += [_router_expr(dt, v, _ROUTER_TMAX, n) for v in (_vec(dt), 1) for n in _NPL]
    # decode: the 1-, 2- and 8-token builds; routed (more tokens, or forced): the 8-token build
    out += [_gate_up_expr(dt, v, r, m) for v in (_vec(dt), 1) for r, m in ((False, 1), (False, 2), (False, 8),
                                                                           (True, 8))]
    out += [_split_expr(dt, *b) for b in _SPLIT_BUILDS(_vec(dt))]
    out += [_down_expr(dt, v) for v in (_vec(dt), 1)]
    out += [_stream_expr(kind, dt) for kind in ("gate_up", "down")]
    if dt != torch.float32:
        out += [_mma_expr("gate_up", dt), _mma_expr("down", dt, 1), _mma_expr("down", dt, MMA_DOWN_SPLIT)]
    if dt == torch.bfloat16:
        out += [f(dt, v) for f in (_gather_expr, _combine_expr) for v in (8, 1)]
    return tuple(out)


# Compiled per dtype (one NVRTC run each, on first use): a bf16 model never waits for the fp32/fp16 builds.
_GROUPS = {dt: _dtype_exprs(dt) for dt in KERNEL_DTYPES}
SOURCE = NvrtcSource("moe.cu", tuple(dict.fromkeys(e for g in _GROUPS.values() for e in g)))


# The decode path's gate/up and down kernels as programmatic dependent launches (sm_90): each is scheduled while
# the previous kernel runs (the down kernel prefetches its rows into L2 meanwhile). A module switch so the
# benchmark can time both.
PDL = True
# moe_topk lets the next kernel (the decode gate/up kernel) be scheduled before its own wait on the router GEMM,
# so the gate/up kernel's loads that need no routing (the shared expert's rows) overlap the router GEMM; the
# gate/up kernel still waits for the top-k grid to finish before it reads the routing. A module switch for the A/B.
TOPK_EARLY = True
# The decode path's gate/up kernel: True = gate_up_split_kernel (the CTA's rows split over H across its warps, one
# memory round trip per CTA, the shared expert streaming while the router runs); False = gate_up_kernel (a warp per
# row pair, rows walked in turn). A module switch so the benchmark can time both.
SPLIT = True
SPLIT_MIN_TOKENS = 2  # ... from this many tokens (H200, round s2r2: batch 1 44.5 us per layer on gate_up_kernel)
SPLIT_WAVES = 1.0  # gate_up_split_kernel's grid: this many waves of 2 CTAs an SM over the working units


# The decode path on the streaming kernels (moe.cu gate_up_stream_kernel / down_stream_kernel: cp.async.bulk rings,
# every distinct expert's rows read once by every SM at once) where they apply (sm_90, rows of 16-byte multiples,
# E <= 512); False = the kernels above. A module switch so the benchmark can time both.
# (H200, round s3r2, 35B-A3B layer: 1 token 39.8 us vs 40.5 on the older kernels, 8 tokens 170.9 vs 357.0 us; the
# 35B-A3B decode step at batch 1: 316 vs 310 tok/s)
STREAM = True
# (H200, round s3r1, 35B-A3B: 32 KB stages in a 64 KB ring beat 8 and 16 KB stages and 48/96 KB rings at 1 and 8
# tokens; 8 down warps beat 16 at 8 tokens, 157 vs 207 us a layer)
STREAM_GU_STAGE = 32 * 1024   # gate/up: bytes of one stage (2R rows of H; R = 4, 2 or 1 row pairs)
STREAM_GU_RING = 64 * 1024    # gate/up: bytes of a CTA's ring (2 CTAs an SM; the rest lets down CTAs in early)
STREAM_XS_MAX = 32 * 1024     # gate/up: x staged in shared memory up to this many bytes (T H), else read from L1/L2
STREAM_DOWN_SMEM = 100 * 1024  # down: a CTA's stages (warps x stages per warp x RD rows)
STREAM_DOWN_WARPS = 8  # down: warps a CTA at most (one per unit below it)
STREAM_MIN_TOKENS = 1  # ... from this many tokens
# moe.cu STREAM_NO_HINT (1: bulk copies without the L2 evict-first hint), STREAM_NO_LOOKAHEAD (2: no L2 prefetch of
# the items one ring ahead; s3r2: the lookahead cost 1.0 us at 1 token, 14.7 us at 8)
STREAM_FLAGS = 2
STREAM_PREFETCH = True  # gate/up prefetches the shared expert's down rows into L2 before its wait on the routing
_STREAM_MAXS, _STREAM_MAXE, _STREAM_RD, _STREAM_D, _STREAM_DW = 128, 512, 8, 4, 16  # moe.cu STREAM_*


def _launch(device: int, dtype, expr: str, grid, block, *args, shared_mem: int = 0, pdl: bool = False) -> None:
    _rt_launch.launch(_rt_launch.get_kernel(SOURCE.file, expr, _GROUPS[dtype], device=device), grid, block, *args,
                      shared_mem=shared_mem, pdl=pdl)


# ------------------------------------------------------------------------------------------------ moe_topk
def _check_k(k, E: int) -> None:
    if isinstance(k, bool) or not isinstance(k, int):
        raise TypeError(f"k must be an int, got {type(k).__name__}")
    if not 1 <= k <= E:
        raise ValueError(f"k must lie in [1, E={E}], got {k}")


def moe_topk(router_logits: torch.Tensor, k: int, *, out=None) -> tuple[torch.Tensor, torch.Tensor]:
    """reference.moe_topk: softmax over E <= 512 experts (fp32), the k <= 32 largest ranked by logit (equal logits:
    lower expert index first), weights renormalised over the k. router_logits [T, E] fp32/fp16/bf16, contiguous.
    Returns (weights [T, k] fp32, experts [T, k] int64); out=(weights, experts) writes into those."""
    check_input("router_logits", router_logits, ndim=2)
    T, E = router_logits.shape
    _check_k(k, E)
    if E > MAX_EXPERTS:
        raise ValueError(f"router_logits has E={E} experts; the kernel takes at most {MAX_EXPERTS}")
    if k > MAX_TOPK:
        raise ValueError(f"k={k}: the kernel keeps at most {MAX_TOPK} experts per token")
    w, e = _topk_outs(T, k, router_logits.device, out)
    device = check_cuda(router_logits=router_logits, weights_out=w, experts_out=e)
    if T == 0:
        return w, e
    npl = next(n for n in _NPL if 32 * n >= E)
    # a programmatic launch (sm_90): scheduled while the router GEMM finishes; the kernel waits for it first
    _launch(device, router_logits.dtype, _topk_expr(router_logits.dtype, npl), (ceil_div(T, 4), 1, 1),
            (128, 1, 1),
            router_logits.data_ptr(), w.data_ptr(), e.data_ptr(), i32(T), i32(E), i32(k), i32(TOPK_EARLY), pdl=PDL)
    return w, e


def moe_router_topk(x: torch.Tensor, router_weight: torch.Tensor, k: int, *, out=None):
    """reference.moe_router_topk: moe_topk(x @ router_weight^T, k) in one launch, the logits in fp32 (never
    rounded to x.dtype). x [T, H] and router_weight [E, H] (mlp.gate.weight) of one dtype, contiguous; T <= 64
    (decode: one CTA per 8 experts reads every token's row; prefill: F.linear + moe_topk). Returns (weights [T, k]
    fp32, experts [T, k] int64); out=(weights, experts) writes into those."""
    check_input("x", x, ndim=2)
    check_input("router_weight", router_weight, ndim=2)
    check_same_dtype(x.dtype, router_weight=router_weight)
    T, H = x.shape
    E = router_weight.shape[0]
    check_tensor("router_weight", router_weight, shape=(E, H))
    _check_k(k, E)
    if E > MAX_EXPERTS:
        raise ValueError(f"router_weight has E={E} experts; the kernel takes at most {MAX_EXPERTS}")
    if k > MAX_TOPK:
        raise ValueError(f"k={k}: the kernel keeps at most {MAX_TOPK} experts per token")
    if T > ROUTER_MAX_TOKENS:
        raise ValueError(f"moe_router_topk takes at most {ROUTER_MAX_TOKENS} tokens (decode), got {T}; use "
                         f"moe_topk(F.linear(x, router_weight), k) for prefill")
    w, e = _topk_outs(T, k, x.device, out)
    device = check_cuda(x=x, router_weight=router_weight, weights_out=w, experts_out=e)
    if T == 0:
        return w, e
    vec = _vec(x.dtype)
    vec = vec if H % vec == 0 and _aligned(x, router_weight) else 1
    scratch = torch.empty(T * E + 1, dtype=torch.float32, device=x.device)
    ticket = _ticket(x.device)
    npl = next(n for n in _NPL if 32 * n >= E)
    _launch(device, x.dtype, _router_expr(x.dtype, vec, _ROUTER_TMAX, npl), (ceil_div(E, _WARPS), 1, 1), (_WARPS * 32, 1, 1),
            x.data_ptr(), router_weight.data_ptr(), i32(T), i32(H), i32(E), i32(k), scratch.data_ptr(),
            ticket.data_ptr(), w.data_ptr(), e.data_ptr())
    return w, e


_TICKETS: dict = {}


def _ticket(device) -> torch.Tensor:
    """The fused router's CTA counter: one zeroed int32 per device, kept (the kernel's last CTA resets it to 0, so
    no memset node runs per call); a call that first meets the device inside a CUDA-graph capture gets its own
    zeroed counter (captured with it). One router call at a time per device (the model's single stream)."""
    t = _TICKETS.get(device)
    if t is None:
        t = torch.zeros(1, dtype=torch.int32, device=device)
        if not _capturing():
            _TICKETS[device] = t
    return t


def _topk_outs(T, k, device, out):
    if out is None:
        return (torch.empty(T, k, dtype=torch.float32, device=device),
                torch.empty(T, k, dtype=torch.int64, device=device))
    if not (isinstance(out, (tuple, list)) and len(out) == 2):
        raise ValueError("out must be a (weights, experts) pair of tensors")
    return (check_out("out[0] (weights)", out[0], (T, k), torch.float32),
            check_out("out[1] (experts)", out[1], (T, k), torch.int64))


# ------------------------------------------------------------------------------------------------ routing
def moe_routing(experts: torch.Tensor, num_experts: int, *, _dtype=torch.bfloat16):
    """Routing metadata of experts [T, k] int64 (on the GPU, one CTA, no host synchronisation):
    (offsets [E+1] int32: expert e's slots are positions offsets[e]:offsets[e+1]; perm [T k] int32: the slot
    (t k + j) at each position, stable (slot order within an expert); inv [T k] int32: the position of each slot
    (-1 for an expert outside [0, E)); active [E] int32: the non-empty experts ascending, then -1).
    _dtype: which per-dtype build to load the kernel from (the caller's, so no other dtype's build is compiled)."""
    check_input("experts", experts, ndim=2, dtypes=(torch.int64,))
    E = num_experts
    if isinstance(E, bool) or not isinstance(E, int) or not 1 <= E <= _ROUTE_THREADS:
        raise ValueError(f"num_experts must be an int in [1, {_ROUTE_THREADS}], got {E!r}")
    device = check_cuda(experts=experts)
    n = experts.numel()
    dev = experts.device
    offsets = torch.empty(E + 1, dtype=torch.int32, device=dev)
    perm = torch.empty(n, dtype=torch.int32, device=dev)
    inv = torch.empty(n, dtype=torch.int32, device=dev)
    active = torch.empty(E, dtype=torch.int32, device=dev)
    if n >= SORT_ROUTE_MIN:
        return _routing_by_sort(experts.reshape(-1), E)
    smem = ((_ROUTE_THREADS // 32) * E + 2 * E + 65) * 4
    _launch(device, _dtype, "moe::route_kernel", (1, 1, 1), (_ROUTE_THREADS, 1, 1), experts.data_ptr(), i32(n),
                  i32(E), offsets.data_ptr(), perm.data_ptr(), inv.data_ptr(), active.data_ptr(),
                  shared_mem=smem)
    return offsets, perm, inv, active


# From this many slots the routing metadata comes from a stable device radix sort (torch.sort: many CTAs) instead
# of the one-CTA counting sort of route_kernel, whose serial passes cost ~150 us at 8192 tokens x top-8 (H200).
SORT_ROUTE_MIN = 16384


def _routing_by_sort(flat: torch.Tensor, E: int):
    """moe_routing's outputs from torch ops with no host synchronisation (capturable): experts outside [0, E) get
    the key E, so they sort after every valid slot, take no part in the offsets and get inv = -1."""
    n, dev = flat.numel(), flat.device
    key = torch.where((flat >= 0) & (flat < E), flat, E)
    sorted_key, order = torch.sort(key, stable=True)
    bounds = torch.arange(E + 1, dtype=key.dtype, device=dev)
    offsets = torch.searchsorted(sorted_key, bounds).to(torch.int32)  # first position of each expert, then total
    perm = order.to(torch.int32)
    pos = torch.arange(n, dtype=torch.int32, device=dev)
    inv = torch.empty(n, dtype=torch.int32, device=dev).scatter_(0, order, torch.where(sorted_key < E, pos, -1))
    counts = offsets[1:] - offsets[:-1]
    ids = torch.arange(E, dtype=torch.int32, device=dev)
    active = torch.sort(torch.where(counts > 0, ids, E)).values  # the non-empty experts ascending, then E -> -1
    active = torch.where(active < E, active, -1)
    return offsets, perm, inv, active


# ------------------------------------------------------------------------------------------------ moe_mlp
def grouped_mm_available(device) -> bool:
    """torch._grouped_mm runs on this card (cuBLAS/CUTLASS grouped GEMM: sm_90 in torch 2.11)."""
    return hasattr(torch, "_grouped_mm") and torch.cuda.get_device_capability(device) == (9, 0)


def grouped_ok(x, gate_up, down) -> bool:
    """The grouped path applies: bf16, torch._grouped_mm on this card, 16-byte row strides (H, I multiples of 8)
    and 16-byte aligned operands."""
    H, I = x.shape[1], down.shape[2]
    return (x.dtype == torch.bfloat16 and H % 8 == 0 and I % 8 == 0 and _aligned(x, gate_up, down)
            and grouped_mm_available(x.device))


def pick_path(T: int, k: int, x, gate_up, down) -> str:
    """The path moe_mlp takes (see the module docstring): from host sizes, the dtype, alignment and the card."""
    if T * k <= DECODE_PICK_SLOTS:
        return "decode"
    if grouped_ok(x, gate_up, down):
        return "grouped"
    return "routed"


def _check_mlp(x, gate_up, down, weights, experts, out):
    check_input("x", x, ndim=2)
    check_input("gate_up", gate_up, ndim=3)
    check_input("down", down, ndim=3)
    check_same_dtype(x.dtype, gate_up=gate_up, down=down)
    check_float("weights", weights, ndim=2)
    check_tensor("experts", experts, ndim=2, dtypes=(torch.int32, torch.int64))
    T, H, E, I, k = check_mlp_shapes(x, gate_up, down, weights, experts)
    if k > MAX_TOPK:
        raise ValueError(f"weights/experts have k={k} experts per token; the kernels take at most {MAX_TOPK}")
    if T and k == 0:
        raise ValueError("weights/experts must have at least one expert per token (k >= 1)")
    if k * I * 4 > _SMEM:
        raise ValueError(f"k * I = {k * I} is too large for the down kernel's shared memory (at most {_SMEM // 4})")
    if H * x.element_size() > _XS_SMEM:
        raise ValueError(f"hidden size {H} is too large for the kernel's shared memory (at most "
                         f"{_XS_SMEM // x.element_size()} for {x.dtype})")
    if out is not None:
        check_out("out", out, (T, H), x.dtype)
    return T, H, E, I, k


def _row_blocks(blocks: int, most: int) -> int:
    """CTAs per unit along the rows: at most `most` (at least 1) and at most `blocks`, each CTA walking the same
    number of row blocks (the last CTA possibly fewer)."""
    per = ceil_div(blocks, max(1, min(blocks, most)))
    return ceil_div(blocks, per)


def _capturing() -> bool:
    return torch.cuda.is_available() and torch.cuda.is_current_stream_capturing()


def _aligned(*ts) -> bool:
    return all(t.data_ptr() % 16 == 0 for t in ts)


def moe_mlp(x: torch.Tensor, gate_up: torch.Tensor, down: torch.Tensor, weights: torch.Tensor,
            experts: torch.Tensor, *, shared_gate: torch.Tensor | None = None, shared_up: torch.Tensor | None = None,
            shared_down: torch.Tensor | None = None, shared_expert_gate: torch.Tensor | None = None,
            out: torch.Tensor | None = None, validate: bool = True, path: str | None = None) -> torch.Tensor:
    """reference.moe_mlp: out[t] = sum_j weights[t, j] * Expert_{experts[t, j]}(x[t]), Expert_e(x) =
    down[e] @ (silu(G_e x) * (U_e x)), gate_up [E, 2I, H] = [G_e; U_e], down [E, H, I]; with shared_gate/up
    [S, H], shared_down [H, S] and shared_expert_gate [1, H] (all or none) + the sigmoid-gated shared expert
    (fused: the decode kernels take it as one more expert, the grouped path adds it in the combine).
    x, gate_up, down (and the shared weights): one dtype (fp32/fp16/bf16), contiguous; weights [T, k] float;
    experts [T, k] int32/int64.
    path: None (picked from T k, the dtype and the card), "decode", "grouped" (bf16, sm_90) or "routed".
    Returns [T, H] in x.dtype (into `out` if given)."""
    T, H, E, I, k = _check_mlp(x, gate_up, down, weights, experts, out)
    S = check_shared(x, shared_gate, shared_up, shared_down, shared_expert_gate)
    sh = (shared_gate, shared_up, shared_down, shared_expert_gate)
    if S is not None:
        for name, t in zip(("shared_gate", "shared_up", "shared_down", "shared_expert_gate"), sh):
            check_input(name, t, shape=tuple(t.shape))
        check_same_dtype(x.dtype, shared_gate=shared_gate, shared_up=shared_up, shared_down=shared_down,
                         shared_expert_gate=shared_expert_gate)
        if (k * I + S) * 4 > _SMEM:
            raise ValueError(f"k * I + S = {k * I + S} is too large for the down kernel's shared memory (at most "
                             f"{_SMEM // 4})")
    if path is not None and path not in PATHS:
        raise ValueError(f"path must be None or one of {list(PATHS)}, got {path!r}")
    if path == "decode" and T * k > DECODE_MAX_SLOTS:
        raise ValueError(f"path 'decode' takes at most {DECODE_MAX_SLOTS} slots (T k), got {T * k}")
    if path == "grouped" and not (x.dtype == torch.bfloat16 and H % 8 == 0 and I % 8 == 0):
        raise ValueError(f"path 'grouped' needs bf16 inputs with H and I multiples of 8, got {x.dtype}, H={H}, "
                         f"I={I}")
    if validate and experts.numel() and not _capturing():
        lo, hi = int(experts.min()), int(experts.max())  # one read-back; validate=False on hot paths
        if lo < 0 or hi >= E:
            raise ValueError(f"experts must lie in [0, E={E}), got min {lo}, max {hi}")
    device = check_cuda(x=x, gate_up=gate_up, down=down, weights=weights, experts=experts, out=out,
                        shared_gate=shared_gate, shared_up=shared_up, shared_down=shared_down,
                        shared_expert_gate=shared_expert_gate)
    if path is None:
        path = pick_path(T, k, x, gate_up, down)
    elif path == "grouped" and not grouped_ok(x, gate_up, down):
        raise ValueError("path 'grouped' needs torch._grouped_mm on an sm_90 card and 16-byte aligned x, gate_up, "
                         "down")
    y = torch.empty(T, H, dtype=x.dtype, device=x.device) if out is None else out
    if T == 0:
        return y
    if experts.dtype != torch.int64:
        experts = experts.to(torch.int64)
    if weights.dtype != torch.float32:
        weights = weights.float()
    experts, weights = experts.contiguous(), weights.contiguous()
    if path == "grouped":
        return _grouped(x, gate_up, down, weights, experts, y, T, H, E, I, k, device, sh)

    vec = _vec(x.dtype)
    routed = path == "routed"
    if not routed and _mma_ok(x, gate_up, down, sh, T, k, E, H, I, S):
        _mma(x, gate_up, down, weights, experts, sh, y, T, H, E, I, k, S or 0, device)
        return y
    n_slots = T * k
    act = torch.empty(n_slots, I, dtype=torch.float32, device=x.device)
    # x chunk in shared memory: 1, 2, 4 or 8 rows (the kernel's chunk variants read up to the next power of two),
    # within the default limit beside the kernel's static shared memory
    fit = _XS_SMEM // (H * x.element_size())
    mt = next(m for m in (8, 4, 2, 1) if m <= max(1, fit))
    # batch 1: an expert holds one token unless the token names it twice (then chunks of one): the one-token build;
    # a few tokens: the two-token build (an expert with more tokens takes them in chunks of two)
    mmax = 8 if routed else 1 if T == 1 else 2 if T <= 16 else 8
    mt = min(mt, mmax)
    # one wave: as many CTAs per unit as fit the card at once (the 1- and 2-token builds and the down kernel: two
    # per SM; the 8-token build: one), so no CTA waits for a second wave (at a few tokens, the tail of a second wave
    # runs with too few loads in flight to keep the memory busy)
    sms = _device.sm_count(device)
    resident = (2 if mmax <= 2 else 1) * sms
    if routed:
        offsets, perm, _, active = moe_routing(experts, E, _dtype=x.dtype)
        units = min(n_slots, E)
        ptrs = (perm.data_ptr(), offsets.data_ptr(), active.data_ptr())
    else:
        units = n_slots
        ptrs = (0, 0, 0)
    has_sh = S is not None
    if has_sh:
        act_sh = torch.empty(T, S, dtype=torch.float32, device=x.device)
        sh_ptrs = (shared_gate.data_ptr(), shared_up.data_ptr(), i32(S), i32(T), act_sh.data_ptr())
    else:
        sh_ptrs = (0, 0, i32(0), i32(T), 0)
    if not routed and _stream_ok(x, gate_up, down, sh, T, k, E, H, I, S, device):
        _stream(x, gate_up, down, weights, experts, sh, act, act_sh if has_sh else None, y, T, H, E, I, k, S or 0,
                device, sms)
        return y
    gv = vec if H % vec == 0 and _aligned(x, gate_up, *(sh[:2] if has_sh else ())) else 1
    if SPLIT and T >= SPLIT_MIN_TOKENS and not routed:
        # one token: one per reduction; more: two (an expert's tokens and the shared expert's in chunks of two)
        smt = 1 if T == 1 else 2
        # CTAs per unit: the units that do work (the distinct experts expected under uniform routing, + the shared
        # expert) times G fill the card once (2 CTAs an SM); each CTA walks its unit's row blocks with a stride of G
        busy = min(n_slots, E * (1.0 - (1.0 - k / E) ** T)) + has_sh
        blocks = ceil_div(max(I, S or 0), _SPLIT_R)
        G = max(1, min(blocks, int(SPLIT_WAVES * 2 * sms // max(1.0, busy))))
        _launch(device, x.dtype, _split_expr(x.dtype, gv, smt, 1),
                (units + has_sh, G, 1), (_WARPS * 32, 1, 1), x.data_ptr(),
                gate_up.data_ptr(), experts.data_ptr(), i32(n_slots), i32(k), i32(H), i32(I), i32(E), act.data_ptr(),
                *sh_ptrs, pdl=PDL)
    else:
        gy = _row_blocks(ceil_div(max(I, S or 0), _WARPS * _PAIRS), resident // (units + has_sh))
        _launch(device, x.dtype, _gate_up_expr(x.dtype, gv, routed, mmax), (units + has_sh, gy, 1),
                (_WARPS * 32, 1, 1), x.data_ptr(), gate_up.data_ptr(), experts.data_ptr(), i32(n_slots), i32(k),
                i32(H), i32(I), i32(E), *ptrs, i32(mt), act.data_ptr(), *sh_ptrs,
                shared_mem=mt * H * x.element_size(), pdl=PDL and not routed)
    dv = vec if I % vec == 0 and (S or 0) % vec == 0 and _aligned(down, *(sh[2:3] if has_sh else ())) else 1
    dsh = (act_sh.data_ptr(), shared_down.data_ptr(), shared_expert_gate.data_ptr(), x.data_ptr(), i32(S)) \
        if has_sh else (0, 0, 0, 0, i32(0))
    # row blocks per token: one wave at batch 1; from a few tokens at most 2 rows a warp (each row is a few
    # dependent load steps: 8 rows a warp made the 8-token down kernel latency-bound), more than one wave
    gy = _row_blocks(ceil_div(H, _WARPS), max((2 * sms) // T, ceil_div(H, 2 * _WARPS)))
    _launch(device, x.dtype, _down_expr(x.dtype, dv), (T, gy, 1), (_WARPS * 32, 1, 1),
            act.data_ptr(), down.data_ptr(), weights.data_ptr(), experts.data_ptr(), i32(k), i32(H), i32(I),
            i32(E), y.data_ptr(), *dsh, shared_mem=(k * I + (S or 0)) * 4, pdl=PDL)
    return y


def _grouped(x, gate_up, down, weights, experts, y, T, H, E, I, k, device, sh):
    """Gather by expert, torch._grouped_mm gate/up, silu_mul_fused, torch._grouped_mm down, combine (+ the shared
    expert's cuBLAS GEMMs, gated in the combine)."""
    import torch.nn.functional as F

    from .activations import silu_mul, silu_mul_fused

    offsets, perm, inv, _ = moe_routing(experts, E)
    n = T * k
    ends = offsets[1:]  # torch._grouped_mm: int32 cumulative ends of the groups
    xs = torch.empty(n, H, dtype=x.dtype, device=x.device)
    vec = 8 if H % 8 == 0 and _aligned(x, xs, y) else 1
    block = 256
    _launch(device, x.dtype, _gather_expr(x.dtype, vec), (n, ceil_div(H // vec, block), 1), (block, 1, 1),
                  x.data_ptr(), perm.data_ptr(), offsets[E:].data_ptr(), i32(k), i32(H), xs.data_ptr())
    shp = (0, 0)
    if sh[0] is not None:
        sg, su, sd, sgate = sh
        shared = F.linear(silu_mul(F.linear(x, sg), F.linear(x, su)), sd)  # [T, H]
        gate_logit = F.linear(x, sgate)                                      # [T, 1]
        shp = (shared.data_ptr(), gate_logit.data_ptr())
    h = torch._grouped_mm(xs, gate_up.transpose(1, 2), offs=ends)       # [n, 2I]
    a = silu_mul_fused(h)                                                # [n, I]
    ys = torch._grouped_mm(a, down.transpose(1, 2), offs=ends)           # [n, H]
    _launch(device, x.dtype, _combine_expr(x.dtype, vec), (T, ceil_div(H // vec, block), 1), (block, 1, 1),
                  ys.data_ptr(), inv.data_ptr(), weights.data_ptr(), i32(k), i32(H), y.data_ptr(), *shp)
    return y


# ------------------------------------------------------------------------------------------------ streaming decode
def _pow2_floor(n: int) -> int:
    return 1 << (max(1, n).bit_length() - 1)


def _stream_plan(T, k, E, H, I, S, es, sms, has_sh):
    """Launch shapes of the streaming decode kernels from host sizes, or None where they do not apply:
    gate/up (R row pairs a stage, stages a CTA, CTAs), down (RD rows a tile, warps a CTA, stages a warp)."""
    n = T * k
    if n > _STREAM_MAXS or E > _STREAM_MAXE or T > _STREAM_MAXS:
        return None
    if (H * es) % 16 or (I * es) % 16 or (has_sh and (S * es) % 16):
        return None
    R = next((r for r in (4, 2, 1) if 2 * r * H * es <= STREAM_GU_STAGE), 1)
    stage = 2 * R * H * es
    ns = max(2, min(8, STREAM_GU_RING // stage))
    if ns * stage > 160 * 1024:
        return None
    r_tiles = ceil_div(I, R)
    items = (ceil_div(S, R) if has_sh else 0) + min(n, E) * r_tiles
    G = max(1, min(2 * sms, items))
    # down: about two row tiles an SM (RD rows each), one warp per unit (4 to 16), stages within the budget
    W = max(I, S if has_sh else 0)
    units = min(n, E) + has_sh
    nw = max(4, min(_STREAM_DW, STREAM_DOWN_WARPS, units))
    RD = min(_STREAM_RD, _pow2_floor(ceil_div(H, 2 * sms)) if H > 2 * sms else 1)
    RD = max(1, RD)
    while RD > 1 and nw * RD * W * es > STREAM_DOWN_SMEM:
        RD //= 2
    if nw * RD * W * es > STREAM_DOWN_SMEM:
        return None
    d = max(1, min(_STREAM_D, ceil_div(units, nw), STREAM_DOWN_SMEM // (nw * RD * W * es)))
    xs = T * H * es if T * H * es <= STREAM_XS_MAX else 0
    return dict(R=R, ns=ns, G=G, xs=xs, gu_smem=ns * stage + xs, RD=RD, nw=nw, d=d, down_smem=nw * d * RD * W * es)


def decode_kernels(x, gate_up, down, k: int, shared_gate=None, shared_up=None, shared_down=None) -> str:
    """Which kernels the decode path runs for these operands (host sizes, dtype, alignment, card): "mma"
    (gate_up_mma_kernel + down_mma_kernel), "stream" (gate_up_stream_kernel + down_stream_kernel), "split"
    (gate_up_split_kernel + down_kernel) or "warp" (gate_up_kernel + down_kernel)."""
    T, H = x.shape
    E, I = gate_up.shape[0], down.shape[2]
    sh = (shared_gate, shared_up, shared_down, None)
    S = shared_gate.shape[0] if shared_gate is not None else 0
    if _mma_ok(x, gate_up, down, sh, T, k, E, H, I, S):
        return "mma"
    if _stream_ok(x, gate_up, down, sh, T, k, E, H, I, S, x.device):
        return "stream"
    return "split" if SPLIT and T >= SPLIT_MIN_TOKENS else "warp"


def _mma_ok(x, gate_up, down, sh, T, k, E, H, I, S) -> bool:
    if not MMA or T > MMA_MAX_TOKENS or T * k > _STREAM_MAXS or E > _STREAM_MAXE:
        return False
    if x.dtype not in (torch.bfloat16, torch.float16) or H % 32 or I % 32 or (S or 0) % 32:
        return False
    return _aligned(x, gate_up, down, *(t for t in sh if t is not None))


def _mma(x, gate_up, down, weights, experts, sh, y, T, H, E, I, k, S, device) -> None:
    """The decode path on gate_up_mma_kernel + down_mma_kernel (two programmatic launches): xd [T, S + units I]
    holds the down projection's input, every unit's activations times the token's weight for it."""
    sg, su, sd, sgate = sh
    has_sh = sg is not None
    Sp = S if has_sh else 0
    units = min(T * k, E)
    ldx = Sp + units * I
    xd = torch.empty(T, ldx, dtype=x.dtype, device=x.device)
    _launch(device, x.dtype, _mma_expr("gate_up", x.dtype), (ceil_div(max(I, Sp), 16), has_sh + units, 1),
            (256, 1, 1), x.data_ptr(), gate_up.data_ptr(), experts.data_ptr(), weights.data_ptr(), i32(T * k), i32(k),
            i32(H), i32(I), i32(E), sg.data_ptr() if has_sh else 0, su.data_ptr() if has_sh else 0,
            sgate.data_ptr() if has_sh else 0, i32(Sp), i32(T), xd.data_ptr(), i32(ldx), i32(MMA_GU_EVICT_FIRST),
            pdl=PDL)
    split = MMA_DOWN_SPLIT if _device.capability(device)[0] >= 9 else 1  # (clusters: sm_90)
    _launch(device, x.dtype, _mma_expr("down", x.dtype, split), (ceil_div(H, 16), split, 1), (256, 1, 1),
            xd.data_ptr(), i32(ldx), down.data_ptr(), experts.data_ptr(), i32(T * k), i32(H), i32(I), i32(E),
            sd.data_ptr() if has_sh else 0, i32(Sp), i32(T), y.data_ptr(), i32(MMA_DOWN_EVICT_FIRST), pdl=PDL)


def _stream_ok(x, gate_up, down, sh, T, k, E, H, I, S, device) -> bool:
    if not STREAM or T < STREAM_MIN_TOKENS or _device.capability(device)[0] < 9:
        return False
    if not _aligned(x, gate_up, down, *(t for t in sh if t is not None)):
        return False
    return _stream_plan(T, k, E, H, I, S or 0, x.element_size(), _device.sm_count(device), sh[0] is not None) \
        is not None


_SMEM_SET: dict = {}  # (expr, device) -> the dynamic shared memory attribute set on that kernel


def _stream_smem(device, dtype, expr, nbytes) -> None:
    """Set the kernel's dynamic shared memory attribute to what this launch asks for: with the kernels' static
    shared memory (unit table, barriers) the total passes the 48 KB that needs no attribute already at 48 KB of
    stages, and launch() sets it only above 48 KB of dynamic memory."""
    key = (expr, device)
    if _SMEM_SET.get(key, 0) < nbytes:
        _rt_launch.get_kernel(SOURCE.file, expr, _GROUPS[dtype], device=device).allow_shared_memory(nbytes)
        _SMEM_SET[key] = nbytes


def _stream(x, gate_up, down, weights, experts, sh, act, act_sh, y, T, H, E, I, k, S, device, sms) -> None:
    """The decode path on gate_up_stream_kernel + down_stream_kernel (two programmatic launches)."""
    p = _stream_plan(T, k, E, H, I, S, x.element_size(), sms, act_sh is not None)
    _stream_gate_up(p, x, gate_up, experts, sh, act, act_sh, T, H, E, I, k, S, device)
    _stream_down(p, x, down, weights, experts, sh, act, act_sh, y, T, H, E, I, k, S, device)


def _stream_gate_up(p, x, gate_up, experts, sh, act, act_sh, T, H, E, I, k, S, device) -> None:
    has_sh = act_sh is not None
    sg, su, sd, _ = sh
    expr = _stream_expr("gate_up", x.dtype)
    _stream_smem(device, x.dtype, expr, p["gu_smem"])
    _launch(device, x.dtype, expr, (p["G"], 1, 1), (256, 1, 1), x.data_ptr(),
            gate_up.data_ptr(), experts.data_ptr(), i32(T * k), i32(k), i32(H), i32(I), i32(E), act.data_ptr(),
            sg.data_ptr() if has_sh else 0, su.data_ptr() if has_sh else 0, i32(S), i32(T),
            act_sh.data_ptr() if has_sh else 0, i32(p["R"]), i32(p["ns"]),
            sd.data_ptr() if has_sh and STREAM_PREFETCH else 0, i32(1 if p["xs"] else 0), i32(STREAM_FLAGS),
            shared_mem=p["gu_smem"], pdl=PDL)


def _stream_down(p, x, down, weights, experts, sh, act, act_sh, y, T, H, E, I, k, S, device) -> None:
    has_sh = act_sh is not None
    _, _, sd, sgate = sh
    expr = _stream_expr("down", x.dtype)
    _stream_smem(device, x.dtype, expr, p["down_smem"])
    _launch(device, x.dtype, expr, (ceil_div(H, p["RD"]), 1, 1), (32 * p["nw"], 1, 1),
            act.data_ptr(), down.data_ptr(), weights.data_ptr(), experts.data_ptr(), i32(T * k), i32(k), i32(H),
            i32(I), i32(E), y.data_ptr(), act_sh.data_ptr() if has_sh else 0, sd.data_ptr() if has_sh else 0,
            sgate.data_ptr() if has_sh else 0, x.data_ptr(), i32(S), i32(T), i32(p["RD"]), i32(p["d"]),
            i32(STREAM_FLAGS), shared_mem=p["down_smem"], pdl=PDL)
