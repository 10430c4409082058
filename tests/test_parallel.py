"""Tensor / expert parallelism (model.parallel) on the CPU: gloo process groups of 2 and 4 ranks.

Spec: the same checkpoint in one process (`model.load(path)`, itself checked against HF in test_model_parity.py).
Every rank of a world must return the one-process logits (fp32: only the summation order of the row-parallel
products and of the all-reduces differs) and the identical greedy tokens, while holding (and reading from the
files) only its share of the language model's weights.

The checkpoints are tiny but divide by 4: 8 query / 4 KV heads, 4 key / 8 value DeltaNet heads, MLP width 96,
8 experts with a shared expert of width 40; the tied dense one has 318 tokens (not a multiple of 4: the last
vocabulary shard is padded), the MoE one is saved in several safetensors shards.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import pytest
import torch

import model as M
from model import parallel as P
from tests._tiny_hf import (IDS, VISION, _perturb, image_tokens, left_pad, one_torch_thread,  # noqa: F401
                            pixels, rand_text)

TEXT = dict(
    vocab_size=318, hidden_size=64, intermediate_size=96, num_hidden_layers=4,
    layer_types=["linear_attention", "full_attention", "linear_attention", "full_attention"],
    num_attention_heads=8, num_key_value_heads=4, head_dim=64,
    linear_conv_kernel_dim=4, linear_key_head_dim=16, linear_value_head_dim=16,
    linear_num_key_heads=4, linear_num_value_heads=8,
    rope_parameters=dict(rope_type="default", rope_theta=1e7, partial_rotary_factor=0.25, mrope_interleaved=True,
                         mrope_section=[3, 3, 2]),
    initializer_range=0.1,
)
MOE = dict(num_experts=8, num_experts_per_tok=2, moe_intermediate_size=24, shared_expert_intermediate_size=40)
REL = 1e-5  # fp32, as tests/test_generate.py: a different summation order only
NEW_TOKENS = 6


def build(kind: str, root: Path) -> Path:
    from transformers import (Qwen3_5Config, Qwen3_5ForConditionalGeneration, Qwen3_5MoeConfig,
                              Qwen3_5MoeForConditionalGeneration)

    torch.manual_seed({"dense": 7, "moe": 8, "kvrep": 9}[kind])
    if kind == "kvrep":  # 2 KV heads: replicated over 4 ranks (2 each)
        cfg = Qwen3_5Config(text_config=TEXT | dict(num_key_value_heads=2, vocab_size=320, tie_word_embeddings=False),
                            vision_config=VISION, **IDS, tie_word_embeddings=False)
        model = Qwen3_5ForConditionalGeneration(cfg)
    elif kind == "moe":
        text = {k: v for k, v in TEXT.items() if k != "intermediate_size"} | MOE | dict(vocab_size=320)
        cfg = Qwen3_5MoeConfig(text_config=text | dict(tie_word_embeddings=False), vision_config=VISION, **IDS,
                               tie_word_embeddings=False)
        model = Qwen3_5MoeForConditionalGeneration(cfg)
    else:
        cfg = Qwen3_5Config(text_config=TEXT | dict(tie_word_embeddings=True), vision_config=VISION, **IDS,
                            tie_word_embeddings=True)
        model = Qwen3_5ForConditionalGeneration(cfg)
    _perturb(model, 7)
    path = root / kind
    model.save_pretrained(path, max_shard_size="300KB" if kind == "moe" else "100MB")
    return path


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("tp")
    return {kind: build(kind, root) for kind in ("dense", "moe", "kvrep")}


def case():
    """Two left-padded rows: one with two images of different sizes (so the vision tower has work for 2 ranks),
    one text-only."""
    g = torch.Generator().manual_seed(3)
    grids = [(1, 4, 6), (1, 2, 4)]
    rows = [rand_text(5, g) + image_tokens(grids[0]) + rand_text(2, g) + image_tokens(grids[1]) + rand_text(3, g),
            rand_text(7, g)]
    ids, mask = left_pad(rows)
    return dict(input_ids=ids, attention_mask=mask, pixel_values=pixels(grids, g), image_grid_thw=torch.tensor(grids))


def run_case(m) -> dict:
    m.cuda_graphs = False
    c = case()
    return dict(logits=m.logits(**c), tokens=m.generate_ids(**c, max_new_tokens=NEW_TOKENS),
                lm_bytes=P.lm_bytes(m.lm), bytes_read=getattr(m, "bytes_read", None),
                cache_bytes=sum(s.cache.nbytes for s in m._sessions.values()),
                shapes={k: tuple(v.shape) for k, v in m.lm.w.items()})


def _worker(rank: int, world: int, init_file: str, ckpts: dict, out_dir: str) -> None:
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    out = {}
    try:
        for kind, path in ckpts.items():
            m = M.load(path, tensor_parallel=world)
            out[kind] = run_case(m)
            if kind == "dense":  # sampling without a seed: every rank draws rank 0's seed
                out["sampled"] = m.generate_ids(case()["input_ids"][1:, -4:], do_sample=True, max_new_tokens=4)
        try:
            M.load(ckpts["dense"], tensor_parallel=2 * world)
        except ValueError as e:
            out["world_error"] = str(e)
    finally:
        torch.save(out, os.path.join(out_dir, f"rank{rank}.pt"))
        dist.destroy_process_group()


def run_world(world: int, ckpts: dict, tmp: Path) -> list[dict]:
    import torch.multiprocessing as mp

    mp.spawn(_worker, args=(world, str(tmp / "rendezvous"), {k: str(v) for k, v in ckpts.items()}, str(tmp)),
             nprocs=world, join=True)
    return [torch.load(tmp / f"rank{r}.pt", weights_only=False) for r in range(world)]


def file_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.glob("*.safetensors"))


_ONE: dict = {}  # one-process model and results per checkpoint


@pytest.mark.parametrize("world", [2, 4])
def test_ranks_match_one_process(ckpts, tmp_path, world):
    ckpts = {k: v for k, v in ckpts.items() if k != "kvrep" or world == 4}  # KV heads replicated at 4 ranks only
    ranks = run_world(world, ckpts, tmp_path)
    for kind, path in ckpts.items():
        if kind not in _ONE:
            _ONE[kind] = (M.load(path), None)
            _ONE[kind] = (_ONE[kind][0], run_case(_ONE[kind][0]))
        one, want = _ONE[kind]
        for r, got in enumerate(ranks):
            g = got[kind]
            err = float((g["logits"] - want["logits"]).abs().max() / want["logits"].abs().max())
            assert err < REL, f"{kind} rank {r}/{world}: logits differ from one process by {err:.2e}"
            assert torch.equal(g["tokens"], want["tokens"]), f"{kind} rank {r}/{world}: greedy tokens differ"
            # memory: only the rank's share of every split tensor, the replicated ones whole
            repl = sum(t.numel() * t.element_size() for k, t in one.lm.w.items() if g["shapes"][k] == tuple(t.shape))
            split_full = want["lm_bytes"] - repl
            t = one.config.text
            vpad = (-t.vocab_size) % world * t.hidden_size * 4
            # fewer KV heads than ranks: a rank holds one whole KV head (1/Hkv of k_proj and v_proj, not 1/N)
            kv = 2 * t.layer_types.count("full_attention") * t.num_key_value_heads * t.head_dim * t.hidden_size * 4
            kvrep = kv * (1 / min(world, t.num_key_value_heads) - 1 / world)
            assert g["lm_bytes"] <= repl + split_full / world + vpad + kvrep, \
                f"{kind} rank {r}: holds more than its share"
            assert repl < 0.1 * want["lm_bytes"], f"{kind}: too little is split ({repl} of {want['lm_bytes']} bytes)"
            if kind != "kvrep":  # KV cache, conv and recurrent states: exactly the rank's heads
                assert g["cache_bytes"] * world == want["cache_bytes"] > 0, f"{kind} rank {r}: cache not 1/{world}"
            # reading: the vision tower (data-parallel, replicated) whole, the language model's share only
            vis = sum(t.numel() * t.element_size() for t in one.vision.w.values())
            assert g["bytes_read"] <= vis + (file_bytes(path) - vis) / world + repl + kvrep, \
                f"{kind} rank {r}: read too much"
        if kind == "kvrep":  # 1 KV head a rank at world 4 (replicated), 1 at world 2 (split)
            assert ranks[0][kind]["shapes"]["layers.1.self_attn.qkv_proj.weight"][0] == (8 // world * 2 + 2) * 64
        if kind == "moe":
            e = one.config.text.num_experts // world
            assert ranks[0][kind]["shapes"]["layers.0.mlp.experts.gate_up_proj"][0] == e
    assert all(torch.equal(r["sampled"], ranks[0]["sampled"]) for r in ranks), "sampled tokens differ between ranks"
    assert "world size is" in ranks[0]["world_error"] and f"--nproc-per-node {2 * world}" in ranks[0]["world_error"]


def test_check_divisible_names_every_count():
    from model.config import TextConfig

    t = TextConfig(num_attention_heads=8, num_key_value_heads=3, linear_num_key_heads=4, linear_num_value_heads=6,
                   intermediate_size=100)
    with pytest.raises(ValueError, match=r"tensor_parallel=4 does not divide the checkpoint's "
                                         r"linear_num_value_heads=6, num_key_value_heads=3 \(each must be a multiple of 4"):
        P.check_divisible(t, 4)
    with pytest.raises(ValueError, match=r"divide the checkpoint's num_key_value_heads=3 \(each"):
        P.check_divisible(dataclasses.replace(t, linear_num_value_heads=8), 2)
    P.check_divisible(dataclasses.replace(t, num_key_value_heads=2, linear_num_value_heads=8), 4)  # KV replicated
    assert P.local_text_config(dataclasses.replace(t, num_key_value_heads=2, linear_num_value_heads=8),
                               4).num_key_value_heads == 1
    moe = TextConfig(num_attention_heads=8, num_key_value_heads=4, linear_num_key_heads=4, linear_num_value_heads=8,
                     num_experts=6, shared_expert_intermediate_size=64)
    with pytest.raises(ValueError, match="num_experts=6"):
        P.check_divisible(moe, 4)


def test_load_without_torchrun_says_how_to_launch(ckpts, monkeypatch):
    for var in ("RANK", "WORLD_SIZE"):
        monkeypatch.delenv(var, raising=False)
    with pytest.raises(ValueError, match=r"tensor_parallel=2 needs torch.distributed: launch with `torchrun "
                                         r"--nproc-per-node 2"):
        M.load(ckpts["dense"], tensor_parallel=2)
    with pytest.raises(ValueError, match="tensor_parallel must be a positive int, got 0"):
        M.load(ckpts["dense"], tensor_parallel=0)


def test_vision_split_balances_by_patches():
    from types import SimpleNamespace

    def split(patches, world):
        return P.DataParallelVision(SimpleNamespace(cfg=None), SimpleNamespace(world=world)).split(patches)

    assert split([24, 8], 2) == [0, 1, 2]
    assert split([8, 8, 8, 8], 4) == [0, 1, 2, 3, 4]
    assert split([100, 1, 1], 2) == [0, 1, 3]
    assert split([4], 2) == [0, 1, 1]  # one image: the second rank encodes nothing


def test_cli_under_torchrun_writes_the_one_process_answer():
    """`torchrun --nproc-per-node 2 -m model describe --tensor-parallel 2`: rank 0 alone writes, the same text as
    one process (the tiny random checkpoint, greedy)."""
    import shutil
    import subprocess
    import sys

    torchrun = shutil.which("torchrun") or str(Path(sys.executable).with_name("torchrun"))
    from model.tiny import ensure_tiny_checkpoint

    ensure_tiny_checkpoint()  # the default cache (shared with the CLI tests), written before the ranks race for it
    args = ["-m", "model", "describe", "--max-new-tokens", "6", "--quiet"]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    one = subprocess.run([sys.executable, *args], capture_output=True, text=True, env=env, timeout=300)
    assert one.returncode == 0, one.stderr
    two = subprocess.run([torchrun, "--nproc-per-node", "2", *args, "--tensor-parallel", "2"], capture_output=True,
                         text=True, env=env, timeout=300)
    assert two.returncode == 0, two.stderr[-2000:]
    assert two.stdout == one.stdout and one.stdout.strip()
    assert two.stderr.count("decode:") == 1  # timings from rank 0 only


@pytest.mark.gpu
def test_nccl_ranks_match_one_gpu_at_bf16():
    """On a host of 2+ GPUs: tools/tp_gpu.py --check (2 NCCL ranks vs one process, bf16, 9B widths at 4 layers,
    the decode step captured with its collectives)."""
    import subprocess
    import sys

    if torch.cuda.device_count() < 2:
        pytest.skip("needs 2 GPUs")
    root = Path(__file__).resolve().parents[1]
    p = subprocess.run([sys.executable, str(root / "tools" / "tp_gpu.py"), "--check", "--gpus", "2", "--out",
                        str(root / "benchmarks" / "results")], capture_output=True, text=True, timeout=600, cwd=root)
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-2000:]


def test_read_shards_equals_take_of_the_whole(ckpts):
    """Each rank's slices read from the files (get_slice; per-expert or fused experts) = the same cut of the whole
    tensors in memory (Shard.take, used by tools/tp_gpu.py)."""
    from model.loader import load_weights

    for kind in ("dense", "moe"):
        cfg, full = load_weights(ckpts[kind], dtype=torch.float32)
        for rank in range(4):
            shard = P.Shard(rank, 4, cfg)
            got, _ = P.read_shards(ckpts[kind], shard, dtype=torch.float32)
            assert set(got) == set(full)
            for name, t in full.items():
                assert torch.equal(got[name], shard.take(name, t)), f"{kind} rank {rank}: {name}"
                assert tuple(got[name].shape) == shard.local_shape(name, tuple(t.shape)), name
