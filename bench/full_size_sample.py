"""Where the time goes at full size: build + save, from_official, token sampling, decoding.

Uses the same random official-layout checkpoints as tests/test_full_size.py (built from the released key
lists in <repo>/../shared/research/).  Usage:

    python bench/full_size_sample.py [var|llamagen ...] [--repeat N]
"""

from __future__ import annotations

import argparse
import gc
import json
import resource
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

import test_full_size as tfs  # noqa: E402
from arvision import ARPipeline  # noqa: E402


def _rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


class Timer:
    def __init__(self, label: str):
        self.label = label

    def __enter__(self):
        self.t0 = time.perf_counter()
        return self

    def __exit__(self, *exc):
        self.seconds = time.perf_counter() - self.t0
        print(f"  {self.label:<28s} {self.seconds:7.2f} s   (peak RSS so far {_rss_gb():.2f} GB)", flush=True)


def bench(family: str, folder: Path, repeat: int) -> None:
    print(f"{family}: torch {torch.__version__}, {torch.get_num_threads()} threads", flush=True)
    if family == "var":
        shapes = json.loads(tfs.VAR_SHAPES.read_text())
        specs = shapes["vqvae_vae_ch160v4096z32"]["state_dict"], shapes["var_d16"]["state_dict"]
        builders = tfs.build_var_vae, tfs.build_var_transformer
        names = "vae_ch160v4096z32.pth", "var_d16.pth"
        kwargs = dict(guidance_scale=1.5, top_k=900, top_p=0.96)
    else:
        shapes = json.loads(tfs.LLAMAGEN_SHAPES.read_text())
        specs = shapes["VQ-16"]["state_dict"], shapes["GPT-B_256"]["state_dict"]
        builders = (lambda s: tfs.build_llamagen(s, 3)), (lambda s: tfs.build_llamagen(s, 4))
        names = "vq_ds16_c2i.pt", "c2i_B_256.pt"
        kwargs = dict(guidance_scale=4.0, top_k=0, top_p=0.0)
    paths = []
    for spec, build, name in zip(specs, builders, names):
        with Timer(f"build + save {name}"):
            paths.append(tfs._save(build(spec), folder / name))
        gc.collect()
    with Timer("from_official"):
        pipe = ARPipeline.from_official(family, *paths)
    for _ in range(repeat):
        with Timer("sample tokens (B=1)"):
            out = pipe(207, generator=torch.Generator().manual_seed(0), output_type="tokens", **kwargs)
        with Timer("decode tokens -> image"):
            pipe.decode(out.tokens)
        with Timer("sample + decode (pt)"):
            pipe(207, generator=torch.Generator().manual_seed(0), output_type="pt", **kwargs)
    with Timer("official_state_dicts"):
        pipe.official_state_dicts()
    del pipe
    gc.collect()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("families", nargs="*", default=["var", "llamagen"])
    ap.add_argument("--repeat", type=int, default=1)
    args = ap.parse_args()
    for family in args.families:
        with tempfile.TemporaryDirectory() as tmp:
            bench(family, Path(tmp), args.repeat)


if __name__ == "__main__":
    main()
