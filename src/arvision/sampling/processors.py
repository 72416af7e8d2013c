"""Logits processors: guidance, temperature, top-k, top-p, and the token draw.

Each reproduces the released code's arithmetic, because with sampling the smallest difference in a logit
can change which token a random draw selects.  Logits are (B, n, V) fp32.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

Generators = torch.Generator | list[torch.Generator] | tuple[torch.Generator, ...] | None
"""One generator for the whole batch (the released samplers), or one per image (batch-independent draws)."""


@dataclass(frozen=True)
class Guidance:
    """Classifier-free guidance on a [cond; uncond] doubled batch.

    ``ramp`` (VAR): t = scale * s / (S-1), logits = (1+t) cond - t uncond; the batch is always doubled, as the
    released sampler does.  ``constant`` (LlamaGen): uncond + scale (cond - uncond), only when scale > 1
    (at or below 1 the released sampler runs the conditional batch alone).
    """

    kind: str  # "ramp" | "constant"
    scale: float

    @property
    def doubles_batch(self) -> bool:
        return self.kind == "ramp" or self.scale > 1.0

    def combine(self, cond: torch.Tensor, uncond: torch.Tensor, s: int, num_steps: int) -> torch.Tensor:
        if self.kind == "ramp":
            t = self.scale * s / max(num_steps - 1, 1)
            return (1 + t) * cond - t * uncond
        return uncond + (cond - uncond) * self.scale


def top_k_filter_(logits: torch.Tensor, k: int) -> torch.Tensor:
    """Keep logits >= the k-th largest (ties kept); in place.  k <= 0: off; k above the vocabulary keeps all."""
    if k > 0:
        k = min(k, logits.shape[-1])
        kth = logits.topk(k, dim=-1, largest=True, sorted=False)[0].amin(dim=-1, keepdim=True)
        logits.masked_fill_(logits < kth, -torch.inf)
    return logits


def top_p_filter_(logits: torch.Tensor, p: float, rule: str) -> torch.Tensor:
    """Nucleus filtering, in place.  p <= 0 or p >= 1: off.

    rule "ascending" (VAR): sort ascending, drop tokens whose ascending cumulative probability <= 1 - p,
    never the most likely.  rule "descending" (LlamaGen/HF): sort descending, drop the tokens after the
    cumulative probability first exceeds p, keeping at least the most likely.
    """
    if not 0.0 < p < 1.0:
        return logits
    if rule == "ascending":
        srt, order = logits.sort(dim=-1, descending=False)
        drop = srt.softmax(dim=-1).cumsum_(dim=-1) <= (1 - p)
        drop[..., -1:] = False
    else:
        srt, order = logits.sort(dim=-1, descending=True)
        cum = srt.softmax(dim=-1).cumsum(dim=-1)
        drop = torch.zeros_like(cum, dtype=torch.bool)
        drop[..., 1:] = cum[..., :-1] > p
    return logits.masked_fill_(drop.scatter(-1, order, drop), -torch.inf)


@dataclass(frozen=True)
class TokenSampling:
    """How one step's tokens are chosen from its (guided) logits."""

    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 0.0
    top_p_rule: str = "ascending"
    greedy_steps: frozenset[int] = frozenset()  # steps whose top-k is 1 whatever ``top_k`` says (FlexVAR's rule)
    # one generator: one multinomial call per position of the step (B rows each, positions in order), as a sampler
    # that draws token by token does (NAR), instead of one call over all B x n rows
    per_position_draws: bool = False

    def process(self, logits: torch.Tensor, s: int | None = None) -> torch.Tensor:
        """Temperature, then top-k, then top-p (the released order) for step ``s``.  Returns new filtered logits."""
        logits = logits / max(self.temperature, 1e-5)
        top_k_filter_(logits, 1 if s in self.greedy_steps else self.top_k)
        return top_p_filter_(logits, self.top_p, self.top_p_rule)

    def draw(self, logits: torch.Tensor, generator: Generators) -> torch.Tensor:
        """Filtered logits (B, n, V) -> ids (B, n).

        One generator: one multinomial call over all B*n rows (the released samplers' order), or with
        ``per_position_draws`` one call per position.  A list of B generators (one per image): row b draws only
        from its own, so an image does not depend on its batch.
        """
        probs = logits.softmax(dim=-1)
        if self.per_position_draws and not isinstance(generator, (list, tuple)) and probs.shape[1] > 1:
            return torch.cat([draw_from_probs(probs[:, i:i + 1], generator) for i in range(probs.shape[1])], dim=1)
        return draw_from_probs(probs, generator)


def draw_from_probs(probs: torch.Tensor, generator: Generators) -> torch.Tensor:
    """probs (B, n, V), rows summing to > 0 -> ids (B, n), one multinomial draw per row (see ``TokenSampling.draw``
    for the order the generators are consumed in)."""
    B, n, V = probs.shape
    if isinstance(generator, (list, tuple)):
        return torch.stack([torch.multinomial(probs[b], 1, generator=g).view(n) for b, g in enumerate(generator)])
    return torch.multinomial(probs.reshape(-1, V), 1, generator=generator).view(B, n)


def gumbel_soft_codes(logits: torch.Tensor, ratio: float, codes: torch.Tensor,
                      generator: Generators) -> torch.Tensor:
    """VAR's ``more_smooth``: a Gumbel-softmax mix of codes instead of one code per position.

    logits (B, n, V) filtered, ratio = s/(S-1), codes (V, D) -> (B, n, D).  tau anneals from 0.27 to 0.005
    and the logits are sharpened by (1 + ratio); the noise comes from the same generator as the draws.
    """
    tau = max(0.27 * (1 - ratio * 0.95), 0.005)
    if isinstance(generator, (list, tuple)):
        noise = torch.stack([torch.empty_like(logits[b]).exponential_(generator=g) for b, g in enumerate(generator)])
    else:
        noise = torch.empty_like(logits).exponential_(generator=generator)
    gumbels = -noise.log()
    weights = ((logits * (1 + ratio) + gumbels) / tau).softmax(dim=-1)
    return weights @ codes.unsqueeze(0)
