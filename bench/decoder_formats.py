"""VAR's VAE decoder (vae_ch160v4096z32 shapes, random weights) at 256 px: precision x memory format.

Why the sampler decodes in the sampling precision under autocast with the default (contiguous) memory format:
this script measures the alternatives on the machine at hand.  Median of --repeat after one warm-up.

    python bench/decoder_formats.py [--batch 1] [--repeat 3]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from contextlib import nullcontext

import torch

from arvision.config import TokenizerConfig
from arvision.tokenizers.models import build_tokenizer


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    torch.manual_seed(0)
    tok = build_tokenizer(TokenizerConfig()).eval()  # the released VAR VAE's architecture
    f = torch.randn(args.batch, 32, 16, 16)
    results = {}
    for fmt in ("contiguous", "channels_last"):
        tok.to(memory_format=torch.channels_last if fmt == "channels_last" else torch.contiguous_format)
        for prec in ("fp32", "bf16"):
            ctx = (lambda: torch.autocast("cpu", dtype=torch.bfloat16)) if prec == "bf16" else nullcontext
            times = []
            with torch.no_grad():
                for i in range(args.repeat + 1):
                    t0 = time.perf_counter()
                    with ctx():
                        tok.decode_features(f)
                    if i:
                        times.append(time.perf_counter() - t0)
            results[f"{prec} {fmt}"] = statistics.median(times) / args.batch
            print(f"{prec:5s} {fmt:14s} {results[f'{prec} {fmt}']:.3f} s per image", flush=True)
    print(json.dumps({"batch": args.batch, "threads": torch.get_num_threads(), "seconds_per_image": results}))


if __name__ == "__main__":
    main()
