"""GPU kernels (Numba CUDA and NVRTC-compiled CUDA C++), each with the signature of its `reference` twin.

Importing this package needs no GPU: wrappers validate their arguments first and compile on first use.
"""

import numpy as _np

if not hasattr(_np, "row_stack"):  # numba-cuda 0.30 uses np.row_stack, removed in NumPy 2.5 (GPU image)
    _np.row_stack = _np.vstack
