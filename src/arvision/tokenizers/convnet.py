"""The taming/LDM convolutional encoder and decoder that VAR's and LlamaGen's tokenizers share.

One parameterised network for both families.  The only architectural difference between the released
tokenizers is how the spatial self-attention projects q, k, v: VAR uses one fused 1x1 conv (``qkv``),
LlamaGen three (``q``, ``k``, ``v``); ``attn_style`` selects it.  Module names follow VAR's layout
(``down.{i}.block.{j}``, ``up.{i}``, ``mid.block_1``...); LlamaGen's key map renames onto it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def group_norm(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(num_groups=32, num_channels=channels, eps=1e-6, affine=True)


class ResnetBlock(nn.Module):
    def __init__(self, in_ch: int, out_ch: int, dropout: float = 0.0):
        super().__init__()
        self.norm1 = group_norm(in_ch)
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, 1, 1)
        self.norm2 = group_norm(out_ch)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, 1, 1)
        self.nin_shortcut = nn.Conv2d(in_ch, out_ch, 1) if in_ch != out_ch else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(self.dropout(F.silu(self.norm2(h))))
        return self.nin_shortcut(x) + h


class AttnBlock(nn.Module):
    """Single-head self-attention over the H*W positions of a feature map, residual."""

    def __init__(self, ch: int, style: str = "fused"):
        super().__init__()
        self.norm = group_norm(ch)
        self.style = style
        if style == "fused":
            self.qkv = nn.Conv2d(ch, 3 * ch, 1)
        else:
            self.q = nn.Conv2d(ch, ch, 1)
            self.k = nn.Conv2d(ch, ch, 1)
            self.v = nn.Conv2d(ch, ch, 1)
        self.proj_out = nn.Conv2d(ch, ch, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, C, H, W = x.shape
        h = self.norm(x)
        if self.style == "fused":
            q, k, v = self.qkv(h).reshape(B, 3, C, H * W).unbind(1)
        else:
            q, k, v = (m(h).reshape(B, C, H * W) for m in (self.q, self.k, self.v))
        w = torch.bmm(q.transpose(1, 2), k).mul_(C**-0.5).softmax(dim=2)  # (B, HW_q, HW_k)
        out = torch.bmm(v, w.transpose(1, 2)).reshape(B, C, H, W)
        return x + self.proj_out(out)


class Downsample(nn.Module):
    def __init__(self, ch: int):
        super().__init__()
        self.conv = nn.Conv2d(ch, ch, 3, 2, 0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.pad(x, (0, 1, 0, 1)))  # asymmetric pad, as both released tokenizers do


class Upsample(nn.Module):
    def __init__(self, ch: int):
        super().__init__()
        self.conv = nn.Conv2d(ch, ch, 3, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x.float(), scale_factor=2.0, mode="nearest").to(x.dtype))


class _Level(nn.Module):
    """One resolution level: res blocks, optional attention after each, optional resampling."""

    def __init__(self, blocks, attns, resample_name: str | None, resample: nn.Module | None):
        super().__init__()
        self.block = nn.ModuleList(blocks)
        self.attn = nn.ModuleList(attns)
        if resample_name is not None:
            self.add_module(resample_name, resample)

    def run_blocks(self, h: torch.Tensor) -> torch.Tensor:
        for i, blk in enumerate(self.block):
            h = blk(h)
            if len(self.attn):
                h = self.attn[i](h)
        return h


class _Mid(nn.Module):
    def __init__(self, ch: int, dropout: float, attn: bool, style: str):
        super().__init__()
        self.block_1 = ResnetBlock(ch, ch, dropout)
        self.attn_1 = AttnBlock(ch, style) if attn else nn.Identity()
        self.block_2 = ResnetBlock(ch, ch, dropout)

    def forward(self, h):
        return self.block_2(self.attn_1(self.block_1(h)))


class Encoder(nn.Module):
    """Image (B, 3, H, W) in [-1, 1] -> features (B, z_channels, H/f, W/f), f = 2**(len(ch_mult)-1)."""

    def __init__(self, ch: int, ch_mult: tuple[int, ...], num_res_blocks: int, z_channels: int,
                 dropout: float = 0.0, attn_style: str = "fused", in_channels: int = 3):
        super().__init__()
        n = len(ch_mult)
        self.conv_in = nn.Conv2d(in_channels, ch, 3, 1, 1)
        in_mult = (1,) + tuple(ch_mult)
        self.down = nn.ModuleList()
        block_in = ch
        for lvl in range(n):
            block_in, out = ch * in_mult[lvl], ch * ch_mult[lvl]
            blocks, attns = [], []
            for _ in range(num_res_blocks):
                blocks.append(ResnetBlock(block_in, out, dropout))
                block_in = out
                if lvl == n - 1:  # attention only at the lowest resolution
                    attns.append(AttnBlock(block_in, attn_style))
            last = lvl == n - 1
            self.down.append(_Level(blocks, attns, None if last else "downsample",
                                    None if last else Downsample(block_in)))
        self.mid = _Mid(block_in, dropout, True, attn_style)
        self.norm_out = group_norm(block_in)
        self.conv_out = nn.Conv2d(block_in, z_channels, 3, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv_in(x)
        for level in self.down:
            h = level.run_blocks(h)
            if hasattr(level, "downsample"):
                h = level.downsample(h)
        h = self.mid(h)
        return self.conv_out(F.silu(self.norm_out(h)))


class Decoder(nn.Module):
    """Features (B, z_channels, h, w) -> image (B, 3, h*f, w*f), not clamped."""

    def __init__(self, ch: int, ch_mult: tuple[int, ...], num_res_blocks: int, z_channels: int,
                 dropout: float = 0.0, attn_style: str = "fused", out_channels: int = 3):
        super().__init__()
        n = len(ch_mult)
        block_in = ch * ch_mult[-1]
        self.conv_in = nn.Conv2d(z_channels, block_in, 3, 1, 1)
        self.mid = _Mid(block_in, dropout, True, attn_style)
        levels: list[_Level] = []
        for lvl in reversed(range(n)):
            out = ch * ch_mult[lvl]
            blocks, attns = [], []
            for _ in range(num_res_blocks + 1):
                blocks.append(ResnetBlock(block_in, out, dropout))
                block_in = out
                if lvl == n - 1:
                    attns.append(AttnBlock(block_in, attn_style))
            levels.insert(0, _Level(blocks, attns, "upsample" if lvl else None,
                                    Upsample(block_in) if lvl else None))
        self.up = nn.ModuleList(levels)  # up[i] works at resolution level i, run from n-1 down to 0
        self.norm_out = group_norm(block_in)
        self.conv_out = nn.Conv2d(block_in, out_channels, 3, 1, 1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = self.mid(self.conv_in(z))
        for level in reversed(self.up):
            h = level.run_blocks(h)
            if hasattr(level, "upsample"):
                h = level.upsample(h)
        return self.conv_out(F.silu(self.norm_out(h)))
