"""Test inputs per op family: property_tests/cases/<family>.py defines, for each op x of the family, the functions
that kernels.registry names (x_cases, x_example, x_real, x_bad, x_peers; see the registry's docstring).

This module holds what the families share: random data helpers, Hypothesis building blocks and the real model
sizes. Data: values ~ N(shift, scale^2) with scale log-uniform in [1e-2, 1e2] and |shift| <= 3 scale, per-channel
weights around 1 and biases around 0: real activations, without the extreme cancellation no fp32 norm survives.
"""

from __future__ import annotations

import torch
from hypothesis import strategies as st

from kernels.registry import Bad, Case  # noqa: F401  (re-exported for the family modules)

FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
SIM_DTYPES = (torch.float32, torch.float16)  # the simulator has no bf16 hardware; its numpy stand-ins convert
ODD_WIDTHS = (1, 3, 7, 9, 33, 100, 1150, 1151, 1153, 4303, 4305, 2049)  # not a multiple of the vector width

# The real model shapes (HF config.json of each size; docs/model.md has the full table). 9B and 27B share the
# vision tower.
SIZES = {
    "0.8B": dict(vit_hidden=768, vit_heads=12, vit_mlp=3072, out_hidden=1024,
                 hidden=1024, heads=8, kv_heads=2, head_dim=256, mlp=3584, gdn_k_heads=16, gdn_v_heads=16,
                 gdn_head_dim=128, conv=4),
    "9B": dict(vit_hidden=1152, vit_heads=16, vit_mlp=4304, out_hidden=4096,
               hidden=4096, heads=16, kv_heads=4, head_dim=256, mlp=12288, gdn_k_heads=16, gdn_v_heads=32,
               gdn_head_dim=128, conv=4),
    "27B": dict(vit_hidden=1152, vit_heads=16, vit_mlp=4304, out_hidden=5120,
                hidden=5120, heads=24, kv_heads=4, head_dim=256, mlp=17408, gdn_k_heads=16, gdn_v_heads=48,
                gdn_head_dim=128, conv=4),
}


def real_widths(*keys: str) -> list[tuple[str, tuple]]:
    """[(size label, values of `keys`)], one entry per distinct value (sizes sharing it are joined: "9B/27B")."""
    seen: dict[tuple, list[str]] = {}
    for size, s in SIZES.items():
        seen.setdefault(tuple(s[k] for k in keys), []).append(size)
    return [("/".join(sizes), vals) for vals, sizes in seen.items()]


def per_size(keys: tuple[str, ...], build) -> list[Case]:
    """build(*values of `keys`) once per distinct value over SIZES, each label prefixed by its sizes ("9B/27B-...")."""
    out = []
    for size, vals in real_widths(*keys):
        case = build(*vals)
        case.label = f"{size}-{case.label}"
        out.append(case)
    return out


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def act(g, shape, dtype, scale=1.0, shift=0.0) -> torch.Tensor:
    """Activations ~ N(shift, scale^2), rounded to dtype."""
    return (torch.randn(shape, generator=g) * scale + shift).to(dtype)


def vec(g, d, dtype, around: float, spread: float = 0.5) -> torch.Tensor:
    """A per-channel parameter around `around`."""
    return (around + spread * torch.randn(d, generator=g)).to(dtype)


# ----------------------------------------------------------------------------------------- Hypothesis
seeds = st.integers(0, 2**31 - 1)
scales = st.sampled_from((1e-2, 0.1, 1.0, 10.0, 100.0))
shifts = st.sampled_from((0.0, -3.0, -1.0, 0.5, 3.0))  # in units of scale


def dtypes(small: bool = False) -> st.SearchStrategy[torch.dtype]:
    return st.sampled_from(SIM_DTYPES if small else FLOAT_DTYPES)


def rows(small: bool = False) -> st.SearchStrategy[int]:
    """1 row, a few rows, and row counts that are not a multiple of a block (the simulator: at most 3)."""
    if small:
        return st.integers(1, 3)
    return st.one_of(st.just(1), st.integers(1, 40), st.sampled_from((127, 300)))


def widths(real: tuple, small: bool = False) -> st.SearchStrategy[int]:
    """Random widths, the real model widths, and widths that are not a multiple of any vector width
    (the simulator: <= 256, odd ones included)."""
    if small:
        return st.one_of(st.integers(1, 256), st.sampled_from((1, 3, 32, 33, 100, 255, 256)))
    return st.one_of(st.integers(1, 300), st.sampled_from(real), st.sampled_from(ODD_WIDTHS))
