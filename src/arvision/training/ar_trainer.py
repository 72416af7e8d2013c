"""Training the AR transformer (VAR or LlamaGen-style) on tokens of a frozen tokenizer.

One trainer for both families: the targets are the tokenizer's ids in schedule order, the inputs come from
the same input builder the sampler uses (``pipe.inputs.teacher``), and the loss is cross-entropy over every
position.  Images are tokenised once up front (the tokenizer is frozen), so each step costs only the trunk.
"""

from __future__ import annotations

import dataclasses
import json
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from arvision.errors import ArvisionError
from arvision.training.checkpoint import (
    latest_good_checkpoint,
    load_checkpoint,
    restore_rng_state,
    rng_state,
    save_checkpoint,
)
from arvision.training.distributed import DistInfo, global_batch, shard
from arvision.training.monitor import Monitor
from arvision.training.optim import LRSchedule, make_adamw, set_lr


@dataclass
class ARTrainConfig:
    steps: int = 2000
    batch_size: int = 64  # global batch (split over processes)
    lr: float = 4e-4
    warmup_steps: int = 100
    decay: str = "cosine"
    min_lr_ratio: float = 0.05
    weight_decay: float = 0.05
    grad_clip: float = 2.0
    label_drop: float = 0.1  # probability of the null class, for classifier-free guidance
    precision: str = "auto"
    seed: int = 0
    log_every: int = 10
    sample_every: int = 500
    ckpt_every: int = 500
    keep_last: int = 3
    sample_cfg: float | None = None  # guidance for the periodic sample grids (None: family default)

    def __post_init__(self):
        for name in ("steps", "batch_size", "log_every", "sample_every", "ckpt_every"):
            if getattr(self, name) < 1:
                raise ArvisionError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not 0.0 <= self.label_drop < 1.0:
            raise ArvisionError(f"label_drop must be in [0, 1), got {self.label_drop}")
        if self.grad_clip < 0 or self.lr <= 0:
            raise ArvisionError(f"need lr > 0 and grad_clip >= 0, got {self.lr}, {self.grad_clip}")


@torch.no_grad()
def tokenize_dataset(pipe, dataset, batch_size: int = 64, progress: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """All images of ``dataset`` -> (tokens (N, L) int64 in schedule order, labels (N,) int64)."""
    tokens, labels = [], []
    n = len(dataset)
    for i in tqdm(range(0, n, batch_size), desc="tokenizing", disable=not progress or None, leave=False):
        items = [dataset[j] for j in range(i, min(i + batch_size, n))]
        imgs = torch.stack([im for im, _ in items]).to(pipe.device)
        tokens.append(pipe.encode(imgs).cpu())
        labels.append(torch.tensor([int(lab) for _, lab in items]))
    return torch.cat(tokens), torch.cat(labels)


def per_step_mean(values: torch.Tensor, sizes: tuple[int, ...]) -> list[float]:
    """values (B, L) -> the mean over each step's positions."""
    return [v.mean().item() for v in values.split(sizes, dim=1)]


class ARTrainer:
    """Trains ``pipe.transformer`` (the tokenizer stays frozen) on pre-extracted tokens."""

    def __init__(self, pipe, tokens: torch.Tensor, labels: torch.Tensor, cfg: ARTrainConfig, out_dir: str | Path,
                 dist_info: DistInfo | None = None, progress: bool = True):
        from arvision.precision import resolve_precision

        self.pipe, self.cfg = pipe, cfg
        self.info = dist_info or DistInfo()
        self.out = Path(out_dir)
        self.tokens, self.labels = tokens, labels
        n_cls = pipe.config.num_classes
        if labels.numel() and (labels.min() < 0 or labels.max() >= n_cls):
            raise ArvisionError(f"labels must be in [0, {n_cls}), got [{labels.min()}, {labels.max()}]")
        if tokens.shape[1] != pipe.schedule.length:
            raise ArvisionError(f"tokens have {tokens.shape[1]} positions, the schedule {pipe.schedule.length}")
        self.model = pipe.transformer.train().requires_grad_(True)
        self.ddp = self.model
        if self.info.world > 1:
            from torch.nn.parallel import DistributedDataParallel

            self.ddp = DistributedDataParallel(self.model)
        self.optimizer = make_adamw(self.model, cfg.lr, cfg.weight_decay)
        self.schedule = LRSchedule(cfg.lr, cfg.steps, cfg.warmup_steps, cfg.decay, cfg.min_lr_ratio)
        self.gen = torch.Generator().manual_seed(cfg.seed + 17)  # label dropout
        self.dtype = resolve_precision(cfg.precision, self.info.device)
        self.progress = progress and self.info.is_main
        self.step = 0

    # -- one optimisation step ---------------------------------------------------------------------
    def train_step(self) -> dict:
        cfg, device = self.cfg, self.info.device
        idx = global_batch(self.tokens.shape[0], self.step, cfg.batch_size, cfg.seed)
        drop = torch.rand(cfg.batch_size, generator=self.gen) < cfg.label_drop  # same draw on every rank
        idx, drop = shard(idx, self.info), shard(drop, self.info)
        tok = self.tokens[idx].to(device)
        lab = torch.where(drop, self.pipe.config.num_classes, self.labels[idx]).to(device)
        with torch.no_grad():
            x_in = self.pipe.inputs.teacher(tok)
        autocast = (torch.autocast(device.type, dtype=self.dtype) if self.dtype != torch.float32 else nullcontext())
        with autocast:
            logits = self.ddp(lab, x_in)
        ce = F.cross_entropy(logits.float().flatten(0, 1), tok.flatten(), reduction="none").view_as(tok)
        loss = ce.mean()
        set_lr(self.optimizer, self.schedule(self.step))
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), cfg.grad_clip or float("inf"))
        self.optimizer.step()
        self.step += 1
        with torch.no_grad():
            correct = (logits.argmax(-1) == tok).float()
        metrics = {"loss": loss.item(), "acc": correct.mean().item(), "lr": self.schedule(self.step - 1),
                   "grad_norm": grad_norm.item()}
        if self.pipe.schedule.kind == "scales":
            sizes = self.pipe.schedule.step_sizes
            metrics.update({f"loss/scale{s}": v for s, v in enumerate(per_step_mean(ce.detach(), sizes))})
            metrics.update({f"acc/scale{s}": v for s, v in enumerate(per_step_mean(correct, sizes))})
        return metrics

    # -- the run -------------------------------------------------------------------------------------
    def _state(self) -> dict:
        return {"optimizer": self.optimizer.state_dict(), "rng": rng_state({"label_drop": self.gen}),
                "config": json.dumps(dataclasses.asdict(self.cfg))}

    def resume(self) -> bool:
        ckpt = latest_good_checkpoint(self.out / "checkpoints")
        if ckpt is None:
            return False
        state = load_checkpoint(ckpt, {"transformer": self.model})
        self.optimizer.load_state_dict(state["optimizer"])
        restore_rng_state(state["rng"], {"label_drop": self.gen})
        self.step = int(state["step"])
        return True

    def train(self, resume: bool = False, stop_after: int | None = None) -> Path:
        """Run to ``cfg.steps`` (from the last good checkpoint if ``resume``).  ``stop_after`` ends this
        process early after that many steps, as an interruption would (the schedule still spans cfg.steps)."""
        self.out.mkdir(parents=True, exist_ok=True)
        if resume and self.resume() and self.info.is_main:
            print(f"resumed from step {self.step}")
        mon = Monitor(self.out, self.cfg.steps, self.step, enabled=self.info.is_main, desc="train",
                      show_bar=self.progress)
        end = self.cfg.steps if stop_after is None else min(self.cfg.steps, self.step + stop_after)
        try:
            while self.step < end:
                metrics = self.train_step()
                mon.advance()
                if self.step % self.cfg.log_every == 0 or self.step == self.cfg.steps:
                    mon.log(self.step, metrics, show=("loss", "acc"))
                if self.info.is_main and (self.step % self.cfg.sample_every == 0 or self.step == self.cfg.steps):
                    self.sample_grid(self.out / "samples" / f"step-{self.step:07d}.png")
                if self.step % self.cfg.ckpt_every == 0 or self.step in (self.cfg.steps, end):
                    if self.info.is_main:
                        save_checkpoint(self.out / "checkpoints", self.step, {"transformer": self.model},
                                        self._state(), self.cfg.keep_last)
                    from arvision.training.distributed import barrier

                    barrier(self.info)
        finally:
            mon.close()
        self.model.eval().requires_grad_(False)
        if self.info.is_main:
            self.pipe.save_pretrained(self.out)
        return self.out

    @torch.no_grad()
    def sample_grid(self, path: Path, per_class: int = 1, max_classes: int = 10) -> None:
        """A labelled grid from the current weights (fixed seed, so grids are comparable across steps)."""
        from arvision.images import make_grid

        path.parent.mkdir(parents=True, exist_ok=True)
        was_training = self.model.training
        self.model.eval()
        try:
            classes = [k for k in range(min(self.pipe.config.num_classes, max_classes)) for _ in range(per_class)]
            out = self.pipe(classes, guidance_scale=self.cfg.sample_cfg,
                            generator=torch.Generator().manual_seed(0), precision="fp32")
            names = self.pipe.config.class_names
            make_grid(out.images, [names[k] if names else str(k) for k in classes],
                      ncol=min(len(classes), 10)).save(path)
        finally:
            self.model.train(was_training)
