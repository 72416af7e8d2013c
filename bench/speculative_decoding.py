"""Speculative Jacobi decoding (SJD, MC-SJD, GSD) against plain decoding on a raster digit model.

For each decoding rule, N images (classes cycled 0..9) are sampled one at a time (batch 1, as the papers run
them) with per-image generators seeded from (seed, i), with the model's own sampling settings.  Reported:

* forwards per image and tokens per forward (hardware-independent: the step reduction);
* wall-clock seconds per image in the transformer (CPU, secondary: a forward over a 16-token window costs far
  more than a one-token forward on a CPU), at batch 1 and at batch 8;
* quality: accuracy under the shipped classifier and classifier-feature FID against the 5,000 real digits,
  and the mean NLL of the sampled tokens under the model's own guided distribution; beside them the noise
  floor, plain decoding with another seed;
* greedy exact match: with top-k 1, the share of images whose tokens equal plain decoding's (fp32).

    python bench/speculative_decoding.py --model runs/llamagen-mnist [--n 300] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from arvision.evaluation.classifier import classifier_report
from arvision.evaluation.sampler import image_seed
from arvision.pipeline import ARPipeline
from arvision.sampling.speculative import parse_decoding

RULES = ["plain", "sjd", "mcsjd", "gsd:1", "gsd:3", "gsd:14"]


def mean_nll(pipe: ARPipeline, tokens: torch.Tensor, labels: list[int]) -> float:
    """Mean per-token negative log-likelihood under the guided, filtered distribution the sampler draws from."""
    options = pipe.sampling_options()
    guidance, sampling = options.guidance, options.tokens
    cond = pipe.condition(labels)
    with torch.no_grad():
        logits = pipe.transformer(cond, tokens[:, :-1], pipe.schedule)
        if guidance.doubles_batch:
            uncond = pipe.transformer(cond.null(), tokens[:, :-1], pipe.schedule)
            logits = guidance.combine(logits, uncond, 0, pipe.schedule.length)
        logp = sampling.process(logits).log_softmax(-1).gather(-1, tokens[..., None])[..., 0]
    return float(-logp.mean())


def sample(pipe, rule: str, labels: list[int], seed: int, batch: int, greedy: bool = False) -> dict:
    tokens, images, forwards, seconds = [], [], [], 0.0
    for i in range(0, len(labels), batch):
        lab = labels[i:i + batch]
        gens = [torch.Generator().manual_seed(image_seed(seed, i + j)) for j in range(len(lab))]
        dec = parse_decoding(rule, pipe)
        out = pipe(lab, generator=gens, output_type="pt", decoding=dec, top_k=1 if greedy else None)
        tokens.append(out.tokens)
        images.append(out.images.mul(255).round().clamp(0, 255).to(torch.uint8))  # as saved PNGs
        forwards.append(out.stats["forwards"])
        seconds += out.stats["transformer_seconds"]
    return {"tokens": torch.cat(tokens), "images": torch.cat(images), "forwards": forwards, "seconds": seconds}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True)
    ap.add_argument("--n", type=int, default=300, help="images per rule for quality (batch 1)")
    ap.add_argument("--n-speed8", type=int, default=64, help="images per rule for the batch-8 timing")
    ap.add_argument("--n-greedy", type=int, default=100)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--rules", nargs="+", default=RULES)
    ap.add_argument("--json", default=None)
    ap.add_argument("--timing-only", action="store_true",
                    help="skip quality and greedy checks (rerun the wall-clock part on a quiet machine)")
    args = ap.parse_args()

    pipe = ARPipeline.from_pretrained(args.model)
    L = pipe.schedule.length
    labels = [i % pipe.config.num_classes for i in range(args.n)]
    results = {}
    runs = [(r, args.seed) for r in args.rules] + [("plain", args.seed + 1)]
    for rule, seed in runs:
        name = rule if seed == args.seed else f"plain (seed {seed}: noise floor)"
        if args.timing_only and seed != args.seed:
            continue
        r = sample(pipe, rule, labels, seed, batch=1)
        rep = {"accuracy": float("nan"), "fid": float("nan")} if args.timing_only else \
            classifier_report(r["images"], labels, fid_real="mnist-5k")
        r8 = sample(pipe, rule, labels[:args.n_speed8], seed, batch=8)
        results[name] = {
            "forwards_per_image": statistics.mean(r["forwards"]),
            "tokens_per_forward": L / statistics.mean(r["forwards"]),
            "seconds_per_image_b1": r["seconds"] / args.n,
            "seconds_per_image_b8": r8["seconds"] / args.n_speed8,
            "forwards_per_batch_b8": statistics.mean(r8["forwards"]),
            "accuracy": rep["accuracy"],
            "classifier_fid": rep["fid"],
            "nll": mean_nll(pipe, r["tokens"], labels),
        }
        print(name, json.dumps(results[name]), flush=True)
    greedy = {}
    if args.timing_only:
        args.n_greedy = 0
    glabels = [i % pipe.config.num_classes for i in range(args.n_greedy)]
    base = sample(pipe, "plain", glabels, args.seed, batch=1, greedy=True)["tokens"] if glabels else None
    for rule in ("sjd", "mcsjd"):
        if rule in args.rules and glabels:
            t = sample(pipe, rule, glabels, args.seed, batch=1, greedy=True)["tokens"]
            greedy[rule] = float((t == base).all(dim=1).float().mean())
    results["greedy_exact_match"] = greedy
    results["settings"] = {"model": args.model, "n": args.n, "seed": args.seed, "tokens": L,
                           "threads": torch.get_num_threads(), **pipe.config.sampling}

    print("\n| decoding | forwards / image | tokens / forward | s / image (b1) | s / image (b8) | accuracy | "
          "clf-FID | NLL |")
    print("|---|---|---|---|---|---|---|---|")
    for name, r in results.items():
        if name in ("greedy_exact_match", "settings"):
            continue
        print(f"| {name} | {r['forwards_per_image']:.1f} | {r['tokens_per_forward']:.2f} | "
              f"{r['seconds_per_image_b1']:.3f} | {r['seconds_per_image_b8']:.3f} | {100 * r['accuracy']:.1f}% | "
              f"{r['classifier_fid']:.2f} | {r['nll']:.3f} |")
    print(f"\ngreedy (top-k 1) exact match with plain decoding over {args.n_greedy} images: {greedy}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    t0 = time.perf_counter()
    main()
    print(f"total {time.perf_counter() - t0:.0f} s")
