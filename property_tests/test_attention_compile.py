"""Every attention instantiation the wrapper can launch compiles to a CUBIN for sm_80 and sm_90, and every
warp-specialised Hopper shape (TMA + wgmma) for sm_90a (no GPU needed; cubins are cached on disk by
kernels/runtime/nvrtc.py).

Also reads ptxas' register/spill report (NVRTC passes -v through `ptxas_options`) for the default tile shapes
and requires zero spill bytes: a spilling flash-attention kernel loses most of its speed.
"""

import io
import re

import pytest
import torch

from dataclasses import replace

from kernels.attention import (CANDIDATES, ROUNDS_MAX_SEGMENT, SUPPORTED_HEAD_DIMS, V_64x64_4w, WS_CANDIDATES,
                               WS_256x64, pick_variant, ws_rounds)
from kernels.runtime.nvrtc import compile_source, cuda_include_dirs, read_source

pytestmark = pytest.mark.compile


def reachable(d: int) -> list:
    """mma.sync tile shapes pick_variant can return for head dim d off Hopper (long and short segments, both
    masks)."""
    vs = []
    for causal in (False, True):
        for max_seqlen in (8, 100_000):
            v = pick_variant(d, causal, T=100_000, nseg=1, max_seqlen=max_seqlen)
            if v not in vs:
                vs.append(v)
    return vs


def check_cubin(names, arch, file):
    mod = compile_source(read_source(file), names, arch)
    cubin = bytes(mod.code)
    assert cubin[:4] == b"\x7fELF"
    for n in names:
        mangled = mod.symbol_mapping[n]
        mangled = mangled if isinstance(mangled, bytes) else mangled.encode()
        assert mangled in cubin, f"{n} ({mangled!r}) missing from the {arch} cubin"


@pytest.mark.parametrize("arch", ["sm_80", "sm_90"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("causal", [False, True])
def test_mma_instantiations_compile(arch, dtype, causal):
    check_cubin(tuple(v.name(dtype, d, causal) for d in SUPPORTED_HEAD_DIMS for v in reachable(d)), arch,
                V_64x64_4w.file)


def test_hopper_pick_is_a_candidate():
    """On Hopper every pick is a warp-specialised candidate, run for 1 or more consecutive tiles per CTA (or the
    64-row mma.sync tile for tiny segments); causal calls and long segments run one tile per CTA."""
    for d in SUPPORTED_HEAD_DIMS:
        for T, L, heads in ((4096, 4096, 16), (16384, 16384, 16), (6272, 784, 16), (4096, 4096, 12), (300, 100, 2)):
            v = pick_variant(d, False, T=T, nseg=T // L, max_seqlen=L, hopper=True, heads=heads)
            assert replace(v, rounds=1) in WS_CANDIDATES[d]
            assert 1 <= v.rounds <= -(-L // v.bm) and (v.rounds == 1 or v.qbufs(d) == 2)
            assert pick_variant(d, True, T=T, nseg=T // L, max_seqlen=L, hopper=True, heads=heads).rounds == 1
            if L > ROUNDS_MAX_SEGMENT:
                assert v.rounds == 1
        tiny = pick_variant(d, False, T=64, nseg=2, max_seqlen=32, hopper=True)
        assert tiny is (V_64x64_4w if d != 256 else WS_CANDIDATES[d][0])


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("causal", [False, True])
def test_ws_instantiations_compile(dtype, causal):
    check_cubin(tuple(v.name(dtype, d, causal) for d in SUPPORTED_HEAD_DIMS for v in WS_CANDIDATES[d]), "sm_90a",
                WS_256x64.file)


@pytest.mark.slow
@pytest.mark.parametrize("arch, table", [("sm_90", CANDIDATES), ("sm_90a", WS_CANDIDATES)])
def test_default_shapes_do_not_spill(arch, table):
    from cuda.core import Program, ProgramOptions

    names = tuple(dict.fromkeys(v.name(torch.bfloat16, d, False) for d in SUPPORTED_HEAD_DIMS  # one per kernel
                                for v in (table[d] if arch == "sm_90a" else table[d][:1])))
    log = io.StringIO()
    opts = ProgramOptions(arch=arch, std="c++17", include_path=list(cuda_include_dirs()), ptxas_options=["-v"])
    Program(read_source(table[64][0].file), code_type="c++", options=opts).compile(
        "cubin", name_expressions=names, logs=log)
    report = log.getvalue()
    regs = [int(x) for x in re.findall(r"Used (\d+) registers", report)]
    spills = [int(x) for x in re.findall(r"(\d+) bytes spill stores", report)]
    assert len(regs) == len(names) and len(spills) == len(names), report
    assert all(r <= 255 for r in regs), report
    assert "Potential Performance Loss" not in report, f"ptxas serialised the wgmmas:\n{report}"
    assert not any(spills), f"register spills in a default tile shape:\n{report}"


def test_wgmma_header_is_generated():
    """kernels/cuda/include/wgmma_ops.cuh is what tools/gen_wgmma.py writes from its table of shapes."""
    import subprocess
    import sys
    from pathlib import Path

    tool = Path(__file__).resolve().parent.parent / "tools" / "gen_wgmma.py"
    assert subprocess.run([sys.executable, str(tool), "--check"]).returncode == 0


def test_ws_rounds_model():
    """Tiles per CTA follow the wave model in ws_rounds: 8 images of 784 tokens in 256-row tiles (4 tiles per image,
    512 CTAs = 3.9 waves on 132 SMs) run as 128 CTAs of 4 tiles, one wave; a 4096-token image with 16 heads (256
    CTAs, 2 waves) as 128 CTAs of 2; never more tiles than CTAs can spread over the SMs, never for long segments,
    and a shape with one Q buffer (d256) always runs one."""
    assert ws_rounds(WS_256x64, 72, 16, 6272, 784, 132) == 4
    assert ws_rounds(WS_256x64, 72, 16, 4096, 4096, 132) == 2
    assert ws_rounds(WS_256x64, 72, 16, 16384, 16384, 132) == 1
    assert ws_rounds(WS_256x64, 72, 1, 784, 784, 132) == 1  # 4 CTAs for 132 SMs: more tiles each would idle SMs
    assert ws_rounds(WS_CANDIDATES[256][0], 256, 8, 4096, 4096, 132) == 1
    assert ws_rounds(WS_256x64, 72, 16, 0, 0, 132) == 1  # no tokens: one tile, nothing to spread
