"""How often the shapes GenEval verifier says "correct" for images that are correct by construction.

For every prompt of ``arvision.evaluation.geneval.prompt_set()`` (553), K scenes that satisfy it
(``geneval_scenes.scene_for``, drawn from one generator seeded ``--seed``) are rendered and judged (``geneval.check``):
the pass rate per task is the verifier's own ceiling on clean renders (it should be 100%).  With ``--tokenizer DIR``
(a folder written by ``arvision train-tokenizer``) each render is also encoded and decoded by that tokenizer and
the reconstructions are judged: the ceiling a model generating through that tokenizer can reach, and which tasks its
reconstructions break (colour shifts, blurred small shapes).  Also reported: the PSNR of the reconstructions and
the share of images whose verdict is the same as on the clean render.

    PYTHONPATH=src python bench/t2i_verifier.py [--per-prompt 2] [--seed 0] [--tokenizer DIR] [--device cpu]
                                                [--batch-size 64] [--threads 2] [--json out.json]

Prints a Markdown table (one row per task, then the GenEval overall = mean of the task accuracies) and, with
``--json``, writes the summaries, the first failures, timings, the settings and the CPU (``lscpu``'s model name).
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

from arvision import captions, scenes
from arvision.evaluation import geneval
from arvision.evaluation.geneval_scenes import scene_for


def cpu_name() -> str:
    """``lscpu``'s "Model name", else what Python knows."""
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
        for line in out.splitlines():
            if line.strip().lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except (OSError, subprocess.SubprocessError):
        pass
    return platform.processor() or platform.machine()


def judge_all(images: np.ndarray, metas: list[dict], lines: list[int]) -> list[dict]:
    """images uint8 (n, 64, 64, 3), their metas and prompt lines -> per-image results for ``geneval.summarize``."""
    out = []
    for img, meta, line in zip(images, metas, lines):
        ok, why = geneval.check(img, meta)
        out.append({"line": line, "tag": meta["tag"], "prompt": meta["prompt"], "heldout": meta["heldout"],
                    "correct": ok, "reason": why})
    return out


def load_tokenizer(folder: str, device: str):
    """The tokenizer of a ``train-tokenizer`` folder, in eval mode on ``device``; it must be a 64 px one."""
    from arvision.errors import ArvisionError
    from arvision.training.tokenizer_trainer import load_tokenizer_folder

    try:
        tok, size, _ = load_tokenizer_folder(folder, device)
    except ArvisionError as e:
        sys.exit(f"error: {e}")
    if size != scenes.SIZE:
        sys.exit(f"error: the tokenizer in {folder} is for {size} px images, the shapes world is {scenes.SIZE} px")
    return tok


@torch.no_grad()
def reconstruct(tok, images: np.ndarray, device: str, batch_size: int) -> np.ndarray:
    """Encode and decode uint8 (n, 64, 64, 3) images with ``tok`` -> uint8 (n, 64, 64, 3)."""
    out = []
    for i in range(0, len(images), batch_size):
        x = torch.from_numpy(images[i:i + batch_size]).to(device).permute(0, 3, 1, 2).float().div(127.5).sub(1)
        rec = tok(x)[0]  # (reconstruction, codebook loss, usage): as the tokenizer trainer calls it
        rec = rec[-1] if isinstance(rec, list) else rec  # multi-scale without residuals: the finest scale
        rec = rec.float().clamp(-1, 1).add(1).mul(127.5).round().to(torch.uint8)
        out.append(rec.permute(0, 2, 3, 1).cpu().numpy())
    return np.concatenate(out)


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    """Mean over images of 10 log10(255^2 / MSE) (uint8 (n, H, W, 3) each); an exact image counts as 100 dB."""
    mse = ((a.astype(np.float64) - b.astype(np.float64)) ** 2).reshape(len(a), -1).mean(1)
    return float(np.mean(np.where(mse > 0, 10 * np.log10(255.0 ** 2 / np.maximum(mse, 1e-12)), 100.0)))


def table(columns: dict[str, dict]) -> str:
    """Markdown: one row per task, columns = accuracy (correct / images) per summary."""
    names = list(columns)
    head = "| task | " + " | ".join(names) + " |"
    lines = [head, "|---|" + "---:|" * len(names)]
    tasks = list(next(iter(columns.values()))["tasks"])
    for t in tasks:
        cells = [f"{s['tasks'][t]['accuracy']:.2%} ({s['tasks'][t]['correct']}/{s['tasks'][t]['images']})"
                 for s in columns.values()]
        lines.append(f"| {t} | " + " | ".join(cells) + " |")
    lines.append("| **overall** (mean of tasks) | " + " | ".join(f"**{s['overall']:.2%}**" for s in columns.values())
                 + " |")
    lines.append("| prompts with a correct image | " + " | ".join(f"{s['prompt_accuracy']:.2%}"
                                                              for s in columns.values()) + " |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--per-prompt", type=int, default=2, help="scenes per prompt (default 2)")
    ap.add_argument("--seed", type=int, default=0, help="seed of the scene generator (default 0)")
    ap.add_argument("--tokenizer", default=None, help="tokenizer folder (arvision train-tokenizer) to round-trip")
    ap.add_argument("--device", default="cpu", help="device for the tokenizer (default cpu)")
    ap.add_argument("--batch-size", type=int, default=64, help="tokenizer batch size (default 64)")
    ap.add_argument("--threads", type=int, default=2, help="torch CPU threads (default 2)")
    ap.add_argument("--json", default=None, help="write the results here")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    tok = load_tokenizer(args.tokenizer, args.device) if args.tokenizer else None  # a bad folder fails first

    t0 = time.perf_counter()
    prompts = geneval.prompt_set()
    rng = np.random.default_rng(args.seed)
    metas, lines, images = [], [], []
    for line, meta in enumerate(prompts):
        for _ in range(args.per_prompt):
            images.append(scenes.render(scene_for(meta, rng)))
            metas.append(meta)
            lines.append(line)
    images = np.stack(images)
    t_render = time.perf_counter() - t0
    t0 = time.perf_counter()
    clean = judge_all(images, metas, lines)
    t_clean = time.perf_counter() - t0
    columns = {"clean renders": geneval.summarize(clean)}
    report = {"cpu": cpu_name(), "per_prompt": args.per_prompt, "seed": args.seed, "prompts": len(prompts),
              "images": len(images), "clean": columns["clean renders"],
              "clean_failures": [r for r in clean if not r["correct"]][:20],
              "thresholds": {"alpha_cut": geneval.ALPHA_CUT, "min_area": geneval.MIN_AREA,
                             "min_iou": geneval.MIN_IOU, "position_threshold": captions.POSITION_THRESHOLD},
              "seconds": {"scenes_and_render": t_render, "verify_clean": t_clean,
                          "verify_per_image_ms": 1000 * t_clean / len(images)}}
    if args.tokenizer:
        t0 = time.perf_counter()
        recon = reconstruct(tok, images, args.device, args.batch_size)
        report["seconds"]["tokenizer"] = time.perf_counter() - t0
        rec = judge_all(recon, metas, lines)
        name = f"{Path(args.tokenizer).name} reconstructions"
        columns[name] = geneval.summarize(rec)
        report["tokenizer"] = {
            "folder": str(args.tokenizer), "summary": columns[name], "psnr_db": psnr(images, recon),
            "same_verdict": float(np.mean([a["correct"] == b["correct"] for a, b in zip(clean, rec)])),
            "failures": [r for r in rec if not r["correct"]][:20]}
    print(f"Shapes GenEval verifier: {len(prompts)} prompts x {args.per_prompt} scenes (seed {args.seed}); "
          f"{report['cpu']}\n")
    print(table(columns))
    if args.tokenizer:
        t = report["tokenizer"]
        print(f"\nreconstruction PSNR {t['psnr_db']:.2f} dB; same verdict as the clean render: "
              f"{t['same_verdict']:.2%}")
    print(f"\nscenes + renders {t_render:.1f} s, verifier {report['seconds']['verify_per_image_ms']:.1f} ms/image",
          file=sys.stderr)
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
