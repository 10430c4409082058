"""reference.moe vs independent formulations.

* HF transformers' Qwen3_5MoeSparseMoeBlock (tiny random config, fp32): its router (weights 1e-6, experts exact),
  its experts module (routed output 1e-5) and the whole block with the shared expert composed in the test (1e-5).
* moe_topk vs a per-row Python sort (exact indices, weights 1e-12 in fp64) and an explicit tie-break case.
* moe_mlp vs a dense fp64 formulation: every expert on every token, combined with a [T, E] routing matrix (1e-12).
"""

import pytest
import torch
import torch.nn.functional as F

import reference as ref

hf = pytest.importorskip("transformers.models.qwen3_5_moe.modeling_qwen3_5_moe")
from transformers.models.qwen3_5_moe.configuration_qwen3_5_moe import Qwen3_5MoeTextConfig  # noqa: E402


def make_block(E=8, k=3, H=16, I=12, shared=20, seed=0):
    cfg = Qwen3_5MoeTextConfig(hidden_size=H, num_experts=E, num_experts_per_tok=k, moe_intermediate_size=I,
                               shared_expert_intermediate_size=shared)
    cfg._experts_implementation = "eager"  # the plain per-expert loop, no hub kernels
    torch.manual_seed(seed)
    block = hf.Qwen3_5MoeSparseMoeBlock(cfg).eval()
    with torch.no_grad():
        for p in block.parameters():
            p.normal_(0, 0.5)
    return block


@pytest.mark.parametrize("T,E,k", [(11, 8, 3), (5, 4, 1), (7, 6, 6)])
def test_moe_vs_hf_block(T, E, k):
    block = make_block(E=E, k=k)
    x = torch.randn(T, 16, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        hf_logits, hf_w, hf_idx = block.gate(x)
        hf_routed = block.experts(x, hf_idx, hf_w)
        hf_out = block(x[None])[0]

        logits = x @ block.gate.weight.T
        weights, experts = ref.moe_topk(logits, k)
        assert weights.dtype == torch.float32 and experts.dtype == torch.int64
        # HF's topk is unordered among exact ties only; random logits have none
        assert torch.equal(experts, hf_idx)
        torch.testing.assert_close(weights, hf_w, rtol=0, atol=1e-6)

        routed = ref.moe_mlp(x, block.experts.gate_up_proj, block.experts.down_proj, weights, experts)
        torch.testing.assert_close(routed, hf_routed, rtol=1e-5, atol=1e-5)

        # the composed block: routed + sigmoid(x w_sg^T) * shared_mlp(x)
        shared = block.shared_expert
        shared_out = F.linear(F.silu(F.linear(x, shared.gate_proj.weight)) * F.linear(x, shared.up_proj.weight),
                              shared.down_proj.weight)
        out = routed + torch.sigmoid(x @ block.shared_expert_gate.weight.T) * shared_out
        torch.testing.assert_close(out, hf_out, rtol=1e-5, atol=1e-5)

        # the same layer with the shared expert passed to moe_mlp
        fused = ref.moe_mlp(x, block.experts.gate_up_proj, block.experts.down_proj, weights, experts,
                            shared_gate=shared.gate_proj.weight, shared_up=shared.up_proj.weight,
                            shared_down=shared.down_proj.weight, shared_expert_gate=block.shared_expert_gate.weight)
        torch.testing.assert_close(fused, hf_out, rtol=1e-5, atol=1e-5)


def test_moe_topk_vs_python_sort():
    logits = torch.randn(9, 7, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    weights, experts = ref.moe_topk(logits, 3)
    assert weights.dtype == torch.float64
    for t in range(9):
        p = torch.softmax(logits[t], 0).tolist()
        order = sorted(range(7), key=lambda e: (-p[e], e))[:3]
        assert experts[t].tolist() == order
        total = sum(p[e] for e in order)
        torch.testing.assert_close(weights[t], torch.tensor([p[e] / total for e in order], dtype=torch.float64),
                                   rtol=0, atol=1e-12)


def test_moe_topk_ties_lower_index_first():
    logits = torch.tensor([[0.0, 1.0, 1.0, 0.0, 1.0], [2.0, 2.0, 2.0, 2.0, 2.0]])
    weights, experts = ref.moe_topk(logits, 2)
    assert experts.tolist() == [[1, 2], [0, 1]]
    torch.testing.assert_close(weights, torch.full((2, 2), 0.5))


def test_moe_topk_ranks_by_logit_not_rounded_probability():
    """1e-9 > 0 as fp32 logits, but both softmax to the same fp32 probability (exp(-1e-9) rounds to 1): the rule
    ranks by logit, so expert 1 comes first (a probability sort with index tie-break would pick expert 0)."""
    logits = torch.tensor([[0.0, 1e-9, -5.0]])
    probs = torch.softmax(logits, -1)
    assert probs[0, 0] == probs[0, 1]  # the premise: equal fp32 probabilities
    weights, experts = ref.moe_topk(logits, 2)
    assert experts.tolist() == [[1, 0]]
    torch.testing.assert_close(weights, torch.full((1, 2), 0.5))


@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-12), (torch.float32, 1e-5), (torch.bfloat16, 1e-2)])
def test_moe_mlp_vs_dense(dtype, tol):
    gen = torch.Generator().manual_seed(3)
    T, H, I, E, k = 10, 8, 6, 5, 2
    x = torch.randn(T, H, generator=gen, dtype=torch.float64)
    gate_up = torch.randn(E, 2 * I, H, generator=gen, dtype=torch.float64) * 0.5
    down = torch.randn(E, H, I, generator=gen, dtype=torch.float64) * 0.5
    weights = torch.rand(T, k, generator=gen, dtype=torch.float64)
    experts = torch.stack([torch.randperm(E - 1, generator=gen)[:k] for _ in range(T)])  # expert E-1 unused
    x, gate_up, down = x.to(dtype), gate_up.to(dtype), down.to(dtype)
    out = ref.moe_mlp(x, gate_up, down, weights.float(), experts.to(torch.int32))
    assert out.dtype == dtype

    xd, gud, dd = x.double(), gate_up.double(), down.double()
    h = torch.einsum("th,eih->tei", xd, gud)  # [T, E, 2I]: every expert on every token
    y = torch.einsum("tei,ehi->teh", F.silu(h[..., :I]) * h[..., I:], dd)  # [T, E, H]
    route = torch.zeros(T, E, dtype=torch.float64).scatter_add_(1, experts, weights.float().double())
    want = torch.einsum("te,teh->th", route, y)
    assert torch.linalg.norm(out.double() - want) / torch.linalg.norm(want) < tol


def test_moe_mlp_no_tokens():
    out = ref.moe_mlp(torch.zeros(0, 4), torch.zeros(3, 4, 4), torch.zeros(3, 4, 2),
                      torch.zeros(0, 2), torch.zeros(0, 2, dtype=torch.int64))
    assert out.shape == (0, 4)


def test_moe_mlp_shared_vs_composed():
    """shared_* in moe_mlp == the routed output plus the gated shared expert composed by hand (fp64, 1e-12)."""
    gen = torch.Generator().manual_seed(4)
    T, H, I, E, k, S = 7, 12, 6, 5, 2, 10
    d = dict(dtype=torch.float64, generator=gen)
    x, gu, dn = torch.randn(T, H, **d), torch.randn(E, 2 * I, H, **d), torch.randn(E, H, I, **d)
    w, e = ref.moe_topk(torch.randn(T, E, **d), k)
    sg, su, sd, gate = torch.randn(S, H, **d), torch.randn(S, H, **d), torch.randn(H, S, **d), torch.randn(1, H, **d)
    got = ref.moe_mlp(x, gu, dn, w, e, shared_gate=sg, shared_up=su, shared_down=sd, shared_expert_gate=gate)
    want = ref.moe_mlp(x, gu, dn, w, e) + torch.sigmoid(x @ gate.T) * ((F.silu(x @ sg.T) * (x @ su.T)) @ sd.T)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    with pytest.raises(ValueError, match="go together"):
        ref.moe_mlp(x, gu, dn, w, e, shared_gate=sg)
    with pytest.raises(ValueError, match="shared_down"):
        ref.moe_mlp(x, gu, dn, w, e, shared_gate=sg, shared_up=su, shared_down=sd.T, shared_expert_gate=gate)


def test_moe_topk_bad_input():
    logits = torch.randn(4, 6)
    for bad, match in [(0, "k"), (7, "k"), (-1, "k")]:
        with pytest.raises(ValueError, match=match):
            ref.moe_topk(logits, bad)
    for bad in (2.0, True, torch.tensor(2)):
        with pytest.raises(TypeError, match="k"):
            ref.moe_topk(logits, bad)
    with pytest.raises(ValueError, match="router_logits"):
        ref.moe_topk(logits[0], 2)
    with pytest.raises(ValueError, match="router_logits"):
        ref.moe_topk(logits.to(torch.int64), 2)


def test_moe_mlp_bad_input():
    T, H, I, E, k = 3, 4, 2, 5, 2
    good = dict(x=torch.randn(T, H), gate_up=torch.randn(E, 2 * I, H), down=torch.randn(E, H, I),
                weights=torch.rand(T, k), experts=torch.tensor([[0, 1], [2, 4], [3, 3]]))
    cases = [
        (dict(x=torch.randn(T, H + 1)), "gate_up"),
        (dict(x=torch.randn(T, H, 1)), "x"),
        (dict(gate_up=torch.randn(E, 2 * I + 1, H)), "gate_up"),
        (dict(down=torch.randn(E, H, I + 1)), "down"),
        (dict(down=torch.randn(E - 1, H, I)), "down"),
        (dict(weights=torch.rand(T + 1, k)), "weights"),
        (dict(weights=torch.rand(T, k).to(torch.int32)), "weights"),
        (dict(experts=torch.tensor([[0, 1], [2, 5], [3, 3]])), "experts"),
        (dict(experts=torch.tensor([[0, 1], [2, -1], [3, 3]])), "experts"),
        (dict(experts=torch.tensor([[0, 1, 2]] * T)), "experts"),
        (dict(experts=torch.zeros(T, k)), "experts"),
        (dict(weights=torch.rand(T, k, device="meta")), "device"),
    ]
    for change, match in cases:
        with pytest.raises(ValueError, match=match):
            ref.moe_mlp(**{**good, **change})


def test_moe_router_topk_is_topk_of_fp32_logits():
    gen = torch.Generator().manual_seed(6)
    x, w = torch.randn(9, 32, generator=gen), torch.randn(12, 32, generator=gen)
    got = ref.moe_router_topk(x.bfloat16(), w.bfloat16(), 4)
    logits = x.bfloat16().double() @ w.bfloat16().double().T  # bf16 inputs, products and sums kept exact(ish)
    want = ref.moe_topk(logits.float(), 4)
    assert torch.equal(got[1], want[1])
    torch.testing.assert_close(got[0], want[0], rtol=0, atol=1e-6)
    with pytest.raises(ValueError, match="router_weight must have the input dtype"):
        ref.moe_router_topk(x, w.half(), 4)
    with pytest.raises(ValueError, match="router_weight must have shape"):
        ref.moe_router_topk(x, w[:, :-1], 4)
