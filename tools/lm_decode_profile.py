"""Where one decode step's time goes: every kernel of one eager step (torch.profiler, device time by kernel
name, kernels per step), grouped by the op that launched it, beside the CUDA-graph replay time of the same step.

    python3 tools/lm_decode_profile.py                       # 0.8B, batch 1, 1024-token context
    python3 tools/lm_decode_profile.py --sizes 0.8B,4B,9B --batch 1,32 --out $OUT
    python3 tools/lm_decode_profile.py --variants skinny,cublas,skinnyonly   # A/B: skinny per shape (timed) / cuBLAS / skinny always

Only the language model is built (random bf16 weights at the real shapes of tools/lm_e2e_gpu.SIZES, made on
the GPU: seconds, no HF model). The cache lengths are set to the context (the KV slots hold zeros: decode time
does not depend on their values). The eager step's kernel sum is the device busy time without launch gaps; the
graph replay time is what the decode loop pays per token. The floor is tools/lm_e2e_gpu.decode_bytes at the
copy rate measured here. Op groups come from torch.profiler ranges around every op of the namespace and every
linear (labels only: the kernels are the same as without them).
JSON: benchmarks.common.write_results("lm_decode_profile", ...).
"""

from __future__ import annotations

import argparse
import inspect
import sys
import time
import types
from contextlib import contextmanager
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from benchmarks.common import copy_bandwidth_TBps, write_results  # noqa: E402


def build_lm(size: str, dtype=torch.bfloat16):
    """A LanguageModel on the kernels backend with random weights at the real shapes of `size`."""
    from lm_e2e_gpu import hf_config

    from model.config import ModelConfig
    from model.language import LanguageModel
    from model.loader import LM, LM_HEAD, expected_shapes
    from model.ops import ops_for

    cfg = ModelConfig.from_dict(hf_config(size).to_dict() | {"model_type": "qwen3_5"})
    g = torch.Generator(device="cuda").manual_seed(0)
    w = {}
    for name, shape in expected_shapes(cfg).items():
        if not (name.startswith(LM) or name == LM_HEAD):
            continue
        key = "lm_head.weight" if name == LM_HEAD else name[len(LM):]
        if key == "lm_head.weight" and cfg.tie_word_embeddings:
            continue
        if "norm" in key:
            t = 1.0 + 0.1 * torch.randn(shape, device="cuda", generator=g)
        elif key.endswith("A_log"):
            t = torch.rand(shape, device="cuda", generator=g) * 2.7
        else:
            t = torch.randn(shape, device="cuda", generator=g) * 0.02
        w[key] = t.to(dtype)
    w.setdefault("lm_head.weight", w["embed_tokens.weight"])
    return LanguageModel(cfg.text, w, ops_for("kernels", cfg, dtype)), cfg


@contextmanager
def labelled(lm):
    """torch.profiler ranges named by op around the namespace's ops and the model's linears."""
    from torch.profiler import record_function

    def wrap(name, fn):
        def inner(*a, **k):
            with record_function(name):
                return fn(*a, **k)
        try:  # model.language reads op signatures for its kernel hints
            inner.__signature__ = inspect.signature(fn)
        except (TypeError, ValueError):
            pass
        return inner

    import model.language as L

    ops = lm.ops
    names = [n for n in dir(ops) if not n.startswith("_") and callable(getattr(ops, n))]
    lm.ops = types.SimpleNamespace(**{n: wrap(n, getattr(ops, n)) for n in names})
    lin, lin_silu, lin_split = lm.linear, lm.linear_silu_mul, lm.linear_split
    lm.linear = lambda x, name: wrap("linear " + name.split(".")[-2], lin)(x, name)
    lm.linear_silu_mul = lambda x, name: wrap("linear+silu " + name.split(".")[-2], lin_silu)(x, name)
    lm.linear_split = lambda x, name, *a, **k: wrap("linear " + name.split(".")[-2], lin_split)(x, name, *a, **k)
    L._keywords.cache_clear()
    try:
        yield
    finally:
        lm.ops = ops
        del lm.linear, lm.linear_silu_mul, lm.linear_split
        L._keywords.cache_clear()


def profile_step(lm, B: int, context: int, capacity: int, profile: bool = True, timeline: bool = False) -> dict:
    """Kernels of one eager step by name and by op, kernels per step, and the graph replay time per step."""
    from torch.profiler import ProfilerActivity, profile

    from model.generate import DecodeSession, Sampling

    sess = DecodeSession(lm, B, capacity, Sampling(), graphs=True)
    mode = sess.mode
    sess.cache.lengths.fill_(context)
    torch.cuda.synchronize()
    graph_us = None
    if sess.graph is not None:
        n = 50
        sess.advance()
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(n):
            sess.graph.replay()
        end.record()
        torch.cuda.synchronize()
        graph_us = start.elapsed_time(end) * 1e3 / n
        print(f"   bs{B}: graph replay {graph_us:.1f} us/step = {B / graph_us * 1e6:.1f} tok/s", flush=True)
        if timeline:
            tl = graph_timeline(sess.graph)
            print_timeline(tl)
        sess.cache.lengths.fill_(context)
    tl = dict(tl, by_kernel=dict(list(tl["by_kernel"].items())[:30])) if timeline and sess.graph is not None else None
    if not profile:
        del sess
        return dict(batch=B, context=context, mode=mode, kernels_per_step=None, kernel_us=None,
                    graph_us_per_step=None if graph_us is None else round(graph_us, 1),
                    graph_tokens_per_s=None if graph_us is None else round(B / graph_us * 1e6, 1), by_op={},
                    by_kernel={}, timeline=tl)
    graph, sess.graph = sess.graph, None  # the profiled step runs eagerly
    with labelled(lm):
        sess.advance()
        torch.cuda.synchronize()
        with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
            sess.advance()
            torch.cuda.synchronize()
    sess.graph = graph
    labels = set(names_of(lm))
    by_name, by_op, n_kernels, total = {}, {}, 0, 0.0
    events = prof.events()
    labelled_name = lambda n: n in labels or n.startswith("linear")  # noqa: E731
    # device work: kernels (torch's, cuBLAS's and our NVRTC ones launched through the driver), memsets, copies;
    # the device-side copies of the op labels (user annotations) are not work
    dev = sorted((e for e in events if e.device_type == torch.autograd.DeviceType.CUDA and not labelled_name(e.name)
                  and e.name != "ProfilerStep*"), key=lambda e: e.time_range.start)
    # the CPU calls that put work on the stream, in order: in an eager step on one stream the i-th launch is the
    # i-th device event, and its op group is the innermost labelled range around the launch
    launch_words = ("LaunchKernel", "Memset", "Memcpy", "cuLaunch")
    launches = sorted((e for e in events if e.device_type == torch.autograd.DeviceType.CPU
                       and any(w in e.name for w in launch_words)), key=lambda e: e.time_range.start)
    paired = len(launches) == len(dev)
    for i, k in enumerate(dev):
        owner = "unattributed (launch count differs)" if not paired else "other (embedding, glue, sampling, copies)"
        if paired:
            p = launches[i]
            while p is not None:
                if labelled_name(p.name):
                    owner = p.name
                    break
                p = p.cpu_parent
        nm, us = k.name[:90], float(k.time_range.end - k.time_range.start)
        cnt, tot = by_name.get(nm, (0, 0.0))
        by_name[nm] = (cnt + 1, tot + us)
        cnt, tot = by_op.get(owner, (0, 0.0))
        by_op[owner] = (cnt + 1, tot + us)
        n_kernels += 1
        total += us
    if not paired:
        print(f"   (profile: {len(launches)} launches vs {len(dev)} device events: op groups not attributed)")
    del sess
    fmt = lambda d: {k: dict(kernels=c, us=round(u, 1)) for k, (c, u) in sorted(d.items(), key=lambda kv: -kv[1][1])}
    return dict(batch=B, context=context, mode=mode, kernels_per_step=n_kernels, kernel_us=round(total, 1),
                graph_us_per_step=None if graph_us is None else round(graph_us, 1),
                graph_tokens_per_s=None if graph_us is None else round(B / graph_us * 1e6, 1),
                by_op=fmt(by_op), by_kernel=fmt(by_name), timeline=tl)


def graph_timeline(graph, reps: int = 5, calls: int = 1) -> dict:
    """Where a captured step's wall time goes as the graph runs (kernels overlap under PDL, so the eager busy time
    is not it): `reps` replays under torch.profiler, kernels sorted by start; each kernel is charged the time from
    the latest end before it to its own end (0 if it ends inside an earlier kernel), so the charges sum to the
    wall time. Per step (or per call, of `calls` captured in the graph): wall, busy (sum of durations) and, by kernel
    name, launches, duration and charge."""
    from torch.profiler import ProfilerActivity, profile

    graph.replay()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(reps):
            graph.replay()
        torch.cuda.synchronize()
    ks = [(float(e.time_range.start), float(e.time_range.end), e.name) for e in prof.events()
          if e.device_type == torch.autograd.DeviceType.CUDA]
    if not ks:
        return dict(wall_us=None, busy_us=None, kernels=0, by_kernel={})
    wall, by = charges(ks)
    per = lambda v: round(v / (reps * calls), 2)  # noqa: E731
    return dict(wall_us=per(wall), busy_us=per(sum(e - s for s, e, _ in ks)), kernels=len(ks) // (reps * calls),
                by_kernel={k: dict(kernels=n // (reps * calls), us=per(d), charged_us=per(c))
                           for k, (n, d, c) in sorted(by.items(), key=lambda kv: -kv[1][2])})


def charges(kernels) -> tuple[float, dict]:
    """(wall, {name: (launches, summed duration, charge)}) of (start, end, name) intervals: in order of start, each
    is charged from the latest end before it to its own end (0 inside an earlier one), so the charges sum to the
    wall time, last end - first start."""
    ks = sorted(kernels, key=lambda k: k[0])
    by, latest = {}, ks[0][0]
    for start, end, name in ks:
        charge = max(0.0, end - latest)
        latest = max(latest, end)
        n, dur, ch = by.get(name[:90], (0, 0.0, 0.0))
        by[name[:90]] = (n + 1, dur + end - start, ch + charge)
    return latest - ks[0][0], by


def print_timeline(t: dict, top: int = 20) -> None:
    print(f"   graph timeline: {t['kernels']} kernels, wall {t['wall_us']} us, busy {t['busy_us']} us", flush=True)
    for k, v in list(t["by_kernel"].items())[:top]:
        print(f"   charged {v['charged_us']:8.1f} us  ran {v['us']:8.1f} us {v['kernels']:4d} x  {k}", flush=True)


def names_of(lm) -> list[str]:
    return [n for n in dir(lm.ops) if not n.startswith("_")]


def report(r: dict, top: int) -> None:
    print(f"== {r['size']} {r['variant']} bs{r['batch']}: graph {r['graph_us_per_step']} us/step = "
          f"{r['graph_tokens_per_s']} tok/s (floor {r['floor_us']} us = {r['floor_tokens_per_s']} tok/s); eager step "
          f"{r['kernels_per_step']} kernels, {r['kernel_us']} us busy", flush=True)
    for k, v in r["by_op"].items():
        print(f"   {v['us']:8.1f} us {v['kernels']:4d} k  {k}")
    for k, v in list(r["by_kernel"].items())[:top]:
        print(f"   {v['us']:8.1f} us {v['kernels']:4d} x  {k}")


def main(argv=None) -> int:
    from lm_e2e_gpu import decode_bytes

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="0.8B")
    ap.add_argument("--batch", default="1", help="comma list of batch sizes")
    ap.add_argument("--context", type=int, default=1024)
    ap.add_argument("--variants", default="skinny", help="comma list: skinny (default: skinny or cuBLAS and the "
                    "K split per shape by timing), cublas (decode GEMMs on F.linear), skinnyonly (skinny wherever "
                    "it fits, default variant), narrow (no 32-row tiles), nopdl (no programmatic dependent launch "
                    "anywhere), gemmpdl (PDL in the GEMM, attention, DeltaNet and MoE kernels but not in the "
                    "norms, gates and glue: before this session), fold (the norms folded into the skinny GEMMs "
                    "where that wins the timing; off by default); variants after the first print only the totals")
    ap.add_argument("--profile-all", action="store_true", help="profile every variant (default: the first; the "
                    "others are timed only)")
    ap.add_argument("--timeline", action="store_true", help="also the graph-replayed step kernel by kernel "
                    "(first variant)")
    ap.add_argument("--top", type=int, default=25, help="kernel names printed")
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    copy = copy_bandwidth_TBps()
    print(f"{torch.cuda.get_device_name()}: copy {copy:.2f} TB/s", flush=True)
    records = []
    import kernels.runtime.launch as KL

    for size in args.sizes.split(","):
        t0 = time.perf_counter()
        lm, cfg = build_lm(size)
        print(f"{size}: built in {time.perf_counter() - t0:.1f} s", flush=True)
        skinny = lm.skinny
        for vi, variant in enumerate(args.variants.split(",")):
            lm.skinny = None if variant == "cublas" else skinny
            if variant == "narrow":
                lm.skinny = skinny[:2] + (lambda kind, w, rows: ({},),) + skinny[3:]
            lm.skinny_autotune = variant != "skinnyonly"
            lm.skinny_rows = 8 if variant == "skinny8" else 32
            lm.skinny_choice = {}  # timed again for each variant
            lm.fold_norms = variant == "fold"
            KL.PDL = variant != "nopdl"
            KL.PDL_OFF = {"norms.cu", "activations.cu", "glue.cu"} if variant == "gemmpdl" else set()
            for B in (int(b) for b in args.batch.split(",")):
                r = profile_step(lm, B, args.context, args.context + 64, profile=vi == 0 or args.profile_all,
                                 timeline=args.timeline and vi == 0)
                floor_us = decode_bytes(cfg.text, B, args.context) / (copy * 1e12) * 1e6
                choice = {f"{k[0]} {k[1]}x{k[2]} m{k[3]}": (v if v is not False else "cublas")
                          for k, v in lm.skinny_choice.items() if k[3] == B}
                r = dict(size=size, variant=variant, floor_us=round(floor_us, 1),
                         floor_tokens_per_s=round(B / floor_us * 1e6, 1)) | r | dict(gemm_choice=choice)
                if vi == 0:
                    print(f"   GEMM choice (K split or cublas): {choice}")
                records.append(r)
                report(r, args.top if vi == 0 else 0)
        print(f"{size}: {time.perf_counter() - t0:.1f} s", flush=True)
        del lm, skinny
        torch.cuda.empty_cache()
    KL.PDL, KL.PDL_OFF = True, set()
    path = write_results("lm_decode_profile", records, extra=dict(copy_TBps=copy, pdl_error=KL.PDL_ERROR),
                         out_dir=args.out)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
