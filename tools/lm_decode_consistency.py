"""Graph vs eager decode of the tiny test model (tests/test_lm_kernels.py) under PDL and GEMM-timing settings: which
setting makes the CUDA-graph tokens differ from the eager ones (round s3r2: only PDL on + the GEMM choice timed
inside the first eager step; fixed around by DecodeSession._warm_up). GPU only: python3 tools/lm_decode_consistency.py
"""
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import kernels.runtime.launch as L
from tests._lm_gpu import rows_batch
from tests.test_lm_kernels import model_for

_, ids, mask = rows_batch((37, 12, 64, 5))
kw = dict(attention_mask=mask, max_new_tokens=20, eos_token_ids=[])


def run(name, pdl=True, off=(), auto=True, fold=False):
    L.PDL, L.PDL_OFF = pdl, set(off)
    outs = []
    for graphs in (False, True, True):
        m = model_for("kernels", torch.bfloat16, graphs=graphs)
        m.lm.skinny_autotune, m.lm.fold_norms = auto, fold
        if graphs is False:
            m.lm.skinny_choice = {}
        outs.append(m.generate_ids(ids, **kw))
    same = [torch.equal(outs[0], o) for o in outs[1:]]
    diff = (outs[0] != outs[1]).nonzero()[:3].tolist()
    ch = {k[0] + f" {k[1]}x{k[2]} m{k[3]}": v for k, v in m.lm.skinny_choice.items() if k[3] == 4}
    print(f"{name}: graph==eager {same} first diffs {diff} mode {m.last_decode_mode} choices {ch}", flush=True)


run("default")
run("skinny everywhere", auto=False)
run("PDL off", pdl=False)
run("PDL off in norms/gates/glue", off=("norms.cu", "activations.cu", "glue.cu"))
run("skinny everywhere, PDL off", pdl=False, auto=False)
L.PDL, L.PDL_OFF = True, set()
