"""Sampling speed of two versions of arvision on the same models, interleaved: a change's speed cost.

    .venv/bin/python bench/before_after_speed.py --before-src /work/wt-base/src --work /tmp/speed \\
        --rounds 3 --out-json before_after.json

``--work`` is the folder of ``bench/official_speed.py`` (its random official-layout VAR-d16 ``var/{vae,var}.pth``
and LlamaGen GPT-B ``llamagen/{vq,gpt}.pth``; run that script once to build them).  Each version converts them
with its own ``arvision convert`` (the newer one also reads the older layout's key names), then, round after
round, every job runs as ``arvision bench MODEL --json`` in a fresh process: VAR-d16 (class 207, cfg 1.5,
top-k 900, top-p 0.96) and GPT-B (cfg 4.0, no top-k/top-p), batch 1, fp32 and auto precision, the before and after
versions alternately so that a change of the machine's load hits both alike.  Reported per job: the median over
rounds of each run's median seconds per image, and after/before ratios (< 1 = the new version is faster);
the tokens' sha256 of both versions must agree (fp32: they must be identical).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SETTINGS = {"var": ["--cfg", "1.5", "--top-k", "900", "--top-p", "0.96"],
            "llamagen": ["--cfg", "4.0", "--top-k", "0", "--top-p", "0"]}
FILES = {"var": ("--vae", "vae.pth", "--var", "var.pth"), "llamagen": ("--vq", "vq.pth", "--gpt", "gpt.pth")}


def cli(src: Path, args: list[str]) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(src))
    return subprocess.run([sys.executable, "-m", "arvision", *args], env=env, capture_output=True, text=True)


def convert(src: Path, family: str, folder: Path, out: Path) -> Path:
    if not (out / "config.json").is_file():
        a, fa, b, fb = FILES[family]
        run = cli(src, ["convert", family, a, str(folder / fa), b, str(folder / fb), "--out", str(out)])
        if run.returncode:
            raise SystemExit(f"convert {family} with {src} failed:\n{run.stderr[-2000:]}")
    return out


def cpu_name() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return "unknown"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--before-src", type=Path, required=True, help="src/ folder of the older version")
    ap.add_argument("--after-src", type=Path, default=REPO / "src", help="default: this checkout's src/")
    ap.add_argument("--work", type=Path, default=Path("/tmp/arvision-official-speed"))
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--repeat", type=int, default=2, help="timed runs per bench call (its median is taken)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--families", nargs="+", default=["var", "llamagen"])
    ap.add_argument("--precisions", nargs="+", default=["fp32", "auto"])
    ap.add_argument("--out-json", type=Path, default=None)
    args = ap.parse_args()
    versions = {"before": args.before_src.resolve(), "after": args.after_src.resolve()}
    models = {(v, f): convert(src, f, args.work / f, args.work / f / f"model_{v}")
              for v, src in versions.items() for f in args.families}
    times: dict = {}
    shas: dict = {}
    for r in range(args.rounds):
        for f in args.families:
            for p in args.precisions:
                for v in (("before", "after") if r % 2 == 0 else ("after", "before")):
                    cmd = ["bench", str(models[v, f]), "--classes", "207", "--batch-size", "1", "--seed", "0",
                           *SETTINGS[f], "--temperature", "1", "--precision", p, "--warmup", "1",
                           "--repeat", str(args.repeat), "--threads", str(args.threads), "--json"]
                    t0 = time.perf_counter()
                    run = cli(versions[v], cmd)
                    if run.returncode:
                        raise SystemExit(f"bench {v} {f} {p} failed:\n{run.stderr[-2000:]}")
                    res = json.loads(run.stdout.strip().splitlines()[-1])
                    times.setdefault((f, p, v), []).append(res["seconds_per_image"])
                    shas.setdefault((f, p, v), set()).add(res.get("tokens_sha256"))
                    print(f"round {r} {f:8s} {p:4s} {v:6s} {res['seconds_per_image']:.3f} s/image "
                          f"(load {os.getloadavg()[0]:.2f}, {time.perf_counter() - t0:.0f} s)", flush=True)
    rows = []
    print(f"\n{cpu_name()}, {args.threads} threads, batch 1, median over {args.rounds} rounds")
    print("| model | precision | before s/image | after s/image | after / before | same tokens |")
    print("|---|---|---|---|---|---|")
    for f in args.families:
        for p in args.precisions:
            b, a = (statistics.median(times[f, p, v]) for v in ("before", "after"))
            same = shas[f, p, "before"] == shas[f, p, "after"] and len(shas[f, p, "after"]) == 1
            rows.append(dict(family=f, precision=p, before=times[f, p, "before"], after=times[f, p, "after"],
                             before_median=b, after_median=a, ratio=a / b, same_tokens=same))
            print(f"| {f} | {p} | {b:.3f} | {a:.3f} | {a / b:.3f} | {same} |")
    if args.out_json:
        args.out_json.write_text(json.dumps(dict(cpu=cpu_name(), threads=args.threads, rounds=args.rounds,
                                                 repeat=args.repeat, rows=rows), indent=1))


if __name__ == "__main__":
    main()
