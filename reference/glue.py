"""Multimodal glue: put the vision tower's output rows into the token embedding sequence."""

from __future__ import annotations

import torch

from ._checks import check_float, check_same_device, check_tensor

__all__ = ["scatter_image_embeds"]


def scatter_image_embeds(token_embeds: torch.Tensor, image_embeds: torch.Tensor, is_image: torch.Tensor) -> torch.Tensor:
    """Replace the placeholder rows, in sequence order, by the image (or video) embeddings.

    token_embeds: [S, H]; image_embeds: [M, H], same dtype, the merger outputs of all images concatenated;
    is_image: bool [S] (input_ids == image_token_id), with exactly M True entries.
    Returns a new [S, H]: row s is the next unused image_embeds row where is_image[s], else token_embeds[s].
    """
    check_float("token_embeds", token_embeds, ndim=2)
    s, h = token_embeds.shape
    check_tensor("image_embeds", image_embeds, ndim=2, dtypes=(token_embeds.dtype,))
    if image_embeds.shape[1] != h:
        raise ValueError(f"image_embeds must have shape (M, {h}) to match token_embeds, got {tuple(image_embeds.shape)}")
    check_tensor("is_image", is_image, shape=(s,), dtypes=(torch.bool,))
    check_same_device(token_embeds=token_embeds, image_embeds=image_embeds, is_image=is_image)
    count = int(is_image.sum())
    if count != image_embeds.shape[0]:
        raise ValueError(f"is_image marks {count} positions but image_embeds has {image_embeds.shape[0]} rows")
    out = token_embeds.clone()
    out[is_image] = image_embeds
    return out
