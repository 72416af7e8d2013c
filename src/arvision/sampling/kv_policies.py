"""KV-cache policies for scale-wise (VAR) models: ScaleKV, HACK and a SnapKV baseline, plus their calibration.

A policy builds a :class:`CompressedCache` for ``SamplingRun``.  At step s (one scale map of n_s = h*w tokens)
each layer attends the step's queries to (kept history + the step's own keys), exactly as the full cache would
when nothing was dropped, and only AFTER that attention decides which of those keys/values to keep for later
steps.  The last step's keys are never stored (nothing reads them).

Layout.  Per layer, the heads are split into *groups*; a group holds one (B, H_g, m_g, hd) key tensor and one
value tensor, so every head of a group keeps the same number of positions (each head its own positions, gathered
per head, in ascending position order).  ScaleKV and SnapKV use one group of all heads; HACK uses two groups
(contextual heads, structural heads) with different budgets, attended separately and put back in head order.
Positions are baked into the keys (VAR adds absolute position embeddings at the input; l2-normalised k), so a
gathered cache stays valid.

Memory, both exact byte counts of tensors the cache object actually references:

* ``nbytes`` / ``peak_nbytes`` (*stored*): keys + values held for later steps, summed over layers and groups,
  after a layer's compression; the peak is the maximum over the run (reported as ``kv_cache_bytes``).
* ``transient_peak_nbytes``: the maximum, over (step, layer), of the stored bytes of all layers at that moment
  plus the (kept history + current step) key/value tensors the layer builds for its attention.  This is what
  must fit while a step runs; the full static cache's transient peak equals its size.

Policies (``parse_kv_policy`` specs):

* ``scalekv:B``  ScaleKV (Li et al. 2025) with B = kept fraction of the full cache (0 < B <= 1).  Per layer
  capacity B_u = B * L_full tokens; nothing is compressed while the cumulative length <= B_u.  At each later
  step the calibrated *drafter* layers keep their whole cache (capped so refiners keep at least the observation
  window) and the *refiners* share the rest equally, so that drafters + refiners = B_u * depth per step, as in
  the released budget files (the refiner budget then falls as the drafters' cumulative length grows: the
  released files' decay).  Selection: 16 observation queries at the centres of a 4x4 grid over the current map;
  scores = the attention logits q_W k^T * scale (the real post-norm q and k) summed over the window queries,
  window positions excluded, max-pooled along the keys (kernel 5), top (cap - |W|) plus the window.
* ``snapkv:B``   the same selection with the same capacity B_u in every layer (no drafters): the equal-memory
  baseline ScaleKV must beat.
* ``hack:R``     HACK (Qin et al. 2025) with R = compression ratio, the fraction REMOVED (hack:0.9 keeps 10%,
  like scalekv:0.1).  Heads are calibrated as contextual (low column-wise attention variance, a fraction alpha)
  or structural.  Budget per layer B_u = (1 - R) * L_full tokens per head on average, split asymmetrically:
  structural heads get ``STRUCTURAL_RATIO`` times the contextual budget, and never less than their protected set
  (the first two scales + the current scale), so at high compression HACK may hold more than B_u: measured,
  not hidden.  Scores: softmax attention of 32 queries of the current map (evenly spaced: no random draw, so the
  sampling noise is unchanged) summed per key.  Contextual heads keep the top-K; structural heads keep the
  protected set + the top-scored others.

Calibration (``arvision calibrate-kv``): ``arvision.sampling.kv_calibration``.  ScaleKV and HACK need it; without
one the spec parser raises an error that says to run ``arvision calibrate-kv`` (no on-the-fly calibration).
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
import torch.nn.functional as F

from arvision.errors import ArvisionError
from arvision.models.attention import KVCache, attend
from arvision.sampling.kv_calibration import CALIBRATION_FILE, Calibration, require_scalewise
from arvision.specs import parse_spec

WINDOW_GRID = 4  # ScaleKV: a 4x4 grid of observation queries
POOL_KERNEL = 5  # ScaleKV: max-pool kernel over the key axis
HACK_QUERIES = 32  # HACK: observation queries per step
STRUCTURAL_RATIO = 4.0  # HACK: structural budget / contextual budget (our choice: B_C << B_S)


# -- geometry ---------------------------------------------------------------------------------------------------
def window_positions(h: int, w: int) -> torch.Tensor:
    """Offsets (within an h x w map, row-major) of the centres of a 4x4 grid of patches; unique, ascending, <= 16.
    Patch side = ceil(side/4); row i starts at floor(i*side/4) (the official rule when 4 divides the side)."""
    def centres(n: int) -> list[int]:
        half = (math.ceil(n / WINDOW_GRID) - 1) // 2
        return sorted({min(n - 1, (i * n) // WINDOW_GRID + half) for i in range(WINDOW_GRID)})
    return torch.tensor([r * w + c for r in centres(h) for c in centres(w)], dtype=torch.long)


def sampled_queries(n: int, count: int = HACK_QUERIES) -> torch.Tensor:
    """``count`` evenly spaced query offsets in [0, n) (all of them when n <= count)."""
    if n <= count:
        return torch.arange(n)
    return torch.linspace(0, n - 1, count).round().long().unique()


# -- the compressed cache ---------------------------------------------------------------------------------------
class CompressedCache(KVCache):
    """Per layer, per head group: kept keys/values (B, H_g, m_g, hd), compressed after each step's attention by
    ``policy.keep(...)``.  See the module docstring for the memory definitions."""

    def __init__(self, policy, transformer, schedule, batch: int, dtype, device):
        cfg, sched = transformer.cfg, schedule
        self.policy, self.schedule = policy, sched
        self.step_of = {b: s for s, (b, _) in enumerate(sched.begin_ends)}
        self.groups = [policy.head_groups(layer, cfg.num_heads) for layer in range(cfg.depth)]  # [[heads (H_g,)]]
        empty = torch.empty(batch, 0, 0, cfg.head_dim, dtype=dtype, device=device)
        self.k = [[empty.new_empty(batch, len(h), 0, cfg.head_dim) for h in grp] for grp in self.groups]
        self.v = [[t.clone() for t in row] for row in self.k]
        self.pos = [[torch.empty(batch, len(h), 0, dtype=torch.long, device=device) for h in grp]
                    for grp in self.groups]  # kept absolute positions, for tests and inspection
        self.heads = cfg.num_heads
        self._peak = 0
        self.transient_peak_nbytes = 0

    @property
    def batch(self) -> int:
        return self.k[0][0].shape[0]

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for rows in (self.k, self.v) for row in rows for t in row)

    @property
    def peak_nbytes(self) -> int:
        return self._peak

    def attend(self, layer, begin, q, k, v, scale=None, mask=None, prefix=None):
        """As ``KVCache.attend``; a text prefix's keys/values (prefix text mode) are seen in full, outside the
        budget: they are not stored here, and the selection scores only the image keys."""
        if mask is not None:
            raise ArvisionError("compressed KV caches take whole scale steps (no speculative windows)")
        s = self.step_of.get(begin)
        if s is None:
            raise ArvisionError(f"position {begin} does not start a step: compressed caches need whole steps")
        last = s == self.schedule.num_steps - 1
        held = self.nbytes
        outs = []
        for g, heads in enumerate(self.groups[layer]):
            whole = len(heads) == self.heads
            qg, kg, vg = (q, k, v) if whole else (q[:, heads], k[:, heads], v[:, heads])
            pg = prefix if prefix is None or whole else (prefix[0][:, heads], prefix[1][:, heads], prefix[2])
            kk = torch.cat([self.k[layer][g], kg.to(self.k[layer][g].dtype)], dim=2)
            vv = torch.cat([self.v[layer][g], vg.to(self.v[layer][g].dtype)], dim=2)
            held += kk.numel() * kk.element_size() * 2
            qg = qg.to(kk.dtype)
            outs.append(attend(qg, kk, vv, scale, None, prefix=pg))
            if last:  # nothing reads the last step's keys: drop everything
                self.k[layer][g], self.v[layer][g] = kk[:, :, :0], vv[:, :, :0]
                self.pos[layer][g] = self.pos[layer][g][:, :, :0]
                continue
            n = k.shape[2]
            pos = torch.cat([self.pos[layer][g],
                             torch.arange(begin, begin + n, device=kk.device).expand(kk.shape[0], len(heads), n)], 2)
            idx = self.policy.keep(layer, s, g, qg, kk, scale, self.schedule)  # (B, H_g, m') ascending, or None
            if idx is None:
                self.k[layer][g], self.v[layer][g], self.pos[layer][g] = kk, vv, pos
            else:
                gi = idx[..., None].expand(-1, -1, -1, kk.shape[-1])
                self.k[layer][g], self.v[layer][g] = kk.gather(2, gi), vv.gather(2, gi)
                self.pos[layer][g] = pos.gather(2, idx)
        self.transient_peak_nbytes = max(self.transient_peak_nbytes, held)
        self._peak = max(self._peak, self.nbytes)
        if len(outs) == 1:
            return outs[0]
        out = torch.empty_like(q, dtype=outs[0].dtype)
        for heads, o in zip(self.groups[layer], outs):
            out[:, heads] = o
        return out

    def select(self, rows):
        self.k = [[t[rows] for t in row] for row in self.k]
        self.v = [[t[rows] for t in row] for row in self.v]
        self.pos = [[t[rows] for t in row] for row in self.pos]


# -- selection rules --------------------------------------------------------------------------------------------
def step_geometry(schedule, s: int):
    """(begin, h, w) of step s."""
    begin, _ = schedule.begin_ends[s]
    h, w = schedule.step_grids[s]
    return begin, h, w


def snap_select(q: torch.Tensor, k: torch.Tensor, scale, cap: int, schedule, s: int) -> torch.Tensor:
    """ScaleKV/SnapKV selection.  q (B, H, n, hd) of step s, k (B, H, m, hd) = kept history + step s (its n keys
    last) -> kept indices (B, H, cap) ascending: the observation window + the top (cap - |W|) max-pooled
    window scores."""
    begin, h, w = step_geometry(schedule, s)
    m, n = k.shape[2], q.shape[2]
    win = window_positions(h, w).to(q.device)  # offsets in the current map
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    scores = (q[:, :, win].float() @ k.float().transpose(-2, -1)).mul_(scale).sum(2)  # (B, H, m)
    cols = win + (m - n)
    scores[..., cols] = float("-inf")
    scores = F.max_pool1d(scores, POOL_KERNEL, stride=1, padding=POOL_KERNEL // 2)
    scores[..., cols] = float("-inf")  # pooling may spread a neighbour's score onto the window: it is kept anyway
    top = scores.topk(max(cap - len(win), 0), dim=-1).indices
    keep = torch.cat([top, cols.expand(*top.shape[:2], -1)], dim=-1)
    return keep.sort(dim=-1).values


class _BudgetPolicy:
    """Shared: the per-layer capacity B_u, and compression only once the cumulative length exceeds it."""

    name = "?"

    def __init__(self, budget: float):
        self.budget = budget

    def new_cache(self, transformer, schedule, batch, dtype, device):
        require_scalewise(transformer.family)
        self.prepare(transformer, schedule)
        return CompressedCache(self, transformer, schedule, batch, dtype, device)

    def prepare(self, transformer, schedule):
        self.capacity = max(1, int(self.budget * schedule.length))
        self.depth = transformer.cfg.depth

    def head_groups(self, layer: int, heads: int):
        return [torch.arange(heads)]

    def __repr__(self):
        return f"{self.name}:{self.budget:g}"


class SnapKV(_BudgetPolicy):
    """Uniform capacity ``budget * L_full`` per layer with ScaleKV's window selection (the equal-memory
    baseline)."""

    name = "snapkv"

    def cap(self, layer: int, s: int, length: int) -> int:
        return self.capacity

    def keep(self, layer, s, g, q, k, scale, schedule):
        end = schedule.begin_ends[s][1]
        if end <= self.capacity or k.shape[2] <= self.cap(layer, s, end):
            return None
        return snap_select(q, k, scale, self.cap(layer, s, end), schedule, s)


class ScaleKV(SnapKV):
    """ScaleKV: drafter layers keep (almost) their whole cache, refiners share the rest (per-step total
    ``budget * L_full * depth``)."""

    name = "scalekv"

    def __init__(self, budget: float, calibration: Calibration):
        super().__init__(budget)
        self.calibration = calibration

    def prepare(self, transformer, schedule):
        super().prepare(transformer, schedule)
        self.calibration.check(transformer, schedule)
        sched, total = schedule, self.capacity * self.depth
        self.caps = []  # caps[s][l]
        for s, (_, end) in enumerate(sched.begin_ends):
            drafters = self.calibration.drafters[s] if end > self.capacity else []
            nd, nr = len(drafters), self.depth - len(drafters)
            min_refiner = len(window_positions(*sched.step_grids[s]))
            # drafters take the cumulative length, but leave every refiner at least its observation window; a
            # budget too small for that leaves every layer its window alone (always kept: the floor of any cap)
            d_cap = max(min_refiner, min(end, (total - nr * min_refiner) // nd)) if nd else 0
            r_cap = max(min_refiner, (total - nd * d_cap) // nr) if nr else 0
            self.caps.append([d_cap if layer in drafters else r_cap for layer in range(self.depth)])

    def cap(self, layer, s, length):
        return self.caps[s][layer]


class HACK(_BudgetPolicy):
    """HACK: contextual heads (low column variance) keep few top-scored keys; structural heads keep the first two
    scales + the current scale + top-scored keys, with a larger budget.  ``ratio`` = fraction removed."""

    name = "hack"

    def __init__(self, ratio: float, calibration: Calibration):
        super().__init__(1.0 - ratio)
        self.ratio, self.calibration = ratio, calibration

    def __repr__(self):
        return f"hack:{self.ratio:g}"

    def prepare(self, transformer, schedule):
        super().prepare(transformer, schedule)
        self.calibration.check(transformer, schedule)
        self.types = self.calibration.head_types
        # per layer, per head group: is it the structural group (what keep() budgets and protects)
        self.structural = [[self.types[layer][int(heads[0])] != "contextual"
                            for heads in self.head_groups(layer, len(self.types[layer]))]
                           for layer in range(len(self.types))]

    def head_groups(self, layer, heads):
        ctx = [h for h in range(heads) if self.types[layer][h] == "contextual"]
        st = [h for h in range(heads) if self.types[layer][h] != "contextual"]
        return [torch.tensor(x, dtype=torch.long) for x in (ctx, st) if x]

    def budgets(self, layer: int, s: int, schedule) -> tuple[int, int]:
        """(contextual, structural) positions per head at step s: alpha*B_C + (1-alpha)*B_S = B_u, B_S = ratio*B_C,
        B_S >= the protected set (first two scales + current scale), B_S <= cumulative length."""
        H = len(self.types[layer])
        n_ctx = sum(t == "contextual" for t in self.types[layer])
        a = n_ctx / H
        end = schedule.begin_ends[s][1]
        protected = min(end, schedule.begin_ends[min(1, s)][1] + schedule.step_sizes[s])
        b_c = self.capacity / (a + (1 - a) * STRUCTURAL_RATIO)
        b_s = min(end, max(protected, round(STRUCTURAL_RATIO * b_c)))
        if a > 0:
            b_c = max(1, round((self.capacity - (1 - a) * b_s) / a))
        return min(end, int(b_c)), b_s

    def keep(self, layer, s, g, q, k, scale, schedule):
        end = schedule.begin_ends[s][1]
        if end <= self.capacity:
            return None
        structural = self.structural[layer][g]
        cap = self.budgets(layer, s, schedule)[1 if structural else 0]
        if k.shape[2] <= cap:
            return None
        n = q.shape[2]
        m = k.shape[2]
        scale = q.shape[-1] ** -0.5 if scale is None else scale
        qi = sampled_queries(n).to(q.device)
        scores = ((q[:, :, qi].float() @ k.float().transpose(-2, -1)) * scale).softmax(-1).sum(2)  # (B, H_g, m)
        if structural:
            # kept history is ascending by position, so the first two scales (never evicted) lead it
            first = schedule.begin_ends[min(1, s)][1] if s > 1 else 0
            first = min(first, m - n)
            scores[..., :first] = float("inf")
            scores[..., m - n:] = float("inf")
        return scores.topk(cap, dim=-1).indices.sort(dim=-1).values


# -- specs ------------------------------------------------------------------------------------------------------
def find_calibration(pipe) -> Calibration:
    """The pipeline's calibration: ``pipe.kv_calibration`` if set, else ``<model folder>/kv_calibration.json``."""
    calib = getattr(pipe, "kv_calibration", None)
    if calib is not None:
        return calib
    folder = getattr(pipe, "folder", None)
    if folder is not None and (Path(folder) / CALIBRATION_FILE).is_file():
        pipe.kv_calibration = Calibration.load(Path(folder) / CALIBRATION_FILE)
        return pipe.kv_calibration
    where = f"in {folder}" if folder is not None else "(this pipeline was not loaded from a folder)"
    raise ArvisionError(f"scalekv and hack need a layer/head calibration and found no {CALIBRATION_FILE} {where}: "
                        "run `arvision calibrate-kv MODEL --samples 4` first (or set pipe.kv_calibration)")


# name -> (its value, what the value means, its range, the range as a check); "full" and "none" take no value
POLICIES = {
    "scalekv": ("B", "the kept fraction of the full cache", "0 < B <= 1", lambda x: 0.0 < x <= 1.0),
    "snapkv": ("B", "the kept fraction", "0 < B <= 1", lambda x: 0.0 < x <= 1.0),
    "hack": ("R", "the compression ratio: the fraction removed", "0 <= R < 1", lambda x: 0.0 <= x < 1.0),
}
USAGE = {"full": "full", "none": "none",
         **{name: f"{name}:{v} ({meaning}, {bounds})" for name, (v, meaning, bounds, _) in POLICIES.items()}}


def parse_kv_policy(spec: str, pipe):
    """``scalekv:B`` | ``snapkv:B`` | ``hack:R`` | ``full`` -> a policy object (None for the full cache)."""
    s = parse_spec(spec, "KV-cache policy", USAGE)
    if s.name in ("full", "none"):
        return None  # a value after full/none was always ignored; still accepted
    symbol, meaning, bounds, ok = POLICIES[s.name]
    if len(s.args) != 1:
        s.fail(f"{s.name} needs a number after ':': {s.usage}")
    x = s.number(s.args[0], f"{symbol} ({meaning})", f"a number with {bounds}", ok)
    require_scalewise(pipe.family)
    if s.name == "snapkv":
        return SnapKV(x)
    calib = find_calibration(pipe)
    return ScaleKV(x, calib) if s.name == "scalekv" else HACK(x, calib)
