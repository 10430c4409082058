"""One-call GPU script for the moe family: correctness of every moe_mlp path at the real widths, then one MoE layer
timed at the 35B-A3B / 122B-A10B / 397B-A17B shapes beside HF's block and the floors.

    python3 tools/moe_gpu.py --check                         # every path vs reference.moe_mlp, real widths
    python3 tools/moe_gpu.py --bench [--sizes 35B-A3B] [--tokens 1,8,64,1024,8192] [--no-hf] [--out DIR]
    python3 tools/moe_gpu.py --model-decode [--batch 1,32] [--layers 40] [--context 1024] [--timeline] [--out DIR]
    python3 tools/moe_gpu.py --mma-ab --sizes 35B-A3B --tokens 1,8 [--reps 3] [--timeline] [--out DIR]  # builds

--model-decode: the 35B-A3B language model (random bf16 weights at the real shapes, all 40 layers, made on the GPU;
no HF model) on the kernels backend; one decode step per token from model.generate.DecodeSession's CUDA graph,
cache lengths at --context; tokens/s at each batch beside the floor (weights read per step at the copy rate: every
non-expert weight + the distinct experts the step's routing touched, counted in one eager step; the uniform-routing
expectation E (1 - (1 - k/E)^B) a layer beside it). Each row starts from its own random token.

Timed (bf16, random weights at the real shapes, all E experts; routing from our router top-k on random logits):
  routed    moe_mlp alone (weights/experts given), graph-replayed
  layer     the whole MoE layer: router GEMM + moe_topk + moe_mlp + the sigmoid-gated shared expert (cuBLAS GEMMs
            and our silu_mul), graph-replayed
  hf        transformers' Qwen3_5MoeSparseMoeBlock (eager experts loop: it reads the routing on the host, so it
            cannot be captured), CUDA-event timed
  gmm       torch._grouped_mm of the gate/up projection alone on pre-grouped rows (the GEMM the issue quotes)
Floors, from ceilings measured in the same run (benchmarks.common): bandwidth = bytes of the distinct routed
experts (+ router and shared expert for the layer) at the copy rate; compute = FLOPs at the cuBLAS bf16 rate.
Results JSON: benchmarks/results/moe-<card>-<date>.json (and a copy under --out).
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import reference as ref  # noqa: E402
from benchmarks.common import (bf16_gemm_TFLOPs, copy_bandwidth_TBps, cuda_time_ms, graph_ms,  # noqa: E402
                               write_results)
from kernels import moe  # noqa: E402
from kernels.registry import REGISTRY  # noqa: E402
from property_tests.cases.moe import MOE_SIZES, route  # noqa: E402


def gpu_case(T, H, I, E, k, dtype, seed=0, mode="random", shared=None):
    """build_moe_mlp's inputs drawn on the GPU (the real widths' weights are slow to draw on the host)."""
    g = torch.Generator(device="cuda").manual_seed(seed)
    x = torch.randn(T, H, device="cuda", generator=g).to(dtype)
    gate_up = (torch.randn(E, 2 * I, H, device="cuda", generator=g) * H ** -0.5).to(dtype)
    down = (torch.randn(E, H, I, device="cuda", generator=g) * I ** -0.5).to(dtype)
    w, e = route(torch.Generator().manual_seed(seed), T, E, k, mode)
    kw = {}
    if shared:
        S = shared
        kw = dict(shared_gate=(torch.randn(S, H, device="cuda", generator=g) * H ** -0.5).to(dtype),
                  shared_up=(torch.randn(S, H, device="cuda", generator=g) * H ** -0.5).to(dtype),
                  shared_down=(torch.randn(H, S, device="cuda", generator=g) * S ** -0.5).to(dtype),
                  shared_expert_gate=(torch.randn(1, H, device="cuda", generator=g) * H ** -0.5).to(dtype))
    return (x, gate_up, down, w.cuda(), e.cuda()), kw


def check() -> int:
    """Every path at the real widths (32 experts), bf16 and fp32, against the reference; returns failures."""
    tol = REGISTRY["moe_mlp"].tol
    bad = 0
    # router top-k at the real expert counts
    from property_tests.cases.moe import build_moe_router_topk

    for size, s in MOE_SIZES.items():  # the fused router on exact data (any summation order gives equal logits)
        for T in (1, 8, 64):
            args = build_moe_router_topk(T, s["hidden"], s["experts"], s["topk"], torch.bfloat16, seed=T).on("cuda")
            try:
                w, e = moe.moe_router_topk(*args)
                rw, re_ = ref.moe_router_topk(*args)
                ok = torch.equal(e, re_) and torch.allclose(w, rw, atol=1e-5, rtol=0)
                msg = f"max |dw| {float((w - rw).abs().max()):.1e}"
            except Exception as ex:
                ok, msg = False, f"{type(ex).__name__}: {str(ex)[:200]}"
            bad += not ok
            print(f"check router_topk {size} T={T} {'ok' if ok else 'BAD'} {msg}", flush=True)
    for size, s in MOE_SIZES.items():
        logits = torch.randn(1000, s["experts"], device="cuda").bfloat16()
        w, e = moe.moe_topk(logits, s["topk"])
        rw, re_ = ref.moe_topk(logits, s["topk"])
        ok = torch.equal(e, re_) and torch.allclose(w, rw, atol=1e-5, rtol=0)
        bad += not ok
        print(f"check topk {size} {'ok' if ok else 'BAD'} max |dw| {float((w - rw).abs().max()):.1e}", flush=True)
    for dtype in (torch.bfloat16, torch.float32):  # bf16 first: the fp32 build compiles only after
        for size, s in MOE_SIZES.items():
            for T in (1, 8, 300):
                if dtype == torch.float32 and (T > 8 or size != "35B-A3B"):  # fp32: the fallback, one size
                    continue
                args, kw = gpu_case(T, s["hidden"], s["inter"], 32, s["topk"], dtype, seed=T, shared=s["shared"])
                want = ref.moe_mlp(*args, **kw)
                paths = ["routed"] + (["decode"] if T * s["topk"] <= moe.DECODE_MAX_SLOTS else []) + \
                    (["grouped"] if moe.grouped_ok(*args[:3]) else [])
                runs = [(p, True) for p in paths] + ([("decode", False)] if "decode" in paths else [])
                for path, pdl in runs:
                    t0 = time.perf_counter()
                    moe.PDL = pdl
                    try:
                        got = moe.moe_mlp(*args, **kw, path=path)
                        torch.cuda.synchronize()
                        rel, mx = tol[dtype].errors(got, want)
                        ok = rel <= tol[dtype].rel_l2 and mx <= tol[dtype].max_abs
                        msg = f"rel {rel:.2e} max {mx:.2e}"
                    except Exception as e:  # report and go on: one log shows every path
                        ok, msg = False, f"{type(e).__name__}: {str(e)[:200]}"
                    moe.PDL = True
                    bad += not ok
                    path = path if pdl else path + "-nopdl"
                    print(f"check {size:10s} T={T:4d} {str(dtype)[6:]:9s} {path:13s} {'ok ' if ok else 'BAD'} {msg} "
                          f"({(time.perf_counter() - t0) * 1e3:.0f} ms)", flush=True)
    return bad


# Layer.forward's router for decode sizes: the model's (GEMM + moe_topk) unless True (the fused one is timed too)
ROUTER_FUSED = False


class Layer:
    """Random bf16 weights of one MoE layer at a checkpoint's shapes, on the GPU."""

    def __init__(self, size: str, seed: int = 0):
        s = MOE_SIZES[size]
        self.size, self.H, self.E, self.k, self.I, self.S = (size, s["hidden"], s["experts"], s["topk"], s["inter"],
                                                            s["shared"])
        torch.manual_seed(seed)
        dev, bf = "cuda", torch.bfloat16
        H, E, I, S = self.H, self.E, self.I, self.S
        self.wr = torch.randn(E, H, device=dev, dtype=bf) * H ** -0.5
        self.gate_up = torch.randn(E, 2 * I, H, device=dev, dtype=bf) * H ** -0.5
        self.down = torch.randn(E, H, I, device=dev, dtype=bf) * I ** -0.5
        self.sg = torch.randn(S, H, device=dev, dtype=bf) * H ** -0.5
        self.su = torch.randn(S, H, device=dev, dtype=bf) * H ** -0.5
        self.sd = torch.randn(H, S, device=dev, dtype=bf) * S ** -0.5
        self.sgate = torch.randn(1, H, device=dev, dtype=bf) * H ** -0.5

    def forward(self, x):
        """The layer as the model should call it: the fused router + top-k for decode (F.linear + moe_topk for more
        than 64 tokens), moe_mlp with the shared expert fused."""
        if x.shape[0] <= moe.ROUTER_MAX_TOKENS and ROUTER_FUSED:
            w, e = moe.moe_router_topk(x, self.wr, self.k)
        else:
            w, e = moe.moe_topk(F.linear(x, self.wr), self.k)
        return moe.moe_mlp(x, self.gate_up, self.down, w, e, shared_gate=self.sg, shared_up=self.su,
                           shared_down=self.sd, shared_expert_gate=self.sgate, validate=False)

    def forward_unfused(self, x):
        """The model's composition today: routed moe_mlp + the gated shared expert as separate ops."""
        from kernels.activations import silu_mul

        w, e = moe.moe_topk(F.linear(x, self.wr), self.k)
        routed = moe.moe_mlp(x, self.gate_up, self.down, w, e, validate=False)
        shared = F.linear(silu_mul(F.linear(x, self.sg), F.linear(x, self.su)), self.sd)
        return routed + torch.sigmoid(F.linear(x, self.sgate)) * shared

    def hf_block(self):
        from transformers.models.qwen3_5_moe.configuration_qwen3_5_moe import Qwen3_5MoeTextConfig
        from transformers.models.qwen3_5_moe.modeling_qwen3_5_moe import Qwen3_5MoeSparseMoeBlock

        cfg = Qwen3_5MoeTextConfig(hidden_size=self.H, num_experts=self.E, num_experts_per_tok=self.k,
                                   moe_intermediate_size=self.I, shared_expert_intermediate_size=self.S)
        cfg._experts_implementation = "eager"
        with torch.device("meta"):
            block = Qwen3_5MoeSparseMoeBlock(cfg).to(torch.bfloat16)
        block = block.to_empty(device="cuda").eval()
        with torch.no_grad():
            block.gate.weight.copy_(self.wr)
            block.experts.gate_up_proj.copy_(self.gate_up)
            block.experts.down_proj.copy_(self.down)
            block.shared_expert.gate_proj.weight.copy_(self.sg)
            block.shared_expert.up_proj.weight.copy_(self.su)
            block.shared_expert.down_proj.weight.copy_(self.sd)
            block.shared_expert_gate.weight.copy_(self.sgate)
        return block


def bench(sizes, tokens, hf: bool, out_dir) -> list[dict]:
    bw, tf = copy_bandwidth_TBps(), bf16_gemm_TFLOPs()
    print(f"ceilings: copy {bw:.2f} TB/s, bf16 GEMM {tf:.0f} TFLOP/s", flush=True)
    records = []
    for size in sizes:
        L = Layer(size)
        block = L.hf_block() if hf else None
        _self_test(L)
        for T in tokens:
            try:
                _bench_one(L, block, T, bw, tf, records, out_dir)
            except Exception as ex:  # report and go on with the next size/token count
                print(f"{size} T={T}: FAILED {type(ex).__name__}: {str(ex)[:300]}", flush=True)
        del L, block
        torch.cuda.empty_cache()
    print(f"results: {_save(records, bw, tf, out_dir)}")
    return records


def _bench_one(L, block, T, bw, tf, records, out_dir) -> None:
    size, H, E, k, I, S = L.size, L.H, L.E, L.k, L.I, L.S
    expert_bytes = 3 * I * H * 2
    x = torch.randn(T, H, device="cuda", dtype=torch.bfloat16)
    w, e = moe.moe_topk(F.linear(x, L.wr), k)
    n_hit = int(torch.unique(e).numel())
    n = max(1, 3 if T >= 1024 else 20)
    rec = dict(size=size, tokens=T, hidden=H, experts=E, topk=k, inter=I, shared=S, experts_hit=n_hit,
               path=moe.pick_path(T, k, x, L.gate_up, L.down))
    routed_bytes = n_hit * expert_bytes
    layer_bytes = routed_bytes + (E * H + 3 * S * H + H) * 2
    routed_flops = 2.0 * T * k * 3 * I * H
    layer_flops = routed_flops + 2.0 * T * (E * H + 3 * S * H + H)
    rec["routed_us"] = graph_ms(lambda: moe.moe_mlp(x, L.gate_up, L.down, w, e, validate=False), n) * 1e3
    rec["layer_us"] = graph_ms(lambda: L.forward(x), n) * 1e3
    rec["layer_unfused_us"] = graph_ms(lambda: L.forward_unfused(x), n) * 1e3
    global ROUTER_FUSED
    rec["pdl"], rec["router_fused"] = moe.PDL, ROUTER_FUSED and T <= moe.ROUTER_MAX_TOKENS
    pdl, fused = moe.PDL, ROUTER_FUSED
    moe.PDL = False
    rec["layer_nopdl_us"] = graph_ms(lambda: L.forward(x), n) * 1e3
    moe.PDL = pdl
    rec["split"] = moe.SPLIT and T >= moe.SPLIT_MIN_TOKENS
    if rec["path"] == "decode":  # both decode gate/up kernels, and the split kernel's grid (waves over the units)
        knobs = (moe.SPLIT, moe.SPLIT_MIN_TOKENS, moe.SPLIT_WAVES)
        moe.SPLIT = False
        rec["layer_nosplit_us"] = graph_ms(lambda: L.forward(x), n) * 1e3
        moe.SPLIT, moe.SPLIT_MIN_TOKENS = True, 1
        for wv in (0.5, 1.0, 2.0):
            moe.SPLIT_WAVES = wv
            rec[f"layer_split_waves{wv:g}_us"] = graph_ms(lambda: L.forward(x), n) * 1e3
        moe.SPLIT, moe.SPLIT_MIN_TOKENS, moe.SPLIT_WAVES = knobs
    if T <= moe.ROUTER_MAX_TOKENS:
        ROUTER_FUSED = not fused
        rec["layer_unfused_router_us" if fused else "layer_fused_router_us"] = graph_ms(lambda: L.forward(x), n) * 1e3
        ROUTER_FUSED = fused
        rec["router_topk_fused_us"] = graph_ms(lambda: moe.moe_router_topk(x, L.wr, k), n) * 1e3
    logits = F.linear(x, L.wr)
    rec["router_gemm_us"] = graph_ms(lambda: F.linear(x, L.wr), n) * 1e3
    rec["topk_us"] = graph_ms(lambda: moe.moe_topk(logits, k), n) * 1e3
    if T * k > moe.DECODE_MAX_SLOTS and moe.grouped_mm_available(x.device):
        # the routed path's other candidates at this size (the pick is by T k: measured here)
        rec["routed_routed_us"] = graph_ms(lambda: moe.moe_mlp(x, L.gate_up, L.down, w, e, validate=False,
                                                               path="routed"), n) * 1e3 if T <= 1024 else None
    if T * k <= moe.DECODE_MAX_SLOTS and T * k > 8 and moe.grouped_mm_available(x.device):
        rec["routed_grouped_us"] = graph_ms(lambda: moe.moe_mlp(x, L.gate_up, L.down, w, e, validate=False,
                                                                path="grouped"), n) * 1e3
    # torch._grouped_mm gate/up alone on grouped rows (the anchor), the routing metadata alone
    rec["route_us"] = graph_ms(lambda: moe.moe_routing(e, E), n) * 1e3
    offs, perm, _, _ = moe.moe_routing(e, E)
    xs = x[(perm // k).long()]
    ends = offs[1:]
    rec["gmm_gate_up_us"] = graph_ms(lambda: torch._grouped_mm(xs, L.gate_up.transpose(1, 2), offs=ends),
                                     n) * 1e3
    if block is not None and T <= 8192:
        with torch.no_grad():
            rec["hf_us"] = cuda_time_ms(lambda: block(x[None]), warmup=2, iters=5 if T >= 1024 else 10) * 1e3
            got, want = L.forward(x), block(x[None])[0]
            rec["hf_rel_l2"] = float((got.float() - want.float()).norm() / want.float().norm())
    for part, b, fl in (("routed", routed_bytes, routed_flops), ("layer", layer_bytes, layer_flops)):
        us = rec[f"{part}_us"]
        rec[f"{part}_bytes"] = b
        rec[f"{part}_flops"] = fl
        rec[f"{part}_TBps"] = b / (us * 1e-6) / 1e12
        rec[f"{part}_TFLOPs"] = fl / (us * 1e-6) / 1e12
        rec[f"{part}_pct_bw_floor"] = 100.0 * (b / (bw * 1e12)) / (us * 1e-6)
        rec[f"{part}_pct_gemm_floor"] = 100.0 * (fl / (tf * 1e12)) / (us * 1e-6)
    rec["gmm_gate_up_TFLOPs"] = 2.0 * T * k * 2 * I * H / (rec["gmm_gate_up_us"] * 1e-6) / 1e12
    records.append(rec)
    _save(records, bw, tf, out_dir)  # after every record: a killed run still leaves its results
    hf_s = f" hf {rec['hf_us']:8.1f} us (x{rec['hf_us'] / rec['layer_us']:.1f}, rel {rec['hf_rel_l2']:.1e})" \
        if "hf_us" in rec else ""
    print(f"{size:10s} T={T:5d} [{rec['path']:7s}] hit {n_hit:3d}  routed {rec['routed_us']:8.1f} us "
          f"({rec['routed_pct_bw_floor']:5.1f}% bw, {rec['routed_pct_gemm_floor']:5.1f}% gemm)  layer "
          f"{rec['layer_us']:8.1f} us ({rec['layer_pct_bw_floor']:5.1f}% bw, {rec['layer_pct_gemm_floor']:5.1f}%"
          f" gemm){hf_s}  gmm g/u {rec['gmm_gate_up_us']:7.1f} us {rec['gmm_gate_up_TFLOPs']:5.0f} TF"
          + "".join(f" {kk} {rec[kk]:.1f}" for kk in ("layer_unfused_us", "layer_nopdl_us", "layer_nosplit_us",
                                         "layer_split_waves0.5_us", "layer_split_waves1_us", "layer_split_waves2_us",
                                         "layer_unfused_router_us", "layer_fused_router_us",
                                         "router_gemm_us", "topk_us", "router_topk_fused_us",
                                         "routed_routed_us", "routed_grouped_us", "route_us")
                    if rec.get(kk) is not None), flush=True)
    del x, xs


def _self_test(L) -> None:
    """Before timing: the fused router and the programmatic launches against the plain composition at 1 and 8
    tokens; a feature that raises or disagrees is switched off for the run (and said so), so one broken piece cannot
    take the whole benchmark down."""
    global ROUTER_FUSED
    for T in (1, 8):
        x = torch.randn(T, L.H, device="cuda", dtype=torch.bfloat16)
        want = L.forward_unfused(x).float()
        for name in ("PDL", "ROUTER_FUSED"):
            try:
                got = L.forward(x).float()
                torch.cuda.synchronize()
                rel = float((got - want).norm() / want.norm())
                # the fused router's fp32 logits may pick another expert on a near-tie of bf16 logits: loose
                ok = rel < 0.25
            except Exception as e:
                ok, rel = False, f"{type(e).__name__}: {str(e)[:160]}"
            if ok:
                break
            print(f"self-test {L.size} T={T}: layer vs unfused composition {rel}; switching {name} off", flush=True)
            if name == "PDL":
                moe.PDL = False
            else:
                ROUTER_FUSED = False


def _save(records, bw, tf, out_dir) -> Path:
    path = write_results("moe", records, extra=dict(copy_TBps=bw, bf16_gemm_TFLOPs=tf))
    if out_dir:
        shutil.copy(path, Path(out_dir) / path.name)
    return path


MODEL_35B = dict(hidden_size=2048, num_hidden_layers=40, num_attention_heads=16, num_key_value_heads=2, head_dim=256,
                 linear_num_value_heads=32, linear_num_key_heads=16, linear_key_head_dim=128,
                 linear_value_head_dim=128, linear_conv_kernel_dim=4, vocab_size=248320, num_experts=256,
                 num_experts_per_tok=8, moe_intermediate_size=512, shared_expert_intermediate_size=512,
                 rms_norm_eps=1e-6, rope_parameters=dict(rope_type="default", rope_theta=1e7,
                                                         partial_rotary_factor=0.25, mrope_interleaved=True,
                                                         mrope_section=[11, 11, 10]))


def build_moe_lm(layers: int = 40, dtype=torch.bfloat16):
    """The 35B-A3B LanguageModel on the kernels backend, random weights (N(0, 0.02); norms 1 + N(0, 0.1); the
    router N(0, 1) / sqrt(H) so tokens spread over the experts) at the real shapes, made on the GPU."""
    from model.config import ModelConfig
    from model.language import LanguageModel
    from model.loader import LM, LM_HEAD, expected_shapes
    from model.ops import ops_for

    text = dict(MODEL_35B, num_hidden_layers=layers,
                layer_types=["full_attention" if (i + 1) % 4 == 0 else "linear_attention" for i in range(layers)])
    cfg = ModelConfig.from_dict(dict(model_type="qwen3_5_moe", tie_word_embeddings=False, text_config=text,
                                     vision_config=dict(depth=1, hidden_size=128, intermediate_size=256,
                                                        num_heads=2, out_hidden_size=2048)))
    g = torch.Generator(device="cuda").manual_seed(0)
    w = {}
    for name, shape in expected_shapes(cfg).items():
        if not (name.startswith(LM) or name == LM_HEAD):
            continue
        key = "lm_head.weight" if name == LM_HEAD else name[len(LM):]
        t = torch.empty(shape, device="cuda", dtype=dtype)
        if "norm" in key:
            t.normal_(1.0, 0.1, generator=g)
        elif key.endswith("A_log"):
            t.uniform_(0.0, 2.7, generator=g)
        elif key.endswith("mlp.gate.weight"):
            t.normal_(0.0, shape[1] ** -0.5, generator=g)
        else:
            t.normal_(0.0, 0.02, generator=g)
        w[key] = t
    return LanguageModel(cfg.text, w, ops_for("kernels", cfg, dtype)), cfg


def _step_bytes(lm, B: int, touched: list[int] | None = None) -> float:
    """Weight bytes one decode step reads at batch B: everything but the routed experts, plus the distinct experts
    each layer's routing touched (`touched`, counted in a step), else their expectation under uniform routing
    (E (1 - (1 - k/E)^B) a layer)."""
    t = lm.cfg
    total, experts = 0, 0
    for name, v in lm.w.items():
        if name == "embed_tokens.weight":
            continue  # a gather of B rows
        if name.endswith("experts.gate_up_proj") or name.endswith("experts.down_proj"):
            experts += v.numel() * v.element_size()
        else:
            total += v.numel() * v.element_size()
    E, k = t.num_experts, t.num_experts_per_tok
    if touched is not None:
        return total + experts / (E * t.num_hidden_layers) * sum(touched)
    return total + experts * (1 - (1 - k / E) ** B)


def _touched_experts(lm, sess) -> list[int]:
    """The distinct experts each MoE layer's routing picks in one eager step of sess (read on the host)."""
    counts, ops = [], lm.ops
    topk = ops.moe_topk

    def counting(logits, k, **kw):
        w, e = topk(logits, k, **kw)
        counts.append(int(torch.unique(e).numel()))
        return w, e
    graph, sess.graph = sess.graph, None
    ops.moe_topk = counting
    try:
        sess.advance()
        torch.cuda.synchronize()
    finally:
        ops.moe_topk, sess.graph = topk, graph
    return counts


def model_decode(batches, layers: int, context: int, out_dir, profile: bool = False,
                 variants: tuple[str, ...] = ("default",), timeline: bool = False) -> list[dict]:
    from model.generate import DecodeSession, Sampling

    bw = copy_bandwidth_TBps()
    t0 = time.perf_counter()
    lm, cfg = build_moe_lm(layers)
    torch.cuda.synchronize()
    wbytes = sum(v.numel() * v.element_size() for v in lm.w.values())
    print(f"35B-A3B LM ({layers} layers): {wbytes / 1e9:.1f} GB of weights in {time.perf_counter() - t0:.1f} s, "
          f"{torch.cuda.max_memory_allocated() / 2**30:.1f} GiB peak", flush=True)
    records = []
    default, default_mma, min_tokens = moe.STREAM, moe.MMA, moe.STREAM_MIN_TOKENS
    mma_defaults = {kk: getattr(moe, kk) for kk in _MMA_PLAIN}
    for B, variant in [(B, v) for B in batches for v in variants]:
        # variant: "default" (the module's switches), "mma" / "stream" / "old": the decode MoE kernels (moe.MMA,
        # moe.STREAM)
        # "mma plain": the tensor-core kernels without the L2 evict_first policy
        for kk, v in (_MMA_PLAIN if variant == "mma plain" else mma_defaults).items():
            setattr(moe, kk, v)
        moe.MMA = default_mma if variant == "default" else variant in ("mma", "mma plain")
        moe.STREAM = default if variant in ("default", "mma") else variant == "stream"
        if variant == "stream":
            moe.STREAM_MIN_TOKENS = 1
        try:
            t1 = time.perf_counter()
            sess = DecodeSession(lm, B, context + 64, Sampling(), graphs=True)
            sess.cache.lengths.fill_(context)
            # distinct tokens a row: rows that start alike stay alike (greedy, equal caches) and route alike, so a
            # batch of them would read only one row's experts
            sess.tok.copy_(torch.randint(0, cfg.text.vocab_size, (B,), device="cuda",
                                         generator=torch.Generator(device="cuda").manual_seed(B)))
            sess.advance()
            torch.cuda.synchronize()
            build_s = time.perf_counter() - t1
            rec = dict(model="35B-A3B", layers=layers, batch=B, context=context, mode=sess.mode,
                       weights_GB=wbytes / 1e9, build_s=build_s, moe_kernels=variant, moe_stream=moe.STREAM)
            if sess.graph is not None:
                n = 30
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                sess.graph.replay()
                start.record()
                for _ in range(n):
                    sess.graph.replay()
                end.record()
                torch.cuda.synchronize()
                us = start.elapsed_time(end) * 1e3 / n
                touched = _touched_experts(lm, sess)
                fb, fu = _step_bytes(lm, B, touched), _step_bytes(lm, B)
                rec.update(step_us=us, tokens_per_s=B / us * 1e6, step_bytes=fb, experts_touched=touched,
                           floor_us=fb / (bw * 1e12) * 1e6, pct_floor=100 * fb / (bw * 1e12) / (us * 1e-6),
                           floor_uniform_us=fu / (bw * 1e12) * 1e6)
                print(f"35B-A3B decode bs{B} [{variant}]: {us:.1f} us/step = {rec['tokens_per_s']:.0f} tok/s; floor "
                      f"{rec['floor_us']:.0f} us ({rec['pct_floor']:.0f} %; {sum(touched) / len(touched):.1f} experts "
                      f"a layer; uniform routing: {rec['floor_uniform_us']:.0f} us), graph built in {build_s:.1f} s",
                      flush=True)
                if timeline:  # the replayed step kernel by kernel (tools/lm_decode_profile.py)
                    sys.path.insert(0, str(Path(__file__).resolve().parent))
                    from lm_decode_profile import graph_timeline, print_timeline

                    tl = graph_timeline(sess.graph)
                    rec["timeline"] = tl | dict(by_kernel=dict(list(tl["by_kernel"].items())[:30]))
                    print_timeline(tl)
            else:
                print(f"35B-A3B decode bs{B}: no graph ({sess.mode})", flush=True)
            del sess
            if profile and variant == variants[0]:  # one eager step's kernels by op (tools/lm_decode_profile.py)
                sys.path.insert(0, str(Path(__file__).resolve().parent))
                from lm_decode_profile import profile_step

                r = profile_step(lm, B, context, context + 64)
                rec.update(eager_kernels=r["kernels_per_step"], eager_kernel_us=r["kernel_us"], by_op=r["by_op"],
                           by_kernel=dict(list(r["by_kernel"].items())[:25]))
                print(f"   eager step: {r['kernels_per_step']} kernels, {r['kernel_us']} us busy", flush=True)
                for kk, v in list(r["by_op"].items())[:10]:
                    print(f"   {v['us']:8.1f} us {v['kernels']:4d} k  {kk}", flush=True)
                for kk, v in list(r["by_kernel"].items())[:8]:
                    print(f"   {v['us']:8.1f} us {v['kernels']:4d} x  {kk}", flush=True)
            records.append(rec)
            torch.cuda.empty_cache()
        except Exception as ex:
            print(f"35B-A3B decode bs{B}: FAILED {type(ex).__name__}: {str(ex)[:300]}", flush=True)
    moe.STREAM, moe.MMA, moe.STREAM_MIN_TOKENS = default, default_mma, min_tokens
    for kk, v in mma_defaults.items():
        setattr(moe, kk, v)
    path = write_results("moe_model_decode", records, extra=dict(copy_TBps=bw))
    if out_dir:
        shutil.copy(path, Path(out_dir) / path.name)
    print(f"results: {path}")
    return records


def decode_ab(sizes, tokens, out_dir, reps: int = 3, sweep: bool = False) -> list[dict]:
    """The decode path's kernels A/B in one process: the whole layer and moe_mlp alone on the streaming kernels
    (moe.STREAM) and on the older ones, interleaved `reps` times (the median of each kept), each output checked
    against reference.moe_mlp (fp32 on the CPU) first; the same floors as --bench."""
    bw = copy_bandwidth_TBps()
    tol = REGISTRY["moe_mlp"].tol[torch.bfloat16]
    default, min_tokens = moe.STREAM, moe.STREAM_MIN_TOKENS
    moe.STREAM_MIN_TOKENS = 1  # (the A/B runs the streaming kernels at every token count)
    records = []
    for size in sizes:
        L = Layer(size)
        H, E, k, I, S = L.H, L.E, L.k, L.I, L.S
        for T in tokens:
            x = torch.randn(T, H, device="cuda", dtype=torch.bfloat16)
            w, e = moe.moe_topk(F.linear(x, L.wr), k)
            n_hit = int(torch.unique(e).numel())
            kw = dict(shared_gate=L.sg, shared_up=L.su, shared_down=L.sd, shared_expert_gate=L.sgate)
            rec = dict(size=size, tokens=T, hidden=H, experts=E, topk=k, inter=I, shared=S, experts_hit=n_hit,
                       kernels=moe.decode_kernels(x, L.gate_up, L.down, k, L.sg, L.su, L.sd))
            uniq, inv = torch.unique(e, return_inverse=True)  # the reference in fp32 on the touched experts only
            want = ref.moe_mlp(x.float(), L.gate_up[uniq].float(), L.down[uniq].float(), w, inv.reshape(e.shape),
                               **{kk: v.float() for kk, v in kw.items()}).cpu()
            times = {}
            mlp_bytes = n_hit * 3 * I * H * 2 + 3 * S * H * 2 + H * 2
            for stream in (True, False):
                moe.STREAM = stream
                got = moe.moe_mlp(x, L.gate_up, L.down, w, e, **kw, validate=False)
                rel, mx = tol.errors(got.float().cpu(), want)
                rec[f"{'stream' if stream else 'old'}_rel_l2"] = rel
                rec[f"{'stream' if stream else 'old'}_ok"] = bool(rel <= tol.rel_l2 and mx <= tol.max_abs)
            for _ in range(reps):
                for stream in (True, False):
                    moe.STREAM = stream
                    tag = "stream" if stream else "old"
                    times.setdefault(f"layer_{tag}_us", []).append(graph_ms(lambda: L.forward(x), 20) * 1e3)
                    times.setdefault(f"mlp_{tag}_us", []).append(graph_ms(
                        lambda: moe.moe_mlp(x, L.gate_up, L.down, w, e, **kw, validate=False), 20) * 1e3)
            for kk, v in times.items():
                rec[kk] = sorted(v)[len(v) // 2]
            for stream in (True, False):  # moe_mlp without the shared expert (where the old kernels' tail was)
                moe.STREAM = stream
                rec[f"mlp_{'stream' if stream else 'old'}_noshared_us"] = graph_ms(
                    lambda: moe.moe_mlp(x, L.gate_up, L.down, w, e, validate=False), 20) * 1e3
            moe.STREAM, moe.TOPK_EARLY = True, False
            rec["layer_stream_topk_late_us"] = graph_ms(lambda: L.forward(x), 20) * 1e3
            moe.TOPK_EARLY, moe.STREAM_PREFETCH = True, False
            rec["layer_stream_noprefetch_us"] = graph_ms(lambda: L.forward(x), 20) * 1e3
            moe.STREAM_PREFETCH, xs_max, moe.STREAM_XS_MAX = True, moe.STREAM_XS_MAX, 0
            rec["layer_stream_nox_us"] = graph_ms(lambda: L.forward(x), 20) * 1e3
            moe.STREAM_XS_MAX = xs_max
            flags = moe.STREAM_FLAGS
            for fl, name in ((flags ^ 1, "hint_flipped"), (flags ^ 2, "lookahead_flipped")):
                moe.STREAM_FLAGS = fl
                rec[f"layer_stream_{name}_us"] = graph_ms(lambda: L.forward(x), 20) * 1e3
            moe.STREAM_FLAGS = flags
            rec["stream_flags"] = flags
            # each streaming kernel alone (graph of 20 launches of it; the inputs stay valid between them)
            p = moe._stream_plan(T, k, E, H, I, S, 2, torch.cuda.get_device_properties(0).multi_processor_count,
                                 True)
            act = torch.empty(T * k, I, device="cuda")
            act_sh = torch.empty(T, S, device="cuda")
            y = torch.empty_like(x)
            dev = torch.cuda.current_device()
            sh = (L.sg, L.su, L.sd, L.sgate)
            ee, ww = e.contiguous(), w.float().contiguous()
            rec["gate_up_alone_us"] = graph_ms(lambda: moe._stream_gate_up(p, x, L.gate_up, ee, sh, act, act_sh, T, H,
                                                                           E, I, k, S, dev), 20) * 1e3
            rec["down_alone_us"] = graph_ms(lambda: moe._stream_down(p, x, L.down, ww, ee, sh, act, act_sh, y, T, H,
                                                                     E, I, k, S, dev), 20) * 1e3
            gu_bytes = (n_hit + 1) * 2 * I * H * 2
            rec["gate_up_alone_TBps"] = gu_bytes / (rec["gate_up_alone_us"] * 1e-6) / 1e12
            rec["down_alone_TBps"] = (mlp_bytes - gu_bytes) / (rec["down_alone_us"] * 1e-6) / 1e12
            if sweep:  # the streaming kernels' knobs: gate/up stage and ring bytes, down stage budget
                moe.STREAM = True
                knobs = (moe.STREAM_GU_STAGE, moe.STREAM_GU_RING, moe.STREAM_DOWN_SMEM, moe.STREAM_DOWN_WARPS)
                for st, ring in ((16, 32), (16, 48), (32, 64), (32, 96)):
                    for dsm, dw in ((32, 8), (64, 8), (100, 8)):
                        moe.STREAM_GU_STAGE, moe.STREAM_GU_RING = st << 10, ring << 10
                        moe.STREAM_DOWN_SMEM, moe.STREAM_DOWN_WARPS = dsm << 10, dw
                        key = f"layer_stream_st{st}_ring{ring}_down{dsm}_w{dw}_us"
                        rec[key] = graph_ms(lambda: L.forward(x), 20) * 1e3
                moe.STREAM_GU_STAGE, moe.STREAM_GU_RING, moe.STREAM_DOWN_SMEM, moe.STREAM_DOWN_WARPS = knobs
                best = min((v, kk) for kk, v in rec.items() if kk.startswith("layer_stream_st"))
                print(f"   sweep best {best[1]} {best[0]:.1f} us", flush=True)
            moe.STREAM = default
            rec["router_gemm_us"] = graph_ms(lambda: F.linear(x, L.wr), 20) * 1e3
            logits = F.linear(x, L.wr)
            rec["topk_us"] = graph_ms(lambda: moe.moe_topk(logits, k), 20) * 1e3
            layer_bytes = mlp_bytes + E * H * 2
            for tag in ("stream", "old"):
                rec[f"layer_{tag}_pct_bw_floor"] = 100 * layer_bytes / (bw * 1e12) / (rec[f"layer_{tag}_us"] * 1e-6)
                rec[f"mlp_{tag}_pct_bw_floor"] = 100 * mlp_bytes / (bw * 1e12) / (rec[f"mlp_{tag}_us"] * 1e-6)
            rec.update(layer_bytes=layer_bytes, mlp_bytes=mlp_bytes, floor_layer_us=layer_bytes / (bw * 1e6))
            records.append(rec)
            print(f"{size:10s} T={T:3d} hit {n_hit:3d} [{rec['kernels']}] layer stream {rec['layer_stream_us']:6.1f} us"
                  f" ({rec['layer_stream_pct_bw_floor']:4.1f}%) old {rec['layer_old_us']:6.1f} us "
                  f"({rec['layer_old_pct_bw_floor']:4.1f}%) | mlp stream {rec['mlp_stream_us']:6.1f} old "
                  f"{rec['mlp_old_us']:6.1f} | floor {rec['floor_layer_us']:.1f} us | rel {rec['stream_rel_l2']:.1e}"
                  f"/{rec['old_rel_l2']:.1e} ok {rec['stream_ok']}/{rec['old_ok']} | router {rec['router_gemm_us']:.1f}"
                  f" topk {rec['topk_us']:.1f} | topk late {rec['layer_stream_topk_late_us']:.1f} no prefetch "
                  f"{rec['layer_stream_noprefetch_us']:.1f} | no shared: "
                  f"stream {rec['mlp_stream_noshared_us']:.1f} old {rec['mlp_old_noshared_us']:.1f} | no x staging "
                  f"{rec['layer_stream_nox_us']:.1f} hint flipped {rec['layer_stream_hint_flipped_us']:.1f} "
                  f"lookahead flipped {rec['layer_stream_lookahead_flipped_us']:.1f} | alone: gate/up "
                  f"{rec['gate_up_alone_us']:.1f} us "
                  f"({rec['gate_up_alone_TBps']:.2f} TB/s) down {rec['down_alone_us']:.1f} us "
                  f"({rec['down_alone_TBps']:.2f} TB/s)", flush=True)
            path = write_results("moe_decode_ab", records, extra=dict(copy_TBps=bw))
            if out_dir:
                shutil.copy(path, Path(out_dir) / path.name)
        del L
        torch.cuda.empty_cache()
    moe.STREAM_MIN_TOKENS = min_tokens
    return records


# --mma-ab: (name, module switches) of the decode kernels timed (the builds kernels/moe.py compiles)
_MMA_PLAIN = dict(MMA=True, MMA_GU_EVICT_FIRST=False, MMA_DOWN_EVICT_FIRST=False)  # as before evict_first
MMA_VARIANTS = (("mma", dict(MMA=True, MMA_GU_EVICT_FIRST=True, MMA_DOWN_EVICT_FIRST=True)),
                ("mma, no evict_first", _MMA_PLAIN),
                ("mma, gate/up evict_first", dict(_MMA_PLAIN, MMA_GU_EVICT_FIRST=True)),
                ("mma, fused router", dict(MMA=True, MMA_GU_EVICT_FIRST=True, MMA_DOWN_EVICT_FIRST=True,
                                           ROUTER_FUSED=True)),
                ("stream", dict(MMA=False, STREAM=True)))


def _calls_timeline(fn, n: int = 20) -> dict:
    """graph_timeline (tools/lm_decode_profile.py) of n calls of fn captured in one graph, per call."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from lm_decode_profile import graph_timeline

    from kernels.runtime.timing import capture

    def body():
        for _ in range(n):
            fn()
    return graph_timeline(capture(body), reps=3, calls=n)


def mma_ab(sizes, tokens, out_dir, reps: int = 3, timeline: bool = False) -> list[dict]:
    """The decode MoE kernels' builds (MMA_VARIANTS) on one layer, graph-replayed and interleaved `reps` times
    (median): moe_mlp alone and the whole layer (router GEMM + top-k + moe_mlp), each output first checked against
    the fp32 reference on the touched experts; bytes and % of the copy-rate floor beside."""
    bw = copy_bandwidth_TBps()
    tol = REGISTRY["moe_mlp"].tol[torch.bfloat16]
    global ROUTER_FUSED
    # ROUTER_FUSED: this module's switch (Layer.forward's router), the others kernels.moe's
    saved = {kk: getattr(moe, kk) for _, f in MMA_VARIANTS for kk in f if kk != "ROUTER_FUSED"}
    records = []
    for size in sizes:
        L = Layer(size)
        H, E, k, I, S = L.H, L.E, L.k, L.I, L.S
        kw = dict(shared_gate=L.sg, shared_up=L.su, shared_down=L.sd, shared_expert_gate=L.sgate)
        for T in tokens:
            x = torch.randn(T, H, device="cuda", dtype=torch.bfloat16)
            logits = F.linear(x, L.wr)
            w, e = moe.moe_topk(logits, k)
            uniq, inv = torch.unique(e, return_inverse=True)
            want = ref.moe_mlp(x.float(), L.gate_up[uniq].float(), L.down[uniq].float(), w, inv.reshape(e.shape),
                               **{kk: v.float() for kk, v in kw.items()}).cpu()
            n_hit = int(uniq.numel())
            mlp_bytes = n_hit * 3 * I * H * 2 + 3 * S * H * 2 + H * 2
            layer_bytes = mlp_bytes + E * H * 2
            times = {}
            for rep in range(reps):
                for name, flags in MMA_VARIANTS:
                    ROUTER_FUSED = flags.get("ROUTER_FUSED", False)
                    for kk, v in flags.items():
                        if kk != "ROUTER_FUSED":
                            setattr(moe, kk, v)
                    if rep == 0:
                        got = moe.moe_mlp(x, L.gate_up, L.down, w, e, **kw, validate=False)
                        rel, mx = tol.errors(got.float().cpu(), want)
                        times[name] = dict(kernels=moe.decode_kernels(x, L.gate_up, L.down, k, L.sg, L.su, L.sd),
                                           rel_l2=rel, max_abs=mx, ok=bool(rel <= tol.rel_l2 and mx <= tol.max_abs),
                                           mlp=[], layer=[], topk=[])
                    times[name]["mlp"].append(graph_ms(
                        lambda: moe.moe_mlp(x, L.gate_up, L.down, w, e, **kw, validate=False), 20) * 1e3)
                    times[name]["layer"].append(graph_ms(lambda: L.forward(x), 20) * 1e3)
                    times[name]["topk"].append(graph_ms(lambda: moe.moe_topk(logits, k), 20) * 1e3)
                    if rep == 0 and timeline:  # the layer kernel by kernel, as the graph runs it
                        times[name]["timeline"] = _calls_timeline(lambda: L.forward(x))
            for kk, v in saved.items():
                setattr(moe, kk, v)
            ROUTER_FUSED = False
            for name, t in times.items():
                mlp_us, layer_us, topk_us = (sorted(t[c])[len(t[c]) // 2] for c in ("mlp", "layer", "topk"))
                rec = dict(size=size, tokens=T, experts_hit=n_hit, variant=name, kernels=t["kernels"],
                           rel_l2=t["rel_l2"], max_abs=t["max_abs"], ok=t["ok"], mlp_us=mlp_us, layer_us=layer_us,
                           topk_us=topk_us, timeline=t.get("timeline"),
                           mlp_bytes=mlp_bytes, layer_bytes=layer_bytes, floor_layer_us=layer_bytes / (bw * 1e6),
                           mlp_pct_bw_floor=100 * mlp_bytes / (bw * 1e12) / (mlp_us * 1e-6),
                           layer_pct_bw_floor=100 * layer_bytes / (bw * 1e12) / (layer_us * 1e-6))
                records.append(rec)
                print(f"{size} T={T} [{name:14s}] layer {layer_us:6.1f} us ({rec['layer_pct_bw_floor']:4.1f} % of "
                      f"floor {rec['floor_layer_us']:.1f}) moe_mlp {mlp_us:6.1f} us top-k {topk_us:5.1f} us "
                      f"rel {t['rel_l2']:.1e} "
                      f"ok {t['ok']}", flush=True)
                if t.get("timeline"):
                    for kk, v in t["timeline"]["by_kernel"].items():
                        print(f"      charged {v['charged_us']:6.2f} us ran {v['us']:6.2f} us {v['kernels']} x "
                              f"{kk[:70]}")
        del L
        torch.cuda.empty_cache()
    path = write_results("moe_mma_ab", records, extra=dict(copy_TBps=bw))
    if out_dir:
        shutil.copy(path, Path(out_dir) / path.name)
    print(f"results: {path}")
    return records


def breakdown(tokens, out_dir) -> list[dict]:
    """The 35B-A3B layer on the grouped path, one stage at a time (graph-replayed): router GEMM, top-k, routing
    metadata, gather, grouped gate/up, silu_mul_fused, grouped down, combine, the shared expert's three cuBLAS GEMMs
    and its silu_mul; beside the whole layer and each GEMM's TFLOP/s (what the 8192-token layer spends where)."""
    from kernels.activations import silu_mul, silu_mul_fused

    tf = bf16_gemm_TFLOPs()
    L = Layer("35B-A3B")
    H, E, k, I, S = L.H, L.E, L.k, L.I, L.S
    records = []
    for T in tokens:
        x = torch.randn(T, H, device="cuda", dtype=torch.bfloat16)
        logits = F.linear(x, L.wr)
        w, e = moe.moe_topk(logits, k)
        offs, perm, inv, _ = moe.moe_routing(e, E)
        n = T * k
        xs = x[(perm // k).long()]
        ends = offs[1:]
        h = torch._grouped_mm(xs, L.gate_up.transpose(1, 2), offs=ends)
        a = silu_mul_fused(h)
        sg = F.linear(x, L.sg)
        su = F.linear(x, L.su)
        sa = silu_mul(sg, su)
        dev = torch.cuda.current_device()
        ys = torch._grouped_mm(a, L.down.transpose(1, 2), offs=ends)
        y = torch.empty_like(x)
        shared = F.linear(sa, L.sd)
        gl = F.linear(x, L.sgate)
        vec = 8
        stages = dict(
            router_gemm=lambda: F.linear(x, L.wr),
            topk=lambda: moe.moe_topk(logits, k),
            routing=lambda: moe.moe_routing(e, E),
            gather=lambda: moe._launch(dev, x.dtype, moe._gather_expr(x.dtype, vec),
                                       (n, moe.ceil_div(H // vec, 256), 1), (256, 1, 1), x.data_ptr(),
                                       perm.data_ptr(), offs[E:].data_ptr(), moe.i32(k), moe.i32(H), xs.data_ptr()),
            gmm_gate_up=lambda: torch._grouped_mm(xs, L.gate_up.transpose(1, 2), offs=ends),
            silu_mul_fused=lambda: silu_mul_fused(h),
            gmm_down=lambda: torch._grouped_mm(a, L.down.transpose(1, 2), offs=ends),
            combine=lambda: moe._launch(dev, x.dtype, moe._combine_expr(x.dtype, vec),
                                        (T, moe.ceil_div(H // vec, 256), 1), (256, 1, 1), ys.data_ptr(), inv.data_ptr(),
                                        w.data_ptr(), moe.i32(k), moe.i32(H), y.data_ptr(), shared.data_ptr(),
                                        gl.data_ptr()),
            shared_gemms=lambda: (F.linear(x, L.sg), F.linear(x, L.su), F.linear(sa, L.sd), F.linear(x, L.sgate)),
            shared_silu_mul=lambda: silu_mul(sg, su),
            layer=lambda: L.forward(x),
        )
        rec = dict(size="35B-A3B", tokens=T, experts_hit=int(torch.unique(e).numel()))
        for name, fn in stages.items():
            rec[f"{name}_us"] = graph_ms(fn, 3 if T >= 4096 else 10) * 1e3
        flops = dict(gmm_gate_up=2.0 * n * 2 * I * H, gmm_down=2.0 * n * I * H, shared_gemms=2.0 * T * (3 * S * H + H))
        for name, fl in flops.items():
            rec[f"{name}_TFLOPs"] = fl / (rec[f"{name}_us"] * 1e-6) / 1e12
        layer_flops = sum(flops.values()) + 2.0 * T * E * H
        rec["layer_pct_gemm_floor"] = 100 * layer_flops / (tf * 1e12) / (rec["layer_us"] * 1e-6)
        rec["bf16_gemm_TFLOPs"] = tf
        records.append(rec)
        print(f"35B-A3B T={T} layer {rec['layer_us']:.0f} us ({rec['layer_pct_gemm_floor']:.0f}% of GEMM rate): "
              + " ".join(f"{kk[:-3]} {v:.0f}" for kk, v in rec.items() if kk.endswith("_us") and kk != "layer_us")
              + f" | gmm TF {rec['gmm_gate_up_TFLOPs']:.0f}/{rec['gmm_down_TFLOPs']:.0f} shared "
              f"{rec['shared_gemms_TFLOPs']:.0f}", flush=True)
        path = write_results("moe_breakdown", records, extra=dict(bf16_gemm_TFLOPs=tf))
        if out_dir:
            shutil.copy(path, Path(out_dir) / path.name)
    return records


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--check", action="store_true")
    ap.add_argument("--bench", action="store_true")
    ap.add_argument("--sizes", default=",".join(MOE_SIZES))
    ap.add_argument("--tokens", default="1,8,64,1024,8192")
    ap.add_argument("--no-hf", action="store_true")
    ap.add_argument("--model-decode", action="store_true", help="the 35B-A3B model's decode tok/s")
    ap.add_argument("--batch", default="1,32", help="--model-decode: comma list of batch sizes")
    ap.add_argument("--layers", type=int, default=40, help="--model-decode: decoder layers (40: the real model)")
    ap.add_argument("--context", type=int, default=1024, help="--model-decode: tokens already in the cache")
    ap.add_argument("--profile", action="store_true", help="--model-decode: also one eager step's kernels by op")
    ap.add_argument("--timeline", action="store_true",
                    help="--model-decode, --mma-ab: the graph-replayed step / layer kernel by kernel")
    ap.add_argument("--moe-kernels", default="default",
                    help="--model-decode: comma list of default, mma, mma plain, stream, old (the decode MoE kernels: "
                         "moe.MMA, moe.STREAM)")
    ap.add_argument("--mma-ab", action="store_true", help="the tensor-core decode kernels' builds A/B (and stream)")
    ap.add_argument("--decode-ab", action="store_true", help="the decode kernels A/B (streaming vs older)")
    ap.add_argument("--reps", type=int, default=3, help="--decode-ab: interleaved repetitions")
    ap.add_argument("--sweep", action="store_true", help="--decode-ab: also the streaming kernels' knobs")
    ap.add_argument("--breakdown", action="store_true", help="the grouped-path layer stage by stage (--tokens)")
    ap.add_argument("--out", default=None)
    a = ap.parse_args(argv)
    print(f"{torch.cuda.get_device_name()} torch {torch.__version__} grouped_mm "
          f"{moe.grouped_mm_available(torch.device('cuda'))}", flush=True)
    bad = 0
    if a.check:
        t0 = time.perf_counter()
        bad = check()
        print(f"check: {bad} failures ({time.perf_counter() - t0:.1f} s)", flush=True)
    if a.bench:
        bench(a.sizes.split(","), [int(t) for t in a.tokens.split(",")], not a.no_hf, a.out)
    if a.decode_ab:
        decode_ab(a.sizes.split(","), [int(t) for t in a.tokens.split(",")], a.out, a.reps, a.sweep)
    if a.mma_ab:
        mma_ab(a.sizes.split(","), [int(t) for t in a.tokens.split(",")], a.out, a.reps, a.timeline)
    if a.breakdown:
        breakdown([int(t) for t in a.tokens.split(",")], a.out)
    if a.model_decode:
        model_decode([int(b) for b in a.batch.split(",")], a.layers, a.context, a.out, a.profile,
                     tuple(a.moe_kernels.split(",")), a.timeline)
    return 1 if bad else 0


if __name__ == "__main__":
    raise SystemExit(main())
