"""Infinity (bitwise next-scale prediction; Han et al. 2025) on the scale-wise trunk, class-conditional (or text-
conditional through the registry's ``TextCondition``, with the trunk's cross or prefix text mode).

Its slots: the multi-scale binary spherical quantiser (``kind="bsq"``, :mod:`arvision.tokenizers.bitwise`): a
token is d bits, carried through the loop, the saved tokens and ``pipe.encode`` as one int64 id with the bits
packed (the released ``int_label``; ``unpack_bits`` gives the (B, L, d) view); VAR's AdaLN blocks and learned
per-position / per-level embedding (the scale-wise trunk; Infinity's own text trunk with RoPE and cross-attention is
not reproduced); :class:`~arvision.inputs.BitCanvas` as input builder (the canvas is the sum of every scale's codes
trilinear-upsampled, the next input the canvas trilinear-resized, as Infinity's sampler does); the bitwise head
(:class:`~arvision.models.heads.BitwiseHead`: 2d logits per token, per-bit cross-entropy averaged over the bits;
``TransformerConfig.vocab_size`` is its 2d logits, the tokenizer's ``vocab_size`` the 2^d codes).

Sampling as ``autoregressive_infer_cfg`` with guidance on the logits (``cfg_insertion_layer=0``): per scale s,
``cfg_s * cond + (1 - cfg_s) * uncond`` (the doubled batch only when some cfg_s != 1; ``cfg_list`` gives one per
scale, else ``guidance_scale`` everywhere); the logits viewed as one (B, n*d, 2) row per bit, temperature / top-k /
top-p per bit (top-p: VAR's ascending rule, which is Infinity's), one multinomial draw over all rows.  Infinity
divides by ``tau`` before guidance, we after it: equal up to rounding (exact at temperature 1).

Training: the trainer caches latents and each step takes its targets and inputs from the self-correction chain
(``MultiScaleBSQTokenizer.self_correct``, the released ``flip_requant``): ``ARTrainConfig.self_correction`` scales get
random bit flips (Infinity: 13 scales, strength 0.3).

What applies (capabilities): the progression (the canvas decodes after every scale) and the generic search
controllers (best-of-N, beam: they re-batch the run and score images); not the watermark (it biases one logit per
code), Gumbel soft codes, KV policies (their calibration is for VAR's categorical steps; untested here), speculative
decoding, GridAR's row prefixes, student forcing.  No official class-conditional Infinity checkpoint exists, so
there is no ``convert infinity``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from arvision.config import ModelConfig
from arvision.errors import ArvisionError, CheckpointError
from arvision.families.base import Capabilities, OfficialModel
from arvision.families.var import VARFamily
from arvision.inputs import BitCanvas
from arvision.models.heads import AdaLNHeadNorm, BitwiseHead


@dataclass(frozen=True)
class ScaleGuidance:
    """Infinity's guidance on the logits: scale s mixes ``cfg[s] * cond + (1 - cfg[s]) * uncond`` (the released
    arithmetic), or takes the conditional logits alone where cfg[s] == 1.  The batch is doubled when any cfg[s] != 1."""

    scales: tuple[float, ...]

    @property
    def doubles_batch(self) -> bool:
        return any(c != 1 for c in self.scales)

    def combine(self, cond: torch.Tensor, uncond: torch.Tensor, s: int, num_steps: int) -> torch.Tensor:
        cfg = self.scales[s]
        return cond if cfg == 1 else cfg * cond + (1 - cfg) * uncond


class InfinityFamily(VARFamily):
    """VAR's schedule (the trained scale list only), trunk, embedder and initialisation; Infinity's tokens, head,
    input builder, guidance and training chain."""

    name = "infinity"
    description = "Infinity"
    tokenizer_kind = "bsq"
    block = "adaln"
    capabilities = Capabilities(progression=True, latent_training=True, self_correction=True, code_logits=False)
    # scripts/infer.sh of the Infinity repository: cfg 4, tau 0.5; tools/run_infinity.py: top-k 900, top-p 0.97
    defaults = {"guidance_scale": 4.0, "top_k": 900, "top_p": 0.97, "temperature": 0.5}
    sampling_options = {"cfg_list": "guidance per scale, one number >= 0 per scale (default: guidance_scale on "
                                    "every scale)"}
    presets: dict = {}
    official_files = ()
    convert_options = ()
    convert_help = ""

    def check_config(self, config: ModelConfig) -> None:
        super().check_config(config)
        bits, tr = config.tokenizer.embed_dim, config.transformer
        if tr.vocab_size != 2 * bits:
            raise ArvisionError(f"invalid transformer vocab_size: {tr.vocab_size!r} (the bitwise head's 2 logits per "
                                f"bit: 2 x {bits} = {2 * bits})")

    def trunk_vocab(self, codes: int, code_dim: int) -> int:
        return 2 * code_dim

    def input_builder(self, tokenizer, schedule) -> BitCanvas:
        return BitCanvas(tokenizer, schedule)

    def head(self, config: ModelConfig) -> BitwiseHead:
        tr = config.transformer
        return BitwiseHead(AdaLNHeadNorm(tr.width, tr.norm_eps), tr.width, config.tokenizer.embed_dim)

    # -- sampling rules ----------------------------------------------------------------------------------
    def check_sampling_options(self, options: dict, schedule) -> dict:
        options = super().check_sampling_options(options, schedule)
        cfg = options.get("cfg_list")
        if cfg is None:
            return {}
        if (not isinstance(cfg, (list, tuple)) or len(cfg) != schedule.num_steps
                or not all(isinstance(c, (int, float)) and not isinstance(c, bool) and 0 <= c < float("inf")
                           for c in cfg)):
            raise ArvisionError(f"cfg_list must be {schedule.num_steps} numbers >= 0 (one per scale), got {cfg!r}")
        return {"cfg_list": tuple(float(c) for c in cfg)}

    def guidance(self, scale: float, schedule, options: dict) -> ScaleGuidance:
        return ScaleGuidance(options.get("cfg_list") or (float(scale),) * schedule.num_steps)

    # -- official checkpoints: none for this trunk ----------------------------------------------------------------
    def owns_transformer_checkpoint(self, state: dict) -> bool:
        return False

    def owns_tokenizer_checkpoint(self, state: dict) -> bool:
        return False

    def read_official(self, tokenizer_state: dict, transformer_state: dict, **options) -> OfficialModel:
        raise CheckpointError("Infinity's released models are text-to-image on their own trunk; arvision's Infinity "
                              "family is class-conditional on VAR's trunk and has no official checkpoint")

    def official_state_dicts(self, pipe) -> tuple[dict, dict]:
        raise CheckpointError("Infinity models have no official layout to export to (see read_official)")


FAMILY = InfinityFamily()
