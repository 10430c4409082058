"""Every Numba kernel, for every argument-type combination the wrappers launch, compiles to real PTX for
sm_80 and sm_90 (NVVM, no GPU needed), with no fp64 arithmetic where fp32 math is intended.

The simulator (which CI uses for the `sim` tests) runs kernels as Python and never type-checks the GPU code
path (bf16 intrinsics, shuffles, integer widths), so this test compiles it for real. numba.cuda cannot switch
modes inside one process, so the compiles run in one subprocess with NUMBA_ENABLE_CUDASIM=0; device
functions ask for the current device's compute capability while compiling, so it is monkeypatched there.

fp64 check: a Python float literal in a kernel silently makes the math fp64. We look for `double` in the
LLVM IR Numba generates (our code, before libdevice is linked) and for `.f64` in the final PTX. libdevice's
sinf/cosf carry an fp64 slow path for huge arguments (Payne-Hanek reduction), so kernels that call them are
checked on the IR only ("libm"); vision_pos_taps computes in fp64 on purpose ("fp64": the reference does).

CASES names each kernel with the argument types its wrapper passes (tensors reach kernels flat; bf16 as
int16; grids and ids as int64); the subprocess also lists every kernel in kernels.numba, so a new kernel
without a case fails `test_every_numba_kernel_has_a_case`.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.compile

ROOT = Path(__file__).resolve().parent.parent
CCS = ((8, 0), (9, 0))

# (kernel "module:attribute[.key]", argument types ("f4[]" = flat float32 array, "i8" = int64 scalar;
#  f4 f2 i2 i4 i8 b1), fp64 policy: "fp32" (none anywhere), "libm" (none in our IR), "fp64" (intended)).
_LN = "{x} {x} {x} {x} i4 f4 i4 i4"
_GELU = "{x} {x} {x} i4 i4 i4 i4"
_FLOAT_IO = (("f", "f4[]"), ("f", "f2[]"), ("bf16", "i2[]"))
CASES = (
    [(f"kernels.numba.norms:LAYER_NORM.{io}", _LN.format(x=x), "fp32") for io, x in _FLOAT_IO]
    + [(f"kernels.numba.activations:BIAS_GELU.{io}", _GELU.format(x=x), "fp32") for io, x in _FLOAT_IO]
    + [("kernels.numba.vision:pos_taps_kernel", "i8[] i8 i8 i8 i8 i4[] f4[]", "fp64"),
       ("kernels.numba.vision:rope_cos_sin_kernel", "i8[] i8 i8 i8 f4[] i8 f4[] f4[]", "libm"),
       ("kernels.numba.vision:cu_seqlens_kernel", "i8[] i8 i8 i4[]", "fp32"),
       ("kernels.numba.rope:rope_index_kernel", "i8[] i8[] i8[] i8[] i8 i8[] i8 i8 i8 i8 i8[] i8[]", "fp32")]
    + [("kernels.numba.glue:scatter_rows_kernel", f"{x} {x} b1[] i8[] {x} i8 i8", "fp32") for x in ("i2[]", "i4[]")]
)
CASE_IDS = [f"{k.split(':')[1]}({a})" for k, a, _ in CASES]


def _compile_all(cases, ccs) -> dict:
    """Runs in the subprocess (simulator off): compile every case once, emit PTX per cc, report facts."""
    import importlib

    import numba.cuda.dispatcher as disp
    from numba import types
    from numba.cuda.compiler import _compile_pyfunc_with_fixup  # the front end of cuda.compile_ptx

    class _Device:
        compute_capability = (9, 0)

    disp.get_current_device = lambda: _Device()
    scalars = {"f4": types.float32, "f2": types.float16, "i2": types.int16, "i4": types.int32,
               "i8": types.int64, "b1": types.boolean}

    def parse(spec):
        return tuple(scalars[t[:-2]][::1] if t.endswith("[]") else scalars[t] for t in spec.split())

    def resolve(name):
        mod, _, attr = name.partition(":")
        attr, _, key = attr.partition(".")
        obj = getattr(importlib.import_module(mod), attr)
        return obj[key] if key else obj

    results = {}
    for name, spec, _ in cases:
        key = f"{name}|{spec}"
        try:
            lib, _ = _compile_pyfunc_with_fixup(
                resolve(name).py_func, parse(spec), debug=False, lineinfo=False, device=False, fastmath=False,
                cc=max(ccs), opt=None, abi="numba", abi_info=None, forceinline=False, launch_bounds=None,
                lto=False)
            ir_double = [ln.strip() for ln in lib.get_llvm_str().splitlines() if re.search(r"\bdouble\b", ln)]
            res = {"ir_double": ir_double[:5]}
            for cc in ccs:
                (ptx,) = lib.get_asm_strs(cc=tuple(cc))
                res[f"{cc[0]}{cc[1]}"] = {"target": f".target sm_{cc[0]}{cc[1]}" in ptx,
                                          "f64": len(re.findall(r"\.f64\b", ptx))}
            results[key] = res
        except Exception as e:  # reported per case by the test
            results[key] = {"error": f"{type(e).__name__}: {e}"[:2000]}

    import pkgutil

    import kernels.numba

    found = set()
    for mod in (f"kernels.numba.{m.name}" for m in pkgutil.iter_modules(kernels.numba.__path__)):
        for attr, obj in vars(importlib.import_module(mod)).items():
            objs = obj.items() if isinstance(obj, dict) else [(None, obj)]
            for k, v in objs:
                if isinstance(v, disp.CUDADispatcher) and not v.targetoptions.get("device"):
                    found.add(f"{mod}:{attr}" + (f".{k}" if k is not None else ""))
    return {"results": results, "uncovered": sorted(found - {name for name, _, _ in cases})}


@pytest.fixture(scope="module")
def compiled() -> dict:
    env = dict(os.environ, NUMBA_ENABLE_CUDASIM="0", PYTHONPATH=os.pathsep.join(
        [str(ROOT)] + ([os.environ["PYTHONPATH"]] if os.environ.get("PYTHONPATH") else [])))
    code = ("import json, sys; sys.path.insert(0, sys.argv[1]); import numpy as np\n"
            "np.row_stack = getattr(np, 'row_stack', np.vstack)\n"
            "from tests.test_numba_compile import CASES, CCS, _compile_all\n"
            "print('@@' + json.dumps(_compile_all(CASES, CCS)))")
    proc = subprocess.run([sys.executable, "-c", code, str(ROOT)], env=env, cwd=ROOT, capture_output=True,
                          text=True, timeout=540)
    line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("@@")), None)
    assert proc.returncode == 0 and line, f"compile subprocess failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return json.loads(line[2:])


@pytest.mark.parametrize("name,spec,fp64", CASES, ids=CASE_IDS)
def test_numba_kernel_compiles(compiled, name, spec, fp64):
    r = compiled["results"][f"{name}|{spec}"]
    assert "error" not in r, r.get("error")
    for cc in CCS:
        ptx = r[f"{cc[0]}{cc[1]}"]
        assert ptx["target"], f"PTX for sm_{cc[0]}{cc[1]} has the wrong .target"
        if fp64 == "fp32":
            assert ptx["f64"] == 0, f"{ptx['f64']} fp64 instructions in sm_{cc[0]}{cc[1]} PTX of an fp32 kernel"
    if fp64 != "fp64":
        assert not r["ir_double"], f"fp64 in the kernel's own code (a bare Python float?): {r['ir_double']}"


def test_every_numba_kernel_has_a_case(compiled):
    assert compiled["uncovered"] == [], f"kernels without a compile case: {compiled['uncovered']}"
