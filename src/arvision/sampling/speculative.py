"""Speculative Jacobi decoding for raster models: SJD, MC-SJD and GSD as one decoding policy of the loop.

A window of W draft tokens is verified by one trunk forward over positions [n, n+W) under a causal mask
(position n+i sees the accepted prefix and drafts n..n+i-1).  Position n+i's target distribution p_i is
exact when drafts n..n+i-1 were all accepted, so drafts are tested left to right with an acceptance rule and
the first rejected one is replaced by a draw from the residual norm(max(0, p - q)): the emitted tokens are
distributed exactly as plain decoding's (Leviathan et al.'s speculative sampling, applied to Jacobi drafts by
SJD, Teng et al. 2024).  Drafts that were not emitted are refreshed from this forward's p for the next one:
independently (SJD) or coupled to the old draft (MC-SJD: keep it with probability min(1, p_new/q_old), else
draw from norm(max(0, p_new - q_old)); still exact, and drafts settle faster).  GSD (So et al. 2025) tests
a group of tokens of similar target probability instead of the draft alone (lossy, more acceptances).

Batches: every row runs the same window, and the batch advances by the fewest tokens any row emitted.  A row's
emissions are an exact sample, so any prefix of them whose length does not depend on that row's own draws is
one too; longer emissions of other rows are dropped and redrafted fresh (they were selected by an acceptance
test, so they are no longer distributed as their draft distribution).  Batch 1 is the published algorithm.

The KV cache needs no rollback work: the next forward rewrites positions from the first unaccepted one.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from arvision.errors import ArvisionError
from arvision.sampling.processors import Generators, draw_from_probs
from arvision.specs import parse_spec

DECODINGS = {"plain": "plain", "sjd": "sjd[:WINDOW]", "mcsjd": "mcsjd[:WINDOW]", "gsd": "gsd[:GROUP[:WINDOW]]"}
PARAMETERS = {"plain": (), "sjd": ("window",), "mcsjd": ("window",), "gsd": ("group", "window")}  # positional


# -- randomness, per batch or per row -------------------------------------------------------------------
def _uniform(shape: tuple[int, ...], generator: Generators, device) -> torch.Tensor:
    """(B, ...) uniform [0, 1) from one generator, or row b from generator[b]."""
    if isinstance(generator, (list, tuple)):
        return torch.stack([torch.rand(shape[1:], generator=g, device=device) for g in generator])
    return torch.rand(shape, generator=generator, device=device)


def _random_ids(shape: tuple[int, int], vocab: int, generator: Generators, device) -> torch.Tensor:
    if isinstance(generator, (list, tuple)):
        return torch.stack([torch.randint(vocab, shape[1:], generator=g, device=device) for g in generator])
    return torch.randint(vocab, shape, generator=generator, device=device)


def residual(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """norm(max(0, p - q)) over the last dim; where p <= q everywhere (p == q up to rounding), p itself."""
    r = (p - q).clamp_min_(0)
    empty = r.sum(-1, keepdim=True) <= 0
    return torch.where(empty, p, r)


# -- acceptance rules ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class StandardAcceptance:
    """Speculative sampling: accept draft x with probability min(1, p(x) / q(x)).  Lossless."""

    def probability(self, p: torch.Tensor, q: torch.Tensor, x: torch.Tensor, embeddings=None) -> torch.Tensor:
        """p, q (B, W, V); x (B, W) drafts -> acceptance probabilities (B, W)."""
        px, qx = p.gather(-1, x[..., None])[..., 0], q.gather(-1, x[..., None])[..., 0]
        return (px / qx.clamp_min(1e-30)).clamp_max(1.0)


@dataclass(frozen=True)
class GroupedAcceptance:
    """GSD: accept x with probability min(1, P/Q), P and Q the target and draft mass of x's group.

    The group: the ``size`` tokens nearest to x in the ranking by target probability (x included), keeping
    those whose target probability is within ``prob_gap`` of p(x) and, when ``embed_dist`` is set, whose
    input embedding lies within that squared L2 distance of x's (the released code's filters; its
    thresholds were 0.15 and 0.5 for Lumina-mGPT's embeddings, whose scale is not ours, so the distance
    filter is off by default).  size 1 is the standard rule.  Lossy: the accepted token is the draft itself,
    not a draw within the group.  Our guard: a draft the filters removed (p(x) = 0: outside top-k/top-p) is
    never accepted, whatever its group's mass — the released rule would emit it.
    """

    size: int = 3
    prob_gap: float = 0.15
    embed_dist: float | None = None

    def __post_init__(self):
        if not isinstance(self.size, int) or self.size < 1:
            raise ArvisionError(f"GSD group size must be an integer >= 1, got {self.size!r}")

    def probability(self, p: torch.Tensor, q: torch.Tensor, x: torch.Tensor, embeddings=None) -> torch.Tensor:
        if self.size == 1:
            return StandardAcceptance().probability(p, q, x)
        V = p.shape[-1]
        order = p.argsort(dim=-1, stable=True)  # ascending target probability
        rank = torch.empty_like(order).scatter_(-1, order, torch.arange(V, device=p.device).expand_as(order))
        r = rank.gather(-1, x[..., None])  # (B, W, 1)
        lo = (r - (self.size - 1) // 2).clamp(0, V - self.size)
        group = order.gather(-1, lo + torch.arange(self.size, device=p.device))  # (B, W, G)
        pg, qg = p.gather(-1, group), q.gather(-1, group)
        px = p.gather(-1, x[..., None])
        keep = (pg - px).abs() < self.prob_gap
        if self.embed_dist is not None and embeddings is not None:
            d = (embeddings[group] - embeddings[x][..., None, :]).pow(2).sum(-1)
            keep &= d < self.embed_dist
        keep |= group == x[..., None]
        P, Q = (pg * keep).sum(-1), (qg * keep).sum(-1)
        return (P / Q.clamp_min(1e-30)).clamp_max(1.0).masked_fill_(px[..., 0] <= 0, 0.0)


# -- the decoding policy -------------------------------------------------------------------------------
@dataclass
class JacobiDecoding:
    """Speculative Jacobi decoding of a raster ``SamplingRun``.  window: drafts verified per forward (SJD's 16);
    coupled: MC-SJD's draft refresh; acceptance: ``StandardAcceptance()`` (lossless) or ``GroupedAcceptance``.

    After ``run``: ``iterations`` (forwards), ``emitted`` (tokens per forward, per iteration)."""

    window: int = 16
    coupled: bool = False
    acceptance: object = StandardAcceptance()
    name: str = "sjd"

    def __post_init__(self):
        if not isinstance(self.window, int) or self.window < 1:
            raise ArvisionError(f"the Jacobi window must be an integer >= 1, got {self.window!r}")
        self.emitted: list[int] = []

    @torch.no_grad()
    def run(self, run, on_step=None) -> None:
        if not run.transformer.family.capabilities.speculative_decoding:
            raise ArvisionError(f"{self.name} decoding drafts one token per position: it needs a raster "
                                "(next-token) model; scale-wise models take one scale per step")
        if run.override is not None:
            raise ArvisionError(f"{self.name} decoding does not take forced tokens (editing); use plain decoding")
        if run.kv_policy is not None:
            raise ArvisionError(f"{self.name} decoding rewinds the KV cache by position; it cannot be combined "
                                "with a compressed-cache policy")
        B, L, dev = run.batch, run.schedule.length, run.device
        V = run.transformer.cfg.vocab_size
        W, gen = self.window, run.generator
        embeddings = run.transformer.embed.input_proj.weight.float() \
            if isinstance(self.acceptance, GroupedAcceptance) else None
        # drafts (B, W) for positions n..n+W-1 and the distributions they were drawn from (B, W, V);
        # the first drafts are uniform random tokens with q = one-hot (SJD's "random" initialisation)
        drafts = _random_ids((B, W), V, gen, dev)
        q = torch.nn.functional.one_hot(drafts, V).float()
        self.emitted = []
        n = 0
        while n < L:
            w = min(W, L - n)
            x = drafts[:, :w]
            fed = x[:, :w - 1] if n == 0 else torch.cat([run.tokens[:, n - 1:n], x[:, :w - 1]], dim=1)
            mask = None
            if w > 1:
                pos = torch.arange(n + w, device=dev)
                mask = torch.zeros(w, n + w, device=dev).masked_fill_(pos[None, :] > (n + pos[:w, None]),
                                                                      float("-inf"))
            run.s = n
            logits = run.trunk(n, n + w, run.doubled_input(fed if fed.shape[1] else None), mask, s=n)
            with run.fp32():
                p = run.filtered(logits, n).softmax(dim=-1)  # (B, w, V)
                qw = q[:, :w]
                accept = _uniform((B, w), gen, dev) < self.acceptance.probability(p, qw, x, embeddings)
                a = accept.long().cumprod(dim=1).sum(dim=1)  # leading acceptances per row (B,)
                at = a.clamp_max(w - 1)
                rows = torch.arange(B, device=dev)
                # the rejected slot's token
                fix = draw_from_probs(residual(p[rows, at], qw[rows, at])[:, None], gen)[:, 0]
                m = int(torch.where(a < w, a + 1, a).min())  # tokens every row emitted
                out = x[:, :m].clone()
                last = (a < w) & (a < m)  # rows whose rejected slot lies inside the emitted prefix
                out[rows[last], at[last]] = fix[last]
                run.tokens[:, n:n + m] = out
                # the next window: positions n+m.. ; slots n+m..n+w-1 refreshed from this forward's p
                nxt = torch.empty(B, W, dtype=torch.long, device=dev)
                nq = torch.empty(B, W, V, device=dev)
                k = w - m
                if k:
                    p_rest = p[:, m:]
                    new = draw_from_probs(p_rest, gen)
                    if self.coupled:
                        # slots after the row's first rejection: their drafts were never tested, so they are
                        # still plain draws from q_old and may be coupled; tested ones are redrawn
                        untested = torch.arange(m, w, device=dev)[None] > a[:, None]
                        old, q_old = x[:, m:], qw[:, m:]
                        keep_p = (p_rest.gather(-1, old[..., None]) / q_old.gather(-1, old[..., None]).clamp_min(
                            1e-30))[..., 0].clamp_max(1.0)
                        keep = _uniform((B, k), gen, dev) < keep_p
                        moved = draw_from_probs(residual(p_rest, q_old), gen)
                        new = torch.where(untested, torch.where(keep, old, moved), new)
                    nxt[:, :k], nq[:, :k] = new, p_rest
                if W - k:
                    extra = _random_ids((B, W - k), V, gen, dev)
                    nxt[:, k:], nq[:, k:] = extra, torch.nn.functional.one_hot(extra, V).float()
                drafts, q = nxt, nq
                self.emitted.append(m)
                n += m
                if on_step is not None:
                    on_step(n - 1, run.state, run.tokens)
        run.s = run.schedule.num_steps


def parse_decoding(spec: str, pipe=None):
    """"plain" | "sjd[:W]" | "mcsjd[:W]" | "gsd[:G[:W]]" -> a decoding policy (None for plain)."""
    s = parse_spec(str(spec), "decoding", DECODINGS)
    params = PARAMETERS[s.name]
    s.max_args(len(params))
    nums = dict(zip(params, (s.integer(a, f"{s.name}'s {p}") for a, p in zip(s.args, params))))
    if pipe is not None and s.name != "plain" and not pipe.family.capabilities.speculative_decoding:
        raise ArvisionError(f"--decoding {s.name} needs a raster (next-token) model; this is a scale-wise "
                            f"({pipe.family.description}) model")
    if s.name == "plain":
        return None
    window = nums.get("window", 16)
    if s.name in ("sjd", "mcsjd"):
        return JacobiDecoding(window=window, coupled=s.name == "mcsjd", name=s.name)
    return JacobiDecoding(window=window, acceptance=GroupedAcceptance(size=nums.get("group", 3)), name="gsd")
