"""Packed varlen flash attention on tensor cores (kernels/cuda/attention/), twin of `reference.attention`.

    out = attention(q[T,Hq,d], k[T,Hkv,d], v[T,Hkv,d], cu_seqlens, causal)           # [T,Hq,d]
    out, lse = attention(..., return_lse=True)                                       # lse [T,Hq] fp32

Each segment [cu_seqlens[i], cu_seqlens[i+1]) attends only within itself (non-causal for the ViT, causal
for LM prefill); Hq must be a multiple of Hkv (GQA); d in 64, 72, 80, 128, 256 (72 native, no padding);
bf16 or fp16 in, same dtype out, fp32 softmax (fp32 inputs: attention_fp32 below, an exact SIMT kernel).

Kernels: on Hopper (sm_90) `attn_fwd_ws` (attention/sm90.cu): warp-specialised, one producer thread loading
Q/K/V with TMA, 2-4 consumer warpgroups doing both products with wgmma (compiled for sm_90a); pick_variant chooses
its tile shape per call with a wave model (ws_cost), and for non-causal segments of up to 4096 tokens how many
consecutive tiles each CTA runs (ws_rounds). Elsewhere (sm_80+), and for segments of at most SHORT_SEGMENT tokens,
`attn_fwd` (attention/sm80.cu, mma.sync m16n8k16), with the tile shape per head dim measured fastest (CANDIDATES).
docs/attention.md explains the design and the measurements behind both.

Host synchronisation: the launch itself needs none. The grid is an upper bound on the number of query tiles,
floor((T + nseg * (BM - 1)) / BM), computed from shapes only, and each CTA finds its segment on the device.
`validate=True` (the default) additionally reads cu_seqlens to the host once per cu_seqlens tensor (cached
by tensor and version) to check it starts at 0, never decreases and ends at T; pass `validate=False` on hot
paths or under CUDA-graph capture. `max_seqlen` (optional, host int, never read from the device) only
steers the tile-size choice (otherwise segments are taken as T / nseg long).
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass, replace

import torch

from reference._checks import check_cu_seqlens, check_divides, check_tensor

from .runtime import device as _device, launch as _launch  # through the module: tests can guard launches
from .runtime.checks import check_aligned16, check_attention_scalars, check_cuda, check_input, check_out
from .runtime.dispatch import NvrtcSource, cbool, ceil_div
from .runtime.nvrtc import f32, i32
from .runtime.tma import tensor_map_3d

SUPPORTED_HEAD_DIMS = (64, 72, 80, 128, 256)
DTYPES = (torch.bfloat16, torch.float16)
_CTYPE = {torch.bfloat16: "__nv_bfloat16", torch.float16: "__half"}
_LOG2E = 1.4426950408889634


@dataclass(frozen=True)
class Variant:
    """mma.sync kernel (sm_80+): NW warps of 16*MT query rows each, BN keys per step."""

    nw: int      # warps per CTA
    mt: int      # 16-row m-tiles per warp
    bn: int      # keys per K/V tile
    qreg: bool   # keep Q fragments in registers (else re-read from shared memory every key tile)
    minb: int    # __launch_bounds__ min blocks per SM (caps registers)
    arch = None  # compiled for the device's own arch
    file = "attention/sm80.cu"

    @property
    def bm(self) -> int:
        return 16 * self.mt * self.nw

    @property
    def threads(self) -> int:
        return 32 * self.nw

    def smem_bytes(self, d: int, itemsize: int = 2) -> int:
        ch = d // 8
        stride = (ch if ch % 2 else ch + 1) * 8  # odd number of 16-byte chunks per row (see sm80.cu)
        return (self.bm + 4 * self.bn) * stride * itemsize  # Q + 2 stages of K and V

    def name(self, dtype: torch.dtype, d: int, causal: bool) -> str:
        return (f"attn::attn_fwd<{_CTYPE[dtype]}, {d}, {self.nw}, {self.mt}, {self.bn}, {_b(causal)}, "
                f"{_b(self.qreg)}, {self.minb}>")

    def label(self) -> str:
        return f"mma_{self.bm}x{self.bn}_{self.nw}w{'_qreg' if self.qreg else ''}_mb{self.minb}"


@dataclass(frozen=True)
class WsVariant:
    """Warp-specialised wgmma kernel attn_fwd_ws (Hopper, sm_90a): NCWG consumer warpgroups of 64 query rows and
    one producer warpgroup whose one thread fills a STAGES-deep ring of K/V stages with TMA copies, BN keys per step."""

    ncwg: int        # consumer warpgroups (2 or 3)
    bn: int          # keys per K/V tile (64 or 128)
    stages: int = 2  # K/V stages in shared memory
    rate: float = 1.0  # measured throughput per query row relative to 192x128 (pick_variant's cost model)
    rounds: int = 1  # non-causal: consecutive tiles of one segment and head per CTA (needs qbufs == 2)
    arch = "sm_90a"
    file = "attention/sm90.cu"

    @property
    def bm(self) -> int:
        return 64 * self.ncwg

    @property
    def threads(self) -> int:
        return 128 * (self.ncwg + 1)

    def qbufs(self, d: int) -> int:
        """Q buffers in shared memory: 2 where they fit in 227 KB (the kernel's QBUF, same rule)."""
        regions = (d + 63) // 64
        return 2 if (2 * self.bm + 2 * self.stages * self.bn) * regions * 128 + 1024 <= 227 * 1024 else 1

    def rounds_for(self, d: int, causal: bool) -> int:
        """Tiles per CTA the kernel will run (it runs one where there is one Q buffer, and for causal masks)."""
        return self.rounds if self.qbufs(d) == 2 and not causal else 1

    def smem_bytes(self, d: int, itemsize: int = 2) -> int:
        regions = (d + 63) // 64  # 64-column regions of 128-byte rows (the swizzle layout; see sm90.cu)
        return (self.qbufs(d) * self.bm + 2 * self.stages * self.bn) * regions * 128 + 1024  # + 1024: atom alignment

    def name(self, dtype: torch.dtype, d: int, causal: bool) -> str:
        return f"attn::attn_fwd_ws<{_CTYPE[dtype]}, {d}, {self.ncwg}, {self.bn}, {self.stages}, {_b(causal)}>"

    def label(self) -> str:
        return f"ws_{self.bm}x{self.bn}_{self.ncwg}cwg_s{self.stages}" + (f"_r{self.rounds}" if self.rounds > 1 else "")


def _b(x: bool) -> str:
    return "true" if x else "false"


# Tile shapes (ptxas on sm_90/sm_90a: no spills; property_tests/test_attention_compile.py checks the defaults).
V_128x64_4w = Variant(nw=4, mt=2, bn=64, qreg=True, minb=2)    # 32 rows/warp: K/V fragments reused twice
V_256x64_8w = Variant(nw=8, mt=2, bn=64, qreg=True, minb=1)    # same, 256 rows: half the K/V traffic per FLOP
V_128x64_8w = Variant(nw=8, mt=1, bn=64, qreg=True, minb=2)    # 16 rows/warp, 128 regs, 16 warps/SM
V_64x64_4w = Variant(nw=4, mt=1, bn=64, qreg=True, minb=2)     # short segments / more CTAs
V_128x64_4w_d80 = Variant(nw=4, mt=2, bn=64, qreg=False, minb=2)
V_256x64_8w_d80 = Variant(nw=8, mt=2, bn=64, qreg=False, minb=1)
V_128x64_8w_d128 = Variant(nw=8, mt=1, bn=64, qreg=True, minb=1)
V_256x32_8w_d128 = Variant(nw=8, mt=2, bn=32, qreg=False, minb=1)
V_128x64_8w_d256 = Variant(nw=8, mt=1, bn=64, qreg=False, minb=1)
V_64x32_4w_d256 = Variant(nw=4, mt=1, bn=32, qreg=False, minb=2)

# mma.sync candidates per head dim, the default first: the fastest measured on an H100 (tools/attention_gpu.py
# --bench); d80 was not benchmarked.
CANDIDATES: dict[int, tuple[Variant, ...]] = {
    64: (V_128x64_4w, V_256x64_8w, V_128x64_8w, V_64x64_4w),
    72: (V_128x64_4w, V_256x64_8w, V_128x64_8w, V_64x64_4w),
    80: (V_128x64_4w_d80, V_256x64_8w_d80, V_64x64_4w),
    128: (V_256x32_8w_d128, V_128x64_8w_d128, V_64x64_4w),
    256: (V_128x64_8w_d256, V_64x32_4w_d256),
}
# Warp-specialised TMA/wgmma candidates (Hopper, sm_90 only). pick_variant chooses among them per call with a
# wave model; `rate` is each shape's throughput per query row relative to 192x128, measured on an H100 at d72
# (256x64 1.0 since O is stored with TMA, 128x128 0.78, 192x64 0.90).
WS_192x128 = WsVariant(3, 128)
WS_256x64 = WsVariant(4, 64)
WS_128x128 = WsVariant(2, 128, rate=0.78)
WS_CANDIDATES: dict[int, tuple[WsVariant, ...]] = {
    64: (WS_192x128, WS_256x64, WS_128x128),
    72: (WS_192x128, WS_256x64, WS_128x128),
    80: (WsVariant(3, 64, rate=0.9), WS_128x128),  # 3 x 128 rows of n80 accumulators would not fit in 160 registers
    128: (WsVariant(2, 128),),
    256: (WsVariant(2, 64),),
}
SHORT_SEGMENT = 64  # at or below this many tokens per segment, 64-row mma.sync tiles waste least


def all_variants(d: int, device: torch.device | None = None) -> list:
    """Every tile shape the tests and benchmarks exercise for head dim d on `device` (on Hopper also the first
    warp-specialised shape running 3 tiles per CTA, so that both Q buffers are reused)."""
    vs = list(CANDIDATES[d]) + ([V_64x64_4w] if d != 256 and V_64x64_4w not in CANDIDATES[d] else [])
    if device is not None and _device.is_hopper(device):
        vs += list(WS_CANDIDATES[d])
        if WS_CANDIDATES[d][0].qbufs(d) == 2:
            vs.append(replace(WS_CANDIDATES[d][0], rounds=3))
    return vs


def ws_cost(v: WsVariant, heads: int, T: int, longest: int, sms: int) -> float:
    """Predicted time (arbitrary units) of warp-specialised shape v, all segments taken as `longest` long.

    CTAs (one per SM at a time) of full tiles run in ceil(count / sms) waves; the last, partial tile of a
    segment keeps only ceil(rem / 64) of its warpgroups busy and is counted as that fraction of a CTA; each CTA
    costs BM / rate times the key length rounded up to BN."""
    nseg = max(1, -(-T // max(longest, 1)))
    full, rem = divmod(longest, v.bm)
    waves = -(-heads * nseg * full // sms) + heads * nseg * (-(-rem // 64) / v.ncwg) / sms
    return waves * v.bm / v.rate * (-(-longest // v.bn) * v.bn)


ROUNDS_MAX_SEGMENT = 4096  # longer segments: the per-CTA fixed cost is under 2 % of a tile (1x16384 measured no gain)
FIXED_KEYS = 330  # a CTA's fixed cost (prologue, epilogue, the gap to the next CTA) in keys of work: a per-CTA
                  # timeline measured 6.3-6.6 us of fixed cost at 1.26-1.32 us per 64 keys (256x64, H100)


def ws_rounds(v: WsVariant, d: int, heads: int, T: int, longest: int, sms: int) -> int:
    """Consecutive tiles per CTA for shape v (non-causal; the kernel runs one where it has one Q buffer). Each
    extra tile saves a CTA's fixed cost, and its Q loads during the previous tile; fewer CTAs may leave SMs idle.
    Model: waves(r) x (r + FIXED_KEYS / keys) tile-times, waves(r) = ceil(heads x segments x ceil(tiles / r) /
    sms); the smallest r of the least time (on an H100, d72 8x784 256x64 runs 4 tiles per CTA at 294 TFLOP/s
    against 263 for one)."""
    tiles = -(-longest // v.bm)
    if longest > ROUNDS_MAX_SEGMENT or v.qbufs(d) != 2 or tiles < 2 or heads < 1 or sms < 1:
        return 1
    nseg = max(1, -(-T // longest))
    fixed = FIXED_KEYS / longest

    def time(r):
        return -(-heads * nseg * -(-tiles // r) // sms) * (r + fixed)

    return min(range(1, tiles + 1), key=time)


def pick_variant(d: int, causal: bool, T: int, nseg: int, max_seqlen: int | None, hopper: bool = False,
                 heads: int = 16, sms: int = 132):
    """Tile shape for this call, from shapes only (no device read)."""
    longest = max_seqlen if max_seqlen is not None else -(-T // max(nseg, 1))
    if d != 256 and longest <= SHORT_SEGMENT:
        return V_64x64_4w
    if hopper:
        v = min(WS_CANDIDATES[d], key=lambda v: ws_cost(v, heads, T, longest, sms))
        rounds = 1 if causal else ws_rounds(v, d, heads, T, longest, sms)
        return replace(v, rounds=rounds) if rounds > 1 else v
    return CANDIDATES[d][0]


# cu_seqlens tensors already checked: {id: (weakref, version, T)}. Keyed by id with a weakref to confirm the
# object (a WeakKeyDictionary would compare tensors with ==, which is elementwise).
_VALIDATED: dict[int, tuple] = {}


def _check_cu_seqlens_once(cu: torch.Tensor, total: int) -> None:
    if cu.is_inference():  # inference tensors keep no version counter: check every time (or pass validate=False)
        check_cu_seqlens(cu, total)
        return
    hit = _VALIDATED.get(id(cu))
    if hit is not None and hit[0]() is cu and hit[1:] == (cu._version, total):
        return
    check_cu_seqlens(cu, total)
    if len(_VALIDATED) > 256:  # drop entries of dead tensors now and then
        for key in [key for key, e in _VALIDATED.items() if e[0]() is None]:
            del _VALIDATED[key]
    _VALIDATED[id(cu)] = (weakref.ref(cu), cu._version, total)


def _validate(q, k, v, cu_seqlens, causal, scale, out, max_seqlen, validate):
    for name, t in (("q", q), ("k", k), ("v", v)):
        check_input(name, t, ndim=3, dtypes=DTYPES)
    if not (q.dtype == k.dtype == v.dtype):
        raise ValueError(f"q, k, v must share a dtype, got {q.dtype}, {k.dtype}, {v.dtype}")
    T, Hq, d = q.shape
    if k.shape != v.shape:
        raise ValueError(f"k and v must have the same shape, got {tuple(k.shape)} and {tuple(v.shape)}")
    if k.shape[0] != T:
        raise ValueError(f"k must have the same token count as q ({T}), got shape {tuple(k.shape)}")
    if k.shape[2] != d:
        raise ValueError(f"k and v head dim must equal q's ({d}), got {k.shape[2]}")
    if d not in SUPPORTED_HEAD_DIMS:
        raise ValueError(f"head dim {d} not supported (supported: {SUPPORTED_HEAD_DIMS})")
    check_divides("k heads", k.shape[1], "q heads", Hq)
    scale = check_attention_scalars(causal, scale, d, max_seqlen)
    check_tensor("cu_seqlens", cu_seqlens, ndim=1, dtypes=(torch.int32, torch.int64))
    if cu_seqlens.numel() < 2:
        raise ValueError(f"cu_seqlens must have at least 2 entries (one segment), got {cu_seqlens.numel()}")
    if out is not None:
        check_out("out", out, (T, Hq, d), q.dtype)
    if validate:
        _check_cu_seqlens_once(cu_seqlens, T)
    check_cuda(q=q, k=k, v=v, cu_seqlens=cu_seqlens, out=out)
    check_aligned16(q=q, k=k, v=v, out=out)  # cp.async moves 16-byte chunks
    return scale


def run_variant(variant: Variant | WsVariant, q, k, v, cu_seqlens, causal: bool, scale: float, out, lse) -> None:
    """Launch one tile shape on already-validated arguments (the benchmarks and tests also sweep shapes with it)."""
    T, Hq, d = q.shape
    nseg = cu_seqlens.numel() - 1
    rounds = variant.rounds_for(d, causal) if isinstance(variant, WsVariant) else 1
    rows = variant.bm * rounds  # query rows per CTA at most
    tiles = (T + nseg * (rows - 1)) // rows
    if T == 0 or tiles == 0:
        return
    if cu_seqlens.dtype != torch.int32:
        cu_seqlens = cu_seqlens.to(torch.int32)
    # one instantiation per compile: an NVRTC run of every warp-specialised shape would take minutes
    kern = _launch.get_kernel(variant.file, variant.name(q.dtype, d, causal), arch=variant.arch,
                              device=q.get_device())
    smem = variant.smem_bytes(d, q.element_size())
    if isinstance(variant, WsVariant):  # Q, K, V and O through TMA descriptors passed by value
        _launch.launch(kern, (Hq * tiles, 1, 1), (variant.threads, 1, 1),
                       out.data_ptr(), 0 if lse is None else lse.data_ptr(), cu_seqlens.data_ptr(), i32(nseg), i32(Hq),
                       i32(k.shape[1]), f32(scale * _LOG2E), i32(rounds), tensor_map_3d(q, 64, variant.bm),
                       tensor_map_3d(k, 64, variant.bn), tensor_map_3d(v, 64, variant.bn), tensor_map_3d(out, 64, 64),
                       shared_mem=smem)
        return
    _launch.launch(kern, (Hq * tiles, 1, 1), (variant.threads, 1, 1),
                   q.data_ptr(), k.data_ptr(), v.data_ptr(), out.data_ptr(), 0 if lse is None else lse.data_ptr(),
                   cu_seqlens.data_ptr(), i32(nseg), i32(Hq), i32(k.shape[1]), f32(scale * _LOG2E), shared_mem=smem)


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cu_seqlens: torch.Tensor, causal: bool,
              scale: float | None = None, return_lse: bool = False, out: torch.Tensor | None = None,
              max_seqlen: int | None = None, validate: bool = True):
    """Varlen attention over packed segments; see the module docstring.

    q [T,Hq,d], k/v [T,Hkv,d] (bf16/fp16 on tensor cores; fp32 goes to the exact SIMT kernel,
    attention_fp32), contiguous, CUDA; cu_seqlens [n+1] int32 (int64 is converted),
    scale defaults to 1/sqrt(d). Returns out [T,Hq,d] (written into `out` when given), and lse [T,Hq] fp32
    (natural log of the softmax denominator of the scaled scores) when return_lse.
    """
    if isinstance(q, torch.Tensor) and q.dtype == torch.float32:
        return attention_fp32(q, k, v, cu_seqlens, causal, scale=scale, return_lse=return_lse, out=out,
                              max_seqlen=max_seqlen, validate=validate)
    scale = _validate(q, k, v, cu_seqlens, causal, scale, out, max_seqlen, validate)
    T, Hq, d = q.shape
    if out is None:
        out = torch.empty_like(q)
    lse = torch.empty((T, Hq), device=q.device, dtype=torch.float32) if return_lse else None
    dev = q.get_device()
    hopper = _device.is_hopper(dev)
    variant = pick_variant(d, causal, T, cu_seqlens.numel() - 1, max_seqlen, hopper, Hq,
                           _device.sm_count(dev) if hopper else 132)
    run_variant(variant, q, k, v, cu_seqlens, causal, scale, out, lse)
    return (out, lse) if return_lse else out


# --------------------------------------------------------------------------------------------------------------
# attention_fp32: packed varlen attention in plain fp32 (kernels/cuda/attention/fp32.cu), twin of `reference.attention`.
#
#     out = attention_fp32(q[T,Hq,d], k[T,Hkv,d], v[T,Hkv,d], cu_seqlens, causal)      # [T,Hq,d] fp32
#     out, lse = attention_fp32(..., return_lse=True)                                  # lse [T,Hq] fp32
#
# The exactness path for fp32 models: CUDA-core fp32 fma (tensor cores would round q, k, p and v to tf32),
# online softmax with expf/logf. Same meaning and arguments as `attention` above (the bf16/fp16 tensor-core
# kernels): each segment attends only within itself, causal or not, Hq a multiple of Hkv (GQA),
# d in SUPPORTED_HEAD_DIMS.
#
# Host synchronisation: the grid is (ceil(max_seqlen / 32), Hq, segments) and CTAs past their segment's end
# exit, so with `max_seqlen` given (a host int >= the longest segment) and `validate=False` nothing is read
# back from the device. `validate=True` (the default) copies cu_seqlens to the host once to check it (starts
# at 0, never decreases, ends at T) and that `max_seqlen`, if given, covers the longest segment; without
# `max_seqlen` the longest segment is read from that copy (one sync even with validate=False).
# --------------------------------------------------------------------------------------------------------------
# Tile constants of the .cu (namespace attn32): NW warps of R query rows per CTA, BN keys per step.
_F32_NW, _F32_R, _F32_BN = 4, 8, 32
FP32_BLOCK_ROWS = _F32_NW * _F32_R  # query rows per CTA
_MAX_GRID_YZ = 65535   # CUDA's limit on gridDim.y (heads) and gridDim.z (segments)


def _fp32_expr(d: int, causal: bool) -> str:
    return f"attn32::attn_fp32<{d}, {cbool(causal)}>"


FP32_SOURCE = NvrtcSource("attention/fp32.cu", tuple(_fp32_expr(d, c) for d in SUPPORTED_HEAD_DIMS
                                                         for c in (False, True)))


def fp32_smem_bytes(d: int) -> int:
    """Dynamic shared memory of one CTA; mirrors attn32::Smem<D>::FLOATS: Q [BM][d], K [BN][d+4], V [BN][d],
    P [NW][BN][R+4], fp32."""
    return 4 * (FP32_BLOCK_ROWS * d + _F32_BN * (d + 4) + _F32_BN * d + _F32_NW * _F32_BN * (_F32_R + 4))


def _validate_fp32(q, k, v, cu_seqlens, causal, scale, out, max_seqlen, validate) -> tuple[float, int | None]:
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
    """Varlen fp32 attention over packed segments (the exact SIMT kernel); see the section comment above.

    q [T,Hq,d], k/v [T,Hkv,d] fp32, contiguous, on one CUDA device; cu_seqlens int32 [n+1] (int64 is
    converted on the device); scale defaults to 1/sqrt(d). Returns out [T,Hq,d] fp32 (written into `out`
    when given), and lse [T,Hq] fp32 (natural log of the softmax denominator of the scaled scores) when
    return_lse.
    """
    scale, max_seqlen = _validate_fp32(q, k, v, cu_seqlens, causal, scale, out, max_seqlen, validate)
    T, Hq, d = q.shape
    if out is None:
        out = torch.empty_like(q)
    lse = torch.empty((T, Hq), device=q.device, dtype=torch.float32) if return_lse else None
    tiles = ceil_div(max_seqlen, FP32_BLOCK_ROWS)
    if T > 0 and tiles > 0:
        if cu_seqlens.dtype != torch.int32:
            cu_seqlens = cu_seqlens.to(torch.int32)
        FP32_SOURCE.launch(q.get_device(), _fp32_expr(d, causal), (tiles, Hq, cu_seqlens.numel() - 1), (32 * _F32_NW, 1, 1),
                      q.data_ptr(), k.data_ptr(), v.data_ptr(), out.data_ptr(), 0 if lse is None else lse.data_ptr(),
                      cu_seqlens.data_ptr(), i32(Hq), i32(k.shape[1]), f32(scale), shared_mem=fp32_smem_bytes(d))
    return (out, lse) if return_lse else out
