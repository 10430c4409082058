"""One-call GPU script for the gated delta rule kernels: check against the reference, then time beside
flash-linear-attention 0.6.0 (when importable).

    python3 tools/deltanet_gpu.py --check                 # kernels vs the fp64 recurrence, split/decode/graph checks
    python3 tools/deltanet_gpu.py --sanitize              # a few small calls (run under compute-sanitizer)
    python3 tools/deltanet_gpu.py --bench [--out DIR]     # prefill and decode beside FLA, JSON via write_results

Errors are ||out - ref|| / ||ref|| (and max-abs over max(1, max|ref|)) against reference.gated_delta_rule run in
fp64 on the same (rounded) inputs; final states likewise. Inputs look like the model's: q, k normal (l2-normalised
in the kernel), v normal, g = -exp(A_log) softplus(a + dt_bias), beta = sigmoid(b).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import reference as R  # noqa: E402
from kernels import deltanet as K  # noqa: E402
from kernels.runtime.timing import capture  # noqa: E402

TOL = {torch.bfloat16: 2e-2, torch.float16: 5e-3, torch.float32: 1e-4}  # rel L2, o and final state


def make_inputs(lens, Hk, Hv, dtype, init=True, seed=0, device="cuda", strided=False):
    gen = torch.Generator(device=device).manual_seed(seed)
    dev = dict(generator=gen, device=device)
    T = sum(lens)
    n = len(lens)
    if strided:  # q, k, v as column slices of one [T, C] tensor (the conv output of the model)
        C = 2 * Hk * 128 + Hv * 128
        mixed = torch.randn(T, C, **dev).to(dtype)
        q = mixed[:, : Hk * 128].view(T, Hk, 128)
        k = mixed[:, Hk * 128: 2 * Hk * 128].view(T, Hk, 128)
        v = mixed[:, 2 * Hk * 128:].view(T, Hv, 128)
    else:
        q = torch.randn(T, Hk, 128, **dev).to(dtype)
        k = torch.randn(T, Hk, 128, **dev).to(dtype)
        v = torch.randn(T, Hv, 128, **dev).to(dtype)
    a = torch.randn(T, Hv, **dev)
    A_log = torch.log(torch.empty(Hv, device=device).uniform_(1, 16, generator=gen))
    dt_bias = torch.randn(Hv, **dev) * 0.5
    g, beta = R.gdn_gates(a, torch.randn(T, Hv, **dev), A_log, dt_bias)
    cu = torch.tensor([0] + list(torch.tensor(lens).cumsum(0).tolist()), dtype=torch.int32, device=device)
    h0 = torch.randn(n, Hv, 128, 128, **dev) * 0.1 if init else None
    return q, k, v, g, beta, cu, h0


def rel(out, ref):
    o, r = out.double(), ref.double()
    if not bool(torch.isfinite(o).all()):
        return float("inf")
    den = float(r.norm())
    return float((o - r).norm()) / (den if den > 0 else 1.0)


def reference64(q, k, v, g, beta, cu, h0, chunked=False):
    f = R.chunked_gated_delta_rule if chunked else R.gated_delta_rule
    return f(q.double(), k.double(), v.double(), g.double(), beta.double(), cu,
             None if h0 is None else h0.double(), use_qk_l2norm=True)


def check(args) -> int:
    fails = 0
    cases = [  # (lens, Hk, Hv, dtype, init, max_seqlen hint, label)
        ([1, 63, 64, 65, 200], 2, 2, torch.bfloat16, True, None, "mixed lens 1:1"),
        ([1, 63, 64, 65, 200], 2, 4, torch.bfloat16, False, None, "mixed lens 1:2 no init"),
        ([300, 0, 129], 1, 3, torch.float16, True, None, "fp16 1:3 with empty"),
        ([130, 7], 2, 4, torch.float32, True, None, "fp32 (recurrent)"),
        ([64], 1, 1, torch.bfloat16, True, None, "one chunk"),
        ([1] * 8, 2, 4, torch.bfloat16, True, 1, "decode bf16"),
        ([1] * 5, 2, 2, torch.float16, True, 1, "decode fp16"),
        ([1] * 80, 2, 4, torch.bfloat16, True, 1, "decode b80 (128-thread)"),
        ([2] * 70, 1, 4, torch.float32, True, None, "fp32 b70 (128-thread)"),
        ([1000], 2, 2, torch.bfloat16, True, None, "long 1000"),
        ([2048, 1000, 33], 4, 8, torch.bfloat16, True, None, "long packed"),
    ]
    for lens, Hk, Hv, dt, init, ms, label in cases:
        for strided in (False, True):
            q, k, v, g, beta, cu, h0 = make_inputs(lens, Hk, Hv, dt, init=init, strided=strided)
            out = torch.full((sum(lens), Hv, 128), float("nan"), dtype=dt, device="cuda")
            fin = torch.full((len(lens), Hv, 128, 128), float("nan"), device="cuda")
            o, s = K.gated_delta_rule(q, k, v, g, beta, cu, h0, use_qk_l2norm=True, out=(out, fin),
                                      max_seqlen=ms)
            ro, rs = reference64(q, k, v, g, beta, cu, h0, chunked=sum(lens) > 1500)
            eo, es = rel(o, ro), rel(s, rs)
            ok = eo <= TOL[dt] and es <= TOL[dt]
            fails += not ok
            print(f"check {label:28s} strided={int(strided)} o_rel={eo:.2e} state_rel={es:.2e} {'ok' if ok else 'FAIL'}")
    # chunked path forced on decode-like shapes and recurrent path on longer ones agree with the reference
    q, k, v, g, beta, cu, h0 = make_inputs([5, 1, 70], 2, 4, torch.bfloat16)
    ro, rs = reference64(q, k, v, g, beta, cu, h0)
    for ms, label in ((None, "chunked"), (1, "recurrent")):
        o, s = K.gated_delta_rule(q, k, v, g, beta, cu, h0, use_qk_l2norm=True, max_seqlen=ms, validate=False)
        eo, es = rel(o, ro), rel(s, rs)
        ok = eo <= TOL[torch.bfloat16] and es <= TOL[torch.bfloat16]
        fails += not ok
        print(f"check path={label:10s} o_rel={eo:.2e} state_rel={es:.2e} {'ok' if ok else 'FAIL'}")
    # fused gates (a, b, A_log, dt_bias) on both paths
    from property_tests.cases.deltanet import build_gated_delta_rule
    for lens, ms in (([1, 63, 64, 65, 200], None), ([1] * 9, 1)):
        case = build_gated_delta_rule(lens, 2, 4, torch.bfloat16, seed=9, fused=True)
        q, k, v, a, b, A_log, dt_bias, cu, h0 = case.on("cuda")
        want = R.fused_gated_delta_rule(q.double(), k.double(), v.double(), a.double(), b.double(), A_log.double(),
                                        dt_bias.double(), cu, h0.double(), use_qk_l2norm=True)
        o, s = K.fused_gated_delta_rule(q, k, v, a, b, A_log, dt_bias, cu, h0, use_qk_l2norm=True, max_seqlen=ms)
        eo, es = rel(o, want[0]), rel(s, want[1])
        ok = eo <= TOL[torch.bfloat16] and es <= TOL[torch.bfloat16]
        fails += not ok
        print(f"check fused gates {str(ms):5s} o_rel={eo:.2e} state_rel={es:.2e} {'ok' if ok else 'FAIL'}")
    # split: a prefill of the first part, then the rest with the state carried == one pass; then decode steps
    lens = [300, 129]
    q, k, v, g, beta, cu, h0 = make_inputs(lens, 2, 4, torch.bfloat16)
    o_all, s_all = K.gated_delta_rule(q, k, v, g, beta, cu, h0, use_qk_l2norm=True)
    cut = [100, 64]
    idx1 = torch.cat([torch.arange(0, 100), torch.arange(300, 364)]).cuda()
    idx2 = torch.cat([torch.arange(100, 300), torch.arange(364, 429)]).cuda()
    cu1 = torch.tensor([0, 100, 164], dtype=torch.int32, device="cuda")
    cu2 = torch.tensor([0, 200, 265], dtype=torch.int32, device="cuda")
    o1, s1 = K.gated_delta_rule(q[idx1], k[idx1], v[idx1], g[idx1], beta[idx1], cu1, h0, use_qk_l2norm=True)
    o2, s2 = K.gated_delta_rule(q[idx2], k[idx2], v[idx2], g[idx2], beta[idx2], cu2, s1, use_qk_l2norm=True)
    es = rel(s2, s_all)
    eo = rel(torch.cat([o1, o2])[torch.argsort(torch.cat([idx1, idx2]))], o_all)
    ok = eo <= TOL[torch.bfloat16] and es <= TOL[torch.bfloat16]
    fails += not ok
    print(f"check split {cut} o_rel={eo:.2e} state_rel={es:.2e} {'ok' if ok else 'FAIL'}")
    # prefill then 5 in-place decode steps == one prefill of the whole
    lens = [200, 77]
    steps = 5
    q, k, v, g, beta, cu, h0 = make_inputs([x + steps for x in lens], 2, 4, torch.bfloat16, seed=3)
    o_all, s_all = K.gated_delta_rule(q, k, v, g, beta, cu, h0, use_qk_l2norm=True)
    starts = cu[:-1].long()
    pre = torch.cat([torch.arange(int(s), int(s) + L) for s, L in zip(starts.tolist(), lens)]).cuda()
    cu_p = torch.tensor([0, lens[0], sum(lens)], dtype=torch.int32, device="cuda")
    _, state = K.gated_delta_rule(q[pre], k[pre], v[pre], g[pre], beta[pre], cu_p, h0, use_qk_l2norm=True)
    cu_d = torch.arange(3, dtype=torch.int32, device="cuda")
    worst = 0.0
    for st in range(steps):
        t = torch.tensor([int(starts[0]) + lens[0] + st, int(starts[1]) + lens[1] + st], device="cuda")
        od, _ = K.gated_delta_rule(q[t], k[t], v[t], g[t], beta[t], cu_d, state, use_qk_l2norm=True,
                                   final_state=state, max_seqlen=1, validate=False)
        worst = max(worst, rel(od, o_all[t]))
    es = rel(state, s_all)
    ok = worst <= TOL[torch.bfloat16] and es <= TOL[torch.bfloat16]
    fails += not ok
    print(f"check prefill+{steps} decode o_rel={worst:.2e} state_rel={es:.2e} {'ok' if ok else 'FAIL'}")
    # bitwise repeatable, and the same under CUDA-graph replay
    q, k, v, g, beta, cu, h0 = make_inputs([4096, 1000], 4, 8, torch.bfloat16, seed=5)
    a1 = K.gated_delta_rule(q, k, v, g, beta, cu, h0, use_qk_l2norm=True)
    a2 = K.gated_delta_rule(q, k, v, g, beta, cu, h0, use_qk_l2norm=True)
    same = torch.equal(a1[0], a2[0]) and torch.equal(a1[1], a2[1])
    fails += not same
    print(f"check bitwise repeatable {'ok' if same else 'FAIL'}")
    outs = {}

    def fn():
        outs["r"] = K.gated_delta_rule(q, k, v, g, beta, cu, h0, use_qk_l2norm=True, validate=False)
    capture(fn).replay()
    torch.cuda.synchronize()
    same = torch.equal(outs["r"][0], a1[0]) and torch.equal(outs["r"][1], a1[1])
    fails += not same
    print(f"check graph replay equals eager {'ok' if same else 'FAIL'}")
    print(f"CHECK {'PASSED' if fails == 0 else f'FAILED ({fails})'}")
    return fails


def sanitize(args) -> int:
    for lens, Hk, Hv, dt, ms in (([1, 63, 64, 65, 130], 1, 2, torch.bfloat16, None), ([3, 0, 70], 1, 1, torch.float16, None),
                                 ([1, 1, 1], 1, 2, torch.bfloat16, 1), ([20, 1], 1, 1, torch.float32, None),
                                 ([1] * 80, 1, 4, torch.bfloat16, 1), ([200, 3], 1, 1, torch.bfloat16, None)):
        q, k, v, g, beta, cu, h0 = make_inputs(lens, Hk, Hv, dt)
        # every state-pass build on the prefill cases (the transposed one at each warp count, the warp-specialised)
        builds = [("t", b) for b in K.STATE_T_BUILDS] + [("w", None)]
        for kern, build in (builds if ms is None and dt != torch.float32 else ((K.STATE_KERNEL, None),)):
            saved = K.STATE_KERNEL, K.STATE_T_FORCE
            K.STATE_KERNEL, K.STATE_T_FORCE = kern, build
            K.gated_delta_rule(q, k, v, g, beta, cu, h0, use_qk_l2norm=True, max_seqlen=ms)
            K.STATE_KERNEL, K.STATE_T_FORCE = saved
    torch.cuda.synchronize()
    print("SANITIZE RUN DONE")
    return 0


def flops_prefill(T, Hv, nchunks):
    """Matrix FLOPs of the chunked algorithm per value head and chunk of 64 (d = 128): K K^T and Q K^T (2 x 1M),
    W and U (2 x 1M), W S and Q S (2 x 2M), Aqk Vn (1M), K^T Vn (2M) ~ 11.5 MFLOP; scaled by the chunk count."""
    c, d = 64, 128
    per_chunk = 2 * (2 * c * c * d) + 2 * (2 * c * c * d) + 2 * (2 * c * d * d) + 2 * c * c * d + 2 * c * d * d
    return per_chunk * nchunks * Hv


def bench(args) -> int:
    from benchmarks.common import copy_bandwidth_TBps, graph_ms, queued_ms, write_results

    chunk_gated_delta_rule = fused_recurrent_gated_delta_rule = None
    if not args.no_fla:
        try:
            from fla.ops.gated_delta_rule import chunk_gated_delta_rule, fused_recurrent_gated_delta_rule
        except Exception as e:  # noqa: BLE001
            print("FLA not importable:", e)
    copy = copy_bandwidth_TBps()
    print(f"copy {copy:.2f} TB/s")
    records = []
    heads = [tuple(int(x) for x in h.split("/")) for h in args.heads.split(",")]
    lens_cases = [[int(x.split("x")[1])] * int(x.split("x")[0]) if "x" in x else [int(x)] for x in args.lens.split(",")]
    if args.quick:
        heads, lens_cases = [(16, 16), (16, 64)], [[4096], [32768]]
    for Hk, Hv in heads:
        for B in [int(b) for b in args.batches.split(",")] if args.batches else []:
            q, k, v, g, beta, cu, h0 = make_inputs([1] * B, Hk, Hv, torch.bfloat16)
            state = h0.clone()
            ours = lambda: K.gated_delta_rule(q, k, v, g, beta, cu, state, use_qk_l2norm=True, final_state=state,
                                              max_seqlen=1, validate=False)
            sbytes = 2 * B * Hv * 128 * 128 * 4
            rec = {"op": "gated_delta_rule", "kind": "decode", "hk": Hk, "hv": Hv, "batch": B,
                   "ours_queued_us": queued_ms(ours, 20) * 1e3, "ours_graph_us": graph_ms(ours, 20) * 1e3,
                   "state_bytes": sbytes}
            rec["ours_state_TBps"] = sbytes / (rec["ours_graph_us"] * 1e-6) / 1e12
            rec["ours_pct_copy"] = 100 * rec["ours_state_TBps"] / copy
            if fused_recurrent_gated_delta_rule is not None:
                qb, kb, vb = q[:, None], k[:, None], v[:, None]
                gb, bb = g[:, None], beta[:, None].to(torch.bfloat16)
                st2 = h0.clone()
                fla = lambda: fused_recurrent_gated_delta_rule(qb, kb, vb, gb, beta=bb, scale=128 ** -0.5,
                                                               initial_state=st2, output_final_state=True,
                                                               use_qk_l2norm_in_kernel=True)
                rec["fla_queued_us"] = queued_ms(fla, 20) * 1e3
                try:
                    rec["fla_graph_us"] = graph_ms(fla, 20) * 1e3
                except Exception as e:  # noqa: BLE001
                    rec["fla_graph_us"] = None
                    rec["fla_graph_error"] = str(e)[:200]
                fb = rec["fla_graph_us"] or rec["fla_queued_us"]
                rec["x_fla_graph"] = fb / rec["ours_graph_us"]
                fo, fs = fla()
                state.copy_(h0)
                oo, os_ = ours()
                rec["o_rel_vs_fla"] = rel(oo, fo[:, 0])
                rec["state_rel_vs_fla"] = rel(os_, fs)
            records.append(rec)
            print(json.dumps({k_: (round(v_, 4) if isinstance(v_, float) else v_) for k_, v_ in rec.items()}))
    for Hk, Hv in heads:
        for lens in lens_cases if args.lens else []:
            T = sum(lens)
            q, k, v, g, beta, cu, h0 = make_inputs(lens, Hk, Hv, torch.bfloat16)
            nch = sum(-(-L // 64) for L in lens)
            fl = flops_prefill(T, Hv, nch)
            ms_hint = max(lens)
            ours = lambda: K.gated_delta_rule(q, k, v, g, beta, cu, h0, use_qk_l2norm=True, max_seqlen=ms_hint,
                                              validate=False)
            rec = {"op": "gated_delta_rule", "kind": "prefill", "hk": Hk, "hv": Hv, "lens": f"{len(lens)}x{lens[0]}",
                   "flop": fl, "ours_queued_ms": queued_ms(ours, 10), "ours_graph_ms": graph_ms(ours, 10)}
            if chunk_gated_delta_rule is not None and not args.no_fla_prefill:
                cu64 = cu.long()
                qb, kb, vb = q[None], k[None], v[None]
                gb, bb = g[None], beta[None].to(torch.bfloat16)
                cpu_cu = cu64.cpu()
                fla = lambda: chunk_gated_delta_rule(qb, kb, vb, gb, bb, scale=128 ** -0.5, initial_state=h0,
                                                     output_final_state=True, use_qk_l2norm_in_kernel=True,
                                                     cu_seqlens=cu64, cu_seqlens_cpu=cpu_cu)
                rec["fla_queued_ms"] = queued_ms(fla, 10)
                try:
                    rec["fla_graph_ms"] = graph_ms(fla, 10)
                except Exception as e:  # noqa: BLE001
                    rec["fla_graph_ms"] = None
                    rec["fla_graph_error"] = str(e)[:200]
                    torch.cuda.synchronize()
                fo, fs = fla()
                oo, os_ = ours()
                rec["o_rel_vs_fla"] = rel(oo, fo[0])
                rec["state_rel_vs_fla"] = rel(os_, fs)
                fb = rec["fla_graph_ms"] or rec["fla_queued_ms"]
                rec["x_fla_graph"] = fb / rec["ours_graph_ms"]
                rec["x_fla_queued"] = rec["fla_queued_ms"] / rec["ours_queued_ms"]
            rec["ours_TFLOPs"] = fl / (rec["ours_graph_ms"] * 1e-3) / 1e12
            # bytes an ideal kernel moves: q, k, v, g, beta read, o written, the states read and written
            io = 2 * T * (2 * Hk + 2 * Hv) * 128 + 8 * T * Hv + 2 * len(lens) * Hv * 128 * 128 * 4
            rec["min_bytes"] = io
            rec["ours_pct_copy"] = 100 * io / (rec["ours_graph_ms"] * 1e-3) / 1e12 / copy
            records.append(rec)
            print(json.dumps({k_: (round(v_, 4) if isinstance(v_, float) else v_) for k_, v_ in rec.items()}))
            del q, k, v, g, beta, h0
            torch.cuda.empty_cache()
    out_dir = Path(args.out) if args.out else None
    config = {"warp_shape": list(K.WARP_SHAPE), "decode_pdl": K.DECODE_PDL,
              "state_cluster_by_bv": {str(b): c for b, c in K.STATE_CLUSTER_BY_BV.items()},
              "state_step_cost": {str(b): c for b, c in K.STATE_STEP_COST.items()}}
    path = write_results("deltanet", records, {"copy_TBps": copy, "config": config}, out_dir=out_dir)
    print("wrote", path)
    return 0


def sweep(args) -> int:
    """Graph-replayed time of every state-pass BV on the selected prefill shapes (the pick's cost table made to
    choose each in turn), and the per-kernel device times of one call (torch.profiler)."""
    from benchmarks.common import graph_ms

    heads = [tuple(int(x) for x in h.split("/")) for h in args.heads.split(",")]
    lens_cases = [[int(x.split("x")[1])] * int(x.split("x")[0]) if "x" in x else [int(x)] for x in args.lens.split(",")]
    saved = dict(K.STATE_STEP_COST)
    K.STATE_KERNEL = "w"  # the BV sweep is of the warp-specialised pass
    for Hk, Hv in heads:
        for lens in lens_cases:
            q, k, v, g, beta, cu, h0 = make_inputs(lens, Hk, Hv, torch.bfloat16)
            fn = lambda: K.gated_delta_rule(q, k, v, g, beta, cu, h0, use_qk_l2norm=True, max_seqlen=max(lens),
                                            validate=False)
            row = {}
            pick_ns = K.pick_state_stages
            limit = K._device_info(torch.cuda.current_device())[1]
            for bv in K.STATE_BV:
                K.STATE_STEP_COST.update({b: (0.0 if b == bv else 1e9) for b in K.STATE_BV})
                for ns in K.STATE_STAGES:
                    if K.state_smem_bytes(bv, ns) > limit:
                        continue
                    K.pick_state_stages = lambda _bv, _lim, ns=ns: ns
                    row[f"{bv}/{ns}"] = round(graph_ms(fn, 5), 4)
            K.pick_state_stages = pick_ns
            K.STATE_STEP_COST.update(saved)
            with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
                fn()
                torch.cuda.synchronize()
            kt = {}
            for e in prof.events():
                if e.device_type == torch.autograd.DeviceType.CUDA:
                    name = e.name.split("<")[0].split("::")[-1][:28]
                    us = getattr(e, "device_time", None)
                    us = getattr(e, "cuda_time", 0.0) if us is None else us
                    kt[name] = kt.get(name, 0.0) + us / 1e3
            print(f"sweep {Hk}/{Hv} {len(lens)}x{lens[0]}: graph ms by BV/stages {row}  default pick "
                  f"{K.pick_state_bv(len(lens), Hv, *K._device_info(torch.cuda.current_device()))}  kernels ms "
                  + " ".join(f"{n}={t:.4f}" for n, t in kt.items()))
            del q, k, v, g, beta, h0
    return 0


def trials(args) -> int:
    """Launch-configuration trials, each record printed (and appended to $OUT/deltanet_trials.jsonl) as soon as it
    is measured, no new work started past --budget seconds: part 'b', the cluster (multicast) state pass against
    the plain one (bitwise) and prefill times by BV x cluster size; part 'a', prefill times by BV and of the prep
    alone, the decode kernels by warp shape with and without PDL, then FLA's decode step."""
    from benchmarks.common import graph_ms

    T0 = time.time()
    OUT = args.out or "/tmp"
    budget = args.budget
    part = args.trials
    K.STATE_KERNEL = "w"  # these trials are of the warp-specialised pass (BV, clusters) and the decode kernels
    CLS = (1,) if part == "a" else K.STATE_CLUSTERS

    def left():
        return budget - (time.time() - T0)

    def emit(rec):
        rec = {k: (round(v, 4) if isinstance(v, float) else v) for k, v in rec.items()}
        rec["t"] = round(time.time() - T0, 1)
        print(json.dumps(rec), flush=True)
        with open(os.path.join(OUT, "deltanet_trials.jsonl"), "a") as f:
            f.write(json.dumps(rec) + "\n")

    def run(q, k, v, g, beta, cu, h0, ms=None):
        return K.gated_delta_rule(q, k, v, g, beta, cu, h0, use_qk_l2norm=True, max_seqlen=ms, validate=False)

    # 1. cluster build == plain build, bitwise (same shared data, same mma order); the plain one vs fp64
    if part == "b":
        for lens, Hk, Hv, dt in (([1, 63, 64, 65, 200, 0, 1000], 2, 4, torch.bfloat16),
                                 ([4096, 130], 16, 16, torch.bfloat16), ([300, 5, 129], 1, 2, torch.float16),
                                 ([2048], 16, 64, torch.bfloat16)):
            q, k, v, g, beta, cu, h0 = make_inputs(lens, Hk, Hv, dt)
            K.STATE_CLUSTER = 1
            base = run(q, k, v, g, beta, cu, h0)
            rec = {"case": f"mc check {lens} {Hk}/{Hv} {dt}"}
            if sum(lens) < 2000:
                ro, rs = reference64(q, k, v, g, beta, cu, h0)
                rec["plain_vs_ref"] = (rel(base[0], ro), rel(base[1], rs))
            for bv in K.STATE_BV:
                saved = dict(K.STATE_STEP_COST)
                K.STATE_STEP_COST.update({b: (0.0 if b == bv else 1e9) for b in K.STATE_BV})
                base = run(q, k, v, g, beta, cu, h0)
                for cl in K.STATE_CLUSTERS:
                    if (128 // bv) % cl:
                        continue
                    K.STATE_CLUSTER = cl
                    key = f"bv{bv}cl{cl}"
                    try:
                        got = run(q, k, v, g, beta, cu, h0)
                        torch.cuda.synchronize()
                        same = torch.equal(got[0], base[0]) and torch.equal(got[1], base[1])
                        rec[key] = "equal" if same else \
                            f"DIFF o {rel(got[0], base[0]):.2e} s {rel(got[1], base[1]):.2e}"
                    except Exception as e:  # noqa: BLE001
                        rec[key] = "ERR " + str(e)[:120]
                    K.STATE_CLUSTER = None
                K.STATE_STEP_COST.update(saved)
            emit(rec)

    # 2. prefill: graph-replayed time by cluster size at the pick's BV, and by BV at the best; the prep alone
    plain_launch = K._launch

    def prep_only(device, expr, *a, **kw):
        if "chunk_state" not in expr:
            plain_launch(device, expr, *a, **kw)

    for Hk, Hv, lens in ((16, 16, [32768]), (16, 64, [32768]), (16, 16, [4096]), (16, 16, [1024] * 8),
                         (16, 64, [1024] * 8), (16, 64, [4096]), (16, 32, [32768])):
        if left() < (9 if part == "a" else 2):
            break
        q, k, v, g, beta, cu, h0 = make_inputs(lens, Hk, Hv, torch.bfloat16)
        fn = lambda: run(q, k, v, g, beta, cu, h0, max(lens))
        rec = {"case": f"prefill{part} {Hk}/{Hv} {len(lens)}x{lens[0]}",
               "pick_bv": K.pick_state_bv(len(lens), Hv, *K._device_info(0))}
        saved = dict(K.STATE_STEP_COST)
        for bv in K.STATE_BV:
            K.STATE_STEP_COST.update({b: (0.0 if b == bv else 1e9) for b in K.STATE_BV})
            for cl in CLS:
                if (128 // bv) % cl:
                    continue
                K.STATE_CLUSTER = cl
                try:
                    rec[f"bv{bv}cl{cl}_ms"] = graph_ms(fn, 3)
                except Exception as e:  # noqa: BLE001
                    rec[f"bv{bv}cl{cl}_ms"] = "ERR " + str(e)[:100]
                    torch.cuda.synchronize()
            K.STATE_CLUSTER = None
        K.STATE_STEP_COST.update(saved)
        if part == "a":
            K._launch = prep_only
            rec["prep_only_ms"] = graph_ms(fn, 3)
            K._launch = plain_launch
        emit(rec)
        del q, k, v, g, beta, h0
        torch.cuda.empty_cache()

    if part == "b":
        print(f"done in {time.time() - T0:.1f} s")
        return 0
    # 3. decode: our variants (direct indexing from the max_seqlen=1 hint; PDL on/off), then FLA
    cases = {}
    shape0, pdl0 = K.WARP_SHAPE, K.DECODE_PDL
    for Hk, Hv, B in ((16, 16, 1), (16, 64, 1), (16, 16, 4), (16, 32, 1)):
        if left() < 4:
            break
        q, k, v, g, beta, cu, h0 = make_inputs([1] * B, Hk, Hv, torch.bfloat16)
        state = h0.clone()
        cases[(Hk, Hv, B)] = (q, k, v, g, beta, cu, h0)
        rec = {"case": f"decode {Hk}/{Hv} b{B}"}
        want = reference64(q, k, v, g, beta, cu, h0)
        for shape in K.WARP_SHAPES:
            for pdl in (False, True):
                K.WARP_SHAPE, K.DECODE_PDL = shape, pdl
                ours = lambda: K.gated_delta_rule(q, k, v, g, beta, cu, state, use_qk_l2norm=True,
                                                  final_state=state, max_seqlen=1, validate=False)
                state.copy_(h0)
                oo, os_ = ours()
                err = max(rel(oo, want[0]), rel(os_, want[1]))
                rec[f"{shape[0]}x{shape[1]}{'p' if pdl else ''}_us"] = (round(graph_ms(ours, 20) * 1e3, 3),
                                                                         round(err, 4))
        K.WARP_SHAPE, K.DECODE_PDL = shape0, pdl0
        ours = lambda: K.gated_delta_rule(q, k, v, g, beta, cu, state, use_qk_l2norm=True, final_state=state,
                                          max_seqlen=None, validate=False)
        rec["default_nohint_us"] = graph_ms(ours, 20) * 1e3
        emit(rec)
    if left() > 6:
        from fla.ops.gated_delta_rule import fused_recurrent_gated_delta_rule as fr
        for (Hk, Hv, B), (q, k, v, g, beta, cu, h0) in cases.items():
            if left() < 3:
                break
            st2 = h0.clone()
            qb, kb, vb, gb, bb = q[:, None], k[:, None], v[:, None], g[:, None], beta[:, None].to(torch.bfloat16)
            fla = lambda: fr(qb, kb, vb, gb, beta=bb, scale=128 ** -0.5, initial_state=st2, output_final_state=True,
                             use_qk_l2norm_in_kernel=True)
            fla()
            emit({"case": f"fla decode {Hk}/{Hv} b{B}", "fla_graph_us": graph_ms(fla, 20) * 1e3})
    print(f"done in {time.time() - T0:.1f} s")
    return 0


def trials_t(args) -> int:
    """The transposed state pass (STATE_KERNEL "t", every NW) against the warp-specialised one ("w"): errors vs the
    fp64 recurrence on small packed shapes, then graph-replayed prefill times of both in one process."""
    from benchmarks.common import graph_ms

    T0 = time.time()
    OUT = args.out or "/tmp"

    def emit(rec):
        rec = {k: (round(v, 5) if isinstance(v, float) else v) for k, v in rec.items()}
        rec["t"] = round(time.time() - T0, 1)
        rec["commit"] = os.environ.get("QWEN35_COMMIT")
        print(json.dumps(rec), flush=True)
        with open(os.path.join(OUT, "deltanet_trials_t.jsonl"), "a") as f:
            f.write(json.dumps(rec) + "\n")

    saved = K.STATE_KERNEL, K.STATE_T_FORCE

    def run(q, k, v, g, beta, cu, h0, kern, build=None, ms=None):
        K.STATE_KERNEL, K.STATE_T_FORCE = kern, build
        try:
            return K.gated_delta_rule(q, k, v, g, beta, cu, h0, use_qk_l2norm=True, max_seqlen=ms, validate=False)
        finally:
            K.STATE_KERNEL, K.STATE_T_FORCE = saved

    fails = 0
    for lens, Hk, Hv, dt, init in (([1, 63, 64, 65, 200, 0, 1000], 2, 4, torch.bfloat16, True),
                                   ([300, 5, 129], 1, 2, torch.float16, True), ([130, 7], 2, 8, torch.bfloat16, False),
                                   ([4096, 130], 16, 16, torch.bfloat16, True)):
        q, k, v, g, beta, cu, h0 = make_inputs(lens, Hk, Hv, dt, init=init)
        rec = {"case": f"t check {lens} {Hk}/{Hv} {dt}"}
        ro, rs = reference64(q, k, v, g, beta, cu, h0, chunked=sum(lens) > 1500)
        for kern, build in [("w", None)] + [("t", b) for b in K.STATE_T_BUILDS]:
            o, st = run(q, k, v, g, beta, cu, h0, kern, build)
            eo, es = rel(o, ro), rel(st, rs)
            ok = eo <= TOL[dt] and es <= TOL[dt]
            fails += not ok
            rec[f"c{build[0]}k{build[1]}" if build else kern] = (eo, es, "ok" if ok else "FAIL")
        emit(rec)
    for Hk, Hv, lens in ((16, 16, [32768]), (16, 64, [32768]), (16, 16, [4096]), (16, 16, [1024] * 8),
                         (16, 64, [1024] * 8), (16, 64, [4096]), (16, 32, [32768])):
        if time.time() - T0 > args.budget:
            break
        q, k, v, g, beta, cu, h0 = make_inputs(lens, Hk, Hv, torch.bfloat16)
        rec = {"case": f"t prefill {Hk}/{Hv} {len(lens)}x{lens[0]}",
               "pick": list(K.pick_state_t(len(lens), Hv, *K._device_info(0))), "prep_compact": K.PREP_COMPACT}
        base = run(q, k, v, g, beta, cu, h0, "w")
        for kern, build in [("w", None)] + [("t", b) for b in K.STATE_T_BUILDS] + [("t", None)]:
            fn = lambda: run(q, k, v, g, beta, cu, h0, kern, build, max(lens))
            got = fn()
            key = f"c{build[0]}k{build[1]}" if build else ("pick" if kern == "t" else kern)
            rec[f"{key}_ms"] = graph_ms(fn, 3)
            rec[f"{key}_vs_w"] = max(rel(got[0], base[0]), rel(got[1], base[1]))
        # the prep alone, in its two shared-memory layouts, and the picked build behind the compact prep
        plain_launch, compact0 = K._launch, K.PREP_COMPACT
        fn = lambda: run(q, k, v, g, beta, cu, h0, "t", None, max(lens))
        for compact in (False, True):
            K.PREP_COMPACT = compact
            got = fn()
            rec[f"pick{'c' if compact else ''}_ms"] = graph_ms(fn, 3)
            rec[f"pick{'c' if compact else ''}_vs_w"] = max(rel(got[0], base[0]), rel(got[1], base[1]))
            K._launch = lambda device, expr, *a, **kw: plain_launch(device, expr, *a, **kw) if "prep" in expr else None
            rec[f"prep{'c' if compact else ''}_ms"] = graph_ms(fn, 3)
            K._launch = plain_launch
        K.PREP_COMPACT = compact0
        emit(rec)
        del q, k, v, g, beta, h0, base
        torch.cuda.empty_cache()
    print(f"T-CHECK {'PASSED' if fails == 0 else f'FAILED ({fails})'} in {time.time() - T0:.1f} s")
    return int(fails > 0)


def fla_prefill(args) -> int:
    """FLA 0.6.0's chunk_gated_delta_rule graph-replayed on equal-length batches ([B, T, H, 128], no cu_seqlens: its
    fastest form), beside ours; Triton's autotune results are cached (FLA sets cache_results) in TRITON_CACHE_DIR."""
    from benchmarks.common import graph_ms, queued_ms
    from fla.ops.gated_delta_rule import chunk_gated_delta_rule

    T0 = time.time()
    OUT = args.out or "/tmp"
    for spec in args.fla_shapes.split(","):
        hk, hv, B, L = (int(x) for x in spec.replace("x", "/").split("/"))
        if time.time() - T0 > args.budget:
            break
        lens = [L] * B
        q, k, v, g, beta, cu, h0 = make_inputs(lens, hk, hv, torch.bfloat16)
        qb, kb, vb = (x.view(B, L, *x.shape[1:]) for x in (q, k, v))
        gb, bb = g.view(B, L, hv), beta.view(B, L, hv).to(torch.bfloat16)
        fla = lambda: chunk_gated_delta_rule(qb, kb, vb, gb, bb, scale=128 ** -0.5, initial_state=h0,
                                             output_final_state=True, use_qk_l2norm_in_kernel=True)
        t1 = time.time()
        fo, fs = fla()
        torch.cuda.synchronize()
        rec = {"case": f"fla prefill {hk}/{hv} {B}x{L}", "first_call_s": round(time.time() - t1, 1)}
        ours = lambda: K.gated_delta_rule(q, k, v, g, beta, cu, h0, use_qk_l2norm=True, max_seqlen=L, validate=False)
        oo, os_ = ours()
        rec["o_rel_vs_fla"] = rel(oo, fo.reshape(oo.shape))
        rec["state_rel_vs_fla"] = rel(os_, fs)
        rec["fla_queued_ms"] = queued_ms(fla, 10)
        try:
            rec["fla_graph_ms"] = graph_ms(fla, 10)
        except Exception as e:  # noqa: BLE001
            rec["fla_graph_ms"] = None
            rec["fla_graph_error"] = str(e)[:200]
            torch.cuda.synchronize()
        rec["ours_graph_ms"] = graph_ms(ours, 10)
        rec["x_fla_graph"] = (rec["fla_graph_ms"] or rec["fla_queued_ms"]) / rec["ours_graph_ms"]
        rec = {k_: (round(v_, 4) if isinstance(v_, float) else v_) for k_, v_ in rec.items()}
        rec["commit"] = os.environ.get("QWEN35_COMMIT")
        print(json.dumps(rec), flush=True)
        with open(os.path.join(OUT, "deltanet_fla_prefill.jsonl"), "a") as f:
            f.write(json.dumps(rec) + "\n")
    return 0


def once(args) -> int:
    """One prefill call per --once shape (Hk/Hv/BxL) after a warm-up call: the target of an ncu run."""
    for spec in args.once.split(","):
        hk, hv, B, L = (int(x) for x in spec.replace("x", "/").split("/"))
        q, k, v, g, beta, cu, h0 = make_inputs([L] * B, hk, hv, torch.bfloat16)
        for _ in range(2):
            K.gated_delta_rule(q, k, v, g, beta, cu, h0, use_qk_l2norm=True, max_seqlen=L, validate=False)
        torch.cuda.synchronize()
    return 0


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--check", action="store_true")
    ap.add_argument("--sanitize", action="store_true")
    ap.add_argument("--bench", action="store_true")
    ap.add_argument("--sweep", action="store_true", help="state-pass BV sweep + per-kernel times")
    ap.add_argument("--quick", action="store_true", help="bench fewer shapes")
    ap.add_argument("--no-fla", action="store_true", help="time only our kernels")
    ap.add_argument("--no-fla-prefill", action="store_true",
                    help="FLA for decode only (its prefill autotunes for minutes on a fresh machine)")
    ap.add_argument("--heads", default="16/16,16/32,16/48,16/64", help="Hk/Hv pairs")
    ap.add_argument("--lens", default="4096,32768,8x1024", help="prefill packings (N or BxN); '' for none")
    ap.add_argument("--batches", default="1,32,256", help="decode batches; '' for none")
    ap.add_argument("--out", default=os.environ.get("OUT"))
    ap.add_argument("--trials", choices=("a", "b", "t"), help="launch-configuration trials (see trials(), trials_t())")
    ap.add_argument("--fla-prefill", action="store_true", help="FLA's chunked prefill graph-replayed (fla_prefill())")
    ap.add_argument("--fla-shapes", default="16/16/1x32768,16/64/1x32768,16/16/1x4096,16/16/8x1024",
                    help="--fla-prefill: Hk/Hv/BxL list")
    ap.add_argument("--budget", type=float, default=50.0, help="--trials: seconds after which no new work starts")
    ap.add_argument("--once", help="Hk/Hv/BxL list: one prefill call each after a warm-up (for ncu)")
    ap.add_argument("--state", choices=("auto", "t", "w"), help="state-pass kernel for every call (K.STATE_KERNEL)")
    args = ap.parse_args()
    if args.state:
        K.STATE_KERNEL = args.state
    rc = 0
    t = time.time()
    if args.sanitize:
        rc |= sanitize(args)
    if args.check:
        rc |= check(args) != 0
    if args.sweep:
        rc |= sweep(args)
    if args.bench:
        rc |= bench(args)
    if args.trials == "t":
        rc |= trials_t(args)
    elif args.trials:
        rc |= trials(args)
    if args.once:
        rc |= once(args)
    if args.fla_prefill:
        rc |= fla_prefill(args)
    print(f"done in {time.time() - t:.1f} s")
    return int(rc)


if __name__ == "__main__":
    raise SystemExit(main())
