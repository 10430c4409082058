"""Every kernel in kernels.registry rejects bad input with a one-line ValueError/TypeError naming the argument,
before anything compiles or launches; the reference twin rejects the same input where the entry says so.

Runs without a GPU: wrappers check structure (dtype, shape, layout) before devices, so each mistake gets its own
message on CPU tensors (NVRTC and cuBLAS variants), and the Numba variants run in the simulator (`sim`), where
the valid device is the CPU. On a GPU machine the inputs are built on the GPU. The bad inputs come from each
family's cases module (x_bad, property_tests/cases/<family>.py); the device and `out=` checks are generic.
"""

from __future__ import annotations

import importlib
import inspect
import sys

import pytest
import torch

from kernels.registry import REGISTRY
from kernels.runtime.numba_interop import SIM

HAS_GPU = torch.cuda.is_available() and not SIM
DEVICE = "cuda" if HAS_GPU else "cpu"


# Every way a kernel gets compiled or launched: the one NVRTC path (kernels/runtime/launch.py, which the attention
# wrappers and NvrtcSource call through the module), the compiler, and the Numba launcher (which ends in the same
# launch.launch on a GPU and runs the simulator on CPU). The wrappers reach them as module attributes, so patching
# the modules catches every call; test_guard_sees_every_launch_path checks that no module holds its own reference.
_GUARDED = (("kernels.runtime.launch", "launch"), ("kernels.runtime.launch", "get_kernel"),
            ("kernels.runtime.nvrtc", "compile_source"), ("kernels.runtime.numba_interop", "launch"),
            ("kernels.runtime.numba_interop", "launch_plain"))


def _guarded_functions() -> dict:
    return {id(getattr(importlib.import_module(m), a)): f"{m}.{a}" for m, a in _GUARDED}


_REAL = _guarded_functions()  # before any test patches them


@pytest.fixture(autouse=True)
def no_launch(monkeypatch):
    """Any kernel compile or launch during these tests is a failure: errors must come first."""
    def boom(*a, **k):
        raise AssertionError("kernel compiled or launched despite bad input")
    for module, attr in _GUARDED:
        monkeypatch.setattr(importlib.import_module(module), attr, boom)


def test_guard_sees_every_launch_path():
    """No kernels module binds a launch or compile function under its own name (`from ... import launch` at module
    level), which the guard above could not see; and the guard is on."""
    import kernels.registry  # noqa: F401  (imports every family)

    held = [f"{name}.{attr} is {_REAL[id(v)]}" for name, mod in list(sys.modules.items())
            if name.startswith("kernels.") and mod is not None for attr, v in vars(mod).items() if id(v) in _REAL]
    assert not held, f"launch functions bound outside the guard: {held}"
    for module, attr in _GUARDED:
        with pytest.raises(AssertionError, match="despite bad input"):
            getattr(importlib.import_module(module), attr)()


def _mark(variant: str):
    return [pytest.mark.sim] if variant == "numba" else []


def _bad_params():
    out = []
    for name, spec in REGISTRY.items():
        make = spec.hook("bad") if spec.kernels else None
        if make is None:
            continue
        for i, bad in enumerate(make("cpu")):
            for variant in spec.kernels:
                if not bad.variants or variant in bad.variants:
                    out.append(pytest.param(name, variant, i, marks=_mark(variant), id=f"{name}-{variant}-{bad.label}"))
    return out


def _on_cpu(x):
    if isinstance(x, torch.Tensor):
        return x.cpu()
    if isinstance(x, (tuple, list)):
        return type(x)(_on_cpu(a) for a in x)
    return x


@pytest.mark.parametrize("op,variant,index", _bad_params())
def test_bad_input_is_refused(op, variant, index, monkeypatch):
    spec = REGISTRY[op]
    bad = spec.hook("bad")(DEVICE)[index]
    if bad.device_check:  # found by the kernel itself: the call must launch
        monkeypatch.undo()
    with pytest.raises(bad.error, match=bad.match) as info:
        spec.kernels[variant](*bad.args, **bad.kwargs)
    assert "\n" not in str(info.value), f"the message must be one line: {info.value}"
    if bad.reference:
        kwargs = {k: _on_cpu(v) for k, v in bad.kwargs.items() if k != "out"}
        with pytest.raises(bad.error):
            spec.reference(*_on_cpu(bad.args), **kwargs)


def _example_params(poison_out: bool = False):
    out = []
    for name, spec in REGISTRY.items():
        if spec.hook("example") is None or (poison_out and spec.poison != "out"):
            continue
        out += [pytest.param(name, v, marks=_mark(v), id=f"{name}-{v}") for v in spec.kernels]
    return out


def _example(spec):
    make = spec.hook("example")
    return make(spec.dtypes[0]) if spec.dtypes else make()


@pytest.mark.parametrize("op,variant", _example_params())
def test_wrong_device_is_refused(op, variant):
    """The first tensor argument on the wrong device: the CPU for a GPU kernel (on a CPU machine every input is
    then on the wrong device), a non-CPU device in the simulator. An error naming it, never a silent copy."""
    spec = REGISTRY[op]
    case = _example(spec)
    args = list(case.on(DEVICE))
    names = list(inspect.signature(spec.reference).parameters)
    i = next(i for i, a in enumerate(args) if isinstance(a, torch.Tensor))
    wrong = "meta" if (variant == "numba" and SIM) else "cpu"
    args[i] = args[i].to(wrong)
    with pytest.raises(ValueError, match=f"{names[i]}.*(CUDA|CPU)"):
        spec.kernels[variant](*args, **case.kwargs_on(DEVICE))


def _other_dtype(d: torch.dtype) -> torch.dtype:
    if d.is_floating_point:
        return torch.float64
    return torch.int64 if d == torch.int32 else torch.int32


@pytest.mark.parametrize("op,variant", _example_params(poison_out=True))
def test_bad_out_is_refused(op, variant):
    """`out=` of the wrong shape or dtype (the first output), or one tensor where several are expected."""
    spec = REGISTRY[op]
    case = _example(spec)
    args, kwargs = case.on(DEVICE), case.kwargs_on(DEVICE)
    (shape, dtype), n = case.out_shapes[0], len(case.out_shapes)
    good = [torch.empty(s, dtype=d, device=DEVICE) for s, d in case.out_shapes]
    for wrong in (torch.empty((shape[0] + 1,) + tuple(shape[1:]), dtype=dtype, device=DEVICE),
                  torch.empty(shape, dtype=_other_dtype(dtype), device=DEVICE)):
        out = wrong if n == 1 else (wrong, *good[1:])
        with pytest.raises(ValueError, match="out"):
            spec.kernels[variant](*args, **kwargs, out=out)
    if n > 1:
        with pytest.raises(ValueError, match="out"):
            spec.kernels[variant](*args, **kwargs, out=good[0])
