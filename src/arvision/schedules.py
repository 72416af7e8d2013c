"""Step schedules: which token positions each AR step produces, and the attention rule between steps.

A schedule lays the whole sequence out as L positions split into consecutive steps.  Position i of the
transformer's sequence is fed the input of its step and predicts output token i.  The attention rule is a
function of step ids only: block-causal lets a position see every position of its own and earlier steps,
which is causal attention for one-token steps (raster) and VAR's level mask for scale maps; block-diagonal lets it
see its own step only (HMAR's Markovian scales: earlier steps reach a step through its input, nothing is cached).

Schedules are built per call by a model's family (``family.schedule(config, ...)``), not baked into the
transformer: FlexVAR samples on scale lists it never trained on and trains on a random list every step.  Two
shapes of schedule exist, and code that needs to know which asks the schedule, not the family's name:

* :class:`ScaleSchedule` -- step s is the whole image as an ``side x side`` map (next-scale prediction);
* :class:`RasterSchedule` -- step s is one cell of the final grid, in raster order (next-token prediction);
* :class:`DiagonalSchedule` -- step s is the anti-diagonal front h + w = s of the final grid (NAR's next-neighbour
  prediction).

Masked models (MaskGIT, ``families/maskgit.py``) use the ``bidirectional`` attention rule: every position sees every
other, and each step re-runs the whole map.

Tokens and trunk positions.  ``length`` / ``begin_ends`` count *tokens* (what step s produces, in schedule order);
``seq_length`` / ``input_spans`` count the trunk's *positions* (what step s feeds).  For the raster and scale
schedules the two coincide: position i is fed the input of its step and predicts token i.  A diagonal schedule's
trunk holds the class token plus every token at its own position, and a step feeds the previous front, which
predicts the next one, so a step's fed and produced counts differ (its head reads neighbours, not positions).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

# block-causal: a position sees its own and every earlier step (VAR, raster); block-diagonal: only its own step
# (HMAR's Markovian scales: earlier steps reach a step through its input alone, so no KV cache is kept);
# bidirectional: every position sees every other (masked models)
ATTENTION_RULES = ("block-causal", "block-diagonal", "bidirectional")


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
    # the trunk's side: positions [begin, end) fed at each step, and the positions of a teacher-forced pass
    input_spans: tuple[tuple[int, int], ...] = field(init=False, repr=False, compare=False)
    seq_length: int = field(init=False, repr=False, compare=False)

    # each step is a map of the whole image at its own resolution (scale-wise): steps can be pictured,
    # compressed by map-aware KV policies, and masks resize onto them
    step_maps = False
    # the tokens of step s are always those at ``begin_ends[s]`` of the final sequence (False: a masked model chooses
    # at run time which positions a step reveals, so a token's step cannot be read back from its position)
    fixed_positions = True

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
        object.__setattr__(self, "input_spans", self.fed_spans())
        object.__setattr__(self, "seq_length", self.sequence_length())

    def fed_spans(self) -> tuple[tuple[int, int], ...]:
        """The trunk positions fed at each step (default: the positions of the tokens it produces)."""
        return self.begin_ends

    def sequence_length(self) -> int:
        """The trunk positions of a teacher-forced pass (default: one per token)."""
        return self.length

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
        begin, end = self.input_spans[0]
        return end - begin

    @property
    def max_step_size(self) -> int:
        return max(self.step_sizes)

    def step_ids(self, device=None) -> torch.Tensor:
        """(L,) int64: the step of every position."""
        sizes = torch.tensor(self.step_sizes, device=device)
        return torch.repeat_interleave(torch.arange(self.num_steps, device=device), sizes)

    @property
    def sees_earlier_steps(self) -> bool:
        """Whether a step attends to keys that earlier steps wrote (False: nothing to cache — block-diagonal steps see
        only themselves, and a bidirectional step re-feeds the whole map it attends to)."""
        return self.attention == "block-causal"

    def visible(self, device=None) -> torch.Tensor:
        """(L, L) bool, [q, k] True where query position q may attend to key position k (the attention rule;
        every pair under the bidirectional rule)."""
        if self.attention == "bidirectional":
            return torch.ones(self.length, self.length, dtype=torch.bool, device=device)
        ids = self.step_ids(device)
        if not self.sees_earlier_steps:
            return ids[None, :] == ids[:, None]
        return ids[None, :] <= ids[:, None]

    def attn_bias(self, dtype=torch.float32, device=None) -> torch.Tensor:
        """(L, L) additive mask: 0 where visible, -inf elsewhere."""
        return _additive(self.visible(device), dtype, device)

    def position_bias(self, dtype=torch.float32, device=None) -> torch.Tensor:
        """(seq_length, seq_length) additive mask of the trunk (``visible_positions``)."""
        return _additive(self.visible_positions(device), dtype, device)

    def visible_positions(self, device=None) -> torch.Tensor:
        """(seq_length, seq_length) bool: the trunk's attention rule (default: ``visible``, one position per token)."""
        return self.visible(device)

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


def _additive(visible: torch.Tensor, dtype, device) -> torch.Tensor:
    zero = torch.zeros((), dtype=dtype, device=device)
    return torch.where(visible, zero, torch.tensor(float("-inf"), dtype=dtype, device=device))


@dataclass(frozen=True)
class ScaleSchedule(Schedule):
    """Next-scale prediction: step s is the whole image as a ``sides[s] x sides[s]`` map."""

    step_maps = True

    @classmethod
    def from_sides(cls, sides, attention: str = "block-causal") -> ScaleSchedule:
        pn = tuple(int(p) for p in sides)
        return cls(tuple((p, p) for p in pn), (pn[-1], pn[-1]), attention)

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

    @property
    def order(self) -> tuple[int, ...]:
        """The raster index (on the final grid) of every token, in schedule order."""
        return tuple(range(self.length))

    def to_raster(self, tokens: torch.Tensor) -> torch.Tensor:
        """(B, L) in schedule order -> (B, L) in raster order of the final grid."""
        return tokens

    def from_raster(self, tokens: torch.Tensor) -> torch.Tensor:
        """(B, L) in raster order -> (B, L) in schedule order."""
        return tokens

    def describe(self) -> str:
        return f"{self.num_steps} raster steps ({self.image_grid[0]}x{self.image_grid[1]} tokens)"

    def named_tokens(self, tokens: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"tokens": self.to_raster(tokens).contiguous()}

    def grid_to_positions(self, grid: torch.Tensor) -> torch.Tensor:
        return self.from_raster(grid.reshape(grid.shape[0], -1).float())


@dataclass(frozen=True)
class DiagonalSchedule(RasterSchedule):
    """Next-neighbour prediction (NAR): step c produces the anti-diagonal front h + w = c of the final grid, its
    tokens by ascending row, so a G x G grid takes 2G - 1 steps.  Tokens travel in this front order (``order``
    gives their raster indices).

    The trunk: position 0 is the class token and position 1 + k holds the k-th token (the last front is never
    fed while sampling); step 0 feeds the class token and step c >= 1 feeds front c - 1, whose neighbours are front
    c.  A position sees the class token and every position of its own and earlier fronts; the class token sees
    only itself (block-causal over [class], front 0, front 1, ...).  Token (h, w) is predicted by the right-head
    of its left neighbour (h, w - 1) and the down-head of its upper neighbour (h - 1, w), averaged where both exist;
    token (0, 0) by both heads at the class position (``neighbours``)."""

    @classmethod
    def of_grid(cls, h: int, w: int | None = None) -> DiagonalSchedule:
        w = h if w is None else w
        sizes = [sum(1 for r in range(h) if 0 <= c - r < w) for c in range(h + w - 1)]
        return cls(tuple((1, n) for n in sizes), (h, w))

    @property
    def cells(self) -> tuple[tuple[int, int], ...]:
        """(row, column) of every token, in schedule order."""
        h, w = self.image_grid
        return tuple((r, c - r) for c in range(h + w - 1) for r in range(h) if 0 <= c - r < w)

    @property
    def order(self) -> tuple[int, ...]:
        return tuple(r * self.image_grid[1] + c for r, c in self.cells)

    def to_raster(self, tokens: torch.Tensor) -> torch.Tensor:
        out = torch.empty_like(tokens)
        out[:, torch.tensor(self.order, device=tokens.device)] = tokens
        return out

    def from_raster(self, tokens: torch.Tensor) -> torch.Tensor:
        return tokens[:, torch.tensor(self.order, device=tokens.device)]

    def fed_spans(self) -> tuple[tuple[int, int], ...]:
        # step 0 feeds the class token; step c feeds front c - 1, which sits one position after its tokens
        return ((0, 1),) + tuple((1 + b, 1 + e) for b, e in self.begin_ends[:-1])

    def sequence_length(self) -> int:
        return 1 + self.length

    def visible_positions(self, device=None) -> torch.Tensor:
        ids = torch.cat([torch.zeros(1, dtype=torch.long, device=device), 1 + self.step_ids(device)])
        return ids[None, :] <= ids[:, None]

    def neighbours(self, begin: int, end: int) -> tuple[list[int], list[int]]:
        """The tokens that trunk positions [begin, end) predict -> (right, down): for each, the index (relative to
        ``begin``) of the position whose right-head predicts it, and of the one whose down-head does; -1 where that
        neighbour does not exist.  A step's positions predict the next front; the whole sequence (0, seq_length)
        predicts every token."""
        cells = self.cells
        index = {cell: 1 + k for k, cell in enumerate(cells)}
        if (begin, end) == (0, self.seq_length):
            targets = range(self.length)
        else:
            s = self.input_spans.index((begin, end))
            targets = range(*self.begin_ends[s])
        right, down = [], []
        for k in targets:
            r, c = cells[k]
            if (r, c) == (0, 0):
                right.append(0 - begin)
                down.append(0 - begin)
                continue
            right.append(index[(r, c - 1)] - begin if c > 0 else -1)
            down.append(index[(r - 1, c)] - begin if r > 0 else -1)
        return right, down

    def describe(self) -> str:
        return f"{self.num_steps} diagonal fronts ({self.image_grid[0]}x{self.image_grid[1]} tokens)"
