"""kernels.glue.decode_prologue / greedy_select refuse bad input with one clear line before any launch (these run
on CPU: every check comes before the device check and the launch)."""

from __future__ import annotations

import pytest
import torch

from kernels.glue import decode_prologue, greedy_select


def _prologue_args(B=3, V=11, H=64, cap=20, R=8):
    return dict(tokens=torch.zeros(B, dtype=torch.int64), embed=torch.zeros(V, H, dtype=torch.bfloat16),
                lengths=torch.zeros(B, dtype=torch.int32), rope_delta=torch.zeros(B, dtype=torch.int64),
                cos=torch.zeros(cap, R), sin=torch.zeros(cap, R))


@pytest.mark.parametrize("name, value, match", [
    ("tokens", torch.zeros(3, dtype=torch.int32), "tokens"),
    ("tokens", torch.zeros(3, 1, dtype=torch.int64), "tokens"),
    ("embed", torch.zeros(11, 3, dtype=torch.bfloat16), "16-byte vectors"),
    ("lengths", torch.zeros(4, dtype=torch.int32), "lengths"),
    ("lengths", torch.zeros(3, dtype=torch.int64), "lengths"),
    ("rope_delta", torch.zeros(3, dtype=torch.int32), "rope_delta"),
    ("cos", torch.zeros(20, 8, dtype=torch.float16), "cos"),
    ("sin", torch.zeros(20, 9), "sin"),
])
def test_decode_prologue_bad_input(name, value, match):
    args = _prologue_args() | {name: value}
    with pytest.raises((ValueError, TypeError), match=match) as e:
        decode_prologue(**args)
    assert "\n" not in str(e.value)


def test_decode_prologue_needs_cuda():
    with pytest.raises(ValueError, match="CUDA"):
        decode_prologue(**_prologue_args())


def _select_args(B=2, V=50):
    return dict(logits=torch.zeros(B, V), done=torch.zeros(B, dtype=torch.bool), eos=torch.zeros(1, dtype=torch.int64),
                pad=torch.zeros((), dtype=torch.int64), out=torch.zeros(B, dtype=torch.int64))


@pytest.mark.parametrize("name, value, match", [
    ("logits", torch.zeros(2, 50, dtype=torch.int64), "logits"),
    ("logits", torch.zeros(50, 2).t(), "logits"),
    ("logits", torch.zeros(2, 0), "at least one column"),
    ("done", torch.zeros(2, dtype=torch.int64), "done"),
    ("eos", torch.zeros((), dtype=torch.int64), "eos"),
    ("pad", torch.zeros(1, dtype=torch.int64), "pad"),
    ("out", torch.zeros(3, dtype=torch.int64), "out"),
])
def test_greedy_select_bad_input(name, value, match):
    args = _select_args() | {name: value}
    with pytest.raises((ValueError, TypeError), match=match) as e:
        greedy_select(**args)
    assert "\n" not in str(e.value)


def test_greedy_select_needs_cuda():
    with pytest.raises(ValueError, match="CUDA"):
        greedy_select(**_select_args())
