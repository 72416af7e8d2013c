"""Training the AR transformer of any family on a frozen tokenizer.

One trainer for every family: the targets are the tokenizer's ids in schedule order, the inputs come from the
same input builder the sampler uses (``inputs.training_inputs``: the teacher-forced input, or a masked model's random
masking with loss weights), and the loss is the head's own (``head.loss``; the categorical heads: cross-entropy,
averaged over every position or over the weighted ones).  Images are encoded once up front (the tokenizer is frozen):
to tokens when the family trains on one schedule, to the pre-quantisation latents when it draws a new schedule
every step (``capabilities.random_train_schedules``: FlexVAR), which are then quantised per step.

``student_forcing`` (SAR, for families with ``capabilities.student_forcing``): a second pass whose inputs are
built, by the same input builder, from the first pass's argmax predictions (each scale sees the model's own
one-step-shifted prediction of the previous scales); loss = teacher-forced CE + student-forced CE, the latter over
every step after the first (whose input is the condition in both passes).

``masked_stage`` (HMAR's second stage, for families with ``capabilities.masked_stage``): the family readies its
masked block route and freezes everything else (``family.start_masked_stage``); each step feeds the input builder's
``masked_training_inputs`` (a random share of each scale masked) through that route, loss on the masked positions.
"""

from __future__ import annotations

import dataclasses
import json
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import torch

from arvision.config import check_range
from arvision.errors import ArvisionError
from arvision.progress import progress as progress_of
from arvision.training.checkpoint import (
    load_checkpoint,
    restore_rng_state,
    resumable_checkpoint,
    rng_state,
    save_checkpoint,
)
from arvision.training.condition_data import Captions, ClassLabels
from arvision.training.distributed import DistInfo, global_batch, shard
from arvision.training.fields import check_common
from arvision.training.monitor import Monitor
from arvision.training.optim import LRSchedule, make_adamw, set_lr
from arvision.training.run_folder import warn_changed_config


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
    label_drop: float = 0.1  # probability of the null class / null text, for classifier-free guidance
    precision: str = "auto"
    seed: int = 0
    log_every: int = 10
    sample_every: int = 500
    ckpt_every: int = 500
    keep_last: int = 3
    sample_cfg: float | None = None  # guidance for the periodic sample grids (None: family default)
    student_forcing: bool = False  # SAR's second pass on the model's own predictions (scale-wise families)
    masked_stage: bool = False  # train only the family's masked route on masked inputs (HMAR's second stage)
    # bitwise self-correction (Infinity; families with ``capabilities.self_correction``): the first N scales' bits
    # are flipped with a probability drawn per step from {0, 0.01, ..., strength} (noise_apply_layers, _strength)
    self_correction: int = 0
    self_correction_strength: float = 0.3

    def __post_init__(self):
        # every field, on construction: the CLI builds this config before it reads or tokenises any data
        check_common(self, ("steps", "batch_size", "log_every", "sample_every", "ckpt_every"),
                     ("warmup_steps", "keep_last", "seed"))
        check_range("label_drop", self.label_drop, 0.0, 1.0, hi_open=True)
        check_range("self_correction", self.self_correction, 0)
        check_range("self_correction_strength", self.self_correction_strength, 0.0, 1.0)
        if self.masked_stage and (self.student_forcing or self.self_correction):
            raise ArvisionError("the masked stage trains the masked route alone: not with student forcing or "
                                "self-correction")


def trains_on_latents(pipe) -> bool:
    """Whether ``pipe``'s family makes its targets per step (a random schedule, or self-correction's flips), so its
    data is cached as latents, not tokens."""
    caps = pipe.family.capabilities
    return caps.random_train_schedules or caps.latent_training


@torch.no_grad()
def tokenize_dataset(pipe, dataset, batch_size: int = 64, progress: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """All images of ``dataset`` -> (data, labels (N,) int64): data = tokens (N, L) int64 in schedule order, or,
    for families that train on random schedules, the tokenizer's pre-quantisation latents (N, D, h, w) fp32."""
    data, labels = [], []
    n = len(dataset)
    latents = trains_on_latents(pipe)
    for i in progress_of(range(0, n, batch_size), desc="tokenizing", unit="batches", disable=not progress, leave=False):
        items = [dataset[j] for j in range(i, min(i + batch_size, n))]
        imgs = torch.stack([im for im, _ in items]).to(pipe.device)
        data.append((pipe.tokenizer.features(imgs).float() if latents else pipe.encode(imgs)).cpu())
        labels.append(torch.tensor([int(lab) for _, lab in items]))
    return torch.cat(data), torch.cat(labels)


def weighted_mean(values: torch.Tensor, weights: torch.Tensor | None) -> torch.Tensor:
    """The mean of values (B, L) over every position, or weighted by ``weights`` (B, L) (a masked model: 1 at the
    masked positions, 0 elsewhere, so the others add nothing to the loss or its gradient)."""
    if weights is None:
        return values.mean()
    return (values * weights).sum() / weights.sum().clamp_min(1.0)


def per_step_mean(values: torch.Tensor, sizes: tuple[int, ...]) -> list[float]:
    """values (B, L) -> the mean over each step's positions."""
    return [v.mean().item() for v in values.split(sizes, dim=1)]


class ARTrainer:
    """Trains ``pipe.transformer`` (the tokenizer stays frozen) on pre-extracted data (``tokenize_dataset``): tokens
    (N, L), or latents (N, D, h, w) for families that draw a schedule per step.  ``labels``: class ids (N,) int64,
    or, for text models, :class:`~arvision.training.condition_data.Captions` (K captions per image, one drawn per
    step)."""

    def __init__(self, pipe, tokens: torch.Tensor, labels: torch.Tensor | Captions, cfg: ARTrainConfig,
                 out_dir: str | Path, dist_info: DistInfo | None = None, progress: bool = True):
        from arvision.precision import resolve_precision

        self.pipe, self.cfg = pipe, cfg
        self.info = dist_info or DistInfo()
        self.out = Path(out_dir)
        self.tokens = tokens
        self.conditions = labels if isinstance(labels, Captions) else ClassLabels(labels, pipe.config.num_classes)
        if isinstance(self.conditions, Captions) != pipe.takes_text:
            raise ArvisionError("a text model trains on captions and a class model on class labels")
        if len(self.conditions) != tokens.shape[0]:
            raise ArvisionError(f"{len(self.conditions)} conditions for {tokens.shape[0]} images")
        self.latents = trains_on_latents(pipe)
        if self.latents and tokens.ndim != 4:
            raise ArvisionError(f"{pipe.family.description} trains on latents (N, D, h, w), got shape "
                                f"{tuple(tokens.shape)}")
        # ids (N, L), or continuous tokens (N, L, C) for a head with ``token_dims`` (C,) (flow heads)
        per_image = (pipe.schedule.length, *pipe.transformer.head.token_dims)
        if not self.latents and tuple(tokens.shape[1:]) != per_image:
            raise ArvisionError(f"tokens have shape {tuple(tokens.shape)}; the schedule has {pipe.schedule.length} "
                                f"positions per image (expected (N, {', '.join(map(str, per_image))}))")
        if cfg.self_correction and not pipe.family.capabilities.self_correction:
            raise ArvisionError(f"bitwise self-correction applies to bitwise-token families; {pipe.family.description}"
                                " models do not take it")
        if cfg.student_forcing and not pipe.family.capabilities.student_forcing:
            raise ArvisionError(f"student forcing (SAR) applies to scale-wise families; {pipe.family.description} "
                                "models do not take it")
        if cfg.masked_stage and not pipe.family.capabilities.masked_stage:
            raise ArvisionError(f"the masked stage is HMAR's second training stage; {pipe.family.description} models "
                                "have no masked route")
        self.model = pipe.transformer.train().requires_grad_(True)
        # the masked stage: the family readies its masked route and freezes the rest (the optimiser skips it)
        self.route = pipe.family.start_masked_stage(self.model) if cfg.masked_stage else None
        self.ddp = self.model
        if self.info.world > 1:
            from torch.nn.parallel import DistributedDataParallel

            self.ddp = DistributedDataParallel(self.model)
        self.optimizer = make_adamw(self.model, cfg.lr, cfg.weight_decay)
        self.schedule = LRSchedule(cfg.lr, cfg.steps, cfg.warmup_steps, cfg.decay, cfg.min_lr_ratio)
        self.gen = torch.Generator().manual_seed(cfg.seed + 17)  # label dropout
        self.schedule_gen = torch.Generator().manual_seed(cfg.seed + 23)  # random training schedules (FlexVAR)
        # random training inputs (MaskGIT's masking): one stream per rank, since ranks see different images
        self.input_gen = torch.Generator().manual_seed(cfg.seed + 29 + 1000 * self.info.rank)
        self.loss_gen = torch.Generator().manual_seed(cfg.seed + 31)  # noise a head's loss draws (flow matching)
        self.dtype = resolve_precision(cfg.precision, self.info.device)
        self.progress = progress and self.info.is_main
        self.step = 0

    # -- one optimisation step ---------------------------------------------------------------------
    def batch(self, idx: torch.Tensor):
        """Rows ``idx`` of the data -> (schedule, input builder, targets (b, L), training inputs, loss weights (b, L)
        or None) of this step.  Every rank draws the same schedule (one generator, seeded alike); self-correction's
        flips come from it too; a masked model's masking from the per-rank input generator."""
        pipe, device, cfg = self.pipe, self.info.device, self.cfg
        with torch.no_grad():
            if not self.latents:
                tok = self.tokens[idx].to(device)
                if cfg.masked_stage:
                    return pipe.schedule, pipe.inputs, tok, *pipe.inputs.masked_training_inputs(tok, self.input_gen)
                return pipe.schedule, pipe.inputs, tok, *pipe.inputs.training_inputs(tok, self.input_gen)
            schedule = pipe.family.training_schedule(pipe.config, self.schedule_gen)
            inputs = pipe.family.input_builder(pipe.tokenizer, schedule)
            tok, x_in = inputs.training_pair(self.tokens[idx].to(device), self.schedule_gen, cfg.self_correction,
                                             cfg.self_correction_strength)
            return schedule, inputs, tok, x_in, None

    def train_step(self) -> dict:
        cfg, device = self.cfg, self.info.device
        idx = global_batch(self.tokens.shape[0], self.step, cfg.batch_size, cfg.seed)
        drop = torch.rand(cfg.batch_size, generator=self.gen) < cfg.label_drop  # same draw on every rank
        choice = None
        if self.conditions.draws:  # which caption of each image (class labels draw nothing)
            choice = shard(torch.randint(1 << 30, (cfg.batch_size,), generator=self.gen), self.info)
        idx, drop = shard(idx, self.info), shard(drop, self.info)
        schedule, inputs, tok, x_in, weights = self.batch(idx)
        cond = self.conditions.batch(idx, drop, choice, device)
        head = self.model.head
        autocast = (torch.autocast(device.type, dtype=self.dtype) if self.dtype != torch.float32 else nullcontext())
        with autocast:
            logits = self.ddp(cond, x_in, schedule, route=self.route)
        ce = head.loss(logits, tok, schedule=schedule, generator=self.loss_gen)
        # one weighted mean: a masked model's mask weights (B, L) times the family's per-position weights (L,)
        # (HMAR's per-scale weights, summing to 1 over a sequence: the mean over images of each sequence's sum)
        # (not in the masked stage: its loss is the plain mean over the masked positions, as the official one)
        scale_w = None if cfg.masked_stage else self.pipe.family.loss_weights(schedule)
        loss_w = weights if scale_w is None else scale_w.to(ce.device, ce.dtype).expand_as(ce) * (
            1.0 if weights is None else weights)
        loss = weighted_mean(ce, loss_w)
        student = None
        if cfg.student_forcing:
            with torch.no_grad():  # SAR's staggered roll-out: each step's input from the previous steps' argmax
                x_sf = inputs.teacher(logits.detach().argmax(-1))
            with autocast:
                logits_sf = self.ddp(cond, x_sf, schedule)
            student = head.loss(logits_sf, tok, schedule=schedule, generator=self.loss_gen)
            student = student[:, schedule.first_len:].mean()
            loss = loss + student
        set_lr(self.optimizer, self.schedule(self.step))
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), cfg.grad_clip or float("inf"))
        self.optimizer.step()
        self.step += 1
        with torch.no_grad():
            correct = head.hits(logits, tok)  # None: the head's tokens have no accuracy (continuous)
        metrics = {"loss": loss.item(), "lr": self.schedule(self.step - 1), "grad_norm": grad_norm.item()}
        if correct is not None:
            metrics["acc"] = weighted_mean(correct, weights).item()
        if student is not None:
            metrics["loss/teacher"], metrics["loss/student"] = weighted_mean(ce, weights).item(), student.item()
        if schedule.step_maps:
            # per scale: by index on the model's own schedule, by side on a random one (lists differ per step)
            keys = ([f"scale{s}" for s in range(schedule.num_steps)] if not self.latents
                    else [f"side{h}" for h, _ in schedule.step_grids])
            metrics.update({f"loss/{k}": v for k, v in zip(keys, per_step_mean(ce.detach(), schedule.step_sizes))})
            if correct is not None:
                metrics.update({f"acc/{k}": v for k, v in zip(keys, per_step_mean(correct, schedule.step_sizes))})
        return metrics

    # -- the run -------------------------------------------------------------------------------------
    def generators(self) -> dict:
        """The named generators a checkpoint saves (the input masking's only where the input builder draws, so
        checkpoints of the other families keep their layout)."""
        gens = {"label_drop": self.gen, "schedules": self.schedule_gen, "loss": self.loss_gen}
        if self.pipe.inputs.random_teacher or self.cfg.masked_stage:
            gens["inputs"] = self.input_gen
        return gens

    def _state(self) -> dict:
        return {"optimizer": self.optimizer.state_dict(),
                "rng": rng_state(self.generators()),
                "config": json.dumps(dataclasses.asdict(self.cfg))}

    def resume(self) -> bool:
        """Load the newest good checkpoint under out_dir/checkpoints; False when there is none yet (an error when
        every one is corrupt: ``resumable_checkpoint``)."""
        ckpt = resumable_checkpoint(self.out / "checkpoints")
        if ckpt is None:
            return False
        state = load_checkpoint(ckpt, {"transformer": self.model}, verified=True)
        warn_changed_config(ckpt, json.loads(state["config"]), self.cfg)
        self.optimizer.load_state_dict(state["optimizer"])
        gens = self.generators()
        if "gen.loss" not in state["rng"]:  # older checkpoints lack it (nothing drew from it)
            gens.pop("loss")
        restore_rng_state(state["rng"], gens)
        self.step = int(state["step"])
        return True

    def train(self, resume: bool = False, stop_after: int | None = None) -> Path:
        """Run to ``cfg.steps`` (from the last good checkpoint if ``resume``).  ``stop_after`` ends this
        process early after that many steps, as an interruption would (the schedule still spans cfg.steps)."""
        self.out.mkdir(parents=True, exist_ok=True)
        if resume:
            resumed = self.resume()
            if self.info.is_main:  # say what happened either way: a resume that starts at 0 must not pass unseen
                print(f"resumed from step {self.step}" if resumed else
                      f"nothing to resume in {self.out} (no checkpoint yet): starting from step 0")
        mon = Monitor(self.out, self.cfg.steps, self.step, enabled=self.info.is_main, desc="train",
                      show_bar=self.progress)
        end = self.cfg.steps if stop_after is None else min(self.cfg.steps, self.step + stop_after)
        try:
            while self.step < end:
                metrics = self.train_step()
                if self.step % self.cfg.log_every == 0 or self.step == self.cfg.steps:
                    mon.log(self.step, metrics, show=("loss", "acc"))
                mon.advance()  # after the log, so that a progress line shows this step's loss
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
    def sample_grid(self, path: Path, max_rows: int = 10) -> None:
        """A labelled grid from the current weights (fixed seed, so grids are comparable across steps): one image
        per class (the first ``max_rows``), or per caption of the first images."""
        from arvision.images import make_grid

        path.parent.mkdir(parents=True, exist_ok=True)
        was_training = self.model.training
        self.model.eval()
        try:
            cond = self.conditions.preview(max_rows)
            out = self.pipe(cond, guidance_scale=self.cfg.sample_cfg,
                            generator=torch.Generator().manual_seed(0), precision="fp32")
            names = self.pipe.config.class_names
            keys = cond.keys()
            labels = [names[k] if names and isinstance(k, int) else str(k) for k in keys]
            make_grid(out.images, labels, ncol=min(len(keys), 10)).save(path)
        finally:
            self.model.train(was_training)
