"""kernels.attention's checks that are not a plain bad argument (those are in property_tests/cases/attention.py,
run by tests/test_bad_input.py): the once-per-tensor validation cache, validate=False, and the TMA descriptors
(CPU only; CPU tensors are used throughout, every structural check runs before the device check).
"""

import pytest
import torch

from kernels.attention import attention


def qkv(T=6, hq=4, hkv=2, d=72, dtype=torch.bfloat16):
    return tuple(torch.randn(T, h, d).to(dtype) for h in (hq, hkv, hkv))


CU = torch.tensor([0, 2, 6], dtype=torch.int32)


def test_cpu_tensors_refused_without_validation():
    q, k, v = qkv()
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
