"""LBW watermark on the bundled VAR MNIST model: detection, false positives, quality cost, robustness.

    PYTHONPATH=src python bench/watermark_eval.py --n 200 --json watermark_eval.json

For each setting of a sweep over the bias (delta 1, 2, 4, hard): N watermarked images (per-image generators, seeds
1000+i, classes i % 10) against the same N seeds/classes unwatermarked, plus real mnist-5k digits (resized to 32 px
as the classifier's reference set) as further negatives.  Images are quantised to uint8 (as saved PNGs) before
re-tokenising.  Reports z distributions (distinct-code scoring, the detector's default, and every-token scoring),
TPR at z > 4, false positives at z > 4 and z > 2, the classifier's accuracy and classifier-FID vs mnist-5k,
detection under JPEG / resizing / cropping, and the reverse cycle-consistency (tokens unchanged after
decode -> re-encode, per scale).  ``--model`` runs it on another model folder (e.g. a raster LlamaGen-style one).
"""

from __future__ import annotations

import argparse
import io
import json
import time

import numpy as np
import torch
from PIL import Image
from tqdm.auto import tqdm

from arvision.bundled import bundled_model_dir
from arvision.evaluation.classifier import classifier_report
from arvision.pipeline import ARPipeline
from arvision.sampling.watermark import WatermarkSpec, align_images, detect_images, detect_tokens
from arvision.training.datasets import Mnist5k

KEY = "arvision-bench-key"


def quantise(x01: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) in [0, 1] -> uint8-quantised, in [-1, 1] (what a saved PNG holds)."""
    return (x01 * 255).round().clamp(0, 255) / 127.5 - 1


def to_pil(x: torch.Tensor) -> list[Image.Image]:
    arr = ((x + 1) * 127.5).round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()
    return [Image.fromarray(a) for a in arr]


def from_pil(ims: list[Image.Image], size: int) -> torch.Tensor:
    arr = np.stack([np.asarray(im.convert("RGB").resize((size, size), Image.BICUBIC) if im.size != (size, size)
                               else im.convert("RGB"), dtype=np.float32) for im in ims])
    return torch.from_numpy(arr).permute(0, 3, 1, 2) / 127.5 - 1


def attacks(x: torch.Tensor, size: int) -> dict[str, torch.Tensor]:
    """Attacked copies of images (B, 3, S, S) in [-1, 1], all back at S px."""
    out = {}
    for q in (90, 75, 50):
        ims = []
        for im in to_pil(x):
            buf = io.BytesIO()
            im.save(buf, format="JPEG", quality=q)
            buf.seek(0)
            ims.append(Image.open(buf).convert("RGB"))
        out[f"jpeg{q}"] = from_pil(ims, size)
    out["resize16"] = from_pil([im.resize((16, 16), Image.BICUBIC) for im in to_pil(x)], size)
    out["resize64"] = from_pil([im.resize((64, 64), Image.BICUBIC) for im in to_pil(x)], size)
    for c in (2, 4):
        out[f"crop{c}"] = from_pil([im.crop((c, c, size - c, size - c)) for im in to_pil(x)], size)
    return out


def zsummary(results) -> dict:
    z = np.array([r.z for r in results])
    return {"mean": float(z.mean()), "min": float(z.min()), "max": float(z.max()),
            "q05": float(np.quantile(z, 0.05)), "q50": float(np.quantile(z, 0.5)), "q95": float(np.quantile(z, 0.95)),
            "gt4": float((z > 4).mean()), "gt2": float((z > 2).mean())}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=200, help="images per setting (watermarked and clean each)")
    ap.add_argument("--real", type=int, default=1000, help="real mnist-5k digits as negatives")
    ap.add_argument("--pool", type=int, default=4)
    ap.add_argument("--gamma", type=float, default=0.5)
    ap.add_argument("--start-step", type=int, default=0)
    ap.add_argument("--model", default=None, help="model folder (default: the bundled VAR MNIST model)")
    ap.add_argument("--align", type=float, nargs="*", default=[],
                    help="also delta 4 + pixel-domain alignment with these fidelity weights (e.g. 0.1 0.3)")
    ap.add_argument("--align-steps", type=int, default=100)
    ap.add_argument("--skip-sweep", action="store_true", help="only the alignment settings (and the clean rows)")
    ap.add_argument("--json", default=None)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    t_start = time.perf_counter()
    pipe = ARPipeline.from_pretrained(args.model or bundled_model_dir())
    S, V = pipe.config.image_size, pipe.config.transformer.vocab_size
    sizes = pipe.schedule.step_sizes
    labels = [i % 10 for i in range(args.n)]

    def sample(processors=()):
        gens = [torch.Generator().manual_seed(1000 + i) for i in range(args.n)]
        out = pipe(labels, generator=gens, output_type="pt", batch_size=100, processors=processors)
        return out.tokens, quantise(out.images)

    def detect(x, spec, unique=True):
        return detect_images(pipe, x, spec, unique=unique)

    report: dict = {"model": args.model or "bundled VAR MNIST", "n": args.n, "pool": args.pool, "gamma": args.gamma,
                    "start_step": args.start_step,
                    "settings": {}}
    clean_tokens, clean = sample()
    base_spec = WatermarkSpec(KEY, gamma=args.gamma, pool=args.pool, start_step=args.start_step)
    ds = Mnist5k(image_size=S)
    idx = np.linspace(0, len(ds) - 1, args.real).round().astype(int)
    real = quantise((torch.stack([ds[int(i)][0] for i in idx]) + 1) / 2)
    q_clean = classifier_report(to_pil(clean), labels, fid_real="mnist-5k")
    report["clean"] = {
        "z": zsummary(detect(clean, base_spec)), "z_all_tokens": zsummary(detect(clean, base_spec, False)),
        "accuracy": q_clean["accuracy"], "fid": q_clean["fid"],
    }
    report["real"] = {"n": len(real), "z": zsummary(detect(real, base_spec)),
                      "z_all_tokens": zsummary(detect(real, base_spec, False))}
    report["clean_attacked"] = {name: zsummary(detect(xa, base_spec)) for name, xa in attacks(clean, S).items()}
    # reverse cycle-consistency of plain samples: decode (PNG-quantised) -> re-encode, per scale
    same = (pipe.encode(clean) == clean_tokens).float()
    report["rcc_per_step"] = [float(t.mean()) for t in same.split(sizes, dim=1)]
    report["rcc_all"] = float(same.mean())

    sweep = [("delta1", dict(delta=1.0)), ("delta2", dict(delta=2.0)), ("delta4", dict(delta=4.0)),
             ("hard", dict(hard=True)), ("hard-gamma0.25", dict(hard=True, gamma=0.25))]
    if pipe.schedule.step_maps:  # leave the coarse layout (1x1, 2x2) free, score the rest
        sweep.append(("delta4-start2", dict(delta=4.0, start_step=2)))
    if args.skip_sweep:
        sweep = []
    sweep += [(f"delta4-align{lam:g}", dict(delta=4.0, align=lam, align_steps=args.align_steps)) for lam in args.align]
    for name, kw in tqdm(sweep, desc="sweep"):
        spec = WatermarkSpec(KEY, **{**dict(gamma=args.gamma, pool=args.pool, start_step=args.start_step), **kw})
        tokens, x = sample([spec.processor(pipe)])
        if spec.align is not None:  # the image each seed/class gives, re-tokenised toward its own list
            lists = [spec.list_for(1000 + i, k) for i, k in enumerate(labels)]
            x = quantise((align_images(pipe, x, spec, lists, progress=True) + 1) / 2)
        q = classifier_report(to_pil(x), labels, fid_real="mnist-5k")
        res = detect(x, spec, False)
        same = (pipe.encode(x) == tokens).float()
        entry = {
            # the sampled tokens themselves (no decode): what the embedding put in
            "z_tokens": zsummary(detect_tokens(tokens, spec, V, sizes)),
            "z_tokens_all": zsummary(detect_tokens(tokens, spec, V, sizes, unique=False)),
            "z": zsummary(detect(x, spec)), "z_all_tokens": zsummary(res),
            "z_per_step_mean": np.mean([r.z_per_step for r in res], axis=0).tolist(),
            "rcc_per_step": [float(t.mean()) for t in same.split(sizes, dim=1)],
            "tokens_changed_vs_clean": float((tokens != clean_tokens).float().mean()),
            "accuracy": q["accuracy"], "fid": q["fid"],
            "attacks": {a: zsummary(detect(xa, spec)) for a, xa in attacks(x, S).items()},
        }
        report["settings"][name] = entry
    report["seconds"] = time.perf_counter() - t_start
    print_tables(report)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=1)
        print(f"wrote {args.json}")


def print_tables(r: dict) -> None:
    c, re = r["clean"], r["real"]
    print(f"\n{r['model']}, N={r['n']} per setting, gamma={r['gamma']}, pool K={r['pool']}, "
          f"start step {r['start_step']}; {r['seconds']:.0f} s\n")
    print("| images | z>4 | z>2 | z mean | z min | z q50 | z max | all tokens: z>4 | z>2 | z mean "
          "| sampled tokens z>4 / mean (no decode) | accuracy | classifier-FID |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")

    def row(name, e, tok="-", acc="-", fid="-"):
        z, u = e["z"], e["z_all_tokens"]
        print(f"| {name} | {z['gt4']:.3f} | {z['gt2']:.3f} | {z['mean']:.2f} | {z['min']:.2f} | {z['q50']:.2f} | "
              f"{z['max']:.2f} | {u['gt4']:.3f} | {u['gt2']:.3f} | {u['mean']:.2f} | {tok} | {acc} | {fid} |")

    row("clean samples", c, acc=f"{c['accuracy']:.3f}", fid=f"{c['fid']:.2f}")
    row(f"real mnist-5k ({re['n']})", re)
    for name, e in r["settings"].items():
        tok = f"{e['z_tokens']['gt4']:.3f} / {e['z_tokens']['mean']:.2f}"
        row(f"watermarked {name}", e, tok, f"{e['accuracy']:.3f}", f"{e['fid']:.2f}")
    print("\nrobustness (TPR at z>4 / mean z; clean row: FPR at z>4 / mean z)\n")
    names = list(r["clean_attacked"])
    print("| images | " + " | ".join(names) + " |")
    print("|---|" + "---|" * len(names))
    print("| clean | " + " | ".join(f"{r['clean_attacked'][a]['gt4']:.3f} / {r['clean_attacked'][a]['mean']:.2f}"
                                   for a in names) + " |")
    for name, e in r["settings"].items():
        print(f"| {name} | " + " | ".join(f"{e['attacks'][a]['gt4']:.3f} / {e['attacks'][a]['mean']:.2f}"
                                        for a in names) + " |")
    if len(r["rcc_per_step"]) > 16:  # raster models: one step per token, no per-scale table
        rcc = ", ".join(f"{n} {np.mean(e['rcc_per_step']):.3f}" for n, e in r["settings"].items())
        print(f"\nreverse cycle-consistency (tokens unchanged after decode -> PNG -> re-encode): "
              f"clean {r['rcc_all']:.3f}, {rcc}")
        return
    print("\nreverse cycle-consistency (fraction of tokens unchanged after decode -> PNG -> re-encode), per scale\n")
    print("| images | " + " | ".join(f"step {s}" for s in range(len(r["rcc_per_step"]))) + " | mean z per step |")
    print("|---|" + "---|" * (len(r["rcc_per_step"]) + 1))
    print("| clean | " + " | ".join(f"{v:.3f}" for v in r["rcc_per_step"]) + " | - |")
    for name, e in r["settings"].items():
        print(f"| {name} | " + " | ".join(f"{v:.3f}" for v in e["rcc_per_step"]) + " | "
              + ", ".join(f"{v:.2f}" for v in e["z_per_step_mean"]) + " |")


if __name__ == "__main__":
    main()
