"""Test-time search on the one sampler: best-of-N, beam search over steps, lookahead, TTS-VAR, GridAR.

A controller drives one ``SamplingRun`` step by step.  Between steps it may score the running images with a verifier
(``arvision.sampling.verifiers``) and re-batch the run with ``run.select(rows)``: rows kept, dropped or repeated
(repeats draw from forked generators, so they diverge and stay reproducible).  Every label's candidates are a
contiguous group of rows; all groups share the batch, so one trunk forward serves the whole search.

    res = search_generate(BeamSearch(4), transformer, inputs, condition, options, generators, verifier)
    res.tokens        # (n, L): the chosen sequence per label
    res.cost          # token forwards, verifier and decoder calls

Compute is counted in token forwards: rows x positions through the trunk, the doubled guidance batch and the
greedy roll-outs of lookahead included (``SamplingRun.token_forwards``), plus verifier calls (images scored or
featurised) and decoder calls (images decoded for the verifier).  One plain sample costs L (x2 with guidance).

Controllers and their spec strings (``parse_search``; NAME[:N][,key=value...], lists with '/'):

* ``bon:N``                           N candidates per label, the verifier's best final image;
* ``beam:W[,expand=E,steps=a/b]``     W*E rows per label; after each scoring step keep the W best partial images
                                      and repeat each E times; the best final image;
* ``lookahead:W[,expand=E,steps=..]`` beam search whose partial images are greedy roll-outs to the last step;
* ``tts-var[:N][,lam=L,cluster=a/b,resample=c/d,schedule=n0/n1/...]``  TTS-VAR: a batch of N per label that
  shrinks over the steps; at ``cluster`` steps k-means on features of the coarse partial images keeps the member
  nearest each centre (diversity, no reward); at ``resample`` steps rows are drawn with replacement with
  probability ~ exp(lam * score).  ``schedule[s]`` is the batch per label after step s;
* ``gridar[:N][,thr=T,stages=1/2]``   raster models: N candidates per label (a multiple of 4); after 1/4 and 1/2 of
  the token rows each candidate whose partial image scores below its group-of-4 mean (or below T) is replaced by a
  copy of one that does not, round-robin within the group; the best final image.
"""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass, field

import torch

from arvision.conditions import Condition
from arvision.errors import ArvisionError
from arvision.progress import progress as progress_of
from arvision.sampling.controllers import (  # noqa: F401 - the controllers are part of this module's API
    TTSVAR,
    BeamSearch,
    BestOfN,
    GridAR,
    Lookahead,
    SearchController,
    default_scoring_steps,
    kmeans_medoids,
    possible_candidates,
    potential_resample,
    propagate_possible,
)
from arvision.sampling.loop import LoopResult, SamplingOptions, SamplingRun, fork_generator
from arvision.sampling.verifiers import verifier_features
from arvision.specs import Spec, parse_spec

SELECTION_KEY = -1
"""``fork_generator`` key of a label's selection generator (TTS-VAR resampling draws); repeats use keys >= 1."""


# -- compute accounting ---------------------------------------------------------------------------------

@dataclass
class SearchCost:
    """What a search spent.  ``token_forwards`` includes ``rollout_token_forwards``."""

    token_forwards: int = 0  # rows x positions through the trunk, doubled guidance batch included
    forwards: int = 0  # trunk forward passes
    rollout_token_forwards: int = 0  # the part spent on lookahead roll-outs
    verifier_calls: int = 0  # images scored or featurised by the verifier
    decoder_calls: int = 0  # images decoded for the verifier (the returned images' decode not counted)
    plain_token_forwards: int = 0  # what plain sampling of the same labels costs

    @property
    def plain_equivalents(self) -> float:
        """Token forwards in units of one plain sample per label."""
        return self.token_forwards / max(self.plain_token_forwards, 1)

    def as_dict(self) -> dict:
        return {**dataclasses.asdict(self), "plain_equivalents": round(self.plain_equivalents, 4)}

    def add(self, other: SearchCost) -> None:
        for f in dataclasses.fields(self):
            setattr(self, f.name, getattr(self, f.name) + getattr(other, f.name))


@dataclass
class SearchResult(LoopResult):
    scores: torch.Tensor | None = None  # (n,) the verifier's score of each chosen final image
    cost: SearchCost = field(default_factory=SearchCost)
    batches: list[int] = field(default_factory=list)  # rows through the trunk at each step (all labels)


# -- randomness --------------------------------------------------------------------------------------------

def per_label_generators(generator, n: int, device) -> list[torch.Generator]:
    """One generator per label.  A list passes through; a single generator (or None: torch's global RNG) seeds n
    new ones, so the search can fork every label's stream independently of the others."""
    if isinstance(generator, (list, tuple)):
        if len(generator) != n:
            raise ArvisionError(f"got {len(generator)} generators for {n} labels; give one per label")
        return list(generator)
    seeds = torch.randint(0, 2**62, (n,), generator=generator,
                          device=generator.device if generator is not None else "cpu").tolist()
    return [torch.Generator(device=device).manual_seed(s) for s in seeds]


def candidate_generators(generator: torch.Generator, n: int) -> list[torch.Generator]:
    """The generators of a label's n initial candidates: the label's own, then ``fork_generator(g, k)`` for
    k = 1..n-1 -- what ``SamplingRun.select`` gives n repeats of one row.  Plain sampling with these generators
    draws exactly the candidates best-of-n chooses from."""
    return [generator] + [fork_generator(generator, k) for k in range(1, n)]


# -- partial images ---------------------------------------------------------------------------------------

def partial_decode(run: SamplingRun) -> torch.Tensor:
    """The running images after the last step taken -> (B, 3, H, W) fp32 in [-1, 1]: the input builder's preview
    (VAR: the decoded canvas f_hat, the sum of the upsampled residuals so far; FlexVAR: the last scale; raster: the
    tokens so far, the unknown positions filled by repeating the known prefix)."""
    if run.s == 0:
        raise ArvisionError("nothing to decode before the first step")
    with run.fp32():
        return run.inputs.preview(run.state, run.tokens, run.s).float()


def clone_run(run: SamplingRun) -> SamplingRun:
    """An independent copy of a started run (own cache, canvas, tokens); the original is untouched."""
    other = copy.copy(run)
    other.cache = copy.copy(run.cache)
    other.plugins = dict(run.plugins)
    other.select(torch.arange(run.batch, device=run.device))
    return other


def rollout_decode(run: SamplingRun) -> tuple[torch.Tensor, SearchCost]:
    """Greedy roll-out (top-1 token at every remaining step) of a copy of ``run`` -> (images (B, 3, H, W) in
    [-1, 1], its cost).  The run's own cache, canvas and generators are not touched, so the search continues
    exactly as if no roll-out happened (only the scores differ)."""
    other = clone_run(run)
    other.generator = torch.Generator(device=run.device).manual_seed(0)  # top-1: the draw has one choice
    other.options = dataclasses.replace(run.options, tokens=dataclasses.replace(run.options.tokens, top_k=1, top_p=0.0),
                                        more_smooth=False)
    other.finish()
    spent = SearchCost(token_forwards=other.token_forwards - run.token_forwards,
                       forwards=other.forwards - run.forwards)
    spent.rollout_token_forwards = spent.token_forwards
    return partial_decode(other), spent


# -- the search loop -------------------------------------------------------------------------------------

class SearchContext:
    """What a controller sees between steps: the run, grouped by label (n groups of ``group`` rows)."""

    def __init__(self, run: SamplingRun, verifier, n: int, selection_generators: list[torch.Generator],
                 cost: SearchCost):
        self.run, self.verifier, self.n = run, verifier, n
        self.selection_generators, self.cost = selection_generators, cost

    @property
    def group(self) -> int:
        return self.run.batch // self.n

    def images(self, lookahead: bool = False) -> torch.Tensor:
        """Partial (or, with lookahead, rolled-out) images of every row, (n * group, 3, H, W) in [-1, 1]."""
        if lookahead and not self.run.done:
            images, spent = rollout_decode(self.run)
            self.cost.add(spent)
        else:
            images = partial_decode(self.run)
        self.cost.decoder_calls += images.shape[0]
        return images

    def scores(self, lookahead: bool = False) -> torch.Tensor:
        """The verifier's scores of the running images, (n, group) fp32."""
        images = self.images(lookahead)
        scores = torch.as_tensor(self.verifier(images, self.run.labels)).float().cpu()
        if scores.shape != (images.shape[0],):
            raise ArvisionError(f"the verifier returned shape {tuple(scores.shape)} for {images.shape[0]} images; "
                                "expected one score per image")
        self.cost.verifier_calls += images.shape[0]
        return scores.view(self.n, self.group)

    def features(self) -> torch.Tensor:
        """Features of the running images for clustering, (n, group, F)."""
        feats = verifier_features(self.verifier, self.images())
        self.cost.verifier_calls += feats.shape[0]
        return feats.view(self.n, self.group, -1)

    def reselect(self, local: torch.Tensor, in_place: bool = False) -> None:
        """local (n, G') row indices within each label's group -> re-batch the run to n * G' rows (in_place:
        ``SamplingRun.select``'s)."""
        local = torch.as_tensor(local, dtype=torch.long)
        offsets = torch.arange(self.n)[:, None] * self.group
        self.run.select((local + offsets).flatten(), in_place=in_place)


# -- spec strings ----------------------------------------------------------------------------------------

SEARCHES = {"bon": "bon:N", "beam": "beam:W[,expand=E,steps=a/b/..]", "lookahead": "lookahead:W[,expand=E,steps=..]",
            "tts-var": "tts-var[:N][,lam=L,cluster=a/b,resample=c/d,schedule=n0/n1/..]",
            "gridar": "gridar[:N][,thr=T,stages=1/2]"}
SEARCH_HELP = " | ".join(SEARCHES.values())

# name -> its options, each with the Spec helper that reads its value
_OPTIONS = {
    "bon": {},
    "beam": {"expand": Spec.integer, "steps": Spec.integers},
    "lookahead": {"expand": Spec.integer, "steps": Spec.integers},
    "tts-var": {"lam": Spec.number, "cluster": Spec.integers, "resample": Spec.integers, "schedule": Spec.integers},
    "gridar": {"thr": Spec.number, "stages": Spec.integers},
}


def parse_search(spec) -> SearchController:
    """A spec string (see the module docstring) or a controller -> a controller.  Errors say what is allowed."""
    if isinstance(spec, SearchController):
        return spec
    if not isinstance(spec, str) or not spec.strip():
        raise ArvisionError(f"search must be a spec string ({SEARCH_HELP}) or a controller, got {spec!r}")
    s = parse_spec(spec, "search", SEARCHES, _OPTIONS)
    s.max_args(1)
    count = s.integer(s.args[0], f"{s.name}'s count") if s.args else None
    options = {key: _OPTIONS[s.name][key](s, value, key) for key, value in s.options.items()}
    if s.name == "bon":
        if count is None:
            raise ArvisionError(f"best-of-N needs its N, e.g. 'bon:8' (got {spec!r})")
        return BestOfN(count)
    if s.name in ("beam", "lookahead"):
        if count is None:
            raise ArvisionError(f"{s.name} search needs its width, e.g. '{s.name}:4' (got {spec!r})")
        return (BeamSearch if s.name == "beam" else Lookahead)(count, **options)
    if s.name == "gridar":
        return GridAR(4 if count is None else count, **options)
    return TTSVAR(count, **options)


# -- driver ------------------------------------------------------------------------------------------------

@torch.no_grad()
def search_generate(controller, transformer, inputs, condition: Condition, options: SamplingOptions, generator,
                    verifier, progress: bool = False, on_step=None) -> SearchResult:
    """Search for one image per condition row (n,), with the settings of ``loop.generate``.

    generator: one per label (each label's search then depends only on its own generator), or one generator
    (seeds one per label), or None.  verifier: callable(images (B, 3, H, W) in [-1, 1], labels (B,)) -> (B,).
    Returns the chosen tokens (n, L) and final state (VAR canvas) per label, their verifier scores, the cost and
    the rows per step.
    """
    controller = parse_search(controller)
    n = condition.batch
    S = inputs.schedule.num_steps
    controller.validate(S)
    controller.check_model(inputs.schedule, transformer.family)
    gens = per_label_generators(generator, n, condition.device)
    selection = [fork_generator(g, SELECTION_KEY) for g in gens]
    G0 = controller.initial(S)
    rows_gens = [c for g in gens for c in candidate_generators(g, G0)]
    rows = torch.arange(n, device=condition.device).repeat_interleave(G0)
    run = SamplingRun(transformer, inputs, condition.select(rows), options, rows_gens)
    # a plain call's token forwards: every step's outputs (one per token, but a masked model re-runs the whole map)
    plain = sum(end - begin for begin, end in inputs.schedule.begin_ends)
    cost = SearchCost(plain_token_forwards=n * plain * (2 if options.guidance.doubles_batch else 1))
    ctx = SearchContext(run, verifier, n, selection, cost)
    batches, peak = [], 0
    with run.context():
        run.start()
        for s in progress_of(range(S), desc=f"search {getattr(controller, 'name', '')}", leave=False,
                             disable=not progress, lines=False):
            batches.append(run.batch)
            run.step(on_step)
            peak = max(peak, run.cache.peak_nbytes)
            if s < S - 1:
                local = controller.after_step(s, ctx)
                if local is not None:
                    ctx.reselect(local, controller.in_place)
        final = ctx.scores()
        best = final.argmax(1)
        ctx.reselect(best[:, None])
    cost.token_forwards += run.token_forwards
    cost.forwards += run.forwards
    return SearchResult(run.tokens, run.state, peak, cost.forwards, cost.token_forwards,
                        scores=final.gather(1, best[:, None])[:, 0], cost=cost, batches=batches)


class SearchSampler:
    """``loop.generate``'s signature for a search (what ``ARPipeline.__call__(search=...)`` runs per batch)."""

    def __init__(self, controller: SearchController, verifier):
        self.controller, self.verifier = controller, verifier

    @classmethod
    def for_pipeline(cls, pipe, search, verifier, options: SamplingOptions,
                     return_progression: bool = False) -> SearchSampler:
        """Validate the pipeline call's options and build the sampler (spec strings parsed)."""
        from arvision.sampling.verifiers import resolve_verifier

        if search is None:
            raise ArvisionError("a verifier is only used by a search: pass search=... (e.g. 'bon:8') as well")
        if options.decoding is not None:
            raise ArvisionError("search runs one step per forward; it cannot be combined with a decoding policy")
        if options.override is not None:
            raise ArvisionError("search cannot be combined with a token override yet (the override's per-image "
                                "source would have to follow the re-batching)")
        if return_progression:
            raise ArvisionError("the coarse-to-fine progression is not recorded during a search (its batch changes)")
        controller = parse_search(search)
        controller.validate(pipe.schedule.num_steps)
        controller.check_model(pipe.schedule, pipe.family)
        return cls(controller, resolve_verifier(verifier, pipe.config.num_classes))

    def __call__(self, transformer, inputs, condition: Condition, options: SamplingOptions, generator=None,
                 progress=False, on_step=None) -> SearchResult:
        return search_generate(self.controller, transformer, inputs, condition, options, generator, self.verifier,
                               progress, on_step)

    def record(self, stats: dict, res: SearchResult) -> None:
        """Add one batch's search cost and scores to a pipeline's ``stats``."""
        total = stats.setdefault("search", {"spec": self.controller.spec()})
        for key, value in dataclasses.asdict(res.cost).items():
            total[key] = total.get(key, 0) + value
        total["plain_equivalents"] = round(total["token_forwards"] / max(total["plain_token_forwards"], 1), 4)
        stats.setdefault("search_scores", []).extend(res.scores.tolist())
