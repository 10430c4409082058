"""Token selection, stopping and the decode loop (HF `generate` semantics), on the device.

* Greedy unless do_sample; sampling applies temperature, then top-k, then top-p (HF's warper order) and draws
  one token per row from the filtered softmax with the exponential race: argmax_i p_i / E_i, E_i ~ Exp(1) drawn
  from a `torch.Generator` seeded with `seed`. That is an exact draw from p, and as a function of the logits and
  a noise tensor it runs on any device with no host read (and inside a CUDA graph).
* A row stops after it emits one of the eos ids; afterwards it receives `pad_id` (it keeps being fed, as in HF).
  The loop ends when every row has stopped or after max_new_tokens. The stop state is a device mask, so no
  step reads the device; the host reads the emitted tokens back in blocks and ends the loop from them.

`DecodeSession` holds one batch's static decode state (the `Cache`, the current tokens, the done mask, the
noise buffer) and, on CUDA when every op of the step can be captured, the whole step (embedding, every layer,
final norm, lm_head, sampling, stop update) in one CUDA graph that each token replays.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass

import torch

DEFAULT_BLOCK = 8  # decode steps between two reads of the tokens by the host
# Tried and dropped: a block's 8 steps and their token copies captured as one graph (one launch a block instead of
# a replay and a copy a token) lost on the H200 (bb279b6, same run: 0.8B 1130 and 1126 tok/s at batch 1 against
# 1159 per-step, 18221 / 18435 against 18676 at batch 32, 9B equal; decode_block_graphs_ab-H200-2026-12-03.json).


def filter_logits(logits: torch.Tensor, *, temperature: float = 1.0, top_k: int = 0,
                  top_p: float = 1.0) -> torch.Tensor:
    """Sampling filters in HF's order: logits / temperature, then top-k, then top-p (removed tokens -> -inf)."""
    logits = logits.float()
    if temperature != 1.0:
        logits = logits / temperature
    if top_k and top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        # drop the smallest tokens whose total probability stays within 1 - top_p (keep at least one)
        sorted_logits, order = torch.sort(logits, dim=-1)
        cum = sorted_logits.softmax(dim=-1).cumsum(dim=-1)
        drop = cum <= 1.0 - top_p
        drop[:, -1] = False
        logits = logits.masked_fill(drop.scatter(1, order, drop), float("-inf"))
    return logits


def sample_noise(like: torch.Tensor, generator: torch.Generator | None = None,
                 out: torch.Tensor | None = None) -> torch.Tensor:
    """Exp(1) noise [B, V] (fp32) for `select_tokens`, drawn from `generator` on like's device (into `out`)."""
    out = torch.empty(like.shape, dtype=torch.float32, device=like.device) if out is None else out
    return out.exponential_(generator=generator)


def select_tokens(logits: torch.Tensor, *, do_sample: bool = False, temperature: float = 1.0, top_k: int = 0,
                  top_p: float = 1.0, generator: torch.Generator | None = None,
                  noise: torch.Tensor | None = None) -> torch.Tensor:
    """logits [B, V] -> next token ids int64 [B]: argmax, or a draw from the filtered softmax.

    The draw is argmax(p / noise) with noise ~ Exp(1) [B, V] (given, or drawn from `generator`); filtered-out
    tokens have p = 0 and are never picked. No host read, so it can be captured in a CUDA graph.
    """
    if not do_sample:  # argmax in the logits' dtype: widening to fp32 is exact, so the same token, one kernel less
        return logits.argmax(dim=-1)
    probs = filter_logits(logits, temperature=temperature, top_k=top_k, top_p=top_p).softmax(dim=-1)
    if noise is None:
        noise = sample_noise(probs, generator)
    return (probs / noise.clamp_min(1e-30)).argmax(dim=-1)  # clamp: an Exp draw of exactly 0 would give 0/0


def stop_update(tokens: torch.Tensor, done: torch.Tensor, eos: torch.Tensor, pad: torch.Tensor) -> torch.Tensor:
    """On-device stopping: rows already done emit `pad`; a row that emits an eos id is done from then on.

    tokens int64 [B]; done bool [B] (updated in place); eos int64 [E] (unused slots hold -1); pad int64 [].
    Returns the tokens to emit.
    """
    tokens = torch.where(done, pad, tokens)
    done |= (tokens[:, None] == eos[None, :]).any(dim=-1)
    return tokens


def check_sampling(do_sample, temperature, top_k, top_p, max_new_tokens):
    if not isinstance(max_new_tokens, int) or max_new_tokens < 0:
        raise ValueError(f"max_new_tokens must be a non-negative int, got {max_new_tokens!r}")
    if do_sample and not temperature > 0:
        raise ValueError(f"temperature must be > 0 when sampling, got {temperature!r}")
    if not isinstance(top_k, int) or top_k < 0:
        raise ValueError(f"top_k must be a non-negative int (0 = off), got {top_k!r}")
    if not 0.0 < top_p <= 1.0:
        raise ValueError(f"top_p must lie in (0, 1], got {top_p!r}")


def make_generator(device, seed) -> torch.Generator:
    gen = torch.Generator(device=device)
    if seed is None:
        gen.seed()
    else:
        gen.manual_seed(int(seed))
    return gen


@dataclass(frozen=True)
class Sampling:
    """The token-selection settings (they are baked into a captured graph, so they key the session cache)."""
    do_sample: bool = False
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0

    def select(self, logits, noise=None, generator=None):
        if not self.do_sample:
            return select_tokens(logits)
        return select_tokens(logits, do_sample=True, temperature=self.temperature, top_k=self.top_k,
                             top_p=self.top_p, noise=noise, generator=generator)


def batch_bucket(batch: int) -> int:
    """The batch size a decode graph is captured for: the next power of two (rows past `batch` are idle)."""
    return 1 << max(0, batch - 1).bit_length()


def capacity_bucket(tokens: int, step: int = 256) -> int:
    return -(-max(tokens, 1) // step) * step


class DecodeSession:
    """Static decode state of one batch bucket and capacity, reusable across requests (see the module doc).

    graphs: capture the step in a CUDA graph (CUDA only; falls back to eager with `mode` saying why).
    After `begin` (prompt prefilled into `cache`, first logits given), `tokens` yields the emitted tokens.
    """

    def __init__(self, lm, batch: int, capacity: int, sampling: Sampling, *, graphs: bool, eos_slots: int = 8):
        self.lm, self.sampling = lm, sampling
        dev = lm.device
        self.cache = lm.new_cache(batch, capacity)
        self.tok = torch.zeros(batch, dtype=torch.int64, device=dev)
        self.done = torch.zeros(batch, dtype=torch.bool, device=dev)
        self.eos = torch.full((eos_slots,), -1, dtype=torch.int64, device=dev)
        self.pad = torch.zeros((), dtype=torch.int64, device=dev)
        self.noise = (torch.ones(batch, lm.cfg.vocab_size, dtype=torch.float32, device=dev)
                      if sampling.do_sample else None)
        self.generator = None
        self.graph = None
        self.mode = "eager"
        if graphs:
            self._capture()
        elif dev.type == "cuda":
            self._warm_up()

    @property
    def batch(self) -> int:
        return self.tok.shape[0]

    @property
    def capacity(self) -> int:
        return self.cache.capacity

    def _emit(self, logits: torch.Tensor) -> None:
        glue = getattr(self.lm, "glue", None)
        if glue is not None and not self.sampling.do_sample and logits.is_cuda:  # argmax + stop rule, one kernel
            glue[1](logits, self.done, self.eos, self.pad, self.tok)
            return
        nxt = self.sampling.select(logits, noise=self.noise)
        self.tok.copy_(stop_update(nxt, self.done, self.eos, self.pad))

    def _step(self) -> None:
        """One decode step on the static tensors: feed tok, append to the cache, select the next tok."""
        self._emit(self.lm.head(self.lm.decode_step(self.cache, self.tok)))

    def _warm_up(self) -> None:
        """An eager session's one step on the empty cache, then reset (as the graph path warms up before capture):
        the model's one-time work (the decode GEMM choice, timed in CUDA graphs; kernel loads) happens here rather
        than inside the first real step. (H200, round s3r2: with that timing inside the first eager step and
        programmatic launches on, the eager tokens differed from the graph's from the first decode step on; the
        graph's and a timing-free eager run's agreed. Not explained yet.)"""
        self._step()
        torch.cuda.synchronize(self.lm.device)
        self.reset()

    def _capture(self) -> None:
        dev = self.lm.device
        if dev.type != "cuda":
            self.mode = "eager: not on a CUDA device"
            return
        blockers = self.lm.capture_blockers()
        if blockers:
            self.mode = (f"eager: {', '.join(blockers)} run on the reference, which reads the device on the host "
                         "(no CUDA graph)")
            return
        try:
            side = torch.cuda.Stream(dev)
            side.wait_stream(torch.cuda.current_stream(dev))
            with torch.cuda.stream(side):  # warm-up: compiles kernels and settles the allocator before capture
                for _ in range(2):
                    self._step()
            torch.cuda.current_stream(dev).wait_stream(side)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                self._step()
            torch.cuda.synchronize(dev)
            self.graph, self.mode = graph, "graph"
        except Exception as e:  # an op that syncs or allocates on the host under capture: run eagerly
            self.graph = None
            self.mode = f"eager: capture failed ({type(e).__name__}: {str(e).splitlines()[0][:200]})"
            torch.cuda.synchronize(dev)
        self.reset()

    def reset(self) -> None:
        self.cache.reset()
        self.tok.zero_()
        self.done.zero_()

    def begin(self, first_logits: torch.Tensor, rows: int, eos_ids, pad_id: int, seed=None) -> None:
        """first_logits [batch, V]: each row's last prompt token; rows: the real rows (the rest are idle)."""
        eos = sorted(set(int(e) for e in eos_ids))
        if len(eos) > self.eos.numel():
            raise ValueError(f"at most {self.eos.numel()} eos ids, got {len(eos)}")
        self.eos.fill_(-1)
        if eos:
            self.eos[: len(eos)].copy_(torch.tensor(eos, dtype=torch.int64))
        self.pad.fill_(int(pad_id))
        self.done.zero_()
        self.done[rows:] = True  # idle rows of the bucket emit pad from the start
        if self.sampling.do_sample:
            self.generator = make_generator(self.lm.device, seed)
            sample_noise(self.noise, self.generator, out=self.noise)
        self._emit(first_logits)

    def advance(self) -> None:
        if self.sampling.do_sample:
            sample_noise(self.noise, self.generator, out=self.noise)
        if self.graph is not None:
            self.graph.replay()
        else:
            self._step()

    def _store(self, dst: torch.Tensor) -> None:
        """Keep this step's tokens (dst: a row of the host-read block buffer)."""
        dst.copy_(self.tok)

    def tokens(self, max_new_tokens: int, rows: int, eos_ids, block: int = DEFAULT_BLOCK) -> Iterator[torch.Tensor]:
        """Yield each step's emitted tokens of the real rows (int64 [rows] on the CPU), up to max_new_tokens or
        until every row has stopped. The host reads the tokens once per `block` steps (and right after the first
        token, so streaming starts at once). On CUDA the reads are asynchronous and one block behind: block k's
        tokens are copied to pinned memory while block k + 1 is launched, so the GPU never waits for the host (a
        row's stop is seen at most 2 blocks late; the extra steps only emit pad)."""
        if max_new_tokens <= 0:
            return
        dev = self.tok.device
        cuda = dev.type == "cuda"
        n = min(block, max_new_tokens)
        bufs = [torch.empty(n, self.batch, dtype=torch.int64, device=dev) for _ in range(2)]
        hosts = [torch.empty(n, self.batch, dtype=torch.int64, pin_memory=True) for _ in range(2)] if cuda else None
        eos = torch.tensor(sorted(set(int(e) for e in eos_ids)), dtype=torch.int64)
        finished = torch.zeros(rows, dtype=torch.bool)
        step, k, pending = 0, 0, None
        while step < max_new_tokens or pending is not None:
            new = None
            if step < max_new_tokens:
                buf, m = bufs[k], 0
                while m < n and step + m < max_new_tokens:
                    if step + m > 0:
                        self.advance()
                    self._store(buf[m])
                    m += 1
                    if step + m == 1:
                        break
                first = step == 0
                step += m
                if cuda:
                    hosts[k][:m].copy_(buf[:m], non_blocking=True)
                    ev = torch.cuda.Event()
                    ev.record()
                    new = (hosts[k], m, ev)
                else:
                    new = (buf[:m].to("cpu", copy=True), m, None)  # a copy: buf is reused
                k ^= 1
                if first:  # the first token at once
                    pending, new = new, None
            if pending is not None:
                host, m, ev = pending
                if ev is not None:
                    ev.synchronize()
                for row in host[:m, :rows].clone():
                    yield row
                    finished |= torch.isin(row, eos)
                    if bool(finished.all()):
                        return
            pending = new


def timed(steps: Iterator, timings: dict) -> Iterator:
    """Re-yield `steps`, adding the time spent producing them (not consuming them) to timings['decode_s']."""
    while True:
        t1 = time.perf_counter()
        item = next(steps, None)
        timings["decode_s"] += time.perf_counter() - t1
        if item is None:
            return
        timings["decode_tokens"] += 1
        yield item
