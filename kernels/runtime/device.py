"""What the kernels ask of a CUDA device, answered once per device and cached.

    index_of(x.device)      # the device index of a torch.device (None / 'cuda' -> the current one)
    capability(0)           # (9, 0)
    arch(0)                 # 'sm_90': the arch NVRTC compiles for
    sm_count(0)             # 132
    max_shared_memory(0)    # 232448: dynamic shared memory a CTA may opt in to
    is_hopper(x.device)     # True on sm_90 exactly: the sm_90a (wgmma, TMA) kernels run there and nowhere else
"""

from __future__ import annotations

from functools import lru_cache

import torch


def current_device() -> int:
    return torch.cuda.current_device()


def index_of(device: torch.device | int | None) -> int:
    """Index of a CUDA device given as a torch.device, an int or None (the current device)."""
    if device is None:
        return torch.cuda.current_device()
    if isinstance(device, int):
        return device
    return device.index if device.index is not None else torch.cuda.current_device()


@lru_cache(maxsize=None)
def capability(index: int) -> tuple[int, int]:
    return torch.cuda.get_device_capability(index)


def arch(index: int | None = None) -> str:
    """'sm_XY' of a device (default: the current one)."""
    major, minor = capability(index_of(index))
    return f"sm_{major}{minor}"


@lru_cache(maxsize=None)
def sm_count(index: int) -> int:
    return torch.cuda.get_device_properties(index).multi_processor_count


@lru_cache(maxsize=None)
def max_shared_memory(index: int) -> int:
    """Bytes of shared memory one CTA may use after opting in (227 KB on Hopper; 48 KB where torch does not say)."""
    p = torch.cuda.get_device_properties(index)
    return int(getattr(p, "shared_memory_per_block_optin", 0) or 48 * 1024)


def is_hopper(device: torch.device | int | None) -> bool:
    """A CUDA device of compute capability 9.0 exactly (sm_90a code does not run on later archs); False for a
    CPU torch.device."""
    if isinstance(device, torch.device) and device.type != "cuda":
        return False
    return capability(index_of(device)) == (9, 0)
