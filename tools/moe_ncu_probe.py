"""ncu probe: one MoE layer (tools/moe_gpu.py Layer.forward: router GEMM, moe_topk, moe_mlp with the shared expert) at
T tokens, three warm-up calls, then two calls between cudaProfilerStart/Stop, so ncu sees only the layer's kernels:

    ncu --profile-from-start off --section SpeedOfLight --section MemoryWorkloadAnalysis --section WarpStateStats \
        --section Occupancy --section LaunchStats python3 tools/moe_ncu_probe.py [T] [size]
"""

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from moe_gpu import Layer  # noqa: E402

T = int(sys.argv[1]) if len(sys.argv) > 1 else 1
layer = Layer(sys.argv[2] if len(sys.argv) > 2 else "35B-A3B")
x = torch.randn(T, layer.H, device="cuda", dtype=torch.bfloat16)
for _ in range(3):
    layer.forward(x)
torch.cuda.synchronize()
torch.cuda.profiler.start()
for _ in range(2):
    layer.forward(x)
torch.cuda.synchronize()
torch.cuda.profiler.stop()
