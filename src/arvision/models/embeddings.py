"""Input embedders: how the trunk turns a step's input (and its position) into hidden states.

An embedder has two entry points:

``layout(schedule)``  what a schedule means to the trunk, built once per call (:class:`Layout`): an additive
                      position embedding of every position (VAR, FlexVAR) or a rotary table (LlamaGen);
``forward(cond, x_in, begin, end, layout)``  hidden inputs (B, end-begin, C) of positions [begin, end): the
                      first step is fed the condition embedding (plus ``pos_start`` for scale models), later
                      steps the input builder's output through ``input_proj``.

Which embedder a model has is its family's choice (``family.embedder(config)``):

* :class:`LevelPositionEmbedder` (VAR): learned per-position table of the trained schedule + a level embedding;
* :class:`GridPositionEmbedder` (FlexVAR): a learned 2-D grid, area-resized to each step's map, so any scale
  list has positions;
* :class:`TokenEmbedder` (LlamaGen, NAR): token ids, positions as 2-D RoPE inside attention (each token at the
  angles of its grid cell, in whatever order the schedule feeds them).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from arvision.errors import ArvisionError
from arvision.models.attention import rope_2d_table
from arvision.schedules import Schedule


@dataclass(frozen=True)
class Layout:
    """One schedule as the trunk sees it.  pos: (1, L, C) added to the inputs, or None; rope: (L, hd/2, 2)
    rotary angles (fp32), or None."""

    schedule: Schedule
    pos: torch.Tensor | None = None
    rope: torch.Tensor | None = None


class ScaleInputEmbedder(nn.Module):
    """Continuous step inputs (canvas features, code maps) projected to the width; the first step is the
    condition + ``pos_start``; positions added from ``layout.pos``."""

    def __init__(self, in_channels: int, width: int, first_len: int):
        super().__init__()
        self.width = width
        self.input_proj = nn.Linear(in_channels, width)
        self.pos_start = nn.Parameter(torch.zeros(1, first_len, width))

    def forward(self, cond: torch.Tensor, x_in: torch.Tensor | None, begin: int, end: int,
                layout: Layout) -> torch.Tensor:
        """cond (B, C); x_in (B, n, in_channels) feeds positions max(begin, first_len)..end-1."""
        parts = []
        if begin == 0:
            first = cond.unsqueeze(1).expand(-1, self.pos_start.shape[1], -1)
            parts.append(first + self.pos_start.expand(cond.shape[0], -1, -1))
        if x_in is not None and x_in.shape[1] > 0:
            # canvas features are fp32; the weights may be bf16
            parts.append(self.input_proj(x_in.to(self.input_proj.weight.dtype)))
        h = parts[0] if len(parts) == 1 else torch.cat(parts, dim=1)
        return h + layout.pos[:, begin:end]


class LevelPositionEmbedder(ScaleInputEmbedder):
    """VAR: ``pos_embed`` (1, L, C), one learned vector per position of the trained schedule, plus
    ``lvl_embed`` of each position's step.  Only the trained schedule has positions."""

    def __init__(self, in_channels: int, width: int, schedule: Schedule):
        super().__init__(in_channels, width, schedule.first_len)
        self.trained = schedule
        self.pos_embed = nn.Parameter(torch.zeros(1, schedule.length, width))
        self.lvl_embed = nn.Embedding(schedule.num_steps, width)

    def layout(self, schedule: Schedule) -> Layout:
        if schedule.step_grids != self.trained.step_grids:
            raise ArvisionError(f"this model has learned positions for its trained schedule only "
                                f"({self.trained.describe()}), not {schedule.describe()}")
        ids = schedule.step_ids(self.pos_embed.device)
        return Layout(schedule, pos=self.lvl_embed(ids)[None] + self.pos_embed)

    def reset_parameters(self, std: float) -> None:
        for p in (self.pos_start, self.pos_embed):
            nn.init.trunc_normal_(p, std=std)


class GridPositionEmbedder(ScaleInputEmbedder):
    """FlexVAR: ``pos_grid`` (1, C, G, G), a learned 2-D grid area-resized to each step's map (adaptive average
    pooling, as ``F.interpolate(mode="area")``) and flattened row-major.  No level embedding: any scale list whose
    first step has ``first_len`` tokens has positions."""

    def __init__(self, in_channels: int, width: int, grid: int, first_len: int = 1):
        super().__init__(in_channels, width, first_len)
        self.pos_grid = nn.Parameter(torch.zeros(1, width, grid, grid))

    def layout(self, schedule: Schedule) -> Layout:
        if schedule.first_len != self.pos_start.shape[1]:
            raise ArvisionError(f"the first step must have {self.pos_start.shape[1]} token(s) "
                                f"(got a {schedule.step_grids[0][0]}x{schedule.step_grids[0][1]} map)")
        C = self.pos_grid.shape[1]
        maps = [F.interpolate(self.pos_grid, size=(h, w), mode="area").reshape(1, C, h * w)
                for h, w in schedule.step_grids]
        return Layout(schedule, pos=torch.cat(maps, dim=2).transpose(1, 2))

    def reset_parameters(self, std: float) -> None:
        nn.init.trunc_normal_(self.pos_start, std=std)
        with torch.no_grad():
            self.pos_grid.copy_(sinusoid_grid(self.pos_grid.shape[2], self.pos_grid.shape[1]))


def sinusoid_grid(side: int, dim: int) -> torch.Tensor:
    """FlexVAR's initial position grid (1, dim, side, side): even channels sin(row * f_i), odd channels
    cos(col * f_i), f_i = 10000^(-2i/dim)."""
    freqs = torch.exp(torch.arange(0, dim, 2, dtype=torch.float32) * -(math.log(10000.0) / dim))
    coords = torch.arange(side, dtype=torch.float32)
    grid = torch.zeros(side, side, dim)
    grid[:, :, 0::2] = torch.sin(coords[:, None, None] * freqs)  # row
    grid[:, :, 1::2] = torch.cos(coords[None, :, None] * freqs)  # column
    return grid.permute(2, 0, 1)[None]


class TokenEmbedder(nn.Module):
    """LlamaGen: token ids through ``input_proj`` (an embedding table); the class embedding is the prefix token;
    positions are 2-D rotary angles of the final grid (``layout.rope``), the prefix at angle zero."""

    def __init__(self, vocab_size: int, width: int, head_dim: int, rope_base: float):
        super().__init__()
        self.input_proj = nn.Embedding(vocab_size, width)
        self.head_dim, self.rope_base = head_dim, rope_base

    def layout(self, schedule: Schedule) -> Layout:
        # Rotary angles of the trunk's positions [cls, cell of token 0, cell of token 1, ...]: position first_len + k
        # is fed token k of the schedule order (raster: the shifted input, so the last token is never fed; NAR's
        # diagonal order: every token), at the angles of its grid cell; the class positions at angle zero.
        n = schedule.first_len
        table = rope_2d_table(schedule.image_grid, self.head_dim, self.rope_base, 0)
        cells = torch.tensor(schedule.order[:schedule.seq_length - n], dtype=torch.long)
        rope = torch.cat([torch.zeros(n, *table.shape[1:]), table[cells]])
        return Layout(schedule, rope=rope.to(self.input_proj.weight.device).contiguous())

    def forward(self, cond: torch.Tensor, x_in: torch.Tensor | None, begin: int, end: int,
                layout: Layout) -> torch.Tensor:
        """cond (B, C); x_in (B, n) token ids feeding positions max(begin, first_len)..end-1."""
        parts = []
        if begin == 0:
            parts.append(cond.unsqueeze(1).expand(-1, layout.schedule.first_len, -1))
        if x_in is not None and x_in.shape[1] > 0:
            parts.append(self.input_proj(x_in))
        return parts[0] if len(parts) == 1 else torch.cat(parts, dim=1)
