"""NAR (next-neighbour prediction, class-to-image; He et al. 2025, a LlamaGen fork): the family object, presets and
the official key maps.

Its slots: LlamaGen's l2-normalised VQ (``kind="vq"``) and Llama blocks (RMSNorm, SwiGLU, 2-D RoPE); a
:class:`~arvision.schedules.DiagonalSchedule` (step c = the anti-diagonal front h + w = c, 2G - 1 steps for a G x G
grid, tokens in front order); the previous front as input (:class:`~arvision.inputs.PreviousToken`), each token at
its own grid cell's RoPE angles behind the class token; two heads (:class:`~arvision.models.heads.NeighbourHead`):
the "right" head after blocks 0..n-1 and the "down" head after one extra block n, combined per token by the
schedule's neighbour table; LlamaGen's constant guidance ``u + w (c - u)`` (only above 1) with the official
``cfg_interval`` cut-off; the descending top-p rule; one multinomial call per token, front by front.

Official files: LlamaGen's VQ (``vq_ds16_c2i.pt``) and the NAR GPT (``NAR-{B,M,L,XL,XXL}``): LlamaGen's keys plus
the extra block ``layers.{n_layer}`` and the ``medusa_norm`` / ``medusa_output`` pair.  Our ``depth`` counts every
block (n_layer + 1).  The head count is not visible in the shapes: width / 64 (every released class-to-image model),
or an argument; the image size (hence the token grid) is an argument (default 256).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import torch

from arvision.checkpoints import KeyMap
from arvision.config import ModelConfig, TransformerConfig
from arvision.errors import ArvisionError, CheckpointError
from arvision.families.base import Capabilities, Option
from arvision.families.llamagen import GPT_RULES, LlamaGenFamily, tokenizer_config_from_official
from arvision.families.var import _count, _need
from arvision.models.heads import NeighbourHead
from arvision.sampling.processors import TokenSampling
from arvision.schedules import DiagonalSchedule

# name -> (depth, width, heads): the released GPT sizes (n_layer blocks) plus the down-head's extra block
PRESETS = {
    "B": (13, 768, 12),
    "M": (19, 1024, 16),
    "L": (25, 1024, 16),
    "XL": (37, 1280, 20),
    "XXL": (49, 1536, 24),
}

NAR_GPT_KEYMAP = KeyMap(
    rules=[*GPT_RULES,
           (r"^medusa_norm\.", "head.down_norm.", r"^head\.down_norm\.", "medusa_norm."),
           (r"^medusa_output\.", "head.down_proj.", r"^head\.down_proj\.", "medusa_output.")],
    buffers=(r"freqs_cis",),
)


@dataclass(frozen=True)
class IntervalGuidance:
    """LlamaGen's constant guidance ``uncond + scale (cond - uncond)`` on a [cond; uncond] batch (doubled only above
    1), switched off (the conditional logits alone, the batch still doubled) at the steps in ``off``: NAR's
    ``cfg_interval``, after more than that many tokens have been generated."""

    scale: float
    off: frozenset[int] = frozenset()

    @property
    def doubles_batch(self) -> bool:
        return self.scale > 1.0

    def combine(self, cond: torch.Tensor, uncond: torch.Tensor, s: int, num_steps: int) -> torch.Tensor:
        if s in self.off:
            return cond
        return uncond + (cond - uncond) * self.scale


def config_from_official(vq_sd: dict, gpt_sd: dict, image_size: int = 256, vq_ch: int | None = None,
                         num_heads: int | None = None, num_classes: int | None = None) -> ModelConfig:
    what = "NAR GPT checkpoint"
    tok = tokenizer_config_from_official(vq_sd, vq_ch)
    vocab, width = _need(gpt_sd, "tok_embeddings.weight", what).shape
    depth = _count(gpt_sd, r"^layers\.(\d+)\.")
    if depth < 2:
        raise CheckpointError(f"{what}: {depth} block(s); NAR has at least one trunk block and the down-head's block")
    qkv = _need(gpt_sd, "layers.0.attention.wqkv.weight", what)
    if qkv.shape[0] != 3 * width:
        raise CheckpointError(f"layers.0.attention.wqkv has {qkv.shape[0]} rows, not 3 x {width}: grouped-query "
                              "attention (n_kv_head < n_head) is not supported")
    for key in ("medusa_norm.weight", "medusa_output.weight", "output.weight"):
        _need(gpt_sd, key, what)
    released = {(d, w): h for d, w, h in PRESETS.values()}.get((depth, width))
    heads = num_heads or released
    if heads is None:
        heads = max(width // 64, 1)
        warnings.warn(f"the head count is not visible in a GPT checkpoint and depth {depth} / width {width} is not a "
                      f"released NAR model: assuming {heads} heads of 64 channels (every released model's head "
                      "width); pass num_heads (--num-heads) if it differs", stacklevel=2)
    if num_heads is not None and released is not None and released != num_heads:
        raise CheckpointError(f"--num-heads {num_heads} disagrees with the released model of this shape "
                              f"({released} heads)")
    classes = _need(gpt_sd, "cls_embedding.embedding_table.weight", what).shape[0] - 1
    if num_classes is not None and num_classes != classes:
        raise CheckpointError(f"--num-classes {num_classes} disagrees with the checkpoint ({classes} classes + 1 null)")
    if tok.vocab_size != vocab:
        raise CheckpointError(f"the VQ codebook has {tok.vocab_size} codes but the GPT predicts {vocab}")
    latent = image_size // tok.downsample
    if image_size % tok.downsample or latent < 2:
        raise ArvisionError(f"--image-size {image_size} gives no token grid of side >= 2 for a VQ that downsamples "
                            f"by {tok.downsample}")
    tr = TransformerConfig(block="llama", width=width, depth=depth, num_heads=heads, vocab_size=vocab,
                           num_classes=classes, in_channels=tok.embed_dim,
                           ffn_hidden=_need(gpt_sd, "layers.0.feed_forward.w1.weight", what).shape[0])
    return ModelConfig(family="nar", image_size=image_size, tokenizer=tok, transformer=tr)


class NARFamily(LlamaGenFamily):
    """LlamaGen's parts, tokenizer, input builder, initialisation (the right head's output zeroed; the down head
    keeps its normal init, as the released code does) and official VQ; its own schedule, head, guidance cut-off,
    token-by-token draws and GPT layout."""

    name = "nar"
    description = "NAR"
    capabilities = Capabilities()
    defaults = {"guidance_scale": 2.0, "top_k": 0, "top_p": 0.0}  # the evaluation command of the NAR repository
    sampling_options = {
        "cfg_interval": "guidance stops once more than this many tokens are generated (-1, default: never)",
    }
    presets = PRESETS
    official_files = (Option("vq", "path", "the VQ tokenizer checkpoint (LlamaGen's VQModel)", required=True),
                      Option("gpt", "path", "the NAR GPT checkpoint", required=True))
    convert_help = "NAR: vq_ds16_c2i.pt + a NAR class-to-image GPT"
    gpt_keymap = NAR_GPT_KEYMAP

    # -- schedule and parts -----------------------------------------------------------------------------
    def check_config(self, config: ModelConfig) -> None:
        super().check_config(config)
        if config.transformer.depth < 2:
            raise ArvisionError(f"invalid NAR depth: {config.transformer.depth} (the trunk's blocks plus the "
                                "down-head's block: at least 2)")
        if config.latent_size < 2:
            raise ArvisionError(f"invalid NAR token grid: side {config.latent_size} (at least 2)")

    def schedule(self, config: ModelConfig, patch_nums=None) -> DiagonalSchedule:
        if patch_nums is not None:
            raise ArvisionError(f"a {self.description} model generates anti-diagonal fronts of one token grid; it has "
                                "no scale list (patch_nums)")
        return DiagonalSchedule.of_grid(config.latent_size)

    def head(self, config: ModelConfig) -> NeighbourHead:
        tr = config.transformer
        return NeighbourHead(tr.width, tr.vocab_size, tr.norm_eps)

    # -- sampling rules ----------------------------------------------------------------------------------
    def check_sampling_options(self, options: dict, schedule) -> dict:
        options = super().check_sampling_options(options, schedule)
        interval = options.get("cfg_interval")
        interval = -1 if interval is None else interval
        if not isinstance(interval, int) or isinstance(interval, bool) or interval < -1:
            raise ArvisionError(f"cfg_interval must be an integer >= -1 (-1: guidance everywhere), got {interval!r}")
        return {"cfg_interval": interval}

    def guidance(self, scale: float, schedule, options: dict) -> IntervalGuidance:
        # the official decode loop: guidance is off at a step once more than cfg_interval tokens exist (never at
        # the prefill); the tokens before step s are the start of its span
        interval = options.get("cfg_interval", -1)
        off = frozenset() if interval < 0 else frozenset(
            s for s, (begin, _) in enumerate(schedule.begin_ends) if s > 0 and begin > interval)
        return IntervalGuidance(scale, off)

    def token_sampling(self, temperature: float, top_k: int, top_p: float, schedule, options: dict) -> TokenSampling:
        return TokenSampling(temperature, top_k, top_p, self.top_p_rule, per_position_draws=True)

    # -- official checkpoints ---------------------------------------------------------------------------
    def owns_transformer_checkpoint(self, state: dict) -> bool:
        return "medusa_output.weight" in state

    def official_config(self, vq_sd: dict, gpt_sd: dict, **options) -> ModelConfig:
        return config_from_official(vq_sd, gpt_sd, **options)


FAMILY = NARFamily()
