"""Step schedules: which token positions each AR step produces, and the attention rule between steps.

A schedule lays the whole sequence out as L positions split into consecutive steps.  Position i of the
transformer's sequence is fed the input of its step and predicts output token i.  The attention rule is a
function of step ids only: block-causal lets a position see every position of its own and earlier steps,
which is causal attention for one-token steps (raster) and VAR's level mask for scale maps.

Schedules are built per call by a model's family (``family.schedule(config, ...)``), not baked into the
transformer: FlexVAR samples on scale lists it never trained on and trains on a random list every step.  Two
shapes of schedule exist, and code that needs to know which asks the schedule, not the family's name:

* :class:`ScaleSchedule` -- step s is the whole image as an ``side x side`` map (next-scale prediction);
* :class:`RasterSchedule` -- step s is one cell of the final grid, in raster order (next-token prediction).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

ATTENTION_RULES = ("block-causal",)


@dataclass(frozen=True)
class Schedule:
    """``step_grids[s]`` = (h, w) of the tokens produced at step s (their count is h*w).

    The derived tuples (``step_sizes``, ``begin_ends``, ``length``) are computed once at construction: a plain
    attribute read is what ``torch.compile`` traces cheaply (a cached property takes a lock it cannot trace).
    """

    step_grids: tuple[tuple[int, int], ...]
    image_grid: tuple[int, int]  # the final token grid
    attention: str = "block-causal"
    step_sizes: tuple[int, ...] = field(init=False, repr=False, compare=False)
    begin_ends: tuple[tuple[int, int], ...] = field(init=False, repr=False, compare=False)
    length: int = field(init=False, repr=False, compare=False)

    # each step is a map of the whole image at its own resolution (scale-wise): steps can be pictured,
    # compressed by map-aware KV policies, and masks resize onto them
    step_maps = False

    def __post_init__(self):
        if self.attention not in ATTENTION_RULES:
            raise ValueError(f"unknown attention rule {self.attention!r}; known: {ATTENTION_RULES}")
        sizes = tuple(h * w for h, w in self.step_grids)
        ends, b = [], 0
        for n in sizes:
            ends.append((b, b + n))
            b += n
        object.__setattr__(self, "step_sizes", sizes)
        object.__setattr__(self, "begin_ends", tuple(ends))
        object.__setattr__(self, "length", b)

    @staticmethod
    def scales(patch_nums) -> ScaleSchedule:
        return ScaleSchedule.from_sides(patch_nums)

    @staticmethod
    def raster(h: int, w: int | None = None) -> RasterSchedule:
        return RasterSchedule.of_grid(h, w)

    @property
    def num_steps(self) -> int:
        return len(self.step_grids)

    @property
    def first_len(self) -> int:
        """Positions fed by the conditioning (class) input rather than by earlier tokens."""
        return self.step_sizes[0]

    @property
    def max_step_size(self) -> int:
        return max(self.step_sizes)

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

    def split(self, tokens: torch.Tensor) -> list[torch.Tensor]:
        """(B, L) -> per-step list of (B, n_s)."""
        return list(tokens.split(self.step_sizes, dim=1))

    # -- what differs between the shapes of schedule ---------------------------------------------------
    def describe(self) -> str:
        raise NotImplementedError

    def named_tokens(self, tokens: torch.Tensor) -> dict[str, torch.Tensor]:
        """(B, L) tokens -> the tensors ``--save-tokens`` writes."""
        raise NotImplementedError

    def grid_to_positions(self, grid: torch.Tensor) -> torch.Tensor:
        """A map over the final token grid (B, h, w) float -> its value at every position (B, L), schedule order."""
        raise NotImplementedError


@dataclass(frozen=True)
class ScaleSchedule(Schedule):
    """Next-scale prediction: step s is the whole image as a ``sides[s] x sides[s]`` map."""

    step_maps = True

    @classmethod
    def from_sides(cls, sides) -> ScaleSchedule:
        pn = tuple(int(p) for p in sides)
        return cls(tuple((p, p) for p in pn), (pn[-1], pn[-1]))

    @property
    def sides(self) -> tuple[int, ...]:
        return tuple(h for h, _ in self.step_grids)

    def describe(self) -> str:
        return f"{self.num_steps} scales {','.join(map(str, self.sides))}"

    def named_tokens(self, tokens: torch.Tensor) -> dict[str, torch.Tensor]:
        return {f"step.{s}": t.contiguous() for s, t in enumerate(self.split(tokens))}

    def grid_to_positions(self, grid: torch.Tensor) -> torch.Tensor:
        """Each step's map takes the grid resized to its side (bilinear, ``align_corners=False``)."""
        maps = [F.interpolate(grid[:, None].float(), size=(h, w), mode="bilinear", align_corners=False)
                .reshape(grid.shape[0], h * w) for h, w in self.step_grids]
        return torch.cat(maps, dim=1)


@dataclass(frozen=True)
class RasterSchedule(Schedule):
    """Next-token prediction: step s is cell s of the final grid, in raster order."""

    @classmethod
    def of_grid(cls, h: int, w: int | None = None) -> RasterSchedule:
        w = h if w is None else w
        return cls(((1, 1),) * (h * w), (h, w))

    def describe(self) -> str:
        return f"{self.num_steps} raster steps ({self.image_grid[0]}x{self.image_grid[1]} tokens)"

    def named_tokens(self, tokens: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"tokens": tokens.contiguous()}

    def grid_to_positions(self, grid: torch.Tensor) -> torch.Tensor:
        return grid.reshape(grid.shape[0], -1).float()
