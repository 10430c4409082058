"""The vision tower on the `kernels` backend against the `reference` backend, on the same checkpoint (GPU only).

Checkpoints: tiny random Qwen3.5 models written by transformers' `save_pretrained`, with the vision head dims
the kernels support natively (72 as in the 9B/27B tower, 64 as in the 0.8B), and the real 48x48 position table.
Merger outputs must agree within 1e-2 relative L2 in bf16 and 1e-4 in fp32; the CUDA-graph path must equal the
eager one bit for bit; greedy generation with the kernels backend must give the reference's tokens in fp32.
"""

from __future__ import annotations

import pytest
import torch

import model

pytestmark = pytest.mark.gpu

TEXT = dict(vocab_size=320, hidden_size=64, intermediate_size=96, num_hidden_layers=4,
            layer_types=["linear_attention", "full_attention", "linear_attention", "full_attention"],
            num_attention_heads=4, num_key_value_heads=2, head_dim=64, linear_conv_kernel_dim=4,
            linear_key_head_dim=16, linear_value_head_dim=16, linear_num_key_heads=2, linear_num_value_heads=4,
            rope_parameters=dict(rope_type="default", rope_theta=1e7, partial_rotary_factor=0.25,
                                 mrope_interleaved=True, mrope_section=[3, 3, 2]))
IMAGE, VIDEO, VSTART, VEND = 300, 301, 302, 303
IDS = dict(image_token_id=IMAGE, video_token_id=VIDEO, vision_start_token_id=VSTART, vision_end_token_id=VEND)
VISION = {  # head_dim -> vision config
    72: dict(depth=2, hidden_size=144, intermediate_size=200, num_heads=2, out_hidden_size=64),
    64: dict(depth=2, hidden_size=128, intermediate_size=304, num_heads=2, out_hidden_size=64),
}
# several images of different sizes, and a video (t = 2); grids in patches (t, h, w)
CASES = {
    "one_image": [(1, 8, 12)],
    "several_images": [(1, 4, 4), (1, 14, 6), (1, 2, 2), (1, 30, 22)],
    "video": [(2, 10, 8)],
    "image_and_video": [(1, 6, 6), (3, 4, 8)],
}
TOL = {torch.float32: 1e-4, torch.bfloat16: 1e-2}


@pytest.fixture(scope="module", params=sorted(VISION))
def checkpoint(request, tmp_path_factory):
    from transformers import Qwen3_5Config, Qwen3_5ForConditionalGeneration

    torch.manual_seed(request.param)
    cfg = Qwen3_5Config(text_config=TEXT, vision_config=dict(VISION[request.param], initializer_range=0.05),
                        **IDS)
    hf = Qwen3_5ForConditionalGeneration(cfg)
    with torch.no_grad():  # LayerNorm weights/biases away from 1/0 so a wrong norm or bias cannot hide
        for name, p in hf.named_parameters():
            if name.endswith(("norm1.weight", "norm2.weight", "norm.weight", "bias")) and "visual" in name:
                p.add_(0.2 * torch.randn_like(p))
    path = tmp_path_factory.mktemp(f"vision_hd{request.param}")
    hf.save_pretrained(path)
    return path


def _inputs(grids, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    grid = torch.tensor(grids, dtype=torch.int64)
    n = int(grid.prod(-1).sum())
    return torch.randn(n, 1536, generator=g).to("cuda", dtype), grid


def _rel_l2(a, b):
    return ((a.double() - b.double()).norm() / b.double().norm()).item()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("case", sorted(CASES))
def test_kernels_backend_matches_reference(checkpoint, case, dtype):
    ref = model.load(checkpoint, device="cuda", dtype=dtype, backend="reference")
    ker = model.load(checkpoint, device="cuda", dtype=dtype, backend="kernels", cuda_graphs=False)
    pv, grid = _inputs(CASES[case], dtype)
    want = ref.encode_images(pv, grid)
    got = ker.encode_images(pv, grid)
    assert got.shape == want.shape and got.dtype == want.dtype
    assert torch.isfinite(got).all()
    err = _rel_l2(got, want)
    print(f"{case} {dtype}: rel L2 {err:.2e}")
    assert err < TOL[dtype], f"kernels vs reference rel L2 {err:.3e} > {TOL[dtype]}"


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_graph_equals_eager(checkpoint, dtype):
    eager = model.load(checkpoint, device="cuda", dtype=dtype, backend="kernels", cuda_graphs=False)
    graphed = model.load(checkpoint, device="cuda", dtype=dtype, backend="kernels", cuda_graphs=True)
    for i, case in enumerate(sorted(CASES)):
        pv, grid = _inputs(CASES[case], dtype, seed=i)
        want = eager.encode_images(pv, grid)
        for _ in range(2):  # the first call captures, the second replays
            got = graphed.encode_images(pv, grid)
            assert torch.equal(got, want), case
        pv2, _ = _inputs(CASES[case], dtype, seed=100 + i)  # new pixels, same grid: the replay sees them
        assert torch.equal(graphed.encode_images(pv2, grid), eager.encode_images(pv2, grid)), case


def test_generate_kernels_equals_reference_fp32(checkpoint):
    ref = model.load(checkpoint, device="cuda", dtype=torch.float32, backend="reference")
    ker = model.load(checkpoint, device="cuda", dtype=torch.float32, backend="kernels")
    grids = [(1, 8, 12), (1, 4, 6)]
    pv, grid = _inputs(grids, torch.float32)
    g = torch.Generator().manual_seed(3)
    ids = []
    for t, h, w in grids:
        ids += torch.randint(0, 300, (3,), generator=g).tolist() + [VSTART] + [IMAGE] * (t * h * w // 4) + [VEND]
    ids = torch.tensor([ids + torch.randint(0, 300, (5,), generator=g).tolist()])
    want = ref.generate_ids(ids, pixel_values=pv, image_grid_thw=grid, max_new_tokens=16)
    got = ker.generate_ids(ids, pixel_values=pv, image_grid_thw=grid, max_new_tokens=16)
    assert torch.equal(got, want)
