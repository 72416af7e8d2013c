"""MaskGIT's sampling options on a trained digit model: accuracy under the shipped mnist-5k classifier and seconds
per image, per (iterations, order, guidance).

    python bench/maskgit_eval.py MODEL [--per-class 20] [--seed 0] [--out-json maskgit.json]

Every setting samples the same labels (``--per-class`` of each digit) from one seeded generator per image, in
batches of 100, fp32; the time is the pipeline's transformer time (decoding excluded).
"""

from __future__ import annotations

import argparse
import json
import platform

import torch

from arvision.evaluation.classifier import classifier_report
from arvision.pipeline import ARPipeline

SETTINGS = [  # (iterations, order, guidance)
    (8, "confidence", 1.0), (8, "halton", 1.0), (4, "confidence", 1.0), (16, "confidence", 1.0),
    (8, "confidence", 2.0), (8, "halton", 2.0), (64, "halton", 1.0),
]


def cpu_name() -> str:
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.machine()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model")
    ap.add_argument("--per-class", type=int, default=20)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out-json", default=None)
    args = ap.parse_args()
    pipe = ARPipeline.from_pretrained(args.model)
    labels = [k for k in range(10) for _ in range(args.per_class)]
    rows = []
    for T, order, cfg in SETTINGS:
        if T > pipe.schedule.length:
            continue
        gens = [torch.Generator().manual_seed(args.seed * 100_000 + i) for i in range(len(labels))]
        out = pipe(labels, generator=gens, iterations=T, order=order, guidance_scale=cfg, batch_size=100,
                   output_type="pt")
        report = classifier_report(out.images, labels)
        row = {"iterations": T, "order": order, "cfg": cfg, "accuracy": round(report["accuracy"], 4),
               "ms_per_image": round(1000 * out.stats["transformer_seconds"] / len(labels), 2)}
        rows.append(row)
        print(row, flush=True)
    print("| iterations | order | cfg | accuracy | ms / image |\n|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['iterations']} | {r['order']} | {r['cfg']} | {r['accuracy']:.3f} | {r['ms_per_image']} |")
    if args.out_json:
        json.dump({"cpu": cpu_name(), "rows": rows}, open(args.out_json, "w"), indent=2)


if __name__ == "__main__":
    main()
