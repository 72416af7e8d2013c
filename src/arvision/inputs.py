"""Input builders: how step s's transformer input is made from what steps < s produced.

The same object builds teacher-forcing inputs (training) and step inputs (sampling), so the two cannot
drift apart.  Tokens travel as one (B, L) int64 tensor in schedule order for every family.

``ResidualCanvas`` (VAR): state = accumulated canvas f_hat; input of step s+1 = area-down(f_hat, pn_{s+1}).
``PreviousToken`` (raster): input of step s+1 = the id produced at step s.
"""

from __future__ import annotations

import torch

from arvision.schedules import Schedule
from arvision.tokenizers.models import MultiScaleVQTokenizer, VQTokenizer


class ResidualCanvas:
    def __init__(self, tokenizer: MultiScaleVQTokenizer, schedule: Schedule):
        self.tok, self.schedule = tokenizer, schedule

    def start(self, batch: int, device=None) -> torch.Tensor:
        return self.tok.new_canvas(batch, device)

    def advance(self, state: torch.Tensor, s: int, ids: torch.Tensor,
                embeds: torch.Tensor | None = None) -> torch.Tensor | None:
        """Add step s's codes to the canvas.  ids (B, n_s); embeds (B, n_s, D) overrides the code lookup
        (soft codes, e.g. VAR's Gumbel smoothing).  Returns step s+1's input (B, n_{s+1}, D) or None."""
        pn = self.schedule.step_grids[s][0]
        if embeds is None:
            embeds = self.tok.quantize.lookup(ids)
        h = embeds.transpose(1, 2).reshape(ids.shape[0], -1, pn, pn)
        self.tok.add_scale(s, state, h)
        return None if s == self.schedule.num_steps - 1 else self.tok.next_input(s, state)

    def finish(self, state: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        """-> image (B, 3, H, W) in [-1, 1]."""
        return self.tok.decode_features(state).clamp(-1, 1)

    def split(self, tokens: torch.Tensor) -> list[torch.Tensor]:
        """(B, L) -> per-step list of (B, n_s)."""
        return list(tokens.split(self.schedule.step_sizes, dim=1))

    def targets(self, img: torch.Tensor) -> torch.Tensor:
        """img (B, 3, H, W) -> (B, L) ground-truth ids."""
        return torch.cat(self.tok.encode(img), dim=1)

    def teacher(self, tokens: torch.Tensor) -> torch.Tensor:
        """(B, L) ids -> (B, L - n_0, D) inputs of steps 1..S-1 (the sampler's ``advance``, batched)."""
        return self.tok.teacher_inputs(self.split(tokens))

    def decode(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.tok.decode(self.split(tokens))


class PreviousToken:
    def __init__(self, tokenizer: VQTokenizer, schedule: Schedule):
        self.tok, self.schedule = tokenizer, schedule

    def start(self, batch: int, device=None):
        return None

    def advance(self, state, s: int, ids: torch.Tensor, embeds=None) -> torch.Tensor | None:
        if embeds is not None:
            raise ValueError("soft token embeddings are only defined for canvas (VAR) models")
        return None if s == self.schedule.num_steps - 1 else ids

    def finish(self, state, tokens: torch.Tensor) -> torch.Tensor:
        return self.decode(tokens).clamp(-1, 1)

    def split(self, tokens: torch.Tensor) -> list[torch.Tensor]:
        return [tokens]

    def targets(self, img: torch.Tensor) -> torch.Tensor:
        return self.tok.encode(img)

    def teacher(self, tokens: torch.Tensor) -> torch.Tensor:
        return tokens[:, :-1]

    def decode(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.tok.decode(tokens, self.schedule.image_grid)


def build_inputs(tokenizer, schedule: Schedule):
    return ResidualCanvas(tokenizer, schedule) if schedule.kind == "scales" else PreviousToken(tokenizer, schedule)
