"""The README's watermark example, run as written: how many of its images the detector flags.

    .venv/bin/python bench/readme_watermark.py [--key K] [--align 0.1] [--work /tmp/readme-watermark]

Runs ``arvision sample --classes 0 1 2 3 4 5 6 7 8 9 --watermark-key KEY [--watermark-align A] --out-dir DIR`` on
the bundled model, once without alignment and once with it, then ``arvision watermark detect DIR/*.png --key KEY``,
and prints per run the number of images flagged "watermarked" and the range of z.
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
from pathlib import Path

CLASSES = [str(k) for k in range(10)]


def arvision(*args: str) -> str:
    run = subprocess.run([sys.executable, "-m", "arvision", *args], capture_output=True, text=True)
    if run.returncode:
        raise SystemExit(f"arvision {' '.join(args)} failed:\n{run.stderr[-2000:]}")
    return run.stdout


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--key", default="K")
    ap.add_argument("--align", default="0.1")
    ap.add_argument("--work", type=Path, default=Path("/tmp/readme-watermark"))
    args = ap.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    for align in (None, args.align):
        out = args.work / f"align-{align}"
        shutil.rmtree(out, ignore_errors=True)
        extra = ["--watermark-align", align] if align else []
        arvision("sample", "--classes", *CLASSES, "--watermark-key", args.key, *extra, "--out-dir", str(out))
        lines = arvision("watermark", "detect", *sorted(map(str, out.glob("*.png"))), "--key", args.key).splitlines()
        zs = [float(m.group(1)) for ln in lines if (m := re.search(r"z=(-?[\d.]+)", ln))]
        flagged = sum(ln.rstrip().endswith(" watermarked") for ln in lines)
        print(f"--watermark-key {args.key}" + (f" --watermark-align {align}" if align else "") +
              f": {flagged} of {len(zs)} images flagged, z from {min(zs):.2f} to {max(zs):.2f}")


if __name__ == "__main__":
    main()
