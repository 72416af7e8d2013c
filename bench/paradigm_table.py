"""The paradigm table of docs/paradigms.md: digit models of different families, judged the same way.

For every model folder given (default: the bundled VAR and the FlexVAR runs of ``bench/train_paradigms.sh``):

1. ``arvision sample MODEL --classes <P of each digit> --seed S --out-dir GEN --batch-size 100`` (the CLI, at the
   sampling defaults stored with each model; timed), for every seed of ``--seeds``;
2. accuracy of those digits under the shipped mnist-5k classifier, and FID on the classifier's penultimate features
   against all 5,000 real digits: per seed, and their mean and standard deviation over the seeds (how large a
   difference between models has to be before it means anything); ``--inception`` adds the TF-Inception FID of the
   first seed, as ``bench/bundled_quality.py`` measures it.

For the first model whose family samples on other scale lists (FlexVAR; or every such model with ``--all-lists``),
also every list of ``--lists`` (zero-shot: lists and resolutions never trained on), with accuracy / classifier-FID
measured on the images area-resized to the model's size, and a picture: one row per list, one column per digit
(``--picture``).

    python bench/paradigm_table.py [--models DIR ...] [--per-class 100] [--zero-shot-per-class 50]
        [--work /tmp/arvision-paradigms] [--out-json table.json] [--picture docs/img/flexvar_zero_shot.png]
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

DEFAULT_MODELS = ["bundled", "runs/flexvar-mnist", "runs/flexvar-mnist-tf300-seed1", "runs/flexvar-mnist-sar300-seed1",
                  "runs/flexvar-mnist-tf300-seed2", "runs/flexvar-mnist-sar300-seed2"]
DEFAULT_LISTS = ["1,2,4,8", "1,2,3,4,5,6,7,8", "1,2,3,4,6,8,10,12", "1,2,3,4,6,8,10,12,14,16"]


def cpu_name() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor()


def sample_folder(model: str, per_class: int, seed: int, out_dir: Path, extra: list[str]) -> tuple[list[str], float]:
    """``arvision sample`` of ``per_class`` digits of each class into ``out_dir`` -> (command, seconds)."""
    classes = [str(k) for k in range(10) for _ in range(per_class)]
    cmd = [sys.executable, "-m", "arvision", "sample", *([] if model == "bundled" else [model]), "--classes",
           *classes, "--seed", str(seed), "--out-dir", str(out_dir), "--batch-size", "100", *extra]
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    return cmd, time.perf_counter() - t0


def read_folder(out_dir: Path, size: int) -> tuple[np.ndarray, torch.Tensor]:
    """The generated PNGs -> (N, size, size, 3) uint8 (area-resized when larger), labels (N,)."""
    from arvision.images import read_image

    files = sorted(out_dir.glob("*.png"))
    x = torch.from_numpy(np.stack([np.asarray(read_image(f)) for f in files])).permute(0, 3, 1, 2).float()
    if x.shape[-1] != size:
        x = F.interpolate(x, size=(size, size), mode="area")
    images = x.round().clamp(0, 255).byte().permute(0, 2, 3, 1).numpy()
    return images, torch.tensor([int(f.stem.split("class")[1]) for f in files])


class Judge:
    """The shipped mnist-5k classifier and the 5,000 real digits, at one image size."""

    def __init__(self, size: int, work: Path, inception: bool):
        sys.path.insert(0, str(Path(__file__).parent))
        from bundled_quality import real_digits, real_inception

        from arvision.evaluation.classifier import classifier_features, load_mnist_classifier

        self.clf, self.features = load_mnist_classifier(), classifier_features
        self.real, self.real_labels = real_digits(size)
        _, self.real_cf = self._clf(self.real)
        self.real_if = real_inception(work, size, self.real) if inception else None

    def _clf(self, images: np.ndarray):
        return self.features(torch.from_numpy(images).permute(0, 3, 1, 2).contiguous(), self.clf)

    def __call__(self, images: np.ndarray, labels: torch.Tensor, inception: bool = True) -> dict:
        from arvision.evaluation.fid import fid_from_features
        from arvision.evaluation.inception import InceptionFeatures

        logits, cf = self._clf(images)
        out = {"images": len(images), "accuracy": (logits.argmax(1) == labels).float().mean().item(),
               "fid_classifier": fid_from_features(cf, self.real_cf)}
        if self.real_if is not None and inception:
            feats = np.asarray(InceptionFeatures()(torch.from_numpy(images).permute(0, 3, 1, 2).contiguous()),
                               dtype=np.float64)
            out["fid_inception"] = fid_from_features(feats, self.real_if)
        return out


def picture(rows: list[tuple[str, Path]], path: Path) -> None:
    """One row per (caption, folder of digits): the first image of each class, shown at 96 px."""
    from arvision.images import make_grid, read_image

    cells, captions = [], []
    for caption, folder in rows:
        for k in range(10):
            first = sorted(folder.glob(f"*_class{k}.png"))[0]
            cells.append(read_image(first).resize((96, 96), resample=0))
            captions.append(caption if k == 0 else str(k))
    make_grid(cells, captions, ncol=10).save(path)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="+", default=DEFAULT_MODELS, help="model folders ('bundled': the bundled one)")
    ap.add_argument("--per-class", type=int, default=100)
    ap.add_argument("--zero-shot-per-class", type=int, default=50)
    ap.add_argument("--lists", nargs="*", default=DEFAULT_LISTS, help="scale lists for models that take them")
    ap.add_argument("--all-lists", action="store_true", help="the lists for every model that takes them")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--inception", action="store_true", help="also the TF-Inception FID (slower)")
    ap.add_argument("--work", type=Path, default=Path("/tmp/arvision-paradigms"))
    ap.add_argument("--out-json", type=Path, default=None)
    ap.add_argument("--picture", type=Path, default=None, help="zero-shot picture of the first scale-list model")
    args = ap.parse_args()

    from arvision.bundled import bundled_model_dir
    from arvision.pipeline import ARPipeline

    judges: dict[int, Judge] = {}
    report = {"cpu": cpu_name(), "torch": torch.__version__, "threads": torch.get_num_threads(), "models": []}
    picture_rows = None
    for model in args.models:
        folder = bundled_model_dir() if model == "bundled" else Path(model)
        pipe = ARPipeline.from_pretrained(folder)
        size = pipe.config.image_size
        judge = judges.setdefault(size, Judge(size, args.work, args.inception))
        name = folder.name if model != "bundled" else "bundled"
        per_seed = []
        for seed in args.seeds:
            gen = args.work / name / f"trained-list-seed{seed}"
            cmd, seconds = sample_folder(model, args.per_class, seed, gen, [])
            per_seed.append({"seed": seed, "sample_seconds": round(seconds, 1),
                             **judge(*read_folder(gen, size), inception=seed == args.seeds[0])})
        gen = args.work / name / f"trained-list-seed{args.seeds[0]}"
        entry = {"model": model, "family": pipe.config.family, "schedule": pipe.schedule.describe(),
                 "params_m": round(sum(p.numel() for p in pipe.transformer.parameters()) / 1e6, 2),
                 "sampling": pipe.config.sampling, "command": " ".join(cmd[1:4] + ["..."] + cmd[-8:]),
                 "per_seed": per_seed, **per_seed[0]}
        for key in ("accuracy", "fid_classifier"):
            values = np.array([r[key] for r in per_seed])
            entry[f"{key}_mean"], entry[f"{key}_std"] = float(values.mean()), float(values.std(ddof=1)) \
                if len(values) > 1 else 0.0
        if pipe.family.capabilities.scale_lists and (args.all_lists or picture_rows is None):
            entry["lists"] = {}
            rows = [(f"trained, {size}px", gen)]
            for spec in args.lists:
                out = args.work / name / f"list-{spec.replace(',', '-')}"
                _, seconds = sample_folder(model, args.zero_shot_per_class, args.seeds[0], out,
                                           ["--patch-nums", spec])
                sides = [int(p) for p in spec.split(",")]
                entry["lists"][spec] = {"image_px": sides[-1] * pipe.config.tokenizer.downsample,
                                        "sample_seconds": round(seconds, 1), **judge(*read_folder(out, size))}
                rows.append((f"{len(sides)} steps, {entry['lists'][spec]['image_px']}px", out))
            picture_rows = picture_rows or rows
        report["models"].append(entry)
        print(json.dumps(entry), flush=True)
    if args.picture and picture_rows:
        picture(picture_rows, args.picture)
    n = len(args.seeds)
    print(f"\n| model | family | steps | accuracy (mean ± sd, {n} seeds) | classifier-FID (mean ± sd) | "
          "seconds / 1000 images |")
    print("|---|---|---|---|---|---|")
    for e in report["models"]:
        per_1000 = e["sample_seconds"] / e["images"] * 1000
        print(f"| {e['model']} | {e['family']} | {e['schedule']} | {e['accuracy_mean']:.4f} ± {e['accuracy_std']:.4f} "
              f"| {e['fid_classifier_mean']:.2f} ± {e['fid_classifier_std']:.2f} | {per_1000:.0f} |")
    for e in report["models"]:
        for spec, r in e.get("lists", {}).items():
            print(f"| {e['model']} @ {spec} ({r['image_px']} px) | | | {r['accuracy']:.3f} | {r['fid_classifier']:.2f} "
                  f"| {r['sample_seconds'] / r['images'] * 1000:.0f} |")
    if args.out_json:
        args.out_json.write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
