"""Train the image-caption matcher (the fair reward of text-to-image search) on procedural pairs and save it.

    python bench/train_matcher.py --steps 3000 --batch 64 --out src/arvision/assets/matcher

Prints its AUC on fresh labelled pairs (a seed the training never drew: true captions against perturbed ones and
other scenes' ones) at the end, and writes matcher.safetensors + matcher.json (with that AUC, the steps and the
wall time).
"""

from __future__ import annotations

import argparse
import subprocess
import time

import numpy as np
import torch

from arvision.captions import VOCAB
from arvision.evaluation.matcher import MatcherConfig, contrastive_batch, matcher_batch, save_matcher, train_matcher


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=3000)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", required=True)
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    t0 = time.perf_counter()

    def log(step, loss, acc):
        if step % 100 == 0 or step == args.steps - 1:
            print(f"step {step} loss {loss:.4f} acc {acc:.3f} ({time.perf_counter() - t0:.0f} s)", flush=True)

    model = train_matcher(MatcherConfig(vocab=VOCAB), contrastive_batch, args.steps, args.batch, args.lr, args.seed,
                          log)
    seconds = time.perf_counter() - t0
    x, texts, labels = matcher_batch(np.random.default_rng(10_000 + args.seed), 1024, noise=0.0)
    with torch.no_grad():
        scores = model(x, model.tokenizer(texts))
    pos, neg = scores[labels == 1], scores[labels == 0]
    acc = (pos[:, None] > neg[None, :]).float().mean().item()  # AUC: a true pair outranks a false one
    cpu = subprocess.run("lscpu | grep 'Model name'", shell=True, capture_output=True, text=True).stdout.strip()
    print(f"AUC on 1024 held-aside labelled pairs (true captions vs perturbed / other scenes' ones): {acc:.4f}; "
          f"{seconds:.0f} s training on {cpu}")
    save_matcher(model, args.out, {"steps": args.steps, "batch": args.batch, "heldaside_auc": acc,
                                   "train_seconds": round(seconds, 1), "cpu": cpu})


if __name__ == "__main__":
    main()
