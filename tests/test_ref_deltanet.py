"""reference.deltanet vs independent formulations.

(causal_conv1d is tested in test_ref_conv1d.py.)
gated_delta_rule (token recurrence) and chunked_gated_delta_rule (UT transform)
  * HF torch_recurrent_gated_delta_rule / torch_chunk_gated_delta_rule run per sequence ([1, L, H, d] layout,
    fp32 inside HF), both l2norm settings, GVA, initial states: 2e-5 absolute on O(1) outputs.
  * a dense-matrix form S_t = exp(g_t) (I - beta_t k_t k_t^T) S_{t-1} + beta_t k_t v_t^T in fp64: 1e-12.
  * chunked vs recurrent in fp64 on lengths that are not multiples of the chunk: 1e-10.
  * splitting every sequence in two with the state carried == one pass (fp64, 1e-12).
"""

import pytest
import torch
import torch.nn.functional as F

import reference as ref

hf = pytest.importorskip("transformers.models.qwen3_5.modeling_qwen3_5")


def cu_of(lengths):
    return torch.tensor([0] + list(lengths), dtype=torch.int64).cumsum(0).to(torch.int32)


def split_at(lengths):
    return [(a, b) for a, b in zip(cu_of(lengths)[:-1].tolist(), cu_of(lengths)[1:].tolist())]


# ----------------------------------------------------------------------------------------------------------------
# gated delta rule
# ----------------------------------------------------------------------------------------------------------------

def gdr_inputs(lengths, hk, hv, dk, dv, dtype=torch.float64, with_state=True, normalise=True, seed=0):
    """Model-like inputs: l2-normalised q/k (unless asked not to), g <= 0, beta in (0, 1)."""
    gen = torch.Generator().manual_seed(seed)
    T = sum(lengths)
    q = torch.randn(T, hk, dk, generator=gen, dtype=torch.float64)
    k = torch.randn(T, hk, dk, generator=gen, dtype=torch.float64)
    if normalise:
        q, k = F.normalize(q, dim=-1), F.normalize(k, dim=-1)
    v = torch.randn(T, hv, dv, generator=gen, dtype=torch.float64)
    g = -F.softplus(torch.randn(T, hv, generator=gen, dtype=torch.float64)) * 0.5
    beta = torch.sigmoid(torch.randn(T, hv, generator=gen, dtype=torch.float64))
    h0 = torch.randn(len(lengths), hv, dk, dv, generator=gen, dtype=torch.float64) if with_state else None
    cast = [t.to(dtype) for t in (q, k, v, g, beta)]
    return (*cast, cu_of(lengths), h0 if h0 is None or dtype == torch.float64 else h0.float())


LAYOUTS = {  # name: (lengths, Hk, Hv, dk, dv)
    "mha": ([5, 0, 1, 13], 2, 2, 8, 6),
    "gva": ([9, 4, 0, 1], 2, 4, 8, 8),
    "gva3": ([70, 3], 1, 3, 4, 5),
}


@pytest.mark.parametrize("form", ["recurrent", "chunked"])
@pytest.mark.parametrize("l2", [True, False])
@pytest.mark.parametrize("with_state", [True, False])
@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_gdr_vs_hf(layout, with_state, l2, form):
    lengths, hk, hv, dk, dv = LAYOUTS[layout]
    # with l2=True our op and HF normalise raw q/k; with l2=False both get pre-normalised q/k
    q, k, v, g, beta, cu, h0 = gdr_inputs(lengths, hk, hv, dk, dv, torch.float32, with_state, normalise=not l2)
    op = ref.gated_delta_rule if form == "recurrent" else ref.chunked_gated_delta_rule
    o, final = op(q, k, v, g, beta, cu, h0, use_qk_l2norm=l2)
    assert o.dtype == torch.float32 and final.dtype == torch.float32
    for s, (a, b) in enumerate(split_at(lengths)):
        args = [t[a:b][None] for t in (q, k, v, g, beta)]  # HF layout [B=1, L, H, d]
        init = None if h0 is None else h0[s:s + 1]
        if form == "recurrent":
            want_o, want_s = hf.torch_recurrent_gated_delta_rule(
                *args, initial_state=init, output_final_state=True, use_qk_l2norm_in_kernel=l2)
        else:
            want_o, want_s = hf.torch_chunk_gated_delta_rule(
                *args, chunk_size=64, initial_state=init, output_final_state=True, use_qk_l2norm_in_kernel=l2)
        torch.testing.assert_close(o[a:b], want_o[0], rtol=0, atol=2e-5)
        torch.testing.assert_close(final[s], want_s[0], rtol=0, atol=2e-5)


def dense_matrix_form(q, k, v, g, beta, cu, h0, scale):
    """S_t = exp(g_t) (I - beta_t k_t k_t^T) S_{t-1} + beta_t k_t v_t^T, o_t = S_t^T (scale q_t), one head at a time."""
    T, hk, dk = q.shape
    hv = v.shape[1]
    o = torch.zeros(T, hv, v.shape[2], dtype=torch.float64)
    finals = []
    for s, (a, b) in enumerate(zip(cu[:-1].tolist(), cu[1:].tolist())):
        heads = []
        for h in range(hv):
            kh = h // (hv // hk)
            S = h0[s, h].clone()
            for t in range(a, b):
                kt = k[t, kh][:, None]
                S = torch.exp(g[t, h]) * (torch.eye(dk, dtype=torch.float64) - beta[t, h] * kt @ kt.T) @ S \
                    + beta[t, h] * kt @ v[t, h][None]
                o[t, h] = S.T @ (scale * q[t, kh])
            heads.append(S)
        finals.append(torch.stack(heads))
    return o, torch.stack(finals)


@pytest.mark.parametrize("form", ["recurrent", "chunked"])
def test_gdr_vs_dense_matrix_form(form):
    lengths, hk, hv, dk, dv = [4, 0, 7], 1, 2, 3, 2
    q, k, v, g, beta, cu, h0 = gdr_inputs(lengths, hk, hv, dk, dv, seed=4)
    op = ref.gated_delta_rule if form == "recurrent" else ref.chunked_gated_delta_rule
    kw = {} if form == "recurrent" else dict(chunk_size=3)
    o, final = op(q, k, v, g, beta, cu, h0, scale=0.7, **kw)
    want_o, want_s = dense_matrix_form(q, k, v, g, beta, cu, h0, 0.7)
    torch.testing.assert_close(o, want_o, rtol=0, atol=1e-12)
    torch.testing.assert_close(final, want_s, rtol=0, atol=1e-12)


@pytest.mark.parametrize("chunk_size", [64, 16, 5, 1])
def test_chunked_vs_recurrent_fp64(chunk_size):
    lengths = [70, 0, 1, 63, 129]  # not multiples of the chunk
    q, k, v, g, beta, cu, h0 = gdr_inputs(lengths, 2, 4, 8, 6, seed=5)
    o_r, s_r = ref.gated_delta_rule(q, k, v, g, beta, cu, h0)
    o_c, s_c = ref.chunked_gated_delta_rule(q, k, v, g, beta, cu, h0, chunk_size=chunk_size)
    assert o_c.dtype == torch.float64 and s_c.dtype == torch.float64
    torch.testing.assert_close(o_c, o_r, rtol=0, atol=1e-10)
    torch.testing.assert_close(s_c, s_r, rtol=0, atol=1e-10)


@pytest.mark.parametrize("form", ["recurrent", "chunked"])
def test_gdr_split_with_state_carry(form):
    lengths = [37, 11, 1]
    q, k, v, g, beta, cu, h0 = gdr_inputs(lengths, 2, 4, 4, 4, normalise=False, seed=6)
    op = ref.gated_delta_rule if form == "recurrent" else ref.chunked_gated_delta_rule
    kw = dict(use_qk_l2norm=True, scale=0.4)
    o_all, s_all = op(q, k, v, g, beta, cu, h0, **kw)
    cuts = [20, 4, 0]  # first piece of each sequence; 0 = the whole sequence in the second call
    first = torch.cat([torch.arange(a, a + c) for (a, _), c in zip(split_at(lengths), cuts)])
    second = torch.cat([torch.arange(a + c, b) for (a, b), c in zip(split_at(lengths), cuts)])
    o1, s1 = op(*(t[first] for t in (q, k, v, g, beta)), cu_of(cuts), h0, **kw)
    o2, s2 = op(*(t[second] for t in (q, k, v, g, beta)), cu_of([L - c for L, c in zip(lengths, cuts)]), s1, **kw)
    o_pieces = torch.empty_like(o_all)
    o_pieces[first], o_pieces[second] = o1, o2
    torch.testing.assert_close(o_pieces, o_all, rtol=0, atol=1e-12)
    torch.testing.assert_close(s2, s_all, rtol=0, atol=1e-12)


def test_gdr_zero_length_keeps_state():
    q, k, v, g, beta, cu, h0 = gdr_inputs([0, 0], 1, 1, 4, 4, seed=7)
    for op in (ref.gated_delta_rule, ref.chunked_gated_delta_rule):
        o, final = op(q, k, v, g, beta, cu, h0)
        assert o.shape == (0, 1, 4) and torch.equal(final, h0)
        _, zero = op(q, k, v, g, beta, cu, None)
        assert torch.equal(zero, torch.zeros_like(h0))


def test_gdr_bad_input():
    q, k, v, g, beta, cu, h0 = gdr_inputs([3, 2], 2, 4, 4, 3, torch.float32)
    good = dict(q=q, k=k, v=v, g=g, beta=beta, cu_seqlens=cu, initial_state=h0)
    cases = [
        (dict(q=q[:, :1]), "k"),
        (dict(k=k[:, :, :2]), "k"),
        (dict(v=v[:, :3]), "heads"),
        (dict(v=v[:4]), "v"),
        (dict(g=g[:, :2]), "g"),
        (dict(beta=beta[None]), "beta"),
        (dict(g=g.to(torch.int64)), "g"),
        (dict(v=v.double()), "dtype"),
        (dict(cu_seqlens=cu_of([3, 3])), "cu_seqlens"),
        (dict(initial_state=h0[:1]), "initial_state"),
        (dict(initial_state=h0[:, :, :, :2]), "initial_state"),
        (dict(beta=beta.to("meta")), "device"),
    ]
    for op in (ref.gated_delta_rule, ref.chunked_gated_delta_rule):
        for change, match in cases:
            with pytest.raises(ValueError, match=match):
                op(**{**good, **change})
        with pytest.raises(TypeError, match="q"):
            op(**{**good, "q": 1.0})
    for bad in (0, 2.0, -3):
        with pytest.raises(ValueError, match="chunk_size"):
            ref.chunked_gated_delta_rule(**good, chunk_size=bad)


def test_gdn_gates_and_fused_form():
    """gdn_gates against the formula written out (log1p(exp) softplus, 1 / (1 + exp(-b))), and the fused form ==
    gdn_gates then gated_delta_rule; out= pair / final_state= (in place) give the same results."""
    T, Hv = 37, 4
    gen = torch.Generator().manual_seed(7)
    a, b = torch.randn(T, Hv, generator=gen) * 3, torch.randn(T, Hv, generator=gen) * 3
    A_log, dt_bias = torch.randn(Hv, generator=gen), torch.randn(Hv, generator=gen)
    g, beta = ref.gdn_gates(a.double(), b.double(), A_log.double(), dt_bias.double())
    x = a.double() + dt_bias.double()
    torch.testing.assert_close(g, -A_log.double().exp() * torch.log1p(torch.exp(x)), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(beta, 1 / (1 + torch.exp(-b.double())), rtol=1e-12, atol=1e-12)
    assert g.dtype == torch.float64 and ref.gdn_gates(a.half(), b.half(), A_log, dt_bias)[0].dtype == torch.float32
    q, k, v, _, _, cu, h0 = gdr_inputs([20, 0, 17], 2, 4, 4, 3, torch.float32)
    g32, b32 = ref.gdn_gates(a, b, A_log, dt_bias)
    want = ref.gated_delta_rule(q, k, v, g32, b32, cu, h0, use_qk_l2norm=True)
    got = ref.fused_gated_delta_rule(q, k, v, a, b, A_log, dt_bias, cu, h0, use_qk_l2norm=True)
    assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])
    o_out, s_out = torch.empty_like(want[0]), torch.empty_like(want[1])
    got = ref.gated_delta_rule(q, k, v, g32, b32, cu, h0, use_qk_l2norm=True, out=(o_out, s_out))
    assert got[0] is o_out and got[1] is s_out and torch.equal(o_out, want[0]) and torch.equal(s_out, want[1])
    state = h0.clone()
    got = ref.gated_delta_rule(q, k, v, g32, b32, cu, state, use_qk_l2norm=True, final_state=state)
    assert got[1] is state and torch.equal(state, want[1])
    with pytest.raises(ValueError, match="pair"):
        ref.gated_delta_rule(q, k, v, g32, b32, cu, h0, out=o_out)
    with pytest.raises(ValueError, match="max_seqlen=5 is shorter"):
        ref.gated_delta_rule(q, k, v, g32, b32, cu, h0, max_seqlen=5)
    with pytest.raises(ValueError, match="A_log"):
        ref.gdn_gates(a, b, A_log[:1], dt_bias)
