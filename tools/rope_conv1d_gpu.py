"""Time the rope and conv1d kernels beside torch eager at the real 0.8B / 9B / 27B shapes (bf16), graph-replayed.

    python3 tools/rope_conv1d_gpu.py [--trials]      # OUT=dir writes rope_conv1d-<card>-<date>.json there

Prefill: a 16384-token prompt (H4_TOKENS=...); decode: 1, 8 and 64 rows (the conv state and the KV cache updated in
place, host checks off, as the model calls them). Inputs are made on the GPU (the registry's CPU builders are slow
at these sizes; `python3 -m benchmarks --families rope,conv1d` times the same ops from the registry). Each time is
20 calls replayed from one CUDA graph (benchmarks.common.graph_ms); bytes are what one pass must move, and % of copy
is against the device-to-device copy measured in the same run. --trials also times the kernels' other builds
(kernels.conv1d.TRIALS, kernels.rope.QK_TRIALS).
Goals (issue 12): prefill (16k tokens) >= 85 % of the copy; decode (1, 8, 64 rows) <= 3 us a call; each line says
ok or MISS, and the last lines list the misses.
"""
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402
from benchmarks.common import copy_bandwidth_TBps, graph_ms  # noqa: E402
from kernels import conv1d as KC, rope as KR  # noqa: E402
from property_tests.cases.conv1d import causal_conv1d_peers  # noqa: E402
from property_tests.cases.rope import apply_rope_peers, mrope_cos_sin_peers, qk_norm_rope_peers  # noqa: E402

T = int(os.environ.get("H4_TOKENS", 16384))
SIZES = {"0.8B": (8, 2, 16), "9B": (16, 4, 32), "27B": (24, 4, 48)}  # heads, kv heads, DeltaNet value heads
dev, bf = "cuda", torch.bfloat16
copy = copy_bandwidth_TBps()
print(f"{torch.cuda.get_device_name()} copy {copy*1e3:.0f} GB/s", flush=True)
rows = []
misses = []


def goal(op, case, us, pct):
    """The issue's goal for this record: ok / MISS (trial builds and small table builds: none)."""
    if "trial" in op:
        return ""
    if "decode" in case or op == "mrope_cos_sin" and case != str(T):  # mrope at 64 tokens: a decode size
        ok, what = us <= 3.0, "> 3 us"
    else:
        ok, what = pct >= 85, "< 85 % of copy"
    if not ok:
        misses.append(f"{op} {case} {us:.2f} us {pct:.1f} %")
    return "ok" if ok else f"MISS ({what})"


def rec(op, case, nbytes, ours, peer=None):
    ms = graph_ms(ours)
    pm = graph_ms(peer) if peer else None
    r = dict(op=op, case=case, us=round(ms * 1e3, 2), GBps=round(nbytes / ms / 1e6, 1),
             pct_copy=round(100 * nbytes / (ms * 1e-3) / 1e12 / copy, 1),
             torch_us=round(pm * 1e3, 2) if pm else None, x_torch=round(pm / ms, 2) if pm else None)
    rows.append(r)
    print(f"{op:14s} {case:22s} {r['us']:9.2f} us {r['GBps']:8.0f} GB/s {r['pct_copy']:6.1f} %copy"
          f"   torch {r['torch_us'] or 0:9.2f} us  x{r['x_torch'] or 0:.2f}  {goal(op, case, r['us'], r['pct_copy'])}",
          flush=True)


for size, (hq, hkv, hv) in SIZES.items():
    C = 2 * 16 * 128 + hv * 128
    w = torch.randn(C, 4, device=dev, dtype=bf) * 0.5
    # conv prefill: one T-token prompt from the zero state
    x = torch.randn(T, C, device=dev, dtype=bf)
    cu = torch.tensor([0, T], dtype=torch.int32, device=dev)
    st = torch.zeros(1, C, 3, device=dev, dtype=bf)
    rec("causal_conv1d", f"{size}-prefill-{T}", 2 * T * C * 2 + C * 8 + C * 3 * 2,
        lambda: KC.causal_conv1d(x, w, cu, None, state_out=st, max_seqlen=T, validate=False),
        causal_conv1d_peers((x, w, cu, None))["torch"])
    for n in (1, 8, 64):
        xn = torch.randn(n, C, device=dev, dtype=bf)
        cun = torch.arange(n + 1, dtype=torch.int32, device=dev)
        sn = torch.randn(n, C, 3, device=dev, dtype=bf)
        rec("causal_conv1d", f"{size}-decode-b{n}", 2 * n * C * 2 + 2 * n * C * 3 * 2 + C * 8,
            lambda: KC.causal_conv1d(xn, w, cun, sn, state_out=sn, max_seqlen=1, validate=False),
            causal_conv1d_peers((xn, w, cun, sn))["torch"])
    del x
    # qk_norm_rope prefill and decode (cache of 1024 slots)
    qg = torch.randn(T, hq, 512, device=dev, dtype=bf)
    k = torch.randn(T, hkv, 256, device=dev, dtype=bf)
    wq, wk = torch.randn(256, device=dev, dtype=bf) * 0.3, torch.randn(256, device=dev, dtype=bf) * 0.3
    ang = torch.rand(T, 32, device=dev) * 1000
    cos, sin = ang.cos(), ang.sin()
    nb = (T * hq * 256 + T * hkv * 256) * 2 * 2 + 1024 + T * 32 * 8
    rec("qk_norm_rope", f"{size}-prefill-{T}", nb, lambda: KR.qk_norm_rope(qg, k, wq, wk, cos, sin, 1e-6),
        qk_norm_rope_peers((qg, k, wq, wk, cos, sin, 1e-6))["torch"])
    xq = qg[..., :256].contiguous()
    rec("apply_rope", f"{size}-q-{T}", 2 * T * hq * 256 * 2 + T * 32 * 8, lambda: KR.apply_rope(xq, cos, sin),
        apply_rope_peers((xq, cos, sin))["torch"])
    del qg, xq
    for B in (1, 8, 64):
        qgb, kb, vb = (torch.randn(B, h, dd, device=dev, dtype=bf) for h, dd in ((hq, 512), (hkv, 256), (hkv, 256)))
        kc = torch.zeros(B, 1024, hkv, 256, device=dev, dtype=bf)
        vc = torch.zeros_like(kc)
        cub = torch.arange(B + 1, dtype=torch.int32, device=dev)
        lens = torch.randint(0, 1000, (B,), dtype=torch.int32, device=dev)
        nb = (B * hq * 256 + B * hkv * 256) * 2 * 2 + 1024 + B * 32 * 8 + 3 * B * hkv * 256 * 2
        rec("qk_norm_rope", f"{size}-decode-b{B}", nb,
            lambda: KR.qk_norm_rope(qgb, kb, wq, wk, cos[:B], sin[:B], 1e-6, v=vb, k_cache=kc, v_cache=vc,
                                    cu_seqlens=cub, lengths=lens, validate=False),
            qk_norm_rope_peers((qgb, kb, wq, wk, cos[:B], sin[:B], 1e-6))["torch"])
for n in (T, 64):
    pos = torch.randint(0, T, (3, n), device=dev)
    KR.mrope_cos_sin(pos, 64, 1e7)  # the inv_freq table is built once, outside capture
    rec("mrope_cos_sin", f"{n}", 3 * n * 8 + 2 * n * 32 * 4, lambda: KR.mrope_cos_sin(pos, 64, 1e7, (11, 11, 10), True),
        mrope_cos_sin_peers((pos, 64, 1e7, (11, 11, 10), True))["torch"])

if "--trials" in sys.argv:
    for size, (hq, hkv, hv) in SIZES.items():
        C = 2 * 16 * 128 + hv * 128
        w = torch.randn(C, 4, device=dev, dtype=bf)
        x = torch.randn(T, C, device=dev, dtype=bf)
        cu = torch.tensor([0, T], dtype=torch.int32, device=dev)
        for tr in (None,) + KC.TRIALS:
            rec("conv-trial", f"{size}-{tr}", 2 * T * C * 2 + C * 8,
                lambda: KC.causal_conv1d(x, w, cu, None, max_seqlen=T, validate=False, _trial=tr))
        del x
        qg = torch.randn(T, hq, 512, device=dev, dtype=bf)
        k = torch.randn(T, hkv, 256, device=dev, dtype=bf)
        wq = torch.randn(256, device=dev, dtype=bf) * 0.3
        ang = torch.rand(T, 32, device=dev) * 1000
        cos, sin = ang.cos(), ang.sin()
        for ipw in (None,) + KR.QK_TRIALS:
            rec("qk-trial", f"{size}-ipw{ipw or 2}", (T * hq * 256 + T * hkv * 256) * 2 * 2 + T * 32 * 8,
                lambda: KR.qk_norm_rope(qg, k, wq, wq, cos, sin, 1e-6, _ipw=ipw))
        del qg, k
print(f"goal misses: {len(misses)}" + "".join(f"\n  {m}" for m in misses))
out = os.environ.get("OUT")
if out:
    from benchmarks.common import write_results
    print("wrote", write_results("rope_conv1d", rows, {"copy_TBps": round(copy, 3), "tokens": T,
                                 "timing": "20 calls replayed from one CUDA graph, best of 3 (benchmarks.common.graph_ms)",
                                 "script": "tools/rope_conv1d_gpu.py"}, out_dir=out))
