"""Bounded memory: the reference attention walks the queries in blocks against the same explicit mask, so no
[T, T] mask or score matrix is built, and a phone photo (4000x3000, 47k vision tokens in one segment) goes
through the CLI on the tiny checkpoint on the CPU under an address-space cap.

Measured on the 2-core CI-class machine (24 GB): the photo's run peaks at 3.1 GB resident (torch and the tiny
model 0.34 GB; the processor's HF-identical float64 rescale of the resized image about 0.9 GB; one attention
score block at most 256 MiB, reference.attention.SCORE_ELEMENTS). Before the blocked attention one layer's scores
alone were [2, 47000, 47000] fp32 = 17.7 GB, and the process was killed for memory.
"""

from __future__ import annotations

import importlib
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

A = importlib.import_module("reference.attention")  # the module (reference.attention is also the function)
REPO = Path(__file__).resolve().parents[1]
GiB = 1 << 30


def independent_attention(q, k, v, cu, causal):
    """fp64, one segment at a time, plain softmax: the formulation the blocked reference must equal."""
    q, k, v = q.double(), k.double(), v.double()
    r = q.shape[1] // k.shape[1]
    out, lse = torch.zeros_like(q), torch.zeros(q.shape[:2], dtype=torch.float64)
    for s, e in zip(cu[:-1].tolist(), cu[1:].tolist()):
        if e == s:
            continue
        kk, vv = k[s:e].repeat_interleave(r, 1), v[s:e].repeat_interleave(r, 1)
        sc = torch.einsum("ihd,jhd->hij", q[s:e], kk) * q.shape[-1] ** -0.5
        if causal:
            sc = sc.masked_fill(torch.ones(e - s, e - s, dtype=torch.bool).triu(1), float("-inf"))
        out[s:e] = torch.einsum("hij,jhd->ihd", sc.softmax(-1), vv)
        lse[s:e] = torch.logsumexp(sc, -1).T
    return out, lse


@pytest.mark.parametrize("budget", [1, 37, 600, 1 << 26], ids=["1-element", "37", "600", "default"])
@pytest.mark.parametrize("causal", [False, True])
def test_blocked_attention_equals_one_pass(budget, causal, monkeypatch):
    """Blocks of every size (one query, blocks cut inside and across segments, one block) give the same
    output and log-sum-exp; segments of length 0 and 1 included; GQA 4:2."""
    monkeypatch.setattr(A, "SCORE_ELEMENTS", budget)
    g = torch.Generator().manual_seed(0)
    cu = torch.tensor([0, 3, 3, 50, 51, 120, 121], dtype=torch.int32)
    T = int(cu[-1])
    q, k, v = (torch.randn(T, h, 8, generator=g, dtype=torch.float64) for h in (4, 2, 2))
    out, lse = A.attention(q, k, v, cu, causal, return_lse=True)
    want, want_lse = independent_attention(q, k, v, cu, causal)
    torch.testing.assert_close(out, want, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(lse, want_lse, rtol=1e-12, atol=1e-12)


def test_mask_blocks_are_the_mask():
    cu = torch.tensor([0, 5, 5, 9, 16], dtype=torch.int64)
    for causal in (False, True):
        full = A.attention_mask(cu, causal)
        assert full.shape == (16, 16)
        for rows, cols in [(slice(0, 16), slice(0, 16)), (slice(3, 7), slice(0, 9)), (slice(9, 16), slice(9, 16)),
                           (slice(15, 16), slice(2, 3))]:
            assert torch.equal(A.attention_mask(cu, causal, rows=rows, cols=cols), full[rows, cols])
    with pytest.raises(ValueError, match="slice with step 1"):
        A.attention_mask(cu, False, rows=slice(0, 16, 2))


def run_capped(code: str, cap: int, timeout: int):
    """Run python code in a subprocess whose address space is capped at `cap` bytes; 2 threads."""
    prelude = textwrap.dedent(f"""
        import resource, sys
        resource.setrlimit(resource.RLIMIT_AS, ({cap}, {cap}))
    """)
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="2", MKL_NUM_THREADS="2")
    return subprocess.run([sys.executable, "-c", prelude + textwrap.dedent(code)], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=timeout)


def test_attention_of_a_long_segment_needs_no_TxT_memory():
    """16k tokens in one segment, 2 heads: [T, T] scores would be 2 GB (twice, with the masked copy), the mask
    0.26 GB. The blocked reference keeps one [2, 2097, 16000] fp32 score block (0.27 GB) and its mask alive. The
    bound is on the growth of the peak resident memory over the peak before the call, since what importing torch
    takes differs between its builds (0.2 GB for the CPU wheel, about 0.9 GB for the CUDA one)."""
    r = run_capped("""
        import torch, importlib
        A = importlib.import_module("reference.attention")
        T = 16000
        g = torch.Generator().manual_seed(0)
        q, k, v = (torch.randn(T, 2, 8, generator=g) for _ in range(3))
        print("before", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
        out = A.attention(q, k, v, torch.tensor([0, T], dtype=torch.int32), False)
        assert out.shape == (T, 2, 8) and bool(torch.isfinite(out).all())
        print("peak_rss", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
    """, cap=int(3.5 * GiB), timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    before = int(r.stdout.split("before")[1].split()[0])
    growth = int(r.stdout.split("peak_rss")[1]) - before
    assert growth < 0.75 * GiB, f"the call grew the peak resident memory by {growth / GiB:.2f} GiB"


@pytest.mark.slow
def test_phone_photo_on_cpu_under_a_memory_cap(tmp_path):
    """The issue's case: a 4000x3000 JPEG, the CLI, the tiny checkpoint, the CPU, capped at 6 GiB of address
    space. Before the blocked attention it needed 17.7 GB for one layer's scores. Peak resident memory 3.1 GB."""
    import numpy as np
    from PIL import Image

    from model.tiny import ensure_tiny_checkpoint

    cache = tmp_path / "cache"
    ensure_tiny_checkpoint(cache)
    y, x = np.mgrid[0:3000, 0:4000]
    photo = tmp_path / "photo.jpg"
    Image.fromarray(np.stack([(x / 16) % 256, (y / 12) % 256, ((x + y) / 20) % 256], -1).astype(np.uint8)).save(
        photo, quality=85)
    r = run_capped(f"""
        from model.__main__ import main
        rc = main(["describe", "--image", {str(photo)!r}, "--max-new-tokens", "1", "--device", "cpu",
                   "--cache-dir", {str(cache)!r}, "--quiet"])
        print("peak_rss", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024, file=sys.stderr)
        sys.exit(rc)
    """, cap=6 * GiB, timeout=1200)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "vision:" in r.stderr and "Traceback" not in r.stderr
    peak = int(r.stderr.split("peak_rss")[1])
    assert peak < 4 * GiB, peak


@pytest.mark.gpu
def test_largest_image_on_the_kernels_backend(tmp_path):
    """The largest image the processor allows (16,777,216 pixels: 4096x4096, 65,536 patches in one attention
    segment) through the tiny checkpoint's tower on the kernels backend (bf16, CUDA graphs, the default): finite,
    within the bf16 bound of tests/test_vision_kernels_model.py of the reference backend on the same GPU."""
    import model as M
    from model.processor import IMAGE_MAX_PIXELS, smart_resize
    from model.tiny import ensure_tiny_checkpoint

    h, w = smart_resize(4096, 4096)
    assert h * w == IMAGE_MAX_PIXELS
    grid = torch.tensor([[1, h // 16, w // 16]])
    g = torch.Generator(device="cuda").manual_seed(0)
    pv = torch.randn(int(grid.prod()), 1536, device="cuda", generator=g).to(torch.bfloat16)
    path = ensure_tiny_checkpoint(tmp_path)
    got = M.load(path, device="cuda", dtype=torch.bfloat16, backend="kernels").encode_images(pv, grid)
    want = M.load(path, device="cuda", dtype=torch.bfloat16, backend="reference").encode_images(pv, grid)
    assert got.shape == want.shape == (65536 // 4, 64) and bool(torch.isfinite(got).all())
    err = float((got.float() - want.float()).norm() / want.float().norm())
    assert err < 1e-2, err
