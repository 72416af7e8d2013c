"""The one generation loop, for every family.

for each step s: build the input from the canvas -> trunk step with the KV cache -> logits -> guidance ->
processors -> choose tokens -> (forced tokens) -> update the canvas.  Families differ only in the parts plugged
in (input builder, guidance rule, top-p rule).  Methods plug in as options of ``SamplingRun``, never as a
second loop:

* ``processors``  extra logits processors after guidance, before temperature/top-k/top-p (watermark bias);
* ``override``    forced tokens where an edit keeps the source (in-/out-painting, class editing);
* ``kv_policy``   the cache layout (full static cache, or a compressed one: ScaleKV, HACK);
* ``decoding``    how raster steps are taken (one token per forward, or speculative Jacobi windows);
* search controllers drive a run step by step and re-batch it (``select``) between steps.
"""

from __future__ import annotations

import hashlib
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Protocol

import torch
from tqdm.auto import tqdm

from arvision.sampling.processors import Generators, Guidance, TokenSampling, gumbel_soft_codes


class LogitsProcessor(Protocol):
    def __call__(self, logits: torch.Tensor, s: int, run: SamplingRun) -> torch.Tensor:
        """Guided logits (B, n, V) fp32 of step s -> new logits (B, n, V)."""


class TokenOverride(Protocol):
    def forced(self, s: int, run: SamplingRun) -> tuple[torch.Tensor, torch.Tensor] | None:
        """Step s -> (ids (B, n_s) int64, keep (B, n_s) bool): where keep is True the step takes ids instead of
        its draw; None: nothing forced at this step."""


def fork_generator(generator: torch.Generator, key: int) -> torch.Generator:
    """A new generator seeded from ``generator``'s current state and ``key``, without drawing from it.

    Deterministic (same state and key -> same stream) and independent of the parent's future draws: how a
    re-batched image's repeats get their own randomness (``SamplingRun.select``)."""
    state = generator.get_state().cpu().numpy().tobytes()
    seed = int.from_bytes(hashlib.sha256(state + int(key).to_bytes(8, "little", signed=True)).digest()[:8], "little")
    return torch.Generator(device=generator.device).manual_seed(seed >> 1)


@dataclass
class LoopResult:
    tokens: torch.Tensor  # (B, L) int64, schedule order
    state: object  # the input builder's final state (VAR: canvas f_hat)
    kv_cache_bytes: int = 0  # the most bytes the KV cache held at any time
    forwards: int = 0  # transformer forward passes (one per step for plain decoding)
    token_forwards: int = 0  # rows x positions through the trunk, doubled batch included (compute measure)
    kv_transient_bytes: int = 0  # the most KV bytes alive during a step's attention (a compressed cache's history
    # plus the step's own keys/values; the full static cache: its size)


class SamplingRun:
    """One batch in flight: the KV cache, the canvas, the tokens so far and the randomness, stepped by ``step``.

    Use inside ``with run.context():`` (the precision context) after ``start()``.  ``generate`` does all of it;
    search controllers and decoding policies drive the same object.
    """

    def __init__(self, transformer, inputs, labels: torch.Tensor, guidance: Guidance, sampling: TokenSampling,
                 generator: Generators = None, more_smooth: bool = False, dtype: torch.dtype = torch.float32,
                 processors=(), override: TokenOverride | None = None, kv_policy=None):
        if isinstance(generator, (list, tuple)) and len(generator) != labels.shape[0]:
            raise ValueError(f"got {len(generator)} generators for a batch of {labels.shape[0]} images")
        self.transformer, self.inputs, self.schedule = transformer, inputs, transformer.schedule
        self.labels, self.guidance, self.sampling = labels, guidance, sampling
        self.generator = list(generator) if isinstance(generator, (list, tuple)) else generator
        self.more_smooth, self.dtype = more_smooth, dtype
        self.processors, self.override, self.kv_policy = tuple(processors), override, kv_policy
        self.device = labels.device
        # One autocast context around the whole loop: autocast keeps its cast copy of each fp32 weight until the
        # outermost context exits, so the weights are cast once per call, not once per step.  The parts outside
        # the trunk (guidance, filters, the draw, the canvas) run with autocast switched off, in fp32.
        # Weights already in the sampling dtype (``pipe.to(dtype=...)``) need no autocast, which would only add
        # a dispatch layer to every small op of every step.
        self.mixed = dtype != torch.float32 and transformer.class_emb.weight.dtype != dtype
        self.forwards = self.token_forwards = 0
        self.s = 0  # the next step

    # -- set-up --------------------------------------------------------------------------------------
    @property
    def batch(self) -> int:
        return self.labels.shape[0]

    @property
    def doubled(self) -> bool:
        return self.guidance.doubles_batch

    def context(self):
        return torch.autocast(device_type=self.device.type, dtype=self.dtype) if self.mixed else nullcontext()

    def fp32(self):
        """Autocast off for the parts outside the trunk."""
        return torch.autocast(device_type=self.device.type, enabled=False) if self.mixed else nullcontext()

    def start(self) -> SamplingRun:
        B = self.batch
        null = torch.full_like(self.labels, self.transformer.cfg.num_classes)
        rows = torch.cat([self.labels, null]) if self.doubled else self.labels
        self.cache = self.transformer.new_cache(rows.shape[0], dtype=self.dtype, device=self.device,
                                                policy=self.kv_policy)
        self.cond = self.transformer.condition(rows)
        self.state = self.inputs.start(B, self.device)
        self.tokens = torch.empty(B, self.schedule.length, dtype=torch.long, device=self.device)
        self.x_in = None
        self.positions = torch.arange(self.schedule.length, device=self.device)  # 0-d views for forward_token
        self.rows = torch.arange(B, device=self.device)  # each image's row in the starting batch (select keeps it)
        return self

    @property
    def done(self) -> bool:
        return self.s >= self.schedule.num_steps

    # -- the pieces of a step, shared by every decoding policy ----------------------------------------
    def trunk(self, begin: int, end: int, x_in, mask=None, s: int | None = None) -> torch.Tensor:
        """Positions [begin, end) through the trunk (cache written) -> guided logits (B, end-begin, V) fp32.
        s: the step whose guidance applies (default: the current one)."""
        logits = self.transformer.forward_positions(begin, end, self.cond, x_in, self.cache, mask)
        return self.guided(logits, self.s if s is None else s)

    def guided(self, logits: torch.Tensor, s: int) -> torch.Tensor:
        """Trunk logits (rows, n, V) -> guided (B, n, V) fp32; counts the forward."""
        self.forwards += 1
        self.token_forwards += logits.shape[0] * logits.shape[1]
        with self.fp32():
            if self.doubled:
                B = self.batch
                logits = self.guidance.combine(logits[:B], logits[B:], s, self.schedule.num_steps)
            return logits

    def filtered(self, logits: torch.Tensor, s: int) -> torch.Tensor:
        """Guided logits -> the logits the draw uses: extra processors, then temperature, top-k, top-p."""
        for proc in self.processors:
            logits = proc(logits, s, self)
        return self.sampling.process(logits)

    def forced(self, s: int):
        """The override's (ids, keep) for step s, or None."""
        return None if self.override is None else self.override.forced(s, self)

    def doubled_input(self, x_in):
        return torch.cat([x_in, x_in]) if x_in is not None and self.doubled else x_in

    # -- plain decoding: one schedule step per forward -------------------------------------------------
    def step(self, on_step=None) -> torch.Tensor:
        """Take step ``self.s`` -> its ids (B, n_s)."""
        s, S = self.s, self.schedule.num_steps
        begin, end = self.schedule.begin_ends[s]
        # forward_step, not forward_positions: the per-step entry point is the one ``pipe.compile`` compiles
        if s > 0 and self.transformer.static_steps and self.kv_policy is None:
            out = self.transformer.forward_token(self.positions[s], self.cond, self.x_in, self.cache)
        else:
            out = self.transformer.forward_step(s, self.cond, self.x_in, self.cache)
        logits = self.guided(out, s)
        with self.fp32():
            logits = self.filtered(logits, s)
            ids = self.sampling.draw(logits, self.generator)
            forced = self.forced(s)
            if forced is not None:
                ids = torch.where(forced[1], forced[0], ids)
            self.tokens[:, begin:end] = ids
            embeds = None
            if self.more_smooth:
                codes = self.inputs.tok.quantize.codes
                embeds = gumbel_soft_codes(logits, s / max(S - 1, 1), codes, self.generator)
                if forced is not None:  # forced positions take their code, not a soft mix
                    embeds = torch.where(forced[1][..., None], codes[forced[0]], embeds)
            x_in = self.inputs.advance(self.state, s, ids, embeds)
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
    def select(self, rows) -> None:
        """Keep images ``rows`` (B',) int64 of the batch, repeats allowed (beam expansion, resampling): every
        per-image tensor (labels, tokens, canvas, next input), the conditioning and the cache (conditional rows
        ``rows`` and unconditional rows ``rows + B``) and the per-image generators (repeats get forks).
        ``self.rows`` (B',) tracks the starting-batch row each image descends from (per-image data of options,
        e.g. an edit's source tokens, is indexed by it)."""
        rows = torch.as_tensor(rows, dtype=torch.long, device=self.device)
        B = self.batch
        cache_rows = torch.cat([rows, rows + B]) if self.doubled else rows
        self.cache.select(cache_rows)
        self.cond = type(self.cond)(self.cond.class_emb[cache_rows],
                                    [None if m is None else m[cache_rows] for m in self.cond.blocks],
                                    None if self.cond.head is None else self.cond.head[cache_rows])
        self.labels, self.tokens, self.rows = self.labels[rows], self.tokens[rows], self.rows[rows]
        if isinstance(self.state, torch.Tensor):
            self.state = self.state[rows]
        if self.x_in is not None:
            self.x_in = self.x_in[cache_rows]
        if isinstance(self.generator, list):
            # a repeated row must not share its generator object with the original: the two would draw from one
            # stream in batch order, so each image would depend on its neighbours.  The first copy keeps the
            # generator (it continues exactly as if never re-batched); the k-th repeat gets fork_generator(g, k).
            copies: dict[int, int] = {}
            gens = []
            for r in rows.tolist():
                k = copies.get(r, 0)
                copies[r] = k + 1
                gens.append(self.generator[r] if k == 0 else fork_generator(self.generator[r], k))
            self.generator = gens

    def result(self) -> LoopResult:
        return LoopResult(self.tokens, self.state, self.cache.peak_nbytes, self.forwards, self.token_forwards,
                          getattr(self.cache, "transient_peak_nbytes", self.cache.peak_nbytes))


@torch.no_grad()
def generate(transformer, inputs, labels: torch.Tensor, guidance: Guidance, sampling: TokenSampling,
             generator: Generators = None, more_smooth: bool = False,
             dtype: torch.dtype = torch.float32, progress: bool = False, on_step=None, *,
             processors=(), override: TokenOverride | None = None, kv_policy=None, decoding=None) -> LoopResult:
    """Sample token sequences for class ``labels`` (B,).

    transformer: ``ARTransformer``; inputs: an input builder (``arvision.inputs``).  All randomness is drawn
    from ``generator`` in the order the released samplers draw it, or from ``generator[b]`` for image b when a
    list of B generators is given.  ``dtype`` other than fp32 runs the trunk under autocast; logits, the token
    choice and the canvas stay fp32.  ``on_step(s, state, tokens)`` is called after each step (observers only:
    pictures of the coarse-to-fine progression, logging, timing).  ``decoding``: a decoding policy with
    ``run(sampling_run, on_step)`` (speculative Jacobi decoding); None takes one step per forward.
    """
    run = SamplingRun(transformer, inputs, labels, guidance, sampling, generator, more_smooth, dtype,
                      processors, override, kv_policy)
    with run.context():
        run.start()
        if decoding is not None:
            decoding.run(run, on_step)
        else:
            for _ in tqdm(range(run.schedule.num_steps), desc="steps", disable=True if not progress else None,
                          leave=False):
                run.step(on_step)
    return run.result()
