"""Peak memory and time of `arvision sample` for large requests: the bounded default batch against one batch of
every image (``--batch-size 1000000``, what the command did before the default was bounded).

    PYTHONPATH=src python bench/sample_memory.py --counts 1000 3000 --json sample_memory.json

Each run is a fresh ``python -m arvision sample`` child (the bundled model unless --model, ``--out-dir`` into a
temporary folder, fp32); its peak resident memory is the child's ``ru_maxrss`` from ``os.wait4``, its time the wall
time of the whole command (start-up and model load included).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

MODES = {"default": [], "one-batch": ["--batch-size", "1000000"]}


def run(count: int, mode: str, model: str | None, seed: int) -> dict:
    """One `arvision sample` child: peak RSS (MiB), seconds, files written, and its 'batches of' line.  ``mode``: a
    key of MODES, or "batch-N" (``--batch-size N``)."""
    flags = MODES[mode] if mode in MODES else ["--batch-size", mode.removeprefix("batch-")]
    with tempfile.TemporaryDirectory() as tmp:
        out_dir = Path(tmp) / "imgs"
        cmd = [sys.executable, "-m", "arvision", "sample", *([model] if model else []), "--classes",
               *[str(i % 10) for i in range(count)], "--seed", str(seed), "--out-dir", str(out_dir), *flags]
        t0 = time.perf_counter()
        with open(Path(tmp) / "out.txt", "w") as fo, open(Path(tmp) / "err.txt", "w") as fe:
            proc = subprocess.Popen(cmd, stdout=fo, stderr=fe)
            _, status, usage = os.wait4(proc.pid, 0)  # this child's own peak RSS, not the maximum over children
        proc.returncode = os.waitstatus_to_exitcode(status)
        seconds = time.perf_counter() - t0
        out, err = (Path(tmp) / "out.txt").read_text(), (Path(tmp) / "err.txt").read_text()
        files = len(list(out_dir.glob("*.png"))) if out_dir.is_dir() else 0
    batch_line = next((line for line in out.splitlines() if "batches of" in line), "")
    return {"count": count, "mode": mode, "returncode": proc.returncode, "peak_rss_mib": round(usage.ru_maxrss / 1024),
            "seconds": round(seconds, 1), "files": files, "batches": batch_line,
            "error": err.strip().splitlines()[-1] if proc.returncode else ""}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--counts", type=int, nargs="+", default=[1000, 3000], help="images per run (default 1000 3000)")
    ap.add_argument("--modes", nargs="+", choices=list(MODES), default=list(MODES),
                    help="default: the bounded default batch; one-batch: --batch-size 1000000 (default both)")
    ap.add_argument("--batch-sizes", type=int, nargs="*", default=[],
                    help="also these explicit --batch-size values (default: none)")
    ap.add_argument("--model", default=None, help="model folder (default: the bundled model)")
    ap.add_argument("--seed", type=int, default=0, help="sampling seed (default 0)")
    ap.add_argument("--json", default=None, help="also write the rows here (default: none)")
    args = ap.parse_args()
    rows = []
    print("| images | batch | exit | peak RSS (MiB) | seconds | PNGs written |")
    print("|---|---|---|---|---|---|")
    for count in args.counts:
        for mode in [*args.modes, *(f"batch-{b}" for b in args.batch_sizes)]:
            r = run(count, mode, args.model, args.seed)
            rows.append(r)
            print(f"| {count} | {mode} | {r['returncode']} | {r['peak_rss_mib']} | {r['seconds']} | {r['files']} |",
                  flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
