"""KV-cache policies (ScaleKV, HACK, SnapKV) against the full cache: memory, speed and quality.

    PYTHONPATH=src nice -n 5 .venv/bin/python bench/kv_policies.py --out-json kv_policies.json
    PYTHONPATH=src nice -n 5 .venv/bin/python bench/kv_policies.py --skip-d16 --images 500
    PYTHONPATH=src nice -n 5 .venv/bin/python bench/kv_policies.py --skip-mnist --batch 1 8

(a) VAR-d16 shapes (depth 16, width 1024, 16 heads, scales 1..16, vocab 4096, 1000 classes) with random weights
(``init_weights``), calibrated on ``--d16-calib`` samples first (in the bench precision); then for each policy
``arvision.bench.benchmark(..., decode=False)`` at cfg 1.5, top-k 900, top-p 0.96, precision auto, class 207:
stored KV peak (``kv_cache_bytes``) and transient peak (``kv_transient_bytes``) as fractions of the full cache,
seconds per image (tokens only, median), peak RSS over the timed runs.

(b) The bundled MNIST VAR model, calibrated in memory on ``--mnist-calib`` samples (the shipped
``kv_calibration.json`` is not used, so the run stands alone): ``--images`` images (classes cycled), one
generator per image seeded ``seed + i`` (coupled noise: policy and plain draw the same noise); per policy the
forward passes, transformer seconds, both cache peaks, classifier accuracy and classifier-FID against
mnist-5k, token agreement with the plain sampler (overall and per step) and PSNR of the decoded images; plus
the plain sampler with other seeds (``seed + 10^6 + i``) as the noise floor.

Prints markdown tables and writes every number to --out-json.  Wall-clock times on a shared 2-core VM are noisy.
"""

from __future__ import annotations

import argparse
import json
import platform
import time

import torch

from arvision.bench import benchmark
from arvision.bundled import bundled_model_dir
from arvision.evaluation.classifier import classifier_report
from arvision.families.var import preset_config
from arvision.pipeline import ARPipeline
from arvision.sampling.kv_calibration import calibrate

D16_POLICIES = ["full", "scalekv:0.1", "scalekv:0.3", "scalekv:0.5", "snapkv:0.1", "hack:0.9", "hack:0.7",
                "hack:0.5"]
MNIST_POLICIES = ["scalekv:0.1", "scalekv:0.3", "scalekv:0.5", "snapkv:0.1", "snapkv:0.3", "snapkv:0.5",
                  "hack:0.9", "hack:0.7", "hack:0.5"]
MB = 2**20


def calibration_summary(calib) -> dict:
    n_ctx = sum(t == "contextual" for row in calib.head_types for t in row)
    var = sorted(v for row in calib.head_variance for v in row)
    return {"drafters": calib.drafters, "contextual_heads": n_ctx, "heads": calib.depth * calib.heads,
            "head_variance_sorted": [round(v, 4) for v in var],
            "asi_z_min_per_step": [round(min(z), 2) for z in calib.z],
            "asi_z_sorted_last_step": [round(v, 2) for v in sorted(calib.z[-1])]}


def bench_d16(args) -> dict:
    torch.manual_seed(args.seed)
    pipe = ARPipeline(preset_config("d16"))
    pipe.transformer.init_weights()
    t = time.perf_counter()
    pipe.kv_calibration = calibrate(pipe, args.d16_calib, args.seed, precision="auto", batch_size=1)
    out = {"calibration_seconds": time.perf_counter() - t, "calibration": calibration_summary(pipe.kv_calibration),
           "rows": []}
    print(f"VAR-d16 calibrated on {args.d16_calib} samples in {out['calibration_seconds']:.0f} s; drafters "
          f"{pipe.kv_calibration.drafters}")
    for b in args.batch:
        full = None
        for spec in D16_POLICIES if b == 1 else ["full", "scalekv:0.1"]:
            r = benchmark(pipe, [207], batch_size=b, seed=args.seed, guidance_scale=1.5, top_k=900, top_p=0.96,
                          precision="auto", warmup=args.warmup, repeat=args.repeat, decode=False,
                          kv_policy=None if spec == "full" else spec)
            full = full or r
            row = {"batch": b, "policy": spec, "kv_cache_bytes": r["kv_cache_bytes"],
                   "kv_transient_bytes": r["kv_transient_bytes"],
                   "stored_fraction": r["kv_cache_bytes"] / full["kv_cache_bytes"],
                   "transient_fraction": r["kv_transient_bytes"] / full["kv_cache_bytes"],
                   "seconds_per_image": r["seconds_per_image"], "peak_rss_bytes": r["peak_memory_bytes"],
                   "precision": r["precision"], "step_seconds": r["step_seconds"]}
            out["rows"].append(row)
            print(f"  B={b} {spec:12s} stored {row['stored_fraction']:.3f} transient {row['transient_fraction']:.3f} "
                  f"{row['seconds_per_image']:.2f} s/img", flush=True)
    return out


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    """Mean over images of the PSNR (dB) of (B, 3, H, W) images in [0, 1]; identical images count as 100 dB."""
    mse = (a - b).pow(2).flatten(1).mean(1)
    return (10 * torch.log10(1.0 / mse.clamp_min(1e-10))).mean().item()


def bench_mnist(args) -> dict:
    pipe = ARPipeline.from_pretrained(bundled_model_dir())
    pipe.kv_calibration = calibrate(pipe, args.mnist_calib, args.seed)
    labels = [i % 10 for i in range(args.images)]
    sizes = pipe.schedule.step_sizes

    def run(spec, offset=0):
        gens = [torch.Generator().manual_seed(args.seed + offset + i) for i in range(args.images)]
        t = time.perf_counter()
        o = pipe(labels, generator=gens, output_type="pt", precision="fp32", batch_size=args.mnist_batch,
                 kv_policy=None if spec == "full" else spec)
        o.stats["wall_seconds"] = time.perf_counter() - t
        return o

    base = run("full")
    out = {"calibration": calibration_summary(pipe.kv_calibration), "rows": []}
    for spec, offset in [("full", 0), ("full (other seeds)", 10**6), *[(s, 0) for s in MNIST_POLICIES]]:
        o = base if spec == "full" else run(spec.split()[0], offset)
        rep = classifier_report((o.images * 255).round().to(torch.uint8), labels, fid_real="mnist-5k")
        same = o.tokens == base.tokens
        per_step, pos = [], 0
        for n in sizes:
            per_step.append(same[:, pos:pos + n].float().mean().item())
            pos += n
        row = {"policy": spec, "forwards": o.stats["forwards"], "transformer_seconds": o.stats["transformer_seconds"],
               "wall_seconds": o.stats["wall_seconds"], "kv_cache_bytes": o.stats["kv_cache_bytes"],
               "kv_transient_bytes": o.stats["kv_transient_bytes"],
               "stored_fraction": o.stats["kv_cache_bytes"] / base.stats["kv_cache_bytes"],
               "transient_fraction": o.stats["kv_transient_bytes"] / base.stats["kv_cache_bytes"],
               "accuracy": rep["accuracy"], "fid": rep["fid"], "token_agreement": same.float().mean().item(),
               "token_agreement_per_step": per_step, "psnr_db": psnr(o.images, base.images)}
        out["rows"].append(row)
        print(f"  {spec:20s} stored {row['stored_fraction']:.3f} acc {row['accuracy']:.3f} fid {row['fid']:.2f} "
              f"agree {row['token_agreement']:.3f} psnr {row['psnr_db']:.1f}", flush=True)
    return out


def tables(res: dict) -> str:
    lines = []
    if "d16" in res:
        lines += ["### VAR-d16 shapes, random weights (tokens only)", "",
                  "| batch | policy | stored peak MiB | stored / full | transient peak MiB | transient / full "
                  "| s / image | peak RSS MiB |", "|---|---|---|---|---|---|---|---|"]
        for r in res["d16"]["rows"]:
            rss = "n/a" if r["peak_rss_bytes"] is None else f"{r['peak_rss_bytes'] / MB:.0f}"
            lines.append(f"| {r['batch']} | {r['policy']} | {r['kv_cache_bytes'] / MB:.1f} | "
                         f"{r['stored_fraction']:.3f} | {r['kv_transient_bytes'] / MB:.1f} | "
                         f"{r['transient_fraction']:.3f} | {r['seconds_per_image']:.2f} | {rss} |")
        lines.append("")
    if "mnist" in res:
        lines += ["### Bundled MNIST VAR model (fp32, coupled noise vs the plain sampler)", "",
                  "| policy | forwards | stored KiB | stored / full | transient / full | transformer s | accuracy "
                  "| classifier-FID | token agreement | last-step agreement | PSNR dB |",
                  "|---|---|---|---|---|---|---|---|---|---|---|"]
        for r in res["mnist"]["rows"]:
            lines.append(f"| {r['policy']} | {r['forwards']} | {r['kv_cache_bytes'] / 1024:.0f} | "
                         f"{r['stored_fraction']:.3f} | {r['transient_fraction']:.3f} | "
                         f"{r['transformer_seconds']:.2f} | {r['accuracy']:.3f} | {r['fid']:.2f} | "
                         f"{r['token_agreement']:.3f} | {r['token_agreement_per_step'][-1]:.3f} | "
                         f"{r['psnr_db']:.1f} |")
    return "\n".join(lines)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch", type=int, nargs="+", default=[1], help="VAR-d16 batch sizes (8: full and scalekv:0.1)")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--repeat", type=int, default=2)
    p.add_argument("--d16-calib", type=int, default=2)
    p.add_argument("--mnist-calib", type=int, default=16)
    p.add_argument("--images", type=int, default=500)
    p.add_argument("--mnist-batch", type=int, default=100)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--skip-d16", action="store_true")
    p.add_argument("--skip-mnist", action="store_true")
    p.add_argument("--out-json", default="kv_policies.json")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    res = {"machine": f"{platform.processor() or platform.machine()}, {args.threads} threads, torch "
                      f"{torch.__version__}", "args": vars(args)}
    if not args.skip_mnist:
        res["mnist"] = bench_mnist(args)
    if not args.skip_d16:
        res["d16"] = bench_d16(args)
    print(tables(res))
    with open(args.out_json, "w") as f:
        json.dump(res, f, indent=1)
    print(f"wrote {args.out_json}")


if __name__ == "__main__":
    main()
