"""Tensor and expert parallelism over torch.distributed: `model.load(path, tensor_parallel=N)` under `torchrun`.

Launch: `torchrun --nproc-per-node N script.py` (NCCL on GPUs, gloo on CPUs); every rank calls
`model.load(path, tensor_parallel=N, device="cuda")` and then runs the same calls with the same inputs (the
prompts, images and sampling seed must be equal on every rank; every rank gets the same tokens back).
A process group set up by the caller is used as it is.

How the model is split over N ranks (Megatron-style; rank r holds the r-th contiguous share of every split):
* Gated attention: query heads and KV heads (each a multiple of N), so q|gate, k, v rows of the projections,
  the KV cache and the rotary/norm work follow their heads; o_proj is row-parallel (its input columns split).
* Gated DeltaNet: key heads and value heads (each a multiple of N): the q, k and v channels of in_proj_qkv and of
  the depthwise conv (so the conv state), in_proj_z/b/a, A_log, dt_bias and the recurrent state follow their
  heads; out_proj is row-parallel.
* Dense MLP: gate/up column-parallel, down row-parallel. MoE: the experts split over the ranks (expert parallel,
  E a multiple of N); the router is replicated and each rank runs the routed tokens of its own experts (the
  others get weight 0); the shared expert is tensor-parallel (its intermediate size a multiple of N).
* One all-reduce (sum) after each mixer and after each MLP: the partial outputs of the row-parallel projections
  (and of the local experts) add up to the layer's output, which every rank then holds whole (the residual
  stream, the norms and the router run replicated).
* Vocabulary-parallel embedding and lm_head: ceil(V/N) rows per rank (the last shard zero-padded); the embedding
  looks up the ids in its own rows (zeros elsewhere) and all-reduces; lm_head's partial logits are all-gathered.
* The vision tower runs data-parallel: replicated weights, each rank encodes a contiguous share of the images
  (balanced by patch count), and the merged embeddings are all-gathered in image order.
* Loading: each rank reads only its own slices of the safetensors shards (`safe_open(...).get_slice`), and of
  per-expert checkpoints only its own experts; names and shapes are checked against config.json on the full
  headers first, as `model.loader.load_weights` does.
* The CUDA-graph decode step: the collectives are issued on the current stream, so NCCL's enter the captured
  graph (a warm-up collective runs at load so the communicator exists before any capture).
"""

from __future__ import annotations

import dataclasses
import functools
import os
from collections import defaultdict
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from .config import ModelConfig, TextConfig
from .language import LanguageModel
from .loader import (EMBED, LM, LM_HEAD, _PER_EXPERT, _progress, _resolve_dtype, add_expert,
                     checkpoint_files, open_checkpoint)


def _dist():
    import torch.distributed as dist

    if not dist.is_available():
        raise ValueError("tensor_parallel needs torch.distributed, which this torch build lacks")
    return dist


# --------------------------------------------------------------------------------------------- the split

def check_divisible(text: TextConfig, n: int) -> None:
    """One ValueError naming every head / expert / width count of the checkpoint that N ranks cannot share."""
    counts = {"num_attention_heads": text.num_attention_heads, "linear_num_key_heads": text.linear_num_key_heads,
              "linear_num_value_heads": text.linear_num_value_heads}
    if text.is_moe:
        counts["num_experts"] = text.num_experts
        counts["shared_expert_intermediate_size"] = text.shared_expert_intermediate_size
    else:
        counts["intermediate_size"] = text.intermediate_size
    bad = [f"{k}={v}" for k, v in counts.items() if v % n]
    hkv = text.num_key_value_heads
    if hkv % n and n % hkv:  # fewer KV heads than ranks: each is replicated over n / hkv ranks
        bad.append(f"num_key_value_heads={hkv}")
    if bad:
        raise ValueError(f"tensor_parallel={n} does not divide the checkpoint's {', '.join(bad)} "
                         f"(each must be a multiple of {n}, the KV heads a multiple or a divisor of it; pick a "
                         "tensor_parallel that divides them)")


def local_text_config(text: TextConfig, n: int) -> TextConfig:
    """The text config of one rank's share: 1/n of the heads and MLP widths (one KV head, replicated, when there
    are fewer KV heads than ranks); num_experts (the router's width), moe_intermediate_size (experts are whole)
    and vocab_size (the logits are gathered) stay global."""
    check_divisible(text, n)
    return dataclasses.replace(
        text, num_attention_heads=text.num_attention_heads // n,
        num_key_value_heads=max(1, text.num_key_value_heads // n),
        linear_num_key_heads=text.linear_num_key_heads // n, linear_num_value_heads=text.linear_num_value_heads // n,
        intermediate_size=text.intermediate_size // n if not text.is_moe else text.intermediate_size,
        shared_expert_intermediate_size=text.shared_expert_intermediate_size // n)


@dataclass(frozen=True)
class Shard:
    """Which share of the model this process holds: rank `rank` of `world`, over process group `group`."""
    rank: int
    world: int
    config: ModelConfig  # the checkpoint's (global) config
    group: object = None  # None: the default (world) group

    @property
    def local_config(self) -> ModelConfig:
        return dataclasses.replace(self.config, text=local_text_config(self.config.text, self.world))

    @property
    def vocab_rows(self) -> int:
        """Embedding / lm_head rows per rank: ceil(V / N)."""
        return -(-self.config.text.vocab_size // self.world)

    @property
    def experts(self) -> tuple[int, int]:
        """[first, end) of this rank's experts (MoE)."""
        e = self.config.text.num_experts // self.world
        return self.rank * e, (self.rank + 1) * e

    def common_seed(self, device) -> int:
        """A fresh random seed, rank 0's on every rank (sampling without a seed must draw the same tokens)."""
        t = torch.randint(0, 2 ** 62, (1,), dtype=torch.int64).to(device)
        _dist().broadcast(t, src=0, group=self.group)
        return int(t.item())

    def language_model(self, cfg: TextConfig, weights, ops) -> "ParallelLanguageModel":
        return ParallelLanguageModel(cfg, weights, ops, self)

    def vision(self, tower) -> "DataParallelVision":
        return DataParallelVision(tower, self)

    # the slicing plan ------------------------------------------------------------------------------------
    def slices(self, name: str) -> list[tuple[int, int, int]] | None:
        """How this rank reads HF tensor `name`: [(dim, start, stop), ...] parts concatenated along dim, or None
        for the whole tensor (replicated). Per-expert tensors of other ranks' experts are not read at all
        (see `reads`)."""
        t, r, n = self.config.text, self.rank, self.world

        def share(count: int, width: int = 1, base: int = 0, dim: int = 0):
            c = count // n
            return (dim, base + r * c * width, base + (r + 1) * c * width)

        if name in (EMBED, LM_HEAD):
            return [(0, r * self.vocab_rows, min((r + 1) * self.vocab_rows, t.vocab_size))]
        if not name.startswith(LM + "layers."):
            return None  # vision tower, final norm: replicated
        leaf = name.split(".", 4)[4]  # after model.language_model.layers.{i}.
        d, hq, hkv = t.head_dim, t.num_attention_heads, t.num_key_value_heads
        nk, nv = t.linear_num_key_heads, t.linear_num_value_heads
        dk, dv = t.linear_key_head_dim, t.linear_value_head_dim
        # KV heads: a share, or (fewer heads than ranks) the one head this rank's query heads attend to
        kv = share(hkv, d) if hkv >= n else (0, r * hkv // n * d, (r * hkv // n + 1) * d)
        plan = {
            "self_attn.q_proj.weight": [share(hq, 2 * d)],  # rows per head: [q | gate]
            "self_attn.k_proj.weight": [kv], "self_attn.v_proj.weight": [kv],
            "self_attn.o_proj.weight": [share(hq, d, dim=1)],
            "linear_attn.in_proj_z.weight": [share(nv, dv)],
            "linear_attn.in_proj_b.weight": [share(nv)], "linear_attn.in_proj_a.weight": [share(nv)],
            "linear_attn.A_log": [share(nv)], "linear_attn.dt_bias": [share(nv)],
            "linear_attn.out_proj.weight": [share(nv, dv, dim=1)],
        }
        qkv = [share(nk, dk), share(nk, dk, base=nk * dk), share(nv, dv, base=2 * nk * dk)]  # [q | k | v] channels
        plan["linear_attn.in_proj_qkv.weight"] = plan["linear_attn.conv1d.weight"] = qkv
        if t.is_moe:
            s = t.shared_expert_intermediate_size
            e0, e1 = self.experts
            plan.update({"mlp.experts.gate_up_proj": [(0, e0, e1)], "mlp.experts.down_proj": [(0, e0, e1)],
                         "mlp.shared_expert.gate_proj.weight": [share(s)],
                         "mlp.shared_expert.up_proj.weight": [share(s)],
                         "mlp.shared_expert.down_proj.weight": [share(s, dim=1)]})
        else:
            i = t.intermediate_size
            plan.update({"mlp.gate_proj.weight": [share(i)], "mlp.up_proj.weight": [share(i)],
                         "mlp.down_proj.weight": [share(i, dim=1)]})
        return plan.get(leaf)  # norms, q/k norms, conv-free leaves, the router: replicated

    def local_shape(self, name: str, shape: tuple[int, ...]) -> tuple[int, ...]:
        """The shape of this rank's share of HF tensor `name` of full shape `shape` (fused experts included; the
        vocabulary shard padded to `vocab_rows`)."""
        parts = self.slices(name)
        if parts is None:
            return tuple(shape)
        out = list(shape)
        out[parts[0][0]] = sum(b - a for _, a, b in parts)
        if name in (EMBED, LM_HEAD):
            out[0] = self.vocab_rows
        return tuple(out)

    def take(self, name: str, full: torch.Tensor) -> torch.Tensor:
        """This rank's share of an in-memory tensor `name` (as read_shards would read it from a file)."""
        parts = self.slices(name)
        if parts is None:
            return full
        pieces = [full.narrow(dim, a, b - a) for dim, a, b in parts]
        t = pieces[0] if len(pieces) == 1 else torch.cat(pieces, dim=parts[0][0])
        if name in (EMBED, LM_HEAD) and t.shape[0] < self.vocab_rows:
            t = torch.cat([t, t.new_zeros(self.vocab_rows - t.shape[0], *t.shape[1:])])
        return t.contiguous()

    def reads(self, name: str) -> bool:
        """False for a per-expert tensor of another rank's expert (never read)."""
        m = _PER_EXPERT.match(name)
        if not m:
            return True
        e0, e1 = self.experts
        return e0 <= int(m["e"]) < e1


# --------------------------------------------------------------------------------------------- loading

def init_distributed(tensor_parallel, device) -> tuple[int, int, torch.device]:
    """Check tensor_parallel against torch.distributed (initialising it from torchrun's environment when nobody
    has): returns (rank, world, device), device with this rank's GPU index when given as plain "cuda"."""
    if isinstance(tensor_parallel, bool) or not isinstance(tensor_parallel, int) or tensor_parallel < 1:
        raise ValueError(f"tensor_parallel must be a positive int, got {tensor_parallel!r}")
    dist = _dist()
    device = torch.device(device)
    if not dist.is_initialized():
        if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
            raise ValueError(f"tensor_parallel={tensor_parallel} needs torch.distributed: launch with "
                             f"`torchrun --nproc-per-node {tensor_parallel} ...` (or call "
                             "torch.distributed.init_process_group first)")
        if device.type == "cuda":
            local = int(os.environ.get("LOCAL_RANK", os.environ["RANK"]))
            if device.index is None:
                device = torch.device("cuda", local % torch.cuda.device_count())
            torch.cuda.set_device(device)
            dist.init_process_group("nccl", device_id=device)
        else:
            dist.init_process_group("gloo")
    world, rank = dist.get_world_size(), dist.get_rank()
    if world != tensor_parallel:
        raise ValueError(f"tensor_parallel={tensor_parallel} but the torch.distributed world size is {world}: "
                         f"launch with --nproc-per-node {tensor_parallel} (or pass tensor_parallel={world})")
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", rank)) % torch.cuda.device_count())
    if device.type == "cuda":
        torch.cuda.set_device(device)
    return rank, world, device


def load_parallel(path, tensor_parallel: int, *, device="cpu", dtype=None, backend="reference", progress=None,
                  cuda_graphs=None, strict=False, vision=True):
    """`model.load(path, tensor_parallel=N)`: this rank's share of the model (see the module doc)."""
    from .model import Model, _refuse_uncovered

    rank, world, device = init_distributed(tensor_parallel, device)
    if dtype is None and device.type == "cpu":  # as model.load: bf16 matmuls are slow on CPUs
        dtype = torch.float32
    cfg = ModelConfig.from_pretrained(path)
    shard = Shard(rank, world, cfg)
    local = shard.local_config  # raises first when the heads / experts do not divide
    if strict:
        _refuse_uncovered(backend, local, dtype or (getattr(torch, cfg.dtype, None) if cfg.dtype else None))
    weights, nbytes = read_shards(path, shard, device=device, dtype=dtype, progress=progress if rank == 0 else False,
                                  vision=vision)
    # first collective outside any graph capture: creates the communicator (NCCL), checks every rank is here
    probe = torch.ones(1, device=device)
    _dist().all_reduce(probe, group=shard.group)
    if int(probe.item()) != world:
        raise RuntimeError(f"the warm-up all-reduce over {world} ranks returned {probe.item()}")
    m = Model(cfg, weights, backend=backend, path=path, cuda_graphs=cuda_graphs, strict=strict, parallel=shard)
    m.bytes_read = nbytes
    return m


def read_shards(path, shard: Shard, *, device="cpu", dtype=None, progress=False, vision=True):
    """This rank's tensors under their HF names (sliced; fused experts of its own experts only), and the number of
    tensor bytes it read from the files. Names and shapes are checked on the full headers first.
    progress as in model.loader.load_weights; vision=False skips the tower's tensors."""
    path, cfg = Path(path), shard.config
    target = _resolve_dtype(dtype if dtype is not None else cfg.dtype)
    files = checkpoint_files(path)
    with ExitStack() as stack:
        handles, stored = open_checkpoint(stack, cfg, path, files, vision)

        e0, e1 = shard.experts
        weights, nbytes = {}, 0
        experts: dict[str, dict] = defaultdict(dict)
        todo = [(k, v) for k, v in stored.items() if shard.reads(k)]
        for k, (fi, shape) in _progress(todo, progress, desc=f"loading {path.name} (rank {shard.rank})"):
            t = _read(handles[fi], k, shard.slices(k))
            nbytes += t.numel() * t.element_size()
            if k in (EMBED, LM_HEAD) and t.shape[0] < shard.vocab_rows:  # the last vocabulary shard: zero rows
                t = torch.cat([t, t.new_zeros(shard.vocab_rows - t.shape[0], *t.shape[1:])])
            if t.is_floating_point() and target is not None:
                t = t.to(target)
            t = t.to(device)
            m = _PER_EXPERT.match(k)
            if not m:
                weights[k] = t
                continue
            add_expert(weights, experts, m, t, e0, e1)  # this rank's experts only
    if cfg.tie_word_embeddings:
        weights[LM_HEAD] = weights[EMBED]
    return weights, nbytes


def _read(handle, name: str, parts) -> torch.Tensor:
    """The whole tensor, or its parts [(dim, start, stop), ...] read through get_slice and concatenated."""
    if parts is None:
        return handle.get_tensor(name)
    sl = handle.get_slice(name)
    pieces = [sl[(slice(None),) * dim + (slice(a, b),)] for dim, a, b in parts]
    return pieces[0] if len(pieces) == 1 else torch.cat(pieces, dim=parts[0][0])


# --------------------------------------------------------------------------------------------- running

class ParallelLanguageModel(LanguageModel):
    """`LanguageModel` on one rank's share (cfg: the local text config, `local_text_config`): each mixer and MLP
    returns its partial sum all-reduced; the embedding and lm_head are vocabulary-parallel; MoE routes to the
    local experts only (the ops' moe_mlp sees local expert ids, others weighted 0)."""

    def __init__(self, cfg: TextConfig, weights, ops, shard: Shard):
        super().__init__(cfg, weights, ops)
        self.shard = shard
        self.vocab_size = shard.config.text.vocab_size
        self.vocab_start = shard.rank * shard.vocab_rows
        self.base_ops = self.ops
        if cfg.is_moe:
            self.ops = _ExpertParallelOps(self.ops, *shard.experts)
        if self.glue is not None:  # the fused decode prologue gathers from a whole embedding: ours is a shard
            self.glue = (self._decode_prologue, self.glue[1])

    # collectives -----------------------------------------------------------------------------------------
    def all_reduce(self, t: torch.Tensor) -> torch.Tensor:
        """In-place sum over the ranks (on the current stream, so it is captured in a CUDA graph). Issued at world
        size 1 too (load_parallel(path, 1) under one process runs the collectives: a check of the NCCL path)."""
        _dist().all_reduce(t, group=self.shard.group)
        return t

    def embed(self, ids: torch.Tensor) -> torch.Tensor:
        ids = ids.to(self.device)
        rows = self.embed_weight.shape[0]
        local = ids - self.vocab_start
        mine = (local >= 0) & (local < rows)
        x = F.embedding(local.clamp(0, rows - 1), self.embed_weight)
        return self.all_reduce(x.masked_fill(~mine[:, None], 0).contiguous())

    def head(self, h: torch.Tensor) -> torch.Tensor:
        part = self.linear(h, "lm_head.weight").contiguous()  # [T, ceil(V/N)]
        parts = [torch.empty_like(part) for _ in range(self.shard.world)]
        _dist().all_gather(parts, part, group=self.shard.group)
        logits = torch.cat(parts, dim=1)
        return logits if logits.shape[1] == self.vocab_size else logits[:, : self.vocab_size].contiguous()

    def _decode_prologue(self, tokens, embed_weight, lengths, rope_delta, cos_table, sin_table):
        """kernels.glue.decode_prologue's results with the vocabulary-parallel embedding."""
        x = self.embed(tokens)
        pos = (lengths.long() + rope_delta).clamp_(0, cos_table.shape[0] - 1)
        return x, cos_table.index_select(0, pos), sin_table.index_select(0, pos), lengths + 1

    def capture_blockers(self, prefill: bool = False) -> list[str]:
        ops, self.ops = self.ops, self.base_ops  # judge the ops themselves, not the expert-parallel wrapper
        try:
            return super().capture_blockers(prefill)
        finally:
            self.ops = ops

    # the partial sums --------------------------------------------------------------------------------------
    def _attention(self, i, x, cos, sin, p):
        return self.all_reduce(super()._attention(i, x, cos, sin, p).contiguous())

    def _deltanet(self, i, x, p):
        return self.all_reduce(super()._deltanet(i, x, p).contiguous())

    def _mlp(self, i, x):
        return self.all_reduce(super()._mlp(i, x).contiguous())


class _ExpertParallelOps:
    """The op namespace with moe_mlp taking global expert ids for the local experts [e0, e1): ids of other ranks'
    experts get weight 0 (and a valid local id), so the local partial sum adds up over the ranks. No host read."""

    def __init__(self, base, e0: int, e1: int):
        self._base, self._e0, self._e1 = base, e0, e1
        fn = getattr(base, "moe_mlp", None)
        if fn is None:
            import reference
            fn = reference.moe_mlp

        @functools.wraps(fn)  # keeps the signature: LanguageModel._call passes only the hints it names
        def moe_mlp(x, gate_up, down, weights, experts, *args, **kwargs):
            local = experts - self._e0
            mine = (local >= 0) & (local < self._e1 - self._e0)
            return fn(x, gate_up, down, weights * mine.to(weights.dtype), torch.where(mine, local, 0).to(experts.dtype),
                      *args, **kwargs)

        self.moe_mlp = moe_mlp

    def __getattr__(self, name):
        return getattr(self._base, name)


class DataParallelVision:
    """The vision tower data-parallel: rank r encodes the r-th contiguous share of the images (balanced by
    patches) and the merged embeddings of all ranks are all-gathered in image order."""

    def __init__(self, tower, shard: Shard):
        self.tower, self.shard = tower, shard
        inner = tower
        while not hasattr(inner, "cfg"):  # GraphedVisionTower wraps the eager tower, which has the config
            inner = inner.tower
        self.cfg = inner.cfg

    def __getattr__(self, name):
        return getattr(self.tower, name)

    def split(self, patches: list[int]) -> list[int]:
        """Image boundaries [0, b1, ..., n]: rank r takes images b_r .. b_{r+1}."""
        n, world, total = len(patches), self.shard.world, sum(patches)
        bounds, acc, i = [0], 0, 0
        for r in range(1, world):
            while i < n and acc + patches[i] / 2 <= total * r / world:  # an image goes where its middle falls
                acc += patches[i]
                i += 1
            bounds.append(i)
        return bounds + [n]

    def __call__(self, pixel_values: torch.Tensor, grid_thw: torch.Tensor) -> torch.Tensor:
        world, rank = self.shard.world, self.shard.rank
        grid = torch.as_tensor(grid_thw)
        patches = grid.cpu().prod(-1).tolist()
        if world == 1:
            return self.tower(pixel_values, grid_thw)
        bounds = self.split(patches)
        starts = [0]
        for p in patches:
            starts.append(starts[-1] + p)
        merge = self.cfg.spatial_merge_size ** 2
        rows = [(starts[bounds[r + 1]] - starts[bounds[r]]) // merge for r in range(world)]
        a, b = bounds[rank], bounds[rank + 1]
        if b > a:
            mine = self.tower(pixel_values[starts[a]: starts[b]], grid[a:b])
        else:
            mine = pixel_values.new_zeros(0, self.cfg.out_hidden_size)
        width, most = mine.shape[1], max(rows)
        buf = mine.new_zeros(most, width)
        buf[: mine.shape[0]] = mine
        parts = [torch.empty_like(buf) for _ in range(world)]
        _dist().all_gather(parts, buf, group=self.shard.group)
        return torch.cat([p[:n] for p, n in zip(parts, rows)])


# --------------------------------------------------------------------------------------------- accounting

def lm_bytes(lm: LanguageModel) -> int:
    """Bytes of the language model's weights (distinct storages: a tied lm_head counts once)."""
    seen, total = set(), 0
    tensors = list(lm.w.values()) + list(lm.conv_w.values()) + [t for c in lm.gate_consts.values() for t in c]
    for t in tensors:
        key = (t.untyped_storage().data_ptr(), t.storage_offset(), t.numel())
        if key not in seen:
            seen.add(key)
            total += t.numel() * t.element_size()
    return total
