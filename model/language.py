"""The Qwen3.5 hybrid language model (Gated DeltaNet + gated full attention), written against an op namespace.

Tokens are packed: the real (unpadded) tokens of every batch row are concatenated on axis 0 and `cu_seqlens`
marks the rows, so attention, the short conv and the delta rule never see padding.

Decoder layer (pre-norm; the residual add is fused into the next RMSNorm with `add_rms_norm`):
    x, res = add_rms_norm(prev_out, res, input_layernorm)
    res += Mixer(x)            DeltaNet (3 of 4 layers) or gated attention (every 4th)
    x, res = add_rms_norm(mixer_out, res, post_attention_layernorm)
    res += MLP(x)              SwiGLU, or routed experts + sigmoid-gated shared expert
The final norm takes the last layer's MLP output the same way.

Three ways in:
* `forward(x, positions, cu_seqlens)`: one pass over whole prompts, no cache (`Model.logits`).
* `prefill(cache, embeds, positions, lengths)`: the prompts into a `Cache`, in chunks of at most `chunk_size`
  packed tokens that carry the KV cache, conv and recurrent states from one chunk to the next (so activation
  memory is bounded by the chunk, not the prompt); returns only each row's last hidden state (for lm_head).
* `decode_step(cache, tokens)`: one token per cache row. It reads nothing on the host (lengths live on the
  device, the mRoPE angles come from a table indexed by lengths + rope_delta, cache writes go through
  `qk_norm_rope`'s fused KV write), so it can be captured in a CUDA graph when every op it calls can
  (model.generate).

Caches (`Cache`, static buffers allocated once per batch and capacity): per attention layer a KV cache
[B, Smax, Hkv, d] read by `decode_attention`; per DeltaNet layer the conv state [B, C, K-1] and the recurrent
state [B, Hv, dk, dv] (fp32). `lengths[b]` counts row b's tokens in the cache.
"""

from __future__ import annotations

import functools
import inspect
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

import reference

from .config import TextConfig
from .progress import progress_bar

DEFAULT_CHUNK = 8192  # packed prompt tokens per prefill chunk

# ops of the decode step whose reference reads device values on the host (lengths, cu_seqlens): a step that
# runs one of them on the reference cannot be captured in a CUDA graph
HOST_READING_REFERENCES = ("qk_norm_rope", "decode_attention", "causal_conv1d", "fused_gated_delta_rule")
HOST_READING_MOE = ("moe_topk", "moe_mlp")
ROUTER_FUSED_ROWS = 0  # MoE: up to this many tokens the fused kernels.moe.moe_router_topk (at most 64), else GEMM + top-k
# prefill: from this many rows a fused projection whose parts must be contiguous runs one cuBLAS GEMM per part (on
# row slices of the fused weight, so each output is contiguous) instead of one GEMM and a copy of the parts; None:
# never. H200, 0.8B, graphed prefill (tools/lm_prefill_profile.py --ab-split, round s3r2): 8192 tokens 25.9 ms
# against 27.2 with one GEMM; 1024 tokens and the 1090-token image prompt the same (5.63 / 9.0 ms both ways)
PART_GEMM_ROWS = 2048


@dataclass
class Cache:
    lengths: torch.Tensor  # int32 [B]: tokens already in the cache per row
    rope_delta: torch.Tensor  # int64 [B]: mRoPE position of cache slot p is p + rope_delta
    capacity: int  # slots per row
    cos: torch.Tensor  # fp32 [capacity, rotary_dim/2]: the mRoPE table of text position p (all axes = p)
    sin: torch.Tensor
    decode_cu: torch.Tensor  # int32 [B+1] = arange: one token per row
    k: dict[int, torch.Tensor] = field(default_factory=dict)  # attention layer -> [B, Smax, Hkv, d]
    v: dict[int, torch.Tensor] = field(default_factory=dict)
    conv: dict[int, torch.Tensor] = field(default_factory=dict)  # DeltaNet layer -> [B, C, K-1]
    recurrent: dict[int, torch.Tensor] = field(default_factory=dict)  # DeltaNet layer -> [B, Hv, dk, dv] fp32

    @property
    def batch(self) -> int:
        return self.lengths.shape[0]

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for d in (self.k, self.v, self.conv, self.recurrent)
                   for t in d.values())

    def reset(self) -> None:
        """Empty every row (for the next request): lengths and deltas 0, conv and recurrent states 0.
        KV slots need no clearing: slots at or past a row's length are never read."""
        self.lengths.zero_()
        self.rope_delta.zero_()
        for t in (*self.conv.values(), *self.recurrent.values()):
            t.zero_()


@dataclass
class _Pending:
    """A decode step's RMSNorm not applied yet: the projection that consumes it folds it into the skinny kernel's
    operand load (kernels.gemm add_rms= / gated_rms=: one kernel less) or applies it first (`apply`).
    kind "add": add_rms_norm(x, other = residual, w, eps), which also gives res_out (the residual stream);
    kind "gated": gated_rms_norm(x [T, H, d], other = z, w, eps), flattened to [T, H d]."""
    kind: str
    x: torch.Tensor
    other: torch.Tensor
    w: torch.Tensor
    eps: float
    res_out: torch.Tensor | None = None

    @property
    def shape(self):
        return self.flat.shape

    @property
    def flat(self) -> torch.Tensor:  # the un-normed operand as the projection sees it, [T, K]
        return self.x.reshape(self.x.shape[0], -1)

    def apply(self, ops) -> torch.Tensor:
        if self.kind == "add":
            y, self.res_out = ops.add_rms_norm(self.x, self.other, self.w, self.eps)
            return y
        return ops.gated_rms_norm(self.x, self.other, self.w, self.eps).reshape(self.x.shape[0], -1)

    def fold_args(self) -> dict:
        """skinny_linear's keyword for this norm."""
        if self.kind == "add":
            return {"add_rms": (self.other, self.w, self.eps)}
        return {"gated_rms": (self.other, self.w, self.eps)}


@dataclass
class _Pass:
    """What the layers need to know about one call: the packing and where its tokens go in the cache."""
    cu: torch.Tensor  # int32 [B+1] on the device
    max_seqlen: int  # longest row in this call (a kernel hint)
    cache: Cache | None = None
    decode: bool = False
    start: list[int] | None = None  # prefill into a cache: tokens of each row already cached (host copy)
    cu_host: list[int] | None = None
    attend: torch.Tensor | None = None  # decode: cache.lengths + 1, the slots each row's new token attends to
    pad: torch.Tensor | None = None  # bool [T, 1, 1]: tokens past cu_seqlens[-1] (a graphed prefill's padding)

    @property
    def fresh(self) -> bool:
        """No row has earlier tokens in the cache: plain causal varlen attention within the call."""
        return self.start is None or not any(s for s, a, b in zip(self.start, self.cu_host, self.cu_host[1:]) if b > a)


@functools.lru_cache(maxsize=None)
def _keywords(fn) -> frozenset:
    try:
        return frozenset(inspect.signature(fn).parameters)
    except (TypeError, ValueError):
        return frozenset()


def _call(fn, *args, **hints):
    """Call an op with those keyword hints its signature takes (kernel hints such as validate=False and
    max_seqlen; kernels and references differ in which they have)."""
    names = _keywords(fn)
    return fn(*args, **{k: v for k, v in hints.items() if k in names})


class LanguageModel:
    """weights: {name: tensor} with `model.language_model.` removed, plus `lm_head.weight`; ops: op namespace."""

    def __init__(self, cfg: TextConfig, weights: dict[str, torch.Tensor], ops):
        if cfg.hidden_act != "silu":
            raise ValueError(f"text hidden_act {cfg.hidden_act!r} is not supported (expected 'silu')")
        self.cfg, self.w, self.ops = cfg, dict(weights), ops
        w = self.w
        self.embed_weight = w["embed_tokens.weight"]
        # per-layer constants, computed once: conv taps [C, K], fp32 gate constants; and fused projection weights
        # (one GEMM instead of several: at decode each is one more kernel)
        #   DeltaNet [in_proj_qkv; in_proj_z; in_proj_b; in_proj_a] -> in_proj_qkvzba,
        #   attention [q_proj; k_proj; v_proj] -> qkv_proj,   MLP [gate_proj; up_proj] -> gate_up_proj
        self.conv_w, self.gate_consts = {}, {}
        for i, kind in enumerate(cfg.layer_types):
            if kind == "linear_attention":
                p = f"layers.{i}.linear_attn."
                self.conv_w[i] = w[p + "conv1d.weight"][:, 0, :].contiguous()
                # A_log and dt_bias in fp32 once (the gates are computed in fp32; kernels take them so)
                self.gate_consts[i] = (w[p + "A_log"].float().contiguous(), w[p + "dt_bias"].float().contiguous())
                w[p + "in_proj_qkvzba.weight"] = torch.cat([w.pop(p + n) for n in (
                    "in_proj_qkv.weight", "in_proj_z.weight", "in_proj_b.weight", "in_proj_a.weight")])
            else:
                p = f"layers.{i}.self_attn."
                w[p + "qkv_proj.weight"] = torch.cat([w.pop(p + n) for n in (
                    "q_proj.weight", "k_proj.weight", "v_proj.weight")])
            if not cfg.is_moe:
                p = f"layers.{i}.mlp."
                w[p + "gate_up_proj.weight"] = torch.cat([w.pop(p + "gate_proj.weight"), w.pop(p + "up_proj.weight")])

        # decode-sized products (<= skinny_rows rows) on the skinny tensor-core GEMM (kernels.gemm) on the kernels
        # backend where it is faster than cuBLAS for that call shape: measured on an H200, cuBLAS's split-K tiles
        # reach 0.4-2.4 TB/s on the 4-15 MB matrices of the 0.8B step (the skinny kernel wins), but ~4 TB/s on the
        # 9B's 30-200 MB ones, and its 32-row tiles beat the skinny kernel's. Each (kind, N, K, rows) is timed once,
        # in CUDA graphs, the first time it is called outside a capture (the decode session's warm-up), on copies of
        # the weight that do not fit the L2 (as in a step, the weights come from DRAM), with each K split the skinny
        # kernel offers, and the winner kept in skinny_choice (its keywords, or False for cuBLAS). skinny None:
        # F.linear everywhere; skinny_autotune=False: skinny wherever it fits, at its default K split.
        self.skinny = _skinny_gemm() if ops is not reference else None
        self.skinny_rows = 32
        self.skinny_autotune = True
        # decode: the RMSNorms before in_proj / qkv_proj / gate_up (add_rms_norm) and out_proj (gated_rms_norm)
        # folded into the skinny kernel's operand load where it wins the timing (one kernel less each). Off: on an
        # H200 the fold builds lost to norm kernel + skinny/cuBLAS at every 0.8B shape (round s3r1: step 862 us
        # folded vs 855 separate, tools/lm_decode_profile.py --variants skinny,nofold)
        self.fold_norms = False
        self.skinny_choice: dict = {}
        # the decode step's glue (embedding, mRoPE angles, attend lengths; greedy choice + stop rule) as one kernel
        # each (kernels.glue) on the kernels backend; None: the torch ops
        self.glue = _glue_kernels() if ops is not reference else None

    @property
    def device(self):
        return self.embed_weight.device

    def _skinny(self, kind: str, x: torch.Tensor, wt: torch.Tensor, ours, theirs):
        """Whether this call goes to the skinny kernel rather than cuBLAS: False, or the keyword arguments (its
        variant) to run it with (a dict, truthy even when empty). `ours(kw, w)` and `theirs(w)` run the two on a
        weight w like wt (the timing's copies). It must take the operands and, with skinny_autotune, have won the
        timing of its shape against cuBLAS, each variant kernels.gemm.skinny_variants offers timed (the fastest
        kept)."""
        if self.skinny is None or x.shape[0] > self.skinny_rows or not self.skinny[1](x, wt):
            return False
        if not self.skinny_autotune:
            return {}
        key = (kind, wt.shape[0], wt.shape[1], x.shape[0])
        won = self.skinny_choice.get(key)
        if won is None:
            if torch.cuda.is_current_stream_capturing():
                return {}  # not timed before capture (the session's warm-up times every shape)
            nw = torch.ones(x.shape[1], dtype=x.dtype, device=x.device)
            # each timed call follows an RMSNorm of its input, as in a step (a programmatic launch on the kernels
            # backend, which the skinny kernel's weight stream overlaps; cuBLAS's launch waits for it)
            won = self.skinny_choice[key] = _fastest_skinny(ours, theirs, wt,
                                                            self.skinny[2](kind, wt, x.shape[0]),
                                                            lambda: self.ops.rms_norm(x, nw, 1e-6))
        return won

    def linear(self, x, name: str) -> torch.Tensor:
        """x @ w[name].T: the skinny kernel for a few rows where it is the faster, else cuBLAS. x may be a _Pending
        norm (decode): folded into the skinny kernel, or applied first."""
        wt = self.w[name]
        if isinstance(x, _Pending):
            kw = self._skinny_folded("plain", x, wt, lambda xx, w, **k: self.skinny[0](xx, w, **k),
                                     lambda xx, w: F.linear(xx, w))
            if kw:
                return self._fold_result(x, self.skinny[0](x.flat, wt, **kw, **x.fold_args()))
            x = x.apply(self.ops)
        kw = self._skinny("plain", x, wt, lambda kw, w: self.skinny[0](x, w, **kw), lambda w: F.linear(x, w))
        if kw:
            return self.skinny[0](x, wt, **kw)
        return F.linear(x, wt)

    def _skinny_folded(self, kind: str, pend: _Pending, wt: torch.Tensor, ours, theirs):
        """_skinny for a projection of a _Pending norm: the skinny kernel with the norm folded in (`ours(x, w,
        **kw, **fold_args)`) timed against the norm op then the unfolded projection as the model would run it (its
        own choice of `ours(x, w, **kw)` or cuBLAS `theirs(x, w)`, on the applied norm); False where the fold does
        not apply (kernels.gemm.fold_ok) or loses."""
        if self.skinny is None or not pend.x.is_cuda or not self.skinny[3](pend.kind, pend.flat, pend.other):
            return False
        fa = pend.fold_args()
        fkind = kind + "+" + pend.kind
        sep = None
        if self.skinny_autotune and (fkind, wt.shape[0], wt.shape[1], pend.flat.shape[0]) not in self.skinny_choice \
                and not torch.cuda.is_current_stream_capturing():
            def applied():  # the separate norm (outputs discarded)
                return _Pending(pend.kind, pend.x, pend.other, pend.w, pend.eps).apply(self.ops)
            y0 = applied()
            pk = self._skinny(kind, y0, wt, lambda kw, w: ours(y0, w, **kw), lambda w: theirs(y0, w))
            sep = (lambda w: ours(applied(), w, **pk)) if pk else (lambda w: theirs(applied(), w))
        return self._skinny(fkind, pend.flat, wt, lambda kw, w: ours(pend.flat, w, **kw, **fa), sep)

    @staticmethod
    def _fold_result(pend: _Pending, r):
        """A folded add_rms= call returns (result, residual_out): keep the residual on the _Pending."""
        if pend.kind == "add":
            r, pend.res_out = r
        return r

    def linear_split(self, x: torch.Tensor, name: str, sizes: tuple[int, ...], contiguous_from: int = 1
                     ) -> tuple[torch.Tensor, ...]:
        """A fused projection x @ w[name].T cut by columns into `sizes`; the parts from index contiguous_from on are
        contiguous, the ones before may be column views. On the skinny kernel each part is written contiguous (no
        copies); on cuBLAS the output is one tensor, and its parts that must be contiguous are copied out by one
        kernel (kernels.glue.split_columns) where there is more than one row."""
        wt = self.w[name]
        cuts = lambda y: self._cublas_parts(y, sizes, contiguous_from)  # noqa: E731
        if isinstance(x, _Pending):
            kw = self._skinny_folded("split", x, wt, lambda xx, w, **k: self.skinny[0](xx, w, split=sizes, **k),
                                     lambda xx, w: cuts(F.linear(xx, w)))
            if kw:
                return self._fold_result(x, self.skinny[0](x.flat, wt, split=sizes, **kw, **x.fold_args()))
            x = x.apply(self.ops)
        # (cuBLAS's side of the timing includes the copies of its parts)
        kw = self._skinny("split", x, wt, lambda kw, w: self.skinny[0](x, w, split=sizes, **kw),
                          lambda w: cuts(F.linear(x, w)))
        if kw:
            return self.skinny[0](x, wt, split=sizes, **kw)
        if PART_GEMM_ROWS is not None and x.shape[0] >= PART_GEMM_ROWS and contiguous_from < len(sizes):
            return self._part_gemms(x, wt, sizes, contiguous_from)
        return cuts(F.linear(x, wt))

    def _part_gemms(self, x, wt, sizes, contiguous_from: int) -> tuple:
        """Long prompts: the parts before contiguous_from in one GEMM (column views of it), every later part its own
        GEMM on its rows of the fused weight (a contiguous output, nothing copied); parts narrower than 64 columns
        share one GEMM and are copied out (a few bytes a token)."""
        starts = [0]
        for n in sizes[:-1]:
            starts.append(starts[-1] + n)
        parts = []
        if contiguous_from:
            c0, c1 = 0, starts[contiguous_from]
            y = F.linear(x, wt[c0:c1])
            parts += [y[:, c - c0: c - c0 + n] for c, n in zip(starts[:contiguous_from], sizes[:contiguous_from])]
        j = contiguous_from
        while j < len(sizes):
            k = j + 1
            while sizes[j] < 64 and k < len(sizes) and sizes[k] < 64:  # narrow neighbours: one GEMM
                k += 1
            y = F.linear(x, wt[starts[j]: starts[j] + sum(sizes[j:k])])
            if k == j + 1:
                parts.append(y)
            else:
                parts += [y[:, c - starts[j]: c - starts[j] + n].contiguous() for c, n in zip(starts[j:k], sizes[j:k])]
            j = k
        return tuple(parts)

    def _cublas_parts(self, y: torch.Tensor, sizes: tuple[int, ...], contiguous_from: int) -> tuple:
        starts = [0]
        for n in sizes[:-1]:
            starts.append(starts[-1] + n)
        views = [y[:, c: c + n] for c, n in zip(starts, sizes)]
        if y.shape[0] <= 1 or contiguous_from >= len(sizes):  # one row: the views are contiguous already
            return tuple(views)
        split = self.glue[2] if self.glue is not None and y.is_cuda else None
        rest = (split(y, starts[contiguous_from:], sizes[contiguous_from:]) if split is not None
                else [t.contiguous() for t in views[contiguous_from:]])
        return tuple(views[:contiguous_from]) + tuple(rest)

    def linear_silu_mul(self, x: torch.Tensor, name: str) -> torch.Tensor:
        """silu(x @ gate.T) * (x @ up.T) from the fused [gate; up] weight w[name] (one kernel for a few rows)."""
        wt = self.w[name]
        fused = self.op("silu_mul_fused")
        if isinstance(x, _Pending):
            kw = self._skinny_folded("silu", x, wt, lambda xx, w, **k: self.skinny[0](xx, w, silu_mul=True, **k),
                                     lambda xx, w: fused(F.linear(xx, w)))
            if kw:
                return self._fold_result(x, self.skinny[0](x.flat, wt, silu_mul=True, **kw, **x.fold_args()))
            x = x.apply(self.ops)
        kw = self._skinny("silu", x, wt, lambda kw, w: self.skinny[0](x, w, silu_mul=True, **kw),
                          lambda w: fused(F.linear(x, w)))
        if kw:
            return self.skinny[0](x, wt, silu_mul=True, **kw)
        return fused(F.linear(x, wt))

    @property
    def dtype(self):
        return self.embed_weight.dtype

    def op(self, name: str):
        return getattr(self.ops, name, None) or getattr(reference, name)

    def embed(self, ids: torch.Tensor) -> torch.Tensor:
        return F.embedding(ids.to(self.device), self.embed_weight)

    def head(self, h: torch.Tensor) -> torch.Tensor:
        return self.linear(h, "lm_head.weight")

    def capture_blockers(self, prefill: bool = False) -> list[str]:
        """The decode step's ops (prefill=True: a prefill's, which never call decode_attention) that run on a
        reference which reads the device on the host (empty: capturable)."""
        names = HOST_READING_REFERENCES + (HOST_READING_MOE if self.cfg.is_moe else ())
        if prefill:
            names = tuple(n for n in names if n != "decode_attention")
        return [n for n in names if self.op(n) is getattr(reference, n)]

    def new_cache(self, batch: int, capacity: int) -> Cache:
        """Zeroed static buffers for `batch` rows of up to `capacity` tokens each."""
        c, dev = self.cfg, self.device
        if capacity < 1:
            raise ValueError(f"cache capacity must be >= 1, got {capacity}")
        pos = torch.arange(capacity, dtype=torch.int64, device=dev).expand(3, capacity)
        cos, sin = self.op("mrope_cos_sin")(pos, c.rotary_dim, c.rope_theta, c.mrope_section, True)
        cache = Cache(lengths=torch.zeros(batch, dtype=torch.int32, device=dev),
                      rope_delta=torch.zeros(batch, dtype=torch.int64, device=dev), capacity=capacity,
                      cos=cos.contiguous(), sin=sin.contiguous(),
                      decode_cu=torch.arange(batch + 1, dtype=torch.int32, device=dev))
        for i, kind in enumerate(c.layer_types):
            if kind == "full_attention":
                shape = (batch, capacity, c.num_key_value_heads, c.head_dim)
                cache.k[i] = torch.zeros(shape, dtype=self.dtype, device=dev)
                cache.v[i] = torch.zeros(shape, dtype=self.dtype, device=dev)
            else:
                cache.conv[i] = torch.zeros(batch, c.linear_conv_dim, c.linear_conv_kernel_dim - 1,
                                            dtype=self.dtype, device=dev)
                cache.recurrent[i] = torch.zeros(batch, c.linear_num_value_heads, c.linear_key_head_dim,
                                                 c.linear_value_head_dim, dtype=torch.float32, device=dev)
        return cache

    # ---------------------------------------------------------------------------------------------------------
    def forward(self, x: torch.Tensor, positions: torch.Tensor, cu_seqlens: torch.Tensor,
                cache: Cache | None = None, *, start: list[int] | None = None,
                select: torch.Tensor | None = None, cu_host: list[int] | None = None,
                pad: torch.Tensor | None = None) -> torch.Tensor:
        """Run the decoder over packed tokens. Returns the final-normed hidden states [T, H] (apply `head`).

        x: [T, H] packed input embeddings; positions: int [3, T] mRoPE ids; cu_seqlens: int32 [B+1].
        cache: None (a whole prompt per row, nothing kept), or a cache of B rows that receives this call's
        KV entries and states; start (host ints [B]): the tokens of each row already in it (a later chunk of
        a prompt: default all 0, and the cache must then be empty), equal to cache.lengths. The caller
        advances cache.lengths afterwards. select: indices of the tokens to return (default all).
        cu_host: cu_seqlens as host ints, if the caller has them (saves a device read).
        pad: bool [T, 1, 1], True at tokens past cu_seqlens[-1] (model.prefill_graph's padding): the mixers leave
        those rows of their outputs unwritten, so they are zeroed (any garbage, a NaN say, would reach the next
        attention layer's keys and values, where a masked probability 0 times NaN is NaN).
        """
        cu_host = cu_seqlens.tolist() if cu_host is None else list(cu_host)
        if cache is not None and cache.batch != len(cu_host) - 1:
            raise ValueError(f"the cache has {cache.batch} rows but cu_seqlens describes {len(cu_host) - 1}")
        p = _Pass(cu=cu_seqlens, max_seqlen=max((b - a for a, b in zip(cu_host, cu_host[1:])), default=0),
                  cache=cache, start=start, cu_host=cu_host, pad=pad)
        cfg = self.cfg
        cos, sin = self.op("mrope_cos_sin")(positions, cfg.rotary_dim, cfg.rope_theta, cfg.mrope_section, True)
        return self._layers(x, cos, sin, p, select)

    def prefill(self, cache: Cache, embeds: torch.Tensor, positions: torch.Tensor, lengths: list[int], *,
                chunk_size: int = DEFAULT_CHUNK, graphs=None) -> torch.Tensor:
        """Run packed prompts into an empty `cache`, at most `chunk_size` tokens per forward pass.

        embeds [T, H], positions [3, T]: the rows' tokens back to back (row b has lengths[b] >= 0 tokens;
        rows of 0 tokens are padding rows of the batch). Chunks cut the packed stream anywhere, inside a row
        too: a row's later chunk attends to its earlier tokens through the KV cache and resumes the conv and
        recurrent states. Afterwards cache.lengths = lengths. Returns each row's last hidden state [B, H]
        (final-normed; zeros for a row of 0 tokens).
        graphs: a model.prefill_graph.PrefillGraphs, which replays a one-chunk prefill from a CUDA graph.
        """
        if not isinstance(chunk_size, int) or chunk_size < 1:
            raise ValueError(f"chunk_size must be a positive int, got {chunk_size!r}")
        B = len(lengths)
        if cache.batch != B:
            raise ValueError(f"the cache has {cache.batch} rows, the batch {B}")
        if max(lengths, default=0) > cache.capacity:
            raise ValueError(f"a prompt of {max(lengths)} tokens does not fit the cache capacity {cache.capacity}")
        cu = [0]
        for n in lengths:
            cu.append(cu[-1] + n)
        T = cu[-1]
        if embeds.shape[0] != T or positions.shape[1] != T:
            raise ValueError(f"embeds and positions must hold sum(lengths) = {T} tokens")
        if graphs is not None and T <= chunk_size:
            h = graphs(self, cache, embeds, positions, lengths, cu)
            if h is not None:
                cache.lengths.copy_(_device_ints(lengths, torch.int32, self.device))
                return h
        out = embeds.new_zeros(B, embeds.shape[1])
        done = [0] * B
        chunks = range(0, T, chunk_size)  # a bar on stderr for long prompts (Model.progress; after 1 s)
        for c0 in progress_bar(chunks, getattr(self, "progress", False), "prefill", unit="chunk"):
            c1 = min(c0 + chunk_size, T)
            counts = [max(0, min(c1, cu[b + 1]) - max(c0, cu[b])) for b in range(B)]
            ccu = [0]
            for n in counts:
                ccu.append(ccu[-1] + n)
            ends = [b for b in range(B) if counts[b] and done[b] + counts[b] == lengths[b]]  # rows ending here
            sel = _device_ints([ccu[b + 1] - 1 for b in ends], torch.int64, self.device)
            h = self.forward(embeds[c0:c1], positions[:, c0:c1], _device_ints(ccu, torch.int32, self.device), cache,
                             start=list(done), select=sel, cu_host=ccu)
            if ends:
                out.index_copy_(0, _device_ints(ends, torch.int64, self.device), h)
            done = [d + n for d, n in zip(done, counts)]
            cache.lengths.copy_(_device_ints(done, torch.int32, self.device))
        return out

    def decode_step(self, cache: Cache, tokens: torch.Tensor) -> torch.Tensor:
        """One new token per cache row: tokens int64 [B] -> final-normed hidden states [B, H].

        Appends each token's KV entries and states to its row and advances cache.lengths by 1. The mRoPE
        position of row b's token is lengths[b] + rope_delta[b] on all three axes (read from cache.cos/sin).
        The caller keeps lengths < capacity (nothing here reads the device on the host).
        """
        ew = self.embed_weight
        if self.glue is not None and tokens.is_cuda and (ew.shape[1] * ew.element_size()) % 16 == 0:
            x, cos, sin, attend = self.glue[0](tokens, ew, cache.lengths, cache.rope_delta, cache.cos, cache.sin)
        else:
            x = self.embed(tokens)
            pos = (cache.lengths.long() + cache.rope_delta).clamp_(0, cache.capacity - 1)
            cos, sin = cache.cos.index_select(0, pos), cache.sin.index_select(0, pos)
            attend = cache.lengths + 1
        p = _Pass(cu=cache.decode_cu, max_seqlen=1, cache=cache, decode=True, attend=attend)
        h = self._layers(x, cos, sin, p)
        cache.lengths += 1
        return h

    # ---------------------------------------------------------------------------------------------------------
    def _layers(self, x, cos, sin, p: _Pass, select=None):
        cfg, ops, w = self.cfg, self.ops, self.w
        h, res = None, x
        # at decode the norms go to the next projection as a _Pending (folded into the skinny GEMM where it runs;
        # the residual stream then comes back on it)
        fold = p.decode and self.fold_norms and self.skinny is not None
        for i, kind in enumerate(cfg.layer_types):
            pre = f"layers.{i}."
            if h is None:
                h = ops.rms_norm(res, w[pre + "input_layernorm.weight"], cfg.rms_norm_eps)
            else:
                h, res = self._add_rms(h, res, w[pre + "input_layernorm.weight"], fold)
            x_in = h
            if kind == "full_attention":
                h = self._attention(i, x_in, cos, sin, p)
            else:
                h = self._deltanet(i, x_in, p)
            res = x_in.res_out if isinstance(x_in, _Pending) else res
            x_in, res = self._add_rms(h, res, w[pre + "post_attention_layernorm.weight"], fold)
            h = self._mlp(i, x_in)
            res = x_in.res_out if isinstance(x_in, _Pending) else res
        if select is not None:
            res = res.index_select(0, select)
            h = None if h is None else h.index_select(0, select)
        if h is None:
            return ops.rms_norm(res, w["norm.weight"], cfg.rms_norm_eps)
        return ops.add_rms_norm(h, res, w["norm.weight"], cfg.rms_norm_eps)[0]

    def _add_rms(self, h, res, weight, fold: bool):
        """(y, residual) of add_rms_norm(h, res, weight), or (a _Pending of it, None) when folding: its consumer
        sets res_out."""
        if fold:
            return _Pending("add", h, res, weight, self.cfg.rms_norm_eps), None
        return self.ops.add_rms_norm(h, res, weight, self.cfg.rms_norm_eps)

    def _attention(self, i, x, cos, sin, p: _Pass):
        """Gated full attention: q_proj rows are per head [q | gate]; (1+w) q/k norms; partial mRoPE; GQA."""
        cfg, ops, w = self.cfg, self.ops, self.w
        pre = f"layers.{i}.self_attn."
        T, Hq, Hkv, d = x.shape[0], cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim
        qg, k, v = self.linear_split(x, pre + "qkv_proj.weight", (Hq * 2 * d, Hkv * d, Hkv * d), contiguous_from=0)
        # qk_norm_rope takes contiguous rows: the skinny kernel's parts are; cuBLAS's column views get copied
        qg, k, v = qg.contiguous().view(T, Hq, 2 * d), k.contiguous().view(T, Hkv, d), v.contiguous().view(T, Hkv, d)
        # q/gate split, (1+w) q/k norms and partial mRoPE in one op; with a cache it also writes the normed,
        # rotated k and v of row b's new tokens to slots lengths[b] .. (gate stays a strided view of qg)
        cache = p.cache
        kv = {} if cache is None else dict(v=v, k_cache=cache.k[i], v_cache=cache.v[i], cu_seqlens=p.cu,
                                          lengths=cache.lengths, validate=False)
        q, gate, k = self.op("qk_norm_rope")(qg, k, w[pre + "q_norm.weight"], w[pre + "k_norm.weight"], cos, sin,
                                             cfg.rms_norm_eps, **kv)
        if p.decode:  # attend over the cache, this token included
            o = _call(self.op("decode_attention"), q, cache.k[i], cache.v[i], p.attend,
                      max_length=cache.capacity, validate=False)
        elif p.fresh:
            o = _call(ops.attention, q, k, v, p.cu, True, max_seqlen=p.max_seqlen, validate=False)
        else:  # a later chunk: each row attends to its cached tokens and to this chunk's, causally
            o = torch.empty_like(q)
            for b, (s, e) in enumerate(zip(p.cu_host, p.cu_host[1:])):
                if e > s:
                    n0 = p.start[b]
                    o[s:e] = _attend_after_prefix(q[s:e], cache.k[i][b, : n0 + e - s], cache.v[i][b, : n0 + e - s])
        o = o.contiguous()  # a no-op for the kernels' o; the reference's may be a view
        if p.pad is not None:
            o.masked_fill_(p.pad, 0)
        wo = self.w[pre + "o_proj.weight"]
        o2 = o.view(T, Hq * d)
        kw = self._skinny("gate", o2, wo, lambda kw, w: self.skinny[0](o2, w, gate=gate, **kw),
                          lambda w: F.linear(ops.sigmoid_gate(o, gate).view(T, Hq * d), w))
        if kw:
            # the output gate o * sigmoid(gate) folded into the skinny o_proj's operand load (one kernel less)
            return self.skinny[0](o2, wo, gate=gate, **kw)
        o = ops.sigmoid_gate(o, gate)
        return self.linear(o.reshape(T, Hq * d), pre + "o_proj.weight")

    def _deltanet(self, i, x, p: _Pass):
        """Gated DeltaNet: causal conv (+ state) on [q|k|v], gated delta rule (+ state), gated RMSNorm, out_proj."""
        cfg, ops, w = self.cfg, self.ops, self.w
        pre = f"layers.{i}.linear_attn."
        T = x.shape[0]
        nk, nv, dk, dv = (cfg.linear_num_key_heads, cfg.linear_num_value_heads, cfg.linear_key_head_dim,
                          cfg.linear_value_head_dim)
        cache = p.cache
        conv_state = None if cache is None else cache.conv[i]
        rec_state = None if cache is None else cache.recurrent[i]
        # with a cache, the states are read and updated in place (state_out / final_state = the state); the first
        # pass of a prefill starts from zero states, whatever the cache holds (a reused session's needs no clearing)
        first = cache is not None and not p.decode and not any(p.start or ())  # no row has cached tokens yet
        conv_in, rec_in = (None, None) if first else (conv_state, rec_state)
        C = cfg.linear_conv_dim
        Z = nv * dv
        # conv input | z | b | a (contiguous parts on the skinny kernel, column views on cuBLAS)
        xc, z, b, a = self.linear_split(x, pre + "in_proj_qkvzba.weight", (C, Z, nv, nv))
        mixed, new_conv = _call(self.op("causal_conv1d"), xc, self.conv_w[i], p.cu, conv_in,
                                state_out=conv_state, max_seqlen=p.max_seqlen, validate=False)
        q = mixed[:, : nk * dk].reshape(T, nk, dk)
        k = mixed[:, nk * dk: 2 * nk * dk].reshape(T, nk, dk)
        v = mixed[:, 2 * nk * dk:].reshape(T, nv, dv)
        z = z.contiguous().view(T, nv, dv)  # gated_rms_norm takes contiguous rows
        # the delta rule with its gates from the projections a, b (log-decay g = -exp(A_log) softplus(a + dt_bias),
        # beta = sigmoid(b), fp32); q, k, v stay strided views of the conv output (the kernels take token strides)
        # (a and b must be contiguous: the skinny kernel's parts are; cuBLAS's column views get a small copy)
        A_log, dt_bias = self.gate_consts[i]
        o, new_rec = _call(self.op("fused_gated_delta_rule"), q, k, v, a.contiguous(), b.contiguous(), A_log, dt_bias,
                           p.cu, rec_in, use_qk_l2norm=True, final_state=rec_state, max_seqlen=p.max_seqlen,
                           validate=False)
        if cache is not None:
            if new_conv is not conv_state:
                conv_state.copy_(new_conv)
            if new_rec is not rec_state:
                rec_state.copy_(new_rec)
        if p.pad is not None:
            o.masked_fill_(p.pad, 0)
        if p.decode and self.fold_norms and self.skinny is not None:  # folded into out_proj where it can be
            return self.linear(_Pending("gated", o, z, w[pre + "norm.weight"], cfg.rms_norm_eps),
                               pre + "out_proj.weight")
        o = ops.gated_rms_norm(o, z, w[pre + "norm.weight"], cfg.rms_norm_eps)
        return self.linear(o.reshape(T, nv * dv), pre + "out_proj.weight")

    def _mlp(self, i, x):
        cfg, ops, w = self.cfg, self.ops, self.w
        p = f"layers.{i}.mlp."
        if not cfg.is_moe:
            return self.linear(self.linear_silu_mul(x, p + "gate_up_proj.weight"), p + "down_proj.weight")
        if isinstance(x, _Pending):
            x = x.apply(ops)
        # MoE layer: the router GEMM (the skinny kernel at decode) then top-k, then the routed experts with the
        # sigmoid-gated shared expert fused into the combine. Nothing is read on the host (validate=False), so the
        # decode step stays capturable; the paths depend on host sizes only. (kernels.moe.moe_router_topk, the
        # router and top-k in one launch, measured slower than the two at 1 and 8 tokens on the H200: 11.6 us vs
        # 5.3 + 5.3, benchmarks/results/moe-H200-2026-12-02.json; ROUTER_FUSED_ROWS > 0 turns it on up to that T.)
        k = cfg.num_experts_per_tok
        fused_router = getattr(ops, "moe_router_topk", None)
        if fused_router is not None and fused_router is not reference.moe_router_topk and \
                x.shape[0] <= ROUTER_FUSED_ROWS:
            weights, experts = fused_router(x, w[p + "gate.weight"], k)
        else:
            weights, experts = self.op("moe_topk")(self.linear(x, p + "gate.weight"), k)
        s = p + "shared_expert."
        return _call(self.op("moe_mlp"), x, w[p + "experts.gate_up_proj"], w[p + "experts.down_proj"], weights,
                     experts, shared_gate=w[s + "gate_proj.weight"], shared_up=w[s + "up_proj.weight"],
                     shared_down=w[s + "down_proj.weight"], shared_expert_gate=w[p + "shared_expert_gate.weight"],
                     validate=False)


def _device_ints(values: list[int], dtype: torch.dtype, device) -> torch.Tensor:
    """A host list as a device tensor without a host wait: through pinned memory on a GPU (a pageable copy waits
    for everything queued before it, so the host would stop feeding the device between prefill chunks)."""
    t = torch.tensor(values, dtype=dtype)
    if torch.device(device).type != "cuda":
        return t.to(device)
    return t.pin_memory().to(device, non_blocking=True)


def _graph_ms(fn, weights: list, pre, reps: int = 8) -> float:
    """Device time of `reps` calls fn(w), w cycling over `weights` (copies of one weight totalling more than the
    L2, so each call reads it from DRAM, as in a decode step), each after a call of `pre` (a small kernel, as in
    the model, where a norm precedes each GEMM: a programmatic launch cannot overlap two calls of itself),
    replayed from a graph."""
    from kernels.runtime.timing import graph_replay_ms

    reps = max(reps, len(weights))

    def body():
        for r in range(reps):
            pre()
            fn(weights[r % len(weights)])
    return graph_replay_ms(body)


_TIMING_BYTES = 128 * 2**20  # weight copies the timing cycles through: above an H200's 50 MB L2


def _fastest_skinny(ours, theirs, wt: torch.Tensor, variants, pre):
    """The keyword dict of the fastest `ours(kw, w)` (the skinny kernel) over variants if it runs faster than
    `theirs(w)` (cuBLAS) on weights w like wt, read from DRAM, each call after `pre()`, else False; False if the
    timing fails."""
    try:
        torch.cuda.synchronize()
        nbytes = wt.numel() * wt.element_size()
        weights = [wt] + [wt.clone() for _ in range(-(-_TIMING_BYTES // nbytes) - 1)]
        best, ms = False, _graph_ms(theirs, weights, pre)
        for kw in variants:
            t = _graph_ms(lambda w: ours(kw, w), weights, pre)
            if t < ms:
                best, ms = dict(kw), t
        del weights
        return best
    except RuntimeError:  # e.g. a capture the environment does not allow: the cuBLAS path, which always works
        torch.cuda.synchronize()
        return False


def _skinny_gemm():
    """(kernels.gemm.skinny_linear, skinny_ok, skinny_variants (the variants worth timing for (kind, weight,
    rows)), fold_ok), or None without the kernels package."""
    try:
        from kernels.gemm import fold_ok, skinny_linear, skinny_ok, skinny_variants
    except ModuleNotFoundError:
        return None
    return skinny_linear, skinny_ok, skinny_variants, fold_ok


def _glue_kernels():
    """(kernels.glue.decode_prologue, greedy_select, split_columns), or None without the kernels package."""
    try:
        from kernels.glue import decode_prologue, greedy_select, split_columns
    except ModuleNotFoundError:
        return None
    return decode_prologue, greedy_select, split_columns


def _attend_after_prefix(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Causal attention of a row's chunk after its cached prefix (bottom-right aligned causal mask).

    q: [n, Hq, d], the chunk's queries; k, v: [P + n, Hkv, d], the row's cache slots up to the chunk's end.
    Query i (at position P + i) sees keys 0 .. P + i. Returns [n, Hq, d] in q.dtype.
    On CUDA this is torch SDPA with a lower-right causal bias (flash / memory-efficient, no [n, P+n] mask);
    on the CPU the fp32 math of reference.attention. (No library kernel takes a KV prefix yet.)
    """
    n, Hq, d = q.shape
    S, Hkv = k.shape[0], k.shape[1]
    r = Hq // Hkv
    if q.is_cuda:
        from torch.nn.attention.bias import causal_lower_right

        bias = causal_lower_right(n, S)
        out = torch.empty_like(q)
        for j in range(Hkv):  # one kv head at a time: its r query heads against it (bounded extra memory)
            qh = q[:, j * r:(j + 1) * r].transpose(0, 1)[None]  # [1, r, n, d]
            kh = k[:, j][None, None].expand(1, r, S, d).contiguous()
            vh = v[:, j][None, None].expand(1, r, S, d).contiguous()
            out[:, j * r:(j + 1) * r] = F.scaled_dot_product_attention(qh, kh, vh, attn_mask=bias)[0].transpose(0, 1)
        return out
    acc = torch.float64 if q.dtype == torch.float64 else torch.float32
    kf = k.to(acc).repeat_interleave(r, dim=1)
    vf = v.to(acc).repeat_interleave(r, dim=1)
    scores = torch.einsum("ihd,jhd->hij", q.to(acc), kf) * d ** -0.5  # [Hq, n, S]
    allowed = torch.arange(S, device=q.device)[None, :] <= torch.arange(S - n, S, device=q.device)[:, None]
    probs = torch.softmax(scores.masked_fill(~allowed, float("-inf")), dim=-1)
    return torch.einsum("hij,jhd->ihd", probs, vf).to(q.dtype)
