"""Zero-shot editing of real mnist-5k digits, judged by the bundled digit classifier.

Data: the 500 mnist-5k digits the shipped classifier never trained on (``mnist5k_split``: every 10th item), taken
round-robin over the classes (``--n`` of them, default 250 = 25 per class).  The bundled VAR model was trained on
all 5,000 digits (``bench/train_bundled_model.sh``: ``--data mnist-5k``, no split), so no digit is new to the
generator: the edits start from images it has seen, but the target class is always a different one.

1. Class editing: edit digit i toward target class ``(y_i + 1 + i mod 9) mod 10`` (the nine other classes,
   cycled) for several masks.  Success = the classifier predicts the target; "still source" = it predicts the
   source label.  Preservation = PSNR outside the mask of the edited image against the source image (both at
   32 px, uint8), beside the tokenizer's own reconstruction on the same pixels (the ceiling: kept tokens decode to
   at best the reconstruction).
2. In-painting label consistency: a centre box in-painted with the source class and with the null class (and the
   out-painting counterpart: the centre box kept, the rest regenerated); the classifier should still read the
   source label.  Trivial baselines: copy the source (the real image, and its
   tokenizer reconstruction) and an unconditional sample (the null class, everything regenerated but the 1x1
   scale).
3. Optional (``--raster-model``): the same in-painting with a LlamaGen-style raster model (forced tokens in raster
   order; the bottom/right of the hole can show a seam).

Every edit draws from its own generator (seed ``--seed * 100000 + i``), so an edit does not depend on its batch.

    python bench/class_edit_eval.py --n 250 --figure /tmp/class_edit.png --json /tmp/class_edit.json \
        [--raster-model /work/runs/llamagen-mnist]
"""

from __future__ import annotations

import argparse
import json
import math
import time

import numpy as np
import torch

from arvision.bundled import bundled_model_dir
from arvision.evaluation.classifier import classify_images, mnist5k_split
from arvision.images import make_grid, to_pil
from arvision.pipeline import ARPipeline
from arvision.sampling.editing import box_mask, edit
from arvision.training.datasets import Mnist5k

CLASS_MASKS = {  # name -> regenerate mask (32 x 32 bool); boxes are fractions y0, x0, y1, x1
    "all (but 1x1)": lambda S: torch.ones(S, S, dtype=torch.bool),
    "centre box 0.125-0.875": lambda S: box_mask(S, S, (0.125, 0.125, 0.875, 0.875)),
    "centre box 0.25-0.75": lambda S: box_mask(S, S, (0.25, 0.25, 0.75, 0.75)),
    "top half": lambda S: box_mask(S, S, (0.0, 0.0, 0.5, 1.0)),
}
INPAINT_BOX = (0.25, 0.25, 0.75, 0.75)


def held_out_digits(n: int, image_size: int) -> tuple[torch.Tensor, torch.Tensor, np.ndarray]:
    """n held-out digits, round-robin over classes -> (images (n, 3, S, S) in [-1, 1], labels (n,), indices)."""
    ds = Mnist5k(image_size=image_size)
    _, held = mnist5k_split(len(ds))
    by_class = [held[ds.labels[held].numpy() == c] for c in range(10)]
    per = math.ceil(n / 10)
    if per > min(len(b) for b in by_class):
        raise SystemExit(f"--n {n} needs {per} held-out digits per class; there are {len(by_class[0])}")
    order = np.array([by_class[c][i] for i in range(per) for c in range(10)][:n])
    images = torch.stack([ds[int(i)][0] for i in order])
    return images, ds.labels[order], order


def quantised(images01: torch.Tensor) -> torch.Tensor:
    """[0, 1] images -> the values a saved uint8 PNG holds, still in [0, 1]."""
    return images01.clamp(0, 1).mul(255).round().div(255)


def psnr_outside(a01: torch.Tensor, b01: torch.Tensor, regen: torch.Tensor) -> float | None:
    """Mean over images of the PSNR (dB, peak 1) on the pixels the mask keeps; None when it keeps none."""
    keep = (~regen)[:, None].expand_as(a01).float()
    if keep.sum() == 0:
        return None
    mse = ((a01 - b01) ** 2 * keep).flatten(1).sum(1) / keep.flatten(1).sum(1).clamp(min=1)
    return float((10 * torch.log10(1.0 / mse.clamp(min=1e-10))).mean())


def fmt(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.1f}"


def wilson(k: int, n: int) -> tuple[float, float]:
    """95% Wilson interval of a rate k/n."""
    z, p = 1.96, k / n
    d = 1 + z * z / n
    c, h = (p + z * z / (2 * n)) / d, z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / d
    return c - h, c + h


def run_edit(pipe, x, regen, labels, seed, **kw):
    gens = [torch.Generator().manual_seed(seed * 100000 + i) for i in range(len(x))]
    return edit(pipe, x, list(regen) if regen.ndim == 3 else regen, class_labels=labels, generator=gens,
                output_type="pt", **kw)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=250, help="edits per setting (default 250, 25 per class)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--cfg", type=float, default=None, help="guidance scale (default: the model's, 2.0)")
    ap.add_argument("--figure", default=None, help="write a PNG grid (source | mask | edit per setting) here")
    ap.add_argument("--json", default=None, help="write the numbers here")
    ap.add_argument("--raster-model", default=None, help="also in-paint with this raster (LlamaGen-style) model")
    args = ap.parse_args()
    torch.set_num_threads(1)
    t_start = time.perf_counter()

    pipe = ARPipeline.from_pretrained(bundled_model_dir())
    S = pipe.config.image_size
    x, y, order = held_out_digits(args.n, S)
    src01 = quantised(x.add(1).mul(0.5))
    recon01 = quantised(pipe.decode(pipe.encode(x)).add(1).mul(0.5))
    n = len(x)
    targets = torch.tensor([(int(c) + 1 + i % 9) % 10 for i, c in enumerate(y)])
    results: dict = {"n": n, "seed": args.seed, "cfg": args.cfg, "digits": "mnist-5k classifier held-out split",
                     "class_edit": {}, "inpaint": {}}
    figure_cols: list[tuple[str, torch.Tensor, torch.Tensor]] = []

    print(f"class editing of {n} held-out digits toward another class (bundled VAR, classifier = bundled)")
    print(f"{'mask':24s} {'tokens kept':>11s} {'success':>8s} {'95% CI':>13s} {'still src':>9s} "
          f"{'PSNR kept':>9s} {'recon PSNR':>10s} {'s':>5s}")
    for name, make in CLASS_MASKS.items():
        t0 = time.perf_counter()
        regen = make(S)
        out = run_edit(pipe, x, regen, targets.tolist(), args.seed, guidance_scale=args.cfg)
        img01 = quantised(out.images)
        pred = classify_images(img01 * 2 - 1)
        k = int((pred == targets).sum())
        lo, hi = wilson(k, n)
        pix = out.regen_pixels
        row = {"tokens_kept": float(out.keep.float().mean()), "success": k / n, "ci95": [lo, hi],
               "still_source": float((pred == y).float().mean()), "psnr_kept": psnr_outside(img01, src01, pix),
               "recon_psnr_kept": psnr_outside(recon01, src01, pix), "seconds": time.perf_counter() - t0}
        results["class_edit"][name] = row
        print(f"{name:24s} {row['tokens_kept']:11.1%} {row['success']:8.1%} {f'{lo:.2f}-{hi:.2f}':>13s} "
              f"{row['still_source']:9.1%} {fmt(row['psnr_kept']):>9s} {fmt(row['recon_psnr_kept']):>10s} "
              f"{row['seconds']:5.1f}", flush=True)
        figure_cols.append((name, pix, img01))

    print(f"\nin-painting a centre box {INPAINT_BOX} (y0,x0,y1,x1): does the classifier still read the source label?")
    box = box_mask(S, S, INPAINT_BOX)
    rows = {"copy source (real image)": src01, "copy source (tokenizer reconstruction)": recon01}
    settings = {"VAR in-paint, source class": (pipe, box, y.tolist()),
                "VAR in-paint, null class": (pipe, box, None),
                "VAR out-paint (keep the centre box), source class": (pipe, ~box, y.tolist()),
                "VAR out-paint (keep the centre box), null class": (pipe, ~box, None),
                "VAR unconditional sample (null class, all regenerated)": (pipe, torch.ones(S, S, dtype=torch.bool),
                                                                            None)}
    if args.raster_model:
        rpipe = ARPipeline.from_pretrained(args.raster_model)
        settings["raster in-paint, source class"] = (rpipe, box, y.tolist())
        settings["raster in-paint, null class"] = (rpipe, box, None)
        results["raster_model"] = args.raster_model
    psnrs = {k: None for k in rows}
    for name, (p, regen, labels) in settings.items():
        out = run_edit(p, x, regen, labels, args.seed, guidance_scale=args.cfg)
        rows[name] = quantised(out.images)
        psnrs[name] = psnr_outside(rows[name], src01, out.regen_pixels)
        if name == "VAR in-paint, null class":
            figure_cols.append(("inpaint", out.regen_pixels, rows[name]))
        if name == "VAR out-paint (keep the centre box), source class":
            figure_cols.append(("outpaint", out.regen_pixels, rows[name]))
    print(f"{'setting':56s} {'label kept':>10s} {'95% CI':>13s} {'PSNR kept':>9s}")
    for name, img01 in rows.items():
        k = int((classify_images(img01 * 2 - 1) == y).sum())
        lo, hi = wilson(k, n)
        results["inpaint"][name] = {"label_consistency": k / n, "ci95": [lo, hi], "psnr_kept": psnrs[name]}
        print(f"{name:56s} {k / n:10.1%} {f'{lo:.2f}-{hi:.2f}':>13s} {fmt(psnrs[name]):>9s}")

    if args.figure:
        cells, caps = [], []
        picks = list(range(min(n, 8)))  # one digit of each of the classes 0..7
        for i in picks:
            cells += to_pil(src01[i:i + 1])
            caps.append(f"src {int(y[i])}")
            for name, pix, img01 in figure_cols:
                m = pix[i:i + 1, None].float().expand(-1, 3, -1, -1).clone()
                m[..., [0, -1], :] = m[..., :, [0, -1]] = 0.5  # a grey frame: an all-white mask stays visible
                cells += to_pil(m)
                caps.append("mask")
                cells += to_pil(img01[i:i + 1])
                caps.append(name if name in ("inpaint", "outpaint") else f"-> {int(targets[i])}")
        make_grid(cells, caps, ncol=1 + 2 * len(figure_cols), min_cell=48).save(args.figure)
        print(f"\nwrote {args.figure}")
    results["seconds"] = time.perf_counter() - t_start
    print(f"total {results['seconds']:.0f} s")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
