"""GPU kernels (Numba CUDA and NVRTC-compiled CUDA C++), each with the signature of its `reference` twin.

Importing this package needs no GPU: wrappers validate their arguments first and compile on first use.
"""

import numpy as _np

if not hasattr(_np, "row_stack"):  # numba-cuda 0.30 uses np.row_stack, removed in NumPy 2.5 (GPU image)
    _np.row_stack = _np.vstack

# the vision tower's and the glue's ops, by family (kernels.registry lists every op with all its variants)
from .activations import bias_gelu  # noqa: E402
from .attention import attention  # noqa: E402
from .glue import scatter_image_embeds  # noqa: E402
from .norms import add_bias_layer_norm, layer_norm  # noqa: E402
from .rope import qkv_bias_rope, rope_index  # noqa: E402
from .vision import (add_pos_embed, patch_embed, vision_cu_seqlens, vision_pos_taps,  # noqa: E402
                     vision_rope_cos_sin)
