"""FlexVAR (scale-wise prediction without residuals; Jiao et al. 2025): the family object and its checkpoints.

What differs from VAR, slot by slot:

* tokenizer: LlamaGen's l2-normalised VQ with every scale quantised on its own from the area-resized features
  (``kind="multiscale-independent"``, :class:`~arvision.tokenizers.models.MultiScaleIndependentTokenizer`);
* input builder: step s+1 sees only step s's codes, bicubic-resized (:class:`~arvision.inputs.PreviousScale`);
  the image is the decode of the last scale;
* positions: a learned 2-D grid area-resized to every scale (:class:`GridPositionEmbedder`), no level embedding,
  so **any scale list starting at the trained first side (1) has positions**: ``schedule(config, patch_nums=...)``
  samples on lists the model never saw, and ``training_schedule`` draws a random list every step (FlexVAR's
  ``gen_curr_patch_nums``);
* sampling: guidance ``t = cfg * s / min(S - 1, 9)`` (``t = cfg`` above ``max_pn``) or LlamaGen's constant rule
  (``cfg_mode``), always on the doubled batch; greedy (top-k 1) at scales above ``max_pn`` or outside the
  official sampler's hard-coded set of sides; no temperature in the official sampler (ours defaults to 1).

Official files: ``FlexVAE.pth`` (``{'model': state_dict}``, LlamaGen's VQ layout) and the FlexVAR transformer
(a bare state dict, or a training checkpoint holding it at ``['trainer']['var_wo_ddp']``).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch

from arvision.checkpoints import KeyMap
from arvision.config import ModelConfig
from arvision.errors import ArvisionError, CheckpointError
from arvision.families.base import Capabilities, OfficialModel, Option
from arvision.families.llamagen import official_vq_state, tokenizer_config_from_official, vq_keymap
from arvision.families.var import ADALN_TRUNK_RULES, PATCH_NUMS_256, VARFamily, _need, adaln_trunk_config
from arvision.inputs import PreviousScale
from arvision.models.embeddings import GridPositionEmbedder
from arvision.sampling.processors import TokenSampling
from arvision.schedules import ScaleSchedule

# The official sampler samples greedily at every side outside this set (and above max_pn), whatever top_k says.
SAMPLED_SIDES = frozenset({1, 2, 3, 4, 5, 6, 8, 10, 13, 16, 23, 24, 32})
DEFAULT_MAX_PN = 16
CFG_MODES = ("var", "llamagen")
RAMP_CAP = 9  # the guidance ramp reaches cfg after at most 9 steps: t = cfg * s / min(S - 1, 9)

FLEXVAR_KEYMAP = KeyMap(
    rules=[*ADALN_TRUNK_RULES, (r"^pos_1LC$", "embed.pos_grid", r"^embed\.pos_grid$", "pos_1LC")],
    buffers=(r"attn_bias_for_masking",),  # sized for the constructor's list; the official loaders drop it too
)


@dataclass(frozen=True)
class FlexGuidance:
    """FlexVAR's classifier-free guidance on the [cond; uncond] batch (the official sampler always doubles it).

    mode "var": logits = (1 + t_s) cond - t_s uncond with t_s = cfg * (s / min(S - 1, 9)), or cfg at sides above
    ``max_pn``; mode "llamagen": uncond + cfg (cond - uncond) at every step."""

    scale: float
    mode: str
    weights: tuple[float, ...]  # t_s per step (mode "var")

    doubles_batch = True

    @classmethod
    def build(cls, scale: float, sides: tuple[int, ...], max_pn: int, mode: str) -> FlexGuidance:
        denom = min(len(sides) - 1, RAMP_CAP)
        weights = tuple(scale * (s / denom) if p <= max_pn else scale for s, p in enumerate(sides))
        return cls(scale, mode, weights)

    def combine(self, cond: torch.Tensor, uncond: torch.Tensor, s: int, num_steps: int) -> torch.Tensor:
        if self.mode == "llamagen":
            return uncond + (cond - uncond) * self.scale
        t = self.weights[s]
        return (1 + t) * cond - t * uncond


class FlexVARFamily(VARFamily):
    name = "flexvar"
    description = "FlexVAR"
    tokenizer_kind = "multiscale-independent"
    block = "adaln"
    capabilities = Capabilities(scale_lists=True, random_train_schedules=True, progression=True, kv_policies=True,
                                student_forcing=True)
    defaults = {"guidance_scale": 2.5, "top_k": 900, "top_p": 0.95}  # the FID settings of the FlexVAR repository
    sampling_options = {
        "max_pn": f"sides above it are sampled greedily at full guidance (default {DEFAULT_MAX_PN})",
        "cfg_mode": "guidance rule: 'var' (the ramp, default) or 'llamagen' (constant)",
    }
    presets = {}
    official_files = (Option("vae", "path", "the FlexVAE tokenizer checkpoint (LlamaGen VQ layout)", required=True),
                      Option("var", "path", "the FlexVAR transformer checkpoint (bare, or a training checkpoint)",
                             required=True))
    convert_options = (
        Option("patch_nums", "int_list", "the training scale list (default: read from the checkpoint's mask buffer, "
                                         "else 1,2,3,4,5,6,8,10,13,16)"),
        Option("num_classes", "int", "check the class count"),
        Option("num_heads", "int", "attention heads, needed only without attn_l2_norm (default: depth, the "
                                   "released models' rule)"))
    convert_help = "FlexVAR: FlexVAE.pth + FlexVAR transformer (bare or training checkpoint)"
    transformer_checkpoint_paths = (("trainer", "var_wo_ddp"),)

    # -- schedule ----------------------------------------------------------------------------------------
    def schedule(self, config: ModelConfig, patch_nums=None) -> ScaleSchedule:
        sides = config.tokenizer.patch_nums if patch_nums is None else tuple(patch_nums)
        try:
            sides = tuple(int(p) for p in sides)
        except (TypeError, ValueError):
            raise ArvisionError(f"a scale list is a sequence of integers, got {patch_nums!r}") from None
        grid, first = config.transformer.pos_grid, config.tokenizer.patch_nums[0]
        if len(sides) < 2 or any(b <= a for a, b in zip(sides, sides[1:])) or sides[0] != first:
            raise ArvisionError(f"cannot sample on scale list {','.join(map(str, sides))}: it must start at {first} "
                                "and strictly increase, with at least two scales")
        if sides[-1] > grid:
            raise ArvisionError(f"cannot sample on scale list {','.join(map(str, sides))}: its last side "
                                f"{sides[-1]} exceeds this model's position grid ({grid}x{grid}), beyond which "
                                "positions would repeat")
        return ScaleSchedule.from_sides(sides)

    def training_schedule(self, config: ModelConfig, generator: torch.Generator) -> ScaleSchedule:
        return ScaleSchedule.from_sides(random_scale_list(config.tokenizer.patch_nums, generator))

    # -- parts -------------------------------------------------------------------------------------------
    def check_config(self, config: ModelConfig) -> None:
        super().check_config(config)
        if config.transformer.pos_grid < config.latent_size:
            raise ArvisionError(f"invalid pos_grid: {config.transformer.pos_grid!r} (at least the latent side "
                                f"{config.latent_size})")

    def from_scratch(self, latent_side: int) -> dict:
        """A position grid twice the latent side (the released models: 32 for 16), room for zero-shot larger
        scale lists."""
        return {"pos_grid": 2 * latent_side}

    def input_builder(self, tokenizer, schedule) -> PreviousScale:
        return PreviousScale(tokenizer, schedule)

    def embedder(self, config: ModelConfig) -> GridPositionEmbedder:
        tr = config.transformer
        first = config.tokenizer.patch_nums[0] ** 2
        return GridPositionEmbedder(tr.in_channels, tr.width, tr.pos_grid, first_len=first)

    # -- sampling rules ----------------------------------------------------------------------------------
    def check_sampling_options(self, options: dict, schedule) -> dict:
        options = super().check_sampling_options(options, schedule)
        max_pn = options.get("max_pn")
        max_pn = DEFAULT_MAX_PN if max_pn is None else max_pn
        if not isinstance(max_pn, int) or isinstance(max_pn, bool) or max_pn < 1:
            raise ArvisionError(f"max_pn must be a positive integer (a scale side), got {max_pn!r}")
        mode = options.get("cfg_mode") or "var"
        if mode not in CFG_MODES:
            raise ArvisionError(f"cfg_mode must be one of {', '.join(CFG_MODES)}, got {mode!r}")
        return {"max_pn": max_pn, "cfg_mode": mode}

    def guidance(self, scale: float, schedule, options: dict) -> FlexGuidance:
        return FlexGuidance.build(scale, schedule.sides, options["max_pn"], options["cfg_mode"])

    def token_sampling(self, temperature: float, top_k: int, top_p: float, schedule, options: dict) -> TokenSampling:
        greedy = frozenset(s for s, p in enumerate(schedule.sides) if p > options["max_pn"] or p not in SAMPLED_SIDES)
        return TokenSampling(temperature, top_k, top_p, self.top_p_rule, greedy)

    # -- official checkpoints ---------------------------------------------------------------------------
    def owns_transformer_checkpoint(self, state: dict) -> bool:
        pos = state.get("pos_1LC")
        return pos is not None and pos.ndim == 4 and "lvl_1L" not in state

    def owns_tokenizer_checkpoint(self, state: dict) -> bool:
        return "quantize.codebook_used" in state or any(k.startswith("encoder.conv_blocks") for k in state)

    def read_official(self, tokenizer_state: dict, transformer_state: dict, patch_nums=None,
                      num_classes: int | None = None, num_heads: int | None = None) -> OfficialModel:
        what = "FlexVAR transformer checkpoint"
        tr = adaln_trunk_config(transformer_state, what, num_classes, num_heads)
        pos = _need(transformer_state, "pos_1LC", what)
        if pos.ndim != 4 or pos.shape[2] != pos.shape[3] or pos.shape[1] != tr.width:
            raise CheckpointError(f"{what}: pos_1LC has shape {list(pos.shape)}, expected (1, {tr.width}, G, G)")
        inferred = patch_nums_from_mask(transformer_state.get("attn_bias_for_masking"))
        if patch_nums is None:
            patch_nums = inferred or PATCH_NUMS_256
        patch_nums = tuple(int(p) for p in patch_nums)
        if inferred is not None and patch_nums != inferred:
            raise CheckpointError(f"--patch-nums {','.join(map(str, patch_nums))} disagrees with the checkpoint's "
                                  f"training list {','.join(map(str, inferred))} (from its attention mask buffer)")
        tok = tokenizer_config_from_official(tokenizer_state, kind=self.tokenizer_kind, what="FlexVAE checkpoint")
        tok = dataclasses.replace(tok, patch_nums=patch_nums)
        tr = dataclasses.replace(tr, pos_grid=pos.shape[2])
        if tok.vocab_size != tr.vocab_size or tok.embed_dim != tr.in_channels:
            raise CheckpointError(f"the FlexVAE (vocab {tok.vocab_size}, code dim {tok.embed_dim}) does not match the "
                                  f"FlexVAR model (vocab {tr.vocab_size}, input dim {tr.in_channels})")
        config = ModelConfig(family=self.name, image_size=patch_nums[-1] * tok.downsample, tokenizer=tok,
                             transformer=tr)
        return OfficialModel(config, tokenizer_state, transformer_state, vq_keymap(len(tok.dec_ch_mult)),
                             FLEXVAR_KEYMAP, {"quantize.codebook_used": (None,)}, {})

    def official_state_dicts(self, pipe) -> tuple[dict, dict]:
        tr = self.renamed(pipe.transformer, FLEXVAR_KEYMAP)
        tr["attn_bias_for_masking"] = pipe.schedule.attn_bias()[None, None]
        return official_vq_state(pipe), tr


def patch_nums_from_mask(mask: torch.Tensor | None) -> tuple[int, ...] | None:
    """The scale list a block-causal mask buffer (1, 1, L, L) (0 = visible, -inf = hidden) was built for: a position
    sees exactly the positions up to the end of its step, so the distinct visible counts are the steps' ends.
    None without a buffer (the official loaders drop it, so a checkpoint may lack it)."""
    if mask is None:
        return None
    if mask.ndim != 4 or mask.shape[-1] != mask.shape[-2]:
        raise CheckpointError(f"attn_bias_for_masking has shape {list(mask.shape)}, expected (1, 1, L, L)")
    visible = torch.isfinite(mask[0, 0])
    ends = sorted({int(n) for n in visible.sum(1).tolist()})
    sizes = [b - a for a, b in zip([0, *ends[:-1]], ends)]
    sides = [round(n ** 0.5) for n in sizes]
    if any(s * s != n for s, n in zip(sides, sizes)) or not torch.equal(
            visible, ScaleSchedule.from_sides(sides).visible()):
        raise CheckpointError("attn_bias_for_masking is not the block-causal mask of a scale list")
    return tuple(sides)


def random_scale_list(base, generator: torch.Generator) -> tuple[int, ...]:
    """FlexVAR's random training list (``gen_curr_patch_nums``), for any training list ``base`` ending at side P.

    With probability 0.05 ``base`` itself; otherwise 1, 2, sorted interior sides and P, the interior drawn without
    replacement as the official sampler does for P = 16 (5 sides from 3..10 and 2 from 11..15: the split at
    11/16 of P, the counts in the proportion 5:2 of ``len(base) - 3``).  Then 1-4 interior scales are dropped with
    probabilities 0.1 / 0.05 / 0.02 / 0.01, and scales among the last four are dropped while the list has more
    tokens than ``base``.  All draws come from ``generator`` (so a resumed run draws the same lists)."""
    base = tuple(base)
    P = base[-1]

    def rand() -> float:
        return float(torch.rand((), generator=generator))

    def sample(lo: int, hi: int, k: int) -> list[int]:
        values = list(range(lo, hi))
        k = min(k, len(values))
        return [values[i] for i in torch.randperm(len(values), generator=generator)[:k].tolist()]

    if rand() < 0.05 or P < 4:
        sides = list(base)
    else:
        k = max(len(base) - 3, 1)
        mid = max(3, min(P, round(P * 11 / 16)))
        k_low = round(k * 5 / 7)
        sides = [1, 2] + sorted(sample(3, mid, k_low) + sample(mid, P, k - k_low)) + [P]
    x = rand()
    for threshold in (0.9, 0.95, 0.98, 0.99):
        if x > threshold and len(sides) > 3:
            i = 2 + int(torch.randint(len(sides) - 3, (), generator=generator))
            sides.pop(i)
    budget = sum(p * p for p in base)
    while sum(p * p for p in sides) > budget and len(sides) > 2:
        lo = max(2, len(sides) - 4)
        sides.pop(lo + int(torch.randint(len(sides) - lo, (), generator=generator)))
    return tuple(sides)


FAMILY = FlexVARFamily()
