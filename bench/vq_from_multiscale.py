"""Seed a single-map VQ tokenizer (LlamaGen's kind, for raster / MaskGIT / NAR models) from a trained multi-scale
tokenizer (VAR's) with the same convolutional trunk (``arvision.tokenizers.convert``), so that the raster text model
on ``shapes`` does not pay for a tokenizer trained from scratch.  The codebook (``--vocab`` codes) is seeded with
the encoder's features at distinct random latent positions of ``--images`` dataset images (one generator seeded
``--seed``).  The result is an ordinary tokenizer folder; fine-tune it with
``arvision train-tokenizer --init OUT --data shapes ...`` (all parts learn; dead codes are restarted as usual).

    PYTHONPATH=src python bench/vq_from_multiscale.py SRC OUT [--data shapes] [--vocab 1024] [--images 512]
"""

from __future__ import annotations

import argparse

import torch

from arvision.tokenizers.convert import single_map_from_multiscale
from arvision.training.datasets import build_dataset
from arvision.training.tokenizer_trainer import load_tokenizer_folder, save_tokenizer_folder


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("src", help="a multi-scale tokenizer folder or a model folder (its tokenizer is read)")
    ap.add_argument("out", help="the new tokenizer folder")
    ap.add_argument("--data", default="shapes")
    ap.add_argument("--vocab", type=int, default=1024)
    ap.add_argument("--images", type=int, default=512)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    src, image_size, _ = load_tokenizer_folder(args.src)
    data = build_dataset(args.data, image_size)
    gen = torch.Generator().manual_seed(args.seed)
    pick = torch.randperm(len(data), generator=gen)[: args.images].tolist()
    imgs = torch.stack([data[i][0] for i in pick])
    vq = single_map_from_multiscale(src, imgs, args.vocab, generator=gen)
    with torch.no_grad():
        usage = vq.encode(imgs).flatten().unique().numel()
        err = (vq.decode(vq.encode(imgs[:64])).clamp(-1, 1) - imgs[:64]).abs().mean().item()
    save_tokenizer_folder(args.out, vq, image_size)
    print(f"{args.out}: vq tokenizer, {args.vocab} codes seeded from the features of {len(pick)} images; "
          f"{usage} codes in use on them, L1 reconstruction error {err:.4f} (images in [-1, 1])")


if __name__ == "__main__":
    main()
