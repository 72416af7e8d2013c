"""Search controllers: what a search does between the steps of the one loop (``arvision.sampling.search``).

A controller says how many rows each label starts with (``initial``) and, after step s, which rows of each label's
group to keep, drop or repeat (``after_step`` -> (n, G') local indices, or None).  It reads the running images
through a ``SearchContext`` (scores, features), so it never touches the model, the cache or the generators.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from arvision.errors import ArvisionError

if TYPE_CHECKING:
    from arvision.sampling.search import SearchContext


# -- selection rules ----------------------------------------------------------------------------------------

def kmeans_medoids(x: torch.Tensor, k: int, iters: int = 30, seed: int = 0) -> torch.Tensor:
    """k-means (k-means++ start from ``seed``, Lloyd iterations) on x (G, F) -> (k,) int64 distinct row indices:
    per cluster the member nearest its centre.  Clusters left empty (identical points) are filled with the points
    farthest from those already chosen."""
    G = x.shape[0]
    if not 1 <= k <= G:
        raise ValueError(f"cannot pick {k} medoids from {G} points")
    if k == G:
        return torch.arange(G)
    x = x.double()
    gen = torch.Generator().manual_seed(seed)
    centres = x[torch.randint(G, (1,), generator=gen)]
    for _ in range(1, k):
        d2 = torch.cdist(x, centres).min(1).values.square()
        pick = torch.multinomial(d2, 1, generator=gen) if d2.sum() > 0 else torch.randint(G, (1,), generator=gen)
        centres = torch.cat([centres, x[pick]])
    for _ in range(iters):
        assign = torch.cdist(x, centres).argmin(1)
        new = torch.stack([x[assign == j].mean(0) if (assign == j).any() else centres[j] for j in range(k)])
        if torch.equal(new, centres):
            break
        centres = new
    assign = torch.cdist(x, centres).argmin(1)
    picks = []
    for j in range(k):
        members = (assign == j).nonzero()[:, 0]
        if len(members):
            picks.append(int(members[(x[members] - centres[j]).norm(dim=1).argmin()]))
    while len(picks) < k:
        rest = [i for i in range(G) if i not in picks]
        far = torch.cdist(x[rest], x[picks]).min(1).values.argmax()
        picks.append(rest[int(far)])
    return torch.tensor(picks)


def possible_candidates(scores: torch.Tensor, thr: float | None = None, group: int = 4) -> torch.Tensor:
    """GridAR's verdict from scores (n, G) (G a multiple of ``group``) -> (n, G) bool, True = "possible".

    thr given: possible iff score >= thr.  Otherwise possible iff score >= the mean of the finite scores of its
    group of ``group`` rows: on a 0/1 verifier this is exactly "score 1 is possible, 0 impossible" (a group of
    zeros is all possible, which ``propagate_possible`` treats like all impossible: nothing moves), and on a
    continuous score it drops the candidates below their group's average.  NaN is impossible."""
    s = scores.double().nan_to_num(nan=float("-inf"), posinf=float("inf"), neginf=float("-inf"))
    if thr is not None:
        return s >= thr
    n, G = s.shape
    g = s.view(n, G // group, group)
    finite = g.isfinite()
    mean = torch.where(finite, g, 0.0).sum(-1, keepdim=True) / finite.sum(-1, keepdim=True).clamp(min=1)
    return (g >= mean).view(n, G)


def propagate_possible(possible: torch.Tensor, group: int = 4) -> torch.Tensor:
    """GridAR's copy rule: possible (G,) bool -> (G,) int64 row indices.  Within each group of ``group`` rows, the
    k-th impossible row takes the (k mod p)-th of its group's p possible rows (in row order); possible rows keep
    their own index; a group without a possible row is left unchanged."""
    out = torch.arange(possible.shape[0])
    for base in range(0, possible.shape[0], group):
        ok = [base + i for i in range(group) if possible[base + i]]
        bad = [base + i for i in range(group) if not possible[base + i]]
        for k, dst in enumerate(bad if ok else ()):
            out[dst] = ok[k % len(ok)]
    return out


def potential_resample(scores: torch.Tensor, k: int, lam: float, generator: torch.Generator) -> torch.Tensor:
    """Draw k indices with replacement, probability ~ exp(lam * score) (scores (G,)); non-finite -> uniform."""
    w = (lam * (scores.double() - scores.double().max())).exp()
    if not torch.isfinite(w).all() or w.sum() <= 0:
        w = torch.ones_like(w)
    return torch.multinomial(w, k, replacement=True, generator=generator)


class SearchController:
    """Base: ``initial(S)`` rows per label; ``after_step(s, ctx)`` -> (n, G') rows to keep per label, or None.
    The last step's images are always scored and the best per label returned."""

    name = "search"
    in_place = False  # re-batching keeps the generator of a row selected at its own index (``SamplingRun.select``)

    def validate(self, num_steps: int) -> None:
        pass

    def check_model(self, schedule, family) -> None:
        """Raise ArvisionError if the controller cannot search a model of ``family`` on ``schedule``."""

    def initial(self, num_steps: int) -> int:
        raise NotImplementedError

    def after_step(self, s: int, ctx: SearchContext) -> torch.Tensor | None:
        return None

    def planned_batches(self, num_steps: int) -> list[int]:
        """Rows per label at each step (what ``SearchResult.batches`` will show divided by the label count)."""
        return [self.initial(num_steps)] * num_steps


def _positive(name: str, value, kind=int):
    if not isinstance(value, kind) or isinstance(value, bool) or value <= 0:
        raise ArvisionError(f"{name} must be a positive {kind.__name__}, got {value!r}")
    return value


def _check_steps(name: str, steps, num_steps: int) -> None:
    bad = [s for s in steps if not 0 <= s <= num_steps - 2]
    if bad:
        raise ArvisionError(f"{name} steps {bad} out of range: this model has {num_steps} steps; selection steps "
                            f"are 0..{num_steps - 2} (the last step's images are always scored)")


def default_scoring_steps(num_steps: int) -> tuple[int, ...]:
    """Beam/lookahead scoring steps.  Scale-wise schedules (<= 16 steps): from TTS-VAR's first resampling position
    (step 6 of 13, scaled) to the second-to-last step -- scores of coarser canvases barely predict the final score
    (TTS-VAR uses no reward there; ``bench/search_eval.py`` measures the rank correlation), so pruning on them only
    throws candidates away.  Long (raster) schedules: at the quarters (GridAR's stages)."""
    if num_steps <= 16:
        return tuple(range(max(1, int(6 * num_steps / 13 + 0.5)), num_steps - 1))
    return tuple(sorted({num_steps * q // 4 - 1 for q in (1, 2, 3)}))


@dataclass
class BestOfN(SearchController):
    """N independent samples per label; the verifier's best final image."""

    n: int
    name = "bon"

    def __post_init__(self):
        _positive("best-of-N's N", self.n)

    def initial(self, num_steps: int) -> int:
        return self.n

    def spec(self) -> str:
        return f"bon:{self.n}"


@dataclass
class BeamSearch(SearchController):
    """Beam search over steps: width*expand rows per label; after each of ``steps`` the verifier scores the partial
    images, the best ``width`` rows are kept and each is repeated ``expand`` times (the repeats diverge through
    their forked generators).  Same token forwards as best-of-(width*expand)."""

    width: int
    expand: int = 2
    steps: tuple[int, ...] | None = None  # None: default_scoring_steps
    lookahead = False
    name = "beam"

    def __post_init__(self):
        _positive(f"{self.name} width", self.width)
        _positive(f"{self.name} expand", self.expand)
        if self.steps is not None:
            self.steps = tuple(sorted({int(s) for s in self.steps}))

    def scoring_steps(self, num_steps: int) -> tuple[int, ...]:
        return default_scoring_steps(num_steps) if self.steps is None else self.steps

    def validate(self, num_steps: int) -> None:
        _check_steps(self.name, self.scoring_steps(num_steps), num_steps)

    def initial(self, num_steps: int) -> int:
        return self.width * self.expand

    def after_step(self, s: int, ctx: SearchContext) -> torch.Tensor | None:
        if s not in self.scoring_steps(ctx.run.schedule.num_steps):
            return None
        top = ctx.scores(self.lookahead).topk(self.width, dim=1).indices  # (n, width), best first
        return top.repeat_interleave(self.expand, dim=1)

    def spec(self) -> str:
        steps = "" if self.steps is None else ",steps=" + "/".join(map(str, self.steps))
        return f"{self.name}:{self.width},expand={self.expand}{steps}"


@dataclass
class Lookahead(BeamSearch):
    """Beam search whose partial images are greedy roll-outs to the end (top-1 at every remaining step, on a copy
    of the run): the verifier judges a complete image at every scoring step.  The roll-outs' token forwards are
    counted."""

    name = "lookahead"
    lookahead = True


_TTS_EVENTS = (2, 5, 6, 9)  # TTS-VAR's clustering (2, 5) and resampling (6, 9) scales of Infinity's 13
_TTS_RATIOS = (0.75, 0.5, 0.25, 0.125)  # its batch after each event, over the starting batch (8 -> 6, 4, 2, 1)


@dataclass
class TTSVAR(SearchController):
    """TTS-VAR: a descending batch schedule, clustering for diversity at coarse steps, resampling by the potential
    exp(lam * score) at finer steps.

    n: the starting batch per label.  schedule: the batch per label after each step (length S; changes only at
    cluster/resample steps; clustering only shrinks).  Defaults, scaled from TTS-VAR's 13 scales to S steps:
    cluster after steps round(S * (2, 5)/13), resample after round(S * (6, 9)/13) (6 scales: cluster 1, 2;
    resample 3, 4), the batch shrinking to 3/4, 1/2, 1/4, 1/8 of n at those events (n=8: 8, 8, 6, 4, 2, 1), lam 10.
    """

    n: int | None = None  # None: schedule[0], or 8 without a schedule
    lam: float = 10.0
    cluster: tuple[int, ...] | None = None
    resample: tuple[int, ...] | None = None
    schedule: tuple[int, ...] | None = None
    name = "tts-var"

    def __post_init__(self):
        if self.schedule is not None:
            self.schedule = tuple(int(b) for b in self.schedule)
            if not self.schedule or min(self.schedule) < 1:
                raise ArvisionError(f"tts-var schedule must be positive batch sizes, got {self.schedule}")
            self.n = self.schedule[0] if self.n is None else self.n
        self.n = 8 if self.n is None else self.n
        _positive("tts-var's N", self.n)
        if not isinstance(self.lam, (int, float)) or self.lam < 0:
            raise ArvisionError(f"tts-var lam must be >= 0, got {self.lam!r}")
        for name in ("cluster", "resample"):
            if getattr(self, name) is not None:
                setattr(self, name, tuple(sorted({int(s) for s in getattr(self, name)})))

    def events(self, num_steps: int) -> tuple[tuple[int, ...], tuple[int, ...]]:
        """(cluster steps, resample steps)."""
        last = max(num_steps - 2, 0)
        at = [min(max(int(e * num_steps / 13 + 0.5), 0 if num_steps < 3 else 1), last) for e in _TTS_EVENTS]
        resample = self.resample if self.resample is not None else tuple(sorted(set(at[2:])))
        cluster = self.cluster if self.cluster is not None else tuple(sorted(set(at[:2]) - set(resample)))
        return cluster, resample

    def batches(self, num_steps: int) -> tuple[int, ...]:
        """Batch per label after each step."""
        if self.schedule is not None:
            return self.schedule
        cluster, resample = self.events(num_steps)
        events = sorted(set(cluster) | set(resample))
        ratios = _TTS_RATIOS[-len(events):] if events else ()
        out, b = [], self.n
        targets = {s: max(1, int(self.n * r + 0.5)) for s, r in zip(events, ratios)}
        for s in range(num_steps):
            b = targets.get(s, b)
            out.append(b)
        return tuple(out)

    def validate(self, num_steps: int) -> None:
        cluster, resample = self.events(num_steps)
        _check_steps("tts-var cluster", cluster, num_steps)
        _check_steps("tts-var resample", resample, num_steps)
        if set(cluster) & set(resample):
            raise ArvisionError(f"tts-var: steps {sorted(set(cluster) & set(resample))} are both cluster and "
                                "resample steps")
        sched = self.batches(num_steps)
        if len(sched) != num_steps:
            raise ArvisionError(f"tts-var schedule has {len(sched)} entries; this model has {num_steps} steps "
                                "(one batch size per step)")
        prev = self.n
        for s, b in enumerate(sched):
            if b != prev and s not in cluster and s not in resample:
                raise ArvisionError(f"tts-var schedule changes the batch at step {s} ({prev} -> {b}), which is "
                                    f"neither a cluster step {cluster} nor a resample step {resample}")
            if s in cluster and b > prev:
                raise ArvisionError(f"tts-var clustering at step {s} cannot grow the batch ({prev} -> {b})")
            prev = b

    def initial(self, num_steps: int) -> int:
        return self.n

    def planned_batches(self, num_steps: int) -> list[int]:
        sched = self.batches(num_steps)
        return [self.n, *sched[:-1]]

    def after_step(self, s: int, ctx: SearchContext) -> torch.Tensor | None:
        S = ctx.run.schedule.num_steps
        cluster, resample = self.events(S)
        k = self.batches(S)[s]
        if s in cluster:
            if k == ctx.group:
                return None
            feats = ctx.features()
            return torch.stack([kmeans_medoids(feats[i], k) for i in range(ctx.n)])
        if s in resample:
            scores = ctx.scores()
            return torch.stack([potential_resample(scores[i], k, self.lam, ctx.selection_generators[i])
                                for i in range(ctx.n)])
        return None

    def spec(self) -> str:
        return f"tts-var:{self.n},lam={self.lam:g}"


GRIDAR_GROUP = 4  # GridAR judges and copies candidates in groups of 4 (its verifier reads a grid of 4)


@dataclass
class GridAR(SearchController):
    """GridAR (Park et al., "Progress by Pieces", CVPR 2026) for raster models, without its prompt reformulation.

    n candidates per label (a multiple of 4).  After the first ``stages`` quarters of the token rows (default
    (1, 2): after 1/4 and 1/2 of the rows, the released ``gridar_two_step``) the partial images -- the unknown rows
    filled by repeating the known ones -- are scored; each candidate is called possible or impossible
    (:func:`possible_candidates`: score >= thr, or without thr >= its group's mean) and every impossible one is
    overwritten by a copy of a possible one of its group of 4, round-robin (:func:`propagate_possible`); the copies
    continue from the copied prefix with forked generators, the possible rows with their own.  The best final
    image is returned.  Same token forwards as best-of-n; more verifier and decoder calls.
    """

    n: int = 4
    thr: float | None = None
    stages: tuple[int, ...] = (1, 2)
    name = "gridar"
    in_place = True

    def __post_init__(self):
        _positive("gridar's N", self.n)
        if self.n % GRIDAR_GROUP:
            raise ArvisionError(f"gridar's N must be a multiple of {GRIDAR_GROUP} (candidates are judged and copied "
                                f"in groups of {GRIDAR_GROUP}, as in GridAR), got {self.n}")
        if self.thr is not None and (isinstance(self.thr, bool) or not isinstance(self.thr, (int, float))
                                     or self.thr != self.thr):
            raise ArvisionError(f"gridar thr must be a number, got {self.thr!r}")
        stages = tuple(sorted({int(q) for q in self.stages}))
        if not stages or not set(stages) <= {1, 2, 3}:
            raise ArvisionError(f"gridar stages are quarters of the token rows, among 1/2/3, got {self.stages}")
        self.stages = stages

    def check_model(self, schedule, family) -> None:
        if not family.capabilities.row_prefixes:
            raise ArvisionError(f"gridar searches raster models (one token per step, row by row); "
                                f"{family.description} models predict whole maps per step ({schedule.describe()}): "
                                "use bon, beam, lookahead or tts-var")
        self.stage_steps(schedule)

    def stage_steps(self, schedule) -> dict[int, int]:
        """{step after which a stage is judged: the token rows known then}: rows floor(h * q / 4) of the h rows for
        each quarter q in ``stages``."""
        h, w = schedule.image_grid
        rows = [h * q // 4 for q in self.stages]
        if rows[0] < 1 or len(set(rows)) < len(rows):
            raise ArvisionError(f"gridar stages {'/'.join(map(str, self.stages))} (quarters of the token rows) fall "
                                f"after {'/'.join(map(str, rows))} of this model's {h} rows: each stage needs a row "
                                "of its own (a grid of 4 or more rows fits every stage)")
        ends = {end: s for s, (_, end) in enumerate(schedule.begin_ends)}
        return {ends[r * w]: r for r in rows}

    def initial(self, num_steps: int) -> int:
        return self.n

    def after_step(self, s: int, ctx: SearchContext) -> torch.Tensor | None:
        if s not in self.stage_steps(ctx.run.schedule):
            return None
        possible = possible_candidates(ctx.scores(), self.thr, GRIDAR_GROUP)
        local = torch.stack([propagate_possible(p, GRIDAR_GROUP) for p in possible])
        return None if torch.equal(local, torch.arange(ctx.group).expand_as(local)) else local

    def spec(self) -> str:
        thr = "" if self.thr is None else f",thr={self.thr:g}"
        return f"gridar:{self.n}{thr},stages={'/'.join(map(str, self.stages))}"
