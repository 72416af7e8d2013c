"""``arvision eval geneval``: sample the fixed prompt set of the shapes benchmark and judge every image exactly.

    arvision eval geneval shapes --per-prompt 4 --seed 0 [--json] [--out-dir imgs] [--picture tasks.png]

Image ``index = line * per_prompt + j`` is sampled with its own generator seeded ``seed + index``, so a score does
not depend on the batch size, and ``--out-dir`` holds the ``{index:05d}.png`` files other tools (and
``geneval.score_folder``) read.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from arvision.cli import types
from arvision.cli.sample import add_knob_args, add_weights_arg, apply_weights
from arvision.errors import ArvisionError


def add_parser(esub) -> None:
    e = esub.add_parser("geneval", help="the shapes text-to-image benchmark: per-task accuracy of a text model")
    e.add_argument("model", help="a text-to-image model folder (or the bundled name: shapes)")
    e.add_argument("--per-prompt", type=types.positive_int, default=4, help="images per prompt (default 4)")
    e.add_argument("--seed", type=types.seed, default=0, help="image i is seeded with SEED + i (default 0)")
    e.add_argument("--prompts-file", default=None,
                   help="prompts in GenEval's evaluation_metadata.jsonl layout (default: the fixed 553-prompt set)")
    e.add_argument("--max-prompts", type=types.positive_int, default=None,
                   help="only the first N prompts of each task (quick checks; default: all)")
    add_knob_args(e)
    e.add_argument("--batch-size", type=types.positive_int, default=64, help="images per batch (default 64)")
    e.add_argument("--precision", choices=["auto", "fp32", "bf16"], default="fp32",
                   help="fp32 = exact (default); auto = bf16 where the hardware is fast at it, else fp32 "
                        "through packed weights (--weights)")
    add_weights_arg(e)
    e.add_argument("--search", default=None, help="test-time search spec (bon:N, beam:W, tts-var, ...; "
                                                  "docs/search.md) with --reward")
    e.add_argument("--reward", choices=["matcher", "oracle"], default="matcher",
                   help="what a search ranks by: the bundled image-caption matcher (fair) or the exact verifier "
                        "(an oracle: an upper bound; default: %(default)s)")
    e.add_argument("--out-dir", default=None, help="also write every image as {index:05d}.png here")
    e.add_argument("--picture", default=None, help="write a PNG of samples per task with their verdicts")
    e.add_argument("--json", action="store_true", help="print the summary (and per-image results) as JSON")
    e.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    e.set_defaults(func=cmd_geneval)


def prompt_metas(args) -> list[dict]:
    from arvision.evaluation import geneval

    metas = geneval.read_jsonl(args.prompts_file) if args.prompts_file else geneval.prompt_set()
    return geneval.first_per_task(metas, args.max_prompts) if args.max_prompts else metas


def reward_of(kind: str):
    """The search verifier: the bundled matcher (fair) or the exact verifier (oracle)."""
    if kind == "oracle":
        from arvision.evaluation.geneval import OracleVerifier

        return OracleVerifier()
    from arvision.evaluation.matcher import load_matcher_verifier

    return load_matcher_verifier()


def cmd_geneval(args) -> None:
    import torch
    from PIL import Image

    from arvision.cli.loading import load_pipeline
    from arvision.evaluation import geneval
    from arvision.images import check_output_dir, check_output_file, save_image, to_uint8

    if args.picture:
        check_output_file(args.picture, image=True)
    if args.out_dir:
        check_output_dir(args.out_dir)
        Path(args.out_dir).mkdir(parents=True, exist_ok=True)
    if args.search:
        from arvision.sampling.search import parse_search

        parse_search(args.search)
    if args.per_prompt > 1000:  # 553 x N prompts are listed in memory
        raise ArvisionError(f"--per-prompt {args.per_prompt}: at most 1000 images per prompt")
    metas = prompt_metas(args)
    pipe = load_pipeline(args.model, args.device)
    apply_weights(pipe, args)
    if not pipe.takes_text:
        raise ArvisionError(f"{args.model} is a class-conditional model; geneval needs a text-to-image model "
                            "(e.g. the bundled `shapes`)")
    n = args.per_prompt
    prompts = [m["prompt"] for m in metas for _ in range(n)]
    gens = [torch.Generator().manual_seed(args.seed + i) for i in range(len(prompts))]
    verifier = reward_of(args.reward) if args.search else None
    batches = pipe.iter_batches(prompts=prompts, generator=gens, guidance_scale=args.cfg, top_k=args.top_k,
                                top_p=args.top_p, temperature=args.temperature, batch_size=args.batch_size,
                                precision=args.precision, output_type="pt", search=args.search, verifier=verifier)
    from arvision.progress import progress

    results, shown, t0, stats = [], [], time.perf_counter(), {}
    with progress(total=len(prompts), desc="geneval", unit="img", every_s=10.0) as bar:
        for out in batches:
            for arr in to_uint8(out.images):
                i = len(results)
                meta = metas[i // n]
                ok, reason = geneval.check(arr, meta)
                results.append({"line": i // n, "index": i, "tag": meta["tag"], "prompt": meta["prompt"],
                                "heldout": bool(meta.get("heldout", False)), "correct": ok, "reason": reason})
                if args.out_dir:
                    save_image(Image.fromarray(arr), Path(args.out_dir) / f"{i:05d}.png")
                if args.picture:
                    shown.append(arr)
            stats = out.stats
            bar.update(len(out.images))
    seconds = time.perf_counter() - t0
    summary = geneval.summarize(results)
    summary.update({"per_prompt": n, "seed": args.seed, "seconds_per_image": seconds / len(results),
                    "search": stats.get("search"), "reward": args.reward if args.search else None})
    if args.picture:
        save_image(geneval.task_picture(shown, [metas[i // n] for i in range(len(shown))],
                                        verdicts=[r["correct"] for r in results]), args.picture)
    if args.json:
        json.dump({"summary": summary, "results": results}, sys.stdout, indent=1)
        print()
        return
    print(format_summary(summary))


def format_summary(summary: dict) -> str:
    lines = [f"{'task':<14} {'accuracy':>8}  {'correct/images':>14}  held-out / seen"]
    for t, row in summary["tasks"].items():
        split = ""
        if "heldout_accuracy" in row:
            seen = row.get("seen_accuracy")
            split = f"{row['heldout_accuracy']:.3f} / {'-' if seen is None else f'{seen:.3f}'}"
        lines.append(f"{t:<14} {row['accuracy']:>8.3f}  {row['correct']:>6}/{row['images']:<7}  {split}")
    lines.append(f"{'overall':<14} {summary['overall']:>8.3f}  (mean of the tasks)")
    lines.append(f"prompts with a correct image: {summary['prompt_accuracy']:.3f} of {summary['prompts']}; "
                 f"{summary['seconds_per_image']:.3f} s per image")
    return "\n".join(lines)
