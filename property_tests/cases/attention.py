"""Inputs of the attention family (attention): builders, strategies, real shapes, bad inputs, peers.
Found by name from kernels.registry."""

from __future__ import annotations

import torch
from hypothesis import strategies as st

from . import FLOAT_DTYPES, SIM_DTYPES, Bad, Case, real_widths, seeds

HEAD_DIMS = (64, 72, 80, 128, 256)
segments = st.lists(st.integers(0, 300), min_size=1, max_size=5).filter(lambda ls: sum(ls) > 0)


def build_attention(lengths, hq, hkv, d, dtype, causal, seed=0) -> Case:
    g = torch.Generator().manual_seed(seed)
    T = sum(lengths)
    q, k, v = (torch.randn(T, h, d, generator=g).to(dtype) for h in (hq, hkv, hkv))
    cu = torch.tensor([0] + list(lengths)).cumsum(0).to(torch.int32)
    return Case("attention", (q, k, v, cu, causal), (((T, hq, d), dtype),),
                f"{'x'.join(map(str, lengths))}-h{hq}/{hkv}-d{d}{'-causal' if causal else ''}")


@st.composite
def _attention(draw, small):
    hkv = draw(st.sampled_from([1, 2]))
    return build_attention(draw(segments), hkv * draw(st.sampled_from([1, 2, 4])), hkv,
                           draw(st.sampled_from(HEAD_DIMS)), draw(st.sampled_from(SIM_DTYPES if small else FLOAT_DTYPES)), draw(st.booleans()),
                           draw(seeds))


def attention_cases(small: bool = False):
    return _attention(small)


def attention_example(dtype=torch.bfloat16) -> Case:
    return build_attention([2, 4], 4, 2, 72, dtype, False)


def attention_real(dtype=torch.bfloat16, tokens: int = 4096) -> list[Case]:
    """The ViT's (one image of `tokens` patches, and 8 images of 784) and the LM's causal prefill of `tokens`."""
    out = []
    for size, (d, h) in real_widths("vit_hidden", "vit_heads"):
        for lengths in ([tokens], [784] * 8):
            c = build_attention(lengths, h, h, d // h, dtype, False)
            c.label = f"{size}-vit-{c.label}"
            out.append(c)
    for size, (hq, hkv, d) in real_widths("heads", "kv_heads", "head_dim"):
        c = build_attention([tokens], hq, hkv, d, dtype, True)
        c.label = f"{size}-lm-{c.label}"
        out.append(c)
    return out


def attention_bad(device) -> list[Bad]:
    def qkv(T=6, hq=4, hkv=2, d=72, dtype=torch.bfloat16, dk=None):
        return tuple(torch.randn(T, h, dd, device=device).to(dtype)
                     for h, dd in ((hq, d), (hkv, dk or d), (hkv, dk or d)))

    cu = torch.tensor([0, 2, 6], dtype=torch.int32, device=device)
    q, k, v = qkv()
    bad = [
        Bad("head dims differ", (*qkv(dk=64), cu, False), "head dim"),
        Bad("v shape", (q, k, v[:, :1].contiguous(), cu, False), "k and v"),
        Bad("heads do not divide", (*qkv(hq=6, hkv=4), cu, False), "multiple"),
        Bad("token counts differ", (q, k[:5], v[:5], cu, False), "token count"),
        Bad("mixed dtypes", (q, k.half(), v.half(), cu, False), "share a dtype"),
        Bad("q 2-D", (q.reshape(6, -1), k, v, cu, False), "dimensions"),
        Bad("q strided", (torch.randn(4, 6, 72, device=device).to(torch.bfloat16).transpose(0, 1), k, v, cu, False),
            "contiguous"),
        Bad("cu_seqlens float", (q, k, v, cu.float(), False), "cu_seqlens"),
        Bad("scale negative", (q, k, v, cu, False), "scale", kwargs={"scale": -1.0}),
        Bad("scale nan", (q, k, v, cu, False), "scale", kwargs={"scale": float("nan")}),
        Bad("causal int", (q, k, v, cu, 1), "causal", TypeError),
        Bad("out shape", (q, k, v, cu, False), "out",
            kwargs={"out": torch.empty(6, 4, 64, dtype=torch.bfloat16, device=device)}),
        Bad("out dtype", (q, k, v, cu, False), "out",
            kwargs={"out": torch.empty(6, 4, 72, dtype=torch.float16, device=device)}),
        Bad("max_seqlen negative", (q, k, v, cu, False), "max_seqlen", kwargs={"max_seqlen": -1}),
    ]
    for d in (32, 96, 112, 160):
        bad.append(Bad(f"head dim {d}", (*qkv(d=d), cu, False), "not supported"))
    for dtype in (torch.float64, torch.int32):
        bad.append(Bad(f"dtype {dtype}", (*(t.to(dtype) for t in qkv()), cu, False), "dtype"))
    for c, match in (([0, 4, 2, 6], "non-decreasing"), ([0, 2, 5], "end at"), ([0, 2, 7], "end at"),
                     ([1, 2, 6], "start at 0"), ([6], "at least 2")):
        bad.append(Bad(f"cu_seqlens {c}", (q, k, v, torch.tensor(c, dtype=torch.int32, device=device), False), match))
    return bad


SDPA_BACKENDS = ("CUDNN_ATTENTION", "FLASH_ATTENTION", "EFFICIENT_ATTENTION")


def attention_peers(args) -> dict:
    """torch SDPA with each backend on [B, H, S, d] copies (equal segment lengths only; GQA heads expanded
    outside the timed call)."""
    import torch.nn.functional as F
    from torch.nn.attention import SDPBackend, sdpa_kernel

    q, k, v, cu, causal = args[:5]
    lengths = (cu[1:] - cu[:-1]).tolist()
    if len(set(lengths)) != 1:
        return {}
    B, S, hq, hkv, d = len(lengths), lengths[0], q.shape[1], k.shape[1], q.shape[2]
    qb = q.view(B, S, hq, d).transpose(1, 2).contiguous()
    kb, vb = (t.view(B, S, hkv, d).repeat_interleave(hq // hkv, 2).transpose(1, 2).contiguous() for t in (k, v))

    def sdpa(backend):
        be = getattr(SDPBackend, backend)

        def run():
            with sdpa_kernel([be]):
                return F.scaled_dot_product_attention(qb, kb, vb, is_causal=causal)
        return run
    return {f"sdpa-{b.split('_')[0].lower()}": sdpa(b) for b in SDPA_BACKENDS}
