"""Dataclass specs for the tokenizer, the transformer and the whole model, validated where they enter.

A model folder holds ``config.json`` (``ModelConfig.to_dict()``) and safetensors weights.  Every field has
a meaning independent of any preset; presets (``families/``) only fill them in.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from arvision.errors import ArvisionError


def _fail(what: str, value: Any, allowed: str) -> None:
    raise ArvisionError(f"invalid {what}: {value!r} ({allowed})")


def _from_dict(cls, data: dict, where: str):
    if not isinstance(data, dict):
        raise ArvisionError(f"{where} must be a JSON object, got {type(data).__name__}")
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ArvisionError(f"{where} has unknown field(s) {unknown}; known: {sorted(names)}")
    kwargs = {k: tuple(v) if isinstance(v, list) else v for k, v in data.items()}
    return cls(**kwargs)


@dataclass
class TokenizerConfig:
    """A conv VQ tokenizer; ``kind`` names its class in ``arvision.tokenizers.models.TOKENIZERS``.

    ``kind="multiscale"``: VAR's multi-scale residual VQ over the scale list ``patch_nums`` (the last one is the
    latent grid side).  ``kind="vq"``: LlamaGen's single-scale VQ, latent grid = image_size / downsample.
    ``kind="multiscale-independent"``: FlexVAR's VQ, every scale of ``patch_nums`` quantised on its own.
    """

    kind: str = "multiscale"
    vocab_size: int = 4096
    embed_dim: int = 32  # code dimension (VAR's Cvae, LlamaGen's codebook_embed_dim)
    z_channels: int = 32  # encoder output / decoder input channels
    ch: int = 160
    ch_mult: tuple[int, ...] = (1, 1, 2, 2, 4)
    decoder_ch_mult: tuple[int, ...] | None = None  # None: same as ch_mult
    num_res_blocks: int = 2
    dropout: float = 0.0
    attn_style: str = "fused"  # "fused" qkv conv (VAR) or "split" q/k/v convs (LlamaGen)
    quant_conv_ks: int = 3  # 3 (VAR) or 1 (LlamaGen)
    l2_norm: bool = False  # l2-normalised codes and features (LlamaGen)
    patch_nums: tuple[int, ...] = (1, 2, 3, 4, 5, 6, 8, 10, 13, 16)
    share_quant_resi: int = 4  # 0: one phi per scale, 1: one shared phi, K>1: K partially shared phis
    quant_resi: float = 0.5
    beta: float = 0.25  # commitment weight (training)

    def __post_init__(self):
        from arvision.tokenizers.models import TOKENIZERS

        if self.kind not in TOKENIZERS:
            _fail("tokenizer kind", self.kind, f"use one of {', '.join(map(repr, TOKENIZERS))}")
        for name in ("vocab_size", "embed_dim", "z_channels", "ch", "num_res_blocks"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                _fail(f"tokenizer {name}", getattr(self, name), "a positive integer")
        self.ch_mult = tuple(int(m) for m in self.ch_mult)
        if self.decoder_ch_mult is not None:
            self.decoder_ch_mult = tuple(int(m) for m in self.decoder_ch_mult)
            if len(self.decoder_ch_mult) != len(self.ch_mult):
                _fail("decoder_ch_mult", self.decoder_ch_mult, "the same length as ch_mult")
        if not self.ch_mult or any(m < 1 for m in self.ch_mult):
            _fail("ch_mult", self.ch_mult, "a non-empty list of positive integers")
        for m in self.ch_mult + (self.decoder_ch_mult or ()):
            if (self.ch * m) % 32:
                _fail("ch * ch_mult", self.ch * m, "a multiple of 32 (GroupNorm uses 32 groups)")
        if self.attn_style not in ("fused", "split"):
            _fail("attn_style", self.attn_style, "'fused' or 'split'")
        if self.quant_conv_ks not in (1, 3):
            _fail("quant_conv_ks", self.quant_conv_ks, "1 or 3")
        self.patch_nums = tuple(int(p) for p in self.patch_nums)
        TOKENIZERS[self.kind].check_config(self)

    @property
    def downsample(self) -> int:
        return 2 ** (len(self.ch_mult) - 1)

    @property
    def dec_ch_mult(self) -> tuple[int, ...]:
        return self.decoder_ch_mult or self.ch_mult


@dataclass
class TransformerConfig:
    """The AR trunk + head; ``block`` names its block class in ``arvision.models.blocks.BLOCKS``.

    ``block="adaln"``: VAR blocks (AdaLN conditioning, l2-normalised attention, GELU MLP).  ``block="llama"``:
    LlamaGen blocks (RMSNorm, SwiGLU, 2-D RoPE).  The embedder and head come from the model's family.
    """

    block: str = "adaln"
    width: int = 1024
    depth: int = 16
    num_heads: int = 16
    vocab_size: int = 4096
    num_classes: int = 1000  # id num_classes is the null (unconditional) class
    in_channels: int = 32  # adaln: canvas feature dim fed to the input projection
    mlp_ratio: float = 4.0  # adaln MLP hidden = round(width * mlp_ratio)
    ffn_hidden: int | None = None  # llama SwiGLU hidden; None: multiple of 256 above 8/3 width
    norm_eps: float | None = None  # None: 1e-6 (adaln) / 1e-5 (llama)
    shared_adaln: bool = False
    attn_l2_norm: bool = True
    rope_base: float = 10000.0
    drop_path_rate: float = 0.0
    dropout: float = 0.0
    pos_grid: int = 32  # FlexVAR: side of the learned 2-D position grid resized to every scale

    def __post_init__(self):
        from arvision.models.blocks import BLOCKS

        if self.block not in BLOCKS:
            _fail("block", self.block, f"one of {', '.join(map(repr, BLOCKS))}")
        for name in ("width", "depth", "num_heads", "vocab_size", "num_classes", "in_channels"):
            v = getattr(self, name)
            if not isinstance(v, int) or v < 1:
                _fail(f"transformer {name}", v, "a positive integer")
        if self.width % self.num_heads:
            _fail("width", self.width, f"divisible by num_heads={self.num_heads}")
        if not isinstance(self.pos_grid, int) or self.pos_grid < 1:
            _fail("pos_grid", self.pos_grid, "a positive integer")
        if self.norm_eps is None:
            self.norm_eps = BLOCKS[self.block].default_norm_eps
        BLOCKS[self.block].configure(self)
        if not 0.0 <= self.drop_path_rate < 1.0 or not 0.0 <= self.dropout < 1.0:
            _fail("dropout rates", (self.drop_path_rate, self.dropout), "in [0, 1)")

    @property
    def head_dim(self) -> int:
        return self.width // self.num_heads


@dataclass
class ModelConfig:
    """A whole model: tokenizer + trunk + how steps are laid out and sampled."""

    family: str = "var"  # a name of the paradigm registry (``arvision.families``): var, llamagen, flexvar
    image_size: int = 256
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)
    transformer: TransformerConfig = field(default_factory=TransformerConfig)
    class_names: tuple[str, ...] | None = None
    # sampling settings this model was tuned for (guidance_scale, top_k, top_p, temperature); they replace the
    # family's published defaults when a caller leaves a setting out
    sampling: dict | None = None

    def __post_init__(self):
        from arvision.families import get_family

        family = get_family(self.family)
        tok, tr = self.tokenizer, self.transformer
        if self.image_size % tok.downsample:
            _fail("image_size", self.image_size, f"a multiple of the tokenizer downsample {tok.downsample}")
        if tok.vocab_size != tr.vocab_size:
            _fail("vocab sizes", (tok.vocab_size, tr.vocab_size), "tokenizer and transformer must agree")
        family.check_config(self)
        if self.class_names is not None:
            self.class_names = tuple(str(c) for c in self.class_names)
            if len(self.class_names) != tr.num_classes:
                _fail("class_names", len(self.class_names), f"one name per class ({tr.num_classes})")
        allowed = {"guidance_scale", "top_k", "top_p", "temperature"} | set(family.sampling_options)
        if self.sampling is not None and (not isinstance(self.sampling, dict) or set(self.sampling) - allowed):
            _fail("sampling defaults", self.sampling, f"a dict with keys among {sorted(allowed)}")

    @property
    def latent_size(self) -> int:
        return self.image_size // self.tokenizer.downsample

    @property
    def num_classes(self) -> int:
        return self.transformer.num_classes

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> ModelConfig:
        if not isinstance(data, dict):
            raise ArvisionError("config.json must hold a JSON object")
        data = dict(data)
        data.pop("arvision_version", None)
        tok = _from_dict(TokenizerConfig, data.pop("tokenizer", {}), "config 'tokenizer'")
        tr = _from_dict(TransformerConfig, data.pop("transformer", {}), "config 'transformer'")
        return _from_dict(cls, {**data, "tokenizer": tok, "transformer": tr}, "config")

    def save(self, path: str | Path) -> None:
        from arvision import __version__

        Path(path).write_text(json.dumps({"arvision_version": __version__, **self.to_dict()}, indent=2))

    @classmethod
    def load(cls, path: str | Path) -> ModelConfig:
        try:
            data = json.loads(Path(path).read_text())
        except FileNotFoundError:
            raise ArvisionError(f"no config.json at {path}") from None
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ArvisionError(f"{path} is not valid JSON: {e}") from None
        return cls.from_dict(data)
