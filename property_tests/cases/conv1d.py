"""Inputs of the conv1d family (causal_conv1d): builders, strategies, real shapes, bad inputs, peers.
Found by name from kernels.registry."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from hypothesis import strategies as st

from . import SIZES, Bad, Case, act, dtypes, gen, scales, seeds

K = 4  # Qwen3.5's linear_conv_kernel_dim, the only kernel size the kernel is built for


def conv_channels(size: dict) -> int:
    """C = 2 * key heads * dk + value heads * dv: the [q | k | v] width the conv runs over."""
    return 2 * size["gdn_k_heads"] * size["gdn_head_dim"] + size["gdn_v_heads"] * size["gdn_head_dim"]


REAL_CHANNELS = tuple(dict.fromkeys(conv_channels(s) for s in SIZES.values()))  # 6144, 8192, 10240


def build_causal_conv1d(lengths, C, dtype, seed=0, scale=1.0, with_state=True, cu_dtype=torch.int32,
                        kwargs=None, label="") -> Case:
    g = gen(seed)
    T, n = sum(lengths), len(lengths)
    x = act(g, (T, C), dtype, scale)
    w = act(g, (C, K), dtype, 0.5)  # taps ~ N(0, 0.25): outputs O(scale), through the SiLU's bend and tails
    cu = torch.tensor([0] + list(lengths), dtype=torch.int64).cumsum(0).to(cu_dtype)
    state = act(g, (n, C, K - 1), dtype, scale) if with_state else None
    return Case("causal_conv1d", (x, w, cu, state), (((T, C), dtype), ((n, C, K - 1), dtype)),
                label or f"{lengths}x{C}", dict(kwargs or {}))


# lengths: empty and 1-token sequences, shorter than the K-1 = 3 state, one CH = 16 chunk and a bit, several chunks
_lengths = st.lists(st.one_of(st.sampled_from((0, 1, 2, 3, 4, 15, 16, 17)), st.integers(0, 70)),
                    min_size=1, max_size=5)
_channels = st.one_of(st.integers(1, 300), st.sampled_from(REAL_CHANNELS), st.sampled_from((1, 7, 9, 100, 1153, 2049)))


@st.composite
def _causal_conv1d(draw, small):
    lengths = draw(_lengths)
    C = draw(_channels)
    hint = draw(st.sampled_from((None, "exact", "more")))
    longest = max(lengths)
    kwargs = {} if hint is None else {"max_seqlen": longest if hint == "exact" else longest + 20}
    return build_causal_conv1d(lengths, C, draw(dtypes(small)), draw(seeds), draw(scales),
                               with_state=draw(st.booleans()), cu_dtype=draw(st.sampled_from((torch.int32, torch.int64))),
                               kwargs=kwargs)


def causal_conv1d_cases(small: bool = False):
    return _causal_conv1d(small)


def causal_conv1d_example(dtype=torch.bfloat16) -> Case:
    return build_causal_conv1d([5, 0, 1, 20], 24, dtype)


def causal_conv1d_real(dtype=torch.bfloat16, tokens: int = 4096) -> list[Case]:
    """Per model size: a prefill of one `tokens`-token prompt from the zero state, and the decode step of 1, 8 and
    64 rows (one token each, the state carried), both with the host hints the model passes (no host sync)."""
    out = []
    for size, s in SIZES.items():
        C = conv_channels(s)
        out.append(build_causal_conv1d([tokens], C, dtype, seed=C, with_state=False,
                                       kwargs=dict(max_seqlen=tokens, validate=False),
                                       label=f"{size}-prefill-{tokens}x{C}"))
        for rows in (1, 8, 64):
            out.append(build_causal_conv1d([1] * rows, C, dtype, seed=rows, kwargs=dict(max_seqlen=1, validate=False),
                                           label=f"{size}-decode-b{rows}x{C}"))
    return out


def causal_conv1d_bad(device) -> list[Bad]:
    x, w, cu, state = causal_conv1d_example(torch.float32).on(device)
    n, C = state.shape[0], x.shape[1]
    wide = torch.zeros(x.shape[0], 2 * C, device=device)
    return [
        Bad("x 1-D", (x[0], w, cu, state), "x must have 2 dimensions", reference=True),
        Bad("x int", (x.int(), w, cu, state), "x must have dtype", reference=True),
        Bad("x fp64", (x.double(), w, cu, state), "x must have dtype"),
        Bad("x column stride", (wide[:, ::2], w, cu, state), "unit channel stride"),
        Bad("weight 3 taps", (x, w[:, :3].contiguous(), cu, state), r"weight must have shape \(24, 4\)"),
        Bad("weight channels", (x, w[:5], cu, state), "weight must have shape", reference=True),
        Bad("weight dtype", (x, w.half(), cu, state), "weight must have dtype"),
        Bad("cu float", (x, w, cu.float(), state), "cu_seqlens must have dtype", reference=True),
        Bad("cu 2-D", (x, w, cu[None], state), "cu_seqlens must have 1 dimensions", reference=True),
        Bad("cu one entry", (x, w, cu[:1], state), "at least 2 entries", reference=True),
        Bad("cu wrong total", (x, w, cu + torch.arange(n + 1, device=device, dtype=cu.dtype), state),
            "cu_seqlens must", reference=True),
        Bad("state sequences", (x, w, cu, state[:1]), "state must have shape", reference=True),
        Bad("state taps", (x, w, cu, state[:, :, :2]), "state must have shape", reference=True),
        Bad("state dtype", (x, w, cu, state.half()), "state must have", reference=True),
        Bad("state_out shape", (x, w, cu, state), "state_out must have shape", kwargs={"state_out": state[:1]},
            reference=True),
        Bad("max_seqlen negative", (x, w, cu, state), "max_seqlen must be", kwargs={"max_seqlen": -1}, reference=True),
        Bad("max_seqlen short", (x, w, cu, state), "max_seqlen=3 is shorter", kwargs={"max_seqlen": 3},
            reference=True),
        Bad("out not a pair", (x, w, cu, state), "out must be a pair", kwargs={"out": (None, None, None)}),
        Bad("out and state_out differ", (x, w, cu, state), "give the new state's tensor once",
            kwargs={"out": (None, torch.empty_like(state)), "state_out": torch.empty_like(state)}),
    ]


def causal_conv1d_peers(args, *_, **__) -> dict:
    """torch eager: HF's torch_causal_conv1d_update for one-token rows (decode), F.conv1d per sequence otherwise.
    The sequence lengths are read from cu_seqlens here, outside the timed call."""
    x, w, cu, state = args[:4]
    T, C = x.shape
    lengths = (cu[1:] - cu[:-1]).tolist()
    n = len(lengths)
    st0 = torch.zeros(n, C, K - 1, dtype=x.dtype, device=x.device) if state is None else state
    if all(L == 1 for L in lengths):
        def run():
            xs = torch.cat([st0, x[:, :, None]], dim=-1)  # [n, C, K]
            return F.silu((xs * w).sum(-1)), xs[:, :, 1:]
    else:
        starts = cu[:-1].tolist()

        def run():
            ys, new = [], []
            for s, (a, L) in enumerate(zip(starts, lengths)):
                xs = torch.cat([st0[s], x[a:a + L].T], dim=1)[None]  # [1, C, K-1+L]
                ys.append(F.silu(F.conv1d(xs, w[:, None, :], groups=C))[0].T)
                new.append(xs[0, :, -(K - 1):])
            return torch.cat(ys), torch.stack(new)
    return {"torch": run}
