"""Why `torch.compile` of the raster step is no faster than eager on a CPU: a diagnostic trial, not a feature.

    PYTHONPATH=src python bench/compile_raster_trial.py /tmp/arvision-official-speed/llamagen/arvision_model \
        --json /tmp/compile_trial.json

On the GPT-B random-weight model of bench/official_speed.py, batch 1, cfg 4, fp32 with packed weights, tokens only:

1. eager (what `--precision auto` runs on a CPU without fast bf16);
2. `pipe.compile()` (inductor) of the fixed-shape one-token step, the packed linear layers wrapped in a custom op so
   that inductor calls them opaquely (it lowers oneDNN's packed linear itself only for frozen constant weights);
3. the same with the KV cache held as one tensor per layer instead of one tensor for all layers (a stand-in list, for
   this trial only).

For each: seconds per image (best of --repeat after a warm-up that includes compiling), whether the tokens equal
eager's, and the profiler's self time of the compiled graphs' own code (the fused elementwise kernels, plus any
copies inductor adds).  The question it answers: writing one layer's slice of a cache tensor that holds every layer
is a mutation of a view of a graph input, and if inductor copies the whole buffer back at each write, the step pays
for it at every layer.
"""

from __future__ import annotations

import argparse
import json
import time

import torch
from torch.profiler import ProfilerActivity, profile

from arvision.bench import machine_info
from arvision.models import packed
from arvision.models import transformer as trunk
from arvision.pipeline import ARPipeline


@torch.library.custom_op("arvision_trial::packed_linear", mutates_args=())
def packed_linear(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    return torch.ops.mkldnn._linear_pointwise(x, w, None, "none", [], "")


@packed_linear.register_fake
def _(x, w):
    return x.new_empty(*x.shape[:-1], w.shape[0])


def opaque_forward(self, x, bias=None):
    y = packed_linear(x, self.packed)
    b = self.bias if bias is None else bias
    return y if b is None else y + b


class LayerList(list):
    """A list of per-layer cache tensors that answers the few things the loop asks of the one-tensor cache."""

    def __getitem__(self, i):
        return list.__getitem__(self, i[0])[i[1:]] if isinstance(i, tuple) else list.__getitem__(self, i)

    def __setitem__(self, i, v):
        if isinstance(i, tuple):
            list.__getitem__(self, i[0])[i[1:]] = v
        else:
            list.__setitem__(self, i, v)

    def numel(self):
        return sum(t.numel() for t in self)

    def element_size(self):
        return self[0].element_size()

    @property
    def dtype(self):
        return self[0].dtype


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("model")
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    kw = dict(guidance_scale=4.0, top_k=0, top_p=0, output_type="tokens", precision="fp32")
    plain_cache = trunk.ARTransformer.new_cache

    def per_layer_cache(self, *a, **k):
        cache = plain_cache(self, *a, **k)
        cache.k, cache.v = LayerList(t.clone() for t in cache.k), LayerList(t.clone() for t in cache.v)
        return cache

    results, reference = {}, None
    for variant in ("eager", "compiled, one cache tensor", "compiled, a cache tensor per layer"):
        trunk.ARTransformer.new_cache = per_layer_cache if "per layer" in variant else plain_cache
        if variant != "eager":
            packed.PackedLinear.forward = opaque_forward
        pipe = ARPipeline.from_pretrained(args.model).pack_weights()
        if variant != "eager":
            pipe.compile()

        def run(pipe=pipe):
            t0 = time.perf_counter()
            out = pipe([207], generator=torch.Generator().manual_seed(0), **kw)
            return time.perf_counter() - t0, out.tokens

        t0 = time.perf_counter()
        _, tokens = run()
        first = time.perf_counter() - t0
        best = min(run()[0] for _ in range(args.repeat))
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            run()
        graphs = sum(e.self_cpu_time_total for e in prof.key_averages() if "CompiledFxGraph" in e.key) / 1e6
        reference = tokens if reference is None else reference
        results[variant] = {"seconds_per_image": best, "first_call_seconds": first,
                            "compiled_graph_self_seconds": graphs, "tokens_equal_eager": bool(torch.equal(tokens,
                                                                                                         reference))}
        print(f"{variant:36s} {best:6.2f} s/image (first call {first:5.1f} s), compiled graphs' own time "
              f"{graphs:5.2f} s, tokens equal to eager: {results[variant]['tokens_equal_eager']}", flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"machine": machine_info(), "threads": args.threads, "results": results}, f, indent=1)


if __name__ == "__main__":
    main()
