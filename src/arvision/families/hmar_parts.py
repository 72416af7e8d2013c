"""HMAR's model parts (``families/hmar.py`` is the family): the masked-input embedder, the two-route head whose token
choice runs the masked sub-steps, the canvas that builds masked inputs, and the ``mask_steps`` sampling option.

The masked sub-steps of scale s (the official ``HMAR.generate`` with ``mask=True``; ``counts`` = its
``mask_schedule[s]`` = [n0, n1, ..., n_{m-1}], n0 unused):

1. the scale's next-scale draw; confidence = the probability of the drawn id under the filtered guided logits;
   M = the sum(counts[1:]) least confident positions (``argsort`` ascending);
2. for k = 1 .. m-1: the input is word_embed(area(f_hat, p_s)) + R + bias + positions, R = word_embed of the current
   ids' canvas term area(phi(bicubic(codes -> p_last)) -> p_s) with the rows of M replaced by ``mask_embed``; it runs
   through the masked route; guidance t = cfg * 1e-6 (the official constant); the same filters and one multinomial
   call over every row; only the rows of M take the draw;
3. if k < m-1: M keeps its sum(counts[k+1:]) least confident positions, the confidence now under this sub-step's
   filtered logits at the current ids.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from arvision.errors import ArvisionError
from arvision.inputs import ResidualCanvas
from arvision.models.embeddings import Layout, LevelPositionEmbedder
from arvision.models.heads import AdaLNHeadNorm, CategoricalHead
from arvision.sampling.processors import TokenSampling

SUBSTEP_GUIDANCE = 1e-6  # the official sub-steps' guidance ratio, hard-coded there: t = cfg * 1e-6


class MaskedInput(NamedTuple):
    """The input of the masked route for some positions: canvas (B, n, D) = area(f_hat) of the scale's side (the
    next-scale input), codes (B, n, D) = the scale's own canvas term, masked (B, n) bool = rows fed ``mask_embed``
    instead of their codes."""

    canvas: torch.Tensor
    codes: torch.Tensor
    masked: torch.Tensor

    def doubled(self) -> MaskedInput:
        """The same input for the conditional and the unconditional half of a guided batch."""
        return MaskedInput(*(torch.cat([t, t]) for t in self))


class HMAREmbedder(LevelPositionEmbedder):
    """VAR's per-position and per-level embedding; the input projection's bias is added after the projection (the
    official ``word_embed`` has none, ``word_embed_bias`` apart), and a :class:`MaskedInput` feeds
    word_embed(canvas) + word_embed(codes, masked rows = ``mask_embed``) + bias, summed in the official order."""

    def __init__(self, in_channels: int, width: int, schedule):
        super().__init__(in_channels, width, schedule)
        self.mask_embed = nn.Embedding(1, width)

    def forward(self, cond: torch.Tensor, x_in, begin: int, end: int, layout: Layout) -> torch.Tensor:
        """cond (B, C); x_in (B, n, D) canvas features or a :class:`MaskedInput`, feeding positions
        max(begin, first_len)..end-1 -> (B, end-begin, C)."""
        parts = []
        if begin == 0:
            first = cond.unsqueeze(1).expand(-1, self.pos_start.shape[1], -1)
            parts.append(first + self.pos_start.expand(cond.shape[0], -1, -1))
        masked_input = isinstance(x_in, MaskedInput)
        if x_in is not None and (x_in.canvas if masked_input else x_in).shape[1] > 0:
            weight, bias = self.input_proj.weight, self.input_proj.bias
            if masked_input:
                codes = F.linear(x_in.codes.to(weight.dtype), weight)
                codes = torch.where(x_in.masked[..., None], self.mask_embed.weight.to(codes.dtype), codes)
                parts.append(F.linear(x_in.canvas.to(weight.dtype), weight) + codes + bias)
            else:
                parts.append(F.linear(x_in.to(weight.dtype), weight) + bias)
        h = parts[0] if len(parts) == 1 else torch.cat(parts, dim=1)
        return h + layout.pos[:, begin:end]


class HMARCanvas(ResidualCanvas):
    """VAR's residual canvas, plus the masked route's inputs."""

    def code_term(self, s: int, ids: torch.Tensor) -> torch.Tensor:
        """Step s's ids (B, n_s) -> their canvas term at step s's side, (B, n_s, D): phi_s(bicubic(codes -> p_last)),
        area-resized back.  The official masked input resizes with bicubic even at the last scale (an identity)."""
        pn, p = self.schedule.step_grids[s][0], self.schedule.sides[-1]
        h = self.tok.quantize.lookup(ids).transpose(1, 2).reshape(ids.shape[0], -1, pn, pn)
        term = self.tok.quantize.quant_resi(s, F.interpolate(h, size=(p, p), mode="bicubic"))
        term = F.interpolate(term, size=(pn, pn), mode="area")
        return term.flatten(2).transpose(1, 2)

    def masked_input(self, state: torch.Tensor, s: int, ids: torch.Tensor, masked: torch.Tensor) -> MaskedInput:
        """The canvas before step s (B, D, p, p), step s's current ids (B, n_s) and the rows to mask (B, n_s) bool ->
        the masked route's input of step s."""
        pn = self.schedule.step_grids[s][0]
        canvas = F.interpolate(state, size=(pn, pn), mode="area").flatten(2).transpose(1, 2)
        return MaskedInput(canvas, self.code_term(s, ids), masked)

    def teacher_masked(self, tokens: torch.Tensor, masked: torch.Tensor) -> MaskedInput:
        """(B, L) ids and (B, L - n_0) bool rows to mask -> the masked route's teacher-forcing input of steps 1..S-1:
        each step's canvas of the earlier steps and its own tokens' canvas term."""
        per_step = self.split(tokens)
        codes = torch.cat([self.code_term(s, ids) for s, ids in enumerate(per_step) if s > 0], dim=1)
        return MaskedInput(self.teacher(tokens), codes, masked)

    def masked_training_inputs(self, tokens: torch.Tensor,
                               generator: torch.Generator | None = None) -> tuple[MaskedInput, torch.Tensor]:
        """The masked stage's inputs (the official ``idxBl_to_mask_input`` with ``p_mask`` ~ U(0, 1) per step):
        tokens (B, L) -> (the masked route's input, loss weights (B, L)).  Every step after the first masks
        ceil(p * n_s) of its n_s positions (at least one), drawn uniformly and the same for the whole batch, as
        the official trainer does; the weights are 1 at the masked positions and 0 elsewhere (its
        "mask_unweighted" loss: the plain mean over masked positions)."""
        p = torch.rand((), generator=generator).item()
        first = self.schedule.step_sizes[0]
        masked = torch.zeros(self.schedule.length, dtype=torch.bool)
        begin = first
        for n in self.schedule.step_sizes[1:]:
            k = min(n, max(1, math.ceil(n * p)))
            masked[begin + torch.randperm(n, generator=generator)[:k]] = True
            begin += n
        masked = masked.to(tokens.device).expand(tokens.shape[0], -1)
        return self.teacher_masked(tokens, masked[:, first:]), masked.to(torch.float32)


class HMARHead(CategoricalHead):
    """Two AdaLN heads: ``norm``/``proj`` after the next-scale route, ``mask_norm``/``mask_proj`` after the masked
    route.  ``choose`` draws a scale as VAR does, then runs the scale's masked sub-steps (module docstring)."""

    def __init__(self, width: int, vocab_size: int, eps: float):
        super().__init__(AdaLNHeadNorm(width, eps), width, vocab_size, bias=True)
        self.mask_norm = AdaLNHeadNorm(width, eps)
        self.mask_proj = nn.Linear(width, vocab_size)

    def modulation(self, cond: torch.Tensor) -> torch.Tensor:
        """cond (B, C) -> (B, 1, 4, C): the next-scale head's (scale, shift), then the masked head's."""
        return torch.cat([self.norm.modulation(cond), self.mask_norm.modulation(cond)], dim=2)

    def forward(self, h: torch.Tensor, mod: torch.Tensor, route: str | None = None) -> torch.Tensor:
        """Hidden (B, n, C) of ``route`` -> logits (B, n, V) fp32."""
        if route == "masked":
            return self.mask_proj(self.mask_norm(h, mod[:, :, 2:]).to(self.mask_proj.weight.dtype)).float()
        return self.proj(self.norm(h, mod[:, :, :2]).to(self.proj.weight.dtype)).float()

    def choose(self, logits: torch.Tensor, s: int, run) -> tuple[torch.Tensor, None]:
        """Guided next-scale logits (B, n, V) of step s -> ids (B, n) after the step's masked sub-steps."""
        filtered = run.filtered(logits, s)
        ids = run.options.tokens.draw(filtered, run.generator)
        steps = getattr(run.options.tokens, "mask_steps", ())
        counts = steps[s] if s < len(steps) else ()
        if len(counts) > 1 and ids.shape[1] > 1:
            ids = self.substeps(filtered, ids, counts, s, run)
        forced = run.forced(s)
        if forced is not None:
            ids = torch.where(forced[1], forced[0], ids)
        return ids, None

    @staticmethod
    def confidence(filtered: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        """Filtered logits (B, n, V), ids (B, n) -> the ids' probabilities (B, n)."""
        return filtered.softmax(dim=-1).gather(2, ids[..., None])[..., 0]

    def substeps(self, filtered: torch.Tensor, ids: torch.Tensor, counts, s: int, run) -> torch.Tensor:
        B, n = ids.shape
        rows = torch.arange(B, device=ids.device)[:, None]
        chosen = self.confidence(filtered, ids).argsort(dim=-1)[:, :sum(counts[1:])]  # M: least confident first
        begin, end = run.schedule.begin_ends[s]
        scale = run.options.guidance.scale * SUBSTEP_GUIDANCE
        ids = ids.clone()
        for k in range(1, len(counts)):
            masked = torch.zeros(B, n, dtype=torch.bool, device=ids.device)
            masked[rows, chosen] = True
            x_in = run.inputs.masked_input(run.state, s, ids, masked)
            x_in = x_in.doubled() if run.doubled else x_in
            with run.context():  # the trunk in the sampling precision; choose itself runs in fp32
                out = run.transformer.forward_positions(begin, end, run.cond, x_in, run.cache, run.layout,
                                                        route="masked")
            run.forwards += 1
            run.token_forwards += out.shape[0] * out.shape[1]
            guided = (1 + scale) * out[:B] - scale * out[B:] if run.doubled else out
            sub = run.filtered(guided, s)
            draw = run.options.tokens.draw(sub, run.generator)  # every row is drawn, as the official code does
            ids[rows, chosen] = draw[rows, chosen]
            if k < len(counts) - 1:
                keep = self.confidence(sub, ids)[rows, chosen].argsort(dim=-1)[:, :sum(counts[k + 1:])]
                chosen = chosen[rows, keep]
        return ids


@dataclass(frozen=True)
class MaskedStepSampling(TokenSampling):
    """VAR's token choice plus HMAR's ``mask_steps``: per step, the official sub-step counts (() or one count: no
    sub-steps)."""

    mask_steps: tuple[tuple[int, ...], ...] = ()


def parse_mask_steps(value, schedule) -> tuple[tuple[int, ...], ...]:
    """'none', 'n0[,n1...]/.../...' (one group per scale) or a sequence of count sequences -> the validated counts for
    ``schedule`` (a ScaleSchedule); () = no sub-steps.  Raises ArvisionError with the rule on bad input."""
    rule = ("'none', or one group of positive counts per scale separated by '/', the counts of a scale by ',' "
            "(e.g. 1/1,3/1,1,2,5/16)")
    if isinstance(value, str):
        text = value.strip()
        if text.lower() == "none":
            return ()
        try:
            groups = [tuple(int(c) for c in group.split(",")) for group in text.split("/")]
        except ValueError:
            raise ArvisionError(f"invalid mask steps {value!r}: {rule}") from None
    elif isinstance(value, (list, tuple)):
        try:
            groups = [tuple(int(c) for c in group) for group in value]
        except (TypeError, ValueError):
            raise ArvisionError(f"invalid mask steps {value!r}: {rule}") from None
        if not groups:
            return ()
    else:
        raise ArvisionError(f"invalid mask steps {value!r}: {rule}")
    if len(groups) != schedule.num_steps:
        raise ArvisionError(f"invalid mask steps {value!r}: {len(groups)} group(s) for {schedule.num_steps} scales "
                            f"({schedule.describe()}); {rule}")
    for s, (group, size) in enumerate(zip(groups, schedule.step_sizes)):
        if not group or any(c < 1 for c in group):
            raise ArvisionError(f"invalid mask steps {value!r}: scale {s} has counts {list(group)}; {rule}")
        if size == 1 and len(group) > 1:
            raise ArvisionError(f"invalid mask steps {value!r}: scale {s} has one token and no sub-steps; give it "
                                "one count")
        if sum(group[1:]) > size:
            raise ArvisionError(f"invalid mask steps {value!r}: scale {s} would re-predict {sum(group[1:])} of its "
                                f"{size} tokens")
    return tuple(groups)
