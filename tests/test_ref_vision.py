"""reference.vision against torch (conv3d, interpolate) and HF transformers (vision_utils, Qwen3_5VisionModel).

Tolerances: fp64 paths ~1e-12; through our fp32 tap weights (computed in fp64, rounded once) 1e-6; against
HF's tap weights 1e-5 (HF computes the source coordinate in fp32: error up to about 47 * 2^-24 = 3e-6);
index tensors and cu_seqlens exact.
"""

import pytest
import torch
import torch.nn.functional as F

from reference import add_pos_embed, patch_embed, vision_cu_seqlens, vision_pos_taps, vision_rope_cos_sin

vu = pytest.importorskip("transformers.vision_utils")
hf = pytest.importorskip("transformers.models.qwen3_5.modeling_qwen3_5")
from transformers.models.qwen3_5.configuration_qwen3_5 import Qwen3_5VisionConfig  # noqa: E402

# (t, h, w) grids: h or w == 2, t > 1 videos, several images packed, a grid larger than the 48x48 table.
GRIDS = [
    [(1, 2, 2)],
    [(1, 2, 6), (1, 4, 2)],
    [(3, 4, 6)],
    [(1, 2, 2), (2, 6, 4), (1, 10, 8)],
    [(1, 52, 4)],
]
GRID_IDS = ["2x2", "2x6+4x2", "video_t3", "packed3", "tall52"]


def grid(rows):
    return torch.tensor(rows, dtype=torch.int64)


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def to_merge_block_order(img):
    """[h, w, D] raster -> [h*w, D] in 2x2 merge-block order, by reshape/permute (not the index formula)."""
    h, w, d = img.shape
    return img.reshape(h // 2, 2, w // 2, 2, d).permute(0, 2, 1, 3, 4).reshape(h * w, d)


# ---------------------------------------------------------------- patch_embed
@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-12), (torch.float32, 2e-5)])
@pytest.mark.parametrize("with_bias", [True, False])
def test_patch_embed_matches_conv3d(dtype, tol, with_bias):
    g = gen(1)
    n, d = 5, 8
    pv = torch.randn(n, 1536, generator=g, dtype=dtype)
    w = torch.randn(d, 3, 2, 16, 16, generator=g, dtype=dtype) * 0.05
    b = torch.randn(d, generator=g, dtype=dtype) if with_bias else None
    want = F.conv3d(pv.view(n, 3, 2, 16, 16), w, b, stride=(2, 16, 16)).view(n, d)
    got = patch_embed(pv, w, b)
    assert got.dtype == dtype and got.shape == (n, d)
    torch.testing.assert_close(got, want, rtol=tol, atol=tol)


# ---------------------------------------------------------------- vision_pos_taps / add_pos_embed
@pytest.mark.parametrize("rows", GRIDS, ids=GRID_IDS)
def test_pos_taps_match_hf_helper(rows):
    gt = grid(rows)
    index, weight = vision_pos_taps(gt)
    hf_index, hf_weight = vu.get_vision_interpolation_indices_and_weights(
        gt, num_grid_per_side=48, mode="bilinear", align_corners=True, spatial_merge_size=2)
    assert index.dtype == torch.int32 and weight.dtype == torch.float32
    assert index.shape == weight.shape == (4, sum(t * h * w for t, h, w in rows))
    assert torch.equal(index.long(), hf_index.T)
    torch.testing.assert_close(weight, hf_weight.T.float(), rtol=0, atol=1e-5)
    torch.testing.assert_close(weight.sum(0), torch.ones(weight.shape[1]), rtol=0, atol=1e-6)


@pytest.mark.parametrize("rows", GRIDS, ids=GRID_IDS)
def test_pos_embed_matches_interpolate(rows):
    """x + F.interpolate(48x48 table, (h, w), bilinear, align_corners=True) in merge-block order, repeated over t."""
    g = gen(2)
    d, side = 6, 48
    table = torch.randn(side * side, d, generator=g, dtype=torch.float64)
    n = sum(t * h * w for t, h, w in rows)
    x = torch.randn(n, d, generator=g, dtype=torch.float64)
    want = []
    for t, h, w in rows:
        img = F.interpolate(table.T.reshape(1, d, side, side), size=(h, w), mode="bilinear", align_corners=True)
        want.append(to_merge_block_order(img[0].permute(1, 2, 0)).repeat(t, 1))
    want = x + torch.cat(want)
    got = add_pos_embed(x, table, *vision_pos_taps(grid(rows)))
    assert got.dtype == torch.float64
    torch.testing.assert_close(got, want, rtol=0, atol=1e-6)


def test_pos_taps_size_one_axis_and_small_table():
    """merge=1 allows h or w == 1 (coordinate 0) and other table sides; still F.interpolate."""
    rows, side, d = [(2, 1, 5), (1, 3, 1), (1, 4, 7)], 5, 3
    g = gen(3)
    table = torch.randn(side * side, d, generator=g, dtype=torch.float64)
    n = sum(t * h * w for t, h, w in rows)
    x = torch.zeros(n, d, dtype=torch.float64)
    want = []
    for t, h, w in rows:
        img = F.interpolate(table.T.reshape(1, d, side, side), size=(h, w), mode="bilinear", align_corners=True)
        want.append(img[0].permute(1, 2, 0).reshape(h * w, d).repeat(t, 1))  # merge=1: raster order
    got = add_pos_embed(x, table, *vision_pos_taps(grid(rows), side=side, merge=1))
    torch.testing.assert_close(got, torch.cat(want), rtol=0, atol=1e-6)


def test_add_pos_embed_rounds_once_in_bf16():
    g = gen(4)
    x = torch.randn(8, 4, generator=g).bfloat16()
    table = torch.randn(48 * 48, 4, generator=g).bfloat16()
    index, weight = vision_pos_taps(grid([(2, 2, 2)]))
    pos = sum(weight[k, :, None] * table[index[k].long()].float() for k in range(4))
    assert torch.equal(add_pos_embed(x, table, index, weight), (x.float() + pos).bfloat16())


def test_patch_and_pos_embed_match_hf_vision_model():
    """A depth-0 Qwen3_5VisionModel's last_hidden_state is exactly patch_embed + interpolated pos_embed."""
    torch.manual_seed(5)
    cfg = Qwen3_5VisionConfig(depth=0, hidden_size=16, num_heads=2, intermediate_size=16, out_hidden_size=8)
    model = hf.Qwen3_5VisionModel(cfg).double().eval()
    rows = [(1, 2, 4), (2, 4, 2), (1, 6, 6)]
    n = sum(t * h * w for t, h, w in rows)
    pv = torch.randn(n, 1536, dtype=torch.float64)
    with torch.no_grad():
        want = model(pv, grid(rows)).last_hidden_state
    proj = model.patch_embed.proj
    got = add_pos_embed(patch_embed(pv, proj.weight.detach(), proj.bias.detach()),
                        model.pos_embed.weight.detach(), *vision_pos_taps(grid(rows)))
    torch.testing.assert_close(got, want, rtol=0, atol=2e-5)  # table values ~N(0,1): HF tap error * |table|


# ---------------------------------------------------------------- vision_rope_cos_sin
@pytest.mark.parametrize("head_dim", [64, 72, 80, 128])
@pytest.mark.parametrize("rows", GRIDS[:4], ids=GRID_IDS[:4])
def test_vision_rope_matches_hf(head_dim, rows):
    gt = grid(rows)
    cfg = Qwen3_5VisionConfig(depth=0, hidden_size=2 * head_dim, num_heads=2)
    rope = hf.Qwen3_5VisionRotaryEmbedding(cfg)
    pos = vu.get_vision_position_ids(gt, 2)  # [N, 2] (row, col), merge-block order
    hf_cos, hf_sin = rope(torch.zeros(1), pos)  # [N, hd] = [angles, angles]
    cos, sin = vision_rope_cos_sin(gt, head_dim)
    half = head_dim // 2
    assert cos.dtype == sin.dtype == torch.float32 and cos.shape == (pos.shape[0], half)
    torch.testing.assert_close(cos, hf_cos[:, :half], rtol=0, atol=1e-6)
    torch.testing.assert_close(sin, hf_sin[:, :half], rtol=0, atol=1e-6)
    assert torch.equal(hf_cos[:, :half], hf_cos[:, half:])  # HF duplicates; we keep one copy


def test_vision_rope_angles_fp64():
    """Angles from first principles: row * theta^(-4j/hd) then col * theta^(-4j/hd), fp32 accuracy."""
    rows, hd, theta = [(2, 4, 6)], 16, 1e4
    cos, sin = vision_rope_cos_sin(grid(rows), hd, theta)
    r, c = vu.get_vision_position_ids(grid(rows), 2).double().unbind(1)
    freq = theta ** (-4.0 * torch.arange(hd // 4, dtype=torch.float64) / hd)
    angle = torch.cat([r[:, None] * freq, c[:, None] * freq], dim=1)
    torch.testing.assert_close(cos.double(), angle.cos(), rtol=0, atol=1e-5)
    torch.testing.assert_close(sin.double(), angle.sin(), rtol=0, atol=1e-5)


# ---------------------------------------------------------------- vision_cu_seqlens
@pytest.mark.parametrize("rows", GRIDS, ids=GRID_IDS)
def test_cu_seqlens(rows):
    got = vision_cu_seqlens(grid(rows))
    want = [0]
    for t, h, w in rows:
        for _ in range(t):
            want.append(want[-1] + h * w)
    assert got.dtype == torch.int32
    assert got.tolist() == want
    assert torch.equal(got, vu.get_vision_cu_seqlens(grid(rows)))


# ---------------------------------------------------------------- bad input
def _pe_args(**kw):
    args = dict(pixel_values=torch.zeros(2, 1536), weight=torch.zeros(4, 3, 2, 16, 16), bias=torch.zeros(4))
    args.update(kw)
    return args


@pytest.mark.parametrize("kw,name", [
    (dict(pixel_values=torch.zeros(2, 1535)), "pixel_values"),
    (dict(pixel_values=torch.zeros(2, 3, 512)), "pixel_values"),
    (dict(pixel_values=torch.zeros(2, 1536, dtype=torch.int32)), "pixel_values"),
    (dict(weight=torch.zeros(4, 3, 2, 16, 16, dtype=torch.float64)), "weight"),
    (dict(weight=torch.zeros(4, 1536)), "weight"),
    (dict(bias=torch.zeros(5)), "bias"),
    (dict(bias=torch.zeros(4, dtype=torch.float16)), "bias"),
])
def test_patch_embed_bad_input(kw, name):
    with pytest.raises(ValueError, match=name):
        patch_embed(**_pe_args(**kw))


@pytest.mark.parametrize("fn", [vision_pos_taps, vision_cu_seqlens,
                                lambda g: vision_rope_cos_sin(g, 64)], ids=["taps", "cu", "rope"])
@pytest.mark.parametrize("bad", [
    torch.tensor([[1, 2, 2]], dtype=torch.float32),     # not integer
    torch.tensor([1, 2, 2]),                            # not [n, 3]
    torch.tensor([[1, 2, 2, 1]]),
    torch.tensor([[0, 2, 2]]),                          # non-positive
    torch.zeros(0, 3, dtype=torch.int64),               # no images
], ids=["float", "1d", "4cols", "zero_t", "empty"])
def test_grid_bad_input(fn, bad):
    with pytest.raises(ValueError, match="grid_thw"):
        fn(bad)


def test_grid_not_multiple_of_merge():
    with pytest.raises(ValueError, match="grid_thw"):
        vision_pos_taps(grid([(1, 3, 2)]))
    with pytest.raises(ValueError, match="grid_thw"):
        vision_rope_cos_sin(grid([(1, 2, 5)]), 64)


def test_scalar_args_bad_input():
    g = grid([(1, 2, 2)])
    with pytest.raises(ValueError, match="side"):
        vision_pos_taps(g, side=0)
    with pytest.raises(ValueError, match="merge"):
        vision_pos_taps(g, merge=0)
    with pytest.raises(ValueError, match="head_dim"):
        vision_rope_cos_sin(g, 70)
    with pytest.raises(ValueError, match="head_dim"):
        vision_rope_cos_sin(g, 0)
    with pytest.raises(ValueError, match="theta"):
        vision_rope_cos_sin(g, 64, theta=-1.0)


def _ape_args(**kw):
    index, weight = vision_pos_taps(grid([(1, 2, 2)]))
    args = dict(x=torch.zeros(4, 3), table=torch.zeros(48 * 48, 3), index=index, weight=weight)
    args.update(kw)
    return args


@pytest.mark.parametrize("kw,name", [
    (dict(x=torch.zeros(4, 3, 1)), "x"),
    (dict(table=torch.zeros(48 * 48, 4)), "table"),
    (dict(table=torch.zeros(48 * 48, 3, dtype=torch.float64)), "table"),
    (dict(index=torch.zeros(4, 5, dtype=torch.int32)), "index"),
    (dict(index=torch.zeros(4, 4)), "index"),
    (dict(index=torch.full((4, 4), 48 * 48, dtype=torch.int32)), "index"),
    (dict(index=torch.full((4, 4), -1, dtype=torch.int32)), "index"),
    (dict(weight=torch.zeros(3, 4)), "weight"),
    (dict(weight=torch.zeros(4, 4, dtype=torch.float16)), "weight"),
])
def test_add_pos_embed_bad_input(kw, name):
    with pytest.raises(ValueError, match=name):
        add_pos_embed(**_ape_args(**kw))


def test_non_tensor_is_type_error():
    with pytest.raises(TypeError, match="pixel_values"):
        patch_embed([[0.0]], torch.zeros(1, 1, 1, 1, 1), None)
    with pytest.raises(TypeError, match="grid_thw"):
        vision_cu_seqlens([[1, 2, 2]])


def test_device_mismatch():
    meta = dict(device="meta")
    with pytest.raises(ValueError, match="device"):
        patch_embed(torch.zeros(2, 1536), torch.zeros(4, 3, 2, 16, 16, **meta), None)
    with pytest.raises(ValueError, match="device"):
        add_pos_embed(**_ape_args(table=torch.zeros(48 * 48, 3, **meta)))


def test_size_hints_are_checked():
    """num_patches / num_segments let kernels skip a device read; the reference checks them."""
    import reference as R

    grid = torch.tensor([[1, 4, 6], [2, 2, 2]])
    assert torch.equal(R.vision_cu_seqlens(grid, num_segments=3), R.vision_cu_seqlens(grid))
    idx, _ = R.vision_pos_taps(grid, num_patches=32)
    assert idx.shape == (4, 32)
    with pytest.raises(ValueError, match="num_patches"):
        R.vision_rope_cos_sin(grid, 64, num_patches=31)
    with pytest.raises(ValueError, match="num_segments"):
        R.vision_cu_seqlens(grid, num_segments=2)
