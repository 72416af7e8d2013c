"""The one generation loop, for every family.

for each step s: build the input from the state -> trunk step with the KV cache -> logits -> guidance ->
``head.choose`` (processors, filters, the draw, forced tokens) -> update the state.  Families differ only in the
parts plugged in (input builder, embedder, head, guidance rule).  Methods plug in as options of
:class:`SamplingOptions`, never as a second loop:

* ``processors``  extra logits processors after guidance, before temperature/top-k/top-p (watermark bias);
* ``override``    forced tokens where an edit keeps the source (in-/out-painting, class editing);
* ``kv_policy``   the cache layout (full static cache, or a compressed one: ScaleKV, HACK);
* ``decoding``    how raster steps are taken (one token per forward, or speculative Jacobi windows);
* search controllers drive a run step by step and re-batch it (``select``) between steps.
"""

from __future__ import annotations

import hashlib
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Protocol

import torch

from arvision.conditions import Condition
from arvision.progress import progress as progress_of
from arvision.sampling.processors import Generators, Guidance, TokenSampling


class LogitsProcessor(Protocol):
    def __call__(self, logits: torch.Tensor, s: int, run: SamplingRun) -> torch.Tensor:
        """Guided logits (B, n, V) fp32 of step s -> new logits (B, n, V)."""


class TokenOverride(Protocol):
    def forced(self, s: int, run: SamplingRun) -> tuple[torch.Tensor, torch.Tensor] | None:
        """Step s -> (ids (B, n_s) int64, keep (B, n_s) bool): where keep is True the step takes ids instead of
        its draw; None: nothing forced at this step."""


@dataclass(frozen=True)
class SamplingOptions:
    """How one call samples, resolved (``ARPipeline.sampling_options`` fills the model's defaults).

    guidance: the rule combining [cond; uncond] logits per step; tokens: temperature / top-k / top-p and the draw;
    more_smooth: VAR's Gumbel soft codes as the next input; dtype: the trunk's compute precision (fp32 = exact);
    processors, override, kv_policy, decoding: the loop's options (module docstring)."""

    guidance: Guidance
    tokens: TokenSampling
    more_smooth: bool = False
    dtype: torch.dtype = torch.float32
    processors: tuple = field(default=())
    override: TokenOverride | None = None
    kv_policy: object = None
    decoding: object = None


def fork_generator(generator: torch.Generator, key: int) -> torch.Generator:
    """A new generator seeded from ``generator``'s current state and ``key``, without drawing from it.

    Deterministic (same state and key -> same stream) and independent of the parent's future draws: how a
    re-batched image's repeats get their own randomness (``SamplingRun.select``)."""
    state = generator.get_state().cpu().numpy().tobytes()
    seed = int.from_bytes(hashlib.sha256(state + int(key).to_bytes(8, "little", signed=True)).digest()[:8], "little")
    return torch.Generator(device=generator.device).manual_seed(seed >> 1)


@dataclass
class LoopResult:
    tokens: torch.Tensor  # (B, L) int64, schedule order; (B, L, C) fp32 for continuous tokens (``head.token_dims``)
    state: object  # the input builder's final state (VAR: canvas f_hat)
    kv_cache_bytes: int = 0  # the most bytes the KV cache held at any time
    forwards: int = 0  # transformer forward passes (one per step for plain decoding)
    token_forwards: int = 0  # rows x positions through the trunk, doubled batch included (compute measure)
    kv_transient_bytes: int = 0  # the most KV bytes alive during a step's attention (a compressed cache's history
    # plus the step's own keys/values; the full static cache: its size)


class SamplingRun:
    """One batch in flight: the KV cache, the state, the tokens so far and the randomness, stepped by ``step``.

    Use inside ``with run.context():`` (the precision context) after ``start()``.  ``generate`` does all of it;
    search controllers and decoding policies drive the same object.  ``inputs`` (an input builder) carries the
    schedule of this call; ``condition`` has one row per image.
    """

    def __init__(self, transformer, inputs, condition: Condition, options: SamplingOptions,
                 generator: Generators = None):
        if isinstance(generator, (list, tuple)) and len(generator) != condition.batch:
            raise ValueError(f"got {len(generator)} generators for a batch of {condition.batch} images")
        self.transformer, self.inputs, self.schedule = transformer, inputs, inputs.schedule
        self.condition, self.options = condition, options
        self.generator = list(generator) if isinstance(generator, (list, tuple)) else generator
        self.device = condition.device
        # One autocast context around the whole loop: autocast keeps its cast copy of each fp32 weight until the
        # outermost context exits, so the weights are cast once per call, not once per step.  The parts outside
        # the trunk (guidance, filters, the draw, the state) run with autocast switched off, in fp32.
        # Weights already in the sampling dtype (``pipe.to(dtype=...)``) need no autocast, which would only add
        # a dispatch layer to every small op of every step.
        self.dtype = options.dtype
        self.mixed = self.dtype != torch.float32 and transformer.reference_weight.dtype != self.dtype
        self.forwards = self.token_forwards = 0
        self.s = 0  # the next step
        self.plugins: dict = {}  # per-run state of options (``slot``)

    # -- set-up --------------------------------------------------------------------------------------
    @property
    def batch(self) -> int:
        return self.condition.batch

    @property
    def labels(self) -> torch.Tensor:
        """What the condition's rows hold (class ids for class conditions): what verifiers score against."""
        return self.condition.values

    @property
    def doubled(self) -> bool:
        return self.options.guidance.doubles_batch

    @property
    def processors(self) -> tuple:
        return self.options.processors

    @property
    def override(self):
        return self.options.override

    @property
    def kv_policy(self):
        return self.options.kv_policy

    def slot(self, owner, factory):
        """Per-run state of an option object ``owner`` (a processor, an override): made by ``factory()`` the first
        time this run asks, then the same object for the run's life (search roll-outs copy it)."""
        key = id(owner)
        if key not in self.plugins:
            self.plugins[key] = (owner, factory())  # the owner is kept alive with its state
        return self.plugins[key][1]

    def context(self):
        return torch.autocast(device_type=self.device.type, dtype=self.dtype) if self.mixed else nullcontext()

    def fp32(self):
        """Autocast off for the parts outside the trunk."""
        return torch.autocast(device_type=self.device.type, enabled=False) if self.mixed else nullcontext()

    def start(self) -> SamplingRun:
        B, tr = self.batch, self.transformer
        rows = self.condition.cat(self.condition.null()) if self.doubled else self.condition
        self.layout = tr.layout(self.schedule)
        self.cache = tr.new_cache(rows.batch, self.schedule, dtype=self.dtype, device=self.device,
                                  policy=self.kv_policy)
        self.cond = tr.condition(rows)
        self.state = self.inputs.start(B, self.device)
        # ids (B, L) int64, or continuous tokens (B, L, C) for a head whose ``token_dims`` say so (flow heads)
        self.tokens = tr.head.new_tokens(B, self.schedule.length, self.device)
        self.x_in = None
        self.rows = torch.arange(B, device=self.device)  # each image's row in the starting batch (select keeps it)
        return self

    @property
    def done(self) -> bool:
        return self.s >= self.schedule.num_steps

    # -- the pieces of a step, shared by every decoding policy ----------------------------------------
    def trunk(self, begin: int, end: int, x_in, mask=None, s: int | None = None) -> torch.Tensor:
        """Positions [begin, end) through the trunk (cache written) -> guided logits (B, end-begin, V) fp32 (a head
        that ``combines_guidance``: its outputs for every row).
        s: the step whose guidance applies (default: the current one)."""
        logits = self.transformer.forward_positions(begin, end, self.cond, x_in, self.cache, self.layout, mask)
        return self.guided(logits, self.s if s is None else s)

    def guided(self, logits: torch.Tensor, s: int) -> torch.Tensor:
        """Trunk logits (rows, n, V) -> guided (B, n, V) fp32; counts the forward."""
        self.forwards += 1
        self.token_forwards += logits.shape[0] * logits.shape[1]
        with self.fp32():
            # a head that ``combines_guidance`` gets both halves: it guides inside ``choose`` (flow velocities)
            if self.doubled and not self.transformer.head.combines_guidance:
                B = self.batch
                logits = self.options.guidance.combine(logits[:B], logits[B:], s, self.schedule.num_steps)
            return logits

    def filtered(self, logits: torch.Tensor, s: int) -> torch.Tensor:
        """Guided logits -> the logits the draw uses: extra processors, then temperature, top-k, top-p."""
        for proc in self.processors:
            logits = proc(logits, s, self)
        return self.options.tokens.process(logits, s)

    def forced(self, s: int):
        """The override's (ids, keep) for step s, or None."""
        return None if self.override is None else self.override.forced(s, self)

    def doubled_input(self, x_in):
        return torch.cat([x_in, x_in]) if x_in is not None and self.doubled else x_in

    # -- plain decoding: one schedule step per forward -------------------------------------------------
    def step(self, on_step=None) -> torch.Tensor:
        """Take step ``self.s`` -> its ids (B, n_s)."""
        s = self.s
        begin, end = self.schedule.begin_ends[s]
        tr = self.transformer
        # forward_step, not forward_positions: the per-step entry point is the one ``pipe.compile`` compiles
        if s > 0 and tr.token_steps and self.kv_policy is None:
            seen = torch.arange(begin + 1, device=self.device)  # a new tensor: a view's length would be guarded on
            out = tr.forward_token(seen, self.cond, self.x_in, self.cache, self.layout)
        else:
            out = tr.forward_step(s, self.cond, self.x_in, self.cache, self.layout)
        logits = self.guided(out, s)
        with self.fp32():
            ids, embeds = tr.head.choose(logits, s, self)
            self.tokens[:, begin:end] = ids
            self.state, x_in = self.inputs.advance(self.state, s, ids, embeds)
            if on_step is not None:
                on_step(s, self.state, self.tokens)
            self.x_in = self.doubled_input(x_in)
        self.s += 1
        return ids

    def finish(self, on_step=None) -> SamplingRun:
        """Take every remaining step (after a search controller or a test re-batched the run mid-way)."""
        while not self.done:
            self.step(on_step)
        return self

    # -- search controllers -----------------------------------------------------------------------------
    def select(self, rows, in_place: bool = False) -> None:
        """Keep images ``rows`` (B',) int64 of the batch, repeats allowed (beam expansion, resampling): every
        per-image tensor (condition, tokens, state, next input), the encoded condition and the cache (conditional
        rows ``rows`` and unconditional rows ``rows + B``) and the per-image generators (repeats get forks).
        ``self.rows`` (B',) tracks the starting-batch row each image descends from (per-image data of options,
        e.g. an edit's source tokens, is indexed by it).  in_place: an image selected at its own index
        (``rows[i] == i``) is the copy that keeps its generator, and its other copies get the forks (GridAR's
        copies into the rows of dropped candidates: the kept candidates continue as if never re-batched); by
        default the first copy keeps it."""
        rows = torch.as_tensor(rows, dtype=torch.long, device=self.device)
        B = self.batch
        cache_rows = torch.cat([rows, rows + B]) if self.doubled else rows
        self.cache.select(cache_rows)
        self.cond = self.cond.select(cache_rows)
        self.condition, self.tokens, self.rows = self.condition.select(rows), self.tokens[rows], self.rows[rows]
        if isinstance(self.state, torch.Tensor):
            self.state = self.state[rows]
        if self.x_in is not None:
            self.x_in = self.x_in[cache_rows]
        if isinstance(self.generator, list):
            # a repeated row must not share its generator object with the original: the two would draw from one
            # stream in batch order, so each image would depend on its neighbours.  The first copy keeps the
            # generator (it continues exactly as if never re-batched); the k-th repeat gets fork_generator(g, k).
            picked = rows.tolist()
            owner = {r: i for i, r in enumerate(picked) if in_place and r == i}  # row -> the copy keeping it
            for i, r in enumerate(picked):
                owner.setdefault(r, i)
            copies: dict[int, int] = {}
            gens = []
            for i, r in enumerate(picked):
                if owner[r] == i:
                    gens.append(self.generator[r])
                else:
                    copies[r] = copies.get(r, 0) + 1
                    gens.append(fork_generator(self.generator[r], copies[r]))
            self.generator = gens

    def result(self) -> LoopResult:
        return LoopResult(self.tokens, self.state, self.cache.peak_nbytes, self.forwards, self.token_forwards,
                          getattr(self.cache, "transient_peak_nbytes", self.cache.peak_nbytes))


@torch.no_grad()
def generate(transformer, inputs, condition: Condition, options: SamplingOptions, generator: Generators = None,
             progress: bool = False, on_step=None) -> LoopResult:
    """Sample token sequences for ``condition`` (B rows) on ``inputs.schedule``.

    transformer: ``ARTransformer``; inputs: an input builder (``arvision.inputs``).  All randomness is drawn from
    ``generator`` in the order the released samplers draw it, or from ``generator[b]`` for image b when a list of B
    generators is given.  ``options.dtype`` other than fp32 runs the trunk under autocast; logits, the token choice
    and the state stay fp32.  ``on_step(s, state, tokens)`` is called after each step (observers only: pictures of
    the coarse-to-fine progression, logging, timing).  ``options.decoding``: a decoding policy with
    ``run(sampling_run, on_step)`` (speculative Jacobi decoding); None takes one step per forward.
    """
    run = SamplingRun(transformer, inputs, condition, options, generator)
    with run.context():
        run.start()
        if options.decoding is not None:
            options.decoding.run(run, on_step)
        else:
            # a short inner loop: a bar on a terminal, but no lines in logs (the caller reports the long work)
            for _ in progress_of(range(run.schedule.num_steps), desc="steps", disable=not progress, leave=False,
                                 lines=False):
                run.step(on_step)
    return run.result()
