"""Numba kernel for the multimodal glue: the image-row scatter (a bit-exact copy)."""

from __future__ import annotations

from numba import cuda


@cuda.jit
def scatter_rows_kernel(tok, img, is_image, ordinal, out, n, width):
    """out[s, c] = img[ordinal[s] - 1, c] where is_image[s] else tok[s, c]; all flat, n = S*width elements.
    Rows are copied as raw bits (any dtype viewed as an integer of its width). ordinal: inclusive cumsum of
    is_image."""
    for e in range(cuda.grid(1), n, cuda.gridsize(1)):
        s = e // width
        if is_image[s]:
            out[e] = img[(ordinal[s] - 1) * width + e % width]
        else:
            out[e] = tok[e]
