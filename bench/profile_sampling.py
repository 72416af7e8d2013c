"""Where one image's sampling time goes: torch.profiler over one call, after one warm-up call.

    PYTHONPATH=src python bench/profile_sampling.py /tmp/arvision-official-speed/llamagen/arvision_model \
        --cfg 4 --top-k 0 --top-p 0 --weights int8      # or fp32 (exact), fp32-packed (`auto` on AVX2)

Prints the operators by self CPU time and, per operator, its share of the profiled total (tokens only, no decode).
``--compile``: ``pipe.compile()`` first (the warm-up call compiles), with inductor's per-kernel profiling on, so
that each generated kernel (fused elementwise ops, inductor's own GEMMs) is a row of its own rather than one
``CompiledFxGraph`` row.
"""

from __future__ import annotations

import argparse
import time

import torch
import torch._inductor.config
from torch.profiler import ProfilerActivity, profile

from arvision.pipeline import ARPipeline


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("model")
    ap.add_argument("--classes", type=int, nargs="+", default=[207])
    ap.add_argument("--cfg", type=float, default=None)
    ap.add_argument("--top-k", type=int, default=None)
    ap.add_argument("--top-p", type=float, default=None)
    ap.add_argument("--weights", choices=["bf16", "int8", "fp32", "fp32-packed"], default="bf16",
                    help="fp32: the exact path; fp32-packed: what `auto` runs on CPUs without AVX512-BF16/AMX")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rows", type=int, default=15)
    ap.add_argument("--compile", action="store_true", help="pipe.compile() first; its kernels profiled one by one")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    pipe = ARPipeline.from_pretrained(args.model)
    if args.weights == "int8":
        pipe.quantize_weights("int8")
    elif args.weights == "bf16":
        pipe.to(dtype=torch.bfloat16)
    elif args.weights == "fp32-packed":
        pipe.pack_weights()
    precision = "fp32" if args.weights.startswith("fp32") else "bf16"
    if args.compile:
        torch._inductor.config.cpp.enable_kernel_profile = True  # read when the warm-up call compiles
        pipe.compile()
    kw = dict(guidance_scale=args.cfg, top_k=args.top_k, top_p=args.top_p, output_type="tokens", precision=precision)
    pipe(args.classes, generator=torch.Generator().manual_seed(0), **kw)  # warm-up
    t = time.perf_counter()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        pipe(args.classes, generator=torch.Generator().manual_seed(0), **kw)
    wall = time.perf_counter() - t
    events = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
    total = sum(e.self_cpu_time_total for e in events)
    print(f"{args.model}, weights {args.weights}, classes {args.classes}: {wall:.2f} s under the profiler, "
          f"{total / 1e6:.2f} s of operator self time")
    print(f"{'operator':36s} {'self s':>8s} {'share':>7s} {'calls':>8s}")
    for e in events[:args.rows]:
        print(f"{e.key:36s} {e.self_cpu_time_total / 1e6:8.3f} {e.self_cpu_time_total / total:7.1%} {e.count:8d}")


if __name__ == "__main__":
    main()
