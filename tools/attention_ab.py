"""Time an old commit's attention kernels against the current ones in one process on one GPU (A/B).

    git archive ca5ff53 | (mkdir -p .ab_old && tar -x -C .ab_old)      # on the CPU machine, once (.ab_old is ignored)
    PYTHONPATH=. python3 tools/attention_ab.py [--old .ab_old] [--out DIR] [--rounds 5]   # on the GPU

Both trees are imported side by side (the old `kernels` package as `ab_old_kernels`), every case of the old tree's
benchmarks/bench_attention.CASES runs the default pick and every tile shape both trees list, and each pair is timed
as 20 calls captured in one CUDA graph (benchmarks.common.graph_ms: no host cost), in `rounds` rounds that alternate which of the two goes
first; each keeps its best round. Writes attention_ab-<card>-<date>.json (card, both commits, date, per case and
tile shape the old and new ms and new / old) to --out (default $OUT, else benchmarks/results) and prints a table.
Exit status 1 if some pair is more than --tolerance (default 2 %) slower, or the outputs differ.
"""

from __future__ import annotations

import argparse
import datetime
import importlib.util
import json
import os
import subprocess
import sys
import time
import types
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from benchmarks.common import graph_ms  # noqa: E402  (20 calls in one CUDA graph, best of 3 replays)
from kernels.runtime import device as dev  # noqa: E402


def _with_modules(fn, modules: dict):
    """fn run with sys.modules[name] = module for each entry (restored afterwards); a no-op when already wrapped."""
    if getattr(fn, "_ab_wrapped", False):
        return fn

    def run(*args, **kw):
        saved = {n: sys.modules.get(n) for n in modules}
        sys.modules.update(modules)
        try:
            return fn(*args, **kw)
        finally:
            for n, m in saved.items():
                if m is None:
                    sys.modules.pop(n, None)
                else:
                    sys.modules[n] = m
    run._ab_wrapped = True
    return run


def load_old(old_root: Path):
    """The old tree's kernels.attention (as ab_old_kernels.attention) and benchmarks/bench_attention module."""
    pkg = types.ModuleType("ab_old_kernels")  # the package without its __init__ (which imports every family)
    pkg.__path__ = [str(old_root / "kernels")]
    sys.modules["ab_old_kernels"] = pkg
    import importlib

    attn = importlib.import_module("ab_old_kernels.attention")
    # the old wrappers import `kernels.runtime.nvrtc` / `.tma` inside their functions: hand them the old tree's
    old_rt = {f"kernels.runtime.{m}": importlib.import_module(f"ab_old_kernels.runtime.{m}") for m in ("nvrtc", "tma")}
    for fn in ("attention", "run_variant"):
        setattr(attn, fn, _with_modules(getattr(attn, fn), old_rt))
    spec = importlib.util.spec_from_file_location("ab_old_bench_attention", old_root / "benchmarks" / "bench_attention.py")
    bench = importlib.util.module_from_spec(spec)
    sys.modules["ab_old_bench_attention"] = bench  # dataclasses look their module up
    spec.loader.exec_module(bench)
    return attn, bench


def _compile(job):
    """One instantiation through its tree's compile_source (fills the disk cache the launches read)."""
    tree, old_root, file, name, arch = job
    if tree == "old":
        load_old(Path(old_root))
        from ab_old_kernels.runtime.nvrtc import compile_source, read_source
    else:
        from kernels.runtime.nvrtc import compile_source, read_source
    compile_source(read_source(file), (name,), arch)


def precompile(old, new, old_root: str, cases, arch: str, prefixes: tuple = ()) -> None:
    """Every instantiation either tree launches for these cases (with prefixes: those tile shapes and the default
    pick), compiled in parallel processes."""
    import multiprocessing as mp

    bf16, hopper, sms = torch.bfloat16, dev.is_hopper(0), dev.sm_count(0)
    jobs = []
    for case in cases:
        pick = new.pick_variant(case.d, case.causal, case.T, len(case.lengths), max(case.lengths), hopper, case.hq,
                                sms if hopper else 132).name(bf16, case.d, case.causal)
        for tree, mod, default_file in (("old", old, "attention.cu"), ("new", new, None)):
            for var in mod.all_variants(case.d, torch.device("cuda")):
                name = var.name(bf16, case.d, case.causal)
                if prefixes and not var.label().startswith(prefixes) and name != pick:
                    continue
                jobs.append((tree, old_root, default_file or var.file, name, var.arch or arch))
    jobs = list(dict.fromkeys(jobs))
    t0 = time.time()
    with mp.get_context("spawn").Pool(min(len(jobs), os.cpu_count() or 1)) as pool:
        pool.map(_compile, jobs, chunksize=1)
    print(f"precompile: {len(jobs)} instantiations, {time.time() - t0:.0f} s", flush=True)


def commit_of(root: Path, default: str) -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root, check=True, capture_output=True,
                              text=True).stdout.strip()
    except Exception:  # noqa: BLE001 - the GPU machine's copy may have no .git
        return default


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--old", default=str(REPO / ".ab_old"))
    ap.add_argument("--old-commit", default="ca5ff53")
    ap.add_argument("--out", default=os.environ.get("OUT") or str(REPO / "benchmarks" / "results"))
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--tolerance", type=float, default=0.02)
    ap.add_argument("--cases", default="", help="comma-separated words; only cases whose tag has one")
    ap.add_argument("--variants", default="", help="comma-separated label prefixes (e.g. ws): only those tile "
                    "shapes beside the default pick")
    a = ap.parse_args()

    import importlib

    new = importlib.import_module("kernels.attention")  # the module (kernels.attention is also the function's name)

    old, bench = load_old(Path(a.old))
    card = torch.cuda.get_device_name()
    hopper, sms = dev.is_hopper(0), dev.sm_count(0)
    new_commit = os.environ.get("QWEN35_COMMIT") or commit_of(REPO, "working tree")
    print(f"card {card}  old {a.old_commit}  new {new_commit}  rounds {a.rounds}", flush=True)
    records, worst, mismatches = [], 0.0, 0
    t_start = time.time()
    cases = [c for c in bench.CASES if not a.cases or any(w in c.tag for w in a.cases.split(","))]
    prefixes = tuple(w for w in a.variants.split(",") if w)
    precompile(old, new, a.old, cases, dev.arch(0), prefixes)
    for case in cases:
        q, k, v, cu = bench.make_inputs(case)
        m, scale = max(case.lengths), case.d ** -0.5
        outs = {"old": torch.empty_like(q), "new": torch.empty_like(q)}
        pairs = {"default": (
            lambda: old.attention(q, k, v, cu, case.causal, out=outs["old"], max_seqlen=m, validate=False),
            lambda: new.attention(q, k, v, cu, case.causal, out=outs["new"], max_seqlen=m, validate=False))}
        labels = {"default": new.pick_variant(case.d, case.causal, case.T, len(case.lengths), m, hopper, case.hq,
                                              sms if hopper else 132).label()}
        old_vs = {v.label(): v for v in old.all_variants(case.d, q.device)}
        for nv in new.all_variants(case.d, q.device):
            ov = old_vs.get(nv.label())
            if ov is None or (prefixes and not nv.label().startswith(prefixes)):
                continue
            pairs[nv.label()] = (
                lambda ov=ov: old.run_variant(ov, q, k, v, cu, case.causal, scale, outs["old"], None),
                lambda nv=nv: new.run_variant(nv, q, k, v, cu, case.causal, scale, outs["new"], None))
        for name, (f_old, f_new) in pairs.items():
            f_old()
            f_new()
            torch.cuda.synchronize()
            same = torch.equal(outs["old"], outs["new"])
            mismatches += not same
            best = {"old": float("inf"), "new": float("inf")}
            for r in range(a.rounds):
                order = (("old", f_old), ("new", f_new)) if r % 2 == 0 else (("new", f_new), ("old", f_old))
                for tag, fn in order:
                    best[tag] = min(best[tag], graph_ms(fn))
            ratio = best["new"] / best["old"]
            worst = max(worst, ratio)
            rec = {"case": case.tag, "impl": name, "variant": labels.get(name, name), "ms_old": best["old"],
                   "ms_new": best["new"], "ratio_new_over_old": ratio, "tflops_new": case.flops / best["new"] / 1e9,
                   "identical_output": same}
            records.append(rec)
            print(f"  {case.tag:30s} {name:24s} old {best['old']:8.4f} ms  new {best['new']:8.4f} ms  "
                  f"new/old {ratio:6.4f}{'' if same else '  OUTPUT DIFFERS'}", flush=True)
        del q, k, v, outs
        torch.cuda.empty_cache()
    result = {"suite": "attention_ab", "card": card, "old_commit": a.old_commit, "new_commit": new_commit,
              "date": datetime.date.today().isoformat(), "timing": f"CUDA graph of 20 calls, best of {a.rounds} "
              "alternating rounds x 3 replays", "worst_ratio": worst, "records": records}
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"attention_ab-{card.replace(' ', '_')}-{result['date']}.json"
    path.write_text(json.dumps(result, indent=1))
    ok = worst <= 1 + a.tolerance and mismatches == 0
    print(f"worst new/old {worst:.4f} over {len(records)} pairs, {mismatches} output mismatches, "
          f"{time.time() - t_start:.0f} s; wrote {path}; {'OK' if ok else 'FAIL'}", flush=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
