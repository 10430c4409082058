"""kernels.attention rejects bad arguments with a clear ValueError/TypeError before any launch (CPU only).

CPU tensors are used throughout: every structural check runs before the device check, so each case below
reaches its own error; the last cases check that otherwise-valid CPU tensors are refused as such.
"""

import pytest
import torch

from kernels.attention import attention


def qkv(T=6, hq=4, hkv=2, d=72, dtype=torch.bfloat16, dk=None):
    q = torch.randn(T, hq, d).to(dtype)
    k = torch.randn(T, hkv, dk or d).to(dtype)
    v = torch.randn(T, hkv, dk or d).to(dtype)
    return q, k, v


CU = torch.tensor([0, 2, 6], dtype=torch.int32)


def test_mismatched_head_dims():
    q, k, v = qkv(dk=64)
    with pytest.raises(ValueError, match="head dim"):
        attention(q, k, v, CU, False)


def test_v_shape_differs_from_k():
    q, k, v = qkv()
    with pytest.raises(ValueError, match="k and v"):
        attention(q, k, v[:, :1].contiguous(), CU, False)


def test_heads_do_not_divide():
    q, k, v = qkv(hq=6, hkv=4)
    with pytest.raises(ValueError, match="multiple"):
        attention(q, k, v, CU, False)


def test_token_counts_differ():
    q, k, v = qkv()
    with pytest.raises(ValueError, match="token count"):
        attention(q, k[:5], v[:5], CU, False)


@pytest.mark.parametrize("d", [32, 96, 112, 160])
def test_unsupported_head_dim(d):
    q, k, v = qkv(d=d)
    with pytest.raises(ValueError, match="not supported"):
        attention(q, k, v, CU, False)


@pytest.mark.parametrize("dtype", [torch.float64, torch.int32])
def test_unsupported_dtype(dtype):
    q, k, v = (t.to(dtype) for t in qkv())
    with pytest.raises(ValueError, match="dtype"):
        attention(q, k, v, CU, False)


def test_fp32_goes_to_the_fp32_kernel_and_checks_the_device():
    q, k, v = (t.float() for t in qkv())  # CPU tensors: fp32 is supported, but never silently copied
    with pytest.raises(ValueError, match="CUDA"):
        attention(q, k, v, CU, False)


def test_mixed_dtypes():
    q, k, v = qkv()
    with pytest.raises(ValueError, match="share a dtype"):
        attention(q, k.half(), v.half(), CU, False)


def test_wrong_rank():
    q, k, v = qkv()
    with pytest.raises(ValueError, match="dimensions"):
        attention(q.reshape(6, -1), k, v, CU, False)


def test_not_contiguous():
    q, k, v = qkv(hq=2, hkv=2)
    qt = torch.randn(2, 6, 72).to(torch.bfloat16).transpose(0, 1)  # [6, 2, 72], strided
    with pytest.raises(ValueError, match="contiguous"):
        attention(qt, k, v, CU, False)


@pytest.mark.parametrize("cu, match", [
    ([0, 4, 2, 6], "non-decreasing"),
    ([0, 2, 5], "end at"),
    ([0, 2, 7], "end at"),
    ([1, 2, 6], "start at 0"),
    ([6], "at least 2"),
])
def test_bad_cu_seqlens(cu, match):
    q, k, v = qkv()
    with pytest.raises(ValueError, match=match):
        attention(q, k, v, torch.tensor(cu, dtype=torch.int32), False)


def test_cu_seqlens_float():
    q, k, v = qkv()
    with pytest.raises(ValueError, match="cu_seqlens"):
        attention(q, k, v, CU.float(), False)


def test_bad_scale_and_causal():
    q, k, v = qkv()
    with pytest.raises(ValueError, match="scale"):
        attention(q, k, v, CU, False, scale=-1.0)
    with pytest.raises(ValueError, match="scale"):
        attention(q, k, v, CU, False, scale=float("nan"))
    with pytest.raises(TypeError, match="causal"):
        attention(q, k, v, CU, 1)


def test_bad_out():
    q, k, v = qkv()
    with pytest.raises(ValueError, match="out"):
        attention(q, k, v, CU, False, out=torch.empty(6, 4, 64, dtype=torch.bfloat16))
    with pytest.raises(ValueError, match="out"):
        attention(q, k, v, CU, False, out=torch.empty(6, 4, 72, dtype=torch.float16))


def test_bad_max_seqlen():
    q, k, v = qkv()
    with pytest.raises(ValueError, match="max_seqlen"):
        attention(q, k, v, CU, False, max_seqlen=-1)


def test_cpu_tensors_refused():
    q, k, v = qkv()
    with pytest.raises(ValueError, match="CUDA"):
        attention(q, k, v, CU, False)
    with pytest.raises(ValueError, match="CUDA"):
        attention(q, k, v, CU, True, validate=False)


def test_cu_seqlens_revalidated_after_in_place_change():
    """The once-per-tensor validation cache keys on the tensor's version: an in-place edit is re-checked."""
    q, k, v = qkv()
    cu = CU.clone()
    with pytest.raises(ValueError, match="CUDA"):  # valid cu_seqlens: fails only at the device check
        attention(q, k, v, cu, False)
    cu[1] = 7
    with pytest.raises(ValueError, match="non-decreasing"):
        attention(q, k, v, cu, False)


def test_inference_mode_cu_seqlens_are_still_checked():
    """Inference tensors keep no version counter, so the once-per-tensor cache is skipped, not the check."""
    q, k, v = qkv()
    with torch.inference_mode():
        bad = torch.tensor([0, 5, 3], dtype=torch.int32)
        with pytest.raises(ValueError, match="cu_seqlens"):
            attention(q, k, v, bad, False)


@pytest.mark.parametrize("make, match", [
    (lambda: torch.randn(8, 2, 72, dtype=torch.bfloat16).transpose(0, 1), "contiguous"),
    (lambda: torch.randn(8, 2, 72), "dtype"),
    (lambda: torch.randn(8, 72, dtype=torch.bfloat16), "dimensions|ndim|rank"),
    (lambda: torch.randn(8, 2, 72, dtype=torch.bfloat16), "CUDA"),
])
def test_tensor_map_rejects_what_it_cannot_describe(make, match):
    """kernels.runtime.tma.tensor_map_3d (the Hopper kernel's TMA descriptors) checks before touching the driver."""
    from kernels.runtime.tma import tensor_map_3d

    with pytest.raises(ValueError, match=match):
        tensor_map_3d(make(), 64, 128)


def test_tensor_map_box_rows_limit():
    from kernels.runtime.tma import tensor_map_3d

    with pytest.raises(ValueError, match="box_rows"):
        tensor_map_3d(torch.randn(8, 2, 72, dtype=torch.bfloat16), 64, 300)
