"""Tokenizer benchmark table for docs/evaluation.md: reconstruction quality and codebook usage of a model's tokenizer.

Runs :func:`arvision.evaluation.tokenizer_bench.benchmark_tokenizer` on each data set (the same numbers as
``arvision eval tokenizer MODEL --data ... --n N --seed S``) and prints a Markdown table, with the model and the
settings, to stdout; timings go to stderr.

    python bench/tokenizer_table.py [--model DIR] [--data photos,text,mnist-5k] [--n 64] [--seed 0]
                                    [--out-png pairs.png] [--json results.json] [--threads 1]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch


def main() -> None:
    from arvision.bundled import bundled_model_dir
    from arvision.evaluation import tokenizer_bench as tb
    from arvision.pipeline import ARPipeline

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=None, help="model folder (default: the bundled model)")
    ap.add_argument("--data", default=",".join(tb.DATASETS))
    ap.add_argument("--n", type=int, default=64)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out-png", default=None)
    ap.add_argument("--json", default=None)
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    args = ap.parse_args()

    torch.set_num_threads(args.threads)
    folder = Path(args.model) if args.model else bundled_model_dir()
    pipe = ARPipeline.from_pretrained(folder)
    tok = pipe.config.tokenizer
    results = []
    for name in args.data.split(","):
        t0 = time.perf_counter()
        results.append(tb.benchmark_tokenizer(pipe, name, n=args.n, seed=args.seed))
        sec = results[-1]["seconds"]
        print(f"{name}: {time.perf_counter() - t0:.1f} s (tokenizer {sec['tokenizer']:.1f} s, Inception + rFID "
              f"{sec['inception']:.1f} s)", file=sys.stderr)
    label = "bundled model" if args.model is None else folder.name
    print(f"Tokenizer of the {label} ({pipe.config.family}, {tok.kind} VQ, {tok.vocab_size} codes, "
          f"{pipe.config.image_size} px, {pipe.schedule.num_steps if pipe.schedule.step_maps else 1} "
          f"scale(s)); n={args.n} images per data set, seed {args.seed}:\n")
    print(tb.format_table(results))
    if args.out_png:
        tb.write_side_by_side(results, args.out_png)
    if args.json:
        Path(args.json).write_text(json.dumps({"model": str(folder), "results": tb.to_jsonable(results)}, indent=2))


if __name__ == "__main__":
    main()
