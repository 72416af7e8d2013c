"""Quality cost of weight-only int8 (``pipe.quantize_weights("int8")``) against fp32 and bf16 weights.

    PYTHONPATH=src python bench/int8_quality.py --model /work/runs/llamagen-mnist --n 500
    PYTHONPATH=src python bench/int8_quality.py --n 500          # the bundled VAR MNIST model

The same N per-image seeds and classes (i % 10) in fp32, bf16 and int8 weights: the MNIST classifier's accuracy
and classifier-FID against mnist-5k, the fraction of tokens equal to the fp32 tokens (sampled, and greedy with
top-k 1; raster models diverge after their first differing token, so this counts positions up to the end), and
the fraction of images whose greedy tokens are all equal.
"""

from __future__ import annotations

import argparse
import json

import torch
from PIL import Image

from arvision.bundled import bundled_model_dir
from arvision.evaluation.classifier import classifier_report
from arvision.pipeline import ARPipeline


def to_pil(images01: torch.Tensor) -> list[Image.Image]:
    arr = (images01 * 255).round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()
    return [Image.fromarray(a) for a in arr]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default=None, help="model folder (default: the bundled VAR MNIST model)")
    ap.add_argument("--n", type=int, default=500)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    path = args.model or bundled_model_dir()
    labels = [i % 10 for i in range(args.n)]
    rows, ref = {}, {}
    for weights in ("fp32", "bf16", "int8"):
        pipe = ARPipeline.from_pretrained(path)
        precision = "fp32" if weights == "fp32" else "bf16"
        if weights == "bf16":
            pipe.to(dtype=torch.bfloat16)
        elif weights == "int8":
            pipe.quantize_weights("int8")

        def gens():
            return [torch.Generator().manual_seed(5000 + i) for i in range(args.n)]

        out = pipe(labels, generator=gens(), output_type="pt", batch_size=100, precision=precision, progress=True)
        greedy = pipe(labels, generator=gens(), output_type="tokens", batch_size=100, precision=precision,
                      top_k=1).tokens
        q = classifier_report(to_pil(out.images), labels, fid_real="mnist-5k")
        if weights == "fp32":
            ref = {"tokens": out.tokens, "greedy": greedy}
        rows[weights] = {
            "accuracy": q["accuracy"], "fid": q["fid"],
            "sampled_tokens_equal_fp32": float((out.tokens == ref["tokens"]).float().mean()),
            "greedy_tokens_equal_fp32": float((greedy == ref["greedy"]).float().mean()),
            "greedy_images_identical_to_fp32": float((greedy == ref["greedy"]).all(1).float().mean()),
        }
        print(weights, json.dumps(rows[weights]), flush=True)
    print(f"\n{path}, N={args.n}, seeds 5000+i, classes i % 10\n")
    print("| weights | accuracy | classifier-FID | sampled tokens = fp32 | greedy tokens = fp32 "
          "| greedy images = fp32 |")
    print("|---|---|---|---|---|---|")
    for w, r in rows.items():
        print(f"| {w} | {r['accuracy']:.3f} | {r['fid']:.2f} | {r['sampled_tokens_equal_fp32']:.3f} | "
              f"{r['greedy_tokens_equal_fp32']:.3f} | {r['greedy_images_identical_to_fp32']:.3f} |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"model": str(path), "n": args.n, "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
