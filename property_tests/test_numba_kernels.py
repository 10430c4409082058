"""Every Numba kernel against its reference: the vision tables, the glue ops, and the layer_norm / bias_gelu
twins (registry variant "numba").

Runs on the GPU when there is one, else in the Numba simulator on tiny shapes (grids with h or w == 2,
several images and videos packed, <= ~64 patches; <= 3 rows x <= 256 columns). Outputs are poisoned: every
kernel writes into NaN-filled (or -1-filled, for integers) `out=` tensors, so an element it skips fails.
Index ops must be bit-exact; vision_pos_taps' weights too (same fp64 formula as the reference); float ops
use the registry tolerances. Simulator: fp32 and fp16 (bf16 once per op: no bf16 hardware there, the
numpy stand-ins convert); GPU: bf16 everywhere too.
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings, strategies as st

from kernels.registry import REGISTRY
from kernels.runtime.numba_interop import SIM
from property_tests import strategies as S

pytestmark = pytest.mark.sim

DTYPES = (torch.float32, torch.float16) if SIM else (torch.float32, torch.float16, torch.bfloat16)
# the simulator runs ~0.3-0.6 s per block with barriers (layer_norm: one block per row): fewer, smaller cases
ROW_KERNEL = settings(max_examples=4) if SIM else settings()
MAX_ROWS = 3 if SIM else 40
HEAD_DIMS = (4, 8, 12, 16) if SIM else (4, 16, 64, 72, 80, 128)


def numba_op(name):
    spec = REGISTRY[name]
    return spec.kernels["numba"], spec.reference


def poisoned(shape, dtype, device):
    fill = float("nan") if dtype.is_floating_point else -1
    return torch.full(shape, fill, dtype=dtype, device=device)


def assert_close(op: str, got: torch.Tensor, ref: torch.Tensor, label: str = "") -> None:
    assert got.dtype == ref.dtype and got.shape == ref.shape, f"{op} {label}: {got.dtype}{tuple(got.shape)} vs {ref.dtype}{tuple(ref.shape)}"
    tol = REGISTRY[op].tol[ref.dtype]
    rel, mx = tol.errors(got.cpu(), ref.cpu())
    assert rel <= tol.rel_l2 and mx <= tol.max_abs, (
        f"{op} {label} {ref.dtype}: rel L2 {rel:.3g} (tol {tol.rel_l2}), max abs {mx:.3g} (tol {tol.max_abs}), "
        f"NaN count {int(got.isnan().sum())}")


def assert_equal(op: str, got: torch.Tensor, ref: torch.Tensor, label: str = "") -> None:
    assert got.dtype == ref.dtype and got.shape == ref.shape, f"{op} {label}: {got.dtype}{tuple(got.shape)} vs {ref.dtype}{tuple(ref.shape)}"
    got, ref = got.cpu(), ref.cpu()
    if got.dtype.is_floating_point:  # bitwise: also tells -0.0 from 0.0 and catches NaN
        bits = {torch.float32: torch.int32, torch.float16: torch.int16, torch.bfloat16: torch.int16}[got.dtype]
        got, ref = got.view(bits), ref.view(bits)
    bad = (got != ref).nonzero()
    assert bad.numel() == 0, f"{op} {label}: {bad.shape[0]} elements differ, first at {bad[0].tolist()}"


# ------------------------------------------------------------------------------------------------ grids
def grid_rows(max_side: int, max_t: int):
    """(t, h, w) with h, w multiples of 2 (merge), 2 included: the smallest grid the merger accepts."""
    side = st.sampled_from([s for s in (2, 4, 6, 8, 10, 16) if s <= max_side])
    return st.tuples(st.integers(1, max_t), side, side)


@st.composite
def grids(draw, max_patches: int = 64, max_t: int = 3):
    rows = draw(st.lists(grid_rows(8, max_t), min_size=1, max_size=4))
    kept, total = [], 0
    for t, h, w in rows:  # keep the sim cheap: stop before max_patches (the first row always fits)
        if kept and total + t * h * w > max_patches:
            break
        kept.append((t, h, w) if t * h * w <= max_patches else (1, 2, 2 * (max_patches // 4)))
        total += t * kept[-1][1] * kept[-1][2]
    dtype = draw(st.sampled_from((torch.int32, torch.int64)))
    return torch.tensor(kept, dtype=dtype)


@given(g=grids(), side=st.sampled_from((48, 2, 5)), explicit=st.booleans())
def test_vision_pos_taps(device, g, side, explicit):
    """index and weight bit-exact; num_patches (no host sync) gives the same result."""
    fn, ref = numba_op("vision_pos_taps")
    n = int(g.prod(1).sum())
    out = (poisoned((4, n), torch.int32, device), poisoned((4, n), torch.float32, device))
    got = fn(g.to(device), side, num_patches=n if explicit else None, out=out)
    assert got[0] is out[0] and got[1] is out[1]
    want = ref(g, side)
    assert_equal("vision_pos_taps", got[0], want[0], f"index {g.tolist()}")
    assert_equal("vision_pos_taps", got[1], want[1], f"weight {g.tolist()}")


@given(g=grids(), head_dim=st.sampled_from(HEAD_DIMS), theta=st.sampled_from((1e4, 100.0)),
       explicit=st.booleans())
def test_vision_rope_cos_sin(device, g, head_dim, theta, explicit):
    fn, ref = numba_op("vision_rope_cos_sin")
    n = int(g.prod(1).sum())
    out = tuple(poisoned((n, head_dim // 2), torch.float32, device) for _ in range(2))
    got = fn(g.to(device), head_dim, theta, num_patches=n if explicit else None, out=out)
    want = ref(g, head_dim, theta)
    for name, a, b in zip(("cos", "sin"), got, want):
        assert_close("vision_rope_cos_sin", a, b, f"{name} {g.tolist()} hd={head_dim}")


@given(g=grids(max_patches=400, max_t=6), explicit=st.booleans())
def test_vision_cu_seqlens(device, g, explicit):
    fn, ref = numba_op("vision_cu_seqlens")
    n_seg = int(g[:, 0].sum())
    out = poisoned((n_seg + 1,), torch.int32, device)
    got = fn(g.to(device), num_segments=n_seg if explicit else None, out=out)
    assert got is out
    assert_equal("vision_cu_seqlens", got, ref(g), str(g.tolist()))


def test_explicit_count_past_the_grid_is_visible(device):
    """A num_patches larger than the grid's total must not read out of bounds: the extra rows are NaN."""
    g = torch.tensor([[1, 2, 4]], device=device)
    _, w = REGISTRY["vision_pos_taps"].kernels["numba"](g, num_patches=11)
    cos, _ = REGISTRY["vision_rope_cos_sin"].kernels["numba"](g, 8, num_patches=11)
    assert w[:, 8:].isnan().all() and not w[:, :8].isnan().any()
    assert cos[8:].isnan().all() and not cos[:8].isnan().any()


# ----------------------------------------------------------------------------------------------- glue
IMG, VID, VS, VE = 90, 91, 80, 81  # small ids: pads, vision start/end (the real ones are 248056/7, 248053/4)


@st.composite
def prompts(draw):
    """(input_ids, image_grid_thw or None, video_grid_thw or None) as the processor lays them out: text runs,
    images (<vs> pads <ve>), videos with one <vs> frame <ve> group per temporal patch behind a timestamp
    token, and sometimes two grids back to back with no text between them."""
    ids, images, videos = [], [], []

    def text(k):
        ids.extend(draw(st.lists(st.integers(0, 79), min_size=k, max_size=k + 4)))

    text(0)
    for _ in range(draw(st.integers(0, 4))):
        kind = draw(st.sampled_from(("image", "video", "image_tight")))
        t, h, w = draw(grid_rows(8, 3))
        if kind == "video":
            videos.append((t, h, w))
            for _ in range(t):
                ids.extend([7, VS] + [VID] * (h * w // 4) + [VE])  # 7: a timestamp token
        else:
            images.append((1, h, w))
            ids.extend(([VS] if kind == "image" else []) + [IMG] * (h * w // 4) + ([VE] if kind == "image" else []))
        text(0)
    if not ids:
        ids = [1]
    dtype = draw(st.sampled_from((torch.int32, torch.int64)))
    grid = lambda rows: torch.tensor(rows, dtype=draw(st.sampled_from((torch.int32, torch.int64)))) if rows else None  # noqa: E731
    return torch.tensor(ids, dtype=dtype), grid(images), grid(videos)


@given(p=prompts())
def test_rope_index(device, p):
    fn, ref = numba_op("rope_index")
    ids, ig, vg = p
    out = poisoned((3, ids.shape[0]), torch.int64, device)
    on = lambda t: None if t is None else t.to(device)  # noqa: E731
    pos, delta = fn(on(ids), on(ig), on(vg), IMG, VID, out=out)
    want_pos, want_delta = ref(ids, ig, vg, IMG, VID)
    assert pos is out
    assert_equal("rope_index", pos, want_pos, f"ids {ids.tolist()}")
    assert delta == want_delta and isinstance(delta, int)


@given(s=st.integers(1, 24), h=st.sampled_from((1, 3, 8, 33)), dtype=st.sampled_from(DTYPES),
       seed=st.integers(0, 2**31 - 1))
def test_scatter_image_embeds(device, s, h, dtype, seed):
    fn, ref = numba_op("scatter_image_embeds")
    g = torch.Generator().manual_seed(seed)
    tok = torch.randn(s, h, generator=g).to(dtype)
    mask = torch.rand(s, generator=g) < 0.5
    img = torch.randn(int(mask.sum()), h, generator=g).to(dtype)
    out = poisoned((s, h), dtype, device)
    got = fn(tok.to(device), img.to(device), mask.to(device), out=out)
    assert got is out
    assert_equal("scatter_image_embeds", got, ref(tok, img, mask))


def test_scatter_image_embeds_bf16_bits(device):
    fn, ref = numba_op("scatter_image_embeds")
    tok = torch.tensor([[1.5, -0.0], [3.0, float("inf")], [2.0, -7.0]], dtype=torch.bfloat16)
    img = torch.tensor([[-1.0, 1e-40]], dtype=torch.bfloat16)
    mask = torch.tensor([False, True, False])
    assert_equal("scatter_image_embeds", fn(tok.to(device), img.to(device), mask.to(device)), ref(tok, img, mask))


# ------------------------------------------------------------------------------- layer_norm, bias_gelu
def _cols():
    # widths up to 256 incl. ones that are not a multiple of any vector width (1, 3, 33, 100, 255)
    return st.one_of(st.integers(1, 256), st.sampled_from((1, 3, 32, 33, 100, 255, 256)))


def _run_row_op(op: str, case: S.Case, device) -> None:
    fn, ref = numba_op(op)
    args = case.on(device)
    out = case.nan_outs(device)
    got = fn(*args, out=out)
    assert got is out
    assert_close(op, got, ref(*case.args), case.label)


@ROW_KERNEL
@given(rows=st.integers(1, MAX_ROWS), cols=_cols(), dtype=st.sampled_from(DTYPES), seed=st.integers(0, 2**31 - 1),
       scale=st.sampled_from((1e-2, 1.0, 100.0)), shift=st.sampled_from((0.0, -3.0, 3.0)),
       affine=st.sampled_from(((True, True), (True, False), (False, True), (False, False))))
def test_layer_norm_twin(device, rows, cols, dtype, seed, scale, shift, affine):
    _run_row_op("layer_norm", S.build_layer_norm(rows, cols, dtype, seed, scale, shift * scale, affine), device)


@given(rows=st.integers(1, 8), cols=_cols(), dtype=st.sampled_from(DTYPES), seed=st.integers(0, 2**31 - 1),
       scale=st.sampled_from((0.1, 1.0, 10.0)), approximate=st.sampled_from(("tanh", "none")),
       with_bias=st.booleans())
def test_bias_gelu_twin(device, rows, cols, dtype, seed, scale, approximate, with_bias):
    _run_row_op("bias_gelu", S.build_bias_gelu(rows, cols, dtype, seed, scale, 0.0, approximate, with_bias), device)


@pytest.mark.parametrize("op", ["layer_norm", "bias_gelu"])
def test_row_ops_bf16(device, op):
    """bf16 in the simulator too (its numpy stand-ins for the bf16 intrinsics), one small case."""
    case = (S.build_layer_norm(2, 67, torch.bfloat16, seed=1, scale=3.0, shift=1.0) if op == "layer_norm"
            else S.build_bias_gelu(3, 67, torch.bfloat16, seed=1, scale=3.0, approximate="none"))
    _run_row_op(op, case, device)


# ----------------------------------------------------------------------------------- GPU: launch paths
@pytest.mark.gpu
def test_fast_launch_matches_numba_launch():
    """The cached launch (own argument marshalling) against Numba's own dispatcher on the same kernel."""
    import numpy as np

    from kernels.numba import io_key
    from kernels.numba.norms import LAYER_NORM, threads_per_row
    from kernels.runtime.numba_interop import launch, launch_plain

    for dtype in (torch.float32, torch.bfloat16):
        x, w, b, _ = S.build_layer_norm(300, 1152, dtype, seed=3).on("cuda")
        ys = []
        for go in (launch, launch_plain):
            y = torch.full_like(x, float("nan"))
            go(LAYER_NORM[io_key(dtype)], 300, threads_per_row(1152), x, w, b, y, np.int32(1152),
               np.float32(1e-6), np.int32(1), np.int32(1))
            ys.append(y)
        torch.cuda.synchronize()
        assert_equal("layer_norm", ys[0], ys[1], str(dtype))


@pytest.mark.gpu
def test_launch_follows_torch_current_stream():
    fn, ref = numba_op("layer_norm")
    x, w, b, eps = S.build_layer_norm(4096, 1152, torch.bfloat16).on("cuda")
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        torch.cuda._sleep(50_000_000)
        xs = x * 1  # written on s after the sleep: a kernel on another stream would read it unwritten
        y = fn(xs, w, b, eps)
        y2 = y * 2
    torch.cuda.current_stream().wait_stream(s)
    assert_close("layer_norm", y2 / 2, ref(x, w, b, eps))


@pytest.mark.gpu
def test_cached_launch_cuts_host_overhead(capsys):
    """Host time per launch (tiny kernel, so the GPU keeps up): the cached path must beat Numba's own route
    (as_cuda_array + external_stream per call, ~250 us in docs/toolchain.md) by a wide margin. Prints the
    figures."""
    import time

    import numpy as np
    from numba import cuda

    import kernels
    from kernels.numba.activations import BIAS_GELU
    from kernels.runtime.numba_interop import launch, launch_plain

    x, b = torch.randn(1, 256, device="cuda"), torch.randn(256, device="cuda")
    y, k = torch.empty_like(x), BIAS_GELU["f"]
    scalars = (np.int32(256), np.int32(256), np.int32(1), np.int32(1))

    def numba_route():  # what docs/examples/numba_example.py does
        k[1, 256, cuda.external_stream(torch.cuda.current_stream().cuda_stream)](
            cuda.as_cuda_array(x.view(-1)), cuda.as_cuda_array(b), cuda.as_cuda_array(y.view(-1)), *scalars)

    routes = {
        "launch() (cached)": lambda: launch(k, 1, 256, x, b, y, *scalars),
        "launch_plain() (Numba dispatch, cached stream)": lambda: launch_plain(k, 1, 256, x, b, y, *scalars),
        "as_cuda_array + external_stream per call": numba_route,
        "numba bias_gelu wrapper (checks + alloc)": lambda: REGISTRY["bias_gelu"].kernels["numba"](x, b),
        "nvrtc bias_gelu wrapper (checks + alloc)": lambda: kernels.bias_gelu(x, b),
        "torch gelu(x + b)": lambda: torch.nn.functional.gelu(x + b, approximate="tanh"),
    }
    us = {}
    for name, fn in routes.items():
        for _ in range(20):
            fn()
        torch.cuda.synchronize()
        best = float("inf")
        for _ in range(5):
            t0 = time.perf_counter()
            for _ in range(300):
                fn()
            torch.cuda.synchronize()
            best = min(best, (time.perf_counter() - t0) / 300 * 1e6)
        us[name] = best
    with capsys.disabled():
        print(f"\nhost time per launch on {torch.cuda.get_device_name()} (1x256 fp32 bias_gelu, best of 5 x 300):")
        for name, t in us.items():
            print(f"  {name:50s} {t:8.1f} us")
    assert us["launch() (cached)"] * 3 < us["as_cuda_array + external_stream per call"]
