"""The Qwen3.5 hybrid language model (Gated DeltaNet + gated full attention), written against an op namespace.

Tokens are packed: the real (unpadded) tokens of every batch row are concatenated on axis 0 and `cu_seqlens`
marks the rows, so attention, the short conv and the delta rule never see padding.

Decoder layer (pre-norm; the residual add is fused into the next RMSNorm with `add_rms_norm`):
    x, res = add_rms_norm(prev_out, res, input_layernorm)
    res += Mixer(x)            DeltaNet (3 of 4 layers) or gated attention (every 4th)
    x, res = add_rms_norm(mixer_out, res, post_attention_layernorm)
    res += MLP(x)              SwiGLU, or routed experts + sigmoid-gated shared expert
The final norm takes the last layer's MLP output the same way.

Caches (`Cache`): per attention layer a KV cache [B, Smax, Hkv, d] read by `decode_attention`; per DeltaNet layer
the conv state [B, C, K-1] and the recurrent state [B, Hv, dk, dv] (fp32). `lengths[b]` counts row b's tokens.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from .config import TextConfig


@dataclass
class Cache:
    lengths: torch.Tensor  # int32 [B]: tokens already in the cache per row
    rope_delta: torch.Tensor  # int64 [B]: mRoPE position of cache slot p is p + rope_delta
    k: dict[int, torch.Tensor] = field(default_factory=dict)  # attention layer -> [B, Smax, Hkv, d]
    v: dict[int, torch.Tensor] = field(default_factory=dict)
    conv: dict[int, torch.Tensor] = field(default_factory=dict)  # DeltaNet layer -> [B, C, K-1]
    recurrent: dict[int, torch.Tensor] = field(default_factory=dict)  # DeltaNet layer -> [B, Hv, dk, dv] fp32

    @property
    def capacity(self) -> int:
        return next(iter(self.k.values())).shape[1] if self.k else 1 << 62


class LanguageModel:
    """weights: {name: tensor} with `model.language_model.` removed, plus `lm_head.weight`; ops: op namespace."""

    def __init__(self, cfg: TextConfig, weights: dict[str, torch.Tensor], ops):
        if cfg.hidden_act != "silu":
            raise ValueError(f"text hidden_act {cfg.hidden_act!r} is not supported (expected 'silu')")
        self.cfg, self.w, self.ops = cfg, weights, ops
        self.embed_weight = weights["embed_tokens.weight"]
        # per-layer constants, computed once: conv taps [C, K] and the DeltaNet decay rate -exp(A_log) in fp32
        self.conv_w, self.neg_a = {}, {}
        for i, kind in enumerate(cfg.layer_types):
            if kind == "linear_attention":
                p = f"layers.{i}.linear_attn."
                self.conv_w[i] = weights[p + "conv1d.weight"][:, 0, :]
                self.neg_a[i] = -weights[p + "A_log"].float().exp()

    @property
    def device(self):
        return self.embed_weight.device

    @property
    def dtype(self):
        return self.embed_weight.dtype

    def embed(self, ids: torch.Tensor) -> torch.Tensor:
        return F.embedding(ids.to(self.device), self.embed_weight)

    def head(self, h: torch.Tensor) -> torch.Tensor:
        return F.linear(h, self.w["lm_head.weight"])

    def new_cache(self, batch: int, capacity: int) -> Cache:
        c, dev = self.cfg, self.device
        cache = Cache(lengths=torch.zeros(batch, dtype=torch.int32, device=dev),
                      rope_delta=torch.zeros(batch, dtype=torch.int64, device=dev))
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
                cache: Cache | None = None, decode: bool = False) -> torch.Tensor:
        """Run the decoder. Returns the final-normed hidden states [T, H] (apply `head` for logits).

        x: [T, H] packed input embeddings; positions: int [3, T] mRoPE ids; cu_seqlens: int32 [B+1].
        Prefill (decode=False): the rows start empty; with a cache, their states and KV entries are stored.
        Decode (decode=True): one token per row (T = B), appended to `cache` (required).
        """
        cfg, ops, w = self.cfg, self.ops, self.w
        if decode and cache is None:
            raise ValueError("decode needs a cache")
        cos, sin = ops.mrope_cos_sin(positions, cfg.rotary_dim, cfg.rope_theta, cfg.mrope_section, True)
        h, res = None, x
        for i, kind in enumerate(cfg.layer_types):
            p = f"layers.{i}."
            if h is None:
                h = ops.rms_norm(res, w[p + "input_layernorm.weight"], cfg.rms_norm_eps)
            else:
                h, res = ops.add_rms_norm(h, res, w[p + "input_layernorm.weight"], cfg.rms_norm_eps)
            if kind == "full_attention":
                h = self._attention(i, h, cos, sin, cu_seqlens, cache, decode)
            else:
                h = self._deltanet(i, h, cu_seqlens, cache, decode)
            h, res = ops.add_rms_norm(h, res, w[p + "post_attention_layernorm.weight"], cfg.rms_norm_eps)
            h = self._mlp(i, h)
        if h is None:
            return ops.rms_norm(res, w["norm.weight"], cfg.rms_norm_eps)
        return ops.add_rms_norm(h, res, w["norm.weight"], cfg.rms_norm_eps)[0]

    # ---------------------------------------------------------------------------------------------------------
    def _attention(self, i, x, cos, sin, cu_seqlens, cache, decode):
        """Gated full attention: q_proj rows are per head [q | gate]; (1+w) q/k norms; partial mRoPE; GQA."""
        cfg, ops, w = self.cfg, self.ops, self.w
        p = f"layers.{i}.self_attn."
        T, Hq, Hkv, d = x.shape[0], cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim
        qg = F.linear(x, w[p + "q_proj.weight"]).view(T, Hq, 2 * d)
        q, gate = qg[..., :d].contiguous(), qg[..., d:].contiguous()
        k = F.linear(x, w[p + "k_proj.weight"]).view(T, Hkv, d)
        v = F.linear(x, w[p + "v_proj.weight"]).view(T, Hkv, d)
        q = ops.apply_rope(ops.rms_norm(q, w[p + "q_norm.weight"], cfg.rms_norm_eps), cos, sin)
        k = ops.apply_rope(ops.rms_norm(k, w[p + "k_norm.weight"], cfg.rms_norm_eps), cos, sin)
        if decode:  # append this token's k/v to each row's cache, then attend over the cache
            rows = torch.arange(T, device=x.device)
            slot = cache.lengths.long()
            cache.k[i][rows, slot] = k
            cache.v[i][rows, slot] = v
            o = ops.decode_attention(q, cache.k[i], cache.v[i], cache.lengths + 1)
        else:
            o = ops.attention(q, k, v, cu_seqlens, True)
            if cache is not None:  # row b's tokens go to cache slots 0 .. len_b - 1
                for b, (s, e) in enumerate(_segments(cu_seqlens)):
                    cache.k[i][b, : e - s] = k[s:e]
                    cache.v[i][b, : e - s] = v[s:e]
        o = ops.sigmoid_gate(o, gate)
        return F.linear(o.reshape(T, Hq * d), w[p + "o_proj.weight"])

    def _deltanet(self, i, x, cu_seqlens, cache, decode):
        """Gated DeltaNet: causal conv (+ state) on [q|k|v], gated delta rule (+ state), gated RMSNorm, out_proj."""
        cfg, ops, w = self.cfg, self.ops, self.w
        p = f"layers.{i}.linear_attn."
        T = x.shape[0]
        nk, nv, dk, dv = (cfg.linear_num_key_heads, cfg.linear_num_value_heads, cfg.linear_key_head_dim,
                          cfg.linear_value_head_dim)
        conv_state = cache.conv[i] if decode else None
        rec_state = cache.recurrent[i] if decode else None
        mixed, new_conv = ops.causal_conv1d(F.linear(x, w[p + "in_proj_qkv.weight"]), self.conv_w[i],
                                            cu_seqlens, conv_state)
        q = mixed[:, : nk * dk].reshape(T, nk, dk)
        k = mixed[:, nk * dk: 2 * nk * dk].reshape(T, nk, dk)
        v = mixed[:, 2 * nk * dk:].reshape(T, nv, dv)
        z = F.linear(x, w[p + "in_proj_z.weight"]).view(T, nv, dv)
        beta = torch.sigmoid(F.linear(x, w[p + "in_proj_b.weight"]))
        # log-decay g = -exp(A_log) * softplus(a + dt_bias), in fp32 as HF does
        a = F.linear(x, w[p + "in_proj_a.weight"]).float()
        g = self.neg_a[i] * F.softplus(a + w[p + "dt_bias"].float())
        o, new_rec = ops.gated_delta_rule(q.contiguous(), k.contiguous(), v.contiguous(), g, beta, cu_seqlens,
                                          rec_state, use_qk_l2norm=True)
        if cache is not None:
            cache.conv[i].copy_(new_conv)
            cache.recurrent[i].copy_(new_rec)
        o = ops.gated_rms_norm(o, z, w[p + "norm.weight"], cfg.rms_norm_eps)
        return F.linear(o.reshape(T, nv * dv), w[p + "out_proj.weight"])

    def _mlp(self, i, x):
        cfg, ops, w = self.cfg, self.ops, self.w
        p = f"layers.{i}.mlp."
        if not cfg.is_moe:
            return F.linear(ops.silu_mul(F.linear(x, w[p + "gate_proj.weight"]), F.linear(x, w[p + "up_proj.weight"])),
                            w[p + "down_proj.weight"])
        weights, experts = ops.moe_topk(F.linear(x, w[p + "gate.weight"]), cfg.num_experts_per_tok)
        routed = ops.moe_mlp(x, w[p + "experts.gate_up_proj"], w[p + "experts.down_proj"], weights, experts)
        s = p + "shared_expert."
        shared = F.linear(ops.silu_mul(F.linear(x, w[s + "gate_proj.weight"]), F.linear(x, w[s + "up_proj.weight"])),
                          w[s + "down_proj.weight"])
        return routed + torch.sigmoid(F.linear(x, w[p + "shared_expert_gate.weight"])) * shared


def _segments(cu_seqlens: torch.Tensor) -> list[tuple[int, int]]:
    cu = cu_seqlens.tolist()
    return list(zip(cu[:-1], cu[1:]))
