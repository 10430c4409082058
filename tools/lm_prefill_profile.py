"""Where the time of one prefill (time to first token) goes: host time by phase, layer and op, the host syncs,
and the device kernels, for `Model.generate_ids(..., max_new_tokens=1)` on the kernels backend.

    python3 tools/lm_prefill_profile.py                                  # 0.8B, 1024 tokens
    python3 tools/lm_prefill_profile.py --tokens 1024,8192 --image --out $OUT
    python3 tools/lm_prefill_profile.py --size smoke --device cpu        # the tool itself, on the CPU reference

Random bf16 weights at the real shapes of tools/lm_e2e_gpu.SIZES, made on the device (no HF model). Per case:
  * prefill_ms: Model.last_timings["prefill_ms"] (what tools/lm_e2e_gpu.py reports), best and all of --reps;
  * phases: host wall time of each step of generate_steps' prefill part (prompt preparation, the session
    lookup, the cache reset, the prefill's enqueue, lm_head + first token, and the final wait for the device:
    a large enqueue and a small wait mean the host, not the device, sets the time);
  * host time by op and by layer (inclusive wall time of every call, no synchronisation added);
  * syncs: every call that made the host wait for the device (torch.cuda.set_sync_debug_mode), with its caller;
  * device: kernel busy time of the prefill beside its span, and the top kernels and top host ops
    (torch.profiler, one call);
  * --image: the same for one 1024x1024 image + 64-token prompt (vision_ms, prefill_ms, ttft_ms);
  * --ab-graphs: each case again with the prefill replayed from CUDA graphs (model.prefill_graph, what Model
    does by default), A/B in one process; the cases above run with the graphs off (eager).
JSON: benchmarks.common.write_results("lm_prefill_profile", ...) (stamped with $QWEN35_COMMIT) under --out.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import inspect
import sys
import time
import traceback
import types
import warnings
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from benchmarks.common import write_results  # noqa: E402

# a few-layer model at toy widths: runs the tool on the CPU reference (--device cpu) in seconds
SMOKE = dict(text=dict(hidden_size=128, num_hidden_layers=4, num_attention_heads=2, num_key_value_heads=1,
                       intermediate_size=256, linear_num_value_heads=2,
                       linear_key_head_dim=32, linear_value_head_dim=32, linear_num_key_heads=2), tie=True,
             vision=dict(depth=2, hidden_size=64, num_heads=2, intermediate_size=128, out_hidden_size=128))


def model_config(size: str):
    import lm_e2e_gpu as E

    from model.config import ModelConfig
    if size == "smoke":
        E.SIZES.setdefault("smoke", SMOKE)
    hf = E.hf_config(size)
    if size == "smoke":
        t = hf.text_config
        for k, v in SMOKE["text"].items():
            setattr(t, k, v)
    return ModelConfig.from_dict(hf.to_dict() | {"model_type": "qwen3_5"})


def build_model(size: str, device: str, vision: bool):
    """model.Model with random weights at the real shapes (vision tower too if `vision`)."""
    import model as M
    from model.loader import LM_HEAD, VISUAL, expected_shapes

    cfg = model_config(size)
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    g = torch.Generator(device=device).manual_seed(0)
    w = {}
    for name, shape in expected_shapes(cfg).items():
        if name.startswith(VISUAL) and not vision:
            continue
        if name == LM_HEAD and cfg.tie_word_embeddings:
            continue
        if "norm" in name:
            t = (1.0 if "visual" in name or "linear_attn.norm" in name else 0.0) + 0.1 * torch.randn(
                shape, device=device, generator=g)
        elif name.endswith("A_log"):
            t = torch.rand(shape, device=device, generator=g) * 2.7
        else:
            t = torch.randn(shape, device=device, generator=g) * 0.02
        w[name] = t.to(dtype)
    w.setdefault(LM_HEAD, w["model.language_model.embed_tokens.weight"])
    backend = "kernels" if device == "cuda" else "reference"
    return M.Model(cfg, w, backend=backend, cuda_graphs=device == "cuda")


def sync(device):
    if device == "cuda":
        torch.cuda.synchronize()


# ---------------------------------------------------------------------------------------------- host timers
class HostTimes:
    """Inclusive host wall time per label (calls, seconds), from wrappers installed for one run."""

    def __init__(self):
        self.t = collections.defaultdict(lambda: [0, 0.0])
        self.layers = collections.defaultdict(float)

    def wrap(self, label, fn, layer_arg: bool = False):
        acc, layers = self.t, self.layers

        def inner(*a, **k):
            t0 = time.perf_counter()
            try:
                return fn(*a, **k)
            finally:
                dt = time.perf_counter() - t0
                e = acc[label]
                e[0] += 1
                e[1] += dt
                if layer_arg:
                    layers[a[0]] += dt
        try:  # model.language reads op signatures for its kernel hints
            inner.__signature__ = inspect.signature(fn)
        except (TypeError, ValueError):
            pass
        return inner

    def table(self, runs: int = 1) -> dict:
        """{label: calls and ms per run}, the largest first."""
        return {k: dict(calls=c // runs, ms=round(s * 1e3 / runs, 3))
                for k, (c, s) in sorted(self.t.items(), key=lambda kv: -kv[1][1])}


@contextlib.contextmanager
def instrumented(m, times: HostTimes):
    """Host timers around the phases of generate_steps, the layers' mixers and MLPs, the linears and every op."""
    import model.generate as G
    import model.language as L
    import model.model as MM

    lm = m.lm
    saved_ops = lm.ops
    names = [n for n in dir(saved_ops) if not n.startswith("_") and callable(getattr(saved_ops, n))]
    lm.ops = types.SimpleNamespace(**{n: times.wrap("op " + n, getattr(saved_ops, n)) for n in names})
    inst = {"_attention": True, "_deltanet": True, "_mlp": True, "linear": False, "linear_split": False,
            "linear_silu_mul": False, "prefill": False, "head": False, "forward": False, "embed": False}
    for n, per_layer in inst.items():
        setattr(lm, n, times.wrap(("layer " if per_layer else "lm.") + n.strip("_"), getattr(lm, n), per_layer))
    m._prepare = times.wrap("phase prepare (ids, embeds, mRoPE ids)", m._prepare)
    m._session = times.wrap("phase session lookup", m._session)
    cls_saved = dict(reset=L.Cache.reset, begin=G.DecodeSession.begin)
    L.Cache.reset = times.wrap("phase cache.reset", L.Cache.reset)
    G.DecodeSession.begin = times.wrap("phase session.begin (first token)", G.DecodeSession.begin)
    sync_saved = MM._sync
    MM._sync = times.wrap("phase final device wait", MM._sync)
    L._keywords.cache_clear()
    try:
        yield
    finally:
        lm.ops = saved_ops
        for n in inst:
            delattr(lm, n)
        del m._prepare, m._session
        L.Cache.reset, G.DecodeSession.begin = cls_saved["reset"], cls_saved["begin"]
        MM._sync = sync_saved
        L._keywords.cache_clear()


def traced_syncs(fn) -> list[dict]:
    """As find_syncs, but each site is the stack's frames in this repository (file:line chain, innermost last)."""
    if not torch.cuda.is_available():
        return []
    root = str(Path(__file__).resolve().parents[1])
    found = collections.Counter()
    orig = warnings.showwarning

    def show(message, category, filename, lineno, file=None, line=None):
        if "synchroniz" in str(message):
            chain = [f"{Path(f.filename).relative_to(root)}:{f.lineno}" for f in traceback.extract_stack()
                     if f.filename.startswith(root) and not f.filename.endswith("lm_prefill_profile.py")]
            found[(str(message).splitlines()[0][:100], " < ".join(reversed(chain[-4:])))] += 1

    prev = torch.cuda.get_sync_debug_mode()
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        warnings.showwarning = show
        torch.cuda.set_sync_debug_mode("warn")
        try:
            fn()
        finally:
            torch.cuda.set_sync_debug_mode(prev)
            warnings.showwarning = orig
    return [dict(what=what, where=where, count=c) for (what, where), c in found.most_common()]


# ---------------------------------------------------------------------------------------------- device profile
def device_profile(fn, top: int) -> dict:
    """torch.profiler of one fn(): kernel busy time and span, top kernels, top host ops by self time, and the
    driver/runtime calls that wait (synchronize, blocking copies)."""
    from torch.profiler import ProfilerActivity, profile

    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if torch.cuda.is_available() else [])
    with profile(activities=acts) as prof:
        fn()
    events = prof.events()
    dev = sorted((e for e in events if e.device_type == torch.autograd.DeviceType.CUDA),
                 key=lambda e: e.time_range.start)
    busy = sum(e.time_range.end - e.time_range.start for e in dev)
    span = (dev[-1].time_range.end - dev[0].time_range.start) if dev else 0.0
    kern = collections.defaultdict(lambda: [0, 0.0])
    for e in dev:
        k = kern[e.name[:100]]
        k[0] += 1
        k[1] += e.time_range.end - e.time_range.start
    # gaps: device idle between consecutive device events (the host did not keep the stream fed)
    gaps, end = [], None
    for e in dev:
        if end is not None and e.time_range.start > end:
            gaps.append(e.time_range.start - end)
        end = max(end or 0, e.time_range.end)
    cpu = collections.defaultdict(lambda: [0, 0.0])
    waits = collections.defaultdict(lambda: [0, 0.0])
    for e in events:
        if e.device_type != torch.autograd.DeviceType.CPU:
            continue
        c = cpu[e.name[:100]]
        c[0] += 1
        c[1] += e.self_cpu_time_total
        if any(w in e.name for w in ("ynchronize", "cudaMemcpy", "cuMemcpy", "cudaStreamWait", "EventSynchronize")):
            w = waits[e.name]
            w[0] += 1
            w[1] += e.time_range.end - e.time_range.start
    fmt = lambda d, n: {k: dict(n=c, us=round(u, 1)) for k, (c, u) in  # noqa: E731
                        sorted(d.items(), key=lambda kv: -kv[1][1])[:n]}
    return dict(device_events=len(dev), busy_us=round(busy, 1), span_us=round(span, 1),
                idle_gaps_us=round(sum(gaps), 1), gaps_over_50us=sum(g > 50 for g in gaps),
                largest_gaps_us=[round(g, 1) for g in sorted(gaps)[-8:]],
                top_kernels=fmt(kern, top), top_host_ops_self=fmt(cpu, top), waits=fmt(waits, 20))


# ---------------------------------------------------------------------------------------------- cases
def text_case(m, S: int) -> dict:
    from lm_e2e_gpu import text_ids

    ids = text_ids(1, S)
    return dict(input_ids=ids, max_new_tokens=1, eos_token_ids=[])


def image_case(m, device: str) -> dict:
    from lm_e2e_gpu import IMAGE_SIDE, IMAGE_TOKEN, VEND, VSTART, text_ids

    side = IMAGE_SIDE if m.config.text.hidden_size >= 1024 else 64
    g = side // 16
    ids = torch.cat([text_ids(1, 32, 1), torch.tensor([[VSTART] + [IMAGE_TOKEN] * (g * g // 4) + [VEND]]),
                     text_ids(1, 32, 2)], dim=1)
    pv = torch.randn(g * g, 1536, generator=torch.Generator().manual_seed(3)).to(device, m.dtype)
    return dict(input_ids=ids, pixel_values=pv, image_grid_thw=torch.tensor([[1, g, g]]), max_new_tokens=1,
                     eos_token_ids=[])


def run_case(m, name: str, kwargs: dict, reps: int, device: str, top: int, quick: bool = False) -> dict:
    """The eager prefill (Model.prefill_graphs off): timings, and unless quick the host breakdown, the syncs
    and the device profile."""
    graphs, m.prefill_graphs = m.prefill_graphs, None
    try:
        return _eager_case(m, name, kwargs, reps, device, top, quick)
    finally:
        m.prefill_graphs = graphs


def _eager_case(m, name, kwargs, reps, device, top, quick) -> dict:
    gen = lambda: m.generate_ids(**kwargs)  # noqa: E731
    t0 = time.perf_counter()
    gen()  # warm-up: compiles, session allocation and decode-graph capture
    warm_s = time.perf_counter() - t0
    gen()
    timings = []
    for _ in range(reps):
        gen()
        timings.append(dict(m.last_timings))
    best = min(timings, key=lambda t: t["ttft_ms"])
    rec = dict(case=name, tokens=int(kwargs["input_ids"].shape[1]), warmup_s=round(warm_s, 2),
               prefill_ms=round(best["prefill_ms"], 3), vision_ms=round(best["vision_ms"], 3),
               ttft_ms=round(best["ttft_ms"], 3), prefill_ms_all=[round(t["prefill_ms"], 2) for t in timings])
    if device == "cuda":
        rec["device_only_ms"] = round(device_only_ms(m, kwargs), 3)
    if quick:
        return rec
    # host time by phase / layer / op (mean over reps calls)
    times = HostTimes()
    with instrumented(m, times):
        for _ in range(reps):
            gen()
    rec["host"] = times.table(reps)
    rec["host_ms_by_layer"] = {int(i): round(s * 1e3 / reps, 3) for i, s in sorted(times.layers.items())}
    rec["instrumented_prefill_ms"] = round(m.last_timings["prefill_ms"], 3)
    rec["syncs"] = traced_syncs(gen)
    rec["profile"] = device_profile(gen, top)
    return rec


def graphed_case(m, name: str, kwargs: dict, reps: int) -> dict:
    """The same prompt with the prefill replayed from a CUDA graph (model.prefill_graph), A/B in this process:
    timings, whether the first token equals the eager one, and the graph's capture/replay counts."""
    from model.prefill_graph import PrefillGraphs, bucket

    default = m.prefill_graphs
    m.prefill_graphs = None
    eager_tok = m.generate_ids(**kwargs)[:, -1].tolist()
    m.prefill_graphs = g = PrefillGraphs(default.max_tokens if default is not None else 8192)
    try:
        t0 = time.perf_counter()
        first = m.generate_ids(**kwargs)  # eager on the padded buffers, then the capture
        capture_s = time.perf_counter() - t0
        timings = []
        for _ in range(reps):
            out = m.generate_ids(**kwargs)
            timings.append(dict(m.last_timings))
        times = HostTimes()  # the host phases around the replay
        with instrumented(m, times):
            for _ in range(reps):
                m.generate_ids(**kwargs)
    finally:
        m.prefill_graphs = default
    best = min(timings, key=lambda t: t["ttft_ms"])
    T = int(kwargs["input_ids"].shape[1])
    return dict(case=name + "_graphed", tokens=T, bucket=bucket(T), first_call_s=round(capture_s, 3),
                prefill_ms=round(best["prefill_ms"], 3), vision_ms=round(best["vision_ms"], 3),
                ttft_ms=round(best["ttft_ms"], 3), prefill_ms_all=[round(t["prefill_ms"], 2) for t in timings],
                captures=g.captures, replays=g.replays, first_token_eager=eager_tok, host=times.table(reps),
                first_token_padded_eager=first[:, -1].tolist(), first_token_graph=out[:, -1].tolist())


def device_only_ms(m, kwargs, sleep_ms: float = 150.0) -> float:
    """The prefill's device time without host gaps: each LanguageModel.forward (a prefill chunk) is issued behind
    a sleep kernel of ~sleep_ms, so the host has queued all of it before the device starts; the events around it
    give its device time (valid only if nothing inside forward waits for the device: see the syncs list)."""
    lm = m.lm
    real = lm.forward
    spans = []

    def forward(*a, **k):
        e0, e1 = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        torch.cuda._sleep(int(sleep_ms * 1e-3 * 1.98e9))  # cycles at the H200's ~1.98 GHz
        e0.record()
        r = real(*a, **k)
        e1.record()
        spans.append((e0, e1))
        return r
    lm.forward = forward
    try:
        m.generate_ids(**kwargs)
    finally:
        del lm.forward
    torch.cuda.synchronize()
    return sum(e0.elapsed_time(e1) for e0, e1 in spans)


def split_case(m, name: str, kwargs: dict, reps: int, rows: int = 256) -> dict:
    """Model's default path (prefill graphs on) with language.PART_GEMM_ROWS None (one GEMM per fused projection,
    its parts copied out) against `rows` (a GEMM per contiguous part from that many rows on), A/B in this process,
    interleaved; and whether the first token is the same."""
    import model.language as L

    saved = L.PART_GEMM_ROWS
    out = {}
    try:
        for setting in (None, rows):
            L.PART_GEMM_ROWS = setting
            drop_prefill_graphs(m)  # captured with the other setting
            m.generate_ids(**kwargs)
            m.generate_ids(**kwargs)  # the bucket's graph captured
        res = {None: [], rows: []}
        tok = {}
        for _ in range(reps):
            for setting in (None, rows):
                L.PART_GEMM_ROWS = setting
                drop_prefill_graphs(m)
                m.generate_ids(**kwargs)
                t = m.generate_ids(**kwargs)
                res[setting].append(m.last_timings["ttft_ms"])
                tok[setting] = t[:, -1].tolist()
        out = dict(case=name + "_split_ab", part_gemm_rows=rows, ttft_ms_one_gemm=round(min(res[None]), 3),
                   ttft_ms_part_gemms=round(min(res[rows]), 3), all_one_gemm=[round(v, 2) for v in res[None]],
                   all_part_gemms=[round(v, 2) for v in res[rows]], same_first_token=tok[None] == tok[rows])
    finally:
        L.PART_GEMM_ROWS = saved
        drop_prefill_graphs(m)
    return out


def drop_prefill_graphs(m) -> None:
    """Forget the prefill graphs of every decode session's cache (the next prefill of a bucket captures again)."""
    for sess in m._sessions.values():
        sess.cache.__dict__.pop("_prefill_graphs", None)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", default="0.8B", help="a tools/lm_e2e_gpu.SIZES key, or smoke (toy widths)")
    ap.add_argument("--tokens", default="1024", help="comma list of prompt lengths (batch 1)")
    ap.add_argument("--image", action="store_true", help="also the 1024x1024 image + 64-token prompt")
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--top", type=int, default=25)
    ap.add_argument("--quick", action="store_true", help="timings and device-only time only (no host "
                    "breakdown, sync trace or profiler)")
    ap.add_argument("--ab-split", action="store_true", help="also Model's default path with a GEMM per "
                    "contiguous part of the fused projections (language.PART_GEMM_ROWS) against one GEMM, A/B")
    ap.add_argument("--ab-graphs", action="store_true", help="also each case with the prefill replayed from a "
                    "CUDA graph (model.prefill_graph), A/B in this process")
    ap.add_argument("--device", default="cuda", help="cuda (kernels backend) or cpu (reference: the tool only)")
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    t_start = time.perf_counter()
    m = build_model(args.size, args.device, vision=args.image)
    print(f"{args.size}: built in {time.perf_counter() - t_start:.1f} s", flush=True)
    records = []
    cases = [(f"prefill_{S}", text_case(m, S)) for S in map(int, args.tokens.split(","))]
    if args.image:
        cases.append(("ttft_image", image_case(m, args.device)))
    for name, kw in cases:
        t0 = time.perf_counter()
        rec = run_case(m, name, kw, args.reps, args.device, args.top, args.quick)
        rec["size"] = args.size
        rec["wall_s"] = round(time.perf_counter() - t0, 1)
        records.append(rec)
        summary(rec)
        if args.ab_split:
            sp = split_case(m, name, kw, args.reps)
            sp["size"] = args.size
            records.append(sp)
            print(f"== {args.size} {sp['case']}: ttft one GEMM {sp['ttft_ms_one_gemm']} ms {sp['all_one_gemm']}, "
                  f"a GEMM per part {sp['ttft_ms_part_gemms']} ms {sp['all_part_gemms']}; same first token "
                  f"{sp['same_first_token']}", flush=True)
        if args.ab_graphs and args.device == "cuda":
            g = graphed_case(m, name, kw, args.reps)
            g["size"] = args.size
            records.append(g)
            print(f"== {args.size} {g['case']} (bucket {g['bucket']}): prefill {g['prefill_ms']} ms (all "
                  f"{g['prefill_ms_all']}), ttft {g['ttft_ms']} ms; first call {g['first_call_s']} s; captures "
                  f"{g['captures']} replays {g['replays']}; first token eager {g['first_token_eager']} padded "
                  f"{g['first_token_padded_eager']} graph {g['first_token_graph']}", flush=True)
            print("   host " + ", ".join(f"{k} {v['ms']}" for k, v in list(g["host"].items())[:8]), flush=True)
        # written after every case, so a run cut short keeps what it measured
        path = write_results("lm_prefill_profile", records, extra=dict(size=args.size), out_dir=args.out)
    print(f"wrote {path} ({time.perf_counter() - t_start:.1f} s)")
    return 0


def summary(r: dict) -> None:
    if "profile" not in r:
        print(f"== {r['size']} {r['case']}: prefill {r['prefill_ms']} ms (all {r['prefill_ms_all']}), vision "
              f"{r['vision_ms']} ms, ttft {r['ttft_ms']} ms; device-only {r.get('device_only_ms')} ms", flush=True)
        return
    p = r["profile"]
    print(f"== {r['size']} {r['case']}: prefill {r['prefill_ms']} ms (all {r['prefill_ms_all']}), vision "
          f"{r['vision_ms']} ms; device-only {r.get('device_only_ms')} ms; profile: busy {p['busy_us'] / 1e3:.2f} ms "
          f"over a span of {p['span_us'] / 1e3:.2f} ms ({p['device_events']} events, idle {p['idle_gaps_us'] / 1e3:.2f}"
          f" ms, {p['gaps_over_50us']} gaps > 50 us)", flush=True)
    for k, v in list(r["host"].items())[:22]:
        print(f"   host {v['ms']:9.3f} ms {v['calls']:5d}x  {k}")
    lay = r["host_ms_by_layer"]
    if lay:
        print("   host ms by layer: " + " ".join(f"{v:.2f}" for v in lay.values()))
    for s in r["syncs"][:12]:
        print(f"   sync x{s['count']}: {s['what'][:60]} @ {s['where']}")
    for k, v in list(p["waits"].items())[:8]:
        print(f"   wait {v['us']:9.1f} us {v['n']:4d}x  {k}")
    for k, v in list(p["top_kernels"].items())[:12]:
        print(f"   kern {v['us']:9.1f} us {v['n']:4d}x  {k}")
    for k, v in list(p["top_host_ops_self"].items())[:12]:
        print(f"   cpu  {v['us']:9.1f} us {v['n']:4d}x  {k}")


if __name__ == "__main__":
    sys.exit(main())
