"""Bad input to the Numba-kernel wrappers gets a clear error naming the argument, before anything launches,
and the reference twin rejects the same input (except for device/layout rules, which are kernel-only).

Runs in the simulator on CPU (the wrong device there is any non-CPU tensor: we use "meta") or on a GPU
(the wrong device is the CPU).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

import reference as R
from kernels.registry import REGISTRY

pytestmark = pytest.mark.sim


@pytest.fixture(scope="module")
def wrong_device(device):
    return "meta" if device == "cpu" else "cpu"


def numba(name):
    return REGISTRY[name].kernels["numba"]


def expect(exc, match, fn, *args, reference=None, **kw):
    """fn(*args) raises exc matching `match`; so does `reference` (the reference twin) if given."""
    with pytest.raises(exc, match=match):
        fn(*args, **kw)
    if reference is not None:
        cpu = [a.cpu() if isinstance(a, torch.Tensor) else a for a in args]
        with pytest.raises(exc):
            reference(*cpu, **{k: v for k, v in kw.items() if k not in ("out", "num_patches", "num_segments")})


# ------------------------------------------------------------------------------------------- vision
VISION = ("vision_pos_taps", "vision_rope_cos_sin", "vision_cu_seqlens")


def _extra(op):
    return (8,) if op == "vision_rope_cos_sin" else ()


@pytest.mark.parametrize("op", VISION)
def test_vision_grid_errors(device, wrong_device, op):
    fn, ref = numba(op), getattr(R, op)
    ok = torch.tensor([[1, 2, 4]], device=device)
    x = _extra(op)
    expect(TypeError, "grid_thw", fn, [[1, 2, 4]], *x, reference=ref)
    expect(ValueError, "grid_thw.*dtype", fn, ok.float(), *x, reference=ref)
    expect(ValueError, r"grid_thw.*\(n, 3\)|grid_thw.*shape", fn, ok[:, :2], *x, reference=ref)
    expect(ValueError, "grid_thw.*at least one", fn, ok[:0], *x, reference=ref)
    expect(ValueError, "grid_thw.*positive", fn, torch.tensor([[1, 0, 4]], device=device), *x, reference=ref)
    expect(ValueError, "grid_thw.*contiguous", fn, torch.tensor([[1, 1], [2, 2], [4, 4]], device=device).t(), *x)
    expect(ValueError, "grid_thw.*(CUDA|CPU)", fn, ok.to(wrong_device), *x)
    if op != "vision_cu_seqlens":  # segments don't care about the merge blocks
        expect(ValueError, "grid_thw.*multiples of merge", fn, torch.tensor([[1, 3, 4]], device=device), *x,
               reference=ref)
        expect(ValueError, "merge", fn, ok, *x, merge=0, reference=ref)


def test_vision_scalar_and_count_errors(device):
    g = torch.tensor([[2, 2, 4]], device=device)
    taps, rope, cu = numba("vision_pos_taps"), numba("vision_rope_cos_sin"), numba("vision_cu_seqlens")
    expect(ValueError, "side", taps, g, 0, reference=R.vision_pos_taps)
    expect(ValueError, "num_patches", taps, g, num_patches=-1)
    expect(ValueError, "num_patches", taps, g, num_patches=16.0)
    expect(ValueError, "head_dim.*multiple of 4", rope, g, 10, reference=R.vision_rope_cos_sin)
    expect(ValueError, "head_dim", rope, g, 0, reference=R.vision_rope_cos_sin)
    expect(ValueError, "theta", rope, g, 8, -1.0)
    expect(ValueError, "num_segments", cu, g, num_segments=-2)


def test_vision_out_errors(device, wrong_device):
    g = torch.tensor([[1, 2, 4]], device=device)
    taps, cu = numba("vision_pos_taps"), numba("vision_cu_seqlens")
    idx, w = torch.empty(4, 8, dtype=torch.int32, device=device), torch.empty(4, 8, device=device)
    expect(ValueError, "out must be a tuple", taps, g, out=idx)
    expect(ValueError, r"out \(index\).*shape", taps, g, out=(idx[:, :7], w))
    expect(ValueError, r"out \(weight\).*dtype", taps, g, out=(idx, w.double()))
    expect(ValueError, r"out \(index\).*(CUDA|CPU)", taps, g, out=(idx.to(wrong_device), w))
    expect(ValueError, "out.*dtype", cu, g, out=torch.empty(2, dtype=torch.int64, device=device))


# --------------------------------------------------------------------------------------------- glue
IMG, VID = 90, 91


def test_rope_index_errors(device, wrong_device):
    fn = numba("rope_index")
    ig = torch.tensor([[1, 2, 4]], device=device)  # 2 image tokens
    ids = torch.tensor([1, IMG, IMG, 2], device=device)
    kw = dict(image_token_id=IMG, video_token_id=VID)
    expect(ValueError, "input_ids.*dimensions", fn, ids[None], ig, None, **kw, reference=R.rope_index)
    expect(ValueError, "input_ids.*dtype", fn, ids.float(), ig, None, **kw, reference=R.rope_index)
    expect(ValueError, "input_ids.*empty", fn, ids[:0], ig, None, **kw, reference=R.rope_index)
    expect(ValueError, "input_ids.*(CUDA|CPU)", fn, ids.to(wrong_device), ig, None, **kw)
    expect(ValueError, "image_grid_thw.*(CUDA|CPU)", fn, ids, ig.to(wrong_device), None, **kw)
    expect(ValueError, "image_grid_thw.*multiples", fn, ids, torch.tensor([[1, 3, 4]], device=device), None, **kw,
           reference=R.rope_index)
    expect(ValueError, "video_grid_thw", fn, ids, ig, torch.tensor([[1, 2]], device=device), **kw,
           reference=R.rope_index)
    expect(ValueError, "merge", fn, ids, ig, None, **kw, merge=0, reference=R.rope_index)
    expect(ValueError, "differ", fn, ids, ig, None, image_token_id=IMG, video_token_id=IMG)
    # too few / too many pads for the grids
    expect(ValueError, "input_ids has 2 tokens with id 90.*needs 4", fn, ids,
           torch.tensor([[1, 2, 4], [1, 2, 4]], device=device), None, **kw, reference=R.rope_index)
    expect(ValueError, "input_ids has 0 tokens with id 91.*needs 2", fn, ids, ig,
           torch.tensor([[2, 2, 2]], device=device), **kw, reference=R.rope_index)
    # the right number of pads, but the grid's pads are split by a text token
    split = torch.tensor([1, IMG, 5, IMG, 2], device=device)
    expect(ValueError, r"input_ids\[3\]", fn, split, ig, None, **kw, reference=R.rope_index)
    # an image pad inside a video frame's run
    mixed = torch.tensor([VID, IMG, VID, IMG], device=device)
    expect(ValueError, r"input_ids\[2\]", fn, mixed, ig, torch.tensor([[1, 2, 4]], device=device), **kw,
           reference=R.rope_index)


def test_scatter_image_embeds_errors(device, wrong_device):
    fn, ref = numba("scatter_image_embeds"), R.scatter_image_embeds
    tok = torch.randn(4, 3, device=device)
    img = torch.randn(2, 3, device=device)
    mask = torch.tensor([True, False, True, False], device=device)
    expect(ValueError, "is_image marks 2.*3 rows", fn, tok, torch.randn(3, 3, device=device), mask, reference=ref)
    expect(ValueError, "image_embeds.*dtype", fn, tok, img.half(), mask, reference=ref)
    expect(ValueError, r"image_embeds.*\(M, 3\)", fn, tok, torch.randn(2, 4, device=device), mask, reference=ref)
    expect(ValueError, "is_image.*dtype", fn, tok, img, mask.int(), reference=ref)
    expect(ValueError, "is_image.*shape", fn, tok, img, mask[:3], reference=ref)
    expect(ValueError, "token_embeds.*dimensions", fn, tok[0], img, mask, reference=ref)
    expect(ValueError, "token_embeds.*contiguous", fn, torch.randn(3, 4, device=device).t(), img, mask)
    expect(ValueError, "is_image.*(CUDA|CPU)", fn, tok, img, mask.to(wrong_device))
    expect(ValueError, "out.*shape", fn, tok, img, mask, out=torch.empty(4, 4, device=device))


# ------------------------------------------------------------------------------- layer_norm, bias_gelu
def test_layer_norm_twin_errors(device, wrong_device):
    fn, ref = REGISTRY["layer_norm"].kernels["numba"], R.layer_norm
    x, w, b = torch.randn(2, 8, device=device), torch.randn(8, device=device), torch.randn(8, device=device)
    expect(TypeError, "x", fn, x.tolist(), w, b, reference=ref)
    expect(ValueError, "x.*dimensions", fn, x[0], w, b, reference=ref)
    expect(ValueError, "x.*dtype", fn, x.int(), w.int(), b.int(), reference=ref)
    expect(ValueError, "x.*dtype", fn, x.double(), w.double(), b.double())  # kernels take fp32/fp16/bf16
    expect(ValueError, "weight.*shape", fn, x, w[:7], b, reference=ref)
    expect(ValueError, "bias.*dtype", fn, x, w, b.half(), reference=ref)
    expect(ValueError, "eps", fn, x, w, b, -1.0, reference=ref)
    expect(ValueError, "x.*contiguous", fn, torch.randn(8, 2, device=device).t(), w, b)
    expect(ValueError, "weight.*(CUDA|CPU)", fn, x, w.to(wrong_device), b)
    expect(ValueError, "out.*shape", fn, x, w, b, out=torch.empty(2, 7, device=device))


def test_bias_gelu_twin_errors(device, wrong_device):
    fn, ref = REGISTRY["bias_gelu"].kernels["numba"], R.bias_gelu
    x, b = torch.randn(2, 8, device=device), torch.randn(8, device=device)
    expect(ValueError, "approximate", fn, x, b, "exact", reference=ref)
    expect(ValueError, "bias.*shape", fn, x, b[:4], reference=ref)
    expect(ValueError, "bias.*dtype", fn, x, b.half(), reference=ref)
    expect(ValueError, "x.*dimensions", fn, x[0], b, reference=ref)
    expect(ValueError, "x.*(CUDA|CPU)", fn, x.to(wrong_device), b.to(wrong_device))
    expect(ValueError, "out.*dtype", fn, x, b, out=torch.empty(2, 8, device=device).half())


def test_launch_refuses_python_scalars(device):
    """A Python float would be typed float64 by Numba (fp64 math); the launcher wants numpy scalars."""
    from kernels.numba.activations import BIAS_GELU
    from kernels.runtime.numba_interop import launch

    x = torch.randn(2, 8, device=device)
    with pytest.raises(TypeError, match="numpy scalars"):
        launch(BIAS_GELU["f"], 1, 32, x, x, x, 16, np.int32(8), np.int32(0), np.int32(1))
