"""The AR trunk + categorical head: one transformer, two entry points.

``forward``        the whole sequence under the schedule's block-causal mask (training, parity checks).
``forward_step``   one step's positions against a KV cache (sampling).

Both build their input with ``embed``: the first step is fed the conditioning (class embedding, plus
``pos_start`` for VAR), later steps the input builder's output (canvas features for VAR, token ids for
raster models) through ``input_proj``.  Positions are learned (VAR: per-position + per-level embedding) or
2-D RoPE inside attention (LlamaGen).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from arvision.config import TransformerConfig
from arvision.models.attention import KVCache, rope_2d_table
from arvision.models.blocks import AdaLNBlock, LlamaBlock, RMSNorm
from arvision.models.quantized import linear_dtype
from arvision.schedules import Schedule


class Conditioning(NamedTuple):
    """What a class label contributes to every step: computed once per sequence by ``condition``."""

    class_emb: torch.Tensor  # (B, C)
    blocks: list  # per block: AdaLN modulation (B, 1, 6, C), or None (Llama blocks)
    head: torch.Tensor | None  # AdaLN head modulation (B, 1, 2, C), or None


class AdaLNHeadNorm(nn.Module):
    """LN(x)(1 + scale) + shift with (scale, shift) = ada_lin(silu(cond)) (B, 2C)."""

    def __init__(self, width: int, eps: float):
        super().__init__()
        self.width, self.eps = width, eps
        self.ada_lin = nn.Linear(width, 2 * width)

    def modulation(self, cond: torch.Tensor) -> torch.Tensor:
        """cond (B, C) -> (B, 1, 2, C): scale, shift."""
        return self.ada_lin(F.silu(cond)).view(-1, 1, 2, self.width)

    def forward(self, x: torch.Tensor, mod: torch.Tensor) -> torch.Tensor:
        scale, shift = mod.unbind(2)
        return F.layer_norm(x, (self.width,), eps=self.eps).mul(scale.add(1)).add_(shift)


class ARTransformer(nn.Module):
    def __init__(self, cfg: TransformerConfig, schedule: Schedule):
        super().__init__()
        self.cfg, self.schedule = cfg, schedule
        # a plain tuple: the schedule's cached properties take a lock that torch.compile cannot trace
        self.begin_ends = tuple(schedule.begin_ends)
        self.static_steps = False  # raster sampling through forward_token (set by ARPipeline.compile)
        C, L = cfg.width, schedule.length
        self.adaln = cfg.block == "adaln"
        self.class_emb = nn.Embedding(cfg.num_classes + 1, C)  # row num_classes = null class
        dpr = torch.linspace(0, cfg.drop_path_rate, cfg.depth).tolist()
        if self.adaln:
            self.input_proj = nn.Linear(cfg.in_channels, C)
            self.pos_start = nn.Parameter(torch.zeros(1, schedule.first_len, C))
            self.pos_embed = nn.Parameter(torch.zeros(1, L, C))
            self.lvl_embed = nn.Embedding(schedule.num_steps, C)
            self.shared_ada_lin = nn.Linear(C, 6 * C) if cfg.shared_adaln else None
            self.blocks = nn.ModuleList(
                AdaLNBlock(C, cfg.num_heads, cfg.mlp_ratio, cfg.norm_eps, cfg.shared_adaln, cfg.attn_l2_norm,
                           dpr[i], cfg.dropout) for i in range(cfg.depth))
            self.head_norm = AdaLNHeadNorm(C, cfg.norm_eps)
            self.head = nn.Linear(C, cfg.vocab_size)
            self.register_buffer("step_ids", schedule.step_ids(), persistent=False)
        else:
            self.input_proj = nn.Embedding(cfg.vocab_size, C)
            self.blocks = nn.ModuleList(
                LlamaBlock(C, cfg.num_heads, cfg.ffn_hidden, cfg.norm_eps, dpr[i], cfg.dropout)
                for i in range(cfg.depth))
            self.head_norm = RMSNorm(C, cfg.norm_eps)
            self.head = nn.Linear(C, cfg.vocab_size, bias=False)
            # Rotary angles of positions [cls, grid_0, ..., grid_{L-2}]: position i is fed the token that
            # sits at grid cell i-1 (shifted raster input), cell -1 being the class token.
            table = rope_2d_table(schedule.image_grid, cfg.head_dim, cfg.rope_base, schedule.first_len)
            self.register_buffer("rope", table[:L].contiguous(), persistent=False)

    # -- pieces shared by both entry points ------------------------------------------------------------
    def condition(self, labels: torch.Tensor) -> Conditioning:
        """labels (B,) -> the class embedding and, for AdaLN, every block's and the head's modulation.

        The modulations depend only on the class, so they are computed once per sequence, not once per step:
        at batch 1 their weights (a third of a VAR model's) would otherwise be read again at every scale."""
        cond = self.class_emb(labels)
        if not self.adaln:
            return Conditioning(cond, [None] * len(self.blocks), None)
        shared = (self.shared_ada_lin(F.silu(cond)).view(-1, 1, 6, self.cfg.width)
                  if self.shared_ada_lin is not None else None)
        mods = [blk.modulation(cond if shared is None else shared) for blk in self.blocks]
        return Conditioning(cond, mods, self.head_norm.modulation(cond))

    def embed(self, cond: torch.Tensor, x_in: torch.Tensor | None, begin: int, end: int) -> torch.Tensor:
        """Hidden input (B, end-begin, C) of positions [begin, end).

        x_in feeds the positions from max(begin, first_len) on: (B, n, in_channels) canvas features (VAR)
        or (B, n) token ids (raster)."""
        parts = []
        if begin == 0:
            first = cond.unsqueeze(1).expand(-1, self.schedule.first_len, -1)
            parts.append(first + self.pos_start.expand(cond.shape[0], -1, -1) if self.adaln else first)
        if x_in is not None and x_in.shape[1] > 0:
            if x_in.is_floating_point():  # canvas features are fp32; the weights may be bf16
                x_in = x_in.to(self.input_proj.weight.dtype)
            parts.append(self.input_proj(x_in))
        h = parts[0] if len(parts) == 1 else torch.cat(parts, dim=1)
        if self.adaln:
            h = h + (self.lvl_embed(self.step_ids[begin:end]) + self.pos_embed[:, begin:end])
        return h

    def logits(self, h: torch.Tensor, cond: Conditioning) -> torch.Tensor:
        """Hidden (B, n, C) -> logits (B, n, V) in fp32."""
        if self.adaln:
            return self.head(self.head_norm(h.float(), cond.head).to(linear_dtype(self.head))).float()
        return self.head(self.head_norm(h)).float()

    # -- entry points -------------------------------------------------------------------------------
    def forward(self, labels: torch.Tensor, x_in: torch.Tensor | None) -> torch.Tensor:
        """Teacher forcing.  labels (B,), x_in for positions first_len..L-1 -> logits (B, L, V)."""
        L = self.schedule.length
        cond = self.condition(labels)
        h = self.embed(cond.class_emb, x_in, 0, L)
        bias = self._mask(h.device)
        rope = None if self.adaln else self.rope
        for i, (blk, mod) in enumerate(zip(self.blocks, cond.blocks)):
            h = blk(h, mod, rope, bias, None, i, 0)
        return self.logits(h, cond)

    def _mask(self, device) -> torch.Tensor:
        """The schedule's (L, L) additive mask, built once per device rather than at every training step."""
        cached = getattr(self, "_mask_cache", None)
        if cached is None or cached.device != torch.device(device):
            cached = self._mask_cache = self.schedule.attn_bias(device=device)
        return cached

    def forward_step(self, s: int, cond: Conditioning, x_in: torch.Tensor | None,
                     cache: KVCache) -> torch.Tensor:
        """Step s.  cond = ``condition(labels)``; x_in (B, n_s, ...) the step's input (None at s=0)
        -> logits (B, n_s, V).  Keys/values of the step are written to ``cache``."""
        begin, end = self.begin_ends[s]
        return self.forward_positions(begin, end, cond, x_in, cache)

    def forward_positions(self, begin: int, end: int, cond: Conditioning, x_in: torch.Tensor | None,
                          cache: KVCache, mask: torch.Tensor | None = None) -> torch.Tensor:
        """Positions [begin, end) against the cache -> logits (B, end-begin, V).  ``mask`` (end-begin, end)
        additive restricts what they see (a causal window of speculative raster drafts); None: all of it."""
        h = self.embed(cond.class_emb, x_in, begin, end)
        rope = None if self.adaln else self.rope[begin:end]
        for i, (blk, mod) in enumerate(zip(self.blocks, cond.blocks)):
            h = blk(h, mod, rope, mask, cache, i, begin)
        return self.logits(h, cond)

    def forward_token(self, pos: torch.Tensor, cond: Conditioning, x_in: torch.Tensor,
                      cache: KVCache) -> torch.Tensor:
        """Raster step at position ``pos`` (0-d int64 tensor, >= 1) with fixed shapes: x_in (B, 1) the previous
        token -> logits (B, 1, V).  The same arithmetic as ``forward_step`` (the masked-out positions add exact
        zeros), but every call has the same shapes, so ``torch.compile`` specialises once instead of once per
        cache length (gpt-fast's static-cache step)."""
        h = self.input_proj(x_in)
        rope = self.rope.index_select(0, pos.view(1))
        keys = torch.arange(self.schedule.length, device=pos.device)
        mask = torch.zeros((), device=pos.device).masked_fill(keys > pos, float("-inf"))[None]  # (1, L)
        for i, (blk, mod) in enumerate(zip(self.blocks, cond.blocks)):
            h = blk(h, mod, rope, mask, cache, i, pos)
        return self.logits(h, cond)

    def new_cache(self, batch: int, dtype=torch.float32, device=None, policy=None) -> KVCache:
        """A full static cache, or the one ``policy`` (``arvision.sampling.kv_policies``) builds."""
        cfg = self.cfg
        device = device or self.class_emb.weight.device
        if policy is not None:
            return policy.new_cache(self, batch, dtype, device)
        cache = KVCache(cfg.depth, batch, cfg.num_heads, self.schedule.length, cfg.head_dim, dtype, device)
        if self.static_steps:  # forward_token reads unwritten positions (masked): they must hold finite values
            cache.k.zero_()
            cache.v.zero_()
        return cache

    # -- initialisation for training from scratch ---------------------------------------------------
    @torch.no_grad()
    def init_weights(self, adaln_gamma: float = 1e-3) -> None:
        """VAR: trunc-normal(sqrt(1/3C)), small head and AdaLN gammas, residual outputs / sqrt(2 depth).
        LlamaGen: normal(0.02), zero output head."""
        C, depth = self.cfg.width, self.cfg.depth
        std = math.sqrt(1 / C / 3) if self.adaln else 0.02
        for m in self.modules():
            if isinstance(m, (nn.Linear, nn.Embedding)):
                if self.adaln:
                    nn.init.trunc_normal_(m.weight, std=std)
                else:
                    nn.init.normal_(m.weight, std=std)
                if getattr(m, "bias", None) is not None:
                    nn.init.zeros_(m.bias)
        if self.adaln:
            for p in (self.pos_start, self.pos_embed):
                nn.init.trunc_normal_(p, std=std)
            self.head.weight.mul_(0.02)
            self.head_norm.ada_lin.weight.mul_(0.5)
            for blk in self.blocks:
                blk.attn.proj.weight.div_(math.sqrt(2 * depth))
                blk.mlp.fc2.weight.div_(math.sqrt(2 * depth))
                if not blk.shared:
                    blk.ada_lin.weight[2 * C:].mul_(0.5)
                    blk.ada_lin.weight[: 2 * C].mul_(adaln_gamma)
        else:
            nn.init.zeros_(self.head.weight)
