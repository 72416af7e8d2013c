"""Step schedules: which token positions each AR step produces, and the attention rule between steps.

A schedule lays the whole sequence out as L positions split into consecutive steps.  Position i of the
transformer's sequence is fed the input of its step and predicts output token i.  The attention rule is a
function of step ids only: block-causal lets a position see every position of its own and earlier steps,
which is causal attention for one-token steps (raster) and VAR's level mask for scale maps.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import torch


@dataclass(frozen=True)
class Schedule:
    """``step_grids[s]`` = (h, w) of the tokens produced at step s (their count is h*w)."""

    kind: str  # "scales" (VAR next-scale) or "raster" (next-token)
    step_grids: tuple[tuple[int, int], ...]
    image_grid: tuple[int, int]  # the final token grid

    @staticmethod
    def scales(patch_nums) -> Schedule:
        pn = tuple(int(p) for p in patch_nums)
        return Schedule("scales", tuple((p, p) for p in pn), (pn[-1], pn[-1]))

    @staticmethod
    def raster(h: int, w: int | None = None) -> Schedule:
        w = h if w is None else w
        return Schedule("raster", ((1, 1),) * (h * w), (h, w))

    @property
    def num_steps(self) -> int:
        return len(self.step_grids)

    @cached_property
    def step_sizes(self) -> tuple[int, ...]:
        return tuple(h * w for h, w in self.step_grids)

    @cached_property
    def begin_ends(self) -> tuple[tuple[int, int], ...]:
        out, b = [], 0
        for n in self.step_sizes:
            out.append((b, b + n))
            b += n
        return tuple(out)

    @property
    def length(self) -> int:
        return sum(self.step_sizes)

    @property
    def first_len(self) -> int:
        """Positions fed by the conditioning (class) input rather than by earlier tokens."""
        return self.step_sizes[0]

    def step_ids(self, device=None) -> torch.Tensor:
        """(L,) int64: the step of every position."""
        sizes = torch.tensor(self.step_sizes, device=device)
        return torch.repeat_interleave(torch.arange(self.num_steps, device=device), sizes)

    def visible(self, device=None) -> torch.Tensor:
        """(L, L) bool, [q, k] True where query position q may attend to key position k (block-causal)."""
        ids = self.step_ids(device)
        return ids[None, :] <= ids[:, None]

    def attn_bias(self, dtype=torch.float32, device=None) -> torch.Tensor:
        """(L, L) additive mask: 0 where visible, -inf elsewhere."""
        zero = torch.zeros((), dtype=dtype, device=device)
        return torch.where(self.visible(device), zero, torch.tensor(float("-inf"), dtype=dtype, device=device))
