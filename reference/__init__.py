"""The spec: a pure-PyTorch reference of every op (fp32/fp64 math, readable, shapes in docstrings).

Every op here has a twin in `kernels` with the same signature and meaning. See docs in CONTRIBUTING.md.
"""

from .activations import *  # noqa: F401,F403
from .attention import *  # noqa: F401,F403
from .conv1d import *  # noqa: F401,F403
from .decode_attention import *  # noqa: F401,F403
from .deltanet import *  # noqa: F401,F403
from .glue import *  # noqa: F401,F403
from .moe import *  # noqa: F401,F403
from .norms import *  # noqa: F401,F403
from .rope import *  # noqa: F401,F403
from .vision import *  # noqa: F401,F403
