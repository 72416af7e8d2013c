"""``arvision bench``: the command line of :func:`arvision.bench.benchmark` (sampling speed and memory of a model),
and of its throughput mode :func:`arvision.bench.sweep_batch_sizes` (several batch sizes, or ``auto``).

    arvision bench MODEL --classes 207 --batch-size 1 --cfg 1.5 --top-k 900 --top-p 0.96 --precision auto --json
    arvision bench MODEL --classes 207 --batch-size 8 16 32 --json     # images/s per batch size
    arvision bench MODEL --batch-size auto --memory-budget 40GiB        # the best images/s within 40 GiB
"""

from __future__ import annotations

from arvision.cli import types
from arvision.cli.loading import model_help
from arvision.cli.sample import (
    add_compile_arg,
    add_knob_args,
    add_policy_args,
    add_weights_arg,
    apply_weights,
    check_sampling_args,
    compile_if_asked,
)
from arvision.errors import ArvisionError


def add_throughput_args(p, *, default_max: int = 64) -> None:
    """``--memory-budget`` and ``--max-batch-size``: the limits of ``--batch-size auto`` (shared with ``eval
    sample``)."""
    p.add_argument("--memory-budget", type=types.memory_size, default=None,
                   help="with --batch-size auto (or several): the peak memory a batch may use, e.g. 40GiB, 512MiB "
                        "(default: 90%% of what the device has available at start; on CPUs the process's whole "
                        "resident memory counts, weights included)")
    p.add_argument("--max-batch-size", type=types.positive_int, default=default_max,
                   help=f"with --batch-size auto: the largest batch size tried (default {default_max})")


def add_parser(sub) -> None:
    p = sub.add_parser("bench", help="measure sampling speed and memory of a model")
    p.add_argument("model", nargs="?", default=None, help=model_help())
    p.add_argument("--classes", type=types.class_id, nargs="+", default=[0],
                   help="class ids, repeated to fill the batch (default 0)")
    p.add_argument("--batch-size", type=types.batch_size, nargs="+", default=None,
                   help="images per batch (default: one per class); several (8 16 32) = throughput mode: images/s "
                        "per batch size; auto = doubling batch sizes, the best images/s within --memory-budget")
    add_throughput_args(p)
    p.add_argument("--seed", type=types.seed, default=0, help="seeds torch.Generator().manual_seed(SEED) (default 0)")
    add_knob_args(p)
    p.add_argument("--precision", choices=["auto", "fp32", "bf16"], default="auto",
                   help="auto = bf16 on GPUs and CPUs with AVX512-BF16/AMX, else fp32 through packed weights "
                        "(--weights); fp32 = the exact mode (default auto)")
    add_weights_arg(p)
    p.add_argument("--warmup", type=types.nonneg_int, default=1, help="untimed runs first (default 1)")
    p.add_argument("--repeat", type=types.positive_int, default=3, help="timed runs (default 3)")
    p.add_argument("--threads", type=types.threads, default=None,
                   help="CPU threads (default: torch's, one per core)")
    p.add_argument("--no-decode", action="store_true", help="time the tokens only")
    add_compile_arg(p, when=", in the warm-up runs (use --warmup >= 1: the report gives that time apart)")
    p.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    p.add_argument("--json", action="store_true", help="end with one JSON line of every number")
    add_policy_args(p)
    p.set_defaults(func=cmd_bench)


def batch_plan(sizes) -> list[int] | None:
    """``--batch-size`` values -> explicit sizes, or None for ``auto`` (which must stand alone)."""
    if "auto" in sizes:
        if len(sizes) > 1:
            raise ArvisionError("--batch-size auto stands alone: give either auto or a list of batch sizes")
        return None
    return list(sizes)


def cmd_bench(args) -> None:

    import torch


    check_sampling_args(args)
    if args.batch_size is not None:
        batch_plan(args.batch_size)  # refuse "auto 8" before the model is loaded
    before = torch.get_num_threads()
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    try:
        _bench(args)
    finally:  # a process-wide setting: an in-process call (tests, notebooks) must not leave it behind
        torch.set_num_threads(before)


def _bench(args) -> None:
    import json

    import torch

    from arvision.bench import (
        benchmark,
        default_memory_budget,
        format_report,
        format_sweep,
        machine_info,
        sweep_batch_sizes,
    )
    from arvision.cli.loading import load_pipeline
    from arvision.precision import resolve_precision

    pipe = load_pipeline(args.model, args.device)
    apply_weights(pipe, args)
    dtype = resolve_precision(args.precision, pipe.device)
    if dtype != torch.float32 and dtype != pipe.weight_dtype:
        pipe.to(dtype=dtype)  # weights cast once: half the memory, no per-call casts
    compile_if_asked(pipe, args, say=False)  # no line: the report gives the compile time apart (and --json is parsed)
    kw = dict(seed=args.seed, guidance_scale=args.cfg, top_k=args.top_k, top_p=args.top_p,
              temperature=args.temperature, precision=args.precision, warmup=args.warmup, repeat=args.repeat,
              decode=not args.no_decode, kv_policy=args.kv_policy, decoding=args.decoding)
    common = {"model": str(args.model or "bundled"), "compiled": bool(args.compile), "weights": args.weights,
              "kv_policy": args.kv_policy, "decoding": args.decoding, "machine": machine_info()}
    sizes = args.batch_size
    if sizes is not None and len(sizes) == 1 and sizes[0] != "auto":  # one batch: the plain report
        sizes = None
        args.batch_size = args.batch_size[0]
    if sizes is None:
        result = benchmark(pipe, args.classes, batch_size=args.batch_size, **kw)
        result.update(common)
        print(format_report(result))
        if args.json:
            print(json.dumps(result))
        return
    budget = args.memory_budget if args.memory_budget is not None else default_memory_budget(pipe.device)
    sweep = sweep_batch_sizes(
        pipe, args.classes, batch_plan(sizes), memory_budget=budget, max_batch_size=args.max_batch_size,
        on_result=lambda r: print(f"batch {r['batch_size']}: {r['images_per_second']:.3f} images/s", flush=True),
        **kw)
    print(format_sweep(sweep))
    if args.json:
        print(json.dumps({**sweep, **common}))
