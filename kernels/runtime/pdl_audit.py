"""Check the PDL protocol (kernels/cuda/include/ptx.cuh) in the machine code: no global access through a kernel
parameter before griddepcontrol.wait, except the parameters the kernel declares safe to read early.

    python3 -m kernels.runtime.pdl_audit [--source rope.cu] [-v]   # exit status 1 on a violation, 2 on bad use

property_tests/test_compile.py runs it on every source's sm_90 build in CI.

Why the machine code: the compiler may move a load above the wait even though the wait's asm clobbers memory. A
load through a `const T* __restrict__` pointer becomes ld.global.nc, which it treats as invariant, and an invariant
load may be scheduled anywhere (rope.cu's decode kernel read its q/k rows before the wait this way, so a
programmatic launch could read them while the GEMM before it was still writing them). Nothing in the C++ shows it;
wait_for_primary_grid(p, ...) (ptx.cuh) is the fix: loads through the pointers it names stay below the wait.

How: every instantiation of every registered source that calls wait_for_primary_grid is compiled (no GPU needed)
and disassembled with nvdisasm (the nvidia-cuda-nvdisasm wheel, or PATH). In each kernel, the instructions before
the first ACQBULK (griddepcontrol.wait) in program order are scanned; registers are tainted by the parameter
words (c[0x0][0x210 + offset] on sm_90, offsets from the cubin's EIATTR_KPARAM_INFO) they are computed from, a
union over the whole prefix (a conservative over-approximation: branches and register reuse only add names),
and every global load, store or atomic there is charged to the parameters its address comes from. A kernel
names the parameters it may touch before the wait in a comment just above its template/__global__ line:

    // pdl-early: qw kw -- why they may be read early (weights, constant tables: no kernel writes them)

Anything else is a violation. A kernel with global accesses but no wait at all is reported too (it must not be
launched with pdl=True). Kernels that never wait are listed, not failed, with -v.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import struct
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field

PARAM_BASE = 0x210  # sm_90's first kernel parameter word in constant bank 0 (sm_80: 0x160)
_MEM_OPS = re.compile(r"^(LDG|STG|LD|ST|ATOMG|ATOM|RED|LDGSTS|UTMALDG|UBLKCP|UTMASTG)\b")
_REG = re.compile(r"\bU?R(\d+)(\.64)?\b|\bU?RZ\b")
_CONST = re.compile(r"c\[0x0\]\[(0x[0-9a-f]+)\]")


def nvdisasm_path() -> str | None:
    """nvdisasm from PATH or from the nvidia-cuda-nvdisasm wheel (nvidia/cu*/bin/nvdisasm on sys.path)."""
    p = shutil.which("nvdisasm")
    if p:
        return p
    for d in sys.path:
        base = os.path.join(d, "nvidia")
        if os.path.isdir(base):
            for sub in sorted(os.listdir(base)):
                cand = os.path.join(base, sub, "bin", "nvdisasm")
                if os.path.isfile(cand) and os.access(cand, os.X_OK):
                    return cand
    return None


def _sections(elf: bytes) -> dict[str, bytes]:
    """ELF64 section name -> contents."""
    shoff, = struct.unpack_from("<Q", elf, 0x28)
    shentsize, shnum, shstrndx = struct.unpack_from("<HHH", elf, 0x3A)
    hdrs = [struct.unpack_from("<IIQQQQIIQQ", elf, shoff + i * shentsize) for i in range(shnum)]
    strtab = hdrs[shstrndx]
    names = elf[strtab[4]:strtab[4] + strtab[5]]
    out = {}
    for h in hdrs:
        name = names[h[0]:names.index(b"\0", h[0])].decode()
        out[name] = elf[h[4]:h[4] + h[5]]
    return out


def param_offsets(elf: bytes, symbol: str) -> dict[int, int]:
    """Parameter ordinal -> byte offset of the kernel `symbol` (EIATTR_KPARAM_INFO of .nv.info.<symbol>)."""
    info = _sections(elf)[f".nv.info.{symbol}"]
    out, i = {}, 0
    while i + 2 <= len(info):
        fmt, attr = info[i], info[i + 1]
        if fmt == 0x04:  # EIFMT_SVAL: u16 size, payload
            size, = struct.unpack_from("<H", info, i + 2)
            if attr == 0x17:  # EIATTR_KPARAM_INFO: u32 index, u16 ordinal, u16 offset, u32 flags
                _, ordinal, offset = struct.unpack_from("<IHH", info, i + 4)
                out[ordinal] = offset
            i += 4 + size
        elif fmt == 0x03:  # EIFMT_HVAL: u16 value
            i += 4
        elif fmt == 0x02:  # EIFMT_BVAL
            i += 4
        else:  # EIFMT_NVAL
            i += 2
    return out


@dataclass
class KernelSignature:
    params: list[str]
    pointer: list[bool]  # a pointer parameter (the others cannot address memory)
    early: set[str] = field(default_factory=set)  # the pdl-early names


def kernel_signature(source: str, expr: str) -> KernelSignature:
    """The parameter names of the __global__ function `expr` names (namespace and template arguments stripped),
    in order, and its pdl-early declaration."""
    base = re.sub(r"<.*", "", expr).split("::")[-1]
    m = re.search(r"__global__[^;{}]*?\b" + re.escape(base) + r"\s*\(", source)
    if not m:
        raise ValueError(f"no __global__ {base} in the source")
    depth, i = 1, m.end()
    while depth:
        depth += {"(": 1, ")": -1}.get(source[i], 0)
        i += 1
    plist = re.sub(r"//[^\n]*|/\*.*?\*/", "", source[m.end():i - 1], flags=re.S)
    parts, cur, d = [], "", 0
    for ch in plist:
        d += {"<": 1, "(": 1, "[": 1, ">": -1, ")": -1, "]": -1}.get(ch, 0)
        if ch == "," and d == 0:
            parts.append(cur)
            cur = ""
        else:
            cur += ch
    if cur.strip():
        parts.append(cur)
    names = [re.findall(r"[A-Za-z_]\w*", p.split("=")[0])[-1] for p in parts]
    pointer = ["*" in p for p in parts]
    # the comment block just above the declaration (template line included)
    start = source.rfind("\n", 0, m.start())
    head = source[:start].splitlines()
    while head and head[-1].lstrip().startswith("template"):
        head.pop()
    early: set[str] = set()
    while head and head[-1].lstrip().startswith("//"):
        t = head.pop()
        if "pdl-early:" in t:
            early |= set(t.split("pdl-early:", 1)[1].split("--")[0].split())
    return KernelSignature(names, pointer, early)


def _regs(text: str) -> set[str]:
    """Register names in an operand list (an R.64 pair as both halves; RZ and URZ are no registers)."""
    out = set()
    for m in _REG.finditer(text):
        if m.group(1) is None:
            continue
        pre = "UR" if m.group(0).startswith("U") else "R"
        n = int(m.group(1))
        out.add(f"{pre}{n}")
        if m.group(2):
            out.add(f"{pre}{n + 1}")
    return out


def _parse(sass: str) -> tuple[list[str], dict[str, int]]:
    """The instructions of one function's disassembly, in order, and label -> index of the next instruction."""
    ins, labels = [], {}
    for ln in sass.splitlines():
        m = re.match(r"\s*/\*[0-9a-f]+\*/\s+(.*?)\s*;", ln)
        if m:
            ins.append(m.group(1))
            continue
        m = re.match(r"^(\.L_x_\d+):", ln.strip())
        if m:
            labels[m.group(1)] = len(ins)
    return ins, labels


def _split_predicate(ln: str) -> tuple[bool, str]:
    """(whether the instruction is predicated, the instruction without its @P / @!P guard)."""
    return ln.startswith("@"), re.sub(r"^@!?U?PT?\d*\s+", "", ln)


def early_accesses(sass: str, params: dict[int, str]) -> tuple[bool, list[tuple[str, set[str]]]]:
    """(has a wait, [(instruction, pointer parameters its address comes from)] for every global access that may
    execute before the first ACQBULK). `params`: byte offset in constant bank 0 -> name of a pointer parameter.

    A forward dataflow over the instructions before the first ACQBULK in program order: a register holds the
    set of pointer parameters it may be computed from; an unpredicated write replaces the set, a predicated one
    adds to it, and sets join where branches meet (a subroutine call is treated as touching nothing)."""
    ins, labels = _parse(sass)
    stop = next((i for i, ln in enumerate(ins) if re.search(r"\bACQBULK\b", ln)), None)
    waits = stop is not None
    stop = len(ins) if stop is None else stop

    def const_names(text):
        out = set()
        for off in _CONST.findall(text):
            o = int(off, 16) - PARAM_BASE
            name = params.get(o) or params.get(o - 4)  # the high word of an 8-byte parameter
            if name:
                out.add(name)
        return out

    def succ(i):
        pred, body = _split_predicate(ins[i])
        op = body.split(" ", 1)[0]
        out = []
        if op.startswith(("BRA", "JMP", "BRX")):
            m = re.search(r"`\((\.L_x_\d+)\)", body)
            if m and m.group(1) in labels:
                out.append(labels[m.group(1)])
            if pred:
                out.append(i + 1)
        elif op.startswith(("EXIT", "RET", "BPT")):
            if pred:
                out.append(i + 1)
        else:
            out.append(i + 1)
        return [j for j in out if j < stop]

    def step(i, state):
        pred, body = _split_predicate(ins[i])
        op, _, rest = body.partition(" ")
        stores = _MEM_OPS.match(op) and not op.startswith(("LD", "ATOM"))
        if stores or not rest:  # writes no register
            return state
        ops = [o.strip() for o in rest.split(",")]
        dst = _regs(ops[0])
        if op.startswith(("IMAD.WIDE", "LDC.64", "ULDC.64", "MOV.64", "IADD.64", "LEA.64")) or ".64" in op:
            dst |= _regs(re.sub(r"\b(U?R)(\d+)\b", lambda m: f"{m.group(1)}{m.group(2)}.64", ops[0]))
        src = set()
        if not _MEM_OPS.match(op):  # a loaded value is data, not an address of a parameter
            for o in ops[1:]:
                for r in _regs(o):
                    src |= state.get(r, frozenset())
                src |= const_names(o)
        new = dict(state)
        for r in dst:
            new[r] = frozenset(src | (state.get(r, frozenset()) if pred else set()))
        return new

    states: dict[int, dict] = {0: {}} if stop else {}
    work = [0] if stop else []
    while work:
        i = work.pop()
        out = step(i, states[i])
        for j in succ(i):
            old = states.get(j)
            if old is None:
                states[j] = out
                work.append(j)
                continue
            merged = {r: old.get(r, frozenset()) | out.get(r, frozenset()) for r in set(old) | set(out)}
            if merged != old:
                states[j] = merged
                work.append(j)
    hits = []
    for i in sorted(states):
        ln = ins[i]
        _, body = _split_predicate(ln)
        if not _MEM_OPS.match(body.split(" ", 1)[0]):
            continue
        names = set()
        for addr in re.findall(r"\[([^\]]*)\]", body):
            for r in _regs(addr):
                names |= states[i].get(r, frozenset())
            names |= const_names(addr)
        hits.append((ln, names))
    return waits, hits


def audit_module(src: str, exprs: tuple[str, ...], mod, nvdisasm: str | None = None,
                 verbose: bool = False, label: str = "") -> list[str]:
    """Violations (one line each) in the sm_90 cubin `mod` (cuda.core ObjectCode) of the instantiations `exprs`
    of the CUDA source text `src`."""
    nvdisasm = nvdisasm or nvdisasm_path()
    if nvdisasm is None:
        raise RuntimeError("nvdisasm not found: pip install nvidia-cuda-nvdisasm (or put the CUDA toolkit's on PATH)")
    elf = bytes(mod.code)
    mapping = {k.decode() if isinstance(k, bytes) else k: (v.decode() if isinstance(v, bytes) else v)
               for k, v in (mod.symbol_mapping or {}).items()}
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(elf)
        f.flush()
        out = subprocess.run([nvdisasm, "-c", f.name], capture_output=True, text=True, check=True).stdout
    bodies = {}
    for part in re.split(r"\n//-+ \.text\.", out)[1:]:
        bodies[part.split(" ", 1)[0]] = part
    problems = []
    for e in exprs:
        sym = mapping[e]
        sig = kernel_signature(src, e)
        offsets = param_offsets(elf, sym)
        params = {off: sig.params[i] for i, off in offsets.items() if i < len(sig.params) and sig.pointer[i]}
        waits, hits = early_accesses(bodies[sym], params)
        if not waits:
            if hits and verbose:
                print(f"  {label} {e}: no wait (must not be launched with pdl=True)")
            continue
        for ln, names in hits:
            bad = sorted(names - sig.early)
            if bad or not names:
                what = ", ".join(bad) if bad else "an address from no parameter"
                problems.append(f"{label} {e}: `{ln}` before griddepcontrol.wait reads {what}")
        if verbose:
            print(f"  {label} {e}: {len(hits)} early accesses, of {sorted(set().union(*[n for _, n in hits]))}")
    return problems


def audit_source(file: str, exprs: tuple[str, ...], options: tuple[str, ...] = (),
                 verbose: bool = False) -> list[str]:
    """Violations (one line each) of the instantiations `exprs` of kernels/cuda/<file>, built for sm_90 (the only
    arch with griddepcontrol; PARAM_BASE is its parameter bank offset)."""
    from . import nvrtc

    src = nvrtc.read_source(file)
    return audit_module(src, tuple(exprs), nvrtc.compile_source(src, tuple(exprs), "sm_90", tuple(options)),
                        verbose=verbose, label=file)


def waits(src: str) -> bool:
    """Whether a CUDA source's kernels may wait for a primary grid (the ones this audit concerns): it calls the
    wait or one of ptx.cuh's helpers around it."""
    return re.search(r"\b(wait_for_primary_grid|pdl_begin|wait_and_release)\s*\(", src) is not None


def waiting_sources() -> dict:
    """Registered NvrtcSources whose kernels may wait for a primary grid."""
    import kernels.gemm  # noqa: F401  (registers gemm.cu)
    import kernels.registry  # noqa: F401  (imports every family, registering its source)

    from . import nvrtc
    from .dispatch import SOURCES

    return {k: s for k, s in SOURCES.items() if waits(nvrtc.read_source(k))}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--source", action="append", help="only these .cu files (repeatable)")
    ap.add_argument("-v", "--verbose", action="store_true")
    a = ap.parse_args(argv)
    srcs = waiting_sources()
    unknown = sorted(set(a.source or ()) - set(srcs))
    if unknown:
        print(f"error: no programmatic kernels in {', '.join(unknown)}; the sources with some: "
              f"{', '.join(sorted(srcs))}", file=sys.stderr)
        return 2
    if nvdisasm_path() is None:
        print("error: nvdisasm not found: pip install nvidia-cuda-nvdisasm (or put the CUDA toolkit's on PATH)",
              file=sys.stderr)
        return 2
    problems = []
    for name, s in sorted(srcs.items()):
        if a.source and name not in a.source:
            continue
        p = audit_source(s.file, s.exprs, s.options, verbose=a.verbose)
        print(f"{name}: {len(s.exprs)} kernels, {len(p)} violations")
        problems += p
    for p in problems:
        print(p)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
