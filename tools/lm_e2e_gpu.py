"""The language model end to end on one GPU: ours (kernels backend) beside Hugging Face transformers, with floors.

    python3 tools/lm_e2e_gpu.py --quick                 # < 60 s: 0.8B, prefill 1024, decode batch 1 and 8
    python3 tools/lm_e2e_gpu.py                         # full: 0.8B, 4B, 9B (about 6 minutes)
    python3 tools/lm_e2e_gpu.py --fla-site /tmp/site    # also HF with flash-linear-attention (carried wheels)

Random bf16 weights at the real shapes (docs/model.md section 6; configs built here, nothing downloaded):
one HF `Qwen3_5ForConditionalGeneration` (sdpa) is initialised on the GPU and our `model.Model` runs on the
same tensors. Cases, each timed for us and for HF in the same process:
  * prefill of 1024 and 8192 tokens (batch 1): time to first token of a text prompt (ours: Model.last_timings
    prefill_ms, which includes the prompt preparation; HF: one forward with logits_to_keep=1 and its cache);
  * decode tokens/s at batch 1, 8, 32 (128 at 0.8B) after a 1024-token prompt: tokens of all rows per second
    over the steps after the first token (ours: Model.last_timings; HF: generate(n) - generate(1));
  * time to first token of one 1024x1024 image + a 64-token prompt (vision tower + prefill).
Floors, from ceilings measured in the same run (benchmarks.common): decode = bytes of one step (every LM
weight but the embedding table, plus the KV cache read, the recurrent and conv states read and written) at the
copy rate; prefill = FLOPs of the GEMMs and the attention products at the cuBLAS bf16 rate; image TTFT = the
tower's GEMM + attention FLOPs plus the prefill's at that rate.
Also a per-op breakdown of one decode step (torch.profiler over an eager step, device time per op type).
JSON: benchmarks.common.write_results("lm_e2e", ...) under benchmarks/results/ (or --out).
"""

from __future__ import annotations

import argparse
import gc
import inspect
import json
import os
import subprocess
import sys
import time
import types
from contextlib import contextmanager
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import bf16_gemm_TFLOPs, copy_bandwidth_TBps, write_results  # noqa: E402

# real shapes (docs/model.md section 6); every size: head_dim 256, dk = dv = 128, nk = 16
SIZES = {
    "0.8B": dict(text=dict(hidden_size=1024, num_hidden_layers=24, num_attention_heads=8, num_key_value_heads=2,
                           intermediate_size=3584, linear_num_value_heads=16), tie=True,
                 vision=dict(depth=12, hidden_size=768, num_heads=12, intermediate_size=3072, out_hidden_size=1024)),
    "4B": dict(text=dict(hidden_size=2560, num_hidden_layers=32, num_attention_heads=16, num_key_value_heads=4,
                         intermediate_size=9216, linear_num_value_heads=32), tie=True,
               vision=dict(depth=24, hidden_size=1024, num_heads=16, intermediate_size=4096, out_hidden_size=2560)),
    "9B": dict(text=dict(hidden_size=4096, num_hidden_layers=32, num_attention_heads=16, num_key_value_heads=4,
                         intermediate_size=12288, linear_num_value_heads=32), tie=False,
               vision=dict(depth=27, hidden_size=1152, num_heads=16, intermediate_size=4304, out_hidden_size=4096)),
}
COMMON_TEXT = dict(vocab_size=248320, head_dim=256, linear_key_head_dim=128, linear_value_head_dim=128,
                   linear_num_key_heads=16, linear_conv_kernel_dim=4, rms_norm_eps=1e-6, max_position_embeddings=262144,
                   rope_parameters=dict(rope_type="default", rope_theta=1e7, partial_rotary_factor=0.25,
                                        mrope_interleaved=True, mrope_section=[11, 11, 10]))
IMAGE_TOKEN, VSTART, VEND = 248056, 248053, 248054
PROMPT = 1024
IMAGE_SIDE = 1024


def hf_config(size: str):
    from transformers import Qwen3_5Config

    s = SIZES[size]
    text = dict(COMMON_TEXT, **s["text"], tie_word_embeddings=s["tie"])
    return Qwen3_5Config(text_config=text, vision_config=dict(s["vision"], initializer_range=0.02),
                         tie_word_embeddings=s["tie"], image_token_id=IMAGE_TOKEN, vision_start_token_id=VSTART,
                         vision_end_token_id=VEND)


def build_hf(size: str):
    from transformers import Qwen3_5ForConditionalGeneration

    cfg = hf_config(size)
    with torch.device("cuda"):
        hf = Qwen3_5ForConditionalGeneration._from_config(cfg, dtype=torch.bfloat16, attn_implementation="sdpa")
    hf.eval()
    hf.generation_config.eos_token_id = None  # random weights: never stop early
    hf.generation_config.pad_token_id = 0
    return hf


def build_ours(hf, size: str, backend: str = "kernels"):
    import model as M
    from model.config import ModelConfig

    cfg = ModelConfig.from_dict(hf.config.to_dict() | {"model_type": "qwen3_5"})
    weights = dict(hf.state_dict())
    weights.setdefault("lm_head.weight", weights["model.language_model.embed_tokens.weight"])
    return M.Model(cfg, weights, backend=backend)


def sync():
    torch.cuda.synchronize()


def best(fn, reps: int) -> float:
    out = []
    for _ in range(reps):
        out.append(fn())
    return min(out)


def text_ids(B: int, S: int, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, 200_000, (B, S), generator=torch.Generator().manual_seed(seed))


def image_inputs():
    g = IMAGE_SIDE // 16  # patches per side
    n_tok = g * g // 4
    ids = torch.cat([text_ids(1, 32, 1), torch.tensor([[VSTART] + [IMAGE_TOKEN] * n_tok + [VEND]]),
                     text_ids(1, 32, 2)], dim=1)
    pv = torch.randn(g * g, 1536, generator=torch.Generator().manual_seed(3)).to("cuda", torch.bfloat16)
    return ids, pv, torch.tensor([[1, g, g]])


# ------------------------------------------------------------------------------------------------ floors

def lm_linear_params(t) -> int:
    """Weights of the decoder's GEMMs per token (no embedding, no lm_head)."""
    H, n = t.hidden_size, 0
    for kind in t.layer_types:
        if kind == "full_attention":
            n += H * t.num_attention_heads * t.head_dim * 2 + 2 * H * t.num_key_value_heads * t.head_dim
            n += t.num_attention_heads * t.head_dim * H
        else:
            nv, dv = t.linear_num_value_heads, t.linear_value_head_dim
            n += H * (t.linear_conv_dim + nv * dv + 2 * nv) + nv * dv * H
        n += 3 * H * t.intermediate_size
    return n


def decode_bytes(t, B: int, ctx: int) -> int:
    """One decode step: weights read once (lm_head included, the embedding table's B rows only), KV read,
    recurrent (fp32) and conv states read and written."""
    w = 2 * (lm_linear_params(t) + t.vocab_size * t.hidden_size)
    attn = sum(k == "full_attention" for k in t.layer_types)
    lin = len(t.layer_types) - attn
    kv = attn * B * ctx * t.num_key_value_heads * t.head_dim * 2 * 2
    rec = lin * B * t.linear_num_value_heads * t.linear_key_head_dim * t.linear_value_head_dim * 4 * 2
    conv = lin * B * t.linear_conv_dim * (t.linear_conv_kernel_dim - 1) * 2 * 2
    return w + kv + rec + conv


def prefill_flops(t, S: int) -> float:
    """GEMMs of S tokens (lm_head on the last token only) + causal attention products (QK^T and PV)."""
    attn = sum(k == "full_attention" for k in t.layer_types)
    return 2.0 * S * lm_linear_params(t) + 2.0 * t.vocab_size * t.hidden_size + \
        attn * 2.0 * S * S * t.num_attention_heads * t.head_dim  # 2 products x 2 flops x S^2/2 (causal)


def vision_flops(v, N: int) -> float:
    D, I = v.hidden_size, v.intermediate_size
    per_block = 2.0 * N * (3 * D * D + D * D + 2 * D * I) + 4.0 * N * N * D
    m = D * v.spatial_merge_size ** 2
    return 2.0 * N * 1536 * D + v.depth * per_block + 2.0 * (N // 4) * (m * m + m * v.out_hidden_size)


# ------------------------------------------------------------------------------------------------ ours

def ours_prefill(m, S: int, reps: int) -> dict:
    ids = text_ids(1, S)

    def once():
        m.generate_ids(ids, max_new_tokens=1, eos_token_ids=[])
        return m.last_timings["prefill_ms"]
    once()  # warm-up: kernel compiles, session allocation
    return dict(ms=best(once, reps))


def ours_decode(m, B: int, n: int, reps: int) -> dict:
    ids = text_ids(B, PROMPT)

    def once():
        m.generate_ids(ids, max_new_tokens=n, eos_token_ids=[])
        t = m.last_timings
        return -(B * (t["decode_tokens"] - 1) / t["decode_s"])
    m.generate_ids(ids, max_new_tokens=2, eos_token_ids=[])  # warm-up + graph capture for this bucket
    return dict(tokens_per_s=-best(once, reps), mode=m.last_decode_mode)


def ours_image(m, reps: int) -> dict:
    ids, pv, grid = image_inputs()

    def once():
        m.generate_ids(ids, pixel_values=pv, image_grid_thw=grid, max_new_tokens=1, eos_token_ids=[])
        return m.last_timings["ttft_ms"]
    once()
    ms = best(once, reps)
    return dict(ms=ms, vision_ms=m.last_timings["vision_ms"], prefill_ms=m.last_timings["prefill_ms"])


# ------------------------------------------------------------------------------------------------ HF

@torch.inference_mode()
def hf_prefill(hf, S: int, reps: int) -> dict:
    ids = text_ids(1, S).cuda()

    def once():
        sync()
        t0 = time.perf_counter()
        hf(input_ids=ids, logits_to_keep=1, use_cache=True)
        sync()
        return (time.perf_counter() - t0) * 1e3
    once()
    return dict(ms=best(once, reps))


@torch.inference_mode()
def hf_decode(hf, B: int, n: int, reps: int) -> dict:
    ids = text_ids(B, PROMPT).cuda()
    mask = torch.ones_like(ids)

    def gen(k):
        sync()
        t0 = time.perf_counter()
        hf.generate(input_ids=ids, attention_mask=mask, max_new_tokens=k, min_new_tokens=k, do_sample=False)
        sync()
        return time.perf_counter() - t0
    gen(2)
    t1 = best(lambda: gen(1), reps)
    tn = best(lambda: gen(n), reps)
    return dict(tokens_per_s=B * (n - 1) / max(tn - t1, 1e-9))


@torch.inference_mode()
def hf_image(hf, reps: int) -> dict:
    ids, pv, grid = image_inputs()
    ids = ids.cuda()
    mm = (ids == IMAGE_TOKEN).long()

    def once():
        sync()
        t0 = time.perf_counter()
        hf(input_ids=ids, pixel_values=pv, image_grid_thw=grid.cuda(), mm_token_type_ids=mm, logits_to_keep=1,
           use_cache=True)
        sync()
        return (time.perf_counter() - t0) * 1e3
    once()
    return dict(ms=best(once, reps))


# ------------------------------------------------------------------------------------------------ per-op profile

@contextmanager
def labelled_ops(lm):
    """Wrap every op of the LM's namespace and its GEMMs (F.linear) in torch.profiler ranges named by op."""
    import model.language as L
    from torch.profiler import record_function

    def wrap(name, fn):
        def inner(*a, **k):
            with record_function(name):
                return fn(*a, **k)
        try:  # keep model.language's kernel-hint filter (it reads the signature) working through the wrapper
            inner.__signature__ = inspect.signature(fn)
        except (TypeError, ValueError):
            pass
        return inner

    ops = lm.ops
    names = [n for n in dir(ops) if not n.startswith("_") and callable(getattr(ops, n))]
    lm.ops = types.SimpleNamespace(**{n: wrap("op:" + n, getattr(ops, n)) for n in names})
    real_F = L.F
    shim = types.SimpleNamespace(**{k: getattr(real_F, k) for k in dir(real_F) if not k.startswith("__")})
    shim.linear = wrap("op:gemm (F.linear)", real_F.linear)
    L.F = shim
    L._keywords.cache_clear()
    try:
        yield
    finally:
        lm.ops, L.F = ops, real_F
        L._keywords.cache_clear()


def profile_decode_step(m, B: int) -> dict:
    """Device time of one eager decode step by op type (sum over the step), and the step total."""
    from torch.profiler import ProfilerActivity, profile

    from model.generate import DecodeSession, Sampling

    sess = DecodeSession(m.lm, B, 2048, Sampling(), graphs=False)
    sess.cache.lengths.fill_(PROMPT)
    for _ in range(3):
        sess.advance()
    sync()
    with labelled_ops(m.lm):
        sess.advance()  # compile / warm the wrappers
        sync()
        with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
            sess.advance()
            sync()
    def dev_us(e):
        return float(getattr(e, "device_time_total", getattr(e, "cuda_time_total", 0.0)) or 0.0)

    rows, kernels, kernel_total = {}, {}, 0.0
    for e in prof.key_averages():
        if e.key.startswith("op:"):  # a range's device time: the kernels launched inside it
            rows[e.key[3:]] = round(dev_us(e), 1)
    for e in prof.events():  # device-side kernel events: the step's busy time, and the time per kernel name
        if getattr(e, "device_type", None) == torch.autograd.DeviceType.CUDA:
            us = dev_us(e)
            kernel_total += us
            kernels[e.name[:80]] = kernels.get(e.name[:80], 0.0) + us
    rows["other (embedding, glue, sampling, copies)"] = round(kernel_total - sum(rows.values()), 1)
    del sess
    top = dict(sorted(((k, round(v, 1)) for k, v in kernels.items()), key=lambda kv: -kv[1])[:20])
    return dict(batch=B, context=PROMPT, kernel_us_total=round(kernel_total, 1),
                by_op_us=dict(sorted(rows.items(), key=lambda kv: -kv[1])), by_kernel_us=top)


# ------------------------------------------------------------------------------------------------ driver

class Clock:
    def __init__(self, budget_s: float):
        self.t0, self.budget = time.perf_counter(), budget_s

    def left(self) -> float:
        return self.budget - (time.perf_counter() - self.t0)


def run_case(records, clock, rec: dict, fn, min_left: float = 5.0):
    if clock.left() < min_left:
        records.append(rec | dict(skipped="time budget"))
        print("skip", rec, flush=True)
        return
    t0 = time.perf_counter()
    try:
        rec = rec | fn()
    except Exception as e:  # keep the other cases
        rec = rec | dict(error=f"{type(e).__name__}: {str(e).splitlines()[0][:300] if str(e) else ''}")
        torch.cuda.synchronize()
    rec["wall_s"] = round(time.perf_counter() - t0, 2)
    records.append(rec)
    print(json.dumps(rec), flush=True)


def plan(quick: bool, size: str) -> dict:
    if quick:
        return dict(prefill=[1024], decode=[1, 8], n=16, image=False, reps=2, hf_decode=[1], hf_n=5, profile=[1])
    return dict(prefill=[1024, 8192], decode=[1, 8, 32] + ([128] if size == "0.8B" else []), n=32, image=True,
                reps=3, hf_decode=[1, 8, 32], hf_n=9, profile=[1, 32])


def run_size(size: str, args, clock, rates, peer: str, ours_too: bool = True) -> list[dict]:
    p = plan(args.quick, size)
    records = []
    hf = build_hf(size)
    t = None
    m = None
    if ours_too:
        m = build_ours(hf, size)
        t = m.config.text
        on_ref = [k for k, v in m.placement().items() if v == "reference"]
        print(f"{size}: ops on the reference: {on_ref}", flush=True)
        records.append(dict(size=size, case="placement", reference_ops=on_ref))
        slow = [n for n in ("attention", "causal_conv1d", "fused_gated_delta_rule") if n in on_ref]
        for B in p["decode"]:
            floor = B / (decode_bytes(t, B, PROMPT + p["n"] // 2) / (rates["copy_TBps"] * 1e12))
            run_case(records, clock, dict(size=size, impl="ours", case=f"decode_bs{B}",
                                          floor_tokens_per_s=round(floor, 1)),
                     lambda B=B: ours_decode(m, B, p["n"], p["reps"]))
        for S in p["prefill"]:
            floor = prefill_flops(t, S) / (rates["gemm_TFLOPs"] * 1e12) * 1e3
            rec = dict(size=size, impl="ours", case=f"prefill_{S}", floor_ms=round(floor, 3))
            if slow and S > 2048:  # the references loop over tokens: minutes at this length
                records.append(rec | dict(skipped=f"{', '.join(slow)} on the reference"))
                continue
            run_case(records, clock, rec, lambda S=S: ours_prefill(m, S, p["reps"]))
        if p["image"]:
            v = m.config.vision
            N = (IMAGE_SIDE // 16) ** 2
            S = 64 + 2 + N // 4
            floor = (vision_flops(v, N) + prefill_flops(t, S)) / (rates["gemm_TFLOPs"] * 1e12) * 1e3
            run_case(records, clock, dict(size=size, impl="ours", case="ttft_image1024_64tok",
                                          floor_ms=round(floor, 3)), lambda: ours_image(m, p["reps"]))
        for B in p["profile"]:
            run_case(records, clock, dict(size=size, impl="ours", case=f"decode_step_profile_bs{B}"),
                     lambda B=B: profile_decode_step(m, B))
        m._sessions.clear()
    if not args.no_hf:
        for S in p["prefill"]:
            run_case(records, clock, dict(size=size, impl=peer, case=f"prefill_{S}"),
                     lambda S=S: hf_prefill(hf, S, min(2, p["reps"])))
        for B in p["hf_decode"]:
            run_case(records, clock, dict(size=size, impl=peer, case=f"decode_bs{B}"),
                     lambda B=B: hf_decode(hf, B, p["hf_n"], 1))
        if p["image"]:
            run_case(records, clock, dict(size=size, impl=peer, case="ttft_image1024_64tok"),
                     lambda: hf_image(hf, 2))
    del hf, m
    gc.collect()
    torch.cuda.empty_cache()
    return records


def fla_available() -> bool:
    """flash-linear-attention importable here (HF then takes its DeltaNet kernels instead of the torch fallback)."""
    import importlib.util

    return importlib.util.find_spec("fla") is not None


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="0.8B only, a few cases (< 60 s)")
    ap.add_argument("--sizes", default=None, help="comma list of 0.8B,4B,9B (default: all; --quick: 0.8B)")
    ap.add_argument("--no-hf", action="store_true", help="skip the HF peer")
    ap.add_argument("--fla-site", default=None, help="a --target dir holding flash-linear-attention: also time HF "
                    "with it, in a subprocess")
    ap.add_argument("--peer-only", action="store_true", help=argparse.SUPPRESS)  # the FLA subprocess
    ap.add_argument("--budget-s", type=float, default=None, help="skip cases once this much time has passed")
    ap.add_argument("--out", default=None, help="results directory (default benchmarks/results)")
    ap.add_argument("--plot", default=None, metavar="PNG", help="also plot decode tokens/s against batch size")
    args = ap.parse_args(argv)
    sizes = args.sizes.split(",") if args.sizes else (["0.8B"] if args.quick else list(SIZES))
    total = args.budget_s if args.budget_s else (55 if args.quick else 400)
    # with the FLA peer, 70 % of the time for ours + HF, the rest for the subprocess (HF cases only)
    clock = Clock(total * (0.7 if args.fla_site else 1.0))
    rates = dict(copy_TBps=copy_bandwidth_TBps(), gemm_TFLOPs=bf16_gemm_TFLOPs())
    peer = "hf_sdpa_fla" if fla_available() else "hf_sdpa"
    print(f"card {torch.cuda.get_device_name()}: copy {rates['copy_TBps']:.2f} TB/s, bf16 GEMM "
          f"{rates['gemm_TFLOPs']:.0f} TFLOP/s; HF peer {peer}", flush=True)
    records = []
    for size in sizes:
        records += run_size(size, args, clock, rates, peer, ours_too=not args.peer_only)
    if args.peer_only:
        print("RECORDS " + json.dumps(records), flush=True)
        return 0
    if args.fla_site:
        env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(Path(__file__).resolve().parents[1]), args.fla_site]))
        cmd = [sys.executable, __file__, "--peer-only", "--sizes", ",".join(sizes),
               "--budget-s", str(max(total - (time.perf_counter() - clock.t0), 10))]
        cmd += ["--quick"] if args.quick else []
        out = subprocess.run(cmd, env=env, capture_output=True, text=True)
        sys.stdout.write(out.stdout[-4000:])
        sys.stderr.write(out.stderr[-2000:])
        for line in out.stdout.splitlines():
            if line.startswith("RECORDS "):
                records += json.loads(line[len("RECORDS "):])
    path = write_results("lm_e2e", records, extra=dict(mode="quick" if args.quick else "full", **rates,
                                                       hf_peer=peer), out_dir=args.out)
    print(f"wrote {path}")
    summary(records)
    if args.plot:
        try:
            plot(records, args.plot)
        except Exception as e:  # the JSON is written already
            print(f"plot failed: {type(e).__name__}: {e}")
    return 0


def plot(records, path):
    """Decode tokens/s against batch size, one panel per size: ours, the HF peers and the floor (log-log)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sizes = [s for s in SIZES if any(r.get("size") == s for r in records)]
    fig, axes = plt.subplots(1, len(sizes), figsize=(4.5 * len(sizes), 4), squeeze=False)
    for ax, size in zip(axes[0], sizes):
        rs = [r for r in records if r.get("size") == size and r.get("case", "").startswith("decode_bs")
              and "tokens_per_s" in r]
        for impl, style, label in (("ours", "s-", "qwen35-kernels (graph decode)"), ("hf_sdpa", "o-", "HF (sdpa)"),
                                   ("hf_sdpa_fla", "^-", "HF (sdpa + flash-linear-attention)")):
            pts = sorted((int(r["case"][9:]), r["tokens_per_s"]) for r in rs if r["impl"] == impl)
            if pts:
                ax.plot(*zip(*pts), style, label=label)
        floor = sorted((int(r["case"][9:]), r["floor_tokens_per_s"]) for r in rs if "floor_tokens_per_s" in r)
        if floor:
            ax.plot(*zip(*floor), "k--", label="floor: weight + state + KV bytes at the copy rate")
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("batch (rows), after a 1024-token prompt")
        ax.set_ylabel("decode tokens/s (all rows)")
        ax.set_title(f"Qwen3.5 {size} shapes, bf16, {torch.cuda.get_device_name()}", fontsize=9)
        ax.legend(fontsize=7)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    print(f"wrote {path}")


def summary(records):
    """One line per case: ours, the HF peers and the floor."""
    by = {}
    for r in records:
        if "impl" in r and "case" in r and not r["case"].startswith("decode_step_profile"):
            by.setdefault((r["size"], r["case"]), {})[r["impl"]] = r
    for (size, case), impls in by.items():
        cells = []
        for impl, r in impls.items():
            val = r.get("tokens_per_s", r.get("ms"))
            unit = "tok/s" if "tokens_per_s" in r else "ms"
            why = r.get("error", r.get("skipped"))
            cells.append(f"{impl} {val:.1f} {unit}" if isinstance(val, float) else f"{impl} {why}")
            for fk in ("floor_ms", "floor_tokens_per_s"):
                if fk in r:
                    cells.append(f"floor {r[fk]}")
        print(f"{size:5s} {case:24s} " + " | ".join(cells))


if __name__ == "__main__":
    sys.exit(main())
