"""VAR (next-scale prediction): presets and the official checkpoint key map.  No model code lives here.

Official files: ``vae_ch160v4096z32.pth`` (the multi-scale VQ-VAE) and ``var_d{16,20,24,30,36}.pth``.
What the shapes determine (depth, width, heads, vocabulary, classes, scale list via the ``lvl_1L`` buffer)
is inferred; what they do not (image size follows from the scale list) comes from presets or arguments.
"""

from __future__ import annotations

import re
from collections import Counter

import torch

from arvision.checkpoints import KeyMap
from arvision.config import ModelConfig, TokenizerConfig, TransformerConfig
from arvision.errors import CheckpointError

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


VAR_KEYMAP = KeyMap(
    rules=[
        (r"^word_embed\.", "input_proj.", r"^input_proj\.", "word_embed."),
        (r"^pos_1LC$", "pos_embed", r"^pos_embed$", "pos_1LC"),
        (r"^shared_ada_lin\.1\.", "shared_ada_lin.", r"^shared_ada_lin\.", "shared_ada_lin.1."),
        (r"^head_nm\.ada_lin\.1\.", "head_norm.ada_lin.", r"^head_norm\.ada_lin\.", "head_nm.ada_lin.1."),
        (r"^blocks\.(\d+)\.attn\.mat_qkv\.", r"blocks.\1.attn.qkv.", r"^blocks\.(\d+)\.attn\.qkv\.",
         r"blocks.\1.attn.mat_qkv."),
        (r"^blocks\.(\d+)\.attn\.scale_mul_1H11$", r"blocks.\1.attn.scale_mul",
         r"^blocks\.(\d+)\.attn\.scale_mul$", r"blocks.\1.attn.scale_mul_1H11"),
        (r"^blocks\.(\d+)\.attn\.zero_k_bias$", r"blocks.\1.attn.k_bias", r"^blocks\.(\d+)\.attn\.k_bias$",
         r"blocks.\1.attn.zero_k_bias"),
        (r"^blocks\.(\d+)\.ffn\.", r"blocks.\1.mlp.", r"^blocks\.(\d+)\.mlp\.", r"blocks.\1.ffn."),
        (r"^blocks\.(\d+)\.ada_lin\.1\.", r"blocks.\1.ada_lin.", r"^blocks\.(\d+)\.ada_lin\.",
         r"blocks.\1.ada_lin.1."),
    ],
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


def config_from_official(vae_sd: dict, var_sd: dict, patch_nums=None, num_classes: int | None = None,
                         num_heads: int | None = None) -> ModelConfig:
    """A ModelConfig for an official (VQ-VAE, VAR) pair.  Raises CheckpointError on inconsistencies."""
    what = "VAR transformer checkpoint"
    if "tok_embeddings.weight" in var_sd or "cls_embedding.embedding_table.weight" in var_sd:
        raise CheckpointError("this is a LlamaGen GPT checkpoint, not VAR: use `arvision convert llamagen`")
    if "quantize.codebook_used" in vae_sd or any(k.startswith("encoder.conv_blocks") for k in vae_sd):
        raise CheckpointError("this is a LlamaGen VQ checkpoint, not VAR's VQ-VAE: use `arvision convert llamagen`")
    class_emb = _need(var_sd, "class_emb.weight", what)
    width = class_emb.shape[1]
    depth = _count(var_sd, r"^blocks\.(\d+)\.")
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
    scale_mul = var_sd.get("blocks.0.attn.scale_mul_1H11")
    heads = scale_mul.shape[1] if scale_mul is not None else (num_heads or max(depth, 1))
    if num_heads is not None and heads != num_heads:
        raise CheckpointError(f"--num-heads {num_heads} disagrees with the checkpoint ({heads} heads)")
    classes = class_emb.shape[0] - 1
    if num_classes is not None and num_classes != classes:
        raise CheckpointError(f"--num-classes {num_classes} disagrees with the checkpoint's class_emb "
                              f"({classes} classes + 1 null)")
    tok = tokenizer_config_from_official(vae_sd, patch_nums)
    fc1 = _need(var_sd, "blocks.0.ffn.fc1.weight", what)
    tr = TransformerConfig(
        block="adaln", width=width, depth=depth, num_heads=heads,
        vocab_size=_need(var_sd, "head.weight", what).shape[0], num_classes=classes,
        in_channels=_need(var_sd, "word_embed.weight", what).shape[1], mlp_ratio=fc1.shape[0] / width,
        shared_adaln="shared_ada_lin.1.weight" in var_sd, attn_l2_norm=scale_mul is not None)
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
