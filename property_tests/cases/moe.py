"""Inputs of the moe family (moe_topk, moe_mlp): builders, strategies, real shapes, bad inputs, peers.
The functions are found by name from kernels.registry (x_cases, x_example, x_real, x_bad, x_peers).

Routing modes of moe_mlp's experts [T, k]:
  "random"    k distinct experts per token (what a router gives), so some experts get no token
  "same"      every token to the same k experts (all other experts empty; one expert's group holds T slots)
  "repeat"    every slot of every token to one expert (an expert named twice by one token: the reference allows it)
  "skewed"    a few experts take most tokens (a long group next to many short ones)
"""

from __future__ import annotations

import torch
from hypothesis import strategies as st

from . import Bad, Case, dtypes, seeds

# The MoE checkpoints (docs/model.md section 6): hidden, experts, top-k, expert width, shared width
MOE_SIZES = {
    "35B-A3B": dict(hidden=2048, experts=256, topk=8, inter=512, shared=512),
    "122B-A10B": dict(hidden=3072, experts=256, topk=8, inter=1024, shared=1024),
    "397B-A17B": dict(hidden=4096, experts=512, topk=10, inter=1024, shared=1024),
}
ROUTINGS = ("random", "random", "same", "repeat", "skewed")
LOGITS = ("random", "ties", "equal", "wide")


# ------------------------------------------------------------------------------------------------ moe_topk
def build_moe_topk(T, E, k, dtype, seed=0, mode="random") -> Case:
    """mode: "random" N(0, 1) logits; "ties": integers in [0, 3) (many equal logits, the order rule decides);
    "equal": every logit equal; "wide": N(0, 30) (softmax weights underflow to 0 for most experts)."""
    g = torch.Generator().manual_seed(seed)
    if mode == "ties":
        logits = torch.randint(0, 3, (T, E), generator=g).float()
    elif mode == "equal":
        logits = torch.full((T, E), 0.25)
    else:
        logits = torch.randn(T, E, generator=g) * (30.0 if mode == "wide" else 1.0)
    logits = logits.to(dtype)
    return Case("moe_topk", (logits, k), (((T, k), torch.float32), ((T, k), torch.int64)),
                f"{T}x{E}-k{k}-{mode}")


@st.composite
def _moe_topk(draw, small):
    E = draw(st.one_of(st.integers(1, 40), st.sampled_from((64, 100, 256, 257, 500, 512))))
    k = draw(st.one_of(st.integers(1, min(E, 10)), st.just(min(E, 32))))
    T = draw(st.one_of(st.just(1), st.integers(0, 40), st.sampled_from((127, 1000, 3000))))
    return build_moe_topk(T, E, k, draw(dtypes(small)), draw(seeds), draw(st.sampled_from(LOGITS)))


def moe_topk_cases(small: bool = False):
    return _moe_topk(small)


def moe_topk_example(dtype=torch.bfloat16) -> Case:
    return build_moe_topk(5, 12, 3, dtype, mode="ties")


def moe_topk_real(dtype=torch.bfloat16, tokens: int = 4096) -> list[Case]:
    return [_labelled(size, build_moe_topk(tokens, s["experts"], s["topk"], dtype, seed=s["experts"]))
            for size, s in MOE_SIZES.items()]


def moe_topk_bad(device) -> list[Bad]:
    logits, k = moe_topk_example(torch.float32).on(device)
    T, E = logits.shape
    w = torch.empty(T, k, device=device)
    e = torch.empty(T, k, dtype=torch.int64, device=device)
    return [
        Bad("k zero", (logits, 0), "k must lie in", reference=True),
        Bad("k > E", (logits, E + 1), "k must lie in", reference=True),
        Bad("k float", (logits, 2.0), "k must be an int", TypeError, reference=True),
        Bad("k bool", (logits, True), "k must be an int", TypeError, reference=True),
        Bad("logits 1-D", (logits[0], k), "router_logits must have 2 dimensions", reference=True),
        Bad("logits int", (logits.int(), k), "router_logits must have dtype", reference=True),
        Bad("logits fp64", (logits.double(), k), "router_logits must have dtype"),
        Bad("logits strided", (logits.t().contiguous().t(), k), "router_logits must be contiguous"),
        Bad("E > 512", (torch.zeros(2, 513, device=device), 2), "at most 512"),
        Bad("k > 32", (torch.zeros(2, 64, device=device), 33), "at most 32"),
        Bad("out weights dtype", (logits, k), "out\\[0\\] \\(weights\\) must have dtype",
            kwargs=dict(out=(w.half(), e))),
        Bad("out experts shape", (logits, k), "out\\[1\\] \\(experts\\) must have shape",
            kwargs=dict(out=(w, e[:, :1].contiguous()))),
        Bad("out not a pair", (logits, k), "out must be a \\(weights, experts\\) pair",
            kwargs=dict(out=w)),
    ]


def moe_topk_peers(args) -> dict:
    logits, k = args

    def hf():  # HF's router after the logits GEMM: softmax, topk, renormalise
        p = torch.softmax(logits, dim=-1, dtype=torch.float32)
        w, e = torch.topk(p, k, dim=-1)
        return w / w.sum(-1, keepdim=True), e

    return {"torch": hf}


# ------------------------------------------------------------------------------------------------ moe_router_topk
def build_moe_router_topk(T, H, E, k, dtype, seed=0, exact=True) -> Case:
    """exact=True: x in {-3..3}, router weights in {-1, 0, 1} / 64, so every product and partial sum is exact in
    fp32 and any summation order gives the reference's logits bit for bit (ties are frequent: the order rule is
    tested too); exact=False: Gaussian data (benchmarks)."""
    g = torch.Generator().manual_seed(seed)
    if exact:
        x = torch.randint(-3, 4, (T, H), generator=g).float()
        w = torch.randint(-1, 2, (E, H), generator=g).float() / 64
    else:
        x = torch.randn(T, H, generator=g)
        w = torch.randn(E, H, generator=g) * H ** -0.5
    return Case("moe_router_topk", (x.to(dtype), w.to(dtype), k), (((T, k), torch.float32), ((T, k), torch.int64)),
                f"{T}x{H}-E{E}-k{k}")


@st.composite
def _moe_router_topk(draw, small):
    E = draw(st.one_of(st.integers(1, 40), st.sampled_from((64, 256, 257, 512))))
    k = draw(st.one_of(st.integers(1, min(E, 10)), st.just(min(E, 32))))
    T = draw(st.one_of(st.just(1), st.integers(0, 20), st.sampled_from((33, 64))))
    H = draw(st.one_of(st.sampled_from((8, 64, 2048, 3072, 4096)), st.integers(1, 300)))
    return build_moe_router_topk(T, H, E, k, draw(dtypes(small)), draw(seeds))


def moe_router_topk_cases(small: bool = False):
    return _moe_router_topk(small)


def moe_router_topk_example(dtype=torch.bfloat16) -> Case:
    return build_moe_router_topk(3, 40, 12, 3, dtype)


def moe_router_topk_real(dtype=torch.bfloat16, tokens: int = 4096) -> list[Case]:
    """Decode sizes only (the fused router takes at most 64 tokens)."""
    T = min(tokens, 64)
    return [_labelled(size, build_moe_router_topk(T, s["hidden"], s["experts"], s["topk"], dtype, seed=s["experts"]))
            for size, s in MOE_SIZES.items()]


def moe_router_topk_bad(device) -> list[Bad]:
    x, w, k = moe_router_topk_example(torch.float32).on(device)
    return [
        Bad("k > E", (x, w, w.shape[0] + 1), "k must lie in", reference=True),
        Bad("k float", (x, w, 2.0), "k must be an int", TypeError, reference=True),
        Bad("x 1-D", (x[0], w, k), "x must have 2 dimensions", reference=True),
        Bad("hidden mismatch", (x, w[:, :-1].contiguous(), k), "router_weight must have shape", reference=True),
        Bad("dtype mismatch", (x, w.half(), k), "router_weight must have the input dtype", reference=True),
        Bad("x fp64", (x.double(), w.double(), k), "x must have dtype"),
        Bad("x strided", (x.t().contiguous().t(), w, k), "x must be contiguous"),
        Bad("too many tokens", (torch.zeros(65, 40, device=device), w, k), "at most 64 tokens"),
        Bad("E > 512", (x, torch.zeros(513, 40, device=device), k), "at most 512"),
    ]


def moe_router_topk_peers(args) -> dict:
    import torch.nn.functional as F

    x, w, k = args
    return {"torch": lambda: moe_topk_peers((F.linear(x, w), k))["torch"]()}


# ------------------------------------------------------------------------------------------------ moe_mlp
def route(g, T, E, k, mode) -> tuple[torch.Tensor, torch.Tensor]:
    """(weights [T, k] fp32 positive summing to 1 per token, experts [T, k] int64) for a routing mode."""
    if mode == "same":
        experts = torch.randperm(E, generator=g)[:k].expand(T, k).clone()
    elif mode == "repeat":
        experts = torch.full((T, k), int(torch.randint(0, E, (1,), generator=g)), dtype=torch.int64)
    elif mode == "skewed":
        hot = torch.randperm(E, generator=g)[: max(1, min(E, 3))]
        experts = torch.stack([torch.randperm(E, generator=g)[:k] for _ in range(T)]) if T else \
            torch.zeros(0, k, dtype=torch.int64)
        take = torch.rand(T, generator=g) < 0.8
        if T and k <= hot.numel():
            experts[take] = hot[:k]
    else:
        experts = torch.argsort(torch.rand(T, E, generator=g), dim=1)[:, :k] if T else \
            torch.zeros(0, k, dtype=torch.int64)
    w = torch.rand(T, k, generator=g) + 0.05
    return w / w.sum(-1, keepdim=True), experts.to(torch.int64)


def build_moe_mlp(T, H, I, E, k, dtype, seed=0, mode="random", experts_dtype=torch.int64, shared=None) -> Case:
    """x ~ N(0, 1); gate/up rows ~ N(0, 1/H) (so G x ~ N(0, 1)); down rows ~ N(0, 1/I). shared=S adds the
    sigmoid-gated shared expert of width S (keyword arguments, as the model passes them)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(T, H, generator=g).to(dtype)
    gate_up = (torch.randn(E, 2 * I, H, generator=g) * H ** -0.5).to(dtype)
    down = (torch.randn(E, H, I, generator=g) * I ** -0.5).to(dtype)
    weights, experts = route(g, T, E, k, mode)
    kwargs = {}
    if shared:
        S = shared
        kwargs = dict(shared_gate=(torch.randn(S, H, generator=g) * H ** -0.5).to(dtype),
                      shared_up=(torch.randn(S, H, generator=g) * H ** -0.5).to(dtype),
                      shared_down=(torch.randn(H, S, generator=g) * S ** -0.5).to(dtype),
                      shared_expert_gate=(torch.randn(1, H, generator=g) * H ** -0.5).to(dtype))
    return Case("moe_mlp", (x, gate_up, down, weights, experts.to(experts_dtype)), (((T, H), dtype),),
                f"T{T}-H{H}-I{I}-E{E}-k{k}-{mode}" + (f"-S{shared}" if shared else ""), kwargs)


@st.composite
def _moe_mlp(draw, small):
    E = draw(st.one_of(st.integers(1, 24), st.sampled_from((64, 256))))
    k = draw(st.integers(1, min(E, 10)))
    T = draw(st.one_of(st.just(1), st.integers(0, 20), st.sampled_from((16, 17, 64, 200, 1000, 2500))))
    H = draw(st.one_of(st.sampled_from((8, 16, 64, 72, 128, 256)), st.integers(1, 80)))
    I = draw(st.one_of(st.sampled_from((8, 16, 32, 48, 64)), st.integers(1, 40)))
    if T * H > 200_000:  # keep the CPU reference quick
        H = max(8, 200_000 // max(T, 1) // 8 * 8)
    return build_moe_mlp(T, H, I, E, k, draw(dtypes(small)), draw(seeds), draw(st.sampled_from(ROUTINGS)),
                         draw(st.sampled_from((torch.int64, torch.int64, torch.int32))),
                         draw(st.sampled_from((None, None, 8, 24, 64, 5))))


def moe_mlp_cases(small: bool = False):
    return _moe_mlp(small)


def moe_mlp_example(dtype=torch.bfloat16) -> Case:
    return build_moe_mlp(5, 24, 16, 6, 2, dtype)


# the expert count of the real-shape cases: the real H, I, k with at most this many experts (the weights of all
# 256/512 experts are GBs on the host; which experts exist does not change what a kernel does with the routed ones)
REAL_EXPERTS = 12


def moe_mlp_real(dtype=torch.bfloat16, tokens: int = 4096) -> list[Case]:
    out = []
    for size, s in MOE_SIZES.items():
        E = min(s["experts"], REAL_EXPERTS)
        # routed experts only: the peer (HF's experts loop) has no shared expert; the layer benchmark has it
        c = build_moe_mlp(tokens, s["hidden"], s["inter"], E, s["topk"], dtype, seed=s["hidden"])
        c.label = f"{size}-{c.label}(of {s['experts']})"
        out.append(c)
    return out


def moe_mlp_bad(device) -> list[Bad]:
    x, gu, dn, w, e = moe_mlp_example(torch.float32).on(device)
    T, H = x.shape
    E, I = gu.shape[0], gu.shape[1] // 2
    bad_e = e.clone()
    bad_e[0, 0] = E
    neg_e = e.clone()
    neg_e[-1, -1] = -1
    return [
        Bad("x 3-D", (x[None], gu, dn, w, e), "x must have 2 dimensions", reference=True),
        Bad("x int", (x.int(), gu, dn, w, e), "x must have dtype", reference=True),
        Bad("x fp64", (x.double(), gu.double(), dn.double(), w, e), "x must have dtype"),
        Bad("gate_up odd rows", (x, gu[:, :-1].contiguous(), dn, w, e), "gate_up must have an even number", reference=True),
        Bad("gate_up hidden", (x[:, :-1].contiguous(), gu, dn, w, e), "gate_up must have shape",
            reference=True),
        Bad("down width", (x, gu, dn[..., :-1].contiguous(), w, e), "down must have shape", reference=True),
        Bad("down experts", (x, gu, dn[:-1].contiguous(), w, e), "down must have shape", reference=True),
        Bad("gate_up dtype", (x, gu.half(), dn, w, e), "gate_up must have the input dtype"),
        Bad("weights rows", (x, gu, dn, w[:-1], e), "weights must have shape", reference=True),
        Bad("weights int", (x, gu, dn, w.int(), e), "weights must have dtype", reference=True),
        Bad("experts shape", (x, gu, dn, w, e[:, :1]), "experts must have shape", reference=True),
        Bad("experts float", (x, gu, dn, w, e.float()), "experts must have dtype", reference=True),
        Bad("expert too large", (x, gu, dn, w, bad_e), "experts must lie in", reference=True),
        Bad("expert negative", (x, gu, dn, w, neg_e), "experts must lie in", reference=True),
        Bad("gate_up strided", (x, gu.transpose(1, 2).contiguous().transpose(1, 2), dn, w, e),
            "gate_up must be contiguous"),
        Bad("path", (x, gu, dn, w, e), "path must be None or one of", kwargs=dict(path="dense")),
        Bad("decode path, too many slots", (x.repeat(100, 1), gu, dn, w.repeat(100, 1), e.repeat(100, 1)),
            "path 'decode' takes at most", kwargs=dict(path="decode")),
        Bad("grouped path, fp32", (x, gu, dn, w, e), "path 'grouped' needs bf16", kwargs=dict(path="grouped")),
        Bad("out dtype", (x, gu, dn, w, e), "out must have dtype", kwargs=dict(out=torch.empty_like(x).half())),
        Bad("shared incomplete", (x, gu, dn, w, e), "go together", kwargs=dict(shared_gate=torch.zeros(4, H, device=device)),
            reference=True),
        Bad("shared_down shape", (x, gu, dn, w, e), "shared_down must have shape", reference=True,
            kwargs=dict(shared_gate=torch.zeros(4, H, device=device), shared_up=torch.zeros(4, H, device=device),
                        shared_down=torch.zeros(4, H, device=device), shared_expert_gate=torch.zeros(1, H, device=device))),
        Bad("shared dtype", (x, gu, dn, w, e), "shared_up must have the input dtype",
            kwargs=dict(shared_gate=torch.zeros(4, H, device=device), shared_up=torch.zeros(4, H, device=device).half(),
                        shared_down=torch.zeros(H, 4, device=device), shared_expert_gate=torch.zeros(1, H, device=device))),
        Bad("k I too large", (x, torch.zeros(E, 2 * 8192, H, device=device), torch.zeros(E, H, 8192, device=device),
                              w, e), "too large for the down kernel"),
    ]


def moe_mlp_peers(args) -> dict:
    """HF's experts loop (transformers' eager Qwen3_5MoeExperts: a Python loop over the hit experts)."""
    x, gate_up, down, weights, experts = args

    def hf_loop():
        import torch.nn.functional as F

        out = torch.zeros_like(x)
        mask = torch.nn.functional.one_hot(experts, gate_up.shape[0]).permute(2, 1, 0)
        for e in torch.greater(mask.sum(dim=(-1, -2)), 0).nonzero():
            e = int(e)
            top, tok = torch.where(mask[e])
            h = F.linear(x[tok], gate_up[e])
            g, u = h.chunk(2, dim=-1)
            y = F.linear(F.silu(g) * u, down[e]) * weights[tok, top, None].to(x.dtype)
            out.index_add_(0, tok, y)
        return out

    return {"hf_loop": hf_loop}


def _labelled(size: str, c: Case) -> Case:
    c.label = f"{size}-{c.label}"
    return c
