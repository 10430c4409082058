"""Vision-tower latency on our kernels beside Hugging Face's Qwen3_5VisionModel (sdpa), one run, one card.

    PYTHONPATH=. python3 tools/vision_tower_gpu.py [--towers 0.8B 9B] [--cases 1x448 1x1024 1x2048 8x448]
                                                     [--out DIR] [--plot PATH]

Random weights at the real shapes (HF initialisation, bf16); our tower loads HF's state dict, so both compute
the same function and the script also reports their relative L2 difference. For each case:
  hf_ms        HF eager forward (sdpa attention)
  eager_ms     our tower, kernels backend, no graph
  graph_ms     our tower replayed from a CUDA graph captured for that grid set
  floor_ms     depth x (the tower's GEMMs timed alone through cuBLAS + our attention kernel timed alone, each
               replayed from a CUDA graph)
               + merger GEMMs: what no implementation that keeps these GEMMs and this attention can beat
Results JSON (card, commit, date) under --out (default benchmarks/results), and a latency plot.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import bf16_gemm_TFLOPs, copy_bandwidth_TBps, cuda_time_ms, write_results  # noqa: E402
from benchmarks.common import graph_ms as replayed_ms  # noqa: E402

TOWERS = {
    "0.8B": dict(depth=12, hidden_size=768, num_heads=12, intermediate_size=3072, out_hidden_size=1024),
    "9B": dict(depth=27, hidden_size=1152, num_heads=16, intermediate_size=4304, out_hidden_size=4096),
}


def hf_tower(spec):
    from transformers import Qwen3_5Config
    from transformers.models.qwen3_5.modeling_qwen3_5 import Qwen3_5VisionModel

    vc = dict(spec, patch_size=16, temporal_patch_size=2, spatial_merge_size=2, num_position_embeddings=2304,
              hidden_act="gelu_pytorch_tanh", in_channels=3)
    cfg = Qwen3_5Config(vision_config=vc).vision_config
    cfg._attn_implementation = "sdpa"
    torch.manual_seed(0)
    return Qwen3_5VisionModel(cfg).to("cuda", torch.bfloat16).eval()


def our_tower(spec, hf):
    from model.config import VisionConfig
    from model.ops import ops_for
    from model.vision import VisionTower

    cfg = VisionConfig(**spec)
    weights = {k: v.detach() for k, v in hf.state_dict().items()}
    return VisionTower(cfg, weights, ops_for("kernels"))


def floor_ms(spec, n_tokens, seg_lens):
    """Sum of the tower's GEMMs (timed alone) and our attention kernel (timed alone), each timed as 20 calls
    captured in one CUDA graph (benchmarks.common.graph_ms), as they run inside the tower's graph: with no host cost,
    which queued launches still paid for small images (the 448^2 floors read above the graphed tower)."""
    import kernels

    D, I, H, depth = spec["hidden_size"], spec["intermediate_size"], spec["num_heads"], spec["depth"]
    hd = D // H
    x = torch.randn(n_tokens, D, device="cuda", dtype=torch.bfloat16)
    wqkv = torch.randn(3 * D, D, device="cuda", dtype=torch.bfloat16)
    wo = torch.randn(D, D, device="cuda", dtype=torch.bfloat16)
    w1 = torch.randn(I, D, device="cuda", dtype=torch.bfloat16)
    w2 = torch.randn(D, I, device="cuda", dtype=torch.bfloat16)
    h = torch.randn(n_tokens, I, device="cuda", dtype=torch.bfloat16)
    gemm = replayed_ms(lambda: (F.linear(x, wqkv), F.linear(x, wo), F.linear(x, w1), F.linear(h, w2)))
    q = torch.randn(n_tokens, H, hd, device="cuda", dtype=torch.bfloat16)
    k, v = torch.randn_like(q), torch.randn_like(q)
    cu = torch.tensor([0] + list(torch.tensor(seg_lens).cumsum(0)), device="cuda", dtype=torch.int32)
    attn = replayed_ms(lambda: kernels.attention(q, k, v, cu, False, max_seqlen=max(seg_lens), validate=False))
    m = n_tokens // 4
    xm = torch.randn(m, 4 * D, device="cuda", dtype=torch.bfloat16)
    wm1 = torch.randn(4 * D, 4 * D, device="cuda", dtype=torch.bfloat16)
    wm2 = torch.randn(spec["out_hidden_size"], 4 * D, device="cuda", dtype=torch.bfloat16)
    merger = replayed_ms(lambda: F.linear(F.linear(xm, wm1), wm2))
    flops_gemm = 2 * n_tokens * (3 * D * D + D * D + 2 * D * I) * depth + 2 * m * (16 * D * D + 4 * D * spec["out_hidden_size"])
    flops_attn = sum(4 * s * s * hd * H for s in seg_lens) * depth
    return depth * (gemm + attn) + merger, dict(gemm_ms_per_layer=gemm, attn_ms_per_layer=attn, merger_ms=merger,
                                                 gemm_TFLOP=flops_gemm / 1e12, attn_TFLOP=flops_attn / 1e12)


def rel_l2(a, b):
    return ((a.float() - b.float()).norm() / b.float().norm()).item()


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--towers", nargs="+", default=list(TOWERS))
    ap.add_argument("--cases", nargs="+", default=["1x448", "1x1024", "1x2048", "8x448"])
    ap.add_argument("--out", default=None)
    ap.add_argument("--plot", default=None)
    args = ap.parse_args()
    from model.vision_graph import GraphedVisionTower

    ceil = dict(copy_TBps=copy_bandwidth_TBps(), bf16_gemm_TFLOPs=bf16_gemm_TFLOPs())
    print(f"card {torch.cuda.get_device_name()}  copy {ceil['copy_TBps']:.2f} TB/s  "
          f"gemm {ceil['bf16_gemm_TFLOPs']:.0f} TFLOP/s", flush=True)
    records = []
    for name in args.towers:
        spec = TOWERS[name]
        hf = hf_tower(spec)
        ours = our_tower(spec, hf)
        graphed = GraphedVisionTower(ours, max_graphs=2)
        for case in args.cases:
            n_img, side = (int(s) for s in case.split("x"))
            g = side // 16
            grid = torch.tensor([[1, g, g]] * n_img)
            pv = torch.randn(n_img * g * g, 1536, device="cuda", dtype=torch.bfloat16)
            with torch.inference_mode():
                ref = hf(pv, grid_thw=grid.cuda())
                ref = getattr(ref, "pooler_output", ref)
                out = ours(pv, grid)
                outg = graphed(pv, grid)
                hf_ms = cuda_time_ms(lambda: hf(pv, grid_thw=grid.cuda()), warmup=2, iters=10)
                eager_ms = cuda_time_ms(lambda: ours(pv, grid), warmup=2, iters=10)
                graph_ms = cuda_time_ms(lambda: graphed(pv, grid), warmup=2, iters=20)
                fl, parts = floor_ms(spec, n_img * g * g, [g * g] * n_img)
            rec = dict(tower=name, images=n_img, side=side, tokens=n_img * g * g, hf_ms=hf_ms, eager_ms=eager_ms,
                       graph_ms=graph_ms, floor_ms=fl, speedup_vs_hf=hf_ms / graph_ms,
                       rel_l2_vs_hf=rel_l2(out, ref), graph_equals_eager=bool(torch.equal(out, outg)), **parts)
            records.append(rec)
            print(f"{name:5s} {case:7s} HF {hf_ms:8.2f} ms | ours eager {eager_ms:8.2f} graph {graph_ms:8.2f} | "
                  f"floor {fl:7.2f} | x{hf_ms / graph_ms:5.2f} vs HF | relL2 {rec['rel_l2_vs_hf']:.2e} "
                  f"graph==eager {rec['graph_equals_eager']}", flush=True)
            graphed.clear()
        del hf, ours, graphed
        torch.cuda.empty_cache()
    path = write_results("vision_tower", records, extra=ceil, out_dir=args.out)
    print("wrote", path)
    if args.plot:
        plot(records, args.plot)
    return 0


def plot(records, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, tower in zip(axes, ("0.8B", "9B")):
        rs = sorted((r for r in records if r["tower"] == tower and r["images"] == 1), key=lambda r: r["tokens"])
        if not rs:
            continue
        xs = [r["side"] for r in rs]
        ax.plot(xs, [r["hf_ms"] for r in rs], "o-", label="HF transformers (sdpa)")
        ax.plot(xs, [r["graph_ms"] for r in rs], "s-", label="qwen35-kernels (graph)")
        ax.plot(xs, [r["floor_ms"] for r in rs], "k--", label="floor: cuBLAS GEMMs + our attention")
        ax.set_xlabel("image side (px), 1 image")
        ax.set_ylabel("latency (ms)")
        ax.set_yscale("log")
        ax.set_title(f"Qwen3.5 {tower} vision tower, bf16, {torch.cuda.get_device_name()}")
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    sys.exit(main())
