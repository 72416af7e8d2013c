"""Reference outputs of the OFFICIAL Infinity code for the bitwise family's parity test (tests/test_bitwise.py).

    .venv/bin/python bench/infinity_reference.py                     # writes ../shared/vectors/infinity_tiny
    .venv/bin/python bench/infinity_reference.py --out /tmp/inf --deps /work/infinity_bench_deps

The official code is never part of this repository.  At run time the files it needs are extracted with
``git cat-file`` from the local bare mirror (``--mirror``, default ``/work/.mirror/FoundationVision+Infinity/repo``)
into a temporary folder outside the repository and imported from there; nothing in them is edited:

* ``infinity/models/bsq_vae/multiscale_bsq.py`` (+ ``dynamic_resolution.py``, its relative import), as a package of
  its own: ``MultiScaleBSQ`` (the VAE's quantiser) and its ``BSQ`` (``lfq``).  It imports ``einops``, which is not an
  arvision dependency: ``--deps`` names a folder with it (``pip install --target DIR einops``).
* ``infinity/models/bitwise_self_correction.py``: ``BitwiseSelfCorrection.flip_requant``, where Infinity's training
  inputs and targets come from, on a stand-in ``vae`` object that holds the official quantiser.
* ``infinity/models/infinity.py`` is not imported (it needs flash-attn, timm, a CUDA build and a T5 text encoder):
  the function ``sample_with_top_k_top_p_also_inplace_modifying_logits_`` (the per-bit draw of
  ``autoregressive_infer_cfg``) is read out of the file with ``ast`` and executed on its own with ``torch``.

What is recorded in ``cases.pt`` (float32, CPU; ``config.json`` holds the settings):
* ``quant.f`` (B, d, H, W) random features (N(0, 1), seed ``--seed``); ``quant.bits.{s}`` (B, 1, h, w, d) the
  ``bit_indices`` and ``quant.out`` (B, d, H, W) the ``quantized_out`` of ``MultiScaleBSQ(dim=d,
  codebook_size=2^d, new_quant=True)`` in eval mode on ``scale_schedule`` = [(1, p, p) for p in patch_nums].
* ``bsc.bits.{s}`` (B, h*w, d) the targets and ``bsc.inputs`` (B, L - 1, d) the inputs ``x_BLC_wo_prefix`` of
  ``flip_requant`` without noise (``noise_apply_layers=-1``), same features.
* ``draw.logits.{i}`` (B, n, 2d) random logits, ``draw.bits.{i}`` (B, n, d) the official function's draw on them,
  reshaped to (B, n*d, 2) as ``autoregressive_infer_cfg`` does, from a CPU generator seeded ``draw.seed.{i}``,
  with the top-k / top-p of ``config.json["draws"][i]``.
"""

from __future__ import annotations

import argparse
import ast
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

MIRROR = Path("/work/.mirror/FoundationVision+Infinity/repo")
FILES = ("infinity/models/bsq_vae/multiscale_bsq.py", "infinity/models/bsq_vae/dynamic_resolution.py",
         "infinity/models/bitwise_self_correction.py", "infinity/models/infinity.py")
DRAWS = ({"top_k": 0, "top_p": 0.0}, {"top_k": 900, "top_p": 0.97}, {"top_k": 1, "top_p": 0.0},
         {"top_k": 0, "top_p": 0.6})


def extract(mirror: Path, into: Path) -> None:
    """The official files at the mirror's HEAD -> ``into``/bsq_vae/ (a package) and ``into``/."""
    (into / "bsq_vae").mkdir(parents=True)
    (into / "bsq_vae" / "__init__.py").write_text("")
    for path in FILES:
        text = subprocess.run(["git", "--git-dir", str(mirror), "cat-file", "-p", f"HEAD:{path}"], check=True,
                              capture_output=True, text=True).stdout
        target = into / "bsq_vae" / Path(path).name if "/bsq_vae/" in path else into / Path(path).name
        target.write_text(text)


def official_draw_function(source: str):
    """The per-bit sampler function of infinity.py, executed on its own (the rest of the file is not run)."""
    tree = ast.parse(source)
    name = "sample_with_top_k_top_p_also_inplace_modifying_logits_"
    node = next(n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == name)
    namespace = {"torch": torch}
    exec(compile(ast.Module(body=[node], type_ignores=[]), "infinity.py", "exec"), namespace)
    return namespace[name]


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--mirror", type=Path, default=MIRROR)
    p.add_argument("--deps", type=Path, default=Path("/work/infinity_bench_deps"), help="a folder holding einops")
    p.add_argument("--out", type=Path, default=Path(__file__).resolve().parents[1].parent / "shared" / "vectors"
                   / "infinity_tiny")
    p.add_argument("--bits", type=int, default=16)
    p.add_argument("--patch-nums", default="1,2,3,4,6,8")
    p.add_argument("--batch", type=int, default=3)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    sys.path.insert(0, str(args.deps))
    d, B = args.bits, args.batch
    pns = [int(x) for x in args.patch_nums.split(",")]
    cases: dict[str, torch.Tensor] = {}
    with tempfile.TemporaryDirectory() as tmp:
        extract(args.mirror, Path(tmp))
        sys.path.insert(0, tmp)
        from bitwise_self_correction import BitwiseSelfCorrection
        from bsq_vae.multiscale_bsq import MultiScaleBSQ

        draw = official_draw_function((Path(tmp) / "infinity.py").read_text())

        torch.manual_seed(args.seed)
        q = MultiScaleBSQ(dim=d, codebook_size=2 ** d, new_quant=True).eval()
        schedule = [(1, pn, pn) for pn in pns]
        f = torch.randn(B, d, pns[-1], pns[-1])
        with torch.no_grad():
            out, _, bits, *_ = q(f, scale_schedule=schedule)
        cases["quant.f"], cases["quant.out"] = f, out
        for s, b in enumerate(bits):
            cases[f"quant.bits.{s}"] = b.long()

        vae = type("VAE", (), {})()
        vae.quantizer, vae.codebook_dim = q, d
        opts = type("Args", (), {"noise_apply_layers": -1, "noise_apply_requant": 1, "noise_apply_strength": -1,
                                 "apply_spatial_patchify": 0, "debug_bsc": 0})()
        bsc = BitwiseSelfCorrection(vae, opts)
        with torch.no_grad():
            inputs, gt = bsc.flip_requant(schedule, None, f, "cpu")
        cases["bsc.inputs"] = inputs
        for s, b in enumerate(gt):
            cases[f"bsc.bits.{s}"] = b.long()

        for i, setting in enumerate(DRAWS):
            logits = torch.randn(B, 7, 2 * d) * 2
            rng = torch.Generator().manual_seed(1000 + i)
            pairs = logits.clone().reshape(B, -1, 2)
            drawn = draw(pairs, rng=rng, num_samples=1, **setting)[:, :, 0]
            cases[f"draw.logits.{i}"], cases[f"draw.seed.{i}"] = logits, torch.tensor(1000 + i)
            cases[f"draw.bits.{i}"] = drawn.reshape(B, 7, d)
    args.out.mkdir(parents=True, exist_ok=True)
    torch.save(cases, args.out / "cases.pt")
    commit = subprocess.run(["git", "--git-dir", str(args.mirror), "rev-parse", "HEAD"], capture_output=True,
                            text=True).stdout.strip()
    config = {"bits": d, "patch_nums": pns, "batch": B, "seed": args.seed, "draws": list(DRAWS),
              "official_commit": commit, "command": "bench/infinity_reference.py " + " ".join(sys.argv[1:])}
    (args.out / "config.json").write_text(json.dumps(config, indent=1) + "\n")
    (args.out / "README.md").write_text(
        "# infinity_tiny: Infinity's bitwise quantiser, self-correction chain and per-bit draw\n\n"
        "Made by arvision's `bench/infinity_reference.py` from the official code at commit "
        f"`{commit}` (see that script's docstring for every key of `cases.pt`; settings in `config.json`).\n")
    print(f"wrote {args.out} ({len(cases)} tensors)")


if __name__ == "__main__":
    main()
