"""One-run sweep of the language-model kernels beside their peers: decode attention (default = PDL split + 4-slice combine) vs plain launches and SDPA; qk_norm_rope
staged vs lean at prefill, decode sizes with the cache; rms_norm 0.8B at 16k."""
import functools, json, os, time
import torch
from benchmarks.common import graph_ms, copy_bandwidth_TBps
from benchmarks.bench_decode_attention import Case, make_inputs, ours_fn, sdpa_fn
import kernels.decode_attention as K
t0 = time.time()
copy = copy_bandwidth_TBps()
print(f"copy {copy:.3f} TB/s", flush=True)
recs = []


def with_(fn, **kw):
    def run():
        saved = {k: getattr(K, k) for k in kw}
        for k, v in kw.items():
            setattr(K, k, v)
        try:
            return fn()
        finally:
            for k, v in saved.items():
                setattr(K, k, v)
    return run


def t(fn):
    return min(graph_ms(fn), graph_ms(fn)) * 1e3


for case in (Case(1, 8192, 8, 2), Case(1, 32768, 8, 2), Case(1, 131072, 8, 2), Case(32, 8192, 8, 2),
             Case(1, 1024, 8, 2), Case(8, 8192, 8, 2)):
    q, kc, vc, L = make_inputs(case)
    f = ours_fn(case, q, kc, vc, L)
    import reference
    if case.B * case.ctx <= 1 << 20:
        err = float((f().float() - reference.decode_attention(q, kc, vc, L).float()).abs().max())
        print(f"{case.tag} max err vs reference {err:.5f}", flush=True)
    vs = {"default": f, "no_pdl": with_(f, PDL=False)}
    for be in ("FLASH_ATTENTION", "CUDNN_ATTENTION"):
        try:
            vs[be.lower()] = sdpa_fn(case, q, kc, vc, be)[0]
        except Exception as e:
            print(be, str(e)[:80])
    res = {}
    for name, fn in vs.items():
        try:
            res[name] = t(fn)
        except Exception as e:
            print(case.tag, name, "not timed", str(e)[:100])
    best = min(v for k, v in res.items() if k.endswith("attention"))
    for name, us in res.items():
        pct = 100 * case.kv_bytes / (us * 1e-6) / 1e12 / copy
        print(f"{case.tag:16s} {name:16s} {us:8.2f} us {pct:5.1f} %copy  x{best / us:.2f} vs best SDPA", flush=True)
        recs.append(dict(case=case.tag, v=name, us=us, pct=pct))
    del q, kc, vc
    torch.cuda.empty_cache()
print(f"K.PDL={K.PDL}  da {time.time()-t0:.0f}s", flush=True)
from kernels import rope as KR
dev, bf = "cuda", torch.bfloat16
for hq, hkv in ((8, 2), (16, 4), (24, 4)):
    for B in (1, 8, 64):
        qgb = torch.randn(B, hq, 512, device=dev, dtype=bf)
        kb, vb = (torch.randn(B, hkv, 256, device=dev, dtype=bf) for _ in range(2))
        wq = torch.randn(256, device=dev, dtype=bf)
        kc = torch.zeros(B, 1024, hkv, 256, device=dev, dtype=bf); vc = torch.zeros_like(kc)
        cub = torch.arange(B + 1, dtype=torch.int32, device=dev)
        lens = torch.randint(0, 1000, (B,), dtype=torch.int32, device=dev)
        ang = torch.rand(B, 32, device=dev) * 1000; cos, sin = ang.cos(), ang.sin()
        us = t(lambda: KR.qk_norm_rope(qgb, kb, wq, wq, cos, sin, 1e-6, v=vb, k_cache=kc, v_cache=vc,
                                       cu_seqlens=cub, lengths=lens, validate=False))
        us4 = t(lambda: KR.qk_norm_rope(qgb, kb, wq, wq, cos, sin, 1e-6, v=vb, k_cache=kc, v_cache=vc,
                                        cu_seqlens=cub, lengths=lens, validate=False, _ipw=4))
        print(f"qk decode {hq}:{hkv} B{B} cache: default {us:5.2f} us ({'ok' if us <= 3 else 'MISS'} <= 3 us), "
              f"4 heads a warp {us4:5.2f} us", flush=True)
        recs.append(dict(case=f"qk{hq}:{hkv}B{B}", v="cache", us=us, us_ipw4=us4))
T = 16384
lq = KR._launch_qk
for hq, hkv in ((8, 2), (16, 4), (24, 4)):
    qg = torch.randn(T, hq, 512, device=dev, dtype=bf); k = torch.randn(T, hkv, 256, device=dev, dtype=bf)
    wq = torch.randn(256, device=dev, dtype=bf); ang = torch.rand(T, 32, device=dev) * 1000
    cos, sin = ang.cos(), ang.sin()
    nb = (T * hq * 256 + T * hkv * 256) * 2 * 2 + T * 32 * 8
    for name, kw in (("staged", {}), ("lean ipw4", {"lean": True}), ("lean ipw2", {"lean": True, "ipw": 2})):
        def fn(kw=kw):
            KR._launch_qk = functools.partial(lq, **{k: v for k, v in kw.items() if k == "lean"})
            try:
                return KR.qk_norm_rope(qg, k, wq, wq, cos, sin, 1e-6, _ipw=kw.get("ipw"))
            finally:
                KR._launch_qk = lq
        us = t(fn)
        pct = 100 * nb / (us * 1e-6) / 1e12 / copy
        print(f"qk prefill {hq}:{hkv} {name:10s} {us:8.2f} us {pct:5.1f} %copy", flush=True)
        recs.append(dict(case=f"qk{hq}:{hkv}T{T}", v=name, us=us, pct=pct))
    xq = qg[..., :256].contiguous()
    nb2 = 2 * T * hq * 256 * 2 + T * 32 * 8
    for name, kw in (("staged", {}), ("lean", {"lean": True})):
        def fn(kw=kw):
            KR._launch_qk = functools.partial(lq, **kw)
            try:
                return KR.apply_rope(xq, cos, sin)
            finally:
                KR._launch_qk = lq
        us = t(fn)
        pct = 100 * nb2 / (us * 1e-6) / 1e12 / copy
        print(f"apply_rope {hq} heads {name:10s} {us:8.2f} us {pct:5.1f} %copy", flush=True)
        recs.append(dict(case=f"apply_rope{hq}T{T}", v=name, us=us, pct=pct))
    del qg, k, xq
import sys
sys.path.insert(0, "tools")
from norms_gpu import cases  # noqa: E402
from kernels.registry import REGISTRY  # noqa: E402
for op in ("rms_norm", "add_rms_norm"):
    for label, args, nbytes in cases(op, 16384, torch.bfloat16):
        fn = REGISTRY[op].kernels["nvrtc"]
        us = t(lambda: fn(*args))
        pct = 100 * nbytes / (us * 1e-6) / 1e12 / copy
        print(f"{op} {label} {us:8.2f} us {pct:5.1f} %copy {'ok' if pct >= 85 else 'MISS'}", flush=True)
        recs.append(dict(case=label, v=op, us=us, pct=pct))
        del args
print(f"sweep total {time.time()-t0:.0f}s", flush=True)
json.dump(dict(suite="lm_kernels_sweep", card=torch.cuda.get_device_name(), date=time.strftime("%Y-%m-%d"),
               records=recs), open(os.path.join(os.environ.get("OUT", "/tmp"), "lm_kernels_sweep.json"), "w"), indent=1)
