"""What `torch.compile` of the raster step gains on a CPU, and why the KV cache is one tensor per layer.

    PYTHONPATH=src python bench/compile_raster_trial.py /tmp/arvision-official-speed/llamagen/arvision_model \
        --json /tmp/compile_trial.json

On the GPT-B random-weight model of bench/official_speed.py, batch 1, cfg 4, fp32, tokens only:

1. eager with packed weights (what `--precision auto` runs on a CPU without fast bf16);
2. `pipe.pack_weights().compile()`: inductor with freezing, so the packed weights are graph constants and inductor
   calls oneDNN's packed linear itself, the small ops between those calls fused; one graph for every position (the
   cache length is a dynamic dimension);
3. the same with the KV cache held as views of one tensor for all layers (the layout before this trial, a stand-in
   subclass here): a layer's write is then a mutation of a view of a graph input;
4. `pipe.compile()` of the full weights (what `arvision bench --compile` runs): frozen too, and inductor measures
   its own C++ GEMM against MKL's packed one for every layer as it compiles and keeps the faster.

For each: seconds per image (best of --repeat after a warm-up that includes compiling), the first call's time
(compiling included), whether the tokens equal eager's, and the profiler's self time of the compiled graphs' own
code (the fused elementwise kernels, plus any copies inductor adds; in 4 also the generated GEMMs, which are that
code too).
"""

from __future__ import annotations

import argparse
import json
import time

import torch
import torch._inductor.config
from torch._dynamo.utils import counters
from torch.profiler import ProfilerActivity, profile

from arvision.bench import machine_info
from arvision.models import transformer as trunk
from arvision.models.attention import KVCache
from arvision.pipeline import ARPipeline


class AllLayersCache(KVCache):
    """The one-tensor layout: every layer's keys and values are views of one (depth, B, H, L, hd) tensor."""

    def __init__(self, depth, *args, **kwargs):
        super().__init__(1, *args, **kwargs)
        k, v = self.k[0], self.v[0]
        self.k = list(k.new_empty(depth, *k.shape).unbind(0))
        self.v = list(v.new_empty(depth, *v.shape).unbind(0))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("model")
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    # measure every GEMM choice again, as a process on a fresh machine would (not read from an earlier run's cache):
    # the first call's time then includes the measuring
    torch._inductor.config.autotune_local_cache = False
    kw = dict(guidance_scale=4.0, top_k=0, top_p=0, output_type="tokens", precision="fp32")
    results, reference = {}, None
    variants = ("eager, packed", "compiled, packed", "compiled, packed, one cache tensor for all layers",
                "compiled, full weights (inductor's GEMMs)")
    for variant in variants:
        trunk.KVCache = AllLayersCache if "one cache tensor" in variant else KVCache
        pipe = ARPipeline.from_pretrained(args.model)
        if "packed" in variant:
            pipe.pack_weights()
        if variant.startswith("compiled"):
            torch._dynamo.reset()
            counters.clear()
            pipe.compile()

        def run(pipe=pipe):
            t0 = time.perf_counter()
            out = pipe([207], generator=torch.Generator().manual_seed(0), **kw)
            return time.perf_counter() - t0, out.tokens

        first, tokens = run()  # compiles, for the compiled variants
        # the layers inductor autotuned, and how many of them its C++ GEMM template won (the rest: the library's)
        gemms = {"autotuned": counters["inductor"]["select_algorithm_autotune"],
                 "cpp_template": counters["inductor"]["cpp_templated_kernel_counter"]}
        best = min(run()[0] for _ in range(args.repeat))
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            run()
        graphs = sum(e.self_cpu_time_total for e in prof.key_averages() if "CompiledFxGraph" in e.key) / 1e6
        reference = tokens if reference is None else reference
        results[variant] = {"seconds_per_image": best, "first_call_seconds": first, "gemms": gemms,
                            "compiled_graph_self_seconds": graphs,
                            "tokens_equal_eager": bool(torch.equal(tokens, reference))}
        print(f"{variant:50s} {best:6.2f} s/image (first call {first:5.1f} s), compiled graphs' own time "
              f"{graphs:5.2f} s, tokens equal to eager: {results[variant]['tokens_equal_eager']}; GEMMs autotuned "
              f"{gemms['autotuned']}, won by inductor's template {gemms['cpp_template']}", flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"machine": machine_info(), "threads": args.threads, "results": results}, f, indent=1)


if __name__ == "__main__":
    main()
