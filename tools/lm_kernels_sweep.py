"""One-run sweep of the language-model kernels beside their peers: decode attention (default = PDL split + 4-slice
combine, early L2 prefetch on long chunks) vs no early prefetch, plain launches and SDPA; causal_conv1d decode (the
one-token kernel vs the general one); qk_norm_rope at decode sizes with the cache (PDL vs plain) and at prefill
(default lean vs staged vs streaming builds), apply_rope (default streaming vs staged); rms_norm 0.8B at 16k."""
import functools, json, os, time
import torch
from benchmarks.common import graph_ms, copy_bandwidth_TBps
from benchmarks.bench_decode_attention import Case, make_inputs, ours_fn, sdpa_fn
import kernels.decode_attention as K
t0 = time.time()
copy = copy_bandwidth_TBps()
print(f"copy {copy:.3f} TB/s", flush=True)
recs = []


def with_mod(mod, fn, **kw):
    """fn with module settings changed during the call (so a CUDA graph captures the launch as that variant)."""
    def run():
        saved = {k: getattr(mod, k) for k in kw}
        for k, v in kw.items():
            setattr(mod, k, v)
        try:
            return fn()
        finally:
            for k, v in saved.items():
                setattr(mod, k, v)
    return run


def with_(fn, **kw):
    return with_mod(K, fn, **kw)


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
    vs = {"default": f, "no_early": with_(f, EARLY=0), "no_pdl": with_(f, PDL=False)}
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
from kernels import rope as KR, conv1d as KC  # noqa: E402
from kernels.runtime import launch as LA  # noqa: E402
dev, bf = "cuda", torch.bfloat16
for size, hv in (("0.8B", 16), ("9B", 32), ("27B", 48)):
    C = 2 * 16 * 128 + hv * 128
    w = torch.randn(C, 4, device=dev, dtype=bf) * 0.5
    for n in (1, 8, 64):
        xn = torch.randn(n, C, device=dev, dtype=bf)
        cun = torch.arange(n + 1, dtype=torch.int32, device=dev)
        sn = torch.randn(n, C, 3, device=dev, dtype=bf)
        f = lambda: KC.causal_conv1d(xn, w, cun, sn, state_out=sn, max_seqlen=1, validate=False)  # noqa: E731
        us, us_old = t(f), t(with_mod(KC, f, DECODE_KERNEL=False))
        print(f"conv decode {size} b{n}: {us:5.2f} us ({'ok' if us <= 3 else 'MISS'} <= 3 us), general kernel "
              f"{us_old:5.2f} us", flush=True)
        recs.append(dict(case=f"conv{size}B{n}", v="decode", us=us, us_general=us_old))
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
        us4 = t(with_mod(LA, lambda: KR.qk_norm_rope(qgb, kb, wq, wq, cos, sin, 1e-6, v=vb, k_cache=kc, v_cache=vc,
                                                     cu_seqlens=cub, lengths=lens, validate=False),
                         PDL_OFF={"rope.cu"}))
        print(f"qk decode {hq}:{hkv} B{B} cache: default {us:5.2f} us ({'ok' if us <= 3 else 'MISS'} <= 3 us), "
              f"plain launch {us4:5.2f} us", flush=True)
        recs.append(dict(case=f"qk{hq}:{hkv}B{B}", v="cache", us=us, us_no_pdl=us4))
T = 16384
lq = KR._launch_qk
for hq, hkv in ((8, 2), (16, 4), (24, 4)):
    qg = torch.randn(T, hq, 512, device=dev, dtype=bf); k = torch.randn(T, hkv, 256, device=dev, dtype=bf)
    wq = torch.randn(256, device=dev, dtype=bf); ang = torch.rand(T, 32, device=dev) * 1000
    cos, sin = ang.cos(), ang.sin()
    nb = (T * hq * 256 + T * hkv * 256) * 2 * 2 + T * 32 * 8
    for name, kw in (("default (lean ipw4)", {}), ("staged", {"build": "staged"}),
                     ("stream (4, 3)", {"build": (4, 3)}), ("lean ipw2", {"lean": True, "ipw": 2})):
        def fn(kw=kw):
            KR._launch_qk = functools.partial(lq, **{k: v for k, v in kw.items() if k in ("lean", "build")})
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
    for name, kw in (("default (stream (4, 3))", {}), ("staged", {"build": "staged"}), ("lean", {"lean": True})):
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
from benchmarks.common import git_commit  # noqa: E402
json.dump(dict(suite="lm_kernels_sweep", card=torch.cuda.get_device_name(), date=time.strftime("%Y-%m-%d"),
               commit=git_commit(), script="tools/lm_kernels_sweep.py", copy_TBps=copy, records=recs),
          open(os.path.join(os.environ.get("OUT", "/tmp"), "lm_kernels_sweep.json"), "w"), indent=1)
