"""The Qwen3.5 ViT and its 2x2 patch merger, written only against an op namespace plus bias-free GEMMs.

Several images and videos go through in one call: their patches are packed on axis 0 (the processor's order) and
`vision_cu_seqlens` cuts one attention segment per (image, temporal slice).

Every linear layer is a bias-free `F.linear`; its bias is fused into the op that follows (TurboMind notes 3.9, 4):
    x = patch_embed + bilinear position embedding;  h = LN1_0(x);  residual = x
    per block i:
        q, k, v   = qkv_bias_rope(h @ Wqkv^T, b_qkv, cos, sin)
        o         = attention(q, k, v, non-causal, per segment) @ Wproj^T
        h, res    = add_bias_layer_norm(o, b_proj, res, LN2_i)            res += o + b_proj;  h = LN2_i(res)
        f         = bias_gelu_tanh(h @ Wfc1^T, b_fc1) @ Wfc2^T
        h, res    = add_bias_layer_norm(f, b_fc2, res, LN1_{i+1})         the next block's input norm
    (after the last block the tail norm is the merger's LayerNorm, so h is already the merger input)
    merger:  y = fc2(gelu_erf(fc1(h viewed [N/4, 4D])))
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from reference._checks import check_grid_thw

from .config import VisionConfig
from .progress import progress_bar

_EPS = 1e-6  # every LayerNorm of the tower (HF hard-codes it)
_GELU = {"gelu_pytorch_tanh": "tanh", "gelu": "none"}


class VisionTower:
    """weights: {name: tensor} with the `model.visual.` prefix removed; ops: an op namespace (model.ops)."""

    def __init__(self, cfg: VisionConfig, weights: dict[str, torch.Tensor], ops):
        if cfg.hidden_act not in _GELU:
            raise ValueError(f"vision hidden_act {cfg.hidden_act!r} is not supported (expected {list(_GELU)})")
        self.cfg, self.w, self.ops = cfg, weights, ops
        self.act = _GELU[cfg.hidden_act]

    @property
    def device(self) -> torch.device:
        return self.w["pos_embed.weight"].device

    @property
    def dtype(self) -> torch.dtype:
        return self.w["pos_embed.weight"].dtype

    def __call__(self, pixel_values: torch.Tensor, grid_thw: torch.Tensor) -> torch.Tensor:
        """pixel_values [N, C*T*P*P] (all images/videos, packed), grid_thw [n, 3] -> [N / merge^2, out_hidden]."""
        cfg = self.cfg
        if pixel_values.dim() != 2 or pixel_values.shape[1] != cfg.patch_dim:
            raise ValueError(f"pixel_values must have shape (N, {cfg.patch_dim}), got {tuple(pixel_values.shape)}")
        grid_thw = torch.as_tensor(grid_thw)
        if grid_thw.dim() != 2 or grid_thw.shape[1] != 3:
            raise ValueError(f"grid_thw must have shape (n, 3), got {tuple(grid_thw.shape)}")
        n_patches = int(grid_thw.prod(-1).sum())
        if pixel_values.shape[0] != n_patches:
            raise ValueError(f"pixel_values has {pixel_values.shape[0]} rows but grid_thw describes {n_patches} "
                             f"patches: {grid_thw.tolist()}")
        return self.forward(pixel_values.to(self.device, self.dtype), self.prepare(grid_thw))

    def prepare(self, grid_thw: torch.Tensor) -> dict:
        """The per-grid tables: position-embedding taps, 2D rotary cos/sin, attention segments (on the device).

        Sizes come from grid_thw on the host (the processor's output lives there), so no kernel has to read
        the grid back from the device: the tower does no host synchronisation.
        """
        cfg, ops = self.cfg, self.ops
        grid_cpu = check_grid_thw(torch.as_tensor(grid_thw).cpu(), merge=cfg.spatial_merge_size)
        frames = [h * w for t, h, w in grid_cpu.tolist() for _ in range(t)]
        n_patches, merge = sum(frames), cfg.spatial_merge_size
        grid = grid_cpu.to(self.device, non_blocking=True)
        idx, wts = ops.vision_pos_taps(grid, side=cfg.pos_side, merge=merge, num_patches=n_patches)
        cos, sin = ops.vision_rope_cos_sin(grid, cfg.head_dim, theta=cfg.rope_theta, merge=merge,
                                           num_patches=n_patches)
        cu = ops.vision_cu_seqlens(grid, num_segments=len(frames))
        return dict(pos_index=idx, pos_weight=wts, cos=cos, sin=sin, cu_seqlens=cu, max_seqlen=max(frames))

    def forward(self, pixel_values: torch.Tensor, tables: dict[str, torch.Tensor]) -> torch.Tensor:
        """The tower on device-resident pixels [N, C*T*P*P] (model dtype) and `prepare`d tables."""
        cfg, w, ops = self.cfg, self.w, self.ops
        merge, N, D, heads = cfg.spatial_merge_size, pixel_values.shape[0], cfg.hidden_size, cfg.num_heads
        cos, sin, cu = tables["cos"], tables["sin"], tables["cu_seqlens"]

        x = ops.patch_embed(pixel_values, w["patch_embed.proj.weight"], w["patch_embed.proj.bias"])
        res = ops.add_pos_embed(x, w["pos_embed.weight"], tables["pos_index"], tables["pos_weight"])  # the stream
        first = "blocks.0.norm1." if cfg.depth else "merger.norm."
        h = ops.layer_norm(res, w[first + "weight"], w[first + "bias"], _EPS)
        for i in progress_bar(range(cfg.depth), getattr(self, "progress", False), "vision", unit="layer"):
            b = f"blocks.{i}."
            q, k, v = ops.qkv_bias_rope(F.linear(h, w[b + "attn.qkv.weight"]), w[b + "attn.qkv.bias"],
                                        cos, sin, heads)
            o = ops.attention(q, k, v, cu, False, max_seqlen=tables["max_seqlen"], validate=False)  # [N, heads, hd]
            o = F.linear(o.reshape(N, D), w[b + "attn.proj.weight"])
            h, res = ops.add_bias_layer_norm(o, w[b + "attn.proj.bias"], res,
                                             w[b + "norm2.weight"], w[b + "norm2.bias"], _EPS)
            f = ops.bias_gelu(F.linear(h, w[b + "mlp.linear_fc1.weight"]), w[b + "mlp.linear_fc1.bias"], self.act)
            f = F.linear(f, w[b + "mlp.linear_fc2.weight"])
            nxt = f"blocks.{i + 1}.norm1." if i + 1 < cfg.depth else "merger.norm."
            h, res = ops.add_bias_layer_norm(f, w[b + "mlp.linear_fc2.bias"], res,
                                             w[nxt + "weight"], w[nxt + "bias"], _EPS)

        # merger: 4 consecutive tokens are one 2x2 block (the processor emits patches in merge-block order)
        y = h.reshape(N // merge ** 2, D * merge ** 2)
        y = ops.bias_gelu(F.linear(y, w["merger.linear_fc1.weight"]), w["merger.linear_fc1.bias"], "none")
        return F.linear(y, w["merger.linear_fc2.weight"], w["merger.linear_fc2.bias"])
