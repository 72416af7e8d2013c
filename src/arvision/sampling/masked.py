"""Masked iterative decoding (MaskGIT, Chang et al. 2022; Halton MaskGIT, Besnier et al. 2025): the reveal count
schedule, the two reveal orders and the choice of one iteration's tokens.

Every iteration predicts every position of one token map at once; it draws a token at each still-masked position,
then keeps only the most confident of the draws and masks the rest again.  How many stay masked after iteration t
of T follows the cosine schedule (:func:`masked_counts`); which ones are kept is the *order*:

* ``confidence`` (MaskGIT): the guided model's log-probability of the drawn token plus Gumbel noise of temperature
  ``choice_temperature * (1 - (t + 1) / T)`` (annealed to 0), the highest kept;
* ``halton`` (Halton MaskGIT): a fixed low-discrepancy order of the grid's cells (:func:`halton_order`), the first
  still-masked cells kept.

Tokens travel as a (B, N) canvas in raster order; ``mask_id`` (= the codebook size) marks a masked position.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import torch

from arvision.sampling.processors import Generators, TokenSampling

ORDERS = ("confidence", "halton")


def masked_counts(n: int, iterations: int) -> tuple[int, ...]:
    """How many of ``n`` masked positions are still masked after each of ``iterations`` iterations.

    floor(n cos(pi/2 (t+1)/T)) after iteration t, 0 after the last; every iteration reveals at least one position
    while that leaves one for each later iteration (n >= T: always), never fewer than none."""
    counts, prev = [], n
    for t in range(iterations):
        m = 0 if t == iterations - 1 else math.floor(n * math.cos(math.pi / 2 * (t + 1) / iterations))
        m = min(max(min(m, prev - 1), iterations - 1 - t), prev)
        counts.append(m)
        prev = m
    return tuple(counts)


def _radical_inverse(i: int, base: int) -> float:
    """The i-th point of the van der Corput sequence in ``base``: i's digits mirrored after the point."""
    f, r = 1.0, 0.0
    while i > 0:
        f /= base
        r += f * (i % base)
        i //= base
    return r


@lru_cache(maxsize=16)
def halton_order(h: int, w: int) -> tuple[int, ...]:
    """The raster indices of an h x w grid in 2-D Halton order (bases 2 for rows, 3 for columns): the cells of the
    points 1, 2, 3, ... of the sequence, each cell at its first visit.  Fixed, so every image reveals the same
    cells at the same iteration, spread evenly over the grid at every prefix."""
    seen: dict[int, None] = {}
    i = 1
    while len(seen) < h * w:
        r = min(int(_radical_inverse(i, 2) * h), h - 1)
        c = min(int(_radical_inverse(i, 3) * w), w - 1)
        seen.setdefault(r * w + c, None)
        i += 1
        if i > 1_000_000 * h * w:  # unreachable: the sequence is dense; guard against an endless loop
            raise RuntimeError(f"the Halton sequence did not cover a {h}x{w} grid")
    return tuple(seen)


@dataclass(frozen=True)
class MaskedTokenSampling(TokenSampling):
    """Temperature / top-k / top-p and the draw, plus how an iteration keeps its draws: ``order`` ("confidence" or
    "halton") and the Gumbel temperature ``choice_temperature`` of the confidence order."""

    choice_temperature: float = 4.5
    order: str = "confidence"


def gumbel_noise(shape: tuple[int, int], generator: Generators, device) -> torch.Tensor:
    """(B, N) standard Gumbel noise -log(Exp(1)) from one generator, or row b from ``generator[b]``."""
    if isinstance(generator, (list, tuple)):
        e = torch.stack([torch.empty(shape[1], device=device).exponential_(generator=g) for g in generator])
    else:
        e = torch.empty(shape, device=device).exponential_(generator=generator)
    return -e.log()


def reveal(canvas: torch.Tensor, logits: torch.Tensor, s: int, run, mask_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """One iteration: the canvas (B, N) before iteration s and its guided logits (B, N, V) -> (the canvas after it
    (B, N), the draw at every position (B, N): what a preview shows at the positions still masked).

    The run's processors and filters, one draw per position, then the run's override (forced tokens count as
    revealed from the iteration they are first forced); of each image's M positions that no override forces,
    ``masked_counts(M, T)[s]`` stay masked: the least confident (order "confidence") or the last in Halton order."""
    tokens: MaskedTokenSampling = run.options.tokens
    B, N = canvas.shape
    T = run.schedule.num_steps
    filtered = run.filtered(logits, s)
    draw = tokens.draw(filtered, run.generator)
    unknown = canvas == mask_id
    free = torch.full((B,), N, dtype=torch.long)
    forced = run.forced(s)
    if forced is not None:
        ids, keep = forced
        draw = torch.where(keep, ids, draw)
        unknown = unknown & ~keep
        free = N - keep.sum(dim=1).cpu()
    draw = torch.where(canvas == mask_id, draw, canvas)  # revealed positions keep their token
    if tokens.order == "halton":
        h, w = run.schedule.image_grid
        rank = torch.empty(N, dtype=torch.float32, device=canvas.device)
        rank[torch.tensor(halton_order(h, w), device=canvas.device)] = torch.arange(N, dtype=torch.float32,
                                                                                 device=canvas.device)
        score = (-rank).expand(B, N)
    else:
        # the model's (guided) log-probability of the drawn token: before temperature and filters, which would make
        # every draw of a greedy (top-k 1) or near-zero-temperature call equally certain
        logp = logits.log_softmax(dim=-1).gather(-1, draw[..., None])[..., 0]
        temp = tokens.choice_temperature * (1.0 - (s + 1) / T)
        score = logp + temp * gumbel_noise((B, N), run.generator, canvas.device) if temp > 0 else logp
    # known positions are never masked again; of the unknown ones, the lowest scores stay masked
    score = torch.where(unknown, score, torch.full_like(score, torch.inf))
    stay = torch.tensor([masked_counts(int(m), T)[s] for m in free.tolist()], device=canvas.device)
    order = score.argsort(dim=1, stable=True)
    ranks = torch.empty_like(order).scatter_(1, order, torch.arange(N, device=canvas.device).expand(B, N))
    masked = ranks < stay[:, None]
    return torch.where(masked, torch.full_like(draw, mask_id), draw), draw
