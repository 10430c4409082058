"""Time the language model's norms and gates (issue 12) beside torch eager, graph-replayed, on one GPU.

    python3 tools/norms_gpu.py [--tokens 1,8,64,16384] [--ops rms_norm,silu_mul] [--dtype bfloat16] [--out DIR]

Shapes: the 0.8B / 9B / 27B models (hidden 1024 / 4096 / 5120, intermediate 3584 / 12288 / 17408, 8 / 16 / 24
query heads of 256, 16 / 32 / 48 DeltaNet value heads of 128, 16 key heads of 128) at each token count; inputs
are made on the GPU (16k-token cases are too big to build on the host quickly). sigmoid_gate gets the gate as
the model has it, a strided view of q_proj's [T, H, 512] output. Each implementation: 20 calls replayed from one
CUDA graph (benchmarks.common.graph_ms), two passes (the second in reverse order), the best kept. Bytes are the
DRAM traffic of an ideal kernel (every input read once, every output written once); the ceiling is the copy
bandwidth measured in the same run. Goals (issue 12): >= 85 % of copy at 16k tokens, <= 3 us a call at 1-64 rows.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.common import card_name, copy_bandwidth_TBps, graph_ms, write_results  # noqa: E402
from kernels.registry import REGISTRY  # noqa: E402

SIZES = {"0.8B": dict(hidden=1024, mlp=3584, heads=8, v_heads=16),
         "9B": dict(hidden=4096, mlp=12288, heads=16, v_heads=32),
         "27B": dict(hidden=5120, mlp=17408, heads=24, v_heads=48)}
OPS = ("rms_norm", "add_rms_norm", "gated_rms_norm", "l2norm", "silu_mul", "silu_mul_fused", "sigmoid_gate")


def _r(*shape, dtype, scale=1.0):
    return torch.randn(*shape, device="cuda", dtype=torch.float32).mul_(scale).to(dtype)


def cases(op: str, t: int, dtype):
    """[(label, args, bytes moved)] for op at t tokens, one per distinct model shape."""
    out, seen = [], set()
    for size, s in SIZES.items():
        if op in ("rms_norm", "add_rms_norm"):
            key = (s["hidden"],)
            x, w = _r(t, s["hidden"], dtype=dtype), _r(s["hidden"], dtype=dtype, scale=0.1)
            args = (x, w, 1e-6, True) if op == "rms_norm" else (x, _r(t, s["hidden"], dtype=dtype), w, 1e-6, True)
            n = (2 if op == "rms_norm" else 4) * x.numel()
        elif op == "gated_rms_norm":
            key = (s["v_heads"],)
            x, z = _r(t, s["v_heads"], 128, dtype=dtype), _r(t, s["v_heads"], 128, dtype=dtype)
            args, n = (x, z, _r(128, dtype=dtype, scale=0.1).add_(1), 1e-6), 3 * x.numel()
        elif op == "l2norm":
            key = (16,)
            x = _r(t, 16, 128, dtype=dtype)
            args, n = (x, 1e-6), 2 * x.numel()
        elif op == "silu_mul":
            key = (s["mlp"],)
            g = _r(t, s["mlp"], dtype=dtype)
            args, n = (g, _r(t, s["mlp"], dtype=dtype)), 3 * g.numel()
        elif op == "silu_mul_fused":
            key = (s["mlp"],)
            gu = _r(t, 2 * s["mlp"], dtype=dtype)
            args, n = (gu,), 3 * gu.numel() // 2
        elif op == "sigmoid_gate":
            key = (s["heads"],)
            qg = _r(t, s["heads"], 512, dtype=dtype)
            o = _r(t, s["heads"], 256, dtype=dtype)
            args, n = (o, qg[..., 256:]), 3 * o.numel()
        else:
            raise KeyError(op)
        if key in seen:
            continue
        seen.add(key)
        shape = "x".join(map(str, args[0].shape))
        out.append((f"{size}-{shape}", args, n * args[0].element_size()))
    return out


def impls(op: str, args) -> dict:
    fns = {v: (lambda f: (lambda: f(*args)))(f) for v, f in REGISTRY[op].kernels.items()}
    peers = REGISTRY[op].hook("peers")
    if peers is not None:
        fns.update(peers(args))
    return fns


def ab(dtype, t: int = 16384) -> None:
    """Launch-configuration A/B at prefill size (graph-replayed, best of 2 passes): rms_norm / add_rms_norm at
    hidden 1024 as (threads per row, vectors per thread) = the default, 64 x 2 and 128 x 1; the gates with 4 and
    1 rows a thread."""
    import kernels.activations as A
    import kernels.norms as N

    def timed(fn):
        return min(graph_ms(fn), graph_ms(fn)) * 1e3

    for op in ("rms_norm", "add_rms_norm"):
        label, args, nbytes = cases(op, t, dtype)[0]
        fn = REGISTRY[op].kernels["nvrtc"]
        config = N._rms_config
        for cfg in (None, (64, 2), (128, 1)):
            if cfg is not None:
                N._rms_config = lambda *a, cfg=cfg: cfg
            try:
                us = timed(lambda: fn(*args))
            finally:
                N._rms_config = config
            print(f"ab {op:15s} {label:22s} {str(cfg or 'default'):10s} {us:8.2f} us {nbytes / us / 1e3:7.0f} GB/s")
    for op in ("silu_mul", "sigmoid_gate"):
        for label, args, nbytes in cases(op, t, dtype):
            fn = REGISTRY[op].kernels["nvrtc"]
            pick = A._gate_rows
            for rows in (4, 1):
                A._gate_rows = lambda *_, rows=rows: rows
                try:
                    us = timed(lambda: fn(*args))
                finally:
                    A._gate_rows = pick
                print(f"ab {op:15s} {label:22s} rows={rows:<5d} {us:8.2f} us {nbytes / us / 1e3:7.0f} GB/s")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--tokens", default="1,8,64,16384")
    ap.add_argument("--ops", default=",".join(OPS))
    ap.add_argument("--dtype", default="bfloat16")
    ap.add_argument("--out", default=os.environ.get("OUT"), help="results directory (default benchmarks/results)")
    ap.add_argument("--ab", action="store_true", help="then the launch-configuration A/B at 16384 tokens")
    a = ap.parse_args()
    if not torch.cuda.is_available():
        print("no CUDA device")
        return 2
    dtype = getattr(torch, a.dtype)
    copy = copy_bandwidth_TBps()
    print(f"{card_name()}: copy {copy * 1e3:.0f} GB/s; {a.dtype}; 20 calls replayed from a CUDA graph, "
          "best of 2 passes")
    print(f"{'op':15s} {'case':22s} {'impl':6s} {'us':>8s} {'GB/s':>7s} {'%copy':>6s} {'x torch':>8s}  goal")
    records, misses = [], []
    for op in a.ops.split(","):
        for t in (int(x) for x in a.tokens.split(",")):
            for label, args, nbytes in cases(op, t, dtype):
                fns = impls(op, args)
                times = {}
                for name in list(fns) + list(fns)[::-1]:
                    times[name] = min(times.get(name, float("inf")), graph_ms(fns[name]))
                for name, ms in times.items():
                    us = ms * 1e3
                    gbps = nbytes / (ms * 1e-3) / 1e9
                    pct = 100 * gbps / (copy * 1e3)
                    x = times.get("torch", float("nan")) / ms if name != "torch" else None
                    goal = ""
                    if name in REGISTRY[op].kernels:
                        if t <= 64:
                            goal = "ok" if us <= 3.0 else "MISS (> 3 us)"
                        elif t >= 16384:
                            goal = "ok" if pct >= 85 else "MISS (< 85 % of copy)"
                        if goal.startswith("MISS"):
                            misses.append(f"{op} {label} {us:.2f} us {pct:.1f} %")
                    print(f"{op:15s} {label:22s} {name:6s} {us:8.2f} {gbps:7.0f} {pct:6.1f} "
                          f"{'' if x is None else f'{x:8.2f}':>8s}  {goal}")
                    records.append({"op": op, "case": label, "tokens": t, "impl": name, "us": round(us, 3),
                                    "bytes": nbytes, "GBps": round(gbps, 1), "pct_of_copy": round(pct, 1),
                                    "x_torch": None if x is None else round(x, 2)})
                del args, fns
    torch.cuda.empty_cache()
    path = write_results("lm_norms", records, {"copy_TBps": round(copy, 3), "timing": "graph, 20 calls"},
                         out_dir=Path(a.out) if a.out else None)
    print(f"goal misses: {len(misses)}" + "".join(f"\n  {m}" for m in misses))
    print(f"wrote {path}")
    if a.ab:
        ab(dtype)
    return 0


if __name__ == "__main__":
    sys.exit(main())
