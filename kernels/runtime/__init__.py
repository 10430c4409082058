"""Shared kernel machinery, written once: NVRTC compile/cache/launch, Numba interop, argument checks."""
