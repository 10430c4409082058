"""reference.glue.scatter_image_embeds against HF's formulation (Tensor.masked_scatter on the expanded mask)
and a plain row loop. Exact (it only moves rows)."""

import pytest
import torch

from reference import scatter_image_embeds


def case(s=12, h=5, marks=(2, 3, 4, 9), dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    tok = torch.randn(s, h, generator=g).to(dtype)
    is_image = torch.zeros(s, dtype=torch.bool)
    is_image[list(marks)] = True
    img = torch.randn(len(marks), h, generator=g).to(dtype)
    return tok, img, is_image


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64])
@pytest.mark.parametrize("marks", [(2, 3, 4, 9), (), tuple(range(12))], ids=["some", "none", "all"])
def test_scatter_matches_masked_scatter(dtype, marks):
    tok, img, is_image = case(marks=marks, dtype=dtype)
    before = tok.clone()
    got = scatter_image_embeds(tok, img, is_image)
    assert torch.equal(got, tok.masked_scatter(is_image[:, None].expand_as(tok), img))
    assert torch.equal(tok, before)  # the input is not modified
    rows, j = [], 0
    for s in range(tok.shape[0]):
        rows.append(img[j] if is_image[s] else tok[s])
        j += int(is_image[s])
    assert torch.equal(got, torch.stack(rows))


def test_scatter_bad_input():
    tok, img, is_image = case()
    with pytest.raises(ValueError, match="image_embeds"):  # count mismatch, too few / too many rows
        scatter_image_embeds(tok, img[:3], is_image)
    with pytest.raises(ValueError, match="image_embeds"):
        scatter_image_embeds(tok, torch.cat([img, img[:1]]), is_image)
    with pytest.raises(ValueError, match="image_embeds"):
        scatter_image_embeds(tok, img[:, :4], is_image)
    with pytest.raises(ValueError, match="image_embeds"):
        scatter_image_embeds(tok, img.double(), is_image)
    with pytest.raises(ValueError, match="is_image"):
        scatter_image_embeds(tok, img, is_image.int())
    with pytest.raises(ValueError, match="is_image"):
        scatter_image_embeds(tok, img, is_image[:-1])
    with pytest.raises(ValueError, match="token_embeds"):
        scatter_image_embeds(tok[None], img, is_image)
    with pytest.raises(ValueError, match="token_embeds"):
        scatter_image_embeds(tok.long(), img.long(), is_image)
    with pytest.raises(TypeError, match="is_image"):
        scatter_image_embeds(tok, img, [True] * 12)


def test_device_mismatch():
    tok, img, is_image = case()
    with pytest.raises(ValueError, match="device"):
        scatter_image_embeds(tok, img, is_image.to("meta"))
