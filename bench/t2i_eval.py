"""The text-to-image model's table for docs/t2i.md: `arvision eval geneval` on the full prompt set, plus the model's
size and the CPU, in one run.

    python bench/t2i_eval.py --model shapes --per-prompt 4 --seed 0 --json /work/runs/t2i/eval.json \
        [--picture docs/img/t2i_tasks.png]

Prints a Markdown table (per task: accuracy, held-out / seen split where the task has held-out prompts; overall =
mean of the tasks; prompts with a correct image; sampling seconds per image at batch 64 in fp32).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))
sys.path.insert(0, str(REPO / "bench"))

from t2i_verifier import cpu_name  # noqa: E402

from arvision.cli import main as cli_main  # noqa: E402
from arvision.pipeline import ARPipeline  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="shapes")
    ap.add_argument("--per-prompt", type=int, default=4)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--picture", default=None)
    ap.add_argument("--json", required=True)
    ap.add_argument("extra", nargs="*", help="more `eval geneval` options after --, e.g. -- --cfg 3")
    args = ap.parse_args()

    pipe = ARPipeline.from_pretrained(args.model)
    params = {"transformer": sum(p.numel() for p in pipe.transformer.parameters()),
              "tokenizer": sum(p.numel() for p in pipe.tokenizer.parameters())}
    argv = ["eval", "geneval", args.model, "--per-prompt", str(args.per_prompt), "--seed", str(args.seed), "--json",
            *(["--picture", args.picture] if args.picture else []), *args.extra]
    buf = io.StringIO()
    t0 = time.perf_counter()
    with contextlib.redirect_stdout(buf):
        code = cli_main(argv)
    if code:
        return code
    report = json.loads(buf.getvalue())
    s = report["summary"]
    print(f"model {args.model}: transformer {params['transformer'] / 1e6:.2f} M params, tokenizer "
          f"{params['tokenizer'] / 1e6:.2f} M; {s['images']} images ({s['prompts']} prompts x {args.per_prompt}), "
          f"seed {args.seed}; {cpu_name()}")
    print("| task | accuracy | held-out / seen |\n|---|---:|---:|")
    for t, row in s["tasks"].items():
        split = ""
        if "heldout_accuracy" in row:
            split = f"{row['heldout_accuracy']:.3f} / {row['seen_accuracy']:.3f}"
        print(f"| {t} | {row['accuracy']:.3f} ({row['correct']}/{row['images']}) | {split} |")
    print(f"| **overall** (mean of tasks) | **{s['overall']:.3f}** | |")
    print(f"prompts with a correct image: {s['prompt_accuracy']:.3f}; sampling {s['seconds_per_image'] * 1e3:.1f} ms "
          f"per image (batch 64, fp32, verifier included); wall {time.perf_counter() - t0:.0f} s")
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps({"argv": argv, "params": params, "cpu": cpu_name(), **report}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
