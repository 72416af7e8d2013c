"""Cluster-level reverse cycle-consistency of the bundled VAR tokenizer: does decode -> re-encode keep a token's
codebook *cluster* (k-means on the code vectors) where it loses the exact code?  The number that decides whether
cluster-level green lists (arXiv 2508.06656) can survive the round trip on this model.

    PYTHONPATH=src nice -n 5 python bench/watermark_clusters.py --n 100

For k clusters (seeded numpy k-means on ``pipe.tokenizer.codebook.codes``), per scale: the fraction of tokens whose
cluster is unchanged after decode -> uint8 -> re-encode, and the chance level (sum over clusters of
p(cluster before) * p(cluster after), the agreement two independent draws with the same usage would have).

``--detect``: the cluster-level watermark itself, measured outside the library (no module option: it does not
work on this model).  Green = a seeded random half of the k clusters; the bias ``delta`` applies to every code of a
green cluster (the LBW processor with its mask replaced); per-step green fractions of the sampled tokens and of the
re-encoded tokens; detection scores re-encoded tokens of steps >= start (every token), z against a null calibrated
on real mnist-5k digits (the mean and the across-image std of the green fraction on 400 re-encoded digits), TPR on
N watermarked samples, FPR on the N same-seed clean samples and on 400 other real digits (disjoint from the
calibration half).
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

from arvision.bundled import bundled_model_dir
from arvision.pipeline import ARPipeline
from arvision.sampling.watermark import WatermarkProcessor, WatermarkSpec
from arvision.training.datasets import Mnist5k


def kmeans(x: np.ndarray, k: int, seed: int = 0, iters: int = 50) -> np.ndarray:
    """x (V, D) -> cluster of each row (V,) int; k-means++-free: k random distinct rows as start."""
    rng = np.random.default_rng(seed)
    c = x[rng.choice(len(x), k, replace=False)].copy()
    for _ in range(iters):
        a = ((x[:, None] - c[None]) ** 2).sum(-1).argmin(1)
        for j in range(k):
            if (a == j).any():
                c[j] = x[a == j].mean(0)
    return a


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=100)
    ap.add_argument("--detect", action="store_true", help="also run the cluster-level watermark and its detection")
    args = ap.parse_args()
    torch.set_num_threads(1)
    pipe = ARPipeline.from_pretrained(bundled_model_dir())
    sizes = pipe.schedule.step_sizes
    codes = pipe.tokenizer.codebook.codes.detach().double().numpy()
    V = codes.shape[0]
    gens = [torch.Generator().manual_seed(1000 + i) for i in range(args.n)]
    out = pipe([i % 10 for i in range(args.n)], generator=gens, output_type="pt", batch_size=100)
    x = (out.images * 255).round().clamp(0, 255) / 127.5 - 1
    before, after = out.tokens.long(), pipe.encode(x).long()
    print(f"V={V}, D={codes.shape[1]}, N={args.n}, scales {sizes}")
    print("| k | " + " | ".join(f"step {s}" for s in range(len(sizes))) + " | all |")
    print("|---|" + "---|" * (len(sizes) + 1))
    ident = np.arange(V)
    for k in (V, 64, 32, 16, 8, 4, 2):
        if k > V:
            continue
        a = ident if k == V else kmeans(codes, k)
        cb, ca = torch.from_numpy(a)[before], torch.from_numpy(a)[after]
        cells = []
        for b, c in zip(cb.split(sizes, 1), ca.split(sizes, 1)):
            same = float((b == c).float().mean())
            pb = np.bincount(b.flatten().numpy(), minlength=k) / b.numel()
            pa = np.bincount(c.flatten().numpy(), minlength=k) / c.numel()
            cells.append(f"{same:.3f} ({float(pb @ pa):.3f})")
        print(f"| {'codes' if k == V else k} | " + " | ".join(cells) + f" | {float((cb == ca).float().mean()):.3f} |")
    if args.detect:
        detect(pipe, codes, args.n)


def quantise(x01: torch.Tensor) -> torch.Tensor:
    return (x01 * 255).round().clamp(0, 255) / 127.5 - 1


def detect(pipe, codes: np.ndarray, n: int) -> None:
    sizes, V = pipe.schedule.step_sizes, codes.shape[0]
    labels = [i % 10 for i in range(n)]
    ds = Mnist5k(image_size=pipe.config.image_size)
    idx = np.linspace(0, len(ds) - 1, 800).round().astype(int)
    real = pipe.encode(quantise((torch.stack([ds[int(i)][0] for i in idx]) + 1) / 2)).long()
    cal, neg = real[0::2], real[1::2]  # calibration half / negatives half

    def sample(procs=()):
        gens = [torch.Generator().manual_seed(1000 + i) for i in range(n)]
        o = pipe(labels, generator=gens, output_type="pt", batch_size=100, processors=procs)
        return o.tokens.long(), pipe.encode(quantise(o.images)).long()

    _, clean = sample()
    print("\n| k | delta | start | green frac per step, sampled / re-encoded | TPR z>4 | z>2 | mean z "
          "| clean FPR z>4 | z>2 | real FPR z>4 | z>2 |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for k in (16, 4):
        assign = torch.from_numpy(kmeans(codes, k))
        g = torch.Generator().manual_seed(7)
        green_clusters = torch.zeros(k, dtype=torch.bool)
        green_clusters[torch.randperm(k, generator=g)[:k // 2]] = True
        mask = green_clusters[assign]  # (V,) code is in a green cluster
        for delta in (0.0, 4.0, 8.0):  # 0: unwatermarked, the reference green fractions
            proc = WatermarkProcessor(WatermarkSpec("cluster", delta=delta, pool=1), V)
            proc.masks = mask[None]
            sampled, wt = sample([proc])
            fracs = ", ".join(f"{float(mask[a].float().mean()):.2f}/{float(mask[b].float().mean()):.2f}"
                              for a, b in zip(sampled.split(sizes, 1), wt.split(sizes, 1)))
            for start in (1, 2):
                w = torch.zeros(sum(sizes))
                w[sum(sizes[:start]):] = 1

                def frac(t, w=w, mask=mask):
                    return (mask[t].float() * w).sum(1) / w.sum()

                mu, sd = frac(cal).mean(), frac(cal).std()
                zw, zc, zn = (((frac(t) - mu) / sd).numpy() for t in (wt, clean, neg))
                print(f"| {k} | {delta} | {start} | {fracs} | {np.mean(zw > 4):.3f} | {np.mean(zw > 2):.3f} | "
                      f"{zw.mean():.2f} | {np.mean(zc > 4):.3f} | {np.mean(zc > 2):.3f} | {np.mean(zn > 4):.3f} | "
                      f"{np.mean(zn > 2):.3f} |", flush=True)


if __name__ == "__main__":
    main()
