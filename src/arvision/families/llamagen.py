"""LlamaGen (raster next-token prediction, class-to-image; Sun et al. 2024): the family object, presets and the
official key maps.

Its slots: LlamaGen's l2-normalised VQ (``kind="vq"``), Llama blocks (RMSNorm, SwiGLU, 2-D RoPE), a raster
schedule of the latent grid, the previous token as input (:class:`~arvision.inputs.PreviousToken`) behind the class
token, a categorical head after an RMSNorm, constant guidance ``u + w (c - u)`` (only above 1), the descending
(Hugging Face) top-p rule.

Official files: ``vq_ds16_c2i.pt`` (VQ-16) and ``c2i_{B,L,XL,XXL,3B}_{256,384}.pt``.  The GPT's head count
is not visible in its shapes (q, k, v are fused), so it comes from the preset matching (depth, width), or
an argument; the image size (hence the token grid) is an argument (default 256).
"""

from __future__ import annotations

import re
import warnings

import torch
from torch import nn

from arvision.checkpoints import KeyMap
from arvision.config import ModelConfig, TokenizerConfig, TransformerConfig
from arvision.errors import ArvisionError, CheckpointError
from arvision.families.base import Capabilities, Family, OfficialModel, Option
from arvision.families.var import _count, _need
from arvision.inputs import PreviousToken
from arvision.models.embeddings import TokenEmbedder
from arvision.models.heads import CategoricalHead, RMSHeadNorm
from arvision.schedules import RasterSchedule

# name -> (depth, width, heads)
PRESETS = {
    "B": (12, 768, 12),
    "L": (24, 1024, 16),
    "XL": (36, 1280, 20),
    "XXL": (48, 1536, 24),
    "3B": (24, 3200, 32),
}
HEADS_BY_SHAPE = {(d, w): h for d, w, h in PRESETS.values()}


def vq_keymap(levels: int) -> KeyMap:
    """LlamaGen's encoder/decoder names -> ours (VAR's layout).  Its decoder lists levels from the lowest
    resolution up, ours by resolution level, hence the index flip."""

    def dec_in(m):
        return f"decoder.up.{levels - 1 - int(m.group(1))}.{ {'res': 'block'}.get(m.group(2), m.group(2)) }"

    def dec_out(m):
        return f"decoder.conv_blocks.{levels - 1 - int(m.group(1))}.{ {'block': 'res'}.get(m.group(2), m.group(2)) }"

    mid = {"0": "block_1", "1": "attn_1", "2": "block_2"}
    mid_back = {v: k for k, v in mid.items()}
    return KeyMap(
        rules=[
            (r"^encoder\.conv_blocks\.(\d+)\.res\.", r"encoder.down.\1.block.",
             r"^encoder\.down\.(\d+)\.block\.", r"encoder.conv_blocks.\1.res."),
            (r"^encoder\.conv_blocks\.(\d+)\.(attn|downsample)\.", r"encoder.down.\1.\2.",
             r"^encoder\.down\.(\d+)\.(attn|downsample)\.", r"encoder.conv_blocks.\1.\2."),
            (r"^decoder\.conv_blocks\.(\d+)\.(res|attn|upsample)", dec_in,
             r"^decoder\.up\.(\d+)\.(block|attn|upsample)", dec_out),
            (r"^(encoder|decoder)\.mid\.([012])\.", lambda m: f"{m.group(1)}.mid.{mid[m.group(2)]}.",
             r"^(encoder|decoder)\.mid\.(block_1|attn_1|block_2)\.",
             lambda m: f"{m.group(1)}.mid.{mid_back[m.group(2)]}."),
        ],
        buffers=(r"quantize\.codebook_used",),
    )


GPT_RULES = [
    (r"^cls_embedding\.embedding_table\.", "class_emb.", r"^class_emb\.", "cls_embedding.embedding_table."),
    (r"^tok_embeddings\.", "embed.input_proj.", r"^embed\.input_proj\.", "tok_embeddings."),
    (r"^layers\.(\d+)\.attention\.wqkv\.", r"blocks.\1.attn.qkv.", r"^blocks\.(\d+)\.attn\.qkv\.",
     r"layers.\1.attention.wqkv."),
    (r"^layers\.(\d+)\.attention\.wo\.", r"blocks.\1.attn.proj.", r"^blocks\.(\d+)\.attn\.proj\.",
     r"layers.\1.attention.wo."),
    (r"^layers\.(\d+)\.feed_forward\.", r"blocks.\1.mlp.", r"^blocks\.(\d+)\.mlp\.", r"layers.\1.feed_forward."),
    (r"^layers\.(\d+)\.attention_norm\.", r"blocks.\1.attn_norm.", r"^blocks\.(\d+)\.attn_norm\.",
     r"layers.\1.attention_norm."),
    (r"^layers\.(\d+)\.ffn_norm\.", r"blocks.\1.mlp_norm.", r"^blocks\.(\d+)\.mlp_norm\.", r"layers.\1.ffn_norm."),
    (r"^norm\.", "head.norm.", r"^head\.norm\.", "norm."),
    (r"^output\.", "head.proj.", r"^head\.proj\.", "output."),
]
GPT_KEYMAP = KeyMap(rules=GPT_RULES, buffers=(r"freqs_cis",))


def tokenizer_config_from_official(vq_sd: dict, vq_ch: int | None = None, kind: str = "vq",
                                   what: str = "LlamaGen VQ checkpoint") -> TokenizerConfig:
    """The config of a LlamaGen-layout VQ (LlamaGen's VQ-16, FlexVAR's FlexVAE: ``kind``)."""
    emb = _need(vq_sd, "quantize.embedding.weight", what)
    ch = _need(vq_sd, "encoder.conv_in.weight", what).shape[0]
    if vq_ch is not None and vq_ch != ch:
        raise CheckpointError(f"--vq-ch {vq_ch} disagrees with the checkpoint (encoder.conv_in has {ch} channels)")
    levels = _count(vq_sd, r"^encoder\.conv_blocks\.(\d+)\.")
    enc = tuple(int(_need(vq_sd, f"encoder.conv_blocks.{i}.res.0.conv1.weight", what).shape[0] // ch)
                for i in range(levels))
    dec_levels = _count(vq_sd, r"^decoder\.conv_blocks\.(\d+)\.")
    dec = tuple(int(_need(vq_sd, f"decoder.conv_blocks.{dec_levels - 1 - i}.res.0.conv1.weight", what).shape[0]
                    // ch) for i in range(dec_levels))
    blocks = _count(vq_sd, r"^encoder\.conv_blocks\.0\.res\.(\d+)\.")
    return TokenizerConfig(
        kind=kind, vocab_size=emb.shape[0], embed_dim=emb.shape[1],
        z_channels=_need(vq_sd, "encoder.conv_out.weight", what).shape[0], ch=ch, ch_mult=enc,
        decoder_ch_mult=None if dec == enc else dec, num_res_blocks=blocks,
        attn_style="split" if any(re.search(r"\.attn\.\d+\.q\.", k) for k in vq_sd) else "fused",
        quant_conv_ks=_need(vq_sd, "quant_conv.weight", what).shape[-1], l2_norm=True)


def config_from_official(vq_sd: dict, gpt_sd: dict, image_size: int = 256, vq_ch: int | None = None,
                         num_heads: int | None = None, num_classes: int | None = None) -> ModelConfig:
    what = "LlamaGen GPT checkpoint"
    tok = tokenizer_config_from_official(vq_sd, vq_ch)
    emb = _need(gpt_sd, "tok_embeddings.weight", what)
    vocab, width = emb.shape
    depth = _count(gpt_sd, r"^layers\.(\d+)\.")
    qkv = _need(gpt_sd, "layers.0.attention.wqkv.weight", what)
    if qkv.shape[0] != 3 * width:
        raise CheckpointError(f"layers.0.attention.wqkv has {qkv.shape[0]} rows, not 3 x {width}: grouped-query "
                              "attention (n_kv_head < n_head) is not supported")
    heads = num_heads or HEADS_BY_SHAPE.get((depth, width))
    if heads is None:
        heads = max(width // 64, 1)
        warnings.warn(f"the head count is not visible in a GPT checkpoint and depth {depth} / width {width} is not a "
                      f"released model: assuming {heads} heads of 64 channels (LlamaGen's convention); pass "
                      "num_heads (--num-heads) if it differs", stacklevel=2)
    if num_heads is not None and (depth, width) in HEADS_BY_SHAPE and HEADS_BY_SHAPE[(depth, width)] != num_heads:
        raise CheckpointError(f"--num-heads {num_heads} disagrees with the released model of this shape "
                              f"({HEADS_BY_SHAPE[(depth, width)]} heads)")
    cls = _need(gpt_sd, "cls_embedding.embedding_table.weight", what)
    classes = cls.shape[0] - 1
    if num_classes is not None and num_classes != classes:
        raise CheckpointError(f"--num-classes {num_classes} disagrees with the checkpoint ({classes} classes + 1 null)")
    tr = TransformerConfig(block="llama", width=width, depth=depth, num_heads=heads, vocab_size=vocab,
                           num_classes=classes, in_channels=tok.embed_dim,
                           ffn_hidden=_need(gpt_sd, "layers.0.feed_forward.w1.weight", what).shape[0])
    if tok.vocab_size != vocab:
        raise CheckpointError(f"the VQ codebook has {tok.vocab_size} codes but the GPT predicts {vocab}")
    return ModelConfig(family="llamagen", image_size=image_size, tokenizer=tok, transformer=tr)


def preset_config(name: str, image_size: int = 256, num_classes: int = 1000) -> ModelConfig:
    """GPT-``name`` (B, L, XL, XXL, 3B) with the released VQ-16."""
    if name not in PRESETS:
        raise KeyError(f"unknown LlamaGen preset {name!r}; known: {sorted(PRESETS)}")
    depth, width, heads = PRESETS[name]
    tok = TokenizerConfig(kind="vq", vocab_size=16384, embed_dim=8, z_channels=256, ch=128,
                          attn_style="split", quant_conv_ks=1, l2_norm=True)
    tr = TransformerConfig(block="llama", width=width, depth=depth, num_heads=heads, vocab_size=16384,
                           num_classes=num_classes, in_channels=8)
    return ModelConfig(family="llamagen", image_size=image_size, tokenizer=tok, transformer=tr)


def official_vq_state(pipe) -> dict:
    """A LlamaGen-layout VQ tokenizer's state dict under the official names (LlamaGen, FlexVAR), with the
    ``codebook_used`` buffer the official model saves (usage statistics only: zeros)."""
    tok = Family.renamed(pipe.tokenizer, vq_keymap(len(pipe.config.tokenizer.dec_ch_mult)))
    tok["quantize.codebook_used"] = torch.zeros(65536)
    return tok


# -- the family object -------------------------------------------------------------------------------------------
class LlamaGenFamily(Family):
    name = "llamagen"
    description = "LlamaGen"
    tokenizer_kind = "vq"
    block = "llama"
    capabilities = Capabilities(speculative_decoding=True, token_step=True, row_prefixes=True)
    guidance_rule = "constant"
    top_p_rule = "descending"
    defaults = {"guidance_scale": 2.0, "top_k": 0, "top_p": 0.0}  # the README of the LlamaGen repository
    presets = PRESETS
    official_files = (Option("vq", "path", "the VQ tokenizer checkpoint", required=True),
                      Option("gpt", "path", "the GPT checkpoint", required=True))
    convert_options = (
        Option("image_size", "int", "image side in pixels (default 256)"),
        Option("vq_ch", "int", "check the tokenizer base width (read from the checkpoint; the released VQ-16 has "
                               "128)"),
        Option("num_heads", "int", "attention heads (default: the released model of this depth/width, else "
                                   "width/64)"),
        Option("num_classes", "int", "check the class count"))
    convert_help = "LlamaGen: vq_ds16_c2i.pt + c2i_{B,L,XL,XXL,3B}_*.pt"
    gpt_keymap = GPT_KEYMAP  # the GPT's official names (NAR: plus its down head)

    def schedule(self, config: ModelConfig, patch_nums=None) -> RasterSchedule:
        if patch_nums is not None:
            raise ArvisionError(f"a {self.description} model generates one token per step in raster order; it has no "
                                "scale list (patch_nums)")
        return RasterSchedule.of_grid(config.latent_size)

    def input_builder(self, tokenizer, schedule) -> PreviousToken:
        return PreviousToken(tokenizer, schedule)

    def embedder(self, config: ModelConfig) -> TokenEmbedder:
        tr = config.transformer
        return TokenEmbedder(tr.vocab_size, tr.width, tr.head_dim, tr.rope_base)

    def head(self, config: ModelConfig) -> CategoricalHead:
        tr = config.transformer
        return CategoricalHead(RMSHeadNorm(tr.width, tr.norm_eps), tr.width, tr.vocab_size, bias=False)

    @torch.no_grad()
    def init_weights(self, transformer) -> None:
        """LlamaGen's initialisation: normal(0.02) for every linear and embedding (zero biases), zero output head."""
        for m in transformer.modules():
            if isinstance(m, (nn.Linear, nn.Embedding)):
                nn.init.normal_(m.weight, std=0.02)
                if getattr(m, "bias", None) is not None:
                    nn.init.zeros_(m.bias)
        nn.init.zeros_(transformer.head.proj.weight)

    def owns_transformer_checkpoint(self, state: dict) -> bool:
        # NAR's GPT has LlamaGen's keys plus its down head (``medusa_output``): that one is NAR's
        return ("medusa_output.weight" not in state
                and ("tok_embeddings.weight" in state or "cls_embedding.embedding_table.weight" in state))

    def owns_tokenizer_checkpoint(self, state: dict) -> bool:
        return "quantize.codebook_used" in state or any(k.startswith("encoder.conv_blocks") for k in state)

    def read_official(self, tokenizer_state: dict, transformer_state: dict, image_size: int | None = None,
                      vq_ch: int | None = None, num_heads: int | None = None,
                      num_classes: int | None = None) -> OfficialModel:
        image_size = 256 if image_size is None else image_size
        if image_size <= 0:
            raise ArvisionError(f"--image-size must be positive, got {image_size}")
        config = self.official_config(tokenizer_state, transformer_state, image_size=image_size, vq_ch=vq_ch,
                                      num_heads=num_heads, num_classes=num_classes)
        return OfficialModel(config, tokenizer_state, transformer_state, vq_keymap(len(config.tokenizer.dec_ch_mult)),
                             self.gpt_keymap, {"quantize.codebook_used": (None,)}, {})

    def official_config(self, vq_sd: dict, gpt_sd: dict, **options) -> ModelConfig:
        """The config of an official (VQ, GPT) pair (``read_official``'s options)."""
        return config_from_official(vq_sd, gpt_sd, **options)

    def official_state_dicts(self, pipe) -> tuple[dict, dict]:
        return official_vq_state(pipe), self.renamed(pipe.transformer, self.gpt_keymap)


FAMILY = LlamaGenFamily()
