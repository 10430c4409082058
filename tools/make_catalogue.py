"""Write the op catalogue (docs/op_catalogue.md) from kernels.registry, so it cannot drift from the code.

    python tools/make_catalogue.py > docs/op_catalogue.md      # regenerate after changing a registry entry
    python tools/make_catalogue.py --check                     # exit 1 if the committed file differs

tests/test_catalogue.py runs the check on CPU.
"""

from __future__ import annotations

import inspect
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from kernels.registry import REGISTRY, by_family  # noqa: E402

PATH = Path(__file__).resolve().parent.parent / "docs" / "op_catalogue.md"

HEADER = """# Op catalogue

Generated from `kernels/registry.py` by `python tools/make_catalogue.py > docs/op_catalogue.md`; do not edit by
hand (`tests/test_catalogue.py` fails when this file and the registry disagree).

Every op has a pure-PyTorch reference, `reference.<op>` (the spec: fp32/fp64 math, shapes in its docstring), and
zero or more GPU kernels with the same signature and meaning: `nvrtc` (CUDA C++ compiled at run time), `numba`
(Numba CUDA) or `cublas` (GEMMs through torch). An op without a kernel runs on its reference on every backend.
Packed ("varlen") layouts concatenate the tokens of several images or sequences on the first axis, with
`cu_seqlens` (int32/int64 [n+1], from 0, non-decreasing, ending at the total) marking the boundaries.

Tolerance: a kernel's output against the reference on the same inputs, as relative L2 error / max abs error in
units of max(1, max|ref|), per input dtype; "exact" means bit for bit. "dtypes": the float input dtypes the
kernels take. "model shapes" says which checkpoints the
kernel covers (`covers` in the registry; elsewhere the model runs the op on its reference and
`Model.placement(why=True)` says why). "stateful" ops carry a state across calls and are tested split in two.
The model's math and shapes are in `docs/model.md`.
"""


def _signature(fn) -> str:
    parts = []
    for p in inspect.signature(fn).parameters.values():
        if p.kind is p.KEYWORD_ONLY and not any(s.startswith("*") for s in parts):
            parts.append("*")
        parts.append(p.name if p.default is p.empty else f"{p.name}={p.default!r}")
    return f"{fn.__name__}({', '.join(parts)})"


def _first_line(obj) -> str:
    doc = inspect.getdoc(obj) or ""
    return doc.split("\n\n")[0].replace("\n", " ").strip()


def _cell(s: str) -> str:
    return s.replace("|", "\\|")


def _kernels(spec) -> str:
    return "<br>".join(f"{v}: `{fn.__module__}.{fn.__name__}`" for v, fn in spec.kernels.items()) or "reference only"


def _dtypes(spec) -> str:
    return ", ".join(str(d).replace("torch.", "") for d in spec.dtypes) or "integer / index"


def _tol(spec) -> str:
    if spec.exact:
        return "exact"
    return "<br>".join(f"{str(d).replace('torch.', '')}: {t.rel_l2:g} / {t.max_abs:g}" for d, t in spec.tol.items())


def _shapes(spec) -> str:
    if not spec.kernels:
        return ""
    if spec.covers is None:
        return "all"
    return _first_line(spec.covers) or spec.covers.__name__.strip("_").replace("_", " ")


def catalogue() -> str:
    out = [HEADER]
    for family, specs in by_family().items():
        out.append(f"\n## {family}\n")
        out.append(f"`reference/{family}.py`, `kernels/{family}.py`, `property_tests/cases/{family}.py`\n")
        out.append("| op | signature | what | kernels | dtypes | tolerance (rel L2 / max abs) | model shapes |")
        out.append("|---|---|---|---|---|---|---|")
        for s in specs:
            what = _first_line(s.reference) + (" Stateful (split-tested)." if s.split else "")
            out.append(f"| {s.name} | `{_cell(_signature(s.reference))}` | {_cell(what)} | {_kernels(s)} | "
                       f"{_dtypes(s)} | {_tol(s)} | {_cell(_shapes(s))} |")
    n_kernel = sum(1 for s in REGISTRY.values() if s.kernels)
    out.append(f"\n{len(REGISTRY)} ops, {n_kernel} with a kernel.\n")
    return "\n".join(out)


def main() -> int:
    text = catalogue()
    if "--check" in sys.argv[1:]:
        if not PATH.is_file() or PATH.read_text() != text:
            print(f"{PATH} is out of date: run python tools/make_catalogue.py > docs/op_catalogue.md")
            return 1
        return 0
    sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
