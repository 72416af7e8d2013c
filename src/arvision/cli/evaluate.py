"""``arvision eval``: FID and friends, the evaluation sampler, the tokenizer benchmark, digit classification.

    arvision eval fid REAL GEN [--sfid] [--pr] [--kid]       # folders or .npz; prints "FID <value>"
    arvision eval sample [MODEL] --per-class 50 --out DIR   # torchrun-shardable, resumable; DIR/samples.npz
    arvision eval tokenizer [MODEL] --data photos,text      # PSNR / SSIM / perceptual / rFID / usage table
    arvision eval classify DIR [--fid-real mnist-5k]        # digit accuracy (labels from *_classK.png names)
    arvision eval geneval shapes --per-prompt 4 --seed 0   # the text-to-image benchmark (arvision.cli.geneval)
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import numpy as np
import torch

from arvision.cli import types
from arvision.cli.bench import add_throughput_args
from arvision.cli.loading import model_help
from arvision.cli.sample import add_compile_arg, add_knob_args, add_weights_arg, apply_weights, compile_if_asked
from arvision.errors import ArvisionError
from arvision.evaluation import tokenizer_bench as tb


def add_parsers(sub) -> None:
    p = sub.add_parser("eval", help="evaluate: fid, sample, tokenizer, classify, geneval")
    esub = p.add_subparsers(dest="eval_command", required=True, metavar="WHAT")

    e = esub.add_parser("fid", help="FID between two image sets (folders of PNG/JPG, or .npz files)")
    e.add_argument("real", help="folder, or .npz with mu/sigma (ADM reference batch), activations, or arr_0 images")
    e.add_argument("gen", help="folder or .npz, as REAL")
    e.add_argument("--sfid", action="store_true", help="also sFID (spatial mixed_6/conv features, as ADM)")
    e.add_argument("--pr", action="store_true", help="also improved precision/recall (k=3)")
    e.add_argument("--kid", action="store_true", help="also KID (polynomial kernel, 100 subsets)")
    e.add_argument("--batch-size", type=types.positive_int, default=50, help="images per Inception batch (default 50)")
    e.add_argument("--cache-dir", default=None, help="cache features of folders here as .npz (default: no cache)")
    e.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    e.set_defaults(func=cmd_fid)

    e = esub.add_parser("sample", help="N images per class with per-image seeds, resumable, torchrun-shardable")
    e.add_argument("model", nargs="?", default=None, help=model_help())
    e.add_argument("--out", required=True, help="output folder: {i:06d}_class{k}.png, spec.json, samples.npz")
    e.add_argument("--per-class", type=types.positive_int, default=50, help="images per class (default 50)")
    e.add_argument("--classes", type=types.class_id, nargs="+", default=None, help="default: every class")
    e.add_argument("--seed", type=types.seed, default=0, help="image i is seeded with SEED + i (default 0)")
    add_knob_args(e)
    e.add_argument("--batch-size", type=types.batch_size, default=25,
                   help="images per forward batch, or auto: measure doubling batch sizes first and sample with the "
                        "one of most images/s within --memory-budget (the images do not depend on it) (default 25)")
    add_throughput_args(e, default_max=256)
    e.add_argument("--precision", choices=["auto", "fp32", "bf16"], default="fp32",
                   help="fp32 = exact official tokens (default); auto = bf16 where the hardware is fast at it, "
                        "else fp32 through packed weights (--weights)")
    add_weights_arg(e)
    add_compile_arg(e, when=" (--batch-size auto measures the sizes before compiling)")
    e.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    e.set_defaults(func=cmd_sample)

    add_tokenizer_parser(esub)
    from arvision.cli import geneval

    geneval.add_parser(esub)

    e = esub.add_parser("classify", help="classify digit images with the shipped mnist-5k classifier")
    e.add_argument("folder", help="folder of PNG/JPG digits; labels are read from names like 000012_class7.png")
    e.add_argument("--fid-real", choices=["mnist-5k"], default=None,
                   help="also the FID on the classifier's features against the 5,000 real digits")
    e.set_defaults(func=cmd_classify)


# -- fid ----------------------------------------------------------------------------------------------------

def cmd_fid(args) -> None:
    from arvision.evaluation.fid import frechet_distance
    from arvision.evaluation.sources import FeatureSource, lazy_extractor
    from arvision.images import check_output_dir

    for path in (args.real, args.gen):  # both, before the first one's features are computed
        p = Path(path).expanduser()  # as FeatureSource reads it
        if not (p.is_dir() or (p.is_file() and p.suffix == ".npz")):
            raise ArvisionError(f"not found: {p} (expected a folder of images or an .npz)" if not p.exists()
                                else f"{p} is neither a folder nor an .npz file")
    if args.cache_dir:
        check_output_dir(args.cache_dir, "feature caches")
    extractor = lazy_extractor(args.batch_size, args.device, progress=True)
    need_acts = args.pr or args.kid
    real, gen = (FeatureSource(path, need_acts=need_acts, need_spatial=args.sfid, extractor=extractor,
                               batch_size=args.batch_size, cache_dir=args.cache_dir)
                 for path in (args.real, args.gen))
    print(f"FID {frechet_distance(real.mu, real.sigma, gen.mu, gen.sigma):.6f}")
    if args.sfid:
        print(f"sFID {frechet_distance(real.mu_s, real.sigma_s, gen.mu_s, gen.sigma_s):.6f}")
    if args.pr:
        from arvision.evaluation.metrics import precision_recall

        precision, recall = precision_recall(real.acts, gen.acts, k=3)
        print(f"precision {precision:.6f}")
        print(f"recall {recall:.6f}")
    if args.kid:
        from arvision.evaluation.metrics import kid

        mean, std = kid(real.acts, gen.acts)
        print(f"KID {mean:.6f} +- {std:.6f}")


# -- sample -------------------------------------------------------------------------------------------------

def cmd_sample(args) -> None:
    from arvision.bundled import bundled_model_dir
    from arvision.evaluation.sampler import EvalSamplingSpec, check_spec, pack_npz, sample_for_evaluation
    from arvision.images import check_output_dir
    from arvision.pipeline import ARPipeline
    from arvision.training.distributed import barrier, init_distributed

    check_output_dir(args.out)
    info = init_distributed(args.device)
    model = args.model if args.model else str(bundled_model_dir())
    pipe = ARPipeline.from_pretrained(model, device=info.device)
    apply_weights(pipe, args)
    spec = EvalSamplingSpec(per_class=args.per_class, classes=tuple(args.classes) if args.classes else None,
                            seed=args.seed, guidance_scale=args.cfg, top_k=args.top_k, top_p=args.top_p,
                            temperature=args.temperature, precision=args.precision)
    labels = spec.labels(pipe.config.num_classes)
    if info.is_main:  # before any rank writes: refuse a folder drawn with other settings
        check_spec(args.out, spec, Path(model).name)
    barrier(info)
    batch_size = args.batch_size
    if batch_size == "auto":
        batch_size = _auto_batch_size(pipe, spec, labels, args, info)
    compile_if_asked(pipe, args, say=info.is_main)  # after --batch-size auto's measuring, which times the eager step
    written = sample_for_evaluation(pipe, args.out, spec, batch_size=batch_size, rank=info.rank,
                                    world=info.world, model_name=Path(model).name)
    barrier(info)
    if info.is_main:
        path = pack_npz(args.out, labels)
        print(f"wrote {len(written)} new image(s) (rank 0); {len(labels)} in {args.out}; packed {path}")


def _auto_batch_size(pipe, spec, labels: list[int], args, info) -> int:
    """The batch size of most images per second within the memory budget, measured on this rank's device with the
    run's own settings (one warm-up and one timed batch per size: doubling sizes up to --max-batch-size, capped
    at this rank's share of the images)."""
    from arvision.bench import default_memory_budget, sweep_batch_sizes

    share = max(1, len(range(info.rank, len(labels), info.world)))
    budget = args.memory_budget if args.memory_budget is not None else default_memory_budget(pipe.device)
    sweep = sweep_batch_sizes(pipe, sorted(set(labels)), memory_budget=budget,
                              max_batch_size=min(args.max_batch_size, share), seed=spec.seed,
                              guidance_scale=spec.guidance_scale, top_k=spec.top_k, top_p=spec.top_p,
                              temperature=spec.temperature, precision=spec.precision, warmup=1, repeat=1)
    if sweep["best"] is None:
        mib = (budget or 0) / 2**20
        raise ArvisionError(f"--batch-size auto: even one image per batch needs more than the {mib:.0f} MiB memory "
                            "budget; raise --memory-budget")
    tried = ", ".join(f"{r['batch_size']}: {r['images_per_second']:.2f}" for r in sweep["results"]
                      if "images_per_second" in r)
    if info.is_main:
        print(f"batch size auto: {sweep['best_batch_size']} (images/s per batch size {tried}; {sweep['stopped']})",
              flush=True)
    return sweep["best_batch_size"]


# -- tokenizer --------------------------------------------------------------------------------------------


def add_tokenizer_parser(esub) -> argparse.ArgumentParser:
    """Register ``tokenizer`` on the ``arvision eval`` sub-parsers ``esub``; the command runs ``args.func(args)``."""
    p = esub.add_parser("tokenizer", help="reconstruction quality and codebook usage of a model's tokenizer",
                        description="Encode and decode images with a model's tokenizer; print a Markdown table of "
                                    "PSNR, SSIM, an Inception-feature perceptual distance, rFID and per-scale "
                                    "codebook usage / perplexity.")
    p.add_argument("model", nargs="?", help=model_help())
    p.add_argument("--data", default=",".join(tb.DATASETS),
                   help=f"comma-separated datasets among {', '.join(tb.DATASETS)} (default: all)")
    p.add_argument("--n", type=types.positive_int, default=16, help="images per dataset (default 16)")
    p.add_argument("--seed", type=types.seed, default=0, help="which images of each dataset are taken (default 0)")
    p.add_argument("--batch-size", type=types.positive_int, default=32, help="images per batch (default 32)")
    p.add_argument("--out-png", help="write original | reconstruction pairs here (one row per dataset)")
    p.add_argument("--json", help="write the results (without images) as JSON here")
    p.add_argument("--no-inception", action="store_true", help="skip the perceptual distance and rFID (fast)")
    p.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    p.set_defaults(func=cmd_tokenizer)
    return p


def cmd_tokenizer(args) -> None:
    import json

    from arvision.cli.loading import load_pipeline
    from arvision.images import check_output_file

    names = [tb._check_dataset(d) for d in str(args.data).split(",") if d.strip()]
    if not names:
        raise ArvisionError(f"--data names no dataset; choose among {', '.join(tb.DATASETS)}")
    tb._check_n(args.n)
    if args.out_png:
        check_output_file(args.out_png, image=True)
    if args.json:
        check_output_file(args.json, suffix=".json")
    pipe = load_pipeline(args.model, args.device)
    results = [tb.benchmark_tokenizer(pipe, d, n=args.n, seed=args.seed, batch_size=args.batch_size,
                                   inception=not args.no_inception) for d in names]
    print(tb.format_table(results))
    if args.out_png:
        tb.write_side_by_side(results, args.out_png)
    if args.json:
        Path(args.json).write_text(json.dumps({"model": str(args.model or "bundled"),
                                               "results": tb.to_jsonable(results)}, indent=2))


# -- classify -----------------------------------------------------------------------------------------------

_LABEL = re.compile(r"class(\d+)")


def cmd_classify(args) -> None:
    from arvision.evaluation.classifier import classifier_report
    from arvision.evaluation.inception import list_image_files
    from arvision.images import read_image

    files = list_image_files(args.folder)
    labels = [_LABEL.search(f.stem) for f in files]
    known = all(m is not None for m in labels)
    images = [np.asarray(read_image(f)) for f in files]
    if len({im.shape for im in images}) > 1:
        raise ArvisionError(f"images in {args.folder} differ in size; classify one size at a time")
    x = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).contiguous()
    report = classifier_report(x, [int(m.group(1)) for m in labels] if known else None,
                               fid_real=args.fid_real)
    print(f"images {len(files)}")
    if known:
        print(f"accuracy {report['accuracy']:.4f}")
        for k, acc in sorted(report["per_class"].items()):
            print(f"class {k}: accuracy {acc:.4f}")
    else:
        print("no labels in the file names (expected *_class<k>.png); predicted counts:")
        for k, c in enumerate(report["counts"]):
            print(f"class {k}: {c}")
    if args.fid_real:
        print(f"classifier-FID vs {args.fid_real} {report['fid']:.6f}")
