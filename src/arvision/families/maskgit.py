"""MaskGIT (masked generative image transformer, class-to-image; Chang et al. 2022), with Halton MaskGIT's reveal
order (Besnier et al. 2025) as a sampling option: the family object.

Its slots: LlamaGen's single-map VQ (``kind="vq"``); VAR's AdaLN blocks (the class reaches every block through
AdaLN, so the trunk's positions are exactly the N = h*w tokens); a :class:`MaskSchedule` of T iterations, each
feeding and rewriting the whole canvas under bidirectional attention; the canvas as input
(:class:`MaskCanvas`), a masked position fed the [MASK] embedding (id = the codebook size, one extra row of
:class:`MaskTokenEmbedder`); a categorical head whose ``choose`` keeps each iteration's most confident draws
(:class:`MaskHead`, ``arvision.sampling.masked``); LlamaGen's constant guidance with the null class.

Training: the trainer's ``training_inputs`` slot masks each image's tokens at the ratio cos(pi/2 u), u ~ U(0, 1]
(at least one position), and weights the cross-entropy to the masked positions only.

There is no official PyTorch checkpoint (the official code is JAX): no ``arvision convert maskgit``.  Options of the
one loop that assume one causal step per token or a cache that grows (speculative Jacobi decoding, KV policies,
GridAR's row prefixes, the compiled one-token step) are off through ``capabilities``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from arvision.config import ModelConfig
from arvision.errors import ArvisionError
from arvision.families.base import Capabilities, Family
from arvision.families.var import init_adaln_trunk
from arvision.inputs import InputBuilder
from arvision.models.embeddings import Layout
from arvision.models.heads import AdaLNHeadNorm, CategoricalHead
from arvision.sampling.masked import ORDERS, MaskedTokenSampling, masked_counts, reveal
from arvision.schedules import RasterSchedule, Schedule

DEFAULT_ITERATIONS = 8  # the MaskGIT paper's class-to-image setting
DEFAULT_CHOICE_TEMPERATURE = 4.5  # the official sampler's default
NO_OFFICIAL = ("MaskGIT has no official PyTorch checkpoints to read or write (the official code is JAX); train one "
               "with `arvision train --family maskgit`")


@dataclass(frozen=True)
class MaskSchedule(RasterSchedule):
    """T masked iterations over one h x w token map.  ``step_grids[t] = (1, k_t)``: iteration t reveals k_t tokens
    (``masked_counts``), so ``step_sizes`` sum to N = h*w = ``length``.  Every iteration feeds and rewrites the whole
    canvas: ``input_spans[t] = begin_ends[t] = (0, N)``; the attention is bidirectional over the N positions.
    Tokens are in raster order (``order``, ``to_raster``, ``named_tokens``: the raster schedule's); which positions
    an iteration reveals is chosen at run time (``arvision.sampling.masked.reveal``), not fixed by the schedule."""

    fixed_positions = False

    @classmethod
    def of_grid(cls, h: int, w: int | None = None, iterations: int = DEFAULT_ITERATIONS) -> MaskSchedule:
        w = h if w is None else w
        n = h * w
        if not isinstance(iterations, int) or isinstance(iterations, bool) or not 1 <= iterations <= n:
            raise ArvisionError(f"iterations must be an integer in [1, {n}] (each reveals at least one of the "
                                f"{h}x{w} tokens), got {iterations!r}")
        counts = (n, *masked_counts(n, iterations))
        return cls(tuple((1, a - b) for a, b in zip(counts, counts[1:])), (h, w), attention="bidirectional")

    def __post_init__(self):
        super().__post_init__()
        object.__setattr__(self, "begin_ends", ((0, self.length),) * self.num_steps)

    def fed_spans(self) -> tuple[tuple[int, int], ...]:
        return ((0, self.length),) * self.num_steps

    @property
    def masked_after(self) -> tuple[int, ...]:
        """Positions still masked after each iteration."""
        out, m = [], self.length
        for k in self.step_sizes:
            m -= k
            out.append(m)
        return tuple(out)

    def split(self, tokens: torch.Tensor) -> list[torch.Tensor]:
        return [tokens]  # one canvas, not a sequence of per-step pieces

    def describe(self) -> str:
        return f"{self.num_steps} masked iterations ({self.image_grid[0]}x{self.image_grid[1]} tokens)"



class MaskTokenEmbedder(nn.Module):
    """Canvas ids (the codebook, plus [MASK] = ``vocab_size``) through ``input_proj`` plus a learned position per
    cell (``pos_embed`` (1, N, C)).  The condition is not a position: it reaches the blocks through AdaLN."""

    def __init__(self, vocab_size: int, width: int, length: int):
        super().__init__()
        self.mask_id = vocab_size
        self.input_proj = nn.Embedding(vocab_size + 1, width)
        self.pos_embed = nn.Parameter(torch.zeros(1, length, width))

    def layout(self, schedule: Schedule) -> Layout:
        if schedule.length != self.pos_embed.shape[1]:
            raise ArvisionError(f"this model has positions for {self.pos_embed.shape[1]} tokens, not "
                                f"{schedule.length} ({schedule.describe()})")
        return Layout(schedule, pos=self.pos_embed)

    def forward(self, cond: torch.Tensor, x_in: torch.Tensor | None, begin: int, end: int,
                layout: Layout) -> torch.Tensor:
        """cond (B, C) (only its batch is read); x_in (B, end-begin) canvas ids, or None: every position masked (the
        first iteration) -> (B, end-begin, C)."""
        if x_in is None:
            x_in = torch.full((cond.shape[0], end - begin), self.mask_id, dtype=torch.long, device=cond.device)
        return self.input_proj(x_in) + layout.pos[:, begin:end]

    def reset_parameters(self, std: float) -> None:
        nn.init.trunc_normal_(self.pos_embed, std=std)


class MaskCanvas(InputBuilder):
    """The canvas as input.  State (B, 2, N) int64: [0] the canvas after the last iteration ([MASK] = ``mask_id``
    where still masked), [1] that iteration's draw at every position (what ``preview`` shows where the canvas is
    masked).  Training inputs are a random masking of the targets (``training_inputs``)."""

    random_teacher = True

    def __init__(self, tokenizer, schedule: MaskSchedule):
        super().__init__(tokenizer, schedule)
        self.mask_id = tokenizer.cfg.vocab_size

    def start(self, batch: int, device=None) -> torch.Tensor:
        return torch.full((batch, 2, self.schedule.length), self.mask_id, dtype=torch.long, device=device)

    def advance(self, state, s: int, ids: torch.Tensor, embeds=None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """ids (B, N): the canvas after iteration s; ``embeds``: the iteration's draw (B, N) ids (``MaskHead``)."""
        draw = ids if embeds is None else embeds
        state = torch.stack([ids, draw], dim=1)
        return state, (None if s == self.schedule.num_steps - 1 else ids)

    def finish(self, state, tokens: torch.Tensor) -> torch.Tensor:
        return self.decode(tokens).clamp(-1, 1)

    def preview(self, state: torch.Tensor, tokens: torch.Tensor, steps: int) -> torch.Tensor:
        """The canvas after ``steps`` iterations, its masked positions showing that iteration's draws."""
        canvas, draw = state[:, 0], state[:, 1]
        return self.finish(state, torch.where(canvas == self.mask_id, draw, canvas))

    def targets(self, img: torch.Tensor) -> torch.Tensor:
        return self.tok.encode(img)

    def teacher(self, tokens: torch.Tensor) -> torch.Tensor:
        """The first iteration's input: every position masked (a masked model has no fixed teacher-forced input;
        training draws its own masking, ``training_inputs``)."""
        return torch.full_like(tokens, self.mask_id)

    def training_inputs(self, tokens: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """Targets (B, N) -> (the canvas with a random subset masked (B, N), loss weights (B, N): 1 where masked).

        Per image u ~ U(0, 1], mask ratio r = cos(pi/2 u), ceil(r N) positions masked (at least one), chosen
        uniformly; the draws come from ``generator`` (CPU), so a seeded run masks alike."""
        B, N = tokens.shape
        u = 1.0 - torch.rand(B, generator=generator, dtype=torch.float64)  # (0, 1]
        count = torch.ceil(torch.cos(math.pi / 2 * u) * N).long().clamp(1, N)
        ranks = torch.rand(B, N, generator=generator).argsort(dim=1).argsort(dim=1)
        masked = (ranks < count[:, None]).to(tokens.device)
        return torch.where(masked, torch.full_like(tokens, self.mask_id), tokens), masked.float()

    def decode(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.tok.decode(tokens, self.schedule.image_grid)


class MaskHead(CategoricalHead):
    """VAR's AdaLN categorical head over the codebook (the [MASK] id is never predicted); its ``choose`` is one
    masked iteration (``arvision.sampling.masked.reveal``); its ``loss`` the categorical cross-entropy, which the
    trainer weights to the masked positions."""

    def __init__(self, width: int, vocab_size: int, eps: float):
        super().__init__(AdaLNHeadNorm(width, eps), width, vocab_size, bias=True)
        self.mask_id = vocab_size

    def choose(self, logits: torch.Tensor, s: int, run) -> tuple[torch.Tensor, torch.Tensor]:
        """Guided logits (B, N, V) of iteration s -> (the new canvas (B, N), the iteration's draw (B, N))."""
        return reveal(run.state[:, 0], logits, s, run, self.mask_id)


class MaskGITFamily(Family):
    name = "maskgit"
    description = "MaskGIT"
    tokenizer_kind = "vq"
    block = "adaln"
    capabilities = Capabilities(progression=True)
    guidance_rule = "constant"
    top_p_rule = "descending"
    defaults = {"guidance_scale": 1.0, "top_k": 0, "top_p": 0.0}  # the paper samples without guidance
    sampling_options = {
        "iterations": f"masked iterations T (default {DEFAULT_ITERATIONS}; 1..number of tokens)",
        "choice_temperature": f"Gumbel temperature of the confidence order, annealed to 0 (default "
                              f"{DEFAULT_CHOICE_TEMPERATURE})",
        "order": "which draws an iteration keeps: confidence (MaskGIT, default) or halton (Halton MaskGIT)",
    }

    def check_config(self, config: ModelConfig) -> None:
        super().check_config(config)
        if config.latent_size * config.latent_size < 2:
            raise ArvisionError(f"invalid MaskGIT token grid: side {config.latent_size} (at least 2 tokens)")

    def schedule(self, config: ModelConfig, patch_nums=None, iterations: int = DEFAULT_ITERATIONS) -> MaskSchedule:
        if patch_nums is not None:
            raise ArvisionError(f"a {self.description} model generates one token map by masked iterations; it has no "
                                "scale list (patch_nums)")
        return MaskSchedule.of_grid(config.latent_size, iterations=iterations)

    def call_schedule(self, config: ModelConfig, schedule, options: dict):
        iterations = options.get("iterations")
        if iterations is None or iterations == schedule.num_steps:
            return schedule
        return self.schedule(config, iterations=iterations)

    def input_builder(self, tokenizer, schedule) -> MaskCanvas:
        return MaskCanvas(tokenizer, schedule)

    def embedder(self, config: ModelConfig) -> MaskTokenEmbedder:
        tr = config.transformer
        return MaskTokenEmbedder(tr.vocab_size, tr.width, config.latent_size ** 2)

    def head(self, config: ModelConfig) -> MaskHead:
        tr = config.transformer
        return MaskHead(tr.width, tr.vocab_size, tr.norm_eps)

    def init_weights(self, transformer) -> None:
        """VAR's AdaLN-trunk recipe; the [MASK] row is an embedding row like the others."""
        init_adaln_trunk(transformer)

    # -- sampling rules ----------------------------------------------------------------------------------
    def check_sampling_options(self, options: dict, schedule) -> dict:
        options = super().check_sampling_options(options, schedule)
        iterations = options.get("iterations")
        if iterations is not None and iterations != schedule.num_steps:
            raise ArvisionError(f"iterations {iterations!r} disagrees with the call's schedule "
                                f"({schedule.describe()})")
        temp = options.get("choice_temperature")
        temp = DEFAULT_CHOICE_TEMPERATURE if temp is None else temp
        if isinstance(temp, bool) or not isinstance(temp, (int, float)) or not math.isfinite(temp) or temp < 0:
            raise ArvisionError(f"choice_temperature must be a finite number >= 0, got {temp!r}")
        order = options.get("order") or "confidence"
        if order not in ORDERS:
            raise ArvisionError(f"order must be one of {', '.join(ORDERS)}, got {order!r}")
        return {"iterations": schedule.num_steps, "choice_temperature": float(temp), "order": order}

    def token_sampling(self, temperature: float, top_k: int, top_p: float, schedule, options: dict):
        return MaskedTokenSampling(temperature, top_k, top_p, self.top_p_rule,
                                   choice_temperature=options.get("choice_temperature", DEFAULT_CHOICE_TEMPERATURE),
                                   order=options.get("order", "confidence"))

    # -- official checkpoints: none in PyTorch ------------------------------------------------------------
    def read_official(self, tokenizer_state: dict, transformer_state: dict, **options):
        raise ArvisionError(NO_OFFICIAL)

    def official_state_dicts(self, pipe):
        raise ArvisionError(NO_OFFICIAL)


FAMILY = MaskGITFamily()
