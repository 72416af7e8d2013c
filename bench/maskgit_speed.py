"""Sampling cost of MaskGIT against raster decoding on the same token grid and trunk size (random weights: speed
only): forwards, token forwards (rows x positions through the trunk) and seconds per image.

    python bench/maskgit_speed.py [--side 8] [--images 10] [--repeat 3] [--threads 1]

Both models: LlamaGen's VQ kind (512 codes), an 8 x 8 token grid, the ``small`` trunk (depth 6, width 192,
3 heads); MaskGIT with AdaLN blocks, LlamaGen with Llama blocks and its KV cache.  Guidance off (scale 1); fp32.
The best of ``--repeat`` runs after one warm-up.
"""

from __future__ import annotations

import argparse
import time

import torch

from arvision.config import ModelConfig, TokenizerConfig, TransformerConfig
from arvision.pipeline import ARPipeline


def build(family: str, side: int) -> ARPipeline:
    torch.manual_seed(0)
    tok = TokenizerConfig(kind="vq", vocab_size=512, embed_dim=16, z_channels=16, ch=32, ch_mult=(1, 2, 2),
                          l2_norm=True)
    block = "adaln" if family == "maskgit" else "llama"
    tr = TransformerConfig(block=block, width=192, depth=6, num_heads=3, vocab_size=512, num_classes=10,
                           in_channels=16)
    pipe = ARPipeline(ModelConfig(family=family, image_size=4 * side, tokenizer=tok, transformer=tr))
    pipe.transformer.init_weights()
    return pipe


def timed(pipe, images: int, repeat: int, **options) -> tuple[float, dict]:
    labels = [i % 10 for i in range(images)]
    pipe(labels, generator=torch.Generator().manual_seed(0), output_type="tokens", guidance_scale=1.0, **options)
    best, stats = float("inf"), {}
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = pipe(labels, generator=torch.Generator().manual_seed(0), output_type="tokens", guidance_scale=1.0,
                   batch_size=images, **options)
        dt = time.perf_counter() - t0
        if dt < best:
            best, stats = dt, out.stats
    return best / images, stats


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--side", type=int, default=8)
    ap.add_argument("--images", type=int, default=10)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    rows = []
    raster = build("llamagen", args.side)
    rows.append(("llamagen raster", *timed(raster, args.images, args.repeat)))
    masked = build("maskgit", args.side)
    for T in (4, 8, 16):
        for order in ("confidence", "halton"):
            rows.append((f"maskgit T={T} {order}", *timed(masked, args.images, args.repeat, iterations=T,
                                                           order=order)))
    print(f"{args.side}x{args.side} tokens, {args.images} images, {torch.get_num_threads()} thread(s)")
    print("| sampler | forwards | token forwards / image | ms / image |\n|---|---|---|---|")
    for name, per_image, stats in rows:
        print(f"| {name} | {stats['forwards']} | {stats['token_forwards'] // args.images} | {1000 * per_image:.1f} |")


if __name__ == "__main__":
    main()
