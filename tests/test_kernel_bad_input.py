"""The NVRTC vision kernels reject bad arguments with a ValueError naming the argument, before any compile or
launch. Runs on CPU: wrappers check structure (dtype, shape, layout) before devices, so each mistake gets its
own message, and a CPU tensor is itself one of the mistakes.
"""

from __future__ import annotations

import pytest
import torch

from kernels.registry import REGISTRY
from kernels.runtime.dispatch import NvrtcSource
from property_tests import strategies as S

BF = torch.bfloat16


@pytest.fixture(autouse=True)
def no_launch(monkeypatch):
    """Any compile or launch during these tests is a failure: errors must come first."""
    def boom(*a, **k):
        raise AssertionError("kernel launched despite bad input")
    monkeypatch.setattr(NvrtcSource, "launch", boom)
    monkeypatch.setattr(NvrtcSource, "kernel", boom)


def _gpu_like(t):
    """Pretend-valid: on a GPU machine move to CUDA (keeping the strides) so only the intended mistake is
    left; on a CPU machine leave it."""
    if not (isinstance(t, torch.Tensor) and torch.cuda.is_available()):
        return t
    return torch.empty_strided(t.shape, t.stride(), dtype=t.dtype, device="cuda").copy_(t)


def _noncontig(t: torch.Tensor) -> torch.Tensor:
    """Same shape and values, transposed strides."""
    return t.t().contiguous().t() if t.dim() == 2 else t.repeat_interleave(2)[::2]


def _call(op, args, **kw):
    return REGISTRY[op].kernels["nvrtc"](*args, **kw)


def _args(op, dtype=BF):
    builders = {
        "layer_norm": lambda: S.build_layer_norm(3, 40, dtype),
        "add_bias_layer_norm": lambda: S.build_add_bias_layer_norm(3, 40, dtype),
        "bias_gelu": lambda: S.build_bias_gelu(3, 40, dtype),
        "add_pos_embed": lambda: S.build_add_pos_embed(3, 40, dtype, table_rows=5),
        "qkv_bias_rope": lambda: S.build_qkv_bias_rope(3, 2, 64, dtype),
    }
    return list(builders[op]().args)


OPS = ("layer_norm", "add_bias_layer_norm", "bias_gelu", "add_pos_embed", "qkv_bias_rope")
FIRST = {"layer_norm": "x", "add_bias_layer_norm": "x", "bias_gelu": "x", "add_pos_embed": "x",
         "qkv_bias_rope": "qkv"}


@pytest.mark.parametrize("op", OPS)
def test_cpu_tensor_is_rejected(op):
    if torch.cuda.is_available():
        pytest.skip("CPU tensors are the valid-looking input only on a CPU machine")
    with pytest.raises(ValueError, match=f"{FIRST[op]} must be on a CUDA device"):
        _call(op, _args(op))


@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("dtype", [torch.float64, torch.int32], ids=str)
def test_wrong_dtype(op, dtype):
    args = _args(op)
    args[0] = args[0].to(dtype)
    with pytest.raises(ValueError, match=f"{FIRST[op]} must have dtype"):
        _call(op, args)


@pytest.mark.parametrize("op", OPS)
def test_non_contiguous(op):
    args = _args(op)
    args[0] = _noncontig(args[0])
    assert not args[0].is_contiguous()
    with pytest.raises(ValueError, match=f"{FIRST[op]} must be contiguous"):
        _call(op, args)


@pytest.mark.parametrize("op", OPS)
def test_wrong_rank(op):
    args = _args(op)
    args[0] = args[0].reshape(-1)
    with pytest.raises(ValueError, match=f"{FIRST[op]} must have 2 dimensions"):
        _call(op, args)


# (op, argument position, replacement builder, message)
WRONG = [
    ("layer_norm", 1, lambda a: a[1][:-1], "weight must have shape"),
    ("layer_norm", 2, lambda a: a[2].float(), "bias must have the input dtype"),
    ("layer_norm", 3, lambda a: -1.0, "eps must be"),
    ("add_bias_layer_norm", 1, lambda a: a[1][:-1], "bias must have shape"),
    ("add_bias_layer_norm", 2, lambda a: a[2][:-1], "residual must have shape"),
    ("add_bias_layer_norm", 2, lambda a: a[2].half(), "residual must have the input dtype"),
    ("add_bias_layer_norm", 4, lambda a: _noncontig(torch.zeros(80, dtype=BF))[:40], "norm_bias must"),
    ("bias_gelu", 1, lambda a: a[1][:-1], "bias must have shape"),
    ("bias_gelu", 2, lambda a: "sigmoid", "approximate must be"),
    ("add_pos_embed", 1, lambda a: a[1][:, :-1].contiguous(), "table must have shape"),
    ("add_pos_embed", 1, lambda a: a[1].half(), "table must have the input dtype"),
    ("add_pos_embed", 2, lambda a: a[2].long(), "index must have dtype"),
    ("add_pos_embed", 2, lambda a: a[2][:, :-1].contiguous(), "index must have shape"),
    ("add_pos_embed", 3, lambda a: a[3].double(), "weight must have dtype"),
    ("qkv_bias_rope", 1, lambda a: a[1][:-3], "bias must have shape"),
    ("qkv_bias_rope", 2, lambda a: a[2][:, :-1].contiguous(), "cos must have shape"),
    ("qkv_bias_rope", 3, lambda a: a[3].double(), "sin must have dtype"),
    ("qkv_bias_rope", 4, lambda a: 5, "qkv width"),
    ("qkv_bias_rope", 4, lambda a: 0, "num_heads must be"),
]


@pytest.mark.parametrize("op,pos,make,msg", WRONG, ids=[f"{w[0]}-{w[3]}" for w in WRONG])
def test_wrong_argument(op, pos, make, msg):
    args = _args(op)
    args[pos] = make(args)
    with pytest.raises(ValueError, match=msg):
        _call(op, [_gpu_like(a) for a in args])


@pytest.mark.parametrize("hd", [32, 96, 66])
def test_unsupported_head_dim(hd):
    args = list(S.build_qkv_bias_rope(3, 2, hd, BF).args)
    with pytest.raises(ValueError, match=f"head_dim {hd} .* is not supported"):
        _call("qkv_bias_rope", args)


@pytest.mark.parametrize("op", OPS)
def test_bad_out(op):
    args = [_gpu_like(a) for a in _args(op)]
    case_outs = {"layer_norm": 1, "add_bias_layer_norm": 2, "bias_gelu": 1, "add_pos_embed": 1, "qkv_bias_rope": 3}[op]
    x = args[0]
    shape = (x.shape[0], 2, 64) if op == "qkv_bias_rope" else tuple(x.shape)
    good = lambda: torch.empty(shape, dtype=BF, device=x.device)  # noqa: E731
    wrong_shape = torch.empty((shape[0] + 1,) + shape[1:], dtype=BF, device=x.device)
    wrong_dtype = torch.empty(shape, dtype=torch.float32, device=x.device)
    for bad, msg in ((wrong_shape, "must have shape"), (wrong_dtype, "must have dtype")):
        out = bad if case_outs == 1 else (bad,) + tuple(good() for _ in range(case_outs - 1))
        with pytest.raises(ValueError, match=msg):
            _call(op, args, out=out)
    if case_outs > 1:
        with pytest.raises(ValueError, match="out must be a"):
            _call(op, args, out=good())


def test_non_tensor_is_a_type_error():
    with pytest.raises(TypeError, match="x must be a torch.Tensor"):
        _call("layer_norm", [[1.0, 2.0], None, None])
