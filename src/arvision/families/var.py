"""VAR (next-scale prediction, Tian et al. 2024): the family object, presets and the official key maps.

Its slots: the multi-scale residual VQ tokenizer (``kind="multiscale"``), AdaLN blocks, the trained scale list as
the only schedule (a learned embedding per position and per level: :class:`LevelPositionEmbedder`), the residual
canvas as input builder (:class:`~arvision.inputs.ResidualCanvas`), a categorical head after an AdaLN norm, the
guidance ramp ``t = cfg * s / (S - 1)`` on a doubled batch, the ascending top-p rule.

Official files: ``vae_ch160v4096z32.pth`` (the multi-scale VQ-VAE) and ``var_d{16,20,24,30,36}.pth``.
What the shapes determine (depth, width, heads, vocabulary, classes, scale list via the ``lvl_1L`` buffer)
is inferred; what they do not (image size follows from the scale list) comes from presets or arguments.
"""

from __future__ import annotations

import math
import re
import warnings
from collections import Counter

import torch
from torch import nn

from arvision.checkpoints import KeyMap
from arvision.config import ModelConfig, TokenizerConfig, TransformerConfig
from arvision.errors import ArvisionError, CheckpointError
from arvision.families.base import Capabilities, Family, OfficialModel, Option
from arvision.inputs import ResidualCanvas
from arvision.models.embeddings import LevelPositionEmbedder
from arvision.models.heads import AdaLNHeadNorm, CategoricalHead
from arvision.schedules import ScaleSchedule

PATCH_NUMS_256 = (1, 2, 3, 4, 5, 6, 8, 10, 13, 16)
PATCH_NUMS_512 = (1, 2, 3, 4, 6, 9, 13, 18, 24, 32)

# name -> (depth, shared AdaLN, patch_nums); width = 64 * depth, heads = depth.
PRESETS = {
    "d16": (16, False, PATCH_NUMS_256),
    "d20": (20, False, PATCH_NUMS_256),
    "d24": (24, False, PATCH_NUMS_256),
    "d30": (30, False, PATCH_NUMS_256),
    "d36": (36, True, PATCH_NUMS_512),
}

def vae_keymap(share_quant_resi: int) -> KeyMap:
    """The VQ-VAE key map.  Its phi convs are stored under three layouts, by ``share_quant_resi``: one per
    scale (0: ``quant_resi.{i}``), one shared (1: ``quant_resi.qresi``), K partially shared (``qresi_ls.{i}``,
    our layout)."""
    if share_quant_resi == 0:
        rules = [(r"^quantize\.quant_resi\.(\d+)\.", r"quantize.quant_resi.qresi_ls.\1.",
                  r"^quantize\.quant_resi\.qresi_ls\.(\d+)\.", r"quantize.quant_resi.\1.")]
    elif share_quant_resi == 1:
        rules = [(r"^quantize\.quant_resi\.qresi\.", "quantize.quant_resi.qresi_ls.0.",
                  r"^quantize\.quant_resi\.qresi_ls\.0\.", "quantize.quant_resi.qresi.")]
    else:
        rules = []
    return KeyMap(rules=rules, buffers=(r"quantize\.ema_vocab_hit_SV",))


# The transformer names shared by VAR and its forks (FlexVAR): the trunk, the AdaLN head and its linear.
ADALN_TRUNK_RULES = [
    (r"^word_embed\.", "embed.input_proj.", r"^embed\.input_proj\.", "word_embed."),
    (r"^pos_start$", "embed.pos_start", r"^embed\.pos_start$", "pos_start"),
    (r"^shared_ada_lin\.1\.", "shared_ada_lin.", r"^shared_ada_lin\.", "shared_ada_lin.1."),
    (r"^head_nm\.ada_lin\.1\.", "head.norm.ada_lin.", r"^head\.norm\.ada_lin\.", "head_nm.ada_lin.1."),
    (r"^head\.(weight|bias)$", r"head.proj.\1", r"^head\.proj\.(weight|bias)$", r"head.\1"),
    (r"^blocks\.(\d+)\.attn\.mat_qkv\.", r"blocks.\1.attn.qkv.", r"^blocks\.(\d+)\.attn\.qkv\.",
     r"blocks.\1.attn.mat_qkv."),
    (r"^blocks\.(\d+)\.attn\.scale_mul_1H11$", r"blocks.\1.attn.scale_mul",
     r"^blocks\.(\d+)\.attn\.scale_mul$", r"blocks.\1.attn.scale_mul_1H11"),
    (r"^blocks\.(\d+)\.attn\.zero_k_bias$", r"blocks.\1.attn.k_bias", r"^blocks\.(\d+)\.attn\.k_bias$",
     r"blocks.\1.attn.zero_k_bias"),
    (r"^blocks\.(\d+)\.ffn\.", r"blocks.\1.mlp.", r"^blocks\.(\d+)\.mlp\.", r"blocks.\1.ffn."),
    (r"^blocks\.(\d+)\.ada_lin\.1\.", r"blocks.\1.ada_lin.", r"^blocks\.(\d+)\.ada_lin\.",
     r"blocks.\1.ada_lin.1."),
]

VAR_KEYMAP = KeyMap(
    rules=[*ADALN_TRUNK_RULES,
           (r"^pos_1LC$", "embed.pos_embed", r"^embed\.pos_embed$", "pos_1LC"),
           (r"^lvl_embed\.", "embed.lvl_embed.", r"^embed\.lvl_embed\.", "lvl_embed.")],
    buffers=(r"lvl_1L", r"attn_bias_for_masking"),
)


def _need(sd: dict, key: str, what: str) -> torch.Tensor:
    if key not in sd:
        raise CheckpointError(f"{what}: key '{key}' not found; is this the right file? "
                              f"(first keys: {', '.join(list(sd)[:5])})")
    return sd[key]


def _count(sd: dict, pattern: str) -> int:
    rx = re.compile(pattern)
    return len({m.group(1) for k in sd if (m := rx.match(k))})


def infer_patch_nums(var_sd: dict) -> tuple[int, ...] | None:
    """Scale sides from the ``lvl_1L`` buffer (level id of each position), if present and square."""
    lvl = var_sd.get("lvl_1L")
    if lvl is None:
        return None
    counts = Counter(lvl.flatten().tolist())
    sides = []
    for level in range(len(counts)):
        side = round(counts.get(level, 0) ** 0.5)
        if side * side != counts.get(level, 0):
            raise CheckpointError(f"lvl_1L: level {level} has {counts.get(level, 0)} positions, not a square")
        sides.append(side)
    return tuple(sides)


def tokenizer_config_from_official(vae_sd: dict, patch_nums) -> TokenizerConfig:
    what = "VAR VQ-VAE checkpoint"
    emb = _need(vae_sd, "quantize.embedding.weight", what)
    ch = _need(vae_sd, "encoder.conv_in.weight", what).shape[0]
    levels = _count(vae_sd, r"^encoder\.down\.(\d+)\.")
    ch_mult = tuple(int(_need(vae_sd, f"encoder.down.{i}.block.0.conv1.weight", what).shape[0] // ch)
                    for i in range(levels))
    if any("quant_resi.qresi." in k for k in vae_sd):
        share = 1
    elif any(re.match(r"^quantize\.quant_resi\.\d+\.", k) for k in vae_sd):
        share = 0
    else:
        share = _count(vae_sd, r"^quantize\.quant_resi\.qresi_ls\.(\d+)\.")
    return TokenizerConfig(
        kind="multiscale", vocab_size=emb.shape[0], embed_dim=emb.shape[1],
        z_channels=_need(vae_sd, "encoder.conv_out.weight", what).shape[0], ch=ch, ch_mult=ch_mult,
        num_res_blocks=_count(vae_sd, r"^encoder\.down\.0\.block\.(\d+)\."),
        attn_style="fused" if any(".qkv." in k for k in vae_sd) else "split",
        quant_conv_ks=_need(vae_sd, "quant_conv.weight", what).shape[-1], l2_norm=False,
        patch_nums=tuple(patch_nums), share_quant_resi=share)


def adaln_trunk_config(var_sd: dict, what: str, num_classes: int | None = None,
                       num_heads: int | None = None) -> TransformerConfig:
    """The AdaLN trunk of an official VAR-layout transformer state dict (VAR and its forks): depth, width, heads,
    MLP ratio, shared AdaLN, l2-normalised attention, vocabulary, classes, input dim."""
    class_emb = _need(var_sd, "class_emb.weight", what)
    width = class_emb.shape[1]
    depth = _count(var_sd, r"^blocks\.(\d+)\.")
    scale_mul = var_sd.get("blocks.0.attn.scale_mul_1H11")
    heads = scale_mul.shape[1] if scale_mul is not None else (num_heads or max(depth, 1))
    if scale_mul is None and num_heads is None:
        warnings.warn(f"the head count is not visible in a transformer without attn_l2_norm: assuming {heads} "
                      "(= depth, the released models' rule); pass num_heads (--num-heads) if it differs", stacklevel=3)
    if num_heads is not None and heads != num_heads:
        raise CheckpointError(f"--num-heads {num_heads} disagrees with the checkpoint ({heads} heads)")
    classes = class_emb.shape[0] - 1
    if num_classes is not None and num_classes != classes:
        raise CheckpointError(f"--num-classes {num_classes} disagrees with the checkpoint's class_emb "
                              f"({classes} classes + 1 null)")
    fc1 = _need(var_sd, "blocks.0.ffn.fc1.weight", what)
    return TransformerConfig(
        block="adaln", width=width, depth=depth, num_heads=heads,
        vocab_size=_need(var_sd, "head.weight", what).shape[0], num_classes=classes,
        in_channels=_need(var_sd, "word_embed.weight", what).shape[1], mlp_ratio=fc1.shape[0] / width,
        shared_adaln="shared_ada_lin.1.weight" in var_sd, attn_l2_norm=scale_mul is not None)


def config_from_official(vae_sd: dict, var_sd: dict, patch_nums=None, num_classes: int | None = None,
                         num_heads: int | None = None) -> ModelConfig:
    """A ModelConfig for an official (VQ-VAE, VAR) pair.  Raises CheckpointError on inconsistencies."""
    what = "VAR transformer checkpoint"
    inferred = infer_patch_nums(var_sd)
    if patch_nums is not None:
        patch_nums = tuple(int(p) for p in patch_nums)
        if inferred is not None and inferred != patch_nums:
            raise CheckpointError(f"--patch-nums {','.join(map(str, patch_nums))} disagrees with the checkpoint's "
                                  f"scale list {','.join(map(str, inferred))} (from its lvl_1L buffer)")
    else:
        patch_nums = inferred or PATCH_NUMS_256
    L = _need(var_sd, "pos_1LC", what).shape[1]
    if sum(p * p for p in patch_nums) != L:
        raise CheckpointError(f"scale list {patch_nums} has {sum(p * p for p in patch_nums)} positions but the "
                              f"checkpoint's pos_1LC has {L}; pass the right --patch-nums")
    tr = adaln_trunk_config(var_sd, what, num_classes, num_heads)
    tok = tokenizer_config_from_official(vae_sd, patch_nums)
    if tok.vocab_size != tr.vocab_size or tok.embed_dim != tr.in_channels:
        raise CheckpointError(f"the VQ-VAE (vocab {tok.vocab_size}, code dim {tok.embed_dim}) does not match the "
                              f"VAR model (vocab {tr.vocab_size}, input dim {tr.in_channels})")
    return ModelConfig(family="var", image_size=patch_nums[-1] * tok.downsample, tokenizer=tok, transformer=tr)


def expected_buffers(cfg: ModelConfig) -> tuple[dict, dict]:
    """Official buffers that must be present: (VQ-VAE, VAR)."""
    L = sum(p * p for p in cfg.tokenizer.patch_nums)
    var = {"lvl_1L": (1, L), "attn_bias_for_masking": (1, 1, L, L)}
    return {"quantize.ema_vocab_hit_SV": (None, cfg.tokenizer.vocab_size)}, var


def preset_config(name: str, num_classes: int = 1000) -> ModelConfig:
    """The released architecture ``name`` (d16 ... d36) with the released VQ-VAE."""
    if name not in PRESETS:
        raise KeyError(f"unknown VAR preset {name!r}; known: {sorted(PRESETS)}")
    depth, shared, pn = PRESETS[name]
    tok = TokenizerConfig(kind="multiscale", vocab_size=4096, embed_dim=32, z_channels=32, ch=160,
                          patch_nums=pn)
    tr = TransformerConfig(block="adaln", width=64 * depth, depth=depth, num_heads=depth, vocab_size=4096,
                           num_classes=num_classes, in_channels=32, shared_adaln=shared)
    return ModelConfig(family="var", image_size=pn[-1] * 16, tokenizer=tok, transformer=tr)


# -- the family object -------------------------------------------------------------------------------------------
@torch.no_grad()
def init_adaln_trunk(transformer, adaln_gamma: float = 1e-3) -> None:
    """VAR's initialisation: trunc-normal(sqrt(1/3C)) for every linear and embedding (zero biases), the embedder's
    positions likewise, a small head and AdaLN gammas, residual outputs scaled by 1/sqrt(2 depth)."""
    C, depth = transformer.cfg.width, transformer.cfg.depth
    std = math.sqrt(1 / C / 3)
    for m in transformer.modules():
        if isinstance(m, (nn.Linear, nn.Embedding)):
            nn.init.trunc_normal_(m.weight, std=std)
            if getattr(m, "bias", None) is not None:
                nn.init.zeros_(m.bias)
    transformer.embed.reset_parameters(std)
    head = transformer.head
    if isinstance(head, CategoricalHead):  # other heads (FlowAR's flow head) have their own recipe
        head.proj.weight.mul_(0.02)
        head.norm.ada_lin.weight.mul_(0.5)
    for blk in transformer.blocks:
        blk.attn.proj.weight.div_(math.sqrt(2 * depth))
        blk.mlp.fc2.weight.div_(math.sqrt(2 * depth))
        if not blk.shared:
            blk.ada_lin.weight[2 * C:].mul_(0.5)
            blk.ada_lin.weight[: 2 * C].mul_(adaln_gamma)


def adaln_head(config: ModelConfig) -> CategoricalHead:
    tr = config.transformer
    return CategoricalHead(AdaLNHeadNorm(tr.width, tr.norm_eps), tr.width, tr.vocab_size, bias=True)


class VARFamily(Family):
    name = "var"
    description = "VAR"
    tokenizer_kind = "multiscale"
    block = "adaln"
    capabilities = Capabilities(soft_codes=True, progression=True, kv_policies=True, student_forcing=True)
    guidance_rule = "ramp"
    top_p_rule = "ascending"
    defaults = {"guidance_scale": 1.5, "top_k": 900, "top_p": 0.96}  # the FID protocol of the VAR repository
    presets = {name: (depth, 64 * depth, depth) for name, (depth, _, _) in PRESETS.items()}
    official_files = (Option("vae", "path", "the multi-scale VQ-VAE checkpoint", required=True),
                      Option("var", "path", "the VAR transformer checkpoint", required=True))
    convert_options = (
        Option("patch_nums", "int_list", "scale sides, e.g. 1,2,3,4,5,6,8,10,13,16 (default: read from the "
                                         "checkpoint)"),
        Option("num_classes", "int", "check the class count"))
    convert_help = "VAR: vae_ch160v4096z32.pth + var_d{16,20,24,30,36}.pth"

    def check_config(self, config: ModelConfig) -> None:
        super().check_config(config)
        tok, tr = config.tokenizer, config.transformer
        if tok.patch_nums[-1] != config.latent_size:
            raise ArvisionError(f"invalid patch_nums: {tok.patch_nums!r} (the last scale must equal the latent side "
                                f"{config.latent_size}: image_size {config.image_size} / downsample {tok.downsample})")
        if tr.in_channels != tok.embed_dim:
            raise ArvisionError(f"invalid transformer in_channels: {tr.in_channels!r} (equal to the code dim "
                                f"{tok.embed_dim})")

    def schedule(self, config: ModelConfig, patch_nums=None) -> ScaleSchedule:
        trained = ScaleSchedule.from_sides(config.tokenizer.patch_nums)
        if patch_nums is not None and tuple(int(p) for p in patch_nums) != trained.sides:
            raise ArvisionError(f"this {self.description} model samples on its trained scale list "
                                f"{','.join(map(str, trained.sides))} only (it learned one position embedding per "
                                f"position of it), not {','.join(map(str, patch_nums))}")
        return trained

    def input_builder(self, tokenizer, schedule) -> ResidualCanvas:
        return ResidualCanvas(tokenizer, schedule)

    def embedder(self, config: ModelConfig) -> LevelPositionEmbedder:
        tr = config.transformer
        return LevelPositionEmbedder(tr.in_channels, tr.width, self.schedule(config))

    def head(self, config: ModelConfig) -> CategoricalHead:
        return adaln_head(config)

    def init_weights(self, transformer) -> None:
        init_adaln_trunk(transformer)

    def owns_transformer_checkpoint(self, state: dict) -> bool:
        pos = state.get("pos_1LC")
        return "lvl_1L" in state or "lvl_embed.weight" in state or (pos is not None and pos.ndim == 3)

    def owns_tokenizer_checkpoint(self, state: dict) -> bool:
        return "quantize.ema_vocab_hit_SV" in state or any(k.startswith("encoder.down.") for k in state)

    def read_official(self, tokenizer_state: dict, transformer_state: dict, patch_nums=None,
                      num_classes: int | None = None, num_heads: int | None = None) -> OfficialModel:
        config = config_from_official(tokenizer_state, transformer_state, patch_nums=patch_nums,
                                      num_classes=num_classes, num_heads=num_heads)
        tok_buf, tr_buf = expected_buffers(config)
        return OfficialModel(config, tokenizer_state, transformer_state, vae_keymap(config.tokenizer.share_quant_resi),
                             VAR_KEYMAP, tok_buf, tr_buf)

    def official_state_dicts(self, pipe) -> tuple[dict, dict]:
        config, schedule = pipe.config, pipe.schedule
        tok = self.renamed(pipe.tokenizer, vae_keymap(config.tokenizer.share_quant_resi))
        tr = self.renamed(pipe.transformer, VAR_KEYMAP)
        tok["quantize.ema_vocab_hit_SV"] = torch.zeros(schedule.num_steps, config.tokenizer.vocab_size)
        tr["lvl_1L"] = schedule.step_ids()[None]
        tr["attn_bias_for_masking"] = schedule.attn_bias()[None, None]
        return tok, tr


FAMILY = VARFamily()
