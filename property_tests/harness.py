"""Generic checks every property test uses: one call of a kernel against its reference, and the stateful split.

    check_case(spec, variant, case, device)        kernel(*case) vs reference(*case), outputs poisoned first
    check_split(spec, fn, case, cuts, device)      stateful ops: two calls with the state carried == one pass
    compare(spec, got, want, label)                the registry's tolerance (or bit equality for exact ops)

Poisoning follows `spec.poison`: "out" hands the kernel NaN-filled (-1 for integers) `out=` tensors and checks it
returns them; "alloc" frees NaN blocks of the outputs' sizes just before the call, so the caching allocator gives
them to the kernel's outputs. Either way an element the kernel never writes fails the comparison.
"""

from __future__ import annotations

import torch

from kernels.registry import Case, OpSpec

_BITS = {torch.float64: torch.int64, torch.float32: torch.int32, torch.float16: torch.int16,
         torch.bfloat16: torch.int16}


def as_tuple(x) -> tuple:
    return tuple(x) if isinstance(x, (tuple, list)) else (x,)


def _sync(device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def compare(spec: OpSpec, got, want, label: str = "", dtype: torch.dtype | None = None) -> None:
    """Assert got == want within spec.tol[dtype] (dtype: the case's, default want's first tensor's), or bitwise
    for exact ops. Non-tensor outputs (counts, deltas) must be equal."""
    got, want = as_tuple(got), as_tuple(want)
    assert len(got) == len(want), f"{label}: {len(got)} outputs, the reference has {len(want)}"
    for i, (g, r) in enumerate(zip(got, want)):
        where = f"{label} output {i}"
        if not isinstance(r, torch.Tensor):
            assert g == r and type(g) is type(r), f"{where}: {g!r} vs reference {r!r}"
            continue
        assert isinstance(g, torch.Tensor), f"{where}: got {type(g).__name__}, expected a tensor"
        assert g.dtype == r.dtype and g.shape == r.shape, \
            f"{where}: {g.dtype}{tuple(g.shape)} vs reference {r.dtype}{tuple(r.shape)}"
        g, r = g.detach().cpu(), r.detach().cpu()
        if spec.exact or not r.is_floating_point():
            if r.is_floating_point():  # bitwise: tells -0.0 from 0.0 and catches NaN
                g, r = g.contiguous().view(_BITS[r.dtype]), r.contiguous().view(_BITS[r.dtype])
            bad = (g != r).nonzero()
            assert bad.numel() == 0, f"{where}: {bad.shape[0]} elements differ, first at {bad[0].tolist()}"
            continue
        tol = spec.tol[dtype or r.dtype]
        rel, mx = tol.errors(g, r)
        assert rel <= tol.rel_l2 and mx <= tol.max_abs, (
            f"{where} ({dtype or r.dtype}): rel L2 {rel:.3g} (tol {tol.rel_l2}), max abs {mx:.3g} "
            f"(tol {tol.max_abs}); NaN count {int(g.isnan().sum())}")


def call_poisoned(spec: OpSpec, fn, case: Case, device, args=None, kwargs=None):
    """fn(*args, **kwargs) with its outputs poisoned as spec.poison says; returns what fn returned."""
    args = case.on(device) if args is None else args
    kwargs = case.kwargs_on(device) if kwargs is None else kwargs
    if spec.poison == "out" and case.out_shapes:
        outs = case.nan_outs(device)
        got = fn(*args, **kwargs, out=outs)
        for i, (g, o) in enumerate(zip(as_tuple(got), as_tuple(outs))):
            assert g is o, f"{spec.name}: output {i} is not the out= tensor it was given"
        return got
    poison = case.nan_outs(device) if case.out_shapes else None
    del poison  # the allocator hands these NaN blocks to the kernel's outputs
    return fn(*args, **kwargs)


def check_case(spec: OpSpec, variant: str, case: Case, device) -> None:
    """One case through kernel `variant` and the reference (same device, same inputs); assert the tolerance."""
    args, kwargs = case.on(device), case.kwargs_on(device)
    ref_args = tuple(a.clone() if i in spec.inplace else a for i, a in enumerate(args))  # in-place ops: own copies
    want = spec.reference(*ref_args, **kwargs)
    got = call_poisoned(spec, spec.kernels[variant], case, device, args, kwargs)
    _sync(device)
    for i, g in enumerate(as_tuple(got)):
        if isinstance(g, torch.Tensor):
            assert g.is_contiguous(), f"{spec.name}[{variant}] {case.label}: output {i} is not contiguous"
    if spec.inplace:  # the arguments written in place are outputs too
        got = tuple(g for g in as_tuple(got) if g is not None) + tuple(args[i] for i in spec.inplace)
        want = tuple(w for w in as_tuple(want) if w is not None) + tuple(ref_args[i] for i in spec.inplace)
    compare(spec, got, want, f"{spec.name}[{variant}] {case.label}", case.dtype)


# ------------------------------------------------------------------------------------------- stateful split
def split_args(spec: OpSpec, args: tuple, cuts) -> tuple[list, list, torch.Tensor, torch.Tensor]:
    """Cut every packed sequence in two: its first cuts[s] tokens and the rest. Returns the two argument lists
    (the second's state is left for the caller to fill in) and the token indices of each part."""
    sp = spec.split
    args = list(args) + [None] * (sp.state + 1 - len(args))
    cu = args[sp.cu_seqlens]
    bounds = cu.detach().cpu().tolist()
    first, second, n1, n2 = [], [], [], []
    for s, (a, b) in enumerate(zip(bounds[:-1], bounds[1:])):
        c = max(0, min(int(cuts[s]), b - a))
        first += range(a, a + c)
        second += range(a + c, b)
        n1.append(c)
        n2.append(b - a - c)
    dev = cu.device
    i1 = torch.tensor(first, dtype=torch.long, device=dev)
    i2 = torch.tensor(second, dtype=torch.long, device=dev)
    a1, a2 = list(args), list(args)
    for p in sp.tokens:
        a1[p], a2[p] = args[p].index_select(0, i1.to(args[p].device)), args[p].index_select(0, i2.to(args[p].device))
    for part, counts in ((a1, n1), (a2, n2)):
        part[sp.cu_seqlens] = torch.tensor([0] + counts, dtype=torch.int64).cumsum(0).to(dev, cu.dtype)
    return a1, a2, i1, i2


def check_split(spec: OpSpec, fn, case: Case, cuts, device) -> None:
    """fn over every sequence cut in two (the first call's final state is the second call's initial state) must
    give the outputs and final state of one reference pass. `cuts[s]`: tokens of sequence s in the first call
    (0 and the full length included). fn may be a kernel or the reference itself."""
    sp = spec.split
    args, kwargs = case.on(device), case.kwargs_on(device)
    want = as_tuple(spec.reference(*args, **kwargs))
    a1, a2, i1, i2 = split_args(spec, args, cuts)
    out1 = as_tuple(fn(*a1, **kwargs))
    a2[sp.state] = out1[sp.state_out]
    out2 = as_tuple(fn(*a2, **kwargs))
    _sync(device)
    got = list(out2)
    for o in sp.outputs:  # put both halves' tokens back in their packed places
        merged = torch.full_like(want[o], float("nan") if want[o].is_floating_point() else -1)
        merged[i1.to(merged.device)] = out1[o].to(merged.device)
        merged[i2.to(merged.device)] = out2[o].to(merged.device)
        got[o] = merged
    compare(spec, tuple(got), want, f"{spec.name} split at {list(cuts)} {case.label}", case.dtype)
