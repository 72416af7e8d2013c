"""Transformer blocks: VAR's AdaLN block and LlamaGen's RMSNorm/SwiGLU block, sharing one Attention.

``TransformerConfig.block`` names one of ``BLOCKS``; each block class fills its own config defaults
(``configure``), builds itself from the config (``build``) and says how the condition reaches it
(``shared_modulation``: one projection shared by every block, or None).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from arvision.errors import ArvisionError
from arvision.models.attention import Attention
from arvision.models.text import CrossAttention


def takes_cross(cfg) -> bool:
    """Whether the blocks of TransformerConfig ``cfg`` have a cross-attention sub-layer (text models in the "cross"
    text mode; in the "prefix" mode the text's states go through the blocks' own self-attention instead)."""
    return cfg.condition == "text" and cfg.text_mode == "cross"


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xf = x.float()
        return (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)).type_as(x) * self.weight


class DropPath(nn.Module):
    """Stochastic depth: drop a whole residual branch per sample while training."""

    def __init__(self, p: float):
        super().__init__()
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0:
            return x
        keep = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(1 - self.p)
        return x * keep / (1 - self.p)


class GeluMLP(nn.Module):
    def __init__(self, width: int, hidden: int, dropout: float = 0.0):
        super().__init__()
        self.fc1 = nn.Linear(width, hidden)
        self.fc2 = nn.Linear(hidden, width)
        self.drop = nn.Dropout(dropout) if dropout > 0 else nn.Identity()

    def forward(self, x):
        return self.drop(self.fc2(F.gelu(self.fc1(x), approximate="tanh")))


class SwiGLU(nn.Module):
    def __init__(self, width: int, hidden: int, dropout: float = 0.0):
        super().__init__()
        self.w1 = nn.Linear(width, hidden, bias=False)
        self.w3 = nn.Linear(width, hidden, bias=False)
        self.w2 = nn.Linear(hidden, width, bias=False)
        self.drop = nn.Dropout(dropout) if dropout > 0 else nn.Identity()

    def forward(self, x):
        return self.drop(self.w2(F.silu(self.w1(x)) * self.w3(x)))


class AdaLNBlock(nn.Module):
    """VAR block: x += g1 * attn(LN(x)(1+s1)+b1); x += g2 * mlp(LN(x)(1+s2)+b2).

    The six modulation vectors come from ``ada_lin(silu(cond))`` (B, 6C) in the order g1, g2, s1, s2, b1, b2,
    or, with shared AdaLN, from a per-block ``ada_gss`` (1, 1, 6, C) added to one shared projection.
    """

    default_norm_eps = 1e-6

    @staticmethod
    def configure(cfg) -> None:
        """Fill TransformerConfig defaults this block owns."""

    @classmethod
    def build(cls, cfg, drop_path: float) -> AdaLNBlock:
        return cls(cfg.width, cfg.num_heads, cfg.mlp_ratio, cfg.norm_eps, cfg.shared_adaln, cfg.attn_l2_norm,
                   drop_path, cfg.dropout, cross=takes_cross(cfg))

    @staticmethod
    def shared_modulation(cfg) -> nn.Module | None:
        """VAR's shared AdaLN: one ``Linear(C, 6C)`` of silu(cond) for every block, or None."""
        return nn.Linear(cfg.width, 6 * cfg.width) if cfg.shared_adaln else None

    def __init__(self, width: int, heads: int, mlp_ratio: float, eps: float, shared: bool, l2_norm: bool,
                 drop_path: float = 0.0, dropout: float = 0.0, cross: bool = False):
        super().__init__()
        self.width = width
        # without the l2 norm VAR's attention scales logits by 0.25/sqrt(hd), not 1/sqrt(hd) (its basic_var.py)
        self.attn = Attention(width, heads, qv_bias=True, l2_norm=l2_norm, proj_bias=True, dropout=dropout,
                              scale=None if l2_norm else 0.25 / math.sqrt(width // heads))
        self.mlp = GeluMLP(width, round(width * mlp_ratio), dropout)
        self.eps = eps
        self.shared = shared
        if shared:
            self.ada_gss = nn.Parameter(torch.randn(1, 1, 6, width) / width**0.5)
        else:
            self.ada_lin = nn.Linear(width, 6 * width)
        # text models: x += cross(LN(x), text) between attention and MLP (Infinity's CrossAttnBlock order)
        self.cross_norm = nn.LayerNorm(width, eps=eps) if cross else None
        self.cross = CrossAttention(width, heads) if cross else None
        self.drop_path = DropPath(drop_path)

    def modulation(self, cond: torch.Tensor) -> torch.Tensor:
        """cond: (B, C) class embedding, or (B, 1, 6, C) shared projection -> (B, 1, 6, C)."""
        if self.shared:
            return self.ada_gss + cond
        return self.ada_lin(F.silu(cond)).view(-1, 1, 6, self.width)

    def forward(self, x, mod, rope=None, attn_bias=None, cache=None, layer=0, begin=0, ctx=None):
        """x (B, n, C); mod = ``modulation(cond)`` (B, 1, 6C), computed once per sequence by the caller; ctx: text
        models, the text's keys/values: for the cross-attention (``CrossAttention.context``), or, in the prefix
        mode (no cross sub-layer), the prefix's keys/values of this block's self-attention (``prefix_step``)."""
        g1, g2, s1, s2, b1, b2 = mod.unbind(2)
        ln = F.layer_norm(x, (self.width,), eps=self.eps)
        prefix = ctx if self.cross is None else None
        x = x + self.drop_path(self.attn(ln.mul(s1.add(1)).add_(b1), rope, attn_bias, cache, layer, begin,
                                         prefix).mul_(g1))
        if self.cross is not None:
            x = x + self.drop_path(self.cross(self.cross_norm(x), ctx))
        ln = F.layer_norm(x, (self.width,), eps=self.eps)
        return x + self.drop_path(self.mlp(ln.mul(s2.add(1)).add_(b2)).mul(g2))

    def prefix_step(self, p, mod, bias):
        """Prefix mode: the text prefix p (B, T, C) through this block, seeing only itself (``bias`` (B, 1, 1, T),
        -inf at padding words), modulated by the condition like the image positions -> (its next hidden state,
        (k, v, bias): what the image positions of this block see in front of their own keys)."""
        g1, g2, s1, s2, b1, b2 = mod.unbind(2)
        ln = F.layer_norm(p, (self.width,), eps=self.eps)
        out, kvb = self.attn.prefix_attention(ln.mul(s1.add(1)).add_(b1), bias)
        p = p + self.drop_path(out.mul_(g1))
        ln = F.layer_norm(p, (self.width,), eps=self.eps)
        return p + self.drop_path(self.mlp(ln.mul(s2.add(1)).add_(b2)).mul(g2)), kvb


class LlamaBlock(nn.Module):
    """LlamaGen block: pre-RMSNorm attention and SwiGLU, plain residuals; ``mod`` is unused (None)."""

    default_norm_eps = 1e-5

    @staticmethod
    def configure(cfg) -> None:
        """SwiGLU hidden: the multiple of 256 above 8/3 width (LlamaGen's rule); 2-D RoPE needs head_dim % 4 == 0."""
        if (cfg.width // cfg.num_heads) % 4:
            raise ArvisionError(f"invalid head dim: {cfg.width // cfg.num_heads!r} (a multiple of 4 for 2-D RoPE)")
        if cfg.ffn_hidden is None:
            cfg.ffn_hidden = 256 * math.ceil(int(2 * 4 * cfg.width / 3) / 256)

    @classmethod
    def build(cls, cfg, drop_path: float) -> LlamaBlock:
        return cls(cfg.width, cfg.num_heads, cfg.ffn_hidden, cfg.norm_eps, drop_path, cfg.dropout,
                   cross=takes_cross(cfg))

    @staticmethod
    def shared_modulation(cfg) -> None:
        return None

    def modulation(self, cond: torch.Tensor) -> None:
        return None

    def __init__(self, width: int, heads: int, ffn_hidden: int, eps: float, drop_path: float = 0.0,
                 dropout: float = 0.0, cross: bool = False):
        super().__init__()
        self.attn_norm = RMSNorm(width, eps)
        self.attn = Attention(width, heads, qv_bias=False, l2_norm=False, proj_bias=False, dropout=0.0)
        self.cross_norm = RMSNorm(width, eps) if cross else None
        self.cross = CrossAttention(width, heads) if cross else None
        self.mlp_norm = RMSNorm(width, eps)
        self.mlp = SwiGLU(width, ffn_hidden, dropout)
        self.resid_drop = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.drop_path = DropPath(drop_path)

    def forward(self, x, mod, rope=None, attn_bias=None, cache=None, layer=0, begin=0, ctx=None):
        """ctx: as ``AdaLNBlock.forward``'s (cross-attention context, or the prefix's keys/values)."""
        prefix = ctx if self.cross is None else None
        h = x + self.drop_path(self.resid_drop(self.attn(self.attn_norm(x), rope, attn_bias, cache, layer, begin,
                                                         prefix)))
        if self.cross is not None:
            h = h + self.drop_path(self.cross(self.cross_norm(h), ctx))
        return h + self.drop_path(self.mlp(self.mlp_norm(h)))

    def prefix_step(self, p, mod, bias):
        """As ``AdaLNBlock.prefix_step`` (``mod`` unused); the prefix positions are not rotated (no RoPE)."""
        out, kvb = self.attn.prefix_attention(self.attn_norm(p), bias)
        p = p + self.drop_path(self.resid_drop(out))
        return p + self.drop_path(self.mlp(self.mlp_norm(p))), kvb


BLOCKS = {"adaln": AdaLNBlock, "llama": LlamaBlock}
