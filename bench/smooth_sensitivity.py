"""How sensitive VAR's ``more_smooth`` images are to rounding: the reason for the parity tests' SMOOTH_ATOL.

    .venv/bin/python bench/smooth_sensitivity.py [--vectors ../shared/vectors] [--trials 3]

For each VAR reference case with ``more_smooth`` (``var_tiny``, ``var_tiny_saln``: case 3), sample it as the
parity test does, then again after scaling every transformer weight by (1 + 1e-7 N(0,1)) -- a change below fp32's
epsilon, the size of the rounding differences between two CPUs' kernels -- and print whether the tokens stayed
identical and how far the image moved (max and mean absolute difference), next to the distance to the official
image.  The Gumbel softmax at temperature down to 0.0135 amplifies such differences wherever two codes nearly tie.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
from pathlib import Path

import torch

from arvision.pipeline import ARPipeline

REPO = Path(__file__).resolve().parents[1]


def cpu_name() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines() if Path("/proc/cpuinfo").exists() else []:
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.machine()


def sample(pipe, vectors: dict, sc: dict):
    """The reference case ``sc`` (one entry of config.json's "sampling"), sampled as the parity test does."""
    i = sc["case"]
    return pipe(vectors[f"sample.{i}.labels"].tolist(), guidance_scale=sc["cfg"], top_k=sc["top_k"],
                top_p=sc["top_p"], generator=torch.Generator().manual_seed(sc["g_seed"]), more_smooth=True,
                output_type="pt")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--vectors", type=Path,
                    default=Path(os.environ.get("ARVISION_VECTORS", REPO.parent / "shared" / "vectors")))
    ap.add_argument("--trials", type=int, default=3)
    args = ap.parse_args()
    print(f"cpu: {cpu_name()}, torch {torch.__version__}, "
          f"threads {torch.get_num_threads()}")
    for name in ("var_tiny", "var_tiny_saln"):
        folder = args.vectors / name
        config = json.loads((folder / "config.json").read_text())
        vectors = torch.load(folder / "cases.pt")
        pipe = ARPipeline.from_official("var", folder / "vae.pth", folder / "var.pth")
        for sc in config["sampling"]:
            if not sc["more_smooth"]:
                continue
            i = sc["case"]

            base = sample(pipe, vectors, sc)
            d = (base.images - vectors[f"sample.{i}.img"]).abs()
            print(f"{name} case {i}: against the official image max {d.max():.2e} mean {d.mean():.2e}")
            gen = torch.Generator().manual_seed(1)
            for trial in range(args.trials):
                saved = {k: v.clone() for k, v in pipe.transformer.state_dict().items()}
                with torch.no_grad():
                    for p in pipe.transformer.parameters():
                        p.mul_(1 + 1e-7 * torch.randn(p.shape, generator=gen))
                out = sample(pipe, vectors, sc)
                pipe.transformer.load_state_dict(saved)
                same = all(torch.equal(a, b) for a, b in zip(out.step_tokens, base.step_tokens))
                d = (out.images - base.images).abs()
                print(f"  weights x (1 + 1e-7 N(0,1)), trial {trial}: tokens identical {same}, "
                      f"image moved max {d.max():.2e} mean {d.mean():.2e}")


if __name__ == "__main__":
    main()
