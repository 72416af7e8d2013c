"""F.linear against weights packed once for oneDNN (``arvision.models.packed``), on this CPU, in fp32.

    .venv/bin/python bench/packed_linear.py --json /tmp/packed_linear.json

1. One layer at a time (weights hot in the cache): microseconds per call at M = 2 and 16 rows for the layer
   shapes of small to VAR-d16-sized models: where packing starts to pay (``MIN_WEIGHTS``).
2. A GPT-B step (12 layers of qkv 768x2304, proj 768x768, w1/w3 768x2048, w2 2048x768, the 768x16384 head: 390 MB of
   fp32 weights, more than any cache) at M = 2 rows (batch 1 with guidance) and 32: milliseconds per pass and the
   rate at which it streams the weights, beside torch.mv's rate on a 256 MiB matrix (the streaming probe of
   bench/official_speed.py) and a plain read (``sum``) of it.
3. The same rows-hint question: one packing for every row count (``ROWS_HINT``).
4. A VAR-d16 block's linear layers (qkv 1024x3072, proj 1024x1024, fc1 1024x4096, fc2 4096x1024) at the rows of each
   scale at batch 1 with guidance (2 to 512): GFLOP/s of F.linear and of the packed weights, beside torch.mm on
   2048 x 2048 (the GEMM probe of bench/official_speed.py, whose rate sets VAR's arithmetic floor).

Best of N timed repeats after warm-up, interleaved so that a busy neighbour slows every variant alike.
"""

from __future__ import annotations

import argparse
import json

import torch
import torch.nn.functional as F
from official_speed import best_seconds as best  # bench/ is the script's folder: on sys.path

from arvision.bench import machine_info
from arvision.models.packed import ROWS_HINT


def pack(w: torch.Tensor, hint: int = ROWS_HINT) -> torch.Tensor:
    return torch.ops.mkldnn._reorder_linear_weight(w, hint)


def packed_linear(x: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
    return torch.ops.mkldnn._linear_pointwise(x, p, None, "none", [], "")


def per_layer(repeat: int) -> list[dict]:
    rows = []
    shapes = [(192, 576), (192, 768), (256, 1024), (384, 1152), (512, 1536), (512, 2048), (768, 768), (768, 2304),
              (1024, 3072), (1024, 4096)]
    for K, N in shapes:
        W = torch.randn(N, K) * 0.02
        P = pack(W)
        for M in (2, 16):
            x = torch.randn(M, K)
            calls = 200

            def loop(f, x=x, calls=calls):
                def run():
                    for _ in range(calls):
                        f(x)
                return run
            a = best(loop(lambda x, W=W: F.linear(x, W)), repeat) / calls
            b = best(loop(lambda x, P=P: packed_linear(x, P)), repeat) / calls
            err = (packed_linear(x, P) - F.linear(x, W)).abs().max().item()
            rows.append({"K": K, "N": N, "M": M, "weights": K * N, "f_linear_us": a * 1e6, "packed_us": b * 1e6,
                         "speedup": a / b, "max_abs_diff": err})
            print(f"  {K:4d}x{N:<5d} M={M:2d}: F.linear {a * 1e6:7.1f} us, packed {b * 1e6:7.1f} us, "
                  f"{a / b:4.2f}x  (max |diff| {err:.1e})", flush=True)
    return rows


def gpt_b_step(repeat: int) -> dict:
    C, H, V, L = 768, 2048, 16384, 12
    torch.manual_seed(0)
    Ws = [torch.randn(n, k) * 0.02 for _ in range(L) for n, k in ((3 * C, C), (C, C), (H, C), (H, C), (C, H))]
    Ws.append(torch.randn(V, C) * 0.02)
    nbytes = sum(w.numel() * 4 for w in Ws)
    out = {"weight_bytes": nbytes, "rows": {}}
    packs = {hint: [pack(w, hint) for w in Ws] for hint in (2, ROWS_HINT, 512)}
    big = torch.randn(8192, 8192)
    vec = torch.randn(8192)
    for M in (2, 32):
        xs = {k: torch.randn(M, k) for k in (C, H)}
        res = {}
        for _ in range(2):  # two interleaved rounds, best of each kept
            t = best(lambda xs=xs: [F.linear(xs[w.shape[1]], w) for w in Ws], repeat)
            res["f_linear"] = min(res.get("f_linear", t), t)
            for hint, ps in packs.items():
                t = best(lambda xs=xs, ps=ps: [packed_linear(xs[w.shape[1]], p) for p, w in zip(ps, Ws)], repeat)
                res[f"packed_hint{hint}"] = min(res.get(f"packed_hint{hint}", t), t)
        out["rows"][M] = {k: {"ms": v * 1e3, "gb_per_s": nbytes / v / 1e9} for k, v in res.items()}
        for k, v in res.items():
            print(f"  GPT-B step, M={M:2d}, {k:16s} {v * 1e3:6.1f} ms  {nbytes / v / 1e9:5.1f} GB/s", flush=True)
    mv = best(lambda: torch.mv(big, vec), repeat)
    rd = best(lambda: big.sum(), repeat)
    out["mv_probe_gb_per_s"] = big.numel() * 4 / mv / 1e9
    out["sum_read_gb_per_s"] = big.numel() * 4 / rd / 1e9
    print(f"  torch.mv on 256 MiB: {out['mv_probe_gb_per_s']:.1f} GB/s; sum (a plain read): "
          f"{out['sum_read_gb_per_s']:.1f} GB/s", flush=True)
    return out


def var_scales(repeat: int) -> dict:
    shapes = [(1024, 3072), (1024, 1024), (1024, 4096), (4096, 1024)]  # (K, N): qkv, proj, fc1, fc2
    torch.manual_seed(0)
    Ws = [torch.randn(n, k) * 0.02 for k, n in shapes]
    Ps = [pack(w) for w in Ws]
    mats = [torch.randn(2048, 2048), torch.randn(2048, 2048)]
    out = {"rows": {}}
    probe = 0.0
    for M in (2, 8, 18, 32, 50, 72, 128, 200, 338, 512):  # VAR-d16's 10 scales: 2 x side^2 rows
        xs = [torch.randn(M, k) for k, _ in shapes]
        flops = sum(2 * M * k * n for k, n in shapes)
        a = best(lambda xs=xs: [F.linear(x, w) for x, w in zip(xs, Ws)], repeat)
        b = best(lambda xs=xs: [packed_linear(x, p) for x, p in zip(xs, Ps)], repeat)
        probe = max(probe, 2 * 2048 ** 3 / best(lambda: torch.mm(*mats), repeat))  # probed between the rows
        out["rows"][M] = {"f_linear_gflops": flops / a / 1e9, "packed_gflops": flops / b / 1e9}
        print(f"  VAR-d16 block, M={M:3d}: F.linear {flops / a / 1e9:5.0f} GFLOP/s, packed {flops / b / 1e9:5.0f} "
              f"GFLOP/s", flush=True)
    out["mm_probe_gflops"] = probe / 1e9
    print(f"  torch.mm 2048^3 (the GEMM probe), best seen: {probe / 1e9:.0f} GFLOP/s", flush=True)
    # VAR-d16's 16 blocks over its ten scales at these rates, against the same FLOPs at the probe's rate
    flops = {M: 16 * sum(2 * M * k * n for k, n in shapes) for M in out["rows"]}
    for kind in ("f_linear", "packed"):
        out[f"var_d16_blocks_{kind}_seconds"] = sum(f / (out["rows"][M][f"{kind}_gflops"] * 1e9)
                                                  for M, f in flops.items())
    out["var_d16_blocks_probe_seconds"] = sum(flops.values()) / probe
    print(f"  VAR-d16's 16 blocks over its 10 scales at these rates: F.linear "
          f"{out['var_d16_blocks_f_linear_seconds']:.2f} s, packed {out['var_d16_blocks_packed_seconds']:.2f} s, "
          f"at the probe's rate {out['var_d16_blocks_probe_seconds']:.2f} s ({sum(flops.values()) / 1e9:.0f} GFLOP)")
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--threads", type=int, default=None, help="intra-op threads (default: torch's)")
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--json", default=None, help="write every number here")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    machine = machine_info()
    print(f"{machine.get('cpu_model')}, {torch.get_num_threads()} threads, torch {torch.__version__}")
    print("1. one layer, weights in cache:")
    layers = per_layer(args.repeat)
    print("2-3. a GPT-B step, weights streamed from memory:")
    step = gpt_b_step(args.repeat)
    print("4. a VAR-d16 block at each scale's rows:")
    var = var_scales(args.repeat)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"machine": machine, "threads": torch.get_num_threads(), "rows_hint": ROWS_HINT,
                       "per_layer": layers, "gpt_b_step": step, "var_d16_scales": var}, f, indent=1)
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
