"""The AR trunk: one transformer, its parts chosen by the model's family, two entry points.

``forward``            the whole sequence of a schedule under its attention mask (training, parity checks);
``forward_positions``  some positions against a KV cache (sampling; ``forward_step`` = one schedule step).

Parts, all from the model's family (``arvision.families``) but the condition's encoder: ``class_emb`` encodes
class conditions (row ``num_classes`` = null), or, for text models, ``text_encoder`` encodes prompts
(``arvision.models.text``, the encoder ``TransformerConfig.text_encoder`` names; its per-word states reach every
block through cross-attention, or as a prefix that passes through the blocks: ``TransformerConfig.text_mode``);
``embed`` turns step inputs and positions into hidden states (``arvision.models.embeddings``); ``blocks`` (by
default ``TransformerConfig.block``'s kind of ``arvision.models.blocks.BLOCKS``), with ``shared_ada_lin`` when the
blocks share one AdaLN projection; ``head`` turns hidden states into logits and owns the token choice and the loss
(``arvision.models.heads``).  A head may read more than the last block's output (``head.taps``: the indices of the
blocks whose outputs it also takes) and map the hidden states of the positions a step feeds to the logits of the
tokens it produces, which need not be one per position (NAR's two neighbour heads; ``head.readout``).  A family may
give the trunk named *routes* (``family.block_routes``): each runs its own subset of the blocks into its own share of
the head (HMAR's shared blocks, then either its next-scale or its masked-prediction blocks and head); every entry
point takes ``route`` (None: the first).  The schedule
is an argument of every call, as a :class:`Layout` (``layout(schedule)``): nothing about the token order is baked
into the weights' shapes beyond what a family learns (VAR's per-position table).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from arvision.checkpoints import KeyMap
from arvision.conditions import Condition
from arvision.models.attention import KVCache, StepLocalCache
from arvision.models.embeddings import Layout
from arvision.models.text import padding_bias
from arvision.schedules import Schedule

# Our own checkpoint layout before the family registry (arvision <= 0.1.0 folders): flat embedder and head names.
LEGACY_KEYS = KeyMap(rules=[
    (r"^input_proj\.", "embed.input_proj.", r"^embed\.input_proj\.", "input_proj."),
    (r"^(pos_start|pos_embed)$", r"embed.\1", r"^embed\.(pos_start|pos_embed)$", r"\1"),
    (r"^lvl_embed\.", "embed.lvl_embed.", r"^embed\.lvl_embed\.", "lvl_embed."),
    (r"^head_norm\.", "head.norm.", r"^head\.norm\.", "head_norm."),
    (r"^head\.(weight|bias)$", r"head.proj.\1", r"^head\.proj\.(weight|bias)$", r"head.\1"),
])


def upgrade_legacy_keys(state: dict) -> dict:
    """A transformer state dict in the pre-registry layout -> today's names (unchanged if already current)."""
    if "head.weight" not in state and not any(k.startswith(("input_proj.", "head_norm.")) for k in state):
        return state
    return {LEGACY_KEYS.to_ours(k): v for k, v in state.items()}


class Conditioning(NamedTuple):
    """What the condition contributes to every step, computed once per sequence by ``ARTransformer.condition``."""

    emb: torch.Tensor  # (B, C) the condition embedding (prefix token / AdaLN input)
    blocks: list  # per block: its modulation (AdaLN: (B, 1, 6, C)), or None
    head: torch.Tensor | None  # the head's modulation (AdaLN: (B, 1, 2, C)), or None
    context: list | None = None  # text models, per block: the text's (k, v, bias) for its cross-attention, or
    # in the prefix text mode the prefix's (k, v, bias) of its self-attention

    def select(self, rows: torch.Tensor) -> Conditioning:
        """Keep batch rows ``rows`` (repeats allowed)."""
        return Conditioning(self.emb[rows], [None if m is None else m[rows] for m in self.blocks],
                            None if self.head is None else self.head[rows],
                            None if self.context is None else [tuple(t[rows] for t in c) for c in self.context])

    def ctx(self, i: int):
        return None if self.context is None else self.context[i]


class ARTransformer(nn.Module):
    def __init__(self, config):
        """config: a ``ModelConfig``; its family builds the embedder and the head."""
        super().__init__()
        from arvision.families import get_family

        cfg = config.transformer
        self.cfg, self.family = cfg, get_family(config.family)
        self.token_steps = False  # raster sampling through forward_token (set by ARPipeline.compile)
        # registration order = initialisation order (init_weights walks self.modules())
        self.class_emb = self.text_encoder = None
        if cfg.condition == "text":
            from arvision.models.text import TEXT_ENCODERS

            self.text_encoder = TEXT_ENCODERS[cfg.text_encoder].from_config(cfg)
        else:
            self.class_emb = nn.Embedding(cfg.num_classes + 1, cfg.width)  # row num_classes = null class
        self.embed = self.family.embedder(config)
        self.shared_ada_lin, self.blocks = self.family.blocks(config)
        self.head = self.family.head(config)
        # blocks whose outputs the head reads besides the last block's (a head with ``taps`` has ``readout``)
        self.taps = tuple(sorted(i % len(self.blocks) for i in getattr(self.head, "taps", ())))
        # route name -> the indices of the blocks it runs, in order (None: one route through every block)
        self.routes = self.family.block_routes(config)
        self._masks: dict = {}

    # -- pieces shared by the entry points -------------------------------------------------------------
    def condition(self, condition: Condition) -> Conditioning:
        """A condition (B rows) -> its embedding and every block's and the head's share of it.

        The AdaLN modulations depend only on the condition, so they are computed once per sequence, not once per
        step: at batch 1 their weights (a third of a VAR model's) would otherwise be read again at every scale."""
        enc = condition.encode(self)
        cond = mod_in = enc.emb
        if self.shared_ada_lin is not None:
            mod_in = self.shared_ada_lin(F.silu(cond)).view(-1, 1, 6, self.cfg.width)
        mods = [blk.modulation(mod_in) for blk in self.blocks]
        context = None
        if enc.states is not None and self.cfg.text_mode == "prefix":
            # the prefix sees only itself, so its keys/values in every block do not depend on the image: run it
            # through the blocks once, keeping each block's (k, v, bias)
            p, bias, context = enc.states, padding_bias(enc.valid, enc.states.dtype), []
            for blk, mod in zip(self.blocks, mods):
                p, kvb = blk.prefix_step(p, mod, bias)
                context.append(kvb)
        elif enc.states is not None:  # text: every block's keys/values of the prompt, projected once
            context = [blk.cross.context(enc.states, enc.valid) for blk in self.blocks]
        return Conditioning(cond, mods, self.head.modulation(cond), context)

    @property
    def reference_weight(self) -> torch.Tensor:
        """A weight whose device and dtype are the model's (the condition encoder's first table)."""
        return self.class_emb.weight if self.class_emb is not None else self.text_encoder.reference_weight

    def layout(self, schedule: Schedule) -> Layout:
        """What ``schedule`` means to this trunk (positions of every step), built once per call."""
        return self.embed.layout(schedule)

    def _mask(self, schedule: Schedule, device) -> torch.Tensor:
        """The schedule's (L, L) additive mask, built once per (schedule, device) rather than every training step."""
        key = (schedule, str(device))
        if key not in self._masks:
            if len(self._masks) > 64:  # random training schedules: keep the table small
                self._masks.clear()
            self._masks[key] = schedule.position_bias(device=device)
        return self._masks[key]

    def route_blocks(self, route: str | None = None):
        """The indices of the blocks ``route`` runs, in order (every block when the family has no routes)."""
        if self.routes is None:
            if route is not None:
                raise ValueError(f"this trunk has one route; got route {route!r}")
            return range(len(self.blocks))
        return self.routes[next(iter(self.routes)) if route is None else route]

    def _blocks(self, h: torch.Tensor, cond: Conditioning, rope, bias, cache, begin,
                route: str | None = None) -> tuple[torch.Tensor, list]:
        """The blocks of ``route`` over hidden states h -> (the last block's output, the outputs of the blocks in
        ``taps``)."""
        taps = []
        for i in self.route_blocks(route):
            h = self.blocks[i](h, cond.blocks[i], rope, bias, cache, i, begin, cond.ctx(i))
            if i in self.taps:
                taps.append(h)
        return h, taps

    def _logits(self, h: torch.Tensor, taps: list, cond: Conditioning, layout: Layout, begin, end,
                route: str | None = None) -> torch.Tensor:
        """Hidden states of positions [begin, end) -> the logits of the tokens they predict: the head's, position by
        position (its share for ``route``), or its ``readout`` of the schedule's neighbours when it taps earlier
        blocks."""
        if route is not None:
            return self.head(h, cond.head, route=route)
        if not self.taps:
            return self.head(h, cond.head)
        return self.head.readout(h, taps, cond.head, layout.schedule, begin, end)

    # -- entry points -------------------------------------------------------------------------------
    def forward(self, cond: Conditioning | Condition, x_in: torch.Tensor | None,
                layout: Layout | Schedule, route: str | None = None) -> torch.Tensor:
        """Teacher forcing over a schedule (or its layout): x_in feeds positions first_len..seq_length-1 -> logits
        (B, L, V) of every token, in schedule order.
        Given a Condition and a Schedule, the condition's encoding and the positions are computed here, inside the
        forward (so data-parallel training sees every parameter used in it)."""
        if isinstance(cond, Condition):
            cond = self.condition(cond)
        if isinstance(layout, Schedule):
            layout = self.layout(layout)
        L = layout.schedule.seq_length
        h = self.embed(cond.emb, x_in, 0, L, layout)
        h, taps = self._blocks(h, cond, layout.rope, self._mask(layout.schedule, h.device), None, 0, route)
        return self._logits(h, taps, cond, layout, 0, L, route)

    def forward_step(self, s: int, cond: Conditioning, x_in: torch.Tensor | None, cache: KVCache,
                     layout: Layout) -> torch.Tensor:
        """Step s.  x_in (B, n, ...) the step's input (None at s=0), fed at the positions ``input_spans[s]`` ->
        logits (B, n_s, V) of its tokens.  Keys/values of the step are written to ``cache``."""
        begin, end = layout.schedule.input_spans[s]
        return self.forward_positions(begin, end, cond, x_in, cache, layout)

    def forward_positions(self, begin: int, end: int, cond: Conditioning, x_in: torch.Tensor | None,
                          cache: KVCache, layout: Layout, mask: torch.Tensor | None = None,
                          route: str | None = None) -> torch.Tensor:
        """Positions [begin, end) against the cache -> logits (B, n, V) of the tokens they predict (n = end-begin, but
        for a head with a ``readout``).  ``mask`` (end-begin, end)
        additive restricts what they see (a causal window of speculative raster drafts); None: all of it.
        ``route``: the family's block route to run (None: the first)."""
        h = self.embed(cond.emb, x_in, begin, end, layout)
        rope = None if layout.rope is None else layout.rope[begin:end]
        h, taps = self._blocks(h, cond, rope, mask, cache, begin, route)
        return self._logits(h, taps, cond, layout, begin, end, route)

    def forward_token(self, seen: torch.Tensor, cond: Conditioning, x_in: torch.Tensor, cache: KVCache,
                      layout: Layout) -> torch.Tensor:
        """One raster step: x_in (B, 1) the previous token, fed at position n-1 (n >= 2), which attends to the n
        positions ``seen`` (n,) (int64, 0..n-1) -> logits (B, 1, V).  ``forward_positions(n-1, n, ...)``, with the
        position taken from a tensor's length: ``pipe.compile`` marks that length dynamic, so one graph serves every
        position, and each step still reads only the n cached positions (not the whole cache under a mask, which
        reads twice the keys and values on average).  Families with ``capabilities.token_step`` only."""
        n = seen.shape[0]
        return self.forward_positions(n - 1, n, cond, x_in, cache, layout)

    def new_cache(self, batch: int, schedule: Schedule, dtype=torch.float32, device=None, policy=None) -> KVCache:
        """A full static cache for ``schedule``, or the one ``policy`` (``arvision.sampling.kv_policies``) builds; for a
        schedule whose steps see only themselves (block-diagonal), a cache that stores nothing."""
        cfg = self.cfg
        device = device or self.reference_weight.device
        if policy is not None:
            return policy.new_cache(self, schedule, batch, dtype, device)
        if not schedule.sees_earlier_steps:
            return StepLocalCache(batch)
        # the compiled one-token step reads the view [0, n) of the cache; were the last step's view the whole
        # tensor (n == length), it would be contiguous, and the attention's matmul, guarded on that, recompiles
        spare = 1 if self.token_steps else 0
        return KVCache(cfg.depth, batch, cfg.num_heads, schedule.seq_length + spare, cfg.head_dim, dtype, device)

    @torch.no_grad()
    def init_weights(self) -> None:
        """Initialise for training from scratch, by the family's recipe."""
        self.family.init_weights(self)
