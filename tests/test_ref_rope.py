"""reference.rope against HF transformers (Qwen3.5 vision/text rotary embeddings, apply_rotary_pos_emb(_vision),
Qwen2-VL's chunked mRoPE, Qwen3_5Model.get_rope_index) and a complex-number formulation of the rotation.

Tolerances: fp64 rotation 1e-12; fp32 against HF 1e-5 (HF and we use the same fp32 angle table, so the
difference is only the order of a few fp32 operations); cos/sin tables 1e-6; position ids exact.
"""

import pytest
import torch
import torch.nn.functional as F

from reference import apply_rope, mrope_cos_sin, qk_norm_rope, qkv_bias_rope, rope_index, vision_rope_cos_sin

vu = pytest.importorskip("transformers.vision_utils")
hf = pytest.importorskip("transformers.models.qwen3_5.modeling_qwen3_5")
from transformers.models.qwen2_vl.configuration_qwen2_vl import Qwen2VLTextConfig  # noqa: E402
from transformers.models.qwen2_vl.modeling_qwen2_vl import Qwen2VLRotaryEmbedding  # noqa: E402
from transformers.models.qwen3_5.configuration_qwen3_5 import (  # noqa: E402
    Qwen3_5Config, Qwen3_5TextConfig, Qwen3_5VisionConfig)

IMG, VID, VS, VE = 248056, 248057, 248053, 248054


def rand(*shape, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g, dtype=torch.float64).to(dtype)


def complex_rotate(x, cos, sin):
    """Independent form of rotate-half: pair (x[j], x[j+r]) as x[j] + i x[j+r] and multiply by e^{i angle}."""
    r = cos.shape[-1]
    z = torch.complex(x[..., :r], x[..., r:2 * r]) * torch.complex(cos, sin)
    return torch.cat([z.real, z.imag, x[..., 2 * r:]], dim=-1)


# ---------------------------------------------------------------- qkv_bias_rope
@pytest.mark.parametrize("head_dim", [64, 72, 80, 128])
@pytest.mark.parametrize("with_bias", [True, False])
def test_qkv_bias_rope_matches_hf_vision_attention(head_dim, with_bias):
    """HF: qkv Linear (with bias) -> reshape (N, 3, H, hd) -> apply_rotary_pos_emb_vision with its own cos/sin."""
    heads, dm = 2, 24
    grid = torch.tensor([[1, 2, 4], [2, 4, 2]])
    n = int((grid[:, 0] * grid[:, 1] * grid[:, 2]).sum())
    x, w = rand(n, dm, seed=1), rand(3 * heads * head_dim, dm, seed=2) * 0.2
    b = rand(3 * heads * head_dim, seed=3) if with_bias else None

    rope = hf.Qwen3_5VisionRotaryEmbedding(Qwen3_5VisionConfig(depth=0, hidden_size=heads * head_dim, num_heads=heads))
    hf_cos, hf_sin = rope(x, vu.get_vision_position_ids(grid, 2))
    hq, hk, hv = F.linear(x, w, b).reshape(n, 3, heads, head_dim).permute(1, 0, 2, 3).unbind(0)
    hq, hk = hf.apply_rotary_pos_emb_vision(hq, hk, hf_cos, hf_sin)

    qkv = x @ w.T
    q, k, v = qkv_bias_rope(qkv, b, *vision_rope_cos_sin(grid, head_dim), num_heads=heads)
    for got, want in ((q, hq), (k, hk), (v, hv)):
        assert got.shape == (n, heads, head_dim) and got.is_contiguous() and got.dtype == torch.float32
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_qkv_bias_rope_fp64_complex():
    n, heads, hd = 5, 3, 8
    qkv, b = rand(n, 3 * heads * hd, dtype=torch.float64, seed=4), rand(3 * heads * hd, dtype=torch.float64, seed=5)
    ang = rand(n, hd // 2, dtype=torch.float64, seed=6) * 3
    q, k, v = qkv_bias_rope(qkv, b, ang.cos(), ang.sin(), heads)
    want = (qkv + b).view(n, 3, heads, hd)
    c, s = ang.cos()[:, None], ang.sin()[:, None]
    torch.testing.assert_close(q, complex_rotate(want[:, 0], c, s), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(k, complex_rotate(want[:, 1], c, s), rtol=1e-12, atol=1e-12)
    assert torch.equal(v, want[:, 2])


def test_qkv_bias_rope_does_not_alias_input():
    qkv = torch.zeros(1, 3 * 2 * 4)
    q, k, v = qkv_bias_rope(qkv, None, torch.ones(1, 2), torch.zeros(1, 2), 2)
    v += 1
    assert qkv.abs().sum() == 0


# ---------------------------------------------------------------- mrope_cos_sin
def positions_3axis(s, seed, hi=1000):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, hi, (3, s), generator=g)


@pytest.mark.parametrize("head_dim,factor,section", [(256, 0.25, (11, 11, 10)), (32, 0.5, (3, 3, 2)),
                                                     (16, 1.0, (3, 3, 2))])
def test_mrope_interleaved_matches_hf(head_dim, factor, section):
    rd = int(head_dim * factor)
    cfg = Qwen3_5TextConfig(head_dim=head_dim, rope_parameters=dict(
        rope_type="default", rope_theta=1e7, partial_rotary_factor=factor, mrope_section=list(section),
        mrope_interleaved=True))
    pos = positions_3axis(37, seed=7)
    hf_cos, hf_sin = hf.Qwen3_5TextRotaryEmbedding(cfg)(torch.zeros(1), pos[:, None, :])  # [1, S, rd]
    cos, sin = mrope_cos_sin(pos, rd, 1e7, section, interleaved=True)
    assert cos.shape == (37, rd // 2) and cos.dtype == torch.float32
    for got, want in ((cos, hf_cos[0]), (sin, hf_sin[0])):
        torch.testing.assert_close(got, want[:, : rd // 2], rtol=0, atol=1e-6)
        torch.testing.assert_close(got, want[:, rd // 2:], rtol=0, atol=1e-6)


def test_mrope_interleaved_axis_layout():
    """Qwen3.5 layout THW THW ... THW T H: give each axis its own position and read the angles back."""
    pos = torch.tensor([[1], [2], [3]])  # T=1, H=2, W=3
    cos, sin = mrope_cos_sin(pos, 64, 1e7)
    inv = 1e7 ** (-torch.arange(32, dtype=torch.float64) / 32)
    axis = torch.atan2(sin[0].double(), cos[0].double()) / inv  # the position each frequency used
    want = [1 if j == 30 else 2 if j == 31 else (1, 2, 3)[j % 3] for j in range(32)]
    assert axis.round().long().tolist() == want


@pytest.mark.parametrize("section", [(3, 3, 2), (4, 2, 2), (2, 2, 4)])
def test_mrope_chunked_matches_qwen2vl(section):
    cfg = Qwen2VLTextConfig(head_dim=16, hidden_size=32, num_attention_heads=2, rope_parameters=dict(
        rope_type="default", rope_theta=1e4, mrope_section=list(section)))
    pos = positions_3axis(23, seed=8)
    hf_cos, hf_sin = Qwen2VLRotaryEmbedding(cfg)(torch.zeros(1), pos[:, None, :])
    cos, sin = mrope_cos_sin(pos, 16, 1e4, section, interleaved=False)
    torch.testing.assert_close(cos, hf_cos[0, :, :8], rtol=0, atol=1e-6)
    torch.testing.assert_close(sin, hf_sin[0, :, :8], rtol=0, atol=1e-6)


@pytest.mark.parametrize("interleaved", [True, False])
def test_mrope_text_positions_are_plain_rope(interleaved):
    """Equal T/H/W positions give ordinary RoPE, angle = p * theta^(-2j/d) (fp64 truth, fp32-angle tolerance)."""
    p = torch.arange(0, 300, 7)
    cos, sin = mrope_cos_sin(p.expand(3, -1), 64, 1e7, interleaved=interleaved)
    ang = p[:, None].double() * 1e7 ** (-torch.arange(0, 64, 2, dtype=torch.float64) / 64)
    torch.testing.assert_close(cos.double(), ang.cos(), rtol=0, atol=1e-4)
    torch.testing.assert_close(sin.double(), ang.sin(), rtol=0, atol=1e-4)


# ---------------------------------------------------------------- apply_rope
@pytest.mark.parametrize("rd,d", [(64, 256), (16, 16), (8, 24)])
def test_apply_rope_matches_hf(rd, d):
    s, heads = 11, 3
    q, k = rand(s, heads, d, seed=9), rand(s, heads, d, seed=10)
    cos, sin = mrope_cos_sin(positions_3axis(s, seed=11), rd, 1e7, (rd // 2 - 2 * (rd // 6), rd // 6, rd // 6))
    hq, hk = hf.apply_rotary_pos_emb(q, k, torch.cat([cos, cos], -1), torch.cat([sin, sin], -1), unsqueeze_dim=1)
    torch.testing.assert_close(apply_rope(q, cos, sin), hq, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(apply_rope(k, cos, sin), hk, rtol=1e-5, atol=1e-5)


def test_apply_rope_fp64_complex_and_passthrough():
    x = rand(6, 2, 40, dtype=torch.float64, seed=12)
    ang = rand(6, 12, dtype=torch.float64, seed=13)
    got = apply_rope(x, ang.cos(), ang.sin())
    torch.testing.assert_close(got, complex_rotate(x, ang.cos()[:, None], ang.sin()[:, None]), rtol=1e-12, atol=1e-12)
    assert torch.equal(got[..., 24:], x[..., 24:])


def test_apply_rope_bf16_rounds_once():
    x = rand(4, 2, 16, seed=14).bfloat16()
    ang = rand(4, 8, seed=15)
    want = complex_rotate(x.double(), ang.cos().double()[:, None], ang.sin().double()[:, None])
    torch.testing.assert_close(apply_rope(x, ang.cos(), ang.sin()).double(), want, rtol=2**-8, atol=1e-6)


# ---------------------------------------------------------------- rope_index
@pytest.fixture(scope="module")
def hf_model():
    tc = dict(vocab_size=8, hidden_size=8, intermediate_size=8, num_hidden_layers=1, num_attention_heads=1,
              num_key_value_heads=1, head_dim=8, linear_key_head_dim=4, linear_value_head_dim=4,
              linear_num_key_heads=1, linear_num_value_heads=1)
    vc = dict(depth=0, hidden_size=8, num_heads=1, intermediate_size=8, out_hidden_size=8)
    return hf.Qwen3_5Model(Qwen3_5Config(text_config=tc, vision_config=vc)).eval()


def text(n, start=100):
    return list(range(start, start + n))


def image(h, w):
    return [VS] + [IMG] * (h * w // 4) + [VE]


def video(t, h, w):
    """One timestamp-text + vision_start/pad/end group per temporal patch, as the processor writes it."""
    out = []
    for i in range(t):
        out += text(3, 500 + 10 * i) + [VS] + [VID] * (h * w // 4) + [VE]
    return out


def g(*rows):
    return torch.tensor(rows, dtype=torch.int64) if rows else None


CASES = {
    "text_only": (text(9), None, None),
    "one_image": (text(3) + image(4, 6) + text(5), g((1, 4, 6)), None),
    "two_images_h2_w2": (text(2) + image(2, 2) + text(4) + image(6, 4) + text(1), g((1, 2, 2), (1, 6, 4)), None),
    "video_t3": (text(4) + video(3, 4, 2) + text(2), None, g((3, 4, 2))),
    "image_and_videos": (text(1) + image(2, 8) + text(2) + video(2, 2, 2) + video(1, 4, 4) + text(3),
                         g((1, 2, 8)), g((2, 2, 2), (1, 4, 4))),
    "ends_with_image": (text(2) + [VS] + [IMG] * 6, g((1, 4, 6)), None),
}


@pytest.mark.parametrize("case", CASES)
def test_rope_index_matches_hf(hf_model, case):
    ids, img, vid = CASES[case]
    ids = torch.tensor(ids)
    mm_type = (ids == IMG).int() + 2 * (ids == VID).int()
    with torch.no_grad():
        hf_pos, hf_delta = hf_model.get_rope_index(
            ids[None], mm_type[None], None if img is None else img.clone(), None if vid is None else vid.clone())
    pos, delta = rope_index(ids, img, vid)
    assert pos.dtype == torch.int64 and pos.shape == (3, len(ids))
    assert torch.equal(pos, hf_pos[:, 0])
    assert delta == int(hf_delta) and isinstance(delta, int)


def test_rope_index_architecture_doc_example():
    """docs/model.md 4.2: 3 text + VS + 70 image tokens (14x20 grid) + VE + 5 text -> delta -60."""
    ids = torch.tensor(text(3) + image(14, 20) + text(5))
    pos, delta = rope_index(ids, g((1, 14, 20)), None)
    img = pos[:, ids == IMG]
    assert delta == -60
    assert (img[0] == 4).all() and img[1].min() == 4 and img[1].max() == 10 and img[2].min() == 4 and img[2].max() == 13
    assert pos[:, 4 + 70].tolist() == [14, 14, 14] and pos[:, -1].tolist() == [19, 19, 19]


def test_rope_index_adjacent_grids():
    """Two images back to back (no text between): each grid takes exactly its own tokens."""
    ids = torch.tensor(text(1) + [IMG] * 2 + [IMG] * 1 + text(1))
    pos, delta = rope_index(ids, g((1, 2, 4), (1, 2, 2)), None)
    assert pos.tolist() == [[0, 1, 1, 3, 4], [0, 1, 1, 3, 4], [0, 1, 2, 3, 4]]
    assert delta == 0


def test_rope_index_int32_custom_ids():
    ids = torch.tensor([5, 7, 7, 5], dtype=torch.int32)
    pos, delta = rope_index(ids, g((1, 2, 4)), None, image_token_id=7, video_token_id=8)
    assert pos.tolist() == [[0, 1, 1, 3], [0, 1, 1, 3], [0, 1, 2, 3]] and delta == 0


@pytest.mark.parametrize("ids,img,vid,name", [
    (text(3) + [IMG] * 5, g((1, 4, 6)), None, "image_grid_thw"),            # 5 tokens, grid needs 6
    (text(3) + [IMG] * 6, None, None, "image_grid_thw"),                      # tokens but no grid
    (text(3), g((1, 2, 2)), None, "image_grid_thw"),                          # grid but no tokens
    (text(3) + [VID] * 2, None, g((3, 2, 2)), "video_grid_thw"),             # 3 frames need 3 tokens
    (text(1) + [IMG] * 3 + text(1) + [IMG] * 5, g((1, 4, 4), (1, 4, 4)), None, "image_grid_thw"),  # runs 3+5 vs 4+4
    (text(3) + [IMG], g((1, 3, 2)), None, "image_grid_thw"),                 # h not a multiple of merge
    ([], None, None, "input_ids"),
], ids=["too_few", "no_grid", "no_tokens", "video_count", "split_runs", "odd_grid", "empty"])
def test_rope_index_bad_input(ids, img, vid, name):
    with pytest.raises(ValueError, match=name):
        rope_index(torch.tensor(ids, dtype=torch.int64), img, vid)


def test_rope_index_bad_types():
    with pytest.raises(ValueError, match="input_ids"):
        rope_index(torch.zeros(1, 4, dtype=torch.int64), None, None)
    with pytest.raises(ValueError, match="input_ids"):
        rope_index(torch.zeros(4), None, None)
    with pytest.raises(ValueError, match="merge"):
        rope_index(torch.zeros(4, dtype=torch.int64), None, None, merge=0)


# ---------------------------------------------------------------- bad input: tables and rotations
QKV, CS = torch.zeros(3, 3 * 2 * 8), torch.zeros(3, 4)
BAD = [
    (lambda: qkv_bias_rope(torch.zeros(3, 2, 48), None, CS, CS, 2), "qkv"),
    (lambda: qkv_bias_rope(QKV.int(), None, CS, CS, 2), "qkv"),
    (lambda: qkv_bias_rope(torch.zeros(3, 47), None, CS, CS, 2), "qkv"),
    (lambda: qkv_bias_rope(torch.zeros(3, 3 * 2 * 7), None, torch.zeros(3, 3), torch.zeros(3, 3), 2), "head_dim"),
    (lambda: qkv_bias_rope(QKV, None, CS, CS, 0), "num_heads"),
    (lambda: qkv_bias_rope(QKV, torch.zeros(47), CS, CS, 2), "bias"),
    (lambda: qkv_bias_rope(QKV, torch.zeros(48, dtype=torch.float64), CS, CS, 2), "bias"),
    (lambda: qkv_bias_rope(QKV, None, torch.zeros(3, 5), torch.zeros(3, 5), 2), "cos"),
    (lambda: qkv_bias_rope(QKV, None, torch.zeros(4, 4), torch.zeros(4, 4), 2), "cos"),
    (lambda: qkv_bias_rope(QKV, None, CS, torch.zeros(3, 3), 2), "sin"),
    (lambda: qkv_bias_rope(QKV, None, CS.half(), CS.half(), 2), "cos"),
    (lambda: mrope_cos_sin(torch.zeros(2, 5, dtype=torch.int64), 64, 1e7), "positions"),
    (lambda: mrope_cos_sin(torch.zeros(3, 5), 64, 1e7), "positions"),
    (lambda: mrope_cos_sin(torch.zeros(3, 5, dtype=torch.int64), 63, 1e7), "rotary_dim"),
    (lambda: mrope_cos_sin(torch.zeros(3, 5, dtype=torch.int64), 64, 1e7, (11, 11, 11)), "section"),
    (lambda: mrope_cos_sin(torch.zeros(3, 5, dtype=torch.int64), 64, 1e7, (16, 16)), "section"),
    (lambda: mrope_cos_sin(torch.zeros(3, 5, dtype=torch.int64), 8, 1e7, (0, 2, 2)), "section"),  # H only gets 1 slot
    (lambda: mrope_cos_sin(torch.zeros(3, 5, dtype=torch.int64), 64, 0.0), "theta"),
    (lambda: apply_rope(torch.zeros(3, 8), CS, CS), "x"),
    (lambda: apply_rope(torch.zeros(3, 2, 6), CS, CS), "head_dim"),
    (lambda: apply_rope(torch.zeros(4, 2, 8), CS, CS), "cos"),
    (lambda: apply_rope(torch.zeros(3, 2, 8), CS, torch.zeros(3, 2)), "sin"),
]


@pytest.mark.parametrize("call,name", BAD, ids=[f"{i}-{n}" for i, (_, n) in enumerate(BAD)])
def test_bad_input(call, name):
    with pytest.raises(ValueError, match=name):
        call()


def test_device_mismatch():
    with pytest.raises(ValueError, match="device"):
        qkv_bias_rope(QKV, None, CS.to("meta"), CS.to("meta"), 2)
    with pytest.raises(ValueError, match="device"):
        apply_rope(torch.zeros(3, 2, 8), CS, CS.to("meta"))


# ---------------------------------------------------------------- qk_norm_rope
def qk_inputs(T, hq, hkv, d, rd, dtype, seed=20):
    qg, k, v = rand(T, hq, 2 * d, dtype=dtype, seed=seed), rand(T, hkv, d, dtype=dtype, seed=seed + 1), \
        rand(T, hkv, d, dtype=dtype, seed=seed + 2)
    wq, wk = 0.2 * rand(d, dtype=dtype, seed=seed + 3), 0.2 * rand(d, dtype=dtype, seed=seed + 4)
    sec = (rd // 2 - 2 * (rd // 6), rd // 6, rd // 6)
    cos, sin = mrope_cos_sin(positions_3axis(T, seed=seed + 5), rd, 1e7, sec)
    return qg, k, v, wq, wk, cos, sin


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_qk_norm_rope_matches_model_composition(dtype):
    """The composition model/language.py used before the fused op (reference ops, contiguous q/gate copies)."""
    from reference import rms_norm
    T, hq, hkv, d = 7, 4, 2, 32
    qg, k, _, wq, wk, cos, sin = qk_inputs(T, hq, hkv, d, 16, dtype)
    q, gate, kr = qk_norm_rope(qg, k, wq, wk, cos, sin, 1e-6)
    want_q = apply_rope(rms_norm(qg[..., :d].contiguous(), wq, 1e-6), cos, sin)
    want_k = apply_rope(rms_norm(k, wk, 1e-6), cos, sin)
    assert torch.equal(q, want_q) and torch.equal(kr, want_k) and torch.equal(gate, qg[..., d:].contiguous())
    assert gate.data_ptr() == qg.data_ptr() + d * qg.element_size()  # a view: no copy of the gate


def test_qk_norm_rope_matches_hf():
    """HF: Qwen3_5RMSNorm (1 + w) on each head, then apply_rotary_pos_emb on the first rotary dims (fp32)."""
    T, hq, hkv, d, rd = 9, 4, 2, 64, 16
    qg, k, _, wq, wk, cos, sin = qk_inputs(T, hq, hkv, d, rd, torch.float32, seed=30)
    qn, kn = hf.Qwen3_5RMSNorm(d, 1e-6), hf.Qwen3_5RMSNorm(d, 1e-6)
    with torch.no_grad():
        qn.weight.copy_(wq)
        kn.weight.copy_(wk)
        hq_, hk_ = hf.apply_rotary_pos_emb(qn(qg[..., :d]).transpose(0, 1), kn(k).transpose(0, 1),
                                           torch.cat([cos, cos], -1), torch.cat([sin, sin], -1), unsqueeze_dim=0)
    q, gate, kr = qk_norm_rope(qg, k, wq, wk, cos, sin, 1e-6)
    torch.testing.assert_close(q, hq_.transpose(0, 1), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(kr, hk_.transpose(0, 1), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("lengths,cached", [([1, 1, 1], [0, 5, 2]),      # decode: rows of different lengths
                                            ([3, 0, 4], [0, 0, 0]),      # prefill, a zero-length row
                                            ([2, 1, 3], [4, 7, 0])])     # chunked prefill
def test_qk_norm_rope_cache_write(lengths, cached):
    """The cache write == plain indexing of the returned k and the given v; every other slot untouched."""
    T, B, S, hq, hkv, d = sum(lengths), len(lengths), 8, 2, 2, 16
    qg, k, v, wq, wk, cos, sin = qk_inputs(T, hq, hkv, d, 8, torch.float32, seed=40)
    cu = torch.tensor([0] + lengths).cumsum(0).to(torch.int32)
    lens = torch.tensor(cached, dtype=torch.int64)
    kc, vc = torch.full((B, S, hkv, d), float("nan")), torch.full((B, S, hkv, d), float("nan"))
    q, gate, kr = qk_norm_rope(qg, k, wq, wk, cos, sin, 1e-6, v=v, k_cache=kc, v_cache=vc, cu_seqlens=cu,
                               lengths=lens)
    q0, _, k0 = qk_norm_rope(qg, k, wq, wk, cos, sin, 1e-6)
    assert torch.equal(q, q0) and torch.equal(kr, k0)
    want_k, want_v = torch.full_like(kc, float("nan")), torch.full_like(vc, float("nan"))
    for b in range(B):
        s, e, L = int(cu[b]), int(cu[b + 1]), cached[b]
        want_k[b, L:L + e - s], want_v[b, L:L + e - s] = k0[s:e], v[s:e]
    torch.testing.assert_close(kc, want_k, rtol=0, atol=0, equal_nan=True)
    torch.testing.assert_close(vc, want_v, rtol=0, atol=0, equal_nan=True)


def test_qk_norm_rope_bad_input():
    qg, k, v, wq, wk, cos, sin = qk_inputs(3, 2, 1, 8, 4, torch.float32)
    kc = torch.zeros(1, 2, 1, 8)
    cu, lens = torch.tensor([0, 3], dtype=torch.int32), torch.zeros(1, dtype=torch.int32)
    cases = [
        (dict(qg=qg[..., :15]), "qg"),
        (dict(qg=qg[0]), "qg"),
        (dict(k=k[..., :4]), "k"),
        (dict(k=k[:2]), "k"),
        (dict(q_weight=wq[:4]), "q_weight"),
        (dict(k_weight=wk[None]), "k_weight"),
        (dict(cos=cos[:2], sin=sin[:2]), "cos"),
        (dict(sin=sin[:, :1]), "sin"),
        (dict(v=v), "cache"),  # the cache write needs all five
        (dict(v=v, k_cache=kc, v_cache=kc, cu_seqlens=cu, lengths=lens), "capacity"),  # 3 tokens into 2 slots
        (dict(k=k.to("meta")), "device"),
    ]
    good = dict(qg=qg, k=k, q_weight=wq, k_weight=wk, cos=cos, sin=sin)
    for change, match in cases:
        with pytest.raises(ValueError, match=match):
            qk_norm_rope(**{**good, **change})
