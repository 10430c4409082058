"""Multimodal glue on the GPU (Numba kernels): same signatures and exact results as reference.rope_index and
reference.scatter_image_embeds.

Both run once per prompt and each reads a few numbers back to the host: rope_index returns delta as an int
(as the reference does) and reports malformed input; scatter_image_embeds checks that the number of
placeholders equals the number of image rows. Tensors are CUDA tensors on a GPU run (a CPU tensor is an
error), CPU tensors in the Numba simulator.
"""

from __future__ import annotations

import numpy as np
import torch

from reference._checks import check_grid_thw

from .runtime.checks import check_input, check_out

__all__ = ["rope_index", "scatter_image_embeds"]

_INT_DTYPES = (torch.int32, torch.int64)
# a copy moves bits: each float dtype travels as the integer type of its width
_BITS = {torch.float32: torch.int32, torch.float16: torch.int16, torch.bfloat16: torch.int16,
         torch.float64: torch.int64}


def rope_index(input_ids: torch.Tensor, image_grid_thw: torch.Tensor | None, video_grid_thw: torch.Tensor | None,
               image_token_id: int = 248056, video_token_id: int = 248057,
               merge: int = 2, *, out: torch.Tensor | None = None) -> tuple[torch.Tensor, int]:
    """Qwen3.5 mRoPE position ids for one sequence (see reference.rope_index).

    input_ids: int32/int64 [S]; image_grid_thw / video_grid_thw: int32/int64 [n, 3] or None.
    Returns (positions int64 [3, S] (into `out` when given), delta int). Raises ValueError when the pad
    tokens do not match the grids.
    """
    from .numba import elementwise_launch
    from .numba.glue import rope_index_kernel
    from .runtime.numba_interop import check_kernel_device, launch

    check_input("input_ids", input_ids, ndim=1, dtypes=_INT_DTYPES)
    if input_ids.shape[0] == 0:
        raise ValueError("input_ids must not be empty")
    if not isinstance(merge, int) or isinstance(merge, bool) or merge <= 0:
        raise ValueError(f"merge must be a positive int, got {merge!r}")
    for name, tok in (("image_token_id", image_token_id), ("video_token_id", video_token_id)):
        if not isinstance(tok, int) or isinstance(tok, bool):
            raise ValueError(f"{name} must be an int, got {tok!r}")
    if image_token_id == video_token_id:
        raise ValueError(f"image_token_id and video_token_id must differ, both are {image_token_id}")
    for name, g in (("image_grid_thw", image_grid_thw), ("video_grid_thw", video_grid_thw)):
        if g is not None:
            check_input(name, g, ndim=2, dtypes=_INT_DTYPES)
    dev, s = input_ids.device, input_ids.shape[0]
    if out is not None:
        check_out("out", out, (3, s), torch.int64)
    check_kernel_device(input_ids=input_ids, image_grid_thw=image_grid_thw, video_grid_thw=video_grid_thw, out=out)

    grids, need = [], []
    for name, g, per_frame in (("image_grid_thw", image_grid_thw, False), ("video_grid_thw", video_grid_thw, True)):
        if g is None:
            g = torch.zeros(0, 3, dtype=torch.int64, device=dev)
        thw = check_grid_thw(g, name, merge).tolist()  # host read of a few ints: values and token counts
        grids.append(g.long())  # the kernel reads int64 ids and grids (one compiled variant)
        need.append(sum(t * h * w for t, h, w in thw) // merge**2)
    img_grid, vid_grid = grids

    is_img, is_vid = input_ids == image_token_id, input_ids == video_token_id
    cimg, cvid = torch.cumsum(is_img, 0), torch.cumsum(is_vid, 0)  # int64 inclusive prefix counts
    pos = torch.empty(3, s, dtype=torch.int64, device=dev) if out is None else out
    err = torch.full((1,), s, dtype=torch.int64, device=dev)
    launch(rope_index_kernel, *elementwise_launch(s), input_ids.long(), cimg, cvid, img_grid,
           np.int64(img_grid.shape[0]), vid_grid, np.int64(vid_grid.shape[0]), np.int64(image_token_id),
           np.int64(video_token_id), np.int64(merge), pos, err)

    first_bad, have_img, have_vid, top = torch.stack([err[0], cimg[-1], cvid[-1], pos.max()]).tolist()
    for name, tok, have, want in (("image_grid_thw", image_token_id, have_img, need[0]),
                                  ("video_grid_thw", video_token_id, have_vid, need[1])):
        if have != want:
            raise ValueError(f"input_ids has {have} tokens with id {tok}, but {name} needs {want}")
    if first_bad < s:
        raise ValueError(f"input_ids[{first_bad}] is a pad token whose grid (image, or video frame) does not lie "
                         f"on consecutive pad tokens of its kind")
    return pos, top + 1 - s


def scatter_image_embeds(token_embeds: torch.Tensor, image_embeds: torch.Tensor, is_image: torch.Tensor, *,
                         out: torch.Tensor | None = None) -> torch.Tensor:
    """Replace the placeholder rows, in order, by the image rows (see reference.scatter_image_embeds).

    token_embeds: [S, H]; image_embeds: [M, H], same dtype; is_image: bool [S] with exactly M True entries.
    Returns a new [S, H] (or `out`, same shape and dtype, not overlapping the inputs); a bit-exact copy.
    """
    from .numba import elementwise_launch
    from .numba.glue import scatter_rows_kernel
    from .runtime.numba_interop import check_kernel_device, launch

    check_input("token_embeds", token_embeds, ndim=2, dtypes=tuple(_BITS))
    s, h = token_embeds.shape
    check_input("image_embeds", image_embeds, ndim=2, dtypes=(token_embeds.dtype,))
    if image_embeds.shape[1] != h:
        raise ValueError(f"image_embeds must have shape (M, {h}) to match token_embeds, got "
                         f"{tuple(image_embeds.shape)}")
    check_input("is_image", is_image, shape=(s,), dtypes=(torch.bool,))
    if out is not None:
        check_out("out", out, (s, h), token_embeds.dtype)
    check_kernel_device(token_embeds=token_embeds, image_embeds=image_embeds, is_image=is_image, out=out)
    ordinal = torch.cumsum(is_image, 0)
    count = int(ordinal[-1]) if s else 0  # the one host read
    if count != image_embeds.shape[0]:
        raise ValueError(f"is_image marks {count} positions but image_embeds has {image_embeds.shape[0]} rows")
    out = torch.empty_like(token_embeds) if out is None else out
    bits = _BITS[token_embeds.dtype]
    launch(scatter_rows_kernel, *elementwise_launch(out.numel()), token_embeds.view(bits), image_embeds.view(bits),
           is_image, ordinal, out.view(bits), np.int64(out.numel()), np.int64(h))
    return out
