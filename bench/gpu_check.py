"""The GPU check (``bench/gpu_check.sh``): correctness against the official code, then speed, in one short run.

    bench/gpu_check.sh --out gpu-check/                 # on a GPU: VAR-d16 and LlamaGen GPT-B, < 8 minutes
    bench/gpu_check.sh --cpu-smoke --out /tmp/smoke     # tiny models on the CPU: proves the script still runs

1. Correctness (fp32, TF32 off): VAR-d16 and GPT-B with random weights built by the official constructors and saved
   in the released layout, converted as ``arvision convert`` does; the official sampler and arvision's draw tokens
   for the same seed on the same device, and they must be equal (VAR: ``g_seed``, sampled with top-k/top-p;
   LlamaGen: seeded sampling and greedy).  The official code is extracted at run time from the local mirrors
   (``--var-mirror``/``--llamagen-mirror``, as ``bench/official_speed.py``) or read from ``--official-src`` (a folder
   made by ``--extract-official DIR`` on a machine that has the mirrors); without it the check is skipped with one
   line (``--cpu-smoke`` then samples tiny arvision models of its own), and never part of this repository.
2. Speed, batch 1 and 16: the official sampler in fp32, arvision in fp32, bf16 (weights cast once) and compiled
   (bf16 + ``pipe.compile()``), each after ``--warmup`` untimed runs, the median of ``--repeat``; tokens and decode,
   seconds per image, images per second and the peak memory (``arvision.bench``).  Measurements run in priority
   order (correctness, eager, compiled); one that would start after ``--time-budget`` seconds is skipped and says so.

Writes ``OUT/gpu_check.json`` (every number, the machine: lscpu model and flags, GPU, torch) and ``OUT/gpu_check.md``
(the table).  Installs nothing; needs a CUDA build of PyTorch for the GPU run and the project's own dependencies.
"""

from __future__ import annotations

import argparse
import gc
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the sibling bench scripts
import gpu_check_official as official  # noqa: E402
from official_speed import MIRRORS, extract_official  # noqa: E402

from arvision.bench import benchmark, machine_info, peak_memory_bytes, reset_peak_memory  # noqa: E402

FAMILIES = ("var", "llamagen")
VARIANTS = ("fp32", "bf16", "compiled")


class Clock:
    """Elapsed seconds since the start; ``allows(what)`` is False (and says so) past the time budget."""

    def __init__(self, budget: float):
        self.t0, self.budget = time.perf_counter(), budget

    def elapsed(self) -> float:
        return time.perf_counter() - self.t0

    def say(self, text: str) -> None:
        print(f"[{self.elapsed():6.1f} s] {text}", flush=True)

    def allows(self, what: str) -> bool:
        if self.elapsed() <= self.budget:
            return True
        self.say(f"skipped {what}: past the {self.budget:.0f} s time budget")
        return False


def official_source(family: str, args, tmp: Path) -> tuple[Path | None, str]:
    """(folder to import the official code from, where it came from), or (None, why not)."""
    if args.official_src is not None:
        src = args.official_src / family
        return (src, f"{src}") if src.is_dir() else (None, f"{src} not found")
    mirror = args.var_mirror if family == "var" else args.llamagen_mirror
    if not (mirror / "HEAD").is_file():
        return None, f"no mirror at {mirror} (and no --official-src)"
    commit = extract_official(family, mirror, tmp / family)
    return tmp / family, f"{mirror} @ {commit}"


def _fallback_model(family: str, out: Path) -> Path:
    """Without the official code (CI): a tiny random arvision model of the family, saved to ``out``."""
    from arvision.bundled import tiny_random_pipeline
    from arvision.config import ModelConfig, TokenizerConfig, TransformerConfig
    from arvision.pipeline import ARPipeline

    if family == "var":
        pipe = tiny_random_pipeline(seed=0)
    else:
        tok = TokenizerConfig(kind="vq", vocab_size=64, embed_dim=8, z_channels=16, ch=32, ch_mult=(1, 1),
                              num_res_blocks=1, attn_style="split", quant_conv_ks=1, l2_norm=True)
        tr = TransformerConfig(block="llama", width=128, depth=2, num_heads=2, vocab_size=64, num_classes=10,
                               in_channels=8)
        torch.manual_seed(0)
        pipe = ARPipeline(ModelConfig(family="llamagen", image_size=8, tokenizer=tok, transformer=tr))
        pipe.transformer.init_weights()
    out.parent.mkdir(parents=True, exist_ok=True)
    pipe.save_pretrained(out)
    return out


def compare(a: torch.Tensor, b: torch.Tensor) -> dict:
    a, b = a.cpu(), b.cpu()
    if a.shape != b.shape:
        return {"identical": False, "why": f"shapes {tuple(a.shape)} vs {tuple(b.shape)}"}
    diff = a != b
    res = {"identical": not bool(diff.any()), "mismatched_tokens": int(diff.sum()), "tokens": a.numel()}
    if diff.any():
        res["first_mismatch_position"] = int(diff.any(dim=0).nonzero()[0, 0])
    return res


def arvision_tokens(pipe, size: dict, batch: int, seed: int, greedy: bool = False) -> torch.Tensor:
    s = size["sampling"]
    return pipe([size["label"]] * batch, guidance_scale=s["cfg"], top_k=1 if greedy else s["top_k"],
                top_p=s["top_p"], temperature=1.0, output_type="tokens", precision="fp32",
                generator=torch.Generator(device=pipe.device).manual_seed(seed)).tokens.to(torch.int64)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_official(family: str, models: dict, size: dict, batch: int, args, device) -> dict:
    """The official sampler (tokens + decode) timed as ``arvision.bench`` times arvision: warm-up, median."""
    def run():
        _sync(device)
        t0 = time.perf_counter()
        official.sample(family, models, size, batch, args.seed, device)
        _sync(device)
        return time.perf_counter() - t0

    for _ in range(args.warmup):
        run()
    reset_peak_memory(device)
    sec = statistics.median(run() for _ in range(args.repeat))
    return {"variant": "official fp32", "batch_size": batch, "seconds_per_image": sec / batch,
            "images_per_second": batch / sec, "peak_memory_bytes": peak_memory_bytes(device)}


def time_arvision(folder: Path, variant: str, size: dict, batches: list[int], args, device, clock, family) -> list:
    from arvision.pipeline import ARPipeline

    pipe = ARPipeline.from_pretrained(folder, device=device)
    precision = "fp32" if variant == "fp32" else "bf16"
    if precision == "bf16":
        pipe.to(dtype=torch.bfloat16)  # weights cast once, as `arvision bench --precision bf16`
    if variant == "compiled":
        pipe.compile(backend=args.compile_backend)
    s, rows = size["sampling"], []
    for b in batches:
        if not clock.allows(f"{family} {variant} batch {b}"):
            rows.append({"variant": variant, "batch_size": b, "skipped": "time budget"})
            continue
        clock.say(f"{family}: arvision {variant}, batch {b} ...")
        r = benchmark(pipe, [size["label"]], batch_size=b, seed=args.seed, guidance_scale=s["cfg"],
                      top_k=s["top_k"], top_p=s["top_p"], temperature=1.0, precision=precision,
                      warmup=max(args.warmup, 1 if variant == "compiled" else 0), repeat=args.repeat)
        rows.append({"variant": variant, **r})
    del pipe
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return rows


def check_family(family: str, args, device, clock, tmp: Path, report: dict) -> Path:
    """Build the models, check the tokens, time the official sampler; returns the arvision model folder."""
    size = official.SIZES[args.size][family]
    work = args.out / "models" / family
    src, origin = official_source(family, args, tmp)
    entry = report["families"].setdefault(family, {"official_code": origin, "speed": []})
    if src is None:
        if not args.cpu_smoke:
            raise SystemExit(f"{family}: the official code is needed for the GPU check: {origin}")
        clock.say(f"{family}: correctness skipped: official code not found ({origin}); timing a tiny arvision "
                  "model instead")
        entry["correctness"] = {"skipped": f"official code not found: {origin}"}
        return _fallback_model(family, work / "arvision")
    clock.say(f"{family}: building random official-layout weights ({origin}) ...")
    models = official.build(family, size, src, work, args.seed, device)
    folder = official.convert(family, size, work, work / "arvision")
    from arvision.pipeline import ARPipeline

    pipe = ARPipeline.from_pretrained(folder, device=device)
    b = args.parity_batch
    clock.say(f"{family}: fp32 tokens, official vs arvision, batch {b} ...")
    checks = {"sampled": compare(official.sample(family, models, size, b, args.seed, device)[0],
                                 arvision_tokens(pipe, size, b, args.seed))}
    if family == "llamagen":
        checks["greedy"] = compare(official.sample(family, models, size, b, args.seed, device, greedy=True)[0],
                                   arvision_tokens(pipe, size, b, args.seed, greedy=True))
    entry["correctness"] = {"batch": b, "seed": args.seed, **checks}
    for name, res in checks.items():
        clock.say(f"{family}: tokens {name}: " + ("identical" if res["identical"] else f"DIFFER {res}"))
    del pipe
    for batch in args.batch:
        if clock.allows(f"{family} official batch {batch}"):
            clock.say(f"{family}: official fp32, batch {batch} ...")
            entry["speed"].append(time_official(family, models, size, batch, args, device))
    del models
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return folder


def markdown(report: dict) -> str:
    m = report["machine"]
    lines = [f"# GPU check ({report['mode']})", "",
             f"Device {report['device']}; CPU {m['cpu_model']} ({m['logical_cores']} logical cores); torch "
             f"{m['torch']}; {report['wall_seconds']:.0f} s wall; median of {report['settings']['repeat']} after "
             f"{report['settings']['warmup']} warm-up.", ""]
    for family, e in report["families"].items():
        c = e.get("correctness", {})
        if "skipped" in c:
            lines.append(f"- {family}: correctness skipped ({c['skipped']})")
        else:
            for name in ("sampled", "greedy"):
                if name in c:
                    ok = "identical" if c[name]["identical"] else f"DIFFER ({c[name]})"
                    lines.append(f"- {family}: fp32 {name} tokens vs official, batch {c['batch']}: {ok}")
    lines += ["", "| model | variant | batch | s/image | images/s | tokens s/image | decode s/image | peak MiB | "
                  "speed-up vs official fp32 |", "|---|---|---|---|---|---|---|---|---|"]
    for family, e in report["families"].items():
        base = {r["batch_size"]: r["seconds_per_image"] for r in e["speed"] if r["variant"] == "official fp32"}
        for r in e["speed"]:
            if "skipped" in r:
                lines.append(f"| {family} | {r['variant']} | {r['batch_size']} | skipped ({r['skipped']}) |"
                             " | | | | |")
                continue
            peak = f"{r['peak_memory_bytes'] / 2**20:.0f}" if r.get("peak_memory_bytes") is not None else "-"
            tok, dec = (f"{r[k]:.4f}" if k in r else "-" for k in ("transformer_seconds_per_image",
                                                                  "decode_seconds_per_image"))
            up = base.get(r["batch_size"])
            up = f"{up / r['seconds_per_image']:.2f}x" if up and r["variant"] != "official fp32" else "-"
            lines.append(f"| {family} | {r['variant']} | {r['batch_size']} | {r['seconds_per_image']:.4f} | "
                         f"{r['images_per_second']:.2f} | {tok} | {dec} | {peak} | {up} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cpu-smoke", action="store_true", help="tiny models on the CPU (CI: the script still runs)")
    ap.add_argument("--out", type=Path, default=Path("gpu-check"), help="output folder (default gpu-check)")
    ap.add_argument("--device", default=None, help="default: cuda; cpu with --cpu-smoke")
    ap.add_argument("--batch", type=int, nargs="+", default=None, help="batch sizes (default 1 16; smoke 1 4)")
    ap.add_argument("--parity-batch", type=int, default=4, help="batch of the token check (default 4)")
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--repeat", type=int, default=None, help="timed runs (default 3; smoke 1)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--time-budget", type=float, default=None,
                    help="seconds after which no measurement starts (default 420; smoke 600)")
    ap.add_argument("--families", nargs="+", choices=FAMILIES, default=list(FAMILIES))
    ap.add_argument("--variants", nargs="*", choices=VARIANTS, default=list(VARIANTS),
                    help="arvision's timed variants (default all; none = correctness and the official timings)")
    ap.add_argument("--compile-backend", default="inductor",
                    help="torch.compile backend of the compiled variant (default inductor; aot_eager traces the "
                         "same graph without generating code: a quicker smoke test)")
    ap.add_argument("--official-src", type=Path, default=None,
                    help="a folder with var/ and llamagen/ official code (from --extract-official)")
    ap.add_argument("--var-mirror", type=Path, default=MIRRORS["var"])
    ap.add_argument("--llamagen-mirror", type=Path, default=MIRRORS["llamagen"])
    ap.add_argument("--extract-official", type=Path, default=None, metavar="DIR",
                    help="only copy the official code from the mirrors into DIR (to carry to a GPU machine)")
    args = ap.parse_args(argv)
    if args.extract_official is not None:
        for family in FAMILIES:
            mirror = args.var_mirror if family == "var" else args.llamagen_mirror
            print(f"{family}: {mirror} @ {extract_official(family, mirror, args.extract_official / family)}")
        return 0
    args.size = "smoke" if args.cpu_smoke else "full"
    args.batch = args.batch or ([1, 4] if args.cpu_smoke else [1, 16])
    args.repeat = args.repeat or (1 if args.cpu_smoke else 3)
    device = torch.device(args.device or ("cpu" if args.cpu_smoke else "cuda"))
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("no CUDA device visible: run on a GPU machine, or use --cpu-smoke")
    # fp32 means fp32: TF32 matmuls/convolutions would change the tokens and the fp32 timings
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    clock = Clock(args.time_budget or (600.0 if args.cpu_smoke else 420.0))
    args.out.mkdir(parents=True, exist_ok=True)
    report = {"mode": "cpu-smoke" if args.cpu_smoke else "gpu", "device": str(device), "machine": machine_info(),
              "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
              "tf32": False, "families": {}}
    m = report["machine"]
    clock.say(f"{report['mode']} on {device} ({m.get('cuda_device') or m['cpu_model']})")
    folders = {}
    with tempfile.TemporaryDirectory(prefix="official-src-") as tmp:
        for family in args.families:  # 1. correctness and the official timings
            if clock.allows(f"{family} correctness"):
                folders[family] = check_family(family, args, device, clock, Path(tmp), report)
    for variants in (("fp32", "bf16"), ("compiled",)):  # 2. eager, 3. compiled (the slowest to start)
        for family, folder in folders.items():
            for v in (v for v in variants if v in args.variants):
                report["families"][family]["speed"] += time_arvision(
                    folder, v, official.SIZES[args.size][family], args.batch, args, device, clock, family)
    report["wall_seconds"] = clock.elapsed()
    report["within_time_budget"] = clock.elapsed() <= clock.budget
    (args.out / "gpu_check.json").write_text(json.dumps(report, indent=1))
    table = markdown(report)
    (args.out / "gpu_check.md").write_text(table)
    print(table)
    clock.say(f"wrote {args.out / 'gpu_check.json'} and {args.out / 'gpu_check.md'}")
    bad = [f for f, e in report["families"].items()
           if any(isinstance(v, dict) and v.get("identical") is False for v in e.get("correctness", {}).values())]
    if bad:
        print(f"FAILED: tokens differ from the official code for {', '.join(bad)}")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
