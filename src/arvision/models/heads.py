"""Heads: hidden states -> the step's outputs, with the token choice and the training loss next to them.

As nanoGPT keeps its loss beside ``lm_head``, a head here owns three things:

``forward(h, mod)``        hidden (B, n, C) -> logits (B, n, V) fp32 (``mod``: the head's share of the condition);
``choose(logits, s, run)`` guided logits of step s -> the step's token ids (B, n) and, for soft inputs, the code
                           mixes that feed the next step: processors, filters and the draw of the one loop;
``loss(logits, targets, schedule, generator)``  the training objective, per position (B, L) (a head that draws
                           noise for its loss draws it from ``generator``; the schedule gives each step's shape).

And what its tokens are, for the engine's slots: ``token_dims`` (``()``: ids, (B, L) int64; ``(C,)``: continuous
(B, L, C) fp32), ``new_tokens`` (the loop's token buffer), ``hits`` (per-position correctness for the trainer's
accuracy, or None), ``combines_guidance`` (False: the loop combines a guided batch's outputs with the run's
guidance before ``choose``; True: ``choose`` gets both halves and guides inside, as a flow head guides velocities).

:class:`CategoricalHead` is a softmax over the codebook (VAR, LlamaGen, FlexVAR); :class:`NeighbourHead` two of
them whose per-position outputs a schedule combines into each token's logits (NAR); :class:`BitwiseHead` two logits
per bit of a d-bit token (Infinity); ``arvision.models.flow_head`` has the flow-matching head over continuous
tokens (FlowAR).  ``hits(logits, targets)`` (B, L) is what the trainer logs as ``acc`` (a bitwise head: the
fraction of bits right).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from arvision.models.blocks import RMSNorm
from arvision.models.quantized import linear_dtype
from arvision.sampling.processors import gumbel_soft_codes


class AdaLNHeadNorm(nn.Module):
    """LN(x)(1 + scale) + shift with (scale, shift) = ada_lin(silu(cond)) (B, 2C); computed in fp32, as VAR's
    ``AdaLNBeforeHead`` under its fp32 head."""

    def __init__(self, width: int, eps: float):
        super().__init__()
        self.width, self.eps = width, eps
        self.ada_lin = nn.Linear(width, 2 * width)

    def modulation(self, cond: torch.Tensor) -> torch.Tensor:
        """cond (B, C) -> (B, 1, 2, C): scale, shift."""
        return self.ada_lin(F.silu(cond)).view(-1, 1, 2, self.width)

    def forward(self, x: torch.Tensor, mod: torch.Tensor) -> torch.Tensor:
        scale, shift = mod.unbind(2)
        return F.layer_norm(x.float(), (self.width,), eps=self.eps).mul(scale.add(1)).add_(shift)


class RMSHeadNorm(RMSNorm):
    """LlamaGen's final RMSNorm; it takes no share of the condition."""

    def modulation(self, cond: torch.Tensor) -> None:
        return None

    def forward(self, x: torch.Tensor, mod=None) -> torch.Tensor:
        return super().forward(x)


class CategoricalHead(nn.Module):
    """norm -> linear over the codebook.  ``norm``: :class:`AdaLNHeadNorm` or :class:`RMSHeadNorm`."""

    token_dims: tuple[int, ...] = ()  # tokens are ids
    combines_guidance = False  # the loop applies guidance to the logits

    def __init__(self, norm: nn.Module, width: int, vocab_size: int, bias: bool):
        super().__init__()
        self.norm = norm
        self.proj = nn.Linear(width, vocab_size, bias=bias)

    def modulation(self, cond: torch.Tensor) -> torch.Tensor | None:
        return self.norm.modulation(cond)

    def forward(self, h: torch.Tensor, mod: torch.Tensor | None) -> torch.Tensor:
        """Hidden (B, n, C) -> logits (B, n, V) fp32."""
        return self.proj(self.norm(h, mod).to(linear_dtype(self.proj))).float()

    @staticmethod
    def new_tokens(batch: int, length: int, device=None) -> torch.Tensor:
        """The loop's token buffer (B, L) int64."""
        return torch.empty(batch, length, dtype=torch.long, device=device)

    @staticmethod
    def loss(logits: torch.Tensor, targets: torch.Tensor, schedule=None, generator=None) -> torch.Tensor:
        """Cross-entropy of logits (B, L, V) against ids (B, L) -> per-position loss (B, L) fp32 (draws nothing)."""
        return F.cross_entropy(logits.float().flatten(0, 1), targets.flatten(), reduction="none").view_as(targets)

    @staticmethod
    def hits(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """(B, L) fp32: 1 where the argmax is the target id."""
        return (logits.argmax(-1) == targets).float()

    @staticmethod
    def choose(logits: torch.Tensor, s: int, run) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Guided logits (B, n, V) of step s -> (ids (B, n), soft code mixes (B, n, D) or None).

        The run's processors, then temperature / top-k / top-p, then one draw from the run's generator(s); where
        the run's override keeps a token, its id (and its code, not a soft mix).  With ``more_smooth`` (VAR) the
        next step is fed a Gumbel-softmax mix of codes drawn from the same generator."""
        logits = run.filtered(logits, s)
        ids = run.options.tokens.draw(logits, run.generator)
        forced = run.forced(s)
        if forced is not None:
            ids = torch.where(forced[1], forced[0], ids)
        embeds = None
        if run.options.more_smooth:
            codes = run.inputs.codes
            S = run.schedule.num_steps
            embeds = gumbel_soft_codes(logits, s / max(S - 1, 1), codes, run.generator)
            if forced is not None:  # forced positions take their code, not a soft mix
                embeds = torch.where(forced[1][..., None], codes[forced[0]], embeds)
        return ids, embeds


class NeighbourHead(CategoricalHead):
    """NAR's two heads: a position predicts its right neighbour and its lower neighbour.

    ``right`` (norm -> linear) reads the output of the block before the last (``taps = (-2,)``); ``down`` (its own
    norm -> linear) reads the output of the last block, an extra block that only this head uses.  Token (h, w)'s
    logits are the right-head's at (h, w - 1) and the down-head's at (h - 1, w), averaged where both exist
    ((R + D) / 2, as the released code does), and both heads at the class position for (0, 0): the schedule's
    ``neighbours`` table.  Token choice and loss are the categorical head's (the loss on the combined logits)."""

    taps = (-2,)

    def __init__(self, width: int, vocab_size: int, eps: float):
        super().__init__(RMSHeadNorm(width, eps), width, vocab_size, bias=False)
        self.down_norm = RMSHeadNorm(width, eps)
        self.down_proj = nn.Linear(width, vocab_size, bias=False)

    def heads(self, h: torch.Tensor, taps: list) -> tuple[torch.Tensor, torch.Tensor]:
        """(last block's output, [the output of the block before it]) (B, n, C) -> per-position logits of the right
        and the down head, (B, n, V) fp32 each."""
        right = self.proj(self.norm(taps[0]).to(linear_dtype(self.proj))).float()
        down = self.down_proj(self.down_norm(h).to(linear_dtype(self.down_proj))).float()
        return right, down

    def readout(self, h: torch.Tensor, taps: list, mod, schedule, begin: int, end: int) -> torch.Tensor:
        """Hidden states of trunk positions [begin, end) -> logits (B, n, V) fp32 of the tokens they predict
        (``schedule.neighbours``)."""
        right, down = self.heads(h, taps)
        r_idx, d_idx = schedule.neighbours(begin, end)
        r = torch.tensor(r_idx, device=h.device)
        d = torch.tensor(d_idx, device=h.device)
        from_right = right[:, r.clamp_min(0)]
        from_down = down[:, d.clamp_min(0)]
        both = (from_right + from_down) / 2
        out = torch.where((d < 0)[None, :, None], from_right, both)
        return torch.where((r < 0)[None, :, None], from_down, out)


class BitwiseHead(CategoricalHead):
    """Infinity's bitwise head: norm -> linear to 2 logits per bit (2d per token), token = d independent bits.

    Logits (B, n, 2d) hold bit i's pair at channels (2i, 2i + 1) (index 1: the bit is set).  Tokens travel as int64
    ids with the bits packed (``tokenizers.bitwise.pack_bits``); the loss is the per-bit cross-entropy averaged over
    the d bits (Infinity's ``bitloss_type="mean"``)."""

    def __init__(self, norm: nn.Module, width: int, bits: int):
        super().__init__(norm, width, 2 * bits, bias=True)
        self.bits = bits

    def pairs(self, logits: torch.Tensor) -> torch.Tensor:
        """(B, n, 2d) -> (B, n, d, 2)."""
        return logits.view(*logits.shape[:-1], self.bits, 2)

    def loss(self, logits: torch.Tensor, targets: torch.Tensor, schedule=None, generator=None) -> torch.Tensor:
        """Mean per-bit cross-entropy of logits (B, L, 2d) against packed ids (B, L) -> (B, L) fp32."""
        from arvision.tokenizers.bitwise import unpack_bits

        bits = unpack_bits(targets, self.bits)
        ce = F.cross_entropy(self.pairs(logits.float()).flatten(0, 2), bits.flatten(), reduction="none")
        return ce.view_as(bits).mean(-1)

    def hits(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """The fraction of bits the argmax gets right, (B, L)."""
        from arvision.tokenizers.bitwise import unpack_bits

        return (self.pairs(logits).argmax(-1) == unpack_bits(targets, self.bits)).float().mean(-1)

    def choose(self, logits: torch.Tensor, s: int, run) -> tuple[torch.Tensor, None]:
        """Guided logits (B, n, 2d) of step s -> (ids (B, n) with the drawn bits packed, None).

        As Infinity's sampler: the logits are viewed as (B, n*d, 2), one row per bit, and the run's temperature /
        top-k / top-p act on each pair (top-k 1: the likelier bit; top-p: the unlikelier bit is dropped when its
        probability is at most 1 - p); then one multinomial draw over all B*n*d rows from the run's generator.
        Forced tokens (editing) keep their ids.  No soft codes."""
        from arvision.tokenizers.bitwise import pack_bits

        B, n, _ = logits.shape
        pairs = run.filtered(logits.reshape(B, n * self.bits, 2), s)
        ids = pack_bits(run.options.tokens.draw(pairs, run.generator).view(B, n, self.bits))
        forced = run.forced(s)
        if forced is not None:
            ids = torch.where(forced[1], forced[0], ids)
        return ids, None
