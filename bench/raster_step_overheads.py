"""What the routes torch offers against a compiled raster step's non-GEMM time buy, on this CPU.

    PYTHONPATH=src python bench/raster_step_overheads.py /tmp/arvision-official-speed/llamagen/arvision_model \
        --rounds 5 --json /tmp/raster_step_overheads.json

On the GPT-B random-weight model of bench/official_speed.py (batch 1, cfg 4, fp32, tokens only), every variant is
``pipe.compile()`` of the full weights (frozen, each layer's GEMM autotuned: what ``arvision bench --compile`` and
``sample --compile`` run).  ``bench/profile_sampling.py --compile`` puts what is left beside the GEMMs at ~1.4 ms a
step of graph call and guard checks, a fused one-query attention kernel reading the cache at ~14 GB/s, and the
sampler; the variants try one route each:

1. as shipped;
2. ``cpp_wrapper``: inductor's C++ wrapper calls the kernels, no Python between them;
3. ``skip_guard_eval_unsafe`` (``torch.compiler.set_stance``): dynamo does not evaluate its guards at each call
   (unsafe in general: a call that should recompile would run the wrong graph; measured, not shipped);
4. the one-query attention through ``F.scaled_dot_product_attention`` (the aten CPU flash kernel, an extern call in
   the graph) instead of the q @ k^T, softmax, @ v that inductor fuses into one kernel.

All four are held in one process and timed in interleaved rounds (the VM's memory bandwidth moves by tens of per
cent from minute to minute); each reports the median seconds per image, every round, the first call (compiling
included) and whether its tokens equal variant 1's.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import time

import torch
import torch._inductor.config
import torch.nn.functional as F

import arvision.models.attention as attention
from arvision.bench import machine_info
from arvision.pipeline import ARPipeline

VARIANTS = ("as shipped", "cpp_wrapper", "guards skipped", "one-query attention via SDPA")
shipped_attend = attention.attend


def sdpa_attend(q, k, v, scale=None, mask=None, dropout=0.0, prefix=None):
    """``attention.attend`` with the one-query case sent to SDPA (variant 4)."""
    if prefix is None and mask is None and dropout == 0.0:
        return F.scaled_dot_product_attention(q, k, v, scale=scale)
    return shipped_attend(q, k, v, scale, mask, dropout, prefix)


@contextlib.contextmanager
def variant_context(variant: str, compiled: bool):
    """What variant ``variant`` changes, around each of its calls (the first one compiles under it; guards are
    skipped once it has: the stance refuses to compile).  compiled: whether the first call has been made."""
    with contextlib.ExitStack() as stack:
        if variant == "cpp_wrapper":
            stack.enter_context(torch._inductor.config.patch(cpp_wrapper=True))
        if variant == "guards skipped" and compiled:
            torch.compiler.set_stance("default", skip_guard_eval_unsafe=True)
            stack.callback(torch.compiler.set_stance, "default")
        if variant.endswith("SDPA"):
            attention.attend = sdpa_attend
            stack.callback(setattr, attention, "attend", shipped_attend)
        yield


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("model")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    kw = dict(guidance_scale=4.0, top_k=0, top_p=0, output_type="tokens", precision="fp32")

    def run(pipe, variant, compiled=True):
        with variant_context(variant, compiled):
            t0 = time.perf_counter()
            tokens = pipe([207], generator=torch.Generator().manual_seed(0), **kw).tokens
            return time.perf_counter() - t0, tokens

    pipes, results, reference = {}, {}, None
    for variant in VARIANTS:
        pipes[variant] = ARPipeline.from_pretrained(args.model).compile()
        first, tokens = run(pipes[variant], variant, compiled=False)
        reference = tokens if reference is None else reference
        results[variant] = {"first_call_seconds": first, "rounds": [],
                            "tokens_equal_shipped": bool(torch.equal(tokens, reference))}
        print(f"{variant}: first call {first:.1f} s (compiling included)", flush=True)
    for r in range(args.rounds):
        for variant in VARIANTS:
            results[variant]["rounds"].append(run(pipes[variant], variant)[0])
        print(f"round {r}: " + ", ".join(f"{v} {results[v]['rounds'][-1]:.2f} s" for v in VARIANTS), flush=True)
    base = statistics.median(results[VARIANTS[0]]["rounds"])
    for variant in VARIANTS:
        res = results[variant]
        res["median_seconds_per_image"] = med = statistics.median(res["rounds"])
        print(f"{variant:30s} median {med:5.2f} s/image ({med / base:4.2f}x as shipped), tokens equal to as "
              f"shipped: {res['tokens_equal_shipped']}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"machine": machine_info(), "threads": args.threads, "results": results}, f, indent=1)


if __name__ == "__main__":
    main()
