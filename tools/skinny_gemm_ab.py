"""A/B of the decode step's GEMMs in one process: cuBLAS (F.linear, + silu_mul_fused for gate_up) against the
skinny kernel (16-row tiles; 32-row tiles for the plain products of <= 8 rows; each K split with --ksplit), for
every decode GEMM shape of the model sizes, graph-replayed.

    python3 tools/skinny_gemm_ab.py                          # 0.8B, 4B, 9B at batch 1 and 32
    python3 tools/skinny_gemm_ab.py --sizes 0.8B --batch 1 --out $OUT

Each timed call follows an rms_norm of its input (a programmatic launch, as in the model, so a GEMM that streams
its weights before griddepcontrol.wait overlaps it; the norm alone is timed too and subtracted), and the calls
rotate over copies of the weight totalling >= 192 MB, so the weights come from DRAM as in a decode step (the
H200's L2 is 50 MB). Reported: us per GEMM and the weight read rate (TB/s). JSON: write_results("skinny_gemm_ab").
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from benchmarks.common import write_results  # noqa: E402
from kernels.runtime.timing import graph_replay_ms  # noqa: E402


def shapes(size: str) -> list[tuple[str, str, int, int, int]]:
    """(name, kind, N, K, calls per step) of the decode step's GEMMs (kind: plain, silu, gate) at that size."""
    from lm_e2e_gpu import COMMON_TEXT, SIZES

    t = dict(COMMON_TEXT, **SIZES[size]["text"])
    h, i, nv, hq, hkv = (t["hidden_size"], t["intermediate_size"], t["linear_num_value_heads"],
                         t["num_attention_heads"], t["num_key_value_heads"])
    layers = t["num_hidden_layers"]
    att = layers // 4
    lin = layers - att
    nk, dk, dv, d = t["linear_num_key_heads"], t["linear_key_head_dim"], t["linear_value_head_dim"], t["head_dim"]
    return [("in_proj_qkvzba", "plain", 2 * nk * dk + 2 * nv * dv + 2 * nv, h, lin),
            ("qkv_proj", "plain", hq * 2 * d + 2 * hkv * d, h, att),
            ("o_proj", "gate", h, hq * d, att),
            ("out_proj", "plain", h, nv * dv, lin),
            ("gate_up_proj", "silu", 2 * i, h, layers),
            ("down_proj", "plain", h, i, layers),
            ("lm_head", "plain", t["vocab_size"], h, 1)]


def graph_us(fn, reps: int) -> float:
    """Device time per call of fn (which does `reps` calls) replayed from a CUDA graph, best of 5."""
    return graph_replay_ms(fn, replays=5) * 1e3 / reps


def run_shape(name: str, kind: str, n: int, k: int, B: int, gen, ksplits=(1,)) -> dict:
    from kernels.activations import sigmoid_gate, silu_mul_fused
    from kernels.gemm import skinny_linear, skinny_ok
    from kernels.norms import rms_norm

    dt = torch.bfloat16
    nbytes = n * k * 2
    copies = max(1, -(-192 * 2**20 // nbytes))
    ws = [(torch.randn(n, k, device="cuda", generator=gen) * 0.02).to(dt) for _ in range(min(copies, 1))]
    ws += [ws[0].clone() for _ in range(copies - 1)]
    reps = max(copies, 8)
    x0 = torch.randn(B, k, device="cuda", generator=gen).to(dt)
    nw = torch.ones(k, device="cuda", dtype=dt)
    x = torch.empty_like(x0)
    hq, d = (k // 256, 256) if kind == "gate" else (1, k)
    qg = torch.randn(B, hq, 2 * d, device="cuda", generator=gen).to(dt) if kind == "gate" else None
    gate = qg[..., d:] if qg is not None else None

    def body(gemm):
        def f():
            for r in range(reps):
                rms_norm(x0, nw, 1e-6, out=x)
                gemm(ws[r % copies])
        return f

    cublas = {"plain": lambda w: F.linear(x, w), "silu": lambda w: silu_mul_fused(F.linear(x, w)),
              "gate": lambda w: F.linear(sigmoid_gate(x.view(B, hq, d), gate).view(B, k), w)}[kind]
    norm_us = graph_us(body(lambda w: None), reps)
    rec = dict(shape=name, kind=kind, N=n, K=k, batch=B, MB=round(nbytes / 1e6, 2), norm_us=round(norm_us, 2))
    variants = {"cublas": cublas}
    if skinny_ok(x, ws[0]):
        for ks in ksplits if kind != "silu" else (1,):
            if k // 32 < ks * 8:
                continue
            kw = dict(silu_mul=kind == "silu", gate=gate if kind == "gate" else None, ksplit=ks)
            variants[f"skinny_k{ks}"] = lambda w, kw=kw: skinny_linear(x, w, **kw)
        if kind == "plain" and B <= 8:
            variants["skinny_wide"] = lambda w: skinny_linear(x, w, tile_rows=32)
    for v, fn in variants.items():
        us = graph_us(body(fn), reps) - norm_us
        rec[v + "_us"] = round(us, 2)
        rec[v + "_TBps"] = round(nbytes / (us * 1e-6) / 1e12, 2) if us > 0 else None
    best = min((v for v in variants), key=lambda v: rec[v + "_us"])
    rec["best"] = best
    del ws
    return rec


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="0.8B,4B,9B")
    ap.add_argument("--batch", default="1,32")
    ap.add_argument("--shapes", default=None, help="comma list of shape names (default all)")
    ap.add_argument("--ksplit", default="1", help="comma list of K splits to time (cluster builds: 1,2,4)")
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    gen = torch.Generator(device="cuda").manual_seed(0)
    records = []
    for size in args.sizes.split(","):
        for B in (int(b) for b in args.batch.split(",")):
            for name, kind, n, k, calls in shapes(size):
                if args.shapes and name not in args.shapes.split(","):
                    continue
                r = dict(size=size, calls_per_step=calls) | run_shape(name, kind, n, k, B, gen,
                                                                      tuple(int(v) for v in args.ksplit.split(",")))
                records.append(r)
                vs = " ".join(f"{kk[:-3]} {v:.2f}" for kk, v in r.items() if kk.endswith("_us") and kk != "norm_us")
                print(f"{size} b{B} {name} {n}x{k} ({r['MB']} MB, x{calls}): {vs} us -> {r['best']}", flush=True)
            torch.cuda.empty_cache()
    path = write_results("skinny_gemm_ab", records, out_dir=args.out)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
