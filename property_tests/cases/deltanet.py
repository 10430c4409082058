"""Inputs of the deltanet family (gated_delta_rule): builders, strategies, real shapes, bad inputs.
Found by name from kernels.registry.

Inputs look like the model's: q, k, v ~ N(0, 1) (q and k l2-normalised by the op, use_qk_l2norm=True, or given
normalised with use_qk_l2norm=False: a raw k of norm ~11 makes the recurrence blow up), g = -exp(A_log)
softplus(a + dt_bias) (reference.gdn_gates) and beta = sigmoid(b), fp32 states ~ N(0, 0.1^2).
"""

from __future__ import annotations

import torch
from hypothesis import strategies as st

import reference as R

from . import SIZES, Bad, Case, act, dtypes, gen, seeds

D = 128  # dk = dv of every Qwen3.5 checkpoint, the only head size the kernels are built for


def build_gated_delta_rule(lengths, Hk, Hv, dtype, seed=0, with_state=True, l2norm=True, cu_dtype=torch.int32,
                           kwargs=None, label="", fused=False) -> Case:
    """One call; fused=True: the fused_gated_delta_rule call on the same data (a, b in dtype, A_log and dt_bias
    fp32), whose gates equal these rounded projections'."""
    g = gen(seed)
    T, n = sum(lengths), len(lengths)
    q, k = act(g, (T, Hk, D), torch.float32), act(g, (T, Hk, D), torch.float32)
    if not l2norm:  # the caller normalised them (as the model may, with reference.l2norm)
        q, k = R.l2norm(q), R.l2norm(k)
    q, k, v = q.to(dtype), k.to(dtype), act(g, (T, Hv, D), dtype)
    a, b = torch.randn(T, Hv, generator=g).to(dtype), torch.randn(T, Hv, generator=g).to(dtype)
    A_log = torch.log(torch.empty(Hv).uniform_(1, 16, generator=g))
    dt_bias = 0.5 * torch.randn(Hv, generator=g)
    cu = torch.tensor([0] + list(lengths), dtype=torch.int64).cumsum(0).to(cu_dtype)
    state = 0.1 * torch.randn(n, Hv, D, D, generator=g) if with_state else None
    kw = {"use_qk_l2norm": l2norm, **(kwargs or {})}
    outs = (((T, Hv, D), dtype), ((n, Hv, D, D), torch.float32))
    label = label or f"{lengths}x{Hk}/{Hv}"
    if fused:
        return Case("fused_gated_delta_rule", (q, k, v, a, b, A_log, dt_bias, cu, state), outs, label, kw)
    gate, beta = R.gdn_gates(a, b, A_log, dt_bias)
    return Case("gated_delta_rule", (q, k, v, gate, beta, cu, state), outs, label, kw)


# lengths: empty and 1-token sequences, one chunk of 64 and its neighbours, several chunks
_lengths = st.lists(st.one_of(st.sampled_from((0, 1, 2, 63, 64, 65, 128, 129)), st.integers(0, 300)),
                    min_size=1, max_size=4)
_heads = st.sampled_from(((1, 1), (1, 2), (2, 2), (2, 4), (1, 3)))


@st.composite
def _gated_delta_rule(draw, small, fused=False):
    lengths = draw(_lengths)
    Hk, Hv = draw(_heads)
    longest = max(lengths)
    hint = draw(st.sampled_from((None, "exact", "more")))
    kwargs = {} if hint is None else {"max_seqlen": longest if hint == "exact" else longest + 20}
    if draw(st.booleans()):
        kwargs["scale"] = draw(st.sampled_from((0.05, 0.2)))
    return build_gated_delta_rule(lengths, Hk, Hv, draw(dtypes(small)), draw(seeds), with_state=draw(st.booleans()),
                                  l2norm=draw(st.booleans()),
                                  cu_dtype=draw(st.sampled_from((torch.int32, torch.int64))), kwargs=kwargs,
                                  fused=fused)


def gated_delta_rule_cases(small: bool = False):
    return _gated_delta_rule(small)


def gated_delta_rule_example(dtype=torch.bfloat16) -> Case:
    return build_gated_delta_rule([5, 0, 1, 70], 1, 2, dtype)


def fused_gated_delta_rule_cases(small: bool = False):
    return _gated_delta_rule(small, fused=True)


def fused_gated_delta_rule_example(dtype=torch.bfloat16) -> Case:
    return build_gated_delta_rule([5, 0, 1, 70], 1, 2, dtype, fused=True)


def fused_gated_delta_rule_real(dtype=torch.bfloat16, tokens: int = 4096) -> list[Case]:
    """The model's call: gated_delta_rule_real's cases with the raw projections."""
    return [build_gated_delta_rule(lens, Hk, Hv, dtype, seed=seed, with_state=st_, kwargs=kw, label=lab, fused=True)
            for lens, Hk, Hv, seed, st_, kw, lab in _real_specs(tokens)]


def fused_gated_delta_rule_bad(device) -> list[Bad]:
    q, k, v, a, b, A_log, dt_bias, cu, state = fused_gated_delta_rule_example(torch.float32).on(device)
    return [
        Bad("a shape", (q, k, v, a[:, :1], b, A_log, dt_bias, cu, state), "a must have shape", reference=True),
        Bad("b dtype", (q, k, v, a, b.half(), A_log, dt_bias, cu, state), "b must have q's dtype"),
        Bad("a strided", (q, k, v, torch.cat([a, a], 1)[:, ::2], b, A_log, dt_bias, cu, state), "a must be contiguous"),
        Bad("A_log shape", (q, k, v, a, b, A_log[:1], dt_bias, cu, state), "A_log must have shape", reference=True),
        Bad("dt_bias shape", (q, k, v, a, b, A_log, dt_bias[None], cu, state), "dt_bias must have shape",
            reference=True),
        Bad("q 2-D", (q[:, 0], k, v, a, b, A_log, dt_bias, cu, state), "q must have 3 dimensions"),
    ]


def _real_specs(tokens):
    """(lengths, Hk, Hv, seed, with_state, kwargs, label) of the real cases."""
    out = []
    heads = [(size, s["gdn_k_heads"], s["gdn_v_heads"]) for size, s in SIZES.items()] + [("397B", 16, 64)]
    for size, Hk, Hv in heads:
        out.append(([tokens], Hk, Hv, Hv, False, dict(max_seqlen=tokens, validate=False),
                    f"{size}-prefill-{tokens}x{Hk}/{Hv}"))
        for rows in (1, 8):
            out.append(([1] * rows, Hk, Hv, rows, True, dict(max_seqlen=1, validate=False),
                        f"{size}-decode-b{rows}x{Hk}/{Hv}"))
    return out


def gated_delta_rule_real(dtype=torch.bfloat16, tokens: int = 4096) -> list[Case]:
    """Per model size (and the 397B's 16/64 heads): a prefill of one `tokens`-token prompt from the zero state and
    the decode step of 1 and 8 rows (one token each, the state carried), with the host hints the model passes."""
    return [build_gated_delta_rule(lens, Hk, Hv, dtype, seed=seed, with_state=st_, kwargs=kw, label=lab)
            for lens, Hk, Hv, seed, st_, kw, lab in _real_specs(tokens)]


def gated_delta_rule_bad(device) -> list[Bad]:
    q, k, v, g, beta, cu, state = gated_delta_rule_example(torch.float32).on(device)
    T, n, Hv = q.shape[0], cu.numel() - 1, v.shape[1]
    wide = torch.zeros(T, 2, 2 * D, device=device)
    q2 = torch.cat([q, q], dim=1)  # 2 key heads
    return [
        Bad("q 2-D", (q[:, 0], k, v, g, beta, cu, state), "q must have 3 dimensions", reference=True),
        Bad("q int", (q.int(), k, v, g, beta, cu, state), "q must have dtype", reference=True),
        Bad("q fp64", (q.double(), k.double(), v.double(), g, beta, cu, state), "q must have dtype"),
        Bad("k dtype", (q, k.half(), v, g, beta, cu, state), "must share a dtype", reference=True),
        Bad("k shape", (q, k[:, :0], v, g, beta, cu, state), "k must have shape", reference=True),
        Bad("head dim 64", (q[..., :64], k[..., :64], v, g, beta, cu, state), "dk = dv = 128"),
        Bad("heads not dividing", (q2, q2, v[:, :1].expand(T, 3, D).contiguous(), g[:, :1].expand(T, 3).contiguous(),
                                   beta[:, :1].expand(T, 3).contiguous(), cu, None), "multiple of Hk", reference=True),
        Bad("q column stride", (wide[:, :1, ::2], k, v, g, beta, cu, state), "contiguous heads"),
        Bad("g shape", (q, k, v, g[:, :1], beta, cu, state), "g must have shape", reference=True),
        Bad("beta shape", (q, k, v, g, beta[:-1], cu, state), "beta must have shape", reference=True),
        Bad("cu float", (q, k, v, g, beta, cu.float(), state), "cu_seqlens must have dtype", reference=True),
        Bad("cu one entry", (q, k, v, g, beta, cu[:1], None), "at least 2 entries", reference=True),
        Bad("cu wrong total", (q, k, v, g, beta, cu + torch.arange(n + 1, device=device, dtype=cu.dtype), state),
            "cu_seqlens must", reference=True),
        Bad("state sequences", (q, k, v, g, beta, cu, state[:1]), "initial_state must have shape", reference=True),
        Bad("state fp16", (q, k, v, g, beta, cu, state.half()), "initial_state must have dtype"),
        Bad("final_state shape", (q, k, v, g, beta, cu, state), "final_state must have shape",
            kwargs={"final_state": state[:1]}, reference=True),
        Bad("out dtype", (q, k, v, g, beta, cu, state), "out must have dtype",
            kwargs={"out": (torch.empty(T, Hv, D, dtype=torch.float16, device=device), None)}),
        Bad("out triple", (q, k, v, g, beta, cu, state), "pair", kwargs={"out": (None, None, None)}),
        Bad("out one tensor", (q, k, v, g, beta, cu, state), "pair", kwargs={"out": torch.empty_like(v)}),
        Bad("final state twice", (q, k, v, g, beta, cu, state), "give the final state's tensor once",
            kwargs={"out": (None, torch.empty_like(state)), "final_state": torch.empty_like(state)}),
        Bad("max_seqlen negative", (q, k, v, g, beta, cu, state), "max_seqlen must be", kwargs={"max_seqlen": -1},
            reference=True),
        Bad("max_seqlen short", (q, k, v, g, beta, cu, state), "max_seqlen=3 is shorter", kwargs={"max_seqlen": 3},
            reference=True),
        Bad("scale str", (q, k, v, g, beta, cu, state), "scale must be", kwargs={"scale": "x"}),
        Bad("l2norm int", (q, k, v, g, beta, cu, state), "use_qk_l2norm must be a bool", error=TypeError,
            kwargs={"use_qk_l2norm": 1}),
    ]


def gated_delta_rule_peers(args, *_, **__) -> dict:
    """flash-linear-attention 0.6.0 where it is importable (a benchmark peer only, never a dependency):
    fused_recurrent_gated_delta_rule for one-token rows (decode), chunk_gated_delta_rule otherwise, both on
    [1, T, H, d] with cu_seqlens (lengths read here, outside the timed call) and the same fp32 state layout."""
    try:
        from fla.ops.gated_delta_rule import chunk_gated_delta_rule, fused_recurrent_gated_delta_rule
    except Exception:  # noqa: BLE001 - not installed: no peer
        return {}
    q, k, v, g, beta, cu, state = args[:7]
    T, n = q.shape[0], cu.numel() - 1
    kw = dict(scale=q.shape[2] ** -0.5, initial_state=state, output_final_state=True, use_qk_l2norm_in_kernel=True)
    if T == n:  # decode: one token per row, rows as the batch
        return {"fla_recurrent": lambda: fused_recurrent_gated_delta_rule(
            q[:, None], k[:, None], v[:, None], g[:, None], beta=beta[:, None].to(q.dtype), **kw)}
    cu64, cu_cpu = cu.long(), cu.long().cpu()
    return {"fla_chunk": lambda: chunk_gated_delta_rule(q[None], k[None], v[None], g[None], beta[None].to(q.dtype),
                                                        cu_seqlens=cu64, cu_seqlens_cpu=cu_cpu, **kw)}
