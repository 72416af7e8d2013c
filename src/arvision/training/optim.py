"""Optimiser and learning-rate schedule for both trainers.

The schedule is a pure function of the step, so resuming needs nothing but the step count.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from arvision.errors import ArvisionError

# Parameters that are never weight-decayed: 1-D tensors (norms, biases) and these embeddings/gains (VAR's list).
NO_DECAY_NAMES = ("pos_embed", "pos_start", "lvl_embed", "scale_mul", "ada_gss", "class_emb", "k_bias",
                  "text_encoder.words", "text_encoder.pos")


@dataclass
class LRSchedule:
    """Linear warm-up from ``warmup_start`` x lr to lr, then ``decay`` ("cosine", "linear" or "constant") to
    ``min_ratio`` x lr at ``total_steps``."""

    lr: float
    total_steps: int
    warmup_steps: int = 0
    decay: str = "cosine"
    min_ratio: float = 0.1
    warmup_start: float = 0.005

    def __post_init__(self):
        if self.decay not in ("cosine", "linear", "constant"):
            raise ArvisionError(f"lr decay must be cosine, linear or constant, got {self.decay!r}")
        if self.lr <= 0 or self.total_steps < 1 or self.warmup_steps < 0:
            raise ArvisionError(f"bad schedule: lr={self.lr}, steps={self.total_steps}, warmup={self.warmup_steps}")

    def __call__(self, step: int) -> float:
        if step < self.warmup_steps:
            return self.lr * (self.warmup_start + (1 - self.warmup_start) * step / self.warmup_steps)
        if self.decay == "constant":
            return self.lr
        span = max(self.total_steps - self.warmup_steps, 1)
        t = min(max(step - self.warmup_steps, 0) / span, 1.0)
        shape = 0.5 * (1 + math.cos(math.pi * t)) if self.decay == "cosine" else 1 - t
        return self.lr * (self.min_ratio + (1 - self.min_ratio) * shape)


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (no_decay if p.ndim <= 1 or any(k in name for k in NO_DECAY_NAMES) else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def make_adamw(model: nn.Module, lr: float, weight_decay: float = 0.05, betas=(0.9, 0.95)) -> torch.optim.AdamW:
    # foreach=False: the same kernels on every run and resume, so restarts are bit-identical
    return torch.optim.AdamW(param_groups(model, weight_decay), lr=lr, betas=betas, foreach=False)


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr
