"""``arvision bench``: the command line of :func:`arvision.bench.benchmark` (sampling speed and memory of a model).

    arvision bench MODEL --classes 207 --batch-size 1 --cfg 1.5 --top-k 900 --top-p 0.96 --precision auto --json
"""

from __future__ import annotations

from arvision.cli import types
from arvision.cli.loading import model_help
from arvision.cli.sample import add_knob_args, add_policy_args, apply_weights, check_sampling_args


def add_parser(sub) -> None:
    p = sub.add_parser("bench", help="measure sampling speed and memory of a model")
    p.add_argument("model", nargs="?", default=None, help=model_help())
    p.add_argument("--classes", type=types.class_id, nargs="+", default=[0],
                   help="class ids, repeated to fill the batch (default 0)")
    p.add_argument("--batch-size", type=types.positive_int, default=None,
                   help="images per batch (default: one per class)")
    p.add_argument("--seed", type=types.seed, default=0, help="seeds torch.Generator().manual_seed(SEED) (default 0)")
    add_knob_args(p)
    p.add_argument("--precision", choices=["auto", "fp32", "bf16"], default="auto",
                   help="auto = bf16 on GPUs and CPUs with AVX512-BF16/AMX, else fp32 (exact) (default "
                        "auto)")
    p.add_argument("--weights", choices=["full", "int8"], default="full",
                   help="int8: weight-only int8 linear layers with bf16 activations (half of bf16's bytes; lossy; "
                        "default full)")
    p.add_argument("--warmup", type=types.nonneg_int, default=1, help="untimed runs first (default 1)")
    p.add_argument("--repeat", type=types.positive_int, default=3, help="timed runs (default 3)")
    p.add_argument("--threads", type=types.threads, default=None,
                   help="CPU threads (default: torch's, one per core)")
    p.add_argument("--no-decode", action="store_true", help="time the tokens only")
    p.add_argument("--compile", action="store_true",
                   help="torch.compile the step function (compiles during the warm-up runs: use --warmup >= 1)")
    p.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    p.add_argument("--json", action="store_true", help="end with one JSON line of every number")
    add_policy_args(p)
    p.set_defaults(func=cmd_bench)


def cmd_bench(args) -> None:

    import torch


    check_sampling_args(args)
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

    from arvision.bench import benchmark, format_report
    from arvision.cli.loading import load_pipeline
    from arvision.precision import resolve_precision

    pipe = load_pipeline(args.model, args.device)
    apply_weights(pipe, args)
    dtype = resolve_precision(args.precision, pipe.device)
    if dtype != torch.float32:
        pipe.to(dtype=dtype)  # weights cast once: half the memory, no per-call casts
    if args.compile:
        pipe.compile()
    result = benchmark(pipe, args.classes, batch_size=args.batch_size, seed=args.seed, guidance_scale=args.cfg,
                       top_k=args.top_k, top_p=args.top_p, temperature=args.temperature,
                       precision=args.precision, warmup=args.warmup, repeat=args.repeat, decode=not args.no_decode,
                       kv_policy=args.kv_policy, decoding=args.decoding)
    result["model"] = str(args.model or "bundled")
    result["compiled"] = bool(args.compile)
    result["weights"] = args.weights
    result["kv_policy"], result["decoding"] = args.kv_policy, args.decoding
    print(format_report(result))
    if args.json:
        print(json.dumps(result))
