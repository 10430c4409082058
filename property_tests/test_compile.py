"""Every NVRTC source builds, with every template instantiation its wrapper may launch, for sm_80 and sm_90.

No GPU or driver is needed (NVRTC emits a CUBIN directly). Sources register themselves with their
instantiations in kernels.runtime.dispatch.SOURCES when their wrapper module is imported; every op of
kernels.registry with an nvrtc kernel must have its source registered there (or its own compile test), and a .cu
file no wrapper registers is still compiled (syntax and template definitions) with no instantiations. The sm_90
build of a source whose kernels wait for a primary grid also passes the PDL audit (kernels/runtime/pdl_audit.py):
no global access before griddepcontrol.wait through a pointer the kernel does not declare safe to read early.
"""

from __future__ import annotations

import importlib
import inspect
import pkgutil
import re

import pytest

import kernels
from kernels.registry import REGISTRY
from kernels.runtime import nvrtc, pdl_audit
from kernels.runtime.dispatch import SOURCES, NvrtcSource

pytestmark = pytest.mark.compile

ARCHS = ("sm_80", "sm_90")

for _m in pkgutil.iter_modules(kernels.__path__):  # import every wrapper so its source registers
    if not _m.ispkg:
        importlib.import_module(f"kernels.{_m.name}")

ALL_CU = sorted(p.name for p in nvrtc.CUDA_DIR.glob("*.cu"))


# wrappers that launch through their own path, with their own compile tests
OWN_COMPILE_TEST = {"kernels.attention": "property_tests/test_attention_compile.py"}


def test_every_nvrtc_op_registers_its_source():
    """An op's nvrtc kernel lives in a wrapper module that registers its source with instantiations, so the
    tests below build everything it may launch."""
    missing = []
    for name, spec in REGISTRY.items():
        fn = spec.kernels.get("nvrtc")
        if fn is None:
            continue
        mod = inspect.getmodule(fn)
        if mod.__name__ in OWN_COMPILE_TEST:
            continue
        srcs = [v for v in vars(mod).values() if isinstance(v, NvrtcSource)]
        if not srcs or not all(s.exprs for s in srcs):
            missing.append(f"{name} ({mod.__name__})")
    assert not missing, f"nvrtc ops whose module registers no source instantiations: {missing}"


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("source", sorted(SOURCES))
def test_every_instantiation_builds(source, arch):
    exprs = SOURCES[source].exprs
    mod = nvrtc.compile_source(nvrtc.read_source(source), exprs, arch)
    code = bytes(mod.code)
    assert code[:4] == b"\x7fELF" and len(code) > 1000
    mapping = {k.decode() if isinstance(k, bytes) else k: v for k, v in (mod.symbol_mapping or {}).items()}
    missing = [e for e in exprs if e not in mapping]
    assert not missing, f"{source}: no symbol for {missing}"
    for e in exprs:
        sym = mapping[e]
        sym = sym if isinstance(sym, bytes) else sym.encode()
        assert sym in code, f"{source}: {e} ({sym!r}) is not in the {arch} cubin"
    src = nvrtc.read_source(source)
    if arch == "sm_90" and pdl_audit.waits(src):  # the PDL protocol, checked in the machine code
        problems = pdl_audit.audit_module(src, exprs, mod, label=source)
        assert not problems, f"{len(problems)} global accesses before griddepcontrol.wait:\n" + "\n".join(problems[:20])


@pytest.mark.parametrize("source", [s for s in ALL_CU if s not in SOURCES])
def test_unregistered_sources_compile(source):
    mod = nvrtc.compile_source(nvrtc.read_source(source), (), "sm_90")
    assert bytes(mod.code)[:4] == b"\x7fELF"


def _ptx(source: str, exprs: tuple[str, ...], arch: str = "compute_90") -> str:
    """PTX through the raw NVRTC bindings (cuda.core's PTX path asks the driver for its version)."""
    from cuda.bindings import nvrtc as N

    def ok(res):
        err, *rest = res
        assert err == N.nvrtcResult.NVRTC_SUCCESS, err
        return rest[0] if len(rest) == 1 else rest

    prog = ok(N.nvrtcCreateProgram(nvrtc.read_source(source).encode(), source.encode(), 0, [], []))
    for e in exprs:
        ok(N.nvrtcAddNameExpression(prog, e.encode()))
    opts = [f"--gpu-architecture={arch}".encode(), b"-std=c++17"] + [f"-I{d}".encode() for d in nvrtc.cuda_include_dirs()]
    err, = N.nvrtcCompileProgram(prog, len(opts), opts)
    if err != N.nvrtcResult.NVRTC_SUCCESS:
        size = ok(N.nvrtcGetProgramLogSize(prog))
        log = b" " * size
        N.nvrtcGetProgramLog(prog, log)
        pytest.fail(log.decode(errors="replace"))
    size = ok(N.nvrtcGetPTXSize(prog))
    buf = b" " * size
    (err,) = N.nvrtcGetPTX(prog, buf)
    N.nvrtcDestroyProgram(prog)
    return buf.decode(errors="replace")


# libdevice's sinf/cosf/sincosf carry a Payne-Hanek slow path for huge arguments: one int64 -> fp64 conversion,
# a multiply by 2^-64 * pi/2 and the conversion back. Those three instructions are allowed; nothing else in .f64.
_LIBM_F64 = re.compile(r"\.reg \.f64|0d3BF921FB54442D19|cvt\.rn\.f64\.s64|cvt\.rn\.f32\.f64")


@pytest.mark.parametrize("source", sorted(SOURCES))
def test_no_fp64_math(source):
    """fp32 math throughout: a stray double literal or a double libm call would put .f64 instructions in the PTX."""
    ptx = _ptx(source, SOURCES[source].exprs)
    assert ".entry" in ptx
    f64 = [ln.strip() for ln in ptx.splitlines() if ".f64" in ln and not _LIBM_F64.search(ln)]
    assert not f64, f"{source}: fp64 instructions in the PTX, e.g. {f64[:3]}"
