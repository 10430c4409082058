"""The largest image the processor allows (16,777,216 pixels = 4096x4096: 65,536 patches, one
attention segment) through the vision tower of the tiny checkpoint on the kernels backend (bf16, eager and
CUDA-graphed, the default), beside the reference backend on the same GPU. Prints the peak memory beyond the
weights; JSON big_image-<card>-<date>.json in $OUT, else benchmarks/results/.
Run: PYTHONPATH=. python3 tools/big_image_gpu.py"""
import os, time
import torch
import model
from model.processor import smart_resize, IMAGE_MAX_PIXELS
from model.tiny import ensure_tiny_checkpoint

out_dir = os.environ.get("OUT") or None  # None: benchmarks/results/
tiny = ensure_tiny_checkpoint(os.environ.get("G1_TINY", "/tmp/g1tiny"))
h, w = smart_resize(4096, 4096)
assert h * w == IMAGE_MAX_PIXELS == 16777216, (h, w)
grid = torch.tensor([[1, h // 16, w // 16]])
g = torch.Generator(device="cuda").manual_seed(0)
pv = torch.randn(65536, 1536, device="cuda", generator=g)  # the processor's [N, 3*2*16*16] rows (values: any)
rec = {"card": torch.cuda.get_device_name(), "torch": torch.__version__, "pixels": h * w, "patches": 65536,
       "checkpoint": "tiny (vision hidden 128, 2 heads of 64, depth 2)", "dtype": "bfloat16", "runs": {}}
outs = {}
for name, kw in (("kernels_eager", dict(backend="kernels", cuda_graphs=False)),
                 ("kernels_graphs", dict(backend="kernels")),
                 ("reference", dict(backend="reference"))):
    m = model.load(tiny, device="cuda", dtype=torch.bfloat16, **kw)
    x = pv.to(torch.bfloat16)
    torch.cuda.synchronize(); base = torch.cuda.memory_allocated(); torch.cuda.reset_peak_memory_stats()
    times = []
    for run in range(2):  # the first call loads kernels / captures the graph
        torch.cuda.synchronize(); t0 = time.time()
        y = m.encode_images(x, grid)
        torch.cuda.synchronize(); times.append((time.time() - t0) * 1e3)
    peak = torch.cuda.max_memory_allocated() - base
    outs[name] = y.float()
    rec["runs"][name] = dict(ms=times, peak_bytes_beyond_weights=peak, finite=bool(torch.isfinite(y).all()),
                             placement_attention=m.placement(why=True)["attention"], out_shape=list(y.shape))
    print(f"{name}: {tuple(y.shape)} {times[0]:.0f} / {times[1]:.1f} ms, peak beyond weights {peak / 2**20:.0f} MiB, "
          f"attention on {m.placement()['attention']}", flush=True)
    del m, y
    torch.cuda.empty_cache()
ref = outs["reference"]
for name in ("kernels_eager", "kernels_graphs"):
    rec["runs"][name]["max_abs_diff_vs_reference"] = d = float((outs[name] - ref).abs().max())
    rec["runs"][name]["rel_l2_vs_reference"] = r = float((outs[name] - ref).norm() / ref.norm())
    print(f"{name}: max|diff| vs reference {d:.3g} (max|ref| {float(ref.abs().max()):.3g}), rel L2 {r:.2e}")
# the real large tower (9B / 27B / 35B-A3B: 27 layers, 1152 wide, 16 heads of 72), random weights, kernels + graphs
from model.config import ModelConfig
from model.loader import VISUAL, expected_shapes
from model.ops import ops_for
from model.tiny import tiny_config
from model.vision import VisionTower
from model.vision_graph import GraphedVisionTower
raw = tiny_config()
raw["vision_config"].update(depth=27, hidden_size=1152, num_heads=16, intermediate_size=4304, out_hidden_size=4096)
cfg = ModelConfig.from_dict(raw)
torch.manual_seed(0)
wts = {k[len(VISUAL):]: torch.randn(shape, device="cuda", dtype=torch.bfloat16) * (0.02 if len(shape) > 1 else 1.0)
       for k, shape in expected_shapes(cfg).items() if k.startswith(VISUAL)}
base = torch.cuda.memory_allocated()
for name, tower in (("9B_tower_kernels_eager", VisionTower(cfg.vision, wts, ops_for("kernels", cfg, torch.bfloat16))),):
    for graphs in (False, True):
        t = GraphedVisionTower(tower) if graphs else tower
        key = name.replace("eager", "graphs") if graphs else name
        torch.cuda.synchronize(); torch.cuda.reset_peak_memory_stats(); times = []
        for run in range(2):
            torch.cuda.synchronize(); t0 = time.time()
            y = t(pv.to(torch.bfloat16), grid)
            torch.cuda.synchronize(); times.append((time.time() - t0) * 1e3)
        peak = torch.cuda.max_memory_allocated() - base
        rec["runs"][key] = dict(ms=times, peak_bytes_beyond_weights=peak, finite=bool(torch.isfinite(y).all()),
                                out_shape=list(y.shape))
        print(f"{key}: {tuple(y.shape)} {times[0]:.0f} / {times[1]:.1f} ms, peak beyond weights {peak / 2**20:.0f} MiB",
              flush=True)
        del y, t
        torch.cuda.empty_cache()
rec["total_gpu_bytes"] = torch.cuda.get_device_properties(0).total_memory
from benchmarks.common import write_results  # card, commit, date, versions
runs = rec.pop("runs")
print("wrote", write_results("big_image", [dict(name=k, **v) for k, v in runs.items()], extra=rec, out_dir=out_dir))
