"""Inputs of the decode_attention family (decode_attention, kv_cache_append): builders, strategies, real shapes, bad
inputs, peers. The functions are found by name from kernels.registry (x_cases, x_example, x_real, x_bad, x_peers).

decode_attention: B rows of one query against caches [B, S, Hkv, 256] with rows of different lengths (0, 1 and S
included); slots past each row's length hold NaN, so a kernel that reads one fails. Real shapes: each model's heads
(0.8B 8:2, 9B 16:4, 27B 24:4) at batch 1 and 8 with `tokens` slots of context (all rows full, as SDPA is timed).
kv_cache_append: packed new tokens (prefill, chunked prefill, decode) into caches with room for them; exact.
"""

from __future__ import annotations

import math

import torch
from hypothesis import strategies as st

from . import SIZES, Bad, Case, gen, seeds

D = 256
RATIOS = ((8, 2), (16, 4), (24, 4), (32, 2), (1, 1), (2, 1), (3, 1), (6, 2), (24, 1))  # (Hq, Hkv)
ATTN_DTYPES = (torch.bfloat16, torch.float16)


# ------------------------------------------------------------------------------------------- decode_attention
def build_decode_attention(lengths, S: int, hq: int, hkv: int, dtype, seed: int = 0, len_dtype=torch.int32,
                           scale=None) -> Case:
    g = gen(seed)
    B = len(lengths)
    q = torch.randn(B, hq, D, generator=g).to(dtype)
    kc = torch.randn(B, S, hkv, D, generator=g).to(dtype)
    vc = torch.randn(B, S, hkv, D, generator=g).to(dtype)
    for b, L in enumerate(lengths):  # unused slots: a read of one poisons the output
        kc[b, L:], vc[b, L:] = math.nan, math.nan
    args = (q, kc, vc, torch.tensor(lengths, dtype=len_dtype)) + (() if scale is None else (scale,))
    return Case("decode_attention", args, (((B, hq, D), dtype),), f"b{B}_s{S}_{hq}:{hkv}")


@st.composite
def _decode(draw):
    B = draw(st.integers(1, 9))
    S = draw(st.integers(1, 700))
    special = st.sampled_from([0, 1, S, max(0, S - 1), min(S, 64), min(S, 65)])
    lengths = draw(st.lists(st.one_of(special, st.integers(0, S)), min_size=B, max_size=B))
    hq, hkv = draw(st.sampled_from(RATIOS))
    return build_decode_attention(lengths, S, hq, hkv, draw(st.sampled_from(ATTN_DTYPES)), draw(seeds),
                                  draw(st.sampled_from((torch.int32, torch.int64))),
                                  draw(st.sampled_from((None, 0.05, 0.3))))


def decode_attention_cases(small: bool = False):
    return _decode()  # NVRTC only: no simulator shapes


def decode_attention_example(dtype=torch.bfloat16) -> Case:
    return build_decode_attention([0, 70, 5], 70, 8, 2, dtype, seed=1)


def decode_attention_real(dtype=torch.bfloat16, tokens: int = 4096) -> list[Case]:
    out = []
    for size in SIZES:
        hq, hkv = SIZES[size]["heads"], SIZES[size]["kv_heads"]
        for B in (1, 8):
            c = build_decode_attention([tokens] * B, tokens, hq, hkv, dtype, seed=B + hq)
            c.label = f"{size}-{c.label}"
            out.append(c)
    return out


def decode_attention_bytes(case: Case) -> int:
    """K and V of the slots the rows use (q and the output are a rounding error beside them)."""
    q, kc, _, lengths = case.args[:4]
    return int(lengths.clamp(0, kc.shape[1]).sum()) * kc.shape[2] * kc.shape[3] * kc.element_size() * 2


def decode_attention_bad(device) -> list[Bad]:
    q, kc, vc, lengths = decode_attention_example(torch.bfloat16).on(device)
    f32 = tuple(t.float() for t in (q, kc, vc))
    mis = torch.empty(kc.numel() + 1, dtype=kc.dtype, device=device)[1:].view(kc.shape)
    return [
        Bad("q not a tensor", (q.tolist(), kc, vc, lengths), "q must be a torch.Tensor", TypeError, reference=True),
        Bad("fp32", (*f32, lengths), "bf16 or fp16"),
        Bad("cache dtype", (q, kc.half(), vc.half(), lengths), "must share a dtype", reference=True),
        Bad("head_dim 128", (q[..., :128], kc[..., :128], vc[..., :128], lengths), "head_dim"),
        Bad("heads", (q, kc[:, :, :1].expand(-1, -1, 3, -1), vc[:, :, :1].expand(-1, -1, 3, -1), lengths),
            "heads", reference=True),
        Bad("lengths float", (q, kc, vc, lengths.float()), "lengths must have dtype", reference=True),
        Bad("lengths shape", (q, kc, vc, lengths[:2]), "lengths must have shape", reference=True),
        Bad("v_cache rows", (q, kc, vc[:, :-1], lengths), "v_cache must have shape", reference=True),
        Bad("q strided", (q.transpose(0, 1).contiguous().transpose(0, 1), kc, vc, lengths), "q must be contiguous"),
        Bad("cache slot strided", (q, kc.transpose(2, 3).contiguous().transpose(2, 3), vc, lengths),
            "k_cache must have contiguous"),
        Bad("cache misaligned", (q, mis, vc, lengths), "k_cache must be 16-byte aligned"),
        Bad("max_length above S", (q, kc, vc, lengths), "max_length", kwargs={"max_length": 71}, reference=True),
        Bad("scale negative", (q, kc, vc, lengths, -1.0), "scale"),
    ]


def decode_attention_peers(args) -> dict:
    """torch SDPA with each backend that takes the case, on the cache as [B, Hkv, S, d] (GQA), every row full."""
    import torch.nn.functional as F
    from torch.nn.attention import SDPBackend, sdpa_kernel

    q, kc, vc, lengths = args[:4]
    qb = q[:, :, None, :]
    kb, vb = (c.transpose(1, 2).contiguous() for c in (kc, vc))
    out = {}
    for name in ("FLASH_ATTENTION", "EFFICIENT_ATTENTION", "CUDNN_ATTENTION", "MATH"):
        be = getattr(SDPBackend, name)

        def run(be=be):
            with sdpa_kernel([be]):
                return F.scaled_dot_product_attention(qb, kb, vb, enable_gqa=True)
        if q.is_cuda:
            try:
                run()
            except RuntimeError:  # this backend does not take the case
                continue
        out[f"sdpa_{name.lower()}"] = run
    return out


# -------------------------------------------------------------------------------------------- kv_cache_append
def build_kv_cache_append(lengths, new, S: int, hkv: int, d: int, dtype, seed: int = 0, idx=torch.int32) -> Case:
    g = gen(seed)
    B = len(lengths)
    k, v = (torch.randn(sum(new), hkv, d, generator=g).to(dtype) for _ in range(2))
    kc, vc = (torch.randn(B, S, hkv, d, generator=g).to(dtype) for _ in range(2))
    cu = torch.tensor([0] + list(new)).cumsum(0).to(idx)
    return Case("kv_cache_append", (k, v, kc, vc, cu, torch.tensor(lengths, dtype=idx)), (),
                f"b{B}_s{S}_new{sum(new)}_{hkv}x{d}")


@st.composite
def _append(draw):
    B = draw(st.integers(1, 9))
    S = draw(st.integers(1, 40))
    mode = draw(st.sampled_from(("prefill", "chunk", "decode")))
    lengths, new = [], []
    for _ in range(B):
        L = 0 if mode == "prefill" else draw(st.integers(0, S - 1 if mode == "decode" else S))
        lengths.append(L)
        new.append(1 if mode == "decode" else draw(st.integers(0, S - L)))
    return build_kv_cache_append(lengths, new, S, draw(st.sampled_from((1, 2, 4))),
                                 draw(st.sampled_from((256, 8, 5, 1))),
                                 draw(st.sampled_from((torch.bfloat16, torch.float16, torch.float32))), draw(seeds),
                                 draw(st.sampled_from((torch.int32, torch.int64))))


def kv_cache_append_cases(small: bool = False):
    return _append()


def kv_cache_append_example(dtype=torch.bfloat16) -> Case:
    return build_kv_cache_append([0, 3, 6], [5, 2, 1], 7, 2, 256, dtype, seed=2)


def kv_cache_append_real(dtype=torch.bfloat16, tokens: int = 4096) -> list[Case]:
    """Prefill of `tokens` new tokens into one row, and a decode step of 64 rows, at each model's kv heads."""
    out = []
    for size in SIZES:
        hkv = SIZES[size]["kv_heads"]
        for c in (build_kv_cache_append([0], [tokens], tokens, hkv, D, dtype, seed=hkv),
                  build_kv_cache_append([tokens - 1] * 64, [1] * 64, tokens, hkv, D, dtype, seed=hkv)):
            c.label = f"{size}-{c.label}"
            out.append(c)
    return out


def kv_cache_append_bytes(case: Case) -> int:
    """The new k and v read, and written once into the caches."""
    k, v = case.args[:2]
    return 2 * (k.numel() + v.numel()) * k.element_size()


def kv_cache_append_bad(device) -> list[Bad]:
    k, v, kc, vc, cu, lengths = kv_cache_append_example(torch.bfloat16).on(device)
    return [
        Bad("k dtype", (k.float(), v, kc, vc, cu, lengths), "must share a dtype", reference=True),
        Bad("fp64", (k.double(), v.double(), kc.double(), vc.double(), cu, lengths), "fp32, fp16 or bf16"),
        Bad("v shape", (k, v[:, :, :8], kc, vc, cu, lengths), "v must have shape", reference=True),
        Bad("cache heads", (k, v, kc[:, :, :1], vc[:, :, :1], cu, lengths), "k_cache must have shape",
            reference=True),
        Bad("cu_seqlens entries", (k, v, kc, vc, cu[:-1], lengths), "cu_seqlens must have", reference=True),
        Bad("lengths shape", (k, v, kc, vc, cu, lengths[:2]), "lengths must have shape", reference=True),
        Bad("lengths float", (k, v, kc, vc, cu, lengths.float()), "lengths must have dtype", reference=True),
        Bad("k strided", (k.transpose(0, 1).contiguous().transpose(0, 1), v, kc, vc, cu, lengths),
            "k must be contiguous"),
        Bad("cache slot strided", (k, v, kc.transpose(2, 3).contiguous().transpose(2, 3), vc, cu, lengths),
            "k_cache must have contiguous"),
    ]


def kv_cache_append_peers(args) -> dict:
    """torch eager: one index_put per cache, slots computed on the device (no host loop)."""
    k, v, kc, vc, cu, lengths = args
    T = k.shape[0]

    def run():
        t = torch.arange(T, device=k.device)
        b = torch.searchsorted(cu[1:].long(), t, right=True)
        slot = lengths.long()[b] + t - cu.long()[b]
        kc[b, slot] = k
        vc[b, slot] = v
    return {"torch": run}
