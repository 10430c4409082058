"""Compare the SASS of every attention instantiation the wrapper can launch between an old and the current source
(no GPU needed): the same instruction stream means the same speed.

    python3 tools/attention_sass.py [--old-commit ca5ff53] [--nvdisasm PATH] [--d 72 ...]

The old commit's kernels/cuda/attention.cu (one file) is compiled against the current attention/sm80.cu (mma.sync,
for sm_90) and attention/sm90.cu (warp-specialised, sm_90a). For each kernel it prints registers, spill bytes and
whether the disassembly (nvdisasm, pip wheel nvidia-cuda-nvdisasm) matches after dropping addresses and encodings;
a mismatch prints the count of differing lines, and of differing opcodes alone (register renaming aside: what
is left is instruction selection and order). Exit status 1 if any kernel differs in registers, spills or code.
"""

from __future__ import annotations

import argparse
import difflib
import io
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

from kernels.attention import CANDIDATES, SUPPORTED_HEAD_DIMS, V_64x64_4w, WS_CANDIDATES  # noqa: E402
from kernels.runtime.nvrtc import cuda_include_dirs, read_source  # noqa: E402

REPO = Path(__file__).resolve().parent.parent


def names(ds) -> dict[str, tuple[str, ...]]:
    """{arch: every instantiation name} as kernels.attention launches them."""
    mma, ws = [], []
    for d in ds:
        vs = list(CANDIDATES[d]) + ([V_64x64_4w] if d != 256 and V_64x64_4w not in CANDIDATES[d] else [])
        for dt in (torch.bfloat16, torch.float16):
            for c in (False, True):
                mma += [v.name(dt, d, c) for v in vs]
                ws += [v.name(dt, d, c) for v in WS_CANDIDATES[d]]
    return {"sm_90": tuple(dict.fromkeys(mma)), "sm_90a": tuple(dict.fromkeys(ws))}


def build(source: str, exprs: tuple[str, ...], arch: str):
    """(cubin bytes, {mangled: name}, {mangled: (registers, spill bytes)})."""
    from cuda.core import Program, ProgramOptions

    log = io.StringIO()
    opts = ProgramOptions(arch=arch, std="c++17", include_path=list(cuda_include_dirs()), ptxas_options=["-v"])
    mod = Program(source, code_type="c++", options=opts).compile("cubin", name_expressions=exprs, logs=log)
    mangled = {(m.decode() if isinstance(m, bytes) else m): n for n, m in mod.symbol_mapping.items()}
    stats, cur = {}, None
    for line in log.getvalue().splitlines():
        m = re.search(r"Compiling entry function '(\S+)'", line)
        if m:
            cur = m.group(1)
        m = re.search(r"(\d+) bytes spill stores", line)
        if m and cur:
            stats.setdefault(cur, [None, 0])[1] = int(m.group(1))
        m = re.search(r"Used (\d+) registers", line)
        if m and cur:
            stats.setdefault(cur, [None, 0])[0] = int(m.group(1))
    return bytes(mod.code), mangled, stats


def sass(cubin: bytes, nvdisasm: str) -> dict[str, list[str]]:
    """{mangled function: instructions without addresses, encodings or label numbers}."""
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        text = subprocess.run([nvdisasm, "-c", f.name], check=True, capture_output=True, text=True).stdout
    out, cur = {}, None
    for line in text.splitlines():
        m = re.match(r"\s*\.text\.(\S+):", line)
        if m:
            cur = m.group(1)
            out[cur] = []
            continue
        if cur is None:
            continue
        line = re.sub(r"/\*[0-9a-f]{4,}\*/", "", line)  # addresses and encodings
        line = re.sub(r"\.L_x_\d+", ".L", line)  # label numbers
        line = re.sub(r"_Z\w+", "<kernel>", line)  # mangled names (parameter types' namespaces may differ)
        line = line.strip()
        if line and not line.startswith(("//", ".")):
            out[cur].append(line)
    return out


def opcode(line: str) -> str:
    """The instruction's opcode with its modifiers, without predicate and operands."""
    return re.sub(r"^@!?U?P\w+\s+", "", line).split(" ", 1)[0]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--old-commit", default="ca5ff53")
    ap.add_argument("--nvdisasm", default=shutil.which("nvdisasm") or "nvdisasm")
    ap.add_argument("--d", type=int, nargs="*", default=list(SUPPORTED_HEAD_DIMS))
    a = ap.parse_args()
    old = subprocess.run(["git", "show", f"{a.old_commit}:kernels/cuda/attention.cu"], cwd=REPO, check=True,
                         capture_output=True, text=True).stdout
    new = {"sm_90": read_source("attention/sm80.cu"), "sm_90a": read_source("attention/sm90.cu")}
    bad = 0
    for arch, exprs in names(a.d).items():
        ocub, omap, ostats = build(old, exprs, arch)
        ncub, nmap, nstats = build(new[arch], exprs, arch)
        osass, nsass = sass(ocub, a.nvdisasm), sass(ncub, a.nvdisasm)
        old_of = {name: mg for mg, name in omap.items()}  # mangled names may differ (parameter types' namespaces)
        for mg, name in sorted(nmap.items(), key=lambda kv: kv[1]):
            omg = old_of.get(name)
            o, n = osass.get(omg), nsass.get(mg)
            if o is None:
                print(f"MISSING in old  {name}")
                bad += 1
                continue
            diff = sum(1 for x in difflib.ndiff(o, n) if x[:1] in "+-")
            ops = sum(1 for x in difflib.ndiff([opcode(i) for i in o], [opcode(i) for i in n]) if x[:1] in "+-")
            same_stats = ostats.get(omg) == nstats.get(mg)
            ok = diff == 0 and same_stats
            bad += not ok
            print(f"{'same' if ok else 'DIFF'} {arch:6s} regs/spill bytes {ostats.get(omg)} -> {nstats.get(mg)} "
                  f"instructions {len(o)} -> {len(n)}, differing lines {diff}, of opcodes alone {ops}  {name}",
                  flush=True)
    print(f"{bad} kernels differ" if bad else "all kernels identical (registers, spills, instructions)")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
