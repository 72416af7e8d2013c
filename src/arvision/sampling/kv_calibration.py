"""Calibration of the KV-cache policies for scale-wise models (``arvision calibrate-kv``).

N full-cache samples record, per (step, layer), ScaleKV's Attention Selectivity Index and, per (layer, head),
HACK's column-wise attention variance; :func:`calibrate` turns them into drafter layers per step and a head type
per (layer, head), saved as ``kv_calibration.json`` in the model folder (see ``arvision.sampling.kv_policies``).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from arvision.errors import ArvisionError
from arvision.models.attention import KVCache

CALIBRATION_FILE = "kv_calibration.json"
K_PRIME = 16  # ASI: history tokens in the top-K' concentration term (our choice; the paper's value is unverified)
DEFAULT_ALPHA = 0.5  # HACK: fraction of contextual heads


def require_scalewise(family) -> None:
    """Raise unless ``family`` (a model's) compresses whole-scale steps (``capabilities.kv_policies``)."""
    if not family.capabilities.kv_policies:
        raise ArvisionError("KV-cache policies (scalekv, hack, snapkv) compress a KV cache of whole-scale steps; "
                            f"{family.description} models keep no such cache")


# -- calibration data -------------------------------------------------------------------------------------------
@dataclass
class Calibration:
    """What ``arvision calibrate-kv`` measured.  asi[s][l]: ASI of layer l at step s (s >= 1; step 0 has no
    history: zeros); z[s][l] its z-score within the step; drafters[s]: the ``num_drafters`` layers of lowest z;
    head_variance[l][h]: normalised column-wise attention variance; head_types[l][h]: "contextual"/"structural"."""

    depth: int
    heads: int
    steps: int
    samples: int
    seed: int
    k_prime: int
    alpha: float
    num_drafters: int
    asi: list = field(default_factory=list)
    z: list = field(default_factory=list)
    drafters: list = field(default_factory=list)
    head_variance: list = field(default_factory=list)
    head_types: list = field(default_factory=list)

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.write_text(json.dumps({"format": "arvision-kv-calibration", "version": 1, **asdict(self)}, indent=1))
        return path

    @classmethod
    def load(cls, path: str | Path) -> Calibration:
        path = Path(path)
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError) as e:
            raise ArvisionError(f"cannot read the KV calibration {path}: {e}") from e
        if data.pop("format", None) != "arvision-kv-calibration":
            raise ArvisionError(f"{path} is not an arvision KV calibration file")
        data.pop("version", None)
        return cls(**data)

    def check(self, transformer, schedule) -> None:
        """Raise unless this calibration fits ``transformer`` sampling on ``schedule``."""
        cfg = transformer.cfg
        if (self.depth, self.heads, self.steps) != (cfg.depth, cfg.num_heads, schedule.num_steps):
            raise ArvisionError(f"the KV calibration is for depth {self.depth}, {self.heads} heads, {self.steps} "
                                f"steps; this model samples with {cfg.depth}, {cfg.num_heads}, {schedule.num_steps}"
                                ": run `arvision calibrate-kv` again (on this scale list)")


def classify(asi: torch.Tensor, head_variance: torch.Tensor, num_drafters: int, alpha: float):
    """asi (S, L), head_variance (L, H) -> (z (S, L), drafters per step, head_types (L, H)).  Step 0 (no
    history) has no drafters.  Contextual heads: the round(alpha * L * H) lowest variances over the model."""
    mu, sd = asi.mean(1, keepdim=True), asi.std(1, unbiased=False, keepdim=True)
    z = (asi - mu) / (sd + 1e-8)
    drafters = [[] if s == 0 else sorted(z[s].argsort()[:num_drafters].tolist()) for s in range(asi.shape[0])]
    n_ctx = round(alpha * head_variance.numel())
    flat = torch.zeros(head_variance.numel(), dtype=torch.bool)
    flat[head_variance.flatten().argsort()[:n_ctx]] = True
    types = [["contextual" if c else "structural" for c in row] for row in flat.view_as(head_variance).tolist()]
    return z, drafters, types


class _StatsCache(KVCache):
    """A full cache that also records, for each step s >= 1, the calibration statistics of its attention."""

    def __init__(self, recorder, *args):
        super().__init__(*args)
        self.recorder = recorder

    def attend(self, layer, begin, q, k, v, scale=None, mask=None, prefix=None):
        out = super().attend(layer, begin, q, k, v, scale, mask, prefix)
        if begin > 0:
            self.recorder.record(layer, begin, q, self.k[layer][:, :, :begin + k.shape[2]], scale)
        return out


class _Recorder:
    """Accumulates ASI per (step, layer) and column variance per (layer, head) over calibration batches."""

    def __init__(self, transformer, schedule, k_prime: int):
        cfg, self.schedule = transformer.cfg, schedule
        self.step_of = {b: s for s, (b, _) in enumerate(self.schedule.begin_ends)}
        self.k_prime = k_prime
        self.asi = torch.zeros(self.schedule.num_steps, cfg.depth, dtype=torch.float64)
        self.var = torch.zeros(cfg.depth, cfg.num_heads, dtype=torch.float64)
        self.batches = 0

    def new_cache(self, transformer, schedule, batch, dtype, device):
        cfg = transformer.cfg
        return _StatsCache(self, cfg.depth, batch, cfg.num_heads, schedule.length, cfg.head_dim, dtype, device)

    def record(self, layer: int, begin: int, q: torch.Tensor, k: torch.Tensor, scale) -> None:
        s = self.step_of[begin]
        scale = q.shape[-1] ** -0.5 if scale is None else scale
        a = (q.float() @ k.float().transpose(-2, -1) * scale).softmax(-1)  # (B, H, n, m)
        current = a[..., begin:].sum(-1).mean()  # attention mass on the current map
        hist = a[..., :begin]
        top = hist.topk(min(self.k_prime, begin), dim=-1).values.sum(-1).mean()  # history concentration
        self.asi[s, layer] += (current * top).item()
        m = a.shape[-1]
        # column-wise variance over queries, averaged over keys, times m^2 so steps of different length weigh alike
        self.var[layer] += (a.var(dim=2, unbiased=False).mean(-1).mean(0) * m * m).double().cpu() / (
            self.schedule.num_steps - 1)


@torch.no_grad()
def calibrate(pipe, samples: int = 4, seed: int = 0, *, k_prime: int = K_PRIME, alpha: float = DEFAULT_ALPHA,
              num_drafters: int | None = None, batch_size: int = 8, precision: str = "fp32",
              progress: bool = False) -> Calibration:
    """Run ``samples`` full-cache samples (classes cycled, the pipeline's default sampling settings, in
    ``precision``; statistics in fp32) and classify layers and heads.

    ASI(l, s) = mean over current-map queries of the attention mass on the current map x mean of the sum of the
    top-K' attention weights on the history (K' = ``k_prime``), averaged over samples and the guidance-doubled
    batch; z-scored within each step; the ``num_drafters`` lowest per step are drafters (default
    max(1, round(depth/16)): the 2-3 of 32-40 layers of the released budgets).  Column variance per (layer, head):
    the variance over queries of each key's attention weight, averaged over keys, normalised by m^2 (m keys) and
    averaged over steps; the ``alpha`` fraction with the lowest variance are contextual heads.
    """
    require_scalewise(pipe.family)
    if samples < 1:
        raise ArvisionError(f"need at least one calibration sample, got {samples}")
    tr = pipe.transformer
    rec = _Recorder(tr, pipe.schedule, k_prime)
    num_classes = tr.cfg.num_classes
    g = torch.Generator(device=pipe.device).manual_seed(seed)
    done = 0
    while done < samples:
        b = min(batch_size, samples - done)
        labels = [(done + i) % num_classes for i in range(b)]
        pipe(labels, generator=g, output_type="tokens", precision=precision, kv_policy=rec, progress=progress)
        done += b
        rec.batches += 1
    asi = (rec.asi / rec.batches).float()
    var = (rec.var / rec.batches).float()
    nd = max(1, round(tr.cfg.depth / 16)) if num_drafters is None else num_drafters
    if not 0 <= nd < tr.cfg.depth:
        raise ArvisionError(f"num_drafters must be in [0, {tr.cfg.depth}), got {nd}")
    if not 0.0 <= alpha <= 1.0:
        raise ArvisionError(f"alpha (fraction of contextual heads) must be in [0, 1], got {alpha}")
    z, drafters, types = classify(asi, var, nd, alpha)
    return Calibration(tr.cfg.depth, tr.cfg.num_heads, pipe.schedule.num_steps, samples, seed, k_prime, alpha, nd,
                       asi.tolist(), z.tolist(), drafters, var.tolist(), types)
