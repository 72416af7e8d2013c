"""The evaluation protocol of docs/evaluation.md, run end to end on a digit model (default: the bundled one).

Everything goes through the documented commands:

1. the 5,000 mnist-5k digits, resized to the model's size as its training data was, are split by index into a
   reference set of 4,000 (400 per class) and a held-apart set of 1,000 (100 per class), written as PNGs;
2. ``arvision eval sample MODEL --per-class 100 --seed S --out GEN`` (1,000 images, per-image seeds);
3. ``arvision eval fid REF GEN --sfid --pr --kid`` and, as the noise floor at the same N,
   ``arvision eval fid REF HELD`` with the same flags (real digits that are not in the reference);
4. ``arvision eval classify GEN --fid-real mnist-5k`` (digit accuracy and classifier-feature FID).

Prints a Markdown table and writes the raw outputs as JSON.

    python bench/eval_bundled.py [--model DIR] [--per-class 100] [--seed 0] [--work /tmp/arvision-eval]
        [--setting CFG TOP_P ...]

``--setting CFG TOP_P`` (repeatable) samples at guidance CFG and top-p TOP_P (top-k off) instead of the model's
stored settings, one generated set and one row per setting: the measured quality frontier of the sampling knobs.
``--reconstructions`` adds a row for the model's tokenizer round trip of the 1,000 held digits: what a generator
that drew exactly the real distribution in this tokenizer's codes would score, the ceiling of any generator on it.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np


def write_real(work: Path, image_size: int) -> tuple[Path, Path]:
    """REF (4,000) and HELD (1,000) folders of real digits; item i goes to HELD when i % 5 == 4."""
    from PIL import Image

    from arvision.training.datasets import Mnist5k

    ref, held = work / f"real-ref-{image_size}", work / f"real-held-{image_size}"
    if ref.is_dir() and held.is_dir() and len(list(ref.glob("*.png"))) == 4000:
        return ref, held
    ref.mkdir(parents=True, exist_ok=True)
    held.mkdir(parents=True, exist_ok=True)
    ds = Mnist5k(image_size=image_size)
    for i in range(len(ds)):
        x, k = ds[i]
        arr = ((x.permute(1, 2, 0) + 1) * 127.5).round().clamp(0, 255).byte().numpy()
        folder = held if i % 5 == 4 else ref
        Image.fromarray(np.ascontiguousarray(arr)).save(folder / f"{i:05d}_class{k}.png")
    return ref, held


def write_reconstructions(work: Path, model: Path, held: Path) -> Path:
    """The tokenizer's encode -> decode of every HELD digit, as PNGs of the same names (the project's own image
    reader and its whole-or-nothing writer, so an interrupted run leaves no truncated file to be counted)."""
    from PIL import Image

    from arvision.evaluation.tokenizer_bench import reconstruct
    from arvision.images import read_image, save_image
    from arvision.pipeline import ARPipeline

    out = work / f"recon-held-{model.name}"
    files = sorted(held.glob("*.png"))
    if out.is_dir() and len(list(out.glob("*.png"))) == len(files):
        return out
    out.mkdir(parents=True, exist_ok=True)
    images = np.stack([np.asarray(read_image(f)) for f in files])
    recons, _, _ = reconstruct(ARPipeline.from_pretrained(model), images, batch_size=100)
    for f, r in zip(files, recons):
        save_image(Image.fromarray(r), out / f.name)
    return out


def run(cmd: list[str]) -> tuple[dict[str, str], float]:
    """Run an arvision command; parse its "name value" lines."""
    t0 = time.perf_counter()
    out = subprocess.run([sys.executable, "-m", "arvision", *cmd], check=True, capture_output=True, text=True).stdout
    values = {}
    for line in out.splitlines():
        if line.startswith("KID "):  # "KID <mean> +- <std>"
            parts = line.split()
            values["KID"], values["KID std"] = parts[1], parts[3]
            continue
        name, _, rest = line.rpartition(" ")
        if name and rest:
            values[name] = rest
    return values, time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=None)
    ap.add_argument("--per-class", type=int, default=100)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--work", default="/tmp/arvision-eval")
    ap.add_argument("--setting", nargs=2, type=float, action="append", metavar=("CFG", "TOP_P"),
                    help="sample at this guidance and top-p (top-k off); repeatable (default: the stored settings)")
    ap.add_argument("--reconstructions", action="store_true",
                    help="also the tokenizer's reconstructions of the held digits (the ceiling of its generators)")
    args = ap.parse_args()

    from arvision.bundled import bundled_model_dir
    from arvision.config import ModelConfig

    model = Path(args.model) if args.model else bundled_model_dir()
    cfg = ModelConfig.load(model / "config.json")
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    ref, held = write_real(work, cfg.image_size)
    settings = args.setting or [None]
    results: dict = {"model": str(model), "sets": []}
    cache = str(work / "features")
    flags = ["--sfid", "--pr", "--kid", "--cache-dir", cache]
    for setting in settings:
        knobs = [] if setting is None else ["--cfg", f"{setting[0]:g}", "--top-k", "0", "--top-p", f"{setting[1]:g}"]
        label = "stored settings" if setting is None else f"cfg {setting[0]:g}, top-p {setting[1]:g}"
        gen = work / f"gen-{model.name}-seed{args.seed}{''.join(knobs).replace('--', '-')}"
        entry = {"setting": label}
        _, entry["sample_seconds"] = run(["eval", "sample", str(model), "--per-class", str(args.per_class),
                                          "--seed", str(args.seed), "--out", str(gen), "--batch-size", "100", *knobs])
        entry["generated"], entry["fid_seconds"] = run(["eval", "fid", str(ref), str(gen), *flags])
        entry["classify"], _ = run(["eval", "classify", str(gen), "--fid-real", "mnist-5k"])
        results["sets"].append(entry)
    if args.reconstructions:
        recon = write_reconstructions(work, model, held)
        results["recon_held"], _ = run(["eval", "fid", str(ref), str(recon), *flags])
        results["classify_recon_held"], _ = run(["eval", "classify", str(recon), "--fid-real", "mnist-5k"])
    results["real_held"], _ = run(["eval", "fid", str(ref), str(held), *flags])
    results["classify_real_held"], _ = run(["eval", "classify", str(held), "--fid-real", "mnist-5k"])
    (work / f"results-{model.name}.json").write_text(json.dumps(results, indent=1))

    print(f"| set (N = {10 * args.per_class}) vs 4,000 real | FID | sFID | precision | recall | KID | "
          "digit accuracy | classifier-FID vs 5,000 |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    rows = [(f"generated ({model.name}, seed {args.seed}, {e['setting']})", e["generated"], e["classify"])
            for e in results["sets"]]
    if "recon_held" in results:
        rows.append(("tokenizer reconstructions of the 1,000 held digits", results["recon_held"],
                     results["classify_recon_held"]))
    rows.append(("1,000 real digits not in the reference", results["real_held"], results["classify_real_held"]))
    for name, m, c in rows:
        kid = f"{float(m['KID']):.4f} ± {float(m['KID std']):.4f}"
        print(f"| {name} | {float(m['FID']):.2f} | {float(m['sFID']):.2f} | {float(m['precision']):.3f} | "
              f"{float(m['recall']):.3f} | {kid} | {float(c['accuracy']):.4f} | "
              f"{float(c['classifier-FID vs mnist-5k']):.2f} |")
    for e in results["sets"]:
        print(f"{e['setting']}: sampling {e['sample_seconds']:.0f} s; features + metrics {e['fid_seconds']:.0f} s")


if __name__ == "__main__":
    main()
