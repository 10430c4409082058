"""GPU kernels (Numba CUDA and NVRTC-compiled CUDA C++), each with the signature of its `reference` twin.

Importing this package needs no GPU: wrappers validate their arguments first and compile on first use.
"""

import numpy as _np

if not hasattr(_np, "row_stack"):  # numba-cuda 0.30 uses np.row_stack, removed in NumPy 2.5 (GPU image)
    _np.row_stack = _np.vstack

# NVRTC (CUDA C++) kernels
from .activations import bias_gelu  # noqa: E402
from .attention import attention  # noqa: E402
from .norms import add_bias_layer_norm, layer_norm  # noqa: E402
from .pos_embed import add_pos_embed  # noqa: E402
from .rope import qkv_bias_rope  # noqa: E402

# GEMMs: cuBLAS through torch
from .gemm import patch_embed  # noqa: E402

# Numba kernels (the numba twins of layer_norm / bias_gelu are registry variants, see kernels.registry)
from .glue import rope_index, scatter_image_embeds  # noqa: E402
from .vision import vision_cu_seqlens, vision_pos_taps, vision_rope_cos_sin  # noqa: E402
