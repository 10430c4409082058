"""Prefills replayed from CUDA graphs: one graph per (cache, token bucket, rows), captured the first time.

A prefill of a few thousand tokens is hundreds of kernel launches whose host time (Python wrappers, torch ops,
driver calls: ~1 ms a layer) exceeds the device time, so time to first token is the host's. A graph replays
them with no host work. The graph is captured for a bucket of Tb >= T tokens and B rows: the T real tokens
are packed at the front of static buffers (embeddings [Tb, H], mRoPE ids [3, Tb], cu_seqlens [B+1], the
selected last tokens [B]) and the Tb - T padding tokens lie past cu_seqlens[-1], in no segment: the varlen
kernels size their grids by upper bounds and leave tiles past the last segment idle (include/varlen.cuh), the
row-wise ops (GEMMs, norms) compute the padding rows and nothing reads them, and the mixers' outputs, which
leave those rows unwritten, get them zeroed (`pad`: garbage there would reach the next attention layer's keys
and values, loaded by a real segment's last partial tile, where 0 x NaN is NaN). The one side effect is the KV
write (qk_norm_rope writes a token past the end into the last row's slots after its prompt, or drops it past
the capacity); those slots are rewritten by decode before they are read. Length hints (max_seqlen) are the
bucket, an upper bound every kernel accepts.

The first prefill of a bucket runs eagerly on the padded buffers (that result is returned, and it loads every
kernel the capture needs), then the graph is captured; later prefills of the bucket copy their inputs in and
replay. Graphs live with their cache (a decode session's) and share one memory pool per cache (they are
replayed one at a time, on one stream, and each output is copied out at once). Only a fresh prefill in one
chunk qualifies (the cache empty, T <= the chunk size), of at most `max_tokens` (token_limit: where the device
time overtakes the host's); a capture that fails (an op that reads the device on the host) turns the bucket
back to eager for that cache.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

MIN_BUCKET = 64
MAX_GRAPHS = 32  # per cache: the oldest bucket's graph goes first
# Where a graph stops paying (token_limit): an eager prefill's host time is ~1 ms a layer, whatever the prompt
# length (0.8B on an H200 host, tools/lm_prefill_profile.py, round s3r1: 0.84-1.33 ms a layer, 30 ms for 24
# layers against 3.95 ms of device time at 1024 tokens), while the device time grows with the GEMM FLOPs (their
# kernels ran at ~600 TFLOP/s there at 8192 tokens). Past about twice the crossover the host runs ahead anyway.
HOST_MS_PER_LAYER = 1.0
GEMM_FLOPS = 600e12


def token_limit(lm, lo: int = 1024, hi: int = 8192) -> int:
    """The longest prompt worth a graph for this model: the power of two (in [lo, hi]) at or below twice the
    token count where the GEMM time of a prefill equals the eager host time (0.8B: hi; 4B: 4096; 9B: 2048)."""
    cfg = lm.cfg
    per_token = 0.0  # GEMM weights a token goes through (MoE: top-k of the experts)
    for name, t in lm.w.items():
        if name.startswith("embed") or name == "lm_head.weight" or t.dim() < 2:
            continue
        per_token += t.numel() if t.dim() == 2 else t[0].numel() * getattr(cfg, "num_experts_per_tok", 1)
    cross = HOST_MS_PER_LAYER * 1e-3 * cfg.num_hidden_layers * GEMM_FLOPS / (2 * max(per_token, 1.0))
    limit = lo
    while limit * 2 <= min(hi, 2 * cross):
        limit *= 2
    return limit


def bucket(tokens: int) -> int:
    """Tokens a graph is captured for: at least MIN_BUCKET, else 8 buckets an octave (<= 12.5 % padding)."""
    if tokens <= MIN_BUCKET:
        return MIN_BUCKET
    step = 1 << max(0, (tokens - 1).bit_length() - 4)
    return -(-tokens // step) * step


@dataclass
class _Entry:
    graph: torch.cuda.CUDAGraph | None  # None: capture failed, this bucket runs eagerly
    embeds: torch.Tensor
    positions: torch.Tensor
    cu: torch.Tensor
    sel: torch.Tensor
    pad: torch.Tensor  # bool [Tb, 1, 1]: the padding tokens (the mixers' unwritten rows are zeroed)
    out: torch.Tensor | None = None


class PrefillGraphs:
    """`lm.prefill_graphs`: called by LanguageModel.prefill for a fresh one-chunk prefill; returns the rows' last
    hidden states [B, H], or None (the caller runs the eager path)."""

    def __init__(self, max_tokens: int = 8192):
        self.max_tokens = max_tokens
        self.replays = 0  # for tests and tools
        self.captures = 0

    def __call__(self, lm, cache, embeds: torch.Tensor, positions: torch.Tensor, lengths: list[int],
                 cu_host: list[int]) -> torch.Tensor | None:
        T, B = cu_host[-1], len(lengths)
        if T == 0 or T > self.max_tokens or not embeds.is_cuda or torch.cuda.is_current_stream_capturing():
            return None
        if lm.capture_blockers(prefill=True):  # an op on a reference that reads the device on the host, or refuses padding
            return None
        Tb = bucket(T)
        store = cache.__dict__.setdefault("_prefill_graphs", {})  # the graphs die with the cache
        key = (Tb, B)
        e = store.get(key)
        if e is not None and e.graph is None:
            return None
        fresh = e is None
        if fresh:
            dev = embeds.device
            e = _Entry(None, torch.zeros(Tb, embeds.shape[1], dtype=embeds.dtype, device=dev),
                       torch.zeros(3, Tb, dtype=torch.int64, device=dev),
                       torch.zeros(B + 1, dtype=torch.int32, device=dev), torch.zeros(B, dtype=torch.int64, device=dev),
                       torch.ones(Tb, 1, 1, dtype=torch.bool, device=dev))
        ends = [b for b in range(B) if lengths[b]]
        sel = [cu_host[b + 1] - 1 if lengths[b] else 0 for b in range(B)]
        e.embeds[:T].copy_(embeds)
        e.positions[:, :T].copy_(positions)
        e.pad[:T].fill_(False)
        e.pad[T:].fill_(True)
        e.cu.copy_(_pinned(cu_host, torch.int32), non_blocking=True)
        e.sel.copy_(_pinned(sel, torch.int64), non_blocking=True)
        # the hints the kernels get: T = Tb tokens, every row up to Tb long, no row cached before
        hint = [0] + [Tb] * B
        if fresh:
            out = lm.forward(e.embeds, e.positions, e.cu, cache, start=[0] * B, select=e.sel, cu_host=hint, pad=e.pad)
            while sum(isinstance(k, tuple) for k in store) >= MAX_GRAPHS:
                store.pop(next(k for k in store if isinstance(k, tuple)))
            store[key] = e
            try:
                pool = store.setdefault("_pool", torch.cuda.graph_pool_handle())
                graph = torch.cuda.CUDAGraph()
                with torch.cuda.graph(graph, pool=pool):
                    e.out = lm.forward(e.embeds, e.positions, e.cu, cache, start=[0] * B, select=e.sel,
                                       cu_host=hint, pad=e.pad)
                e.graph = graph
                self.captures += 1
            except Exception:  # an op that reads the device or allocates on the host under capture: stay eager
                e.graph, e.out = None, None
                torch.cuda.synchronize(embeds.device)
        else:
            e.graph.replay()
            self.replays += 1
            out = e.out.clone()
        if len(ends) < B:  # rows of 0 tokens return zeros
            idle = [b for b in range(B) if not lengths[b]]
            out.index_fill_(0, _pinned(idle, torch.int64).to(out.device, non_blocking=True), 0)
        return out


def _pinned(values: list[int], dtype: torch.dtype) -> torch.Tensor:
    return torch.tensor(values, dtype=dtype).pin_memory()
