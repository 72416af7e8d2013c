"""FlowAR (scale-wise prediction of continuous latents with a flow-matching head; Ren et al. 2025): the family.

Its slots:

* tokenizer: the VQ tokenizer (``kind="vq"``) used **without its codebook**: a token is the tokenizer's
  pre-quantisation feature at one latent cell, l2-normalised when the codes are (the point the quantiser would snap
  to its nearest code), and decoding feeds the map to ``post_quant_conv`` + decoder where codes would go.  FlowAR's
  own tokenizer is MAR's KL-16 VAE; arvision trains VQ tokenizers, and their pre-quantisation latent is the
  cheapest honest continuous latent it has (no new tokenizer to train; the decoder has seen codes near it).  Any
  continuous autoencoder fits the same builder.
* schedule: FlowAR's scales, each side double the previous, ending at the latent side (1, 2, 4, 8, 16 at 16);
* input builder (:class:`ScaleLatents`): the ground truth of scale s is the latent area-resized to its side; step
  s+1 is fed step s's map bicubic-upsampled to the latent side, then area-resized to side s+1 (FlowAR's
  ``z_proj(area(bicubic(x_s, 16), s+1))``), from the sampled map when sampling and from the ground truth when
  training: the same ``next_input``;
* trunk: arvision's AdaLN blocks with FlexVAR's resized 2-D position grid (not FlowAR's two RMSNorm/SwiGLU/RoPE
  stacks, so released FlowAR weights do not load);
* head (:class:`~arvision.models.flow_head.FlowHead`): FlowAR's small-model flow head (a 2-block transformer over
  each scale's tokens with spatial AdaLN), Euler from noise to data with guidance on the velocity, the
  flow-matching loss beside it; tokens are (B, L, C) floats through the one loop (``head.token_dims``).

Sampling: guidance ramps over the scales, ``w_s = (cfg - 1) s / (S - 1) + 1``, and acts only at flow times
t <= ``guidance_high`` (default 0.9); ``flow_steps`` Euler steps per scale (default 25: FlowAR's grid, finer near
the data).  No top-k / top-p / temperature: the tokens are not drawn from logits.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from arvision.config import ModelConfig
from arvision.errors import ArvisionError, CheckpointError
from arvision.families.base import Capabilities, Family, OfficialModel, Option
from arvision.families.var import init_adaln_trunk
from arvision.inputs import PreviousScale
from arvision.models.embeddings import GridPositionEmbedder
from arvision.models.flow_head import FlowHead, VelocityGuidance
from arvision.sampling.processors import TokenSampling
from arvision.schedules import ScaleSchedule

HEAD_DEPTH = 2  # FlowAR-S's flow head: 2 blocks (diffloss_d), heads of 64 channels
DEFAULT_FLOW_STEPS = 25
DEFAULT_GUIDANCE_HIGH = 0.9  # FlowAR-S / L (H: 0.7)


def doubling_sides(latent: int) -> tuple[int, ...]:
    """1, 2, 4, ... below ``latent``, then ``latent``: FlowAR's scales (each double the previous)."""
    sides, p = [], 1
    while p < latent:
        sides.append(p)
        p *= 2
    return (*sides, latent)


class ScaleLatents(PreviousScale):
    """Continuous scale-wise inputs.  Tokens: (B, L, C) fp32 in schedule order, step s a row-major p_s x p_s map of
    the tokenizer's continuous latent (``FlowARFamily`` docstring).  State: the last finished map (B, C, p, p).
    FlexVAR's builder but for what a step's tokens are (a latent map, not codes) and how the next input is resized;
    ``advance``, ``teacher``, ``finish``, ``preview`` and ``decode`` are its."""

    @property
    def codes(self):
        raise ArvisionError("continuous tokens have no codebook")

    def latent(self, img: torch.Tensor) -> torch.Tensor:
        """img (B, 3, H, W) -> the continuous latent (B, C, h, w): pre-quantisation features, l2-normalised per cell
        when the tokenizer's codes are."""
        f = self.tok.features(img).float()
        return F.normalize(f, dim=1) if self.tok.cfg.l2_norm else f

    def code_map(self, s: int, tokens: torch.Tensor, embeds=None) -> torch.Tensor:
        """Step s's tokens (B, n_s, C) -> their map (B, C, h, w)."""
        h, w = self.schedule.step_grids[s]
        return tokens.transpose(1, 2).reshape(tokens.shape[0], -1, h, w)

    as_map = code_map

    def next_input(self, s: int, latent_map: torch.Tensor) -> torch.Tensor:
        """Step s's map (B, C, h, w) -> step s+1's input (B, n_{s+1}, C): bicubic up to the final side, then area
        down to side s+1 (so every input passes through the same full-size interpolation)."""
        H, W = self.schedule.image_grid
        h, w = self.schedule.step_grids[s + 1]
        up = F.interpolate(latent_map, size=(H, W), mode="bicubic")
        down = F.interpolate(up, size=(h, w), mode="area")
        return down.flatten(2).transpose(1, 2)

    def targets(self, img: torch.Tensor) -> torch.Tensor:
        return self.targets_from_latents(self.latent(img))

    def targets_from_latents(self, f: torch.Tensor) -> torch.Tensor:
        """Latent (B, C, h, w) -> tokens (B, L, C): every scale the latent area-resized to its side."""
        maps = [f if (h, w) == tuple(f.shape[-2:]) else F.interpolate(f, size=(h, w), mode="area")
                for h, w in self.schedule.step_grids]
        return torch.cat([m.flatten(2).transpose(1, 2) for m in maps], dim=1)


def init_flow_head(head: FlowHead) -> None:
    """FlowAR's effective initialisation of its head: its model-level xavier-uniform pass reaches the head last, so
    every linear layer (the output too) is xavier-uniform with zero biases; norms start at one."""
    for m in head.modules():
        if isinstance(m, nn.Linear):
            nn.init.xavier_uniform_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
    nn.init.ones_(head.norm.weight)


class FlowARFamily(Family):
    name = "flowar"
    description = "FlowAR"
    tokenizer_kind = "vq"
    block = "adaln"
    capabilities = Capabilities(progression=True)
    defaults = {"guidance_scale": 4.3, "top_k": 0, "top_p": 0.0}  # FlowAR-S's evaluation cfg; no filtering
    sampling_options = {
        "flow_steps": f"Euler steps per scale (default {DEFAULT_FLOW_STEPS}; 50: a uniform grid)",
        "guidance_high": f"guidance acts at flow times t <= this (default {DEFAULT_GUIDANCE_HIGH})",
    }
    official_files = (Option("vae", "path", "the KL-16 VAE checkpoint FlowAR uses", required=True),
                      Option("flowar", "path", "the FlowAR checkpoint", required=True))
    convert_help = "FlowAR: released checkpoints are recognised but not converted (their trunk is not arvision's)"

    # -- config and schedule -----------------------------------------------------------------------------
    def check_config(self, config: ModelConfig) -> None:
        super().check_config(config)
        tok, tr = config.tokenizer, config.transformer
        if config.latent_size < 2:
            raise ArvisionError(f"invalid FlowAR latent grid: side {config.latent_size} (at least 2)")
        if tr.pos_grid < config.latent_size:
            raise ArvisionError(f"invalid pos_grid: {tr.pos_grid} (at least the latent side {config.latent_size})")
        if tr.in_channels != tok.embed_dim:
            raise ArvisionError(f"FlowAR's tokens are the tokenizer's {tok.embed_dim}-channel latents, but the trunk "
                                f"takes in_channels={tr.in_channels}")
        heads = max(tr.width // 64, 1)
        if tr.width % heads or (tr.width // heads) % 4:
            raise ArvisionError(f"invalid FlowAR width {tr.width}: the flow head needs heads of a multiple of 4 "
                                "channels")

    def schedule(self, config: ModelConfig, patch_nums=None) -> ScaleSchedule:
        sides = doubling_sides(config.latent_size)
        if patch_nums is not None and tuple(patch_nums) != sides:
            raise ArvisionError(f"a {self.description} model samples on its doubling scales "
                                f"{','.join(map(str, sides))} only")
        return ScaleSchedule.from_sides(sides)

    def from_scratch(self, latent_side: int) -> dict:
        return {"pos_grid": latent_side}

    # -- parts -------------------------------------------------------------------------------------------
    def input_builder(self, tokenizer, schedule) -> ScaleLatents:
        return ScaleLatents(tokenizer, schedule)

    def embedder(self, config: ModelConfig) -> GridPositionEmbedder:
        tr = config.transformer
        return GridPositionEmbedder(tr.in_channels, tr.width, tr.pos_grid, first_len=1)

    def head(self, config: ModelConfig) -> FlowHead:
        tr = config.transformer
        heads = max(tr.width // 64, 1)
        return FlowHead(tr.width, config.tokenizer.embed_dim, tr.width, HEAD_DEPTH, heads,
                        rope_side=config.latent_size, eps=tr.norm_eps or 1e-6)

    def init_weights(self, transformer) -> None:
        init_adaln_trunk(transformer)
        init_flow_head(transformer.head)

    # -- sampling rules ----------------------------------------------------------------------------------
    def check_sampling_options(self, options: dict, schedule) -> dict:
        options = super().check_sampling_options(options, schedule)
        steps = options.get("flow_steps", DEFAULT_FLOW_STEPS)
        if not isinstance(steps, int) or isinstance(steps, bool) or steps < 2:
            raise ArvisionError(f"flow_steps must be an integer >= 2, got {steps!r}")
        high = options.get("guidance_high", DEFAULT_GUIDANCE_HIGH)
        if not isinstance(high, (int, float)) or isinstance(high, bool) or not 0.0 <= high <= 1.0:
            raise ArvisionError(f"guidance_high must be a flow time in [0, 1], got {high!r}")
        return {"flow_steps": steps, "guidance_high": float(high)}

    def guidance(self, scale: float, schedule, options: dict) -> VelocityGuidance:
        return VelocityGuidance(scale, high=options.get("guidance_high", DEFAULT_GUIDANCE_HIGH),
                                steps=options.get("flow_steps", DEFAULT_FLOW_STEPS))

    def token_sampling(self, temperature: float, top_k: int, top_p: float, schedule, options: dict) -> TokenSampling:
        if top_k or 0.0 < top_p < 1.0 or temperature != 1.0:
            raise ArvisionError(f"{self.description} tokens are continuous (integrated, not drawn from logits): "
                                "top-k, top-p and temperature do not apply")
        return TokenSampling(temperature, top_k, top_p, self.top_p_rule)

    # -- official checkpoints ---------------------------------------------------------------------------
    def owns_transformer_checkpoint(self, state: dict) -> bool:
        return "flownet.input_proj.weight" in state

    def read_official(self, tokenizer_state: dict, transformer_state: dict, **options) -> OfficialModel:
        raise CheckpointError("released FlowAR checkpoints use FlowAR's own two-stack RMSNorm/SwiGLU/RoPE trunk and "
                              "a KL-16 VAE; arvision's FlowAR family has its AdaLN trunk and VQ latents, so they "
                              "cannot be converted (train one with `arvision train --family flowar`)")

    def official_state_dicts(self, pipe) -> tuple[dict, dict]:
        raise CheckpointError("arvision's FlowAR models have no official layout to export to (their trunk is not "
                              "FlowAR's)")


FAMILY = FlowARFamily()
