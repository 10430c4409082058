"""The language model end to end on one GPU: ours (kernels backend) beside Hugging Face transformers, with floors.

    python3 tools/lm_e2e_gpu.py --quick                          # < 60 s: 0.8B, prefill 1024, decode batch 1 and 8
    python3 tools/lm_e2e_gpu.py --models 0.8B --cases decode     # one piece (each piece < 70 s on an H200)
    python3 tools/lm_e2e_gpu.py --fla-site /tmp/site --budget-s 480 --plot benchmarks/results/lm_e2e.png
                                                                 # everything, HF+FLA beside, within 480 s

Random bf16 weights at the real shapes (docs/model.md section 6; configs built here, nothing downloaded):
one HF `Qwen3_5ForConditionalGeneration` (sdpa) is initialised on the GPU and our `model.Model` runs on the
same tensors (the HF cases run first; the HF module is dropped before ours run, so a size needs the memory of
one copy plus our fused weights). Cases (--cases), each timed for us and for the peers (--peers) in one run:
  * prefill: 1024 and 8192 tokens (batch 1): time to first token of a text prompt (ours: Model.last_timings
    prefill_ms, which includes the prompt preparation, replayed from the CUDA graph of its token bucket up to
    model.prefill_graph.MAX_TOKENS, beside eager_ms without the graphs and first_ms, the call that captured the
    bucket's graph; HF: one forward with logits_to_keep=1 and its cache);
  * decode: tokens/s at batch 1, 8, 32 and 128 (--batches) after a 1024-token prompt: tokens of all rows per
    second over the steps after the first token (ours: Model.last_timings, CUDA-graph replay; HF: one
    generate(n), timed by a logits processor that stamps every step);
  * image: time to first token of one 1024x1024 image + a 64-token prompt (vision tower + prefill);
  * profile: the per-op breakdown of one decode step at batch 1 and 32 (tools/lm_decode_profile.py).
Peers: hf (sdpa, without flash-linear-attention: its torch DeltaNet) in this process; fla (HF with
flash-linear-attention, --fla-site: a --target dir of the carried wheels) in a subprocess after ours.
Floors, from ceilings measured in the same run (benchmarks.common): decode = bytes of one step (every LM
weight but the embedding table, plus the KV cache read, the recurrent and conv states read and written) at the
copy rate; prefill = FLOPs of the GEMMs and the attention products at the cuBLAS bf16 rate; image TTFT = the
tower's GEMM + attention FLOPs plus the prefill's at that rate.
--budget-s: cases are run in priority order (ours before the peers, the headline cases first) and skipped,
with a "skipped" record, once the budget would be passed (each case's expected time is estimated from its size).
JSON: benchmarks.common.write_results("lm_e2e", ...) under benchmarks/results/ (or --out); --plot: decode
tokens/s against batch size for us, the peers and the floor.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import subprocess
import sys
import time
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
    "27B": dict(text=dict(hidden_size=5120, num_hidden_layers=64, num_attention_heads=24, num_key_value_heads=4,
                          intermediate_size=17408, linear_num_value_heads=48), tie=False,
                vision=dict(depth=27, hidden_size=1152, num_heads=16, intermediate_size=4304, out_hidden_size=5120)),
}
DEFAULT_MODELS = ("0.8B", "4B", "9B")  # 27B on request (--models ...,27B): ~55 GB of weights, minutes of HF
CASES = ("decode", "prefill", "image", "profile")
BATCHES = (1, 8, 32, 128)
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
    """ms: the prefill as Model runs it (a prompt of up to model.prefill_graph.MAX_TOKENS replays a CUDA graph
    of its token bucket); first_ms: the first prompt of that bucket (an eager pass on the padded buffers, then the
    capture); eager_ms: with the prefill graphs off."""
    ids = text_ids(1, S)

    def once():
        m.generate_ids(ids, max_new_tokens=1, eos_token_ids=[])
        return m.last_timings["prefill_ms"]
    return with_and_without_graphs(m, once, reps)


def with_and_without_graphs(m, once, reps: int) -> dict:
    graphs = m.prefill_graphs
    m.prefill_graphs = None
    once()  # warm-up: kernel compiles, session allocation
    eager = best(once, reps)
    if graphs is None:
        return dict(ms=eager, eager_ms=eager)
    m.prefill_graphs = graphs
    first = once()
    return dict(ms=best(once, reps), first_ms=first, eager_ms=eager)


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
    r = with_and_without_graphs(m, once, reps)  # ms, first_ms, eager_ms: as in ours_prefill, of the TTFT
    return r | dict(vision_ms=m.last_timings["vision_ms"], prefill_ms=m.last_timings["prefill_ms"])


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
def hf_decode(hf, B: int, n: int, reps: int = 1) -> dict:
    """One generate(n) call; a logits processor stamps the time after every forward (synchronised), so the
    decode rate comes from the stamps after the prefill (the first two decode steps dropped as warm-up)."""
    from transformers import LogitsProcessor, LogitsProcessorList

    class Stamp(LogitsProcessor):
        def __init__(self):
            self.t = []

        def __call__(self, input_ids, scores):
            sync()
            self.t.append(time.perf_counter())
            return scores

    ids = text_ids(B, PROMPT).cuda()
    mask = torch.ones_like(ids)
    best_rate = 0.0
    for _ in range(reps):
        stamp = Stamp()
        hf.generate(input_ids=ids, attention_mask=mask, max_new_tokens=n, min_new_tokens=n, do_sample=False,
                    logits_processor=LogitsProcessorList([stamp]))
        t = stamp.t[2:] if len(stamp.t) >= 6 else stamp.t
        best_rate = max(best_rate, B * (len(t) - 1) / max(t[-1] - t[0], 1e-9))
    return dict(tokens_per_s=best_rate)


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

def profile_decode_step(m, B: int) -> dict:
    """tools/lm_decode_profile.profile_step on our model: kernels per step, device time by op and by kernel."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from lm_decode_profile import profile_step

    r = profile_step(m.lm, B, PROMPT, PROMPT + 64)
    r["by_kernel"] = dict(list(r["by_kernel"].items())[:15])
    return r


# ------------------------------------------------------------------------------------------------ driver

class Clock:
    def __init__(self, budget_s: float):
        self.t0, self.budget = time.perf_counter(), budget_s

    def left(self) -> float:
        return self.budget - (time.perf_counter() - self.t0)


PARAMS_B = {"0.8B": 0.8, "4B": 4.5, "9B": 9.5, "27B": 27.0}  # billions of weights (the time estimates' scale)


def estimate_s(size: str, impl: str, case: str, n: int = 32) -> float:
    """A generous guess of a case's wall time on an H200 (the budget skips a case that would not fit)."""
    P = PARAMS_B[size]
    prefill_s = lambda tokens, slow: slow * 2 * tokens * 2 * P * 1e9 / 4e14 + 0.3  # noqa: E731
    hf = impl != "ours"
    if case.startswith("decode_bs"):
        B = int(case[9:])
        step = (3 if hf else 1) * (0.02 + 2 * P / 2.5e3) + B * 1e-4
        return 2 + prefill_s(B * PROMPT, 4 if hf else 1.5) + (n + 8) * step * (1 if hf else 2)
    if case.startswith("prefill_"):
        return 1 + 3 * prefill_s(int(case[8:]), 6 if hf else 1.5)
    if case.startswith("ttft_image"):
        return 3 + 3 * prefill_s(1100, 6 if hf else 2)
    if case.startswith("decode_step_profile"):
        return 3 + 0.2 * P
    return 5.0


def run_case(records, clock, rec: dict, fn, est: float = 5.0):
    if clock.left() < est:
        records.append(rec | dict(skipped=f"time budget ({clock.left():.0f} s left, ~{est:.0f} s needed)"))
        print("skip", json.dumps(records[-1]), flush=True)
        return
    t0 = time.perf_counter()
    try:
        rec = rec | fn()
    except Exception as e:  # keep the other cases
        rec = rec | dict(error=f"{type(e).__name__}: {str(e).splitlines()[0][:300] if str(e) else ''}")
        torch.cuda.synchronize()
    rec["wall_s"] = round(time.perf_counter() - t0, 2)
    records.append(rec)
    print(json.dumps(rec)[:600], flush=True)


def plan(args, size: str) -> dict:
    if args.quick:
        p = dict(prefill=[1024], decode=[1, 8], n=16, image=False, reps=2, hf_decode=[1], hf_n=5, profile=[1])
    else:
        p = dict(prefill=[1024, 8192], decode=list(BATCHES), n=32, image=True, reps=2, hf_decode=list(BATCHES),
                 hf_n=9, profile=[1, 32])
    cases = set(args.cases.split(",")) if args.cases else set(CASES)
    if args.batches:
        p["decode"] = p["hf_decode"] = [int(b) for b in args.batches.split(",")]
    for c, key in (("decode", "decode"), ("decode", "hf_decode"), ("prefill", "prefill"), ("profile", "profile")):
        if c not in cases:
            p[key] = []
    p["image"] = p["image"] and "image" in cases
    return p


def ours_cases(m, size, p, clock, rates, records):
    t = m.config.text
    on_ref = [k for k, v in m.placement().items() if v == "reference"]
    print(f"{size}: ops on the reference: {on_ref}", flush=True)
    records.append(dict(size=size, case="placement", reference_ops=on_ref))
    slow = [n for n in ("attention", "causal_conv1d", "fused_gated_delta_rule") if n in on_ref]
    for B in p["decode"]:
        floor = B / (decode_bytes(t, B, PROMPT + p["n"] // 2) / (rates["copy_TBps"] * 1e12))
        case = f"decode_bs{B}"
        run_case(records, clock, dict(size=size, impl="ours", case=case, floor_tokens_per_s=round(floor, 1)),
                 lambda B=B: ours_decode(m, B, p["n"], 1 if B >= 32 else p["reps"]), estimate_s(size, "ours", case))
        m._sessions.clear()  # the static caches of a large batch are not kept
    for S in p["prefill"]:
        floor = prefill_flops(t, S) / (rates["gemm_TFLOPs"] * 1e12) * 1e3
        rec = dict(size=size, impl="ours", case=f"prefill_{S}", floor_ms=round(floor, 3))
        if slow and S > 2048:  # the references loop over tokens: minutes at this length
            records.append(rec | dict(skipped=f"{', '.join(slow)} on the reference"))
            continue
        run_case(records, clock, rec, lambda S=S: ours_prefill(m, S, p["reps"]), estimate_s(size, "ours", rec["case"]))
    if p["image"]:
        v = m.config.vision
        N = (IMAGE_SIDE // 16) ** 2
        S = 64 + 2 + N // 4
        floor = (vision_flops(v, N) + prefill_flops(t, S)) / (rates["gemm_TFLOPs"] * 1e12) * 1e3
        run_case(records, clock, dict(size=size, impl="ours", case="ttft_image1024_64tok", floor_ms=round(floor, 3)),
                 lambda: ours_image(m, p["reps"]), estimate_s(size, "ours", "ttft_image"))
    for B in p["profile"]:
        case = f"decode_step_profile_bs{B}"
        run_case(records, clock, dict(size=size, impl="ours", case=case),
                 lambda B=B: profile_decode_step(m, B), estimate_s(size, "ours", case))
    m._sessions.clear()


def hf_cases(hf, size, p, clock, peer, records):
    for S in p["prefill"]:
        case = f"prefill_{S}"
        run_case(records, clock, dict(size=size, impl=peer, case=case),
                 lambda S=S: hf_prefill(hf, S, min(2, p["reps"])), estimate_s(size, peer, case))
    for B in p["hf_decode"]:
        case = f"decode_bs{B}"
        run_case(records, clock, dict(size=size, impl=peer, case=case),
                 lambda B=B: hf_decode(hf, B, p["hf_n"], 1), estimate_s(size, peer, case, p["hf_n"]))
        torch.cuda.empty_cache()
    if p["image"]:
        run_case(records, clock, dict(size=size, impl=peer, case="ttft_image1024_64tok"),
                 lambda: hf_image(hf, 2), estimate_s(size, peer, "ttft_image"))


def run_size(size: str, args, clock, rates, peer: str, ours_too: bool = True, hf_too: bool = True) -> list[dict]:
    """The cases of one size. Ours first, then HF on the same weights; at 27B the HF cases run first and the HF
    module is dropped before ours are built (one copy of the weights plus our fused ones at a time)."""
    p = plan(args, size)
    records = []
    build_s = 2 + 0.6 * PARAMS_B[size]
    if clock.left() < build_s + 5:
        records.append(dict(size=size, case="all", skipped=f"time budget ({clock.left():.0f} s left)"))
        print("skip", json.dumps(records[-1]), flush=True)
        return records
    t0 = time.perf_counter()
    hf = build_hf(size)
    print(f"{size}: HF model built in {time.perf_counter() - t0:.1f} s", flush=True)
    hf_first = size == "27B"
    if hf_too and hf_first:
        hf_cases(hf, size, p, clock, peer, records)
    m = None
    if ours_too:
        t0 = time.perf_counter()
        m = build_ours(hf, size)
        print(f"{size}: ours built in {time.perf_counter() - t0:.1f} s", flush=True)
        if hf_first:
            del hf
            hf = None
            gc.collect()
            torch.cuda.empty_cache()
        ours_cases(m, size, p, clock, rates, records)
    if hf_too and not hf_first:
        del m
        m = None
        gc.collect()
        torch.cuda.empty_cache()
        hf_cases(hf, size, p, clock, peer, records)
    del hf, m
    gc.collect()
    torch.cuda.empty_cache()
    return records


def fla_available() -> bool:
    """flash-linear-attention importable here (HF then takes its DeltaNet kernels instead of the torch fallback)."""
    import importlib.util

    try:
        return importlib.util.find_spec("fla") is not None
    except ModuleNotFoundError:  # blocked by block_fla
        return False


class _BlockFla:
    """A meta-path finder that makes `import fla` fail, so that HF's DeltaNet takes its torch path (the plain HF
    peer) even where flash-linear-attention is installed (it is tried once, when transformers' Qwen3.5 module is
    imported)."""

    def find_spec(self, name, path=None, target=None):
        if name == "fla" or name.startswith("fla."):
            raise ModuleNotFoundError(f"{name} blocked for the plain HF peer", name=name)
        return None


def block_fla() -> None:
    if "transformers.models.qwen3_5.modeling_qwen3_5" in sys.modules:
        raise RuntimeError("block_fla must run before transformers' Qwen3.5 model is imported")
    sys.meta_path.insert(0, _BlockFla())


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="0.8B only, a few cases (< 60 s)")
    ap.add_argument("--models", "--sizes", dest="models", default=None,
                    help=f"comma list of {','.join(SIZES)} (default {','.join(DEFAULT_MODELS)}; --quick: 0.8B)")
    ap.add_argument("--cases", default=None, help=f"comma list of {','.join(CASES)} (default all)")
    ap.add_argument("--batches", default=None, help=f"decode batch sizes (default {','.join(map(str, BATCHES))})")
    ap.add_argument("--peers", default=None, help="comma list of ours,hf,fla (default ours,hf, and fla where "
                    "flash-linear-attention is importable or --fla-site is given)")
    ap.add_argument("--no-hf", action="store_true", help="skip the HF peers (= --peers ours)")
    ap.add_argument("--fla-site", default=None, help="a --target dir holding flash-linear-attention (if it is not "
                    "importable already): the fla peer, HF with it, in a subprocess")
    ap.add_argument("--peer-only", action="store_true", help=argparse.SUPPRESS)  # the FLA subprocess
    ap.add_argument("--budget-s", type=float, default=None,
                    help="wall-clock budget of the whole run: cases that would pass it are skipped (default 55 "
                         "with --quick, else 450)")
    ap.add_argument("--out", default=None, help="results directory (default benchmarks/results)")
    ap.add_argument("--plot", default=None, metavar="PNG", help="also plot decode tokens/s against batch size")
    args = ap.parse_args(argv)
    t_start = time.perf_counter()
    sizes = args.models.split(",") if args.models else (["0.8B"] if args.quick else list(DEFAULT_MODELS))
    bad = [s for s in sizes if s not in SIZES]
    if bad:
        ap.error(f"unknown model size(s) {bad}; choose from {list(SIZES)}")
    if args.cases and set(args.cases.split(",")) - set(CASES):
        ap.error(f"unknown case(s) in {args.cases!r}; choose from {list(CASES)}")
    peers = set((args.peers or ("ours" if args.no_hf else "ours,hf")).split(","))
    have_fla = fla_available()
    if (args.fla_site or have_fla) and args.peers is None and not args.no_hf:
        peers.add("fla")
    if "fla" in peers and not (args.fla_site or have_fla) and not args.peer_only:
        ap.error("--peers fla needs flash-linear-attention importable, or --fla-site DIR where it is installed")
    if args.peer_only and not have_fla:
        print("flash-linear-attention is not importable here: no fla peer")
        print("RECORDS []", flush=True)
        return 0
    if not args.peer_only:
        block_fla()  # the in-process HF peer is plain HF (sdpa + its torch DeltaNet); fla runs in a subprocess
    total = args.budget_s if args.budget_s else (55 if args.quick else 450)
    fla_share = 0.25 if ("fla" in peers and not args.peer_only) else 0.0
    clock = Clock(total * (1 - fla_share) - 8)  # 8 s: the ceilings below, the JSON and the plot
    rates = dict(copy_TBps=copy_bandwidth_TBps(), gemm_TFLOPs=bf16_gemm_TFLOPs())
    peer = "hf_sdpa_fla" if fla_available() else "hf_sdpa"
    print(f"card {torch.cuda.get_device_name()}: copy {rates['copy_TBps']:.2f} TB/s, bf16 GEMM "
          f"{rates['gemm_TFLOPs']:.0f} TFLOP/s; HF peer here {peer}; peers {sorted(peers)}", flush=True)
    records = []
    for size in sizes:
        records += run_size(size, args, clock, rates, peer, ours_too="ours" in peers and not args.peer_only,
                            hf_too="hf" in peers or args.peer_only)
    if args.peer_only:
        print("RECORDS " + json.dumps(records), flush=True)
        return 0
    if "fla" in peers:
        left = max(total - (time.perf_counter() - t_start) - 5, 10)
        paths = [str(Path(__file__).resolve().parents[1])] + ([args.fla_site] if args.fla_site else [])
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(paths + [os.environ.get("PYTHONPATH", "")]))
        cmd = [sys.executable, __file__, "--peer-only", "--models", ",".join(sizes), "--budget-s", str(left)]
        for flag, val in (("--cases", args.cases), ("--batches", args.batches)):
            if val:
                cmd += [flag, val]
        cmd += ["--quick"] if args.quick else []
        try:
            out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=left + 30)
            sys.stdout.write(out.stdout[-4000:])
            sys.stderr.write(out.stderr[-2000:])
            for line in out.stdout.splitlines():
                if line.startswith("RECORDS "):
                    records += json.loads(line[len("RECORDS "):])
        except subprocess.TimeoutExpired:
            print("the FLA peer ran past its budget: no FLA records")
    from kernels.runtime import launch as KL

    pdl = dict(pdl=KL.PDL, pdl_off=sorted(KL.PDL_OFF))  # programmatic launches: on, and the sources kept plain
    path = write_results("lm_e2e", records, extra=dict(mode="quick" if args.quick else "full", **rates, **pdl,
                                                       hf_peer=peer, models=sizes, wall_s=round(
                                                           time.perf_counter() - t_start, 1)), out_dir=args.out)
    print(f"wrote {path}")
    summary(records)
    if args.plot:
        try:
            plot(records, args.plot)
        except Exception as e:  # the JSON is written already
            print(f"plot failed: {type(e).__name__}: {e}")
    print(f"total {time.perf_counter() - t_start:.1f} s")
    return 0


def plot(records, path):
    """Decode tokens/s against batch size, one panel per size: ours, the HF peers and the floor (log-log).
    Without matplotlib: a plain SVG next to `path` (same name, .svg)."""
    try:
        import matplotlib
    except ModuleNotFoundError:
        return plot_svg(records, str(Path(path).with_suffix(".svg")))

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


SERIES = (("ours", "#1f77b4", "qwen35-kernels (graph decode)"), ("hf_sdpa", "#ff7f0e", "HF (sdpa)"),
          ("hf_sdpa_fla", "#2ca02c", "HF (sdpa + flash-linear-attention)"), ("floor", "#000000", "floor"))


def plot_svg(records, path):
    """The plot() figure as a hand-written SVG (log-log axes, one panel per size)."""
    import math

    sizes = [s for s in SIZES if any(r.get("size") == s and "tokens_per_s" in r for r in records)]
    W, H, m = 330, 260, 45
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{W * len(sizes)}" height="{H + 70}" '
           'font-family="sans-serif" font-size="10">']
    for n, size in enumerate(sizes):
        rs = [r for r in records if r.get("size") == size and r.get("case", "").startswith("decode_bs")]
        series = {impl: sorted((int(r["case"][9:]), r["tokens_per_s"]) for r in rs
                               if r.get("impl") == impl and "tokens_per_s" in r) for impl, _, _ in SERIES[:3]}
        series["floor"] = sorted({(int(r["case"][9:]), r["floor_tokens_per_s"]) for r in rs
                                  if "floor_tokens_per_s" in r})
        pts = [p for v in series.values() for p in v]
        if not pts:
            continue
        bmax = max(b for b, _ in pts)
        lo, hi = math.log10(min(y for _, y in pts)) - 0.1, math.log10(max(y for _, y in pts)) + 0.1
        X = lambda b: n * W + m + (W - 1.5 * m) * math.log2(b) / max(math.log2(bmax), 1)  # noqa: E731
        Y = lambda y: 20 + (H - m) * (hi - math.log10(y)) / (hi - lo)  # noqa: E731
        out.append(f'<text x="{n * W + m}" y="12">Qwen3.5 {size} shapes, bf16 (tokens/s vs batch, log-log)</text>')
        out.append(f'<rect x="{n * W + m}" y="20" width="{W - 1.5 * m}" height="{H - m}" fill="none" stroke="#888"/>')
        for e in range(math.ceil(lo), math.floor(hi) + 1):
            out.append(f'<text x="{n * W + 2}" y="{Y(10 ** e) + 3:.1f}">1e{e}</text>')
        for b in sorted({b for b, _ in pts}):
            out.append(f'<text x="{X(b) - 4:.1f}" y="{H - m + 34}">{b}</text>')
        for impl, color, label in SERIES:
            v = series.get(impl) or []
            if v:
                dash = ' stroke-dasharray="4,3"' if impl == "floor" else ""
                out.append(f'<polyline fill="none" stroke="{color}"{dash} points="'
                           + " ".join(f"{X(b):.1f},{Y(y):.1f}" for b, y in v) + '"/>')
    for i, (_, color, label) in enumerate(SERIES):
        out.append(f'<rect x="{10 + 200 * i}" y="{H + 45}" width="12" height="3" fill="{color}"/>'
                   f'<text x="{26 + 200 * i}" y="{H + 50}">{label}</text>')
    out.append("</svg>")
    Path(path).write_text("\n".join(out))
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
