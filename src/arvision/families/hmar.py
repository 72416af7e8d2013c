"""HMAR (hierarchical masked autoregressive modelling, Kumbong et al. 2025; NVlabs/HMAR): the family object and the
official key map.  Its model parts (embedder, head with the masked sub-steps, input builder) are in
``families/hmar_parts.py``.

HMAR is VAR's next-scale prediction made Markovian, plus masked re-prediction inside a scale:

* **attention**: block-diagonal (:class:`~arvision.schedules.ScaleSchedule` with ``attention="block-diagonal"``):
  a scale sees only its own tokens, earlier scales reach it only through the canvas f_hat in its input, so sampling
  keeps no KV cache (``capabilities``: no KV policies, no speculative decoding);
* **trunk**: ``depth - branch_depth`` shared blocks, then one of two copies of the last ``branch_depth`` blocks
  (``block_routes``: "next-scale" and "masked"), each with its own AdaLN head; the blocks are VAR's;
* **sampling**: each scale is drawn as VAR draws it (guidance ramp, top-k then ascending top-p, one multinomial
  call), then re-predicted in masked sub-steps (``mask_steps``, the official ``mask_schedule``): the least confident
  positions are replaced by ``mask_embed`` and drawn again through the masked route;
* **training loss**: the next-scale route's cross-entropy (``head.loss``) under HMAR's per-scale "lognorm" weights
  (``loss_weights``); the masked route is trained in a second stage (``start_masked_stage``, ``arvision train
  --masked-stage --init MODEL``, the official ``mp_trainer.py``): it starts as a copy of the next-scale route's own
  blocks and head, everything else frozen, on inputs with a random share of each scale's tokens masked.

Official files: VAR's VQ-VAE (unchanged) and ``HMAR.state_dict()``: ``base_blocks.{i}``, ``ns_blocks.{j}``,
``mask_blocks.{j}``, ``ns_head_nm``/``ns_head``, ``mask_head_nm``/``mask_head``, ``word_embed.weight`` (no bias)
plus ``word_embed_bias``, ``mask_embed.weight``, and VAR's ``class_emb``, ``pos_start``, ``pos_1LC``, ``lvl_embed``
and buffers.  Depth, width, heads, classes, vocabulary, ``n_layers_train`` (our ``branch_depth``) and the scale
list (``lvl_1L``) are read from the shapes.
"""

from __future__ import annotations

import dataclasses
import re

import torch

from arvision.checkpoints import KeyMap
from arvision.config import ModelConfig
from arvision.errors import ArvisionError, CheckpointError
from arvision.families.base import Capabilities, OfficialModel, Option
from arvision.families.hmar_parts import HMARCanvas, HMAREmbedder, HMARHead, MaskedStepSampling, parse_mask_steps
from arvision.families.var import (
    PATCH_NUMS_256,
    VAR_KEYMAP,
    VARFamily,
    _count,
    _need,
    adaln_trunk_config,
    init_adaln_trunk,
    vae_keymap,
)
from arvision.families.var import config_from_official as var_config_from_official
from arvision.schedules import ScaleSchedule

# the official default ``mask_schedule`` (utils/sampling_arg_util.py) for VAR's 256 px scale list: sub-steps at
# 2x2 (one, re-predicting 3 tokens) and 3x3 (three, re-predicting 8, 7, 5)
DEFAULT_MASK_STEPS = {PATCH_NUMS_256: ((1,), (1, 3), (1, 1, 2, 5), (16,), (25,), (36,), (64,), (100,), (169,),
                                       (256,))}

def prefix_rule(official: str, ours: str) -> tuple[str, str, str, str]:
    """A KeyMap rule renaming one name prefix both ways."""
    return f"^{re.escape(official)}", ours, f"^{re.escape(ours)}", official


# official names outside the blocks -> ours (and back): the split input projection, the mask embedding, two heads
HMAR_RULES = [prefix_rule(official, ours) for official, ours in (
    ("word_embed.weight", "embed.input_proj.weight"), ("word_embed_bias", "embed.input_proj.bias"),
    ("mask_embed.", "embed.mask_embed."),
    ("ns_head_nm.ada_lin.1.", "head.norm.ada_lin."), ("ns_head.", "head.proj."),
    ("mask_head_nm.ada_lin.1.", "head.mask_norm.ada_lin."), ("mask_head.", "head.mask_proj."))]


def hmar_keymap(depth: int, branch_depth: int) -> KeyMap:
    """The official HMAR layout <-> ours.  Our trunk holds every block in one list: the shared blocks
    (``base_blocks.{i}`` -> ``blocks.{i}``), then the next-scale copies (``ns_blocks.{j}`` -> ``blocks.{base + j}``),
    then the masked copies (``mask_blocks.{j}`` -> ``blocks.{depth + j}``); inside a block VAR's names apply."""
    base = depth - branch_depth
    starts = {"base": 0, "ns": base, "mask": depth}

    def to_ours(m: re.Match) -> str:
        return VAR_KEYMAP.to_ours(f"blocks.{starts[m.group(1)] + int(m.group(2))}.{m.group(3)}")

    def to_official(m: re.Match) -> str:
        i = int(m.group(1))
        group = "base" if i < base else "ns" if i < depth else "mask"
        inner = VAR_KEYMAP.to_official(f"blocks.{i}.{m.group(2)}").split(".", 2)[2]
        return f"{group}_blocks.{i - starts[group]}.{inner}"

    blocks = (r"^(base|ns|mask)_blocks\.(\d+)\.(.*)$", to_ours, r"^blocks\.(\d+)\.(.*)$", to_official)
    # every other name is VAR's (class_emb, pos_start, pos_1LC, lvl_embed, shared_ada_lin)
    rest = (r"^(.*)$", lambda m: VAR_KEYMAP.to_ours(m.group(1)), r"^(.*)$",
            lambda m: VAR_KEYMAP.to_official(m.group(1)))
    return KeyMap(rules=[blocks, *HMAR_RULES, rest], buffers=(r"lvl_1L", r"attn_bias_for_masking"))


def var_view(sd: dict) -> dict:
    """An HMAR state dict seen as a VAR one (shared blocks then next-scale blocks as ``blocks.*``, the next-scale head
    as ``head``), so VAR's readers infer the trunk; the masked copies are left out."""
    base = _count(sd, r"^base_blocks\.(\d+)\.")
    view = {}
    for key, value in sd.items():
        if m := re.match(r"^base_blocks\.(\d+)\.(.*)$", key):
            view[f"blocks.{m.group(1)}.{m.group(2)}"] = value
        elif m := re.match(r"^ns_blocks\.(\d+)\.(.*)$", key):
            view[f"blocks.{base + int(m.group(1))}.{m.group(2)}"] = value
        elif key.startswith(("ns_head.", "ns_head_nm.")):
            view[key[3:]] = value
        elif not key.startswith(("mask_", "word_embed")):
            view[key] = value
    if "word_embed.weight" in sd:
        view["word_embed.weight"] = sd["word_embed.weight"]
    return view


def config_from_official(vae_sd: dict, hmar_sd: dict, patch_nums=None, num_classes: int | None = None,
                         num_heads: int | None = None) -> ModelConfig:
    """A ModelConfig for an official (VQ-VAE, HMAR) pair.  Raises CheckpointError on inconsistencies."""
    what = "HMAR transformer checkpoint"
    for key in ("mask_embed.weight", "word_embed_bias", "mask_head.weight", "ns_head.weight"):
        _need(hmar_sd, key, what)
    branch = _count(hmar_sd, r"^ns_blocks\.(\d+)\.")
    masked = _count(hmar_sd, r"^mask_blocks\.(\d+)\.")
    if branch < 1 or masked != branch:
        raise CheckpointError(f"{what}: {branch} ns_blocks and {masked} mask_blocks (HMAR has as many of each, at "
                              "least one)")
    view = var_view(hmar_sd)
    try:
        var = var_config_from_official(vae_sd, view, patch_nums=patch_nums, num_classes=num_classes,
                                       num_heads=num_heads)
    except CheckpointError as e:
        raise CheckpointError(str(e).replace("VAR transformer", what).replace("VAR model", "HMAR model")) from None
    tr = dataclasses.replace(adaln_trunk_config(view, what, num_classes, num_heads), branch_depth=branch)
    return dataclasses.replace(var, family="hmar", transformer=tr)


def expected_buffers(config: ModelConfig) -> tuple[dict, dict]:
    L = sum(p * p for p in config.tokenizer.patch_nums)
    return ({"quantize.ema_vocab_hit_SV": (None, config.tokenizer.vocab_size)},
            {"lvl_1L": (1, L), "attn_bias_for_masking": (1, 1, L, L)})


class HMARFamily(VARFamily):
    """VAR's tokenizer, canvas, positions, guidance ramp, top-p rule and official VQ-VAE; block-diagonal scales,
    the two block routes and heads, and the masked sub-steps of its own."""

    name = "hmar"
    description = "HMAR"
    refines = "var"  # its official files carry VAR's lvl_1L buffer as well: `convert var` on one names `convert hmar`
    # no KV cache: no KV policies, no speculative decoding; the masked route trains in a second stage
    capabilities = Capabilities(progression=True, masked_stage=True)
    sampling_options = {
        "mask_steps": "masked sub-steps per scale: 'none', or counts per scale separated by '/', within a scale by "
                      "',' (e.g. 1/1,3/1,1,2,5/16/...); sub-step k re-predicts the sum of the counts after the k-th "
                      "least confident tokens (default: the official schedule on the 256 px scale list, else none)",
    }
    # the HMAR repository's evaluation settings for d16 (config/evaluate/hmar-d16.yaml; d20: 1.9/950, d24: 2.1/900,
    # d30: 1.6/650, all top-p 0.99): store another model's with its folder (``config.sampling``)
    defaults = {"guidance_scale": 1.7, "top_k": 1000, "top_p": 0.99}
    presets = {f"d{d}": (d, 64 * d, d) for d in (16, 20, 24, 30)}
    official_files = (Option("vae", "path", "the multi-scale VQ-VAE checkpoint (VAR's)", required=True),
                      Option("var", "path", "the HMAR transformer checkpoint (HMAR.state_dict())", required=True))
    convert_help = "HMAR: vae_ch160v4096z32.pth + an HMAR class-to-image transformer"

    # -- config and parts -------------------------------------------------------------------------------------
    def check_config(self, config: ModelConfig) -> None:
        super().check_config(config)
        if config.transformer.branch_depth < 1:
            raise ArvisionError(f"invalid HMAR branch_depth: {config.transformer.branch_depth!r} (the blocks copied "
                                f"per route, n_layers_train: 1 to depth={config.transformer.depth})")

    def from_scratch(self, latent_side: int) -> dict:
        """One block per route (the official ``n_layers_train`` ranges 1..depth; the masked copy is trained in a
        second stage, so a from-scratch run keeps the copy small)."""
        return {"branch_depth": 1}

    def schedule(self, config: ModelConfig, patch_nums=None) -> ScaleSchedule:
        trained = super().schedule(config, patch_nums)
        return ScaleSchedule.from_sides(trained.sides, attention="block-diagonal")

    def input_builder(self, tokenizer, schedule) -> HMARCanvas:
        return HMARCanvas(tokenizer, schedule)

    def embedder(self, config: ModelConfig) -> HMAREmbedder:
        tr = config.transformer
        return HMAREmbedder(tr.in_channels, tr.width, self.schedule(config))

    def blocks(self, config: ModelConfig):
        """depth blocks (shared, then next-scale) plus branch_depth masked copies, the copies' drop-path rates those
        of the blocks they copy (the official rule)."""
        from torch import nn

        from arvision.models.blocks import BLOCKS

        cfg = config.transformer
        block = BLOCKS[cfg.block]
        rates = torch.linspace(0, cfg.drop_path_rate, cfg.depth).tolist()
        base = cfg.depth - cfg.branch_depth
        per_block = rates[:base] + rates[:cfg.branch_depth] + rates[:cfg.branch_depth]
        return block.shared_modulation(cfg), nn.ModuleList(block.build(cfg, r) for r in per_block)

    def block_routes(self, config: ModelConfig) -> dict[str, tuple[int, ...]]:
        tr = config.transformer
        base = tuple(range(tr.depth - tr.branch_depth))
        return {"next-scale": base + tuple(range(len(base), tr.depth)),
                "masked": base + tuple(range(tr.depth, tr.depth + tr.branch_depth))}

    def head(self, config: ModelConfig) -> HMARHead:
        tr = config.transformer
        return HMARHead(tr.width, tr.vocab_size, tr.norm_eps)

    def init_weights(self, transformer) -> None:
        init_adaln_trunk(transformer)  # VAR's rule; it sizes the next-scale head, the masked head likewise below
        with torch.no_grad():
            transformer.head.mask_proj.weight.mul_(0.02)
            transformer.head.mask_norm.ada_lin.weight.mul_(0.5)

    def start_masked_stage(self, transformer) -> str:
        """The official mask fine-tune (``models/mp.py``, ``mp_trainer.py``): it trains a copy of the next-scale
        model in which only the last ``n_layers_train`` blocks, the head and ``mask_embed`` learn, then keeps those
        as ``mask_blocks`` and ``mask_head``.  Here: the masked copies and head start as copies of the next-scale
        route's own blocks and head; every other parameter (shared blocks, input projection, positions, class
        embedding, next-scale route) is frozen, so the next-scale route samples exactly as before."""
        routes = transformer.routes
        own = [i for i in routes["next-scale"] if i not in routes["masked"]]
        copies = [i for i in routes["masked"] if i not in routes["next-scale"]]
        head = transformer.head
        with torch.no_grad():
            for src, dst in zip(own, copies):
                transformer.blocks[dst].load_state_dict(transformer.blocks[src].state_dict())
            head.mask_norm.load_state_dict(head.norm.state_dict())
            head.mask_proj.load_state_dict(head.proj.state_dict())
        transformer.requires_grad_(False)
        for i in copies:
            transformer.blocks[i].requires_grad_(True)
        for module in (head.mask_norm, head.mask_proj, transformer.embed.mask_embed):
            module.requires_grad_(True)
        return "masked"

    def loss_weights(self, schedule) -> torch.Tensor:
        """HMAR's "lognorm" per-scale weights (its released next-scale training configs): scale i's share is a
        standard normal density at z_i, normalised over the scales, spread evenly over its tokens; z_i is the
        z-score (sample std) of the side ratios p/p_last taken in *reversed* scale order, as the official trainer
        computes it, so the coarsest scale gets the finest side's density."""
        sides = torch.tensor(schedule.sides, dtype=torch.float64)
        if len(sides) == 1:
            return torch.full((schedule.length,), 1.0 / schedule.length)
        ratios = sides / sides[-1]
        z = (ratios.flip(0) - ratios.mean()) / ratios.std()
        share = torch.exp(-0.5 * z * z)
        share = share / share.sum()
        per_token = share / sides.pow(2)
        return torch.repeat_interleave(per_token, torch.tensor(schedule.step_sizes)).float()

    # -- sampling rules --------------------------------------------------------------------------------------------
    def check_sampling_options(self, options: dict, schedule) -> dict:
        options = super().check_sampling_options(options, schedule)
        value = options.get("mask_steps")
        if value is None:
            return {"mask_steps": DEFAULT_MASK_STEPS.get(schedule.sides, ())}
        return {"mask_steps": parse_mask_steps(value, schedule)}

    def token_sampling(self, temperature: float, top_k: int, top_p: float, schedule,
                       options: dict) -> MaskedStepSampling:
        steps = options.get("mask_steps")
        steps = DEFAULT_MASK_STEPS.get(schedule.sides, ()) if steps is None else steps
        return MaskedStepSampling(temperature, top_k, top_p, self.top_p_rule, mask_steps=steps)

    # -- official checkpoints ---------------------------------------------------------------------------------------
    def owns_transformer_checkpoint(self, state: dict) -> bool:
        return "mask_embed.weight" in state or any(k.startswith(("ns_blocks.", "mask_blocks.")) for k in state)

    def read_official(self, tokenizer_state: dict, transformer_state: dict, patch_nums=None,
                      num_classes: int | None = None, num_heads: int | None = None) -> OfficialModel:
        config = config_from_official(tokenizer_state, transformer_state, patch_nums=patch_nums,
                                      num_classes=num_classes, num_heads=num_heads)
        tok_buf, tr_buf = expected_buffers(config)
        tr = config.transformer
        return OfficialModel(config, tokenizer_state, transformer_state, vae_keymap(config.tokenizer.share_quant_resi),
                             hmar_keymap(tr.depth, tr.branch_depth), tok_buf, tr_buf)

    def official_state_dicts(self, pipe) -> tuple[dict, dict]:
        config, schedule = pipe.config, pipe.schedule
        tr_cfg = config.transformer
        tok = self.renamed(pipe.tokenizer, vae_keymap(config.tokenizer.share_quant_resi))
        tr = self.renamed(pipe.transformer, hmar_keymap(tr_cfg.depth, tr_cfg.branch_depth))
        tok["quantize.ema_vocab_hit_SV"] = torch.zeros(schedule.num_steps, config.tokenizer.vocab_size)
        tr["lvl_1L"] = schedule.step_ids()[None]
        tr["attn_bias_for_masking"] = schedule.attn_bias()[None, None]  # block-diagonal
        return tok, tr


FAMILY = HMARFamily()
