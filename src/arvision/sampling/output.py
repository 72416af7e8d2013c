"""``GenerationOutput``: what one sampling call returns (images, tokens, labels, statistics).

It lives in the sampling layer, below the pipeline, so that sampling features that return richer outputs (editing's
``EditOutput``) can extend it without importing ``arvision.pipeline``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

__all__ = ["GenerationOutput"]


@dataclass
class GenerationOutput:
    images: list | torch.Tensor | None  # PIL images, or (B, 3, H, W) in [0, 1] for output_type="pt"
    tokens: torch.Tensor  # (B, L) int64 in schedule order
    step_tokens: list[torch.Tensor]  # per step (B, n_s) for scale-wise models; [tokens] for raster models
    class_labels: list[int]
    progression: list[torch.Tensor] | None = None  # scale-wise: image after each step, (B, 3, H, W) in [0, 1]
    stats: dict | None = None  # seconds in the transformer loop / decoding, KV-cache bytes, precision
    schedule: object = None  # the schedule the call sampled on (``arvision.schedules``)

    @classmethod
    def concat(cls, parts: list[GenerationOutput]) -> GenerationOutput:
        """One output from consecutive batches' outputs (``ARPipeline.iter_batches``), rows in order; the stats
        and schedule of the last part (a call's stats are running totals)."""
        if not parts:
            raise ValueError("nothing to concatenate")
        first, last = parts[0], parts[-1]
        images = None
        if first.images is not None:
            images = (torch.cat([p.images for p in parts]) if isinstance(first.images, torch.Tensor)
                      else [im for p in parts for im in p.images])
        progression = None
        if first.progression is not None:
            progression = [torch.cat(step) for step in zip(*(p.progression for p in parts))]
        return cls(images, torch.cat([p.tokens for p in parts]),
                   [torch.cat(step) for step in zip(*(p.step_tokens for p in parts))],
                   [k for p in parts for k in p.class_labels], progression, last.stats, last.schedule)

    def rows(self, start: int, stop: int) -> GenerationOutput:
        """Rows ``start:stop`` of this output (images, tokens, labels, progression); the same stats."""
        images = None if self.images is None else self.images[start:stop]
        progression = None if self.progression is None else [p[start:stop] for p in self.progression]
        return GenerationOutput(images, self.tokens[start:stop], [t[start:stop] for t in self.step_tokens],
                                self.class_labels[start:stop], progression, self.stats, self.schedule)
