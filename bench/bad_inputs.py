"""Every bad-input case of issue 19 (items 3, 4, 5 and 7), run as a subprocess of the CLI, as a table.

    python bench/bad_inputs.py                 # all cases; exit status 1 if any fails
    python bench/bad_inputs.py -k resume -v    # the cases whose name holds "resume", with their stderr

A case passes when the command exits with the expected status (2 for a mistake), its stderr is exactly one
non-empty line (``error: ...``, or ``warning: ...`` where the command succeeds with a warning) without
``Traceback``, its message names what is wrong (a word given per case), and nothing new is written where its
output would go.  Everything runs on tiny models and folders in a temporary workspace (CPU, no network), a few
minutes in all; the training cases train a 2-step model once to have a finished run to misuse.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path


@dataclass
class Case:
    name: str
    item: int  # the item
    argv: str  # the command line after `arvision`; {w} = the workspace
    watch: str | None = None  # path (with {w}) that must be unchanged afterwards (None: nothing is watched)
    needle: str = ""  # the one line must hold this (case-insensitive); alternatives separated by "|"
    code: int = 2
    kind: str = "error"  # "error": one `error:` line; "warning": exit 0 and one `warning:` line; "ok": exit 0
    setup: Callable[[Path], None] | None = None  # prepares the workspace right before the run
    skip: Callable[[], str | None] | None = None  # a reason to skip on this machine, or None


# -- the workspace ---------------------------------------------------------------------------------------------

def _cli(w: Path, *argv, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, "-m", "arvision", *map(str, argv)], cwd=w, capture_output=True, text=True,
                          timeout=900)
    if check and proc.returncode != 0:
        raise SystemExit(f"workspace setup failed: arvision {' '.join(map(str, argv))}\n{proc.stderr}")
    return proc


def build_workspace(w: Path, train: bool) -> None:
    """Tiny model folders (good and broken), official checkpoints, images, a tokenizer, a data folder and, with
    ``train``, a finished 2-step training run."""
    import torch
    from PIL import Image
    from safetensors.torch import load_file, save_file

    from arvision.bundled import tiny_random_pipeline
    from arvision.training.tokenizer_trainer import save_tokenizer_folder

    pipe = tiny_random_pipeline(seed=1)
    pipe.save_pretrained(w / "model")
    tok, tr = pipe.official_state_dicts()
    torch.save(tok, w / "vae.pth")
    torch.save(tr, w / "var.pth")
    save_tokenizer_folder(w / "tok", pipe.tokenizer, pipe.config.image_size)
    Image.new("RGB", (32, 32), (90, 120, 200)).save(w / "img.png")
    Image.new("L", (32, 32), 255).save(w / "mask.png")
    Image.new("L", (32, 32), 0).save(w / "black.png")
    (w / "afile").write_text("a file where a folder or another kind of file is expected\n")
    (w / "adir").mkdir()
    (w / "out").mkdir()
    (w / "random.pth").write_bytes(os.urandom(64 * 1024))
    for k in range(2):  # an image folder: two classes of four 32 px images
        (w / "data" / f"c{k}").mkdir(parents=True)
        for i in range(4):
            Image.new("RGB", (32, 32), (60 * k + 10 * i, 80, 200 - 40 * k)).save(w / "data" / f"c{k}" / f"{i}.png")
    # model folders with one wrongly typed config.json field each
    for field, section, value in BAD_FIELDS:
        folder = w / f"model-{field}"
        shutil.copytree(w / "model", folder)
        cfg = json.loads((folder / "config.json").read_text())
        (cfg[section] if section else cfg)[field] = value
        (folder / "config.json").write_text(json.dumps(cfg))
    # non-finite weights
    shutil.copytree(w / "model", w / "model-nan")
    state = load_file(str(w / "model-nan" / "transformer.safetensors"))
    name = next(k for k, v in state.items() if v.is_floating_point() and v.ndim > 1)
    state[name].view(-1)[0] = float("nan")
    save_file(state, str(w / "model-nan" / "transformer.safetensors"))
    if train:
        _cli(w, "train", "--tokenizer", "tok", "--data", "data", "--family", "var", "--preset", "tiny", "--steps",
             "2", "--batch-size", "4", "--ckpt-every", "1", "--sample-every", "100", "--seed", "0", "--out", "run")


BAD_FIELDS = [("image_size", None, "32"), ("ch_mult", "tokenizer", "abc"), ("patch_nums", "tokenizer", [1, "x"]),
              ("mlp_ratio", "transformer", "four"), ("quant_resi", "tokenizer", "x"),
              ("norm_eps", "transformer", "x")]


def _copy_run(name: str, damage: Callable[[Path], None] | None = None) -> Callable[[Path], None]:
    """Setup: a fresh copy of the finished run at {w}/name, then ``damage`` applied to it."""

    def setup(w: Path) -> None:
        shutil.rmtree(w / name, ignore_errors=True)
        if not (w / "run").is_dir():
            raise RuntimeError("no finished run (the training setup failed or was skipped)")
        shutil.copytree(w / "run", w / name)
        if damage is not None:
            damage(w / name)

    return setup


def _corrupt_checkpoints(run: Path) -> None:
    for ckpt in (run / "checkpoints").iterdir():
        for f in ckpt.iterdir():
            if f.suffix in (".safetensors", ".pt"):
                f.write_bytes(f.read_bytes()[: max(1, f.stat().st_size // 3)])


def _truncate_tokens(run: Path) -> None:
    """An interrupted run (its last checkpoint and final model gone) whose token cache was cut in half."""
    path = run / "tokens.safetensors"
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    shutil.rmtree(sorted((run / "checkpoints").iterdir())[-1])
    for name in ("config.json", "transformer.safetensors", "tokenizer.safetensors"):
        (run / name).unlink(missing_ok=True)


def _has_cuda() -> str | None:
    import torch

    return "this machine has CUDA" if torch.cuda.is_available() else None


TRAIN = "train --tokenizer {w}/tok --data {w}/data --family var --preset tiny --steps 2 --batch-size 4"
RESUME = "train --tokenizer {w}/tok --data {w}/data --family var --preset tiny --steps 2 --batch-size 4 " \
         "--ckpt-every 1 --sample-every 100 --seed 0 --resume"
EDIT = "edit {w}/model --image {w}/img.png --mask {w}/mask.png"

CASES = [
    # 3. errors before the work: outputs and arguments are checked before any model load or tokenisation
    Case("sample --out s.xyz (with --out-dir)", 3, "sample {w}/model --out {w}/out/s.xyz --out-dir {w}/out/imgs",
         "{w}/out", "image format"),
    Case("sample --progression p.bad", 3, "sample {w}/model --progression {w}/out/p.bad", "{w}/out", "image format"),
    Case("demo --out x.txt", 3, "demo --out {w}/out/x.txt", "{w}/out", "image format"),
    Case("edit --out e.foo", 3, EDIT + " --out {w}/out/e.foo", "{w}/out", "image format"),
    Case("sample --save-tokens t.png", 3, "sample {w}/model --save-tokens {w}/out/t.png", "{w}/out", "safetensors"),
    Case("sample --out-dir an existing file", 3, "sample {w}/model --out-dir {w}/afile", "{w}/afile", "file"),
    Case("eval sample --out an existing file", 3, "eval sample {w}/model --out {w}/afile", "{w}/afile", "file"),
    Case("convert --out an existing file", 3, "convert var --vae {w}/vae.pth --var {w}/var.pth --out {w}/afile",
         "{w}/afile", "file"),
    Case("train --steps 0", 3, TRAIN.replace("--steps 2", "--steps 0") + " --out {w}/out/t", "{w}/out", "steps"),
    Case("train --batch-size 0", 3, TRAIN.replace("--batch-size 4", "--batch-size 0") + " --out {w}/out/t",
         "{w}/out", "batch"),
    Case("train --lr -1", 3, TRAIN + " --lr -1 --out {w}/out/t", "{w}/out", "lr"),
    Case("train --label-drop 1.5", 3, TRAIN + " --label-drop 1.5 --out {w}/out/t", "{w}/out", "label"),
    Case("train --out an existing file", 3, TRAIN + " --out {w}/afile", "{w}/afile", "file"),
    Case("train-tokenizer --steps 0", 3, "train-tokenizer --data {w}/data --steps 0 --out {w}/out/tk", "{w}/out",
         "steps"),
    # 4. one line instead of a traceback
    Case("sample --cfg nan", 4, "sample {w}/model --cfg nan --out {w}/out/g.png", "{w}/out", "cfg"),
    Case("sample --temperature inf", 4, "sample {w}/model --temperature inf --out {w}/out/g.png", "{w}/out",
         "temperature"),
    Case("edit --cfg nan", 4, EDIT + " --cfg nan --out {w}/out/e.png", "{w}/out", "cfg"),
    Case("edit --temperature nan", 4, EDIT + " --temperature nan --out {w}/out/e.png", "{w}/out", "temperature"),
    Case("sample --device cuda (CPU-only build)", 4, "sample {w}/model --device cuda --out {w}/out/g.png",
         "{w}/out", "cuda", skip=_has_cuda),
    Case("sample --device bogus", 4, "sample {w}/model --device bogus --out {w}/out/g.png", "{w}/out", "device"),
    Case("train --device bogus", 4, TRAIN + " --device bogus --out {w}/out/t", "{w}/out", "device"),
    Case("train-tokenizer --ch-mult 1,x", 4, "train-tokenizer --data {w}/data --ch-mult 1,x --out {w}/out/tk",
         "{w}/out", "ch-mult"),
    Case("train-tokenizer --patch-nums 1,x", 4, "train-tokenizer --data {w}/data --patch-nums 1,x --out {w}/out/tk",
         "{w}/out", "patch-nums"),
    Case("sample --patch-nums 1,x", 4, "sample {w}/model --patch-nums 1,x --out {w}/out/g.png", "{w}/out",
         "patch-nums"),
    *[Case(f"info: config.json {field} = {value!r}", 4, f"info {{w}}/model-{field}", None, field)
      for field, _, value in BAD_FIELDS],
    Case("sample: config.json norm_eps = 'x'", 4, "sample {w}/model-norm_eps --out {w}/out/g.png", "{w}/out",
         "norm_eps"),
    Case("sample: NaN weights", 4, "sample {w}/model-nan --out {w}/out/g.png", "{w}/out", "non-finite"),
    # 5. resumes that keep their promise
    Case("train --resume with another --lr", 5, RESUME + " --lr 0.001 --out {w}/r-lr", "{w}/r-lr/checkpoints", "lr",
         setup=_copy_run("r-lr")),
    Case("train --resume with another --preset", 5, RESUME.replace("--preset tiny", "--preset small")
         + " --out {w}/r-preset", "{w}/r-preset/checkpoints", "preset", setup=_copy_run("r-preset")),
    Case("train --resume, every checkpoint corrupt", 5, RESUME + " --out {w}/r-corrupt", "{w}/r-corrupt/checkpoints",
         "resum|checkpoint", setup=_copy_run("r-corrupt", _corrupt_checkpoints)),
    Case("train again without --resume on a finished run", 5,
         RESUME.replace(" --resume", "") + " --out {w}/r-again", "{w}/r-again",
         "resume|exists|finished", setup=_copy_run("r-again")),
    Case("train --resume, truncated tokens.safetensors (recovered)", 5, RESUME + " --out {w}/r-tokens", None, "",
         code=0, kind="ok", setup=_copy_run("r-tokens", _truncate_tokens)),
    # 7. messages that say what is wrong
    Case("convert: random bytes as a checkpoint", 7,
         "convert var --vae {w}/random.pth --var {w}/var.pth --out {w}/out/m", "{w}/out", "not a pytorch checkpoint"),
    Case("train-tokenizer --image-size 30", 7, "train-tokenizer --data {w}/data --image-size 30 --out {w}/out/tk",
         "{w}/out", "image-size"),
    Case("sample: a relative path that does not exist", 7, "sample no/such-model --out {w}/out/g.png", "{w}/out",
         "not exist|not found"),
    Case("sample: a tokenizer folder", 7, "sample {w}/tok --out {w}/out/g.png", "{w}/out", "tokenizer"),
    Case("sample: an unfinished run", 7, "sample {w}/r-unfinished --out {w}/out/g.png", "{w}/out", "train|run",
         setup=_copy_run("r-unfinished", lambda run: (run / "config.json").unlink(missing_ok=True))),
    Case("edit: a mask that keeps every token (warns)", 7,
         "edit {w}/model --image {w}/img.png --mask {w}/black.png --out {w}/out/keep.png", None, "regenerates no",
         code=0, kind="warning"),
]


# -- running and judging -----------------------------------------------------------------------------------------

def _snapshot(path: Path) -> object:
    if not path.exists():
        return None
    if path.is_file():
        return ("file", path.stat().st_size, path.stat().st_mtime_ns)
    return {str(p.relative_to(path)): (p.stat().st_size, p.stat().st_mtime_ns) for p in path.rglob("*")}


def run_case(case: Case, w: Path) -> dict:
    row = {"case": case.name, "item": case.item}
    reason = case.skip() if case.skip else None
    if reason:
        return {**row, "skipped": reason}
    if case.setup is not None:
        try:
            case.setup(w)
        except Exception as e:  # noqa: BLE001 - a setup that cannot run is reported as a failed case
            return {**row, "code": None, "one_line": False, "message_ok": False, "unchanged": False,
                    "seconds": 0.0, "ok": False, "stderr": f"setup failed: {e}"}
    watch = Path(case.watch.format(w=w)) if case.watch else None
    before = _snapshot(watch) if watch else None
    t0 = time.perf_counter()
    proc = _cli(w, *case.argv.format(w=w).split(), check=False)
    dt = time.perf_counter() - t0
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    if case.kind == "ok":
        one_line = "Traceback" not in proc.stderr
        message_ok = True
    else:
        prefix = "error: " if case.kind == "error" else "warning: "
        one_line = len(lines) == 1 and lines[0].startswith(prefix) and "Traceback" not in proc.stderr
        message_ok = any(n in (lines[0].lower() if lines else "") for n in case.needle.lower().split("|"))
    unchanged = watch is None or _snapshot(watch) == before
    ok = proc.returncode == case.code and one_line and message_ok and unchanged
    return {**row, "code": proc.returncode, "one_line": one_line, "message_ok": message_ok, "unchanged": unchanged,
            "seconds": round(dt, 2), "ok": ok, "stderr": proc.stderr.strip()[-2000:]}


def _table(rows: list[dict]) -> str:
    head = f"| {'case':<58} | item | exit | one line | says what | nothing written | time s | result |"
    out = [head, "|" + "|".join("-" * (len(c)) for c in head.split("|")[1:-1]) + "|"]
    yes = {True: "yes", False: "NO"}
    for r in rows:
        if "skipped" in r:
            out.append(f"| {r['case']:<58} | {r['item']:>4} | {'':>4} | {'':>8} | {'':>9} | {'':>15} | {'':>6} | "
                       f"skipped ({r['skipped']}) |")
            continue
        out.append(f"| {r['case']:<58} | {r['item']:>4} | {str(r['code']):>4} | {yes[r['one_line']]:>8} | "
                   f"{yes[r['message_ok']]:>9} | {yes[r['unchanged']]:>15} | {r['seconds']:>6.2f} | "
                   f"{'pass' if r['ok'] else 'FAIL'} |")
    return "\n".join(out)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("-k", default="", help="only the cases whose name holds this text")
    ap.add_argument("-v", action="store_true", help="print each case's stderr")
    ap.add_argument("--json", help="also write the rows here")
    args = ap.parse_args()
    cases = [c for c in CASES if args.k.lower() in c.name.lower()]
    needs_run = any(c.setup is not None and "_copy_run" in getattr(c.setup, "__qualname__", "") for c in cases)
    with tempfile.TemporaryDirectory(prefix="arvision-bad-inputs-") as tmp:
        w = Path(tmp)
        t0 = time.perf_counter()
        build_workspace(w, train=needs_run)
        print(f"workspace ready in {time.perf_counter() - t0:.1f} s ({w})", file=sys.stderr)
        rows = []
        for case in cases:
            rows.append(run_case(case, w))
            if args.v and "stderr" in rows[-1]:
                print(f"--- {case.name}: exit {rows[-1]['code']}\n{rows[-1]['stderr']}", file=sys.stderr)
    print(_table(rows))
    failed = [r["case"] for r in rows if "skipped" not in r and not r["ok"]]
    print(f"\n{len(rows) - len(failed)} of {len(rows)} cases pass" + (f"; failing: {', '.join(failed)}" if failed
                                                                       else ""))
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
