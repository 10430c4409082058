"""Every kernel variant of every op in kernels.registry against its reference: the generic property tests.

For each op with a kernel, from its cases module (property_tests/cases/<family>.py, see kernels.registry):
  * random inputs (x_cases), outputs poisoned (registry `poison`), the registry tolerance or bit equality;
  * the small example at every dtype the kernel takes (bf16 in the simulator too, once);
  * the real model shapes of 0.8B / 9B / 27B (x_real) at a few hundred rows, every dtype (GPU);
  * misaligned inputs (pointers one element past a 16-byte boundary): right answer or a clear ValueError (GPU);
  * stateful ops (registry `split`): every sequence cut in two with the state carried equals one pass, for the
    reference itself on the CPU and for every kernel.
NVRTC and cuBLAS variants need a GPU (`gpu`); Numba variants run on a GPU or in the simulator on tiny inputs (`sim`).
A new op's entry is picked up here without an edit; family-specific checks live in property_tests/test_<family>.py.
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings, strategies as st

from kernels.registry import REGISTRY
from kernels.runtime.numba_interop import SIM
from property_tests.harness import as_tuple, check_case, check_split, compare

HAS_GPU = torch.cuda.is_available() and not SIM
DEVICE = "cuda" if HAS_GPU else "cpu"
# the simulator runs a block with barriers in ~0.3-0.6 s: few, tiny cases there
_sim_examples = settings(max_examples=4) if SIM else (lambda f: f)


def _small(variant: str) -> bool:
    return SIM and variant == "numba"


def _params(need: str | None = None, variants=None):
    """pytest params (op, variant) for every kernel variant whose cases module has `need`."""
    out = []
    for name, spec in REGISTRY.items():
        for variant in spec.kernels:
            if variants is not None and variant not in variants:
                continue
            if need is not None and spec.hook(need) is None:
                continue
            mark = pytest.mark.sim if variant == "numba" else pytest.mark.gpu
            out.append(pytest.param(name, variant, marks=mark, id=f"{name}-{variant}"))
    return out


def test_every_kernel_has_its_cases():
    """An op with a kernel must come with random inputs, an example and bad inputs (else nothing here tests it)."""
    missing = [f"{name}: {spec.cases}:{name}_{what}" for name, spec in REGISTRY.items() if spec.kernels
               for what in ("cases", "example", "bad") if spec.hook(what) is None]
    assert not missing, "ops with a kernel but no test inputs:\n  " + "\n  ".join(missing)


@pytest.mark.parametrize("op,variant", _params("cases", ("nvrtc", "cublas")))
@given(data=st.data())
def test_kernel_matches_reference(op, variant, data):
    case = data.draw(REGISTRY[op].hook("cases")(small=False), label="case")
    check_case(REGISTRY[op], variant, case, DEVICE)


@pytest.mark.parametrize("op,variant", _params("cases", ("numba",)))
@_sim_examples
@given(data=st.data())
def test_numba_kernel_matches_reference(op, variant, data):
    case = data.draw(REGISTRY[op].hook("cases")(small=_small(variant)), label="case")
    check_case(REGISTRY[op], variant, case, DEVICE)


def _dtypes(spec):
    return spec.dtypes if spec.dtypes else (None,)


@pytest.mark.parametrize("op,variant", _params("example"))
def test_example_every_dtype(op, variant):
    spec = REGISTRY[op]
    for dtype in _dtypes(spec):
        case = spec.hook("example")() if dtype is None else spec.hook("example")(dtype)
        check_case(spec, variant, case, DEVICE)


@pytest.mark.gpu
@pytest.mark.parametrize("op,variant", _params("real"))
def test_real_shapes(op, variant):
    spec = REGISTRY[op]
    for dtype in _dtypes(spec):
        for case in (spec.hook("real")(tokens=257) if dtype is None else spec.hook("real")(dtype, tokens=257)):
            check_case(spec, variant, case, DEVICE)


def _offset(t: torch.Tensor, k: int = 1) -> torch.Tensor:
    """A contiguous copy of t whose data pointer is k elements past an allocation start (misaligned)."""
    buf = torch.empty(t.numel() + k, dtype=t.dtype, device=t.device)
    view = buf[k:].view(t.shape)
    view.copy_(t)
    return view


@pytest.mark.gpu
@pytest.mark.parametrize("op,variant", _params("real", ("nvrtc",)))
def test_misaligned_inputs(op, variant):
    """Float inputs one element past an aligned start: the right answer (narrower vectors), or a ValueError that
    says so; never a wrong result or a fault."""
    spec = REGISTRY[op]
    case = spec.hook("real")(torch.bfloat16, tokens=33)[-1]
    args = tuple(_offset(a) if isinstance(a, torch.Tensor) and a.is_floating_point() and a.dim() >= 2 else a
                 for a in case.on("cuda"))
    kwargs = case.kwargs_on("cuda")
    want = spec.reference(*args, **kwargs)
    try:
        got = spec.kernels[variant](*args, **kwargs)
    except ValueError as e:
        assert "align" in str(e), f"{op}[{variant}] refused misaligned inputs without saying so: {e}"
        return
    torch.cuda.synchronize()
    compare(spec, as_tuple(got), as_tuple(want), f"{op}[{variant}] misaligned {case.label}", case.dtype)


# ---------------------------------------------------------------------------------------- stateful split
@st.composite
def _split(draw, spec, small):
    case = draw(spec.hook("cases")(small=small), label="case")
    cu = case.args[spec.split.cu_seqlens].tolist()
    lengths = [b - a for a, b in zip(cu[:-1], cu[1:])]
    cuts = [draw(st.one_of(st.sampled_from((0, L)), st.integers(0, L))) for L in lengths]  # ends included
    return case, cuts


def _split_ops(with_kernels: bool):
    out = []
    for name, spec in REGISTRY.items():
        if spec.split is None or spec.hook("cases" if with_kernels else "example") is None:
            continue
        if not with_kernels:
            out.append(pytest.param(name, id=name))
            continue
        for variant in spec.kernels:
            mark = pytest.mark.sim if variant == "numba" else pytest.mark.gpu
            out.append(pytest.param(name, variant, marks=mark, id=f"{name}-{variant}"))
    return out


@pytest.mark.parametrize("op", _split_ops(False))
def test_reference_split_equals_one_pass(op):
    """The harness itself, on the reference (CPU): it must hold for the spec before any kernel is held to it. The
    example case (the reference recurrences run token by token in Python), cut in the middle of every sequence and
    after each one's first token."""
    spec = REGISTRY[op]
    case = spec.hook("example")(torch.float32)
    cu = case.args[spec.split.cu_seqlens].tolist()
    lengths = [b - a for a, b in zip(cu[:-1], cu[1:])]
    for cuts in ([L // 2 for L in lengths], [min(1, L) for L in lengths]):
        check_split(spec, spec.reference, case, cuts, "cpu")


@pytest.mark.parametrize("op,variant", _split_ops(True))
@given(data=st.data())
def test_kernel_split_equals_one_pass(op, variant, data):
    spec = REGISTRY[op]
    case, cuts = data.draw(_split(spec, _small(variant)))
    check_split(spec, spec.kernels[variant], case, cuts, DEVICE)


# ------------------------------------------------------------------------------------- the harness can fail
def test_harness_catches_unwritten_outputs():
    """A 'kernel' that writes nothing into its NaN-poisoned out= tensors must fail check_case."""
    from dataclasses import replace

    spec = REGISTRY["layer_norm"]
    lazy = replace(spec, kernels={"fake": lambda *a, out=None, **k: out})
    with pytest.raises(AssertionError, match="rel L2 inf"):
        check_case(lazy, "fake", spec.hook("example")(torch.float32), "cpu")


def test_harness_catches_a_dropped_state():
    """An op that ignores the carried state must fail check_split (a cut inside a sequence)."""
    spec = REGISTRY["causal_conv1d"]
    case = spec.hook("example")(torch.float32)
    stateless = lambda x, w, cu, state=None, **k: spec.reference(x, w, cu, None, **k)  # noqa: E731
    cu = case.args[spec.split.cu_seqlens].tolist()
    with pytest.raises(AssertionError):
        check_split(spec, stateless, case, [(b - a) // 2 for a, b in zip(cu[:-1], cu[1:])], "cpu")
