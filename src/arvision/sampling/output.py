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
