"""Inputs of the glue family (scatter_image_embeds): builders, strategies, real shapes, bad inputs, peers.
Found by name from kernels.registry."""

from __future__ import annotations

import torch
from hypothesis import strategies as st

from . import Bad, Case, SIZES, dtypes, seeds


def build_scatter_image_embeds(s, h, dtype, seed=0, frac=0.5) -> Case:
    g = torch.Generator().manual_seed(seed)
    tok = torch.randn(s, h, generator=g).to(dtype)
    mask = torch.rand(s, generator=g) < frac
    img = torch.randn(int(mask.sum()), h, generator=g).to(dtype)
    return Case("scatter_image_embeds", (tok, img, mask), (((s, h), dtype),), f"{s}x{h}-{int(mask.sum())}img")


@st.composite
def _scatter_image_embeds(draw, small):
    return build_scatter_image_embeds(draw(st.integers(1, 24)), draw(st.sampled_from((1, 3, 8, 33))),
                                      draw(dtypes(small)), draw(seeds), draw(st.sampled_from((0.0, 0.5, 1.0))))


def scatter_image_embeds_cases(small: bool = False):
    return _scatter_image_embeds(small)


def scatter_image_embeds_example(dtype=torch.float32) -> Case:
    return build_scatter_image_embeds(4, 3, dtype, seed=1)


def scatter_image_embeds_real(dtype=torch.bfloat16, tokens: int = 4096) -> list[Case]:
    """A prompt of `tokens` tokens, about 1/4 of them image rows (4 patches merge into one), each model width."""
    out = []
    for size, s in SIZES.items():
        c = build_scatter_image_embeds(tokens, s["hidden"], dtype, frac=0.25)
        c.label = f"{size}-{c.label}"
        out.append(c)
    return out


def scatter_image_embeds_bad(device) -> list[Bad]:
    tok = torch.randn(4, 3, device=device)
    img = torch.randn(2, 3, device=device)
    mask = torch.tensor([True, False, True, False], device=device)
    return [
        Bad("count", (tok, torch.randn(3, 3, device=device), mask), "is_image marks 2.*3 rows", reference=True),
        Bad("image dtype", (tok, img.half(), mask), "image_embeds.*dtype", reference=True),
        Bad("image width", (tok, torch.randn(2, 4, device=device), mask), r"image_embeds.*\(M, 3\)", reference=True),
        Bad("mask dtype", (tok, img, mask.int()), "is_image.*dtype", reference=True),
        Bad("mask shape", (tok, img, mask[:3]), "is_image.*shape", reference=True),
        Bad("tokens 1-D", (tok[0], img, mask), "token_embeds.*dimensions", reference=True),
        Bad("tokens strided", (torch.randn(3, 4, device=device).t(), img, mask), "token_embeds.*contiguous"),
        Bad("out shape", (tok, img, mask), "out.*shape", kwargs={"out": torch.empty(4, 4, device=device)}),
    ]


def scatter_image_embeds_peers(args) -> dict:
    tok, img, mask = args

    def run():  # HF: masked_scatter on a copy
        return tok.masked_scatter(mask[:, None].expand_as(tok), img)
    return {"torch": run}
