"""Markdown tables of the committed results JSON (benchmarks/results/), as quoted in the README.

    python tools/results_table.py
The vision-tower floor is recomputed from measured quantities in the same JSON: the tower's GEMM FLOPs at the
measured cuBLAS rate (8192^3 bf16) plus depth x our attention kernel's measured time for that shape.
"""

from __future__ import annotations

import glob
import json
from pathlib import Path

RESULTS = Path(__file__).resolve().parents[1] / "benchmarks" / "results"


def _load(pattern):
    return [json.loads(Path(p).read_text()) for p in sorted(glob.glob(str(RESULTS / pattern)))]


def vision_ops():
    for d in _load("vision_ops-*.json"):
        print(f"Vision ops, bf16, {d['card']} ({d['date']}), copy ceiling {d['copy_TBps']:.2f} TB/s\n")
        print("| op | shape | torch eager us | ours us | % of copy | x eager |\n|---|---|---|---|---|---|")
        rows = {}
        for r in d["records"]:
            if r.get("dtype") == "bfloat16" and r["case"].split("-")[-1].startswith("16384"):
                rows.setdefault((r["op"], r["case"]), {})[r["impl"]] = r
        for (op, case), impls in rows.items():
            ours = impls.get("nvrtc")
            if ours and "torch" in impls:
                print(f"| {op} | {case.split('-', 1)[1]} | {impls['torch']['device_us']:.1f} | "
                      f"{ours['device_us']:.1f} | {ours['pct_of_copy']:.1f} | {ours['speedup_vs_torch_eager']:.2f} |")
        print()


def attention():
    for d in _load("attention_v10-*.json"):  # the current kernels (v10; earlier versions are in git history)
        print(f"Attention, bf16, {d['card']} ({d['date']}, commit {d['commit']}), TFLOP/s of 20 calls replayed from a "
              f"CUDA graph (queued launches in brackets)\n")
        print("| case | ours (tile picked) | cuDNN | flash | ours / best SDPA |\n|---|---|---|---|---|")
        for r in d["records"]:
            im = r["impls"]
            default = next(k for k in im if k.startswith("ours_default"))
            tile = default[len("ours_default("):-1]

            def tf(name, im=im):
                x = im.get(name, {})
                return f"{x['tflops_graph']:.0f} ({x['tflops_queued']:.0f})" if "tflops_graph" in x else "-"

            ratio = f"{r['ratio_graph']['default_vs_best']:.2f} ({r['ratio_queued']['default_vs_best']:.2f})"
            print(f"| {r['case']} | {tf(default)} ({tile}) | {tf('sdpa_CUDNN_ATTENTION')} | {tf('sdpa_FLASH_ATTENTION')} | "
                  f"{ratio} |")
        print()


def vision_tower():
    for d in _load("vision_tower-*.json"):
        gemm_rate = d["bf16_gemm_TFLOPs"]
        print(f"Vision tower, bf16, {d['card']} ({d['date']}, commit {d['commit']}), latency ms\n")
        print("| tower | images | HF (sdpa) | ours eager | ours graph | x HF | floor |\n|---|---|---|---|---|---|---|")
        depth = {"0.8B": 12, "9B": 27}
        for r in d["records"]:
            floor = r["gemm_TFLOP"] / gemm_rate * 1e3 + depth[r["tower"]] * r["attn_ms_per_layer"]
            print(f"| {r['tower']} | {r['images']}x{r['side']}^2 | {r['hf_ms']:.2f} | {r['eager_ms']:.2f} | "
                  f"{r['graph_ms']:.2f} | {r['speedup_vs_hf']:.2f} | {floor:.2f} |")
        print()


if __name__ == "__main__":
    vision_ops()
    attention()
    vision_tower()
