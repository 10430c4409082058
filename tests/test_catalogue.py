"""The project's docs cannot drift: docs/op_catalogue.md is what tools/make_catalogue.py generates from the
registry, and every `docs/...` file cited in the code or the top-level docs exists."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CITATION = re.compile(r"\bdocs/[A-Za-z0-9_./-]*[A-Za-z0-9_]")
SEARCHED = ("README.md", "CONTRIBUTING.md", "reference", "kernels", "model", "tests", "property_tests",
            "benchmarks", "tools", "docs")


def test_op_catalogue_is_generated_from_the_registry():
    sys.path.insert(0, str(ROOT / "tools"))
    try:
        from make_catalogue import PATH, catalogue
    finally:
        sys.path.pop(0)
    assert PATH.is_file(), "docs/op_catalogue.md is missing: python tools/make_catalogue.py > docs/op_catalogue.md"
    assert PATH.read_text() == catalogue(), \
        "docs/op_catalogue.md is out of date: python tools/make_catalogue.py > docs/op_catalogue.md"


def _files():
    tracked = subprocess.run(["git", "ls-files", *SEARCHED], cwd=ROOT, capture_output=True, text=True)
    if tracked.returncode == 0 and tracked.stdout.strip():
        names = tracked.stdout.split()
    else:  # no git (e.g. a copied tree): every file under the searched paths
        names = [str(p.relative_to(ROOT)) for s in SEARCHED for p in (ROOT / s).rglob("*") if p.is_file()]
    return [ROOT / n for n in names if n.endswith((".py", ".md", ".cu", ".cuh", ".sh", ".toml"))]


def test_every_cited_doc_exists():
    missing = []
    for f in _files():
        if not f.is_file():
            continue
        for m in CITATION.finditer(f.read_text(errors="replace")):
            if not (ROOT / m.group(0)).exists():
                missing.append(f"{f.relative_to(ROOT)}: {m.group(0)}")
    assert not missing, "citations of docs that are not in the repository:\n  " + "\n  ".join(sorted(set(missing)))
