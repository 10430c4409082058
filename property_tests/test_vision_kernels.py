"""Every kernel variant of the vision-tower ops (kernels.registry) against its reference, on random inputs.

Shapes cover 1 row, widths that are not a multiple of any vector width, the real ViT widths, every dtype,
and misaligned (offset) inputs. Outputs are poisoned with NaN before each call (NaN-filled `out=` tensors;
for a variant without `out=`, freed NaN blocks the caching allocator hands back), so an element the kernel
fails to write fails the test. Tolerances come from the registry.
"""

from __future__ import annotations

import inspect

import pytest
import torch
from hypothesis import given, strategies as st

from kernels.registry import REGISTRY
from property_tests import strategies as S

pytestmark = pytest.mark.gpu

VISION_OPS = tuple(S.CASES)
VARIANTS = [(op, v) for op in VISION_OPS for v in REGISTRY[op].kernels]


def _as_tuple(x) -> tuple:
    return tuple(x) if isinstance(x, (tuple, list)) else (x,)


def _takes_out(fn) -> bool:
    try:
        return "out" in inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False


def run_checked(op: str, variant: str, case: S.Case) -> None:
    """Run one case through a kernel and the reference; assert the registry tolerance."""
    spec = REGISTRY[op]
    fn = spec.kernels[variant]
    args = case.on("cuda")
    refs = _as_tuple(spec.reference(*args))
    if _takes_out(fn):
        outs = case.nan_outs("cuda")
        got = fn(*args, out=outs)
        for g, o in zip(_as_tuple(got), _as_tuple(outs)):
            assert g is o, f"{op}[{variant}] did not return its out= tensors"
    else:  # poison the allocator: these NaN blocks are the ones the kernel's outputs will get
        poison = case.nan_outs("cuda")
        del poison
        got = fn(*args)
    torch.cuda.synchronize()
    got = _as_tuple(got)
    assert len(got) == len(refs), f"{op}[{variant}] returned {len(got)} tensors, the reference {len(refs)}"
    tol = spec.tol[args[0].dtype]
    for i, (g, r) in enumerate(zip(got, refs)):
        assert g.dtype == r.dtype and g.shape == r.shape, f"output {i}: {g.dtype}{tuple(g.shape)} vs {r.dtype}{tuple(r.shape)}"
        assert g.is_contiguous(), f"output {i} is not contiguous"
        rel, mx = tol.errors(g, r)
        assert rel <= tol.rel_l2 and mx <= tol.max_abs, (
            f"{op}[{variant}] {case.label} {args[0].dtype} output {i}: rel L2 {rel:.3g} (tol {tol.rel_l2}), "
            f"max abs {mx:.3g} (tol {tol.max_abs}); NaN count {int(g.isnan().sum())}")


@pytest.mark.parametrize("op,variant", VARIANTS, ids=[f"{o}-{v}" for o, v in VARIANTS])
@given(data=st.data())
def test_kernel_matches_reference(op, variant, data):
    run_checked(op, variant, data.draw(S.CASES[op](), label="case"))


# The real model shapes, every dtype: one fixed case each (cheap, and they fail loudly if a fast path breaks).
REAL = [("layer_norm", d) for d in S.VIT_WIDTHS] + [("add_bias_layer_norm", d) for d in S.VIT_WIDTHS] \
    + [("bias_gelu", d) for d in S.MLP_WIDTHS + (4 * 1152,)] + [("add_pos_embed", d) for d in S.VIT_WIDTHS] \
    + [("qkv_bias_rope", hd) for hd in S.HEAD_DIMS]


def _real_case(op: str, size: int, dtype) -> S.Case:
    if op == "qkv_bias_rope":
        return S.build_qkv_bias_rope(257, 16, size, dtype, seed=size)
    if op == "bias_gelu":
        return S.build_bias_gelu(257, size, dtype, seed=size, approximate="none" if size == 4608 else "tanh")
    if op == "add_pos_embed":  # the real taps of a 2-slice 10 x 14 video
        return S.build_add_pos_embed(0, size, dtype, seed=size, grid=(2, 10, 14))
    return getattr(S, f"build_{op}")(257, size, dtype, seed=size)


@pytest.mark.parametrize("dtype", S.FLOAT_DTYPES, ids=str)
@pytest.mark.parametrize("op,size", REAL, ids=[f"{o}-{s}" for o, s in REAL])
def test_real_shapes(op, size, dtype):
    for variant in REGISTRY[op].kernels:
        run_checked(op, variant, _real_case(op, size, dtype))


def _offset(t: torch.Tensor, k: int) -> torch.Tensor:
    """A contiguous copy of t whose data pointer is k elements past an allocation start (misaligned)."""
    buf = torch.empty(t.numel() + k, dtype=t.dtype, device=t.device)
    view = buf[k:].view(t.shape)
    view.copy_(t)
    return view


@pytest.mark.parametrize("op", VISION_OPS)
def test_misaligned_inputs_take_the_scalar_path(op):
    """Pointers that are not 16-byte aligned must still give the right answer (narrower vectors)."""
    case = _real_case(op, 72 if op == "qkv_bias_rope" else 1152, torch.bfloat16)
    args = tuple(_offset(a.cuda(), 1) if isinstance(a, torch.Tensor) and a.dim() == 2 else
                 (a.cuda() if isinstance(a, torch.Tensor) else a) for a in case.args)
    spec = REGISTRY[op]
    refs = _as_tuple(spec.reference(*args))
    for variant, fn in spec.kernels.items():
        got = _as_tuple(fn(*args))
        for g, r in zip(got, refs):
            assert spec.tol[torch.bfloat16].ok(g, r), f"{op}[{variant}] misaligned"


def test_add_pos_embed_bad_index_gives_nan_rows():
    """An out-of-range tap index must not read out of bounds: the nvrtc kernel turns that row into NaN."""
    case = S.build_add_pos_embed(8, 64, torch.float32, table_rows=16)
    x, table, index, weight = case.on("cuda")
    index[2, 3] = 16
    index[0, 5] = -1
    y = REGISTRY["add_pos_embed"].kernels["nvrtc"](x, table, index, weight)
    bad = y.isnan().all(1)
    assert bad.tolist() == [i in (3, 5) for i in range(8)]


def test_launch_follows_torch_current_stream():
    """The NVRTC launch goes on torch's current stream (here a side stream), so ordering holds."""
    case = S.build_layer_norm(4096, 1152, torch.bfloat16)
    x, w, b, eps = case.on("cuda")
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        y = REGISTRY["layer_norm"].kernels["nvrtc"](x, w, b, eps)
        y2 = y * 2  # queued on s behind the kernel
    torch.cuda.current_stream().wait_stream(s)
    ref = REGISTRY["layer_norm"].reference(x, w, b, eps)
    assert REGISTRY["layer_norm"].tol[torch.bfloat16].ok(y2 / 2, ref)


@pytest.mark.parametrize("r", [1, 2])
@given(case=st.one_of(S.layer_norm_cases(), S.add_bias_layer_norm_cases()))
def test_layer_norm_cta_kernel(r, case):
    """The CTA-per-row LayerNorm kernel with each rows-per-thread-group R, on widths the wrapper would send
    to the warp kernel too (row counts here are mostly not multiples of R)."""
    import kernels.norms as N

    N._R_FORCE = r
    try:
        run_checked(case.op, "nvrtc", case)
    finally:
        N._R_FORCE = None


@pytest.mark.parametrize("dtype", S.FLOAT_DTYPES, ids=str)
@pytest.mark.parametrize("npt", [1, 2, 3, 4, 5, 6, 8])
@pytest.mark.parametrize("op", ["layer_norm", "add_bias_layer_norm"])
def test_layer_norm_warp_kernel_every_npt(op, npt, dtype):
    """Each vectors-per-lane instantiation of the warp kernel, with a partly filled last slot."""
    import kernels.norms as N

    vec = N._VECS[dtype][0]
    width = (32 * (npt - 1) + 17) * vec
    assert next(n for n in N._WARP_NPT if 32 * n >= width // vec) == npt
    run_checked(op, "nvrtc", getattr(S, f"build_{op}")(13, width, dtype, seed=npt))
