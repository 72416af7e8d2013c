"""The paradigm table of docs/paradigms.md: digit models of every family, trained at equal FLOPs by
``bench/train_paradigm_table.sh``, judged the same way in one run.

For every model of ``--runs`` (and every extra folder of ``--models``; ``bundled``: the bundled VAR):

1. **the sweep**: ``arvision sample MODEL --classes <P of each digit> --seed 0 --cfg G [--top-k 0 --top-p T]`` (the
   CLI, one thread per process, ``--jobs`` processes at once; timed) for every guidance G of ``--guidance`` and top-p
   T of ``--top-p`` (top-p is skipped for continuous-token heads, where nothing is drawn from logits);
2. the setting with the lowest classifier-FID is the model's best; it is sampled again at the other ``--seeds``
   (with ``--sweep-per-class`` below ``--per-class``: the sweep has that many images per class, and the best
   setting is sampled again at every seed with ``--per-class``);
3. every folder is judged by the shipped mnist-5k classifier: digit accuracy, and on its penultimate features the
   FID and improved precision / recall (k = 3) against 4,000 real digits (index i % 5 != 4); the 1,000 real digits
   kept apart (i % 5 == 4) give the floor of each at the same N. ``--inception`` adds the TF-Inception FID of the best
   setting's first seed against the same 4,000;
4. forwards and token forwards per image come from the pipeline's own counters (one batch of 10 at the best
   setting), seconds per image from one timed batch of 100 after it (tokens and decoding), model after model in
   this one process (``--threads``, default 1) once every folder is sampled: one run, the same conditions;
5. the tokenizer's round trip on 256 mnist-5k digits (PSNR, SSIM: ``arvision eval tokenizer``'s function);
6. training FLOPs and seconds come from the files ``bench/train_paradigm_table.sh`` leaves beside each model.

A sampled folder is kept with its timing (``FOLDER.json``, written last), so a rerun with more models (as they
finish training) samples only what is new.  ``--picture``: one row per model (its best setting, seed 0), one column
per digit.  ``--lists``: for models that
sample on other scale lists (FlexVAR), also those lists zero-shot, with their own picture (``--lists-picture``).

    python bench/paradigm_table.py --runs runs/paradigms [--models bundled] [--guidance 1.5 3] [--top-p 0.9 1.0]
        [--seeds 0 1] [--per-class 100] [--sweep-per-class 10] [--jobs 2] [--inception]
        [--picture docs/img/paradigms.png] [--work /tmp/arvision-paradigms] [--out-json table.json] [--sample-only]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

# (name in the table, run folder in --runs, the FLOP file bench/train_paradigm_table.sh wrote for it)
RUNS = [("VAR", "var", "flops-var"), ("raster (LlamaGen)", "llamagen", "flops-llamagen"),
        ("FlexVAR", "flexvar", "flops-flexvar"),
        ("FlexVAR + TF (control)", "flexvar-tf", "flops-flexvar-teacher-forcing"),
        ("FlexVAR + SAR", "flexvar-sar", "flops-flexvar-student-forcing"),
        ("HMAR (next-scale stage)", "hmar", "flops-hmar"), ("NAR", "nar", "flops-nar"),
        ("MaskGIT", "maskgit", "flops-maskgit"), ("Infinity (bitwise)", "infinity", "flops-infinity"),
        ("FlowAR (flow head)", "flowar", "flops-flowar"),
        ("HMAR + masked stage", "hmar-masked", "flops-hmar-masked-stage")]
# continuations: their FLOPs add to these
POST_TRAINED = {"flexvar-tf": "flexvar", "flexvar-sar": "flexvar", "hmar-masked": "hmar"}
# sampling flags a run always takes: HMAR's masked sub-steps, the official default schedule on the scales our list
# shares with its 256 px one (one sub-step at 2x2 re-predicting 3 tokens, three at 3x3 re-predicting 8, 7, 5)
RUN_FLAGS = {"hmar-masked": ["--mask-steps", "1/1,3/1,1,2,5/16/36/64"]}


def cpu_name() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor()


def sample_folder(model: str, per_class: int, seed: int, out_dir: Path, extra: list[str]) -> tuple[str, float]:
    """``arvision sample`` of ``per_class`` digits of each class into ``out_dir`` (one thread) -> (command, seconds
    of sampling as the CLI reports it)."""
    done = out_dir.with_name(out_dir.name + ".json")  # written last: a rerun of the table reuses finished folders
    if done.is_file():
        d = json.loads(done.read_text())
        return d["command"], d["seconds"]
    classes = [str(k) for k in range(10) for _ in range(per_class)]
    cmd = [sys.executable, "-m", "arvision", "sample", *([] if model == "bundled" else [model]), "--classes",
           *classes, "--seed", str(seed), "--out-dir", str(out_dir), "--batch-size", "100", *extra]
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    seconds = time.perf_counter() - t0
    # the CLI's own "N image(s) in S s" (sampling and decoding, without the start-up and loading of the process)
    for line in out.stdout.splitlines():
        if " image(s) in " in line:
            seconds = float(line.rsplit(" in ", 1)[1].split()[0])
    shown = " ".join(["arvision", "sample", *([] if model == "bundled" else [model]), "--classes <...>",
                      *cmd[cmd.index("--seed"):]])
    done.write_text(json.dumps({"command": shown, "seconds": seconds}))
    return shown, seconds


def read_folder(out_dir: Path, size: int) -> tuple[np.ndarray, torch.Tensor]:
    """The generated PNGs -> (N, size, size, 3) uint8 (area-resized when larger), labels (N,)."""
    from arvision.images import read_image

    files = sorted(out_dir.glob("*.png"))
    x = torch.from_numpy(np.stack([np.asarray(read_image(f)) for f in files])).permute(0, 3, 1, 2).float()
    if x.shape[-1] != size:
        x = F.interpolate(x, size=(size, size), mode="area")
    images = x.round().clamp(0, 255).byte().permute(0, 2, 3, 1).numpy()
    return images, torch.tensor([int(f.stem.split("class")[1]) for f in files])


class Judge:
    """The shipped mnist-5k classifier and the real digits at one size: 4,000 reference, 1,000 kept apart."""

    def __init__(self, size: int, work: Path, inception: bool):
        sys.path.insert(0, str(Path(__file__).parent))
        from bundled_quality import cached_inception, real_digits

        from arvision.evaluation.classifier import classifier_features, load_mnist_classifier

        self.clf, self.features, self.inception = load_mnist_classifier(), classifier_features, cached_inception
        real, labels = real_digits(size)
        held = np.arange(len(real)) % 5 == 4
        self.ref = real[~held]
        _, self.ref_cf = self._clf(self.ref)
        self.ref_if = cached_inception(work / f"real_ref_inception_{size}.npy", self.ref) if inception else None
        self.floor = self(real[held], labels[held], inception=inception, cache=work / f"real_held_inc_{size}.npy")

    def _clf(self, images: np.ndarray):
        return self.features(torch.from_numpy(images).permute(0, 3, 1, 2).contiguous(), self.clf)

    def __call__(self, images: np.ndarray, labels: torch.Tensor, inception: bool = False,
                 cache: Path | None = None) -> dict:
        from arvision.evaluation.fid import fid_from_features
        from arvision.evaluation.metrics import precision_recall

        logits, cf = self._clf(images)
        precision, recall = precision_recall(self.ref_cf, cf)
        out = {"images": len(images), "accuracy": (logits.argmax(1) == labels).float().mean().item(),
               "fid_classifier": fid_from_features(cf, self.ref_cf), "precision": precision, "recall": recall}
        if inception and self.ref_if is not None:
            out["fid_inception"] = fid_from_features(self.inception(cache, images), self.ref_if)
        return out


def settings(guidance: list[float], top_p: list[float], continuous: bool) -> list[tuple[str, list[str]]]:
    """(label, sample flags) of every swept setting."""
    out = []
    for g in guidance:
        for p in ([None] if continuous else top_p):
            label = f"cfg {g:g}" + ("" if p is None else f", top-p {p:g}")
            out.append((label, ["--cfg", f"{g:g}"] + ([] if p is None else ["--top-k", "0", "--top-p", f"{p:g}"])))
    return out


def cost(pipe, flags: list[str], images: int = 100) -> dict:
    """Forwards and token forwards per image (the pipeline's counters, one batch of 10) and seconds per image (one
    batch of ``images``, tokens and decoding, after that warm-up) at the sample flags ``flags``, in this process."""
    opts = dict(zip(flags[::2], flags[1::2]))
    kw = {"guidance_scale": float(opts["--cfg"])}
    if "--top-p" in opts:
        kw.update(top_k=0, top_p=float(opts["--top-p"]))
    if "--mask-steps" in opts:
        kw["mask_steps"] = opts["--mask-steps"]
    out = pipe(list(range(10)), generator=torch.Generator().manual_seed(0), batch_size=10, **kw)
    t0 = time.perf_counter()
    pipe([i % 10 for i in range(images)], generator=torch.Generator().manual_seed(1), batch_size=images, **kw)
    return {"forwards": out.stats["forwards"], "token_forwards_per_image": out.stats["token_forwards"] / 10,
            "seconds_per_image": (time.perf_counter() - t0) / images}


def reconstruction(pipe, n: int = 256) -> dict:
    """The tokenizer's round trip on the first ``n`` mnist-5k digits (as the model tokenises them: codes, bits or the
    continuous latent): PSNR and SSIM."""
    from arvision.evaluation.tokenizer_bench import benchmark_tokenizer

    r = benchmark_tokenizer(pipe, "mnist-5k", n=n, inception=False, progress=False)
    return {"tokenizer_psnr": float(r["psnr"]), "tokenizer_ssim": float(r["ssim"])}


def training_info(runs: Path, run: str, flops_file: str) -> dict:
    """Training FLOPs / steps / seconds of a run of bench/train_paradigm_table.sh (continuations include the run they
    continue)."""
    info = {}
    f = runs / f"{flops_file}.json"
    if f.is_file():
        d = json.loads(f.read_text())
        info = {"train_steps": d["steps"], "train_flops": d["flops"], "flops_per_step": d["flops_per_step"]}
    s = runs / f"{run}.seconds"
    if s.is_file():
        info["train_seconds"] = int(s.read_text())
    base = POST_TRAINED.get(run)
    if base and info:
        b = training_info(runs, base, f"flops-{base}")
        info["train_flops"] += b.get("train_flops", 0)
        info["train_seconds"] = info.get("train_seconds", 0) + b.get("train_seconds", 0)
        info["train_steps"] = f"{b.get('train_steps')} + {info['train_steps']}"
    return info


def picture(rows: list[tuple[str, Path]], path: Path) -> None:
    """One row per (caption, folder of digits): the first image of each class, shown at 96 px."""
    from arvision.images import make_grid, read_image

    cells, captions = [], []
    for caption, folder in rows:
        for k in range(10):
            first = sorted(folder.glob(f"*_class{k}.png"))[0]
            cells.append(read_image(first).resize((96, 96), resample=0))
            captions.append(caption if k == 0 else str(k))
    path.parent.mkdir(parents=True, exist_ok=True)
    make_grid(cells, captions, ncol=10).save(path)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=Path, default=None, help="the work folder of bench/train_paradigm_table.sh")
    ap.add_argument("--models", nargs="*", default=[], help="more model folders ('bundled': the bundled one)")
    ap.add_argument("--guidance", type=float, nargs="+", default=[1.5, 3.0])
    ap.add_argument("--top-p", type=float, nargs="+", default=[0.9, 1.0])
    ap.add_argument("--per-class", type=int, default=100)
    ap.add_argument("--sweep-per-class", type=int, default=None,
                    help="images per class of each swept setting (default: --per-class); when fewer, the best "
                         "setting is sampled again with --per-class at every seed")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    ap.add_argument("--jobs", type=int, default=2, help="sampling processes at once (one thread each)")
    ap.add_argument("--threads", type=int, default=1, help="threads of the timed batches")
    ap.add_argument("--inception", action="store_true", help="also the TF-Inception FID of each best setting")
    ap.add_argument("--lists", nargs="*", default=[], help="zero-shot scale lists for models that take them")
    ap.add_argument("--lists-per-class", type=int, default=50)
    ap.add_argument("--work", type=Path, default=Path("/tmp/arvision-paradigms"))
    ap.add_argument("--out-json", type=Path, default=None)
    ap.add_argument("--picture", type=Path, default=None)
    ap.add_argument("--lists-picture", type=Path, default=None)
    ap.add_argument("--sample-only", action="store_true",
                    help="sample (sweep and seeds) what has finished training, then stop: run it niced beside the "
                         "training, the full run later reuses its folders and does the timing alone")
    ap.add_argument("--print-json", type=Path, default=None,
                    help="print the tables of an earlier run's --out-json and stop (nothing is sampled)")
    args = ap.parse_args()
    if args.print_json is not None:
        print_table(json.loads(args.print_json.read_text()))
        return
    torch.set_num_threads(args.threads)

    from arvision.bundled import bundled_model_dir
    from arvision.pipeline import ARPipeline

    models = []  # (name, folder argument, folder, run, flops file); a run's own sampling flags: RUN_FLAGS
    if args.runs is not None:
        models += [(name, str(args.runs / run), args.runs / run, run, ff) for name, run, ff in RUNS
                   if (args.runs / run / "transformer.safetensors").is_file()]
    for m in args.models:
        folder = bundled_model_dir() if m == "bundled" else Path(m)
        models.append(("VAR (bundled)" if m == "bundled" else folder.name, m, folder, None, None))
    pipes = {name: ARPipeline.from_pretrained(folder) for name, _, folder, _, _ in models}
    configs = {name: pipe.config for name, pipe in pipes.items()}
    sizes = {c.image_size for c in configs.values()}
    judges = {s: Judge(s, args.work, args.inception) for s in sizes}
    pool = ThreadPoolExecutor(args.jobs)

    # 1. the sweep (seed 0), all models at once; at --sweep-per-class (fewer images) when given
    sweep_k = args.sweep_per_class or args.per_class
    reduced = sweep_k != args.per_class
    jobs = {}
    for name, arg, _folder, _, _ in models:
        continuous = bool(pipes[name].transformer.head.token_dims)  # nothing drawn from logits: no top-p
        for label, flags in settings(args.guidance, args.top_p, continuous):
            flags = flags + RUN_FLAGS.get(Path(arg).name, [])
            tag = label.replace(' ', '').replace(',', '_')
            out = args.work / Path(arg).name / (f"{tag}-seed{args.seeds[0]}" + (f"-n{10 * sweep_k}" if reduced else ""))
            jobs[name, label] = (flags, out, pool.submit(sample_folder, arg, sweep_k, args.seeds[0], out, flags))
    sweep = {}
    for (name, label), (flags, out, fut) in jobs.items():
        cmd, seconds = fut.result()
        r = judges[configs[name].image_size](*read_folder(out, configs[name].image_size))
        sweep.setdefault(name, []).append({"setting": label, "flags": flags, "folder": str(out), "command": cmd,
                                           "sample_seconds": round(seconds, 1), **r})
        print(json.dumps({"model": name, **sweep[name][-1]}), flush=True)
    # 2. the best setting per model, at the other seeds (at every seed, with --per-class images, after a reduced
    # sweep)
    best = {name: min(rows, key=lambda r: r["fid_classifier"]) for name, rows in sweep.items()}
    final_seeds = args.seeds if reduced else args.seeds[1:]
    extra, best_folder = {}, {name: Path(best[name]["folder"]) for name in best}
    for name, arg, _folder, _, _ in models:
        for seed in final_seeds:
            out = best_folder[name].with_name(best_folder[name].name.split("-seed", 1)[0] + f"-seed{seed}")
            extra[name, seed] = (out, pool.submit(sample_folder, arg, args.per_class, seed, out, best[name]["flags"]))
        if reduced:
            best_folder[name] = extra[name, args.seeds[0]][0]
    report = {"cpu": cpu_name(), "torch": torch.__version__, "guidance": args.guidance, "top_p": args.top_p,
              "seeds": args.seeds, "per_class": args.per_class, "sweep_per_class": sweep_k,
              "floor": {s: j.floor for s, j in judges.items()}, "models": []}
    for _, fut in extra.values():
        fut.result()  # every folder sampled before the timed batches, so nothing else runs beside them
    pool.shutdown()
    if args.sample_only:
        return
    for name, arg, _folder, run, ff in models:
        size = configs[name].image_size
        per_seed = [] if reduced else [best[name]]
        for seed in final_seeds:
            out, _ = extra[name, seed]
            per_seed.append({"seed": seed, **judges[size](*read_folder(out, size))})
        entry = {"name": name, "model": arg, "family": configs[name].family, "sweep": sweep[name],
                 "best": best[name]["setting"], "per_seed": per_seed,
                 "params_m": round(sum(p.numel() for p in pipes[name].transformer.parameters()) / 1e6, 2),
                 **cost(pipes[name], best[name]["flags"]), **reconstruction(pipes[name])}
        if run is not None:
            entry.update(training_info(args.runs, run, ff))
        for key in ("accuracy", "fid_classifier", "precision", "recall"):
            v = np.array([r[key] for r in per_seed])
            entry[key], entry[f"{key}_std"] = float(v.mean()), float(v.std(ddof=1)) if len(v) > 1 else 0.0
        if args.inception:
            entry["fid_inception"] = judges[size](*read_folder(best_folder[name], size), inception=True,
                                                  cache=Path(f"{best_folder[name]}-inception.npy"))["fid_inception"]
        report["models"].append(entry)
        print(json.dumps({k: v for k, v in entry.items() if k != "sweep"}), flush=True)
    # 3. zero-shot scale lists (models whose family samples on other lists)
    lists_rows = []
    for name, arg, _folder, _, _ in models:
        if not args.lists or not pipes[name].family.capabilities.scale_lists or lists_rows:
            continue
        size, entry = configs[name].image_size, next(e for e in report["models"] if e["name"] == name)
        lists_rows.append((f"trained, {size}px", best_folder[name]))
        entry["lists"] = {}
        for spec in args.lists:
            out = args.work / Path(arg).name / f"list-{spec.replace(',', '-')}"
            _, seconds = sample_folder(arg, args.lists_per_class, args.seeds[0], out,
                                       best[name]["flags"] + ["--patch-nums", spec])
            px = int(spec.split(",")[-1]) * configs[name].tokenizer.downsample
            entry["lists"][spec] = {"image_px": px, "sample_seconds": round(seconds, 1),
                                    **judges[size](*read_folder(out, size))}
            lists_rows.append((f"{len(spec.split(','))} steps, {px}px", out))
    if args.picture:
        picture([(e["name"], best_folder[e["name"]]) for e in report["models"]], args.picture)
    if args.lists_picture and lists_rows:
        picture(lists_rows, args.lists_picture)
    print_table(report)
    if args.out_json:
        args.out_json.write_text(json.dumps(report, indent=1))


def print_table(report: dict) -> None:
    n = len(report["seeds"])
    print(f"\n| model | tokenizer PSNR | training FLOPs | training time | best setting | accuracy | classifier-FID | "
          f"precision | recall | forwards / image | token forwards / image | s / image |  (mean ± sd over {n} seeds)")
    print("|---|---:|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|")
    for e in report["models"]:
        flops = f"{e['train_flops'] / 1e12:.1f} TFLOP" if "train_flops" in e else "—"
        secs = f"{e['train_seconds'] / 60:.0f} min" if "train_seconds" in e else "—"
        print(f"| {e['name']} | {e['tokenizer_psnr']:.1f} dB | {flops} | {secs} | {e['best']} | "
              f"{e['accuracy']:.3f} ± {e['accuracy_std']:.3f} | "
              f"{e['fid_classifier']:.2f} ± {e['fid_classifier_std']:.2f} | {e['precision']:.3f} ± "
              f"{e['precision_std']:.3f} | {e['recall']:.3f} ± {e['recall_std']:.3f} | {e['forwards']} | "
              f"{e['token_forwards_per_image']:.0f} | {e['seconds_per_image']:.3f} |")
    for size, f in report["floor"].items():
        print(f"| 1,000 real digits kept apart ({size} px) | | | | | {f['accuracy']:.3f} | {f['fid_classifier']:.2f} | "
              f"{f['precision']:.3f} | {f['recall']:.3f} | | | |")
    print(f"\n| model | setting | accuracy | classifier-FID | precision | recall |  (seed {report['seeds'][0]}, "
          f"{10 * report['sweep_per_class']} images)")
    print("|---|---|---:|---:|---:|---:|")
    for e in report["models"]:
        for r in e["sweep"]:
            print(f"| {e['name']} | {r['setting']} | {r['accuracy']:.3f} | {r['fid_classifier']:.2f} | "
                  f"{r['precision']:.3f} | {r['recall']:.3f} |")
    for e in report["models"]:
        for spec, r in e.get("lists", {}).items():
            print(f"| {e['name']} @ {spec} ({r['image_px']} px) | {r['accuracy']:.3f} | {r['fid_classifier']:.2f} | "
                  f"{r['precision']:.3f} | {r['recall']:.3f} |")


if __name__ == "__main__":
    main()
