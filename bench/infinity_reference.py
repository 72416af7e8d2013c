"""Reference outputs of the OFFICIAL Infinity code for the bitwise family's parity test (tests/test_bitwise.py).

    .venv/bin/python bench/infinity_reference.py                     # writes runs/references/infinity_tiny
    .venv/bin/python bench/infinity_reference.py --out /tmp/inf --deps /work/infinity_bench_deps

The official code is never part of this repository.  At run time every .py file under ``infinity/`` is extracted
with ``git cat-file`` from the local bare mirror (``--mirror``, default ``/work/.mirror/FoundationVision+Infinity/
repo``) into a temporary folder outside the repository and imported from there; nothing in them is edited.
``infinity/models/infinity.py`` imports flash-attn and timm unconditionally: both are stubbed in ``sys.modules``
(``stub_cuda_only_imports``; nothing here calls them).  ``multiscale_bsq.py`` imports ``einops``, which is not an
arvision dependency: ``--deps`` names a folder holding it (``pip install --target DIR einops``).  What runs:

* ``MultiScaleBSQ`` (the VAE's quantiser, ``bsq_vae/multiscale_bsq.py``) and its ``BSQ`` (``lfq``);
* ``BitwiseSelfCorrection.flip_requant`` (``bitwise_self_correction.py``), where Infinity's training inputs and
  targets come from, on a stand-in ``vae`` object holding the official quantiser;
* ``sample_with_top_k_top_p_also_inplace_modifying_logits_`` (the per-bit draw) and
  ``Infinity.autoregressive_infer_cfg`` itself (``infinity.py``) on a :class:`StandIn` object: Infinity's trunk (T5
  text, cross-attention, RoPE: GPU-only and not arvision's class-conditional trunk) replaced by a fixed affine
  stand-in that arvision's test rebuilds, so that the loop around it is compared: guidance on the logits
  (``cfg_insertion_layer=0``), the per-bit draw, ``indices_to_codes``, the summed canvas and the next input.

What is recorded in ``cases.pt`` (float32, CPU; ``config.json`` holds the settings):
* ``quant.f`` (B, d, H, W) random features (N(0, 1), seed ``--seed``); ``quant.bits.{s}`` (B, 1, h, w, d) the
  ``bit_indices`` and ``quant.out`` (B, d, H, W) the ``quantized_out`` of ``MultiScaleBSQ(dim=d,
  codebook_size=2^d, new_quant=True)`` in eval mode on ``scale_schedule`` = [(1, p, p) for p in patch_nums].
* ``bsc.bits.{s}`` (B, h*w, d) the targets and ``bsc.inputs`` (B, L - 1, d) the inputs ``x_BLC_wo_prefix`` of
  ``flip_requant`` without noise (``noise_apply_layers=-1``), same features.
* ``draw.logits.{i}`` (B, n, 2d) random logits, ``draw.bits.{i}`` (B, n, d) the official function's draw on them,
  reshaped to (B, n*d, 2) as ``autoregressive_infer_cfg`` does, from a CPU generator seeded ``draw.seed.{i}``,
  with the top-k / top-p of ``config.json["draws"][i]``.
* ``loop.{E,w_in,b_in,w_out,b_out}`` the stand-in trunk; ``loop.{i}.bits.{s}`` (B, h*w, d) the bits the official
  loop drew at scale s (recorded where it hands them to ``indices_to_codes``) and ``loop.{i}.canvas`` (B, d, H, W)
  the summed codes it decodes, for the labels / cfg_list / top-k / top-p / g_seed of ``config.json["loops"][i]``.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import types
from pathlib import Path

import torch
import torch.nn.functional as F

MIRROR = Path("/work/.mirror/FoundationVision+Infinity/repo")
DRAWS = ({"top_k": 0, "top_p": 0.0}, {"top_k": 900, "top_p": 0.97}, {"top_k": 1, "top_p": 0.0},
         {"top_k": 0, "top_p": 0.6})
# the sampling loop: (labels, cfg per scale, top-k, top-p, seed)
LOOPS = (([0, 2, 1], [3.0] * 6, 900, 0.97, 7), ([1, 1, 4], [1.0, 1.0, 4.0, 4.0, 2.0, 2.0], 0, 0.0, 11),
         ([3, 0, 2], [1.0] * 6, 1, 0.0, 3))


def extract(mirror: Path, into: Path) -> None:
    """Every .py file under infinity/ at the mirror's HEAD -> ``into``/infinity/..."""
    git = ["git", "--git-dir", str(mirror)]
    names = subprocess.run([*git, "ls-tree", "-r", "--name-only", "HEAD", "infinity/"], check=True,
                           capture_output=True, text=True).stdout.split()
    for path in (n for n in names if n.endswith(".py")):
        text = subprocess.run([*git, "cat-file", "-p", f"HEAD:{path}"], check=True, capture_output=True,
                              text=True).stdout
        (into / path).parent.mkdir(parents=True, exist_ok=True)
        (into / path).write_text(text)


def stub_cuda_only_imports() -> None:
    """Stand-ins for what infinity.py imports unconditionally and this CPU machine lacks: flash-attn (never called
    here: the stand-in trunk below has no attention) and timm (a decorator, DropPath, a loss class)."""

    def module(name, **attrs):
        m = types.ModuleType(name)
        m.__dict__.update(attrs)
        sys.modules[name] = m

    def unavailable(*args, **kwargs):
        raise RuntimeError("flash-attn is not available on this CPU")

    module("flash_attn", flash_attn_func=unavailable, flash_attn_varlen_kvpacked_func=unavailable)
    module("timm")
    module("timm.models", register_model=lambda f: f)
    module("timm.models.layers", DropPath=torch.nn.Identity, drop_path=lambda x, *a, **k: x)
    module("timm.loss", SoftTargetCrossEntropy=torch.nn.CrossEntropyLoss)


class _Block:
    """The stand-in trunk's one block: x + the condition row (what ``autoregressive_infer_cfg`` calls per block)."""

    attn = types.SimpleNamespace(kv_caching=lambda on: None)

    def __call__(self, x, cond_BD, **kwargs):
        return x + cond_BD[:, None]


class StandIn:
    """The attributes of an ``Infinity`` object that ``autoregressive_infer_cfg`` reads, around a stand-in trunk
    (tests/test_bitwise.py builds the same function on arvision's side): the condition of a row is a class embedding
    E[label] passed as a one-token "prompt" (the null class E[-1] as ``cfg_uncond``), step 0's hidden state is
    sos + pos_start (zeros), step s > 0's is ``w_in @ input + b_in``, the block adds the condition, logits =
    ``w_out @ h + b_out``.  Everything else (guidance on the logits, the per-bit draw, codes, canvas, next input) is
    the official loop's."""

    def __init__(self, E, w_in, b_in, w_out, b_out):
        C = E.shape[1]
        self.rng = torch.Generator()
        self.apply_spatial_patchify = 0
        self.cfg_uncond = E[-1:].clone()
        self.text_norm = self.text_proj_for_ca = self.norm0_ve = self.shared_ada_lin = lambda x: x
        self.text_proj_for_sos = lambda packed: packed[0]  # one token per row: the row's embedding
        self.pos_start = torch.zeros(1, 1, C)
        block = _Block()
        self.unregistered_blocks = [block]
        self.block_chunks = [types.SimpleNamespace(module=[block])]
        self.num_block_chunks = 1
        self.use_flex_attn, self.rope2d_freqs_grid = False, None
        self.add_lvl_embeding_only_first_block = 1
        self.add_lvl_embeding = lambda feature, *args, **kwargs: feature
        self.get_logits = lambda h, cond: F.linear(h, w_out, b_out)
        self.word_embed = lambda x: F.linear(x, w_in, b_in)
        self.use_bit_label, self.top_k, self.top_p = 1, 0, 0


def official_loop(infinity_module, quantizer, weights: dict, labels, cfg_list, top_k, top_p, seed, pns):
    """``Infinity.autoregressive_infer_cfg`` on the stand-in -> (per-scale bits (B, h*w, d), final canvas)."""
    B, seen, canvas = len(labels), [], {}
    lfq = quantizer.lfq

    def record(idx, label_type="int_label"):
        seen.append(idx.reshape(B, -1, idx.shape[-1]).long().clone())
        return lfq.indices_to_codes(idx, label_type=label_type)

    vae = types.SimpleNamespace(
        quantizer=types.SimpleNamespace(lfq=types.SimpleNamespace(indices_to_codes=record),
                                        z_interplote_up=quantizer.z_interplote_up),
        decode=lambda f: canvas.setdefault("f", f.clone()))
    E = weights["E"]
    prompts = (E[torch.as_tensor(labels)], [1] * B, torch.arange(B + 1, dtype=torch.int32), 1)
    model = StandIn(E, weights["w_in"], weights["b_in"], weights["w_out"], weights["b_out"])
    with torch.no_grad():
        infinity_module.Infinity.autoregressive_infer_cfg(
            model, vae=vae, scale_schedule=[(1, p, p) for p in pns], label_B_or_BLT=prompts, B=B, g_seed=seed,
            cfg_list=list(cfg_list), tau_list=[1.0] * len(pns), top_k=top_k, top_p=top_p, cfg_insertion_layer=[0],
            vae_type=1, returns_vemb=1, inference_mode=True, ret_img=True)
    return seen, canvas["f"]


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--mirror", type=Path, default=MIRROR)
    p.add_argument("--deps", type=Path, default=Path("/work/infinity_bench_deps"), help="a folder holding einops")
    p.add_argument("--out", type=Path, default=Path(__file__).resolve().parents[1] / "runs" / "references"
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
        stub_cuda_only_imports()
        import infinity.models.infinity as infinity_module
        from infinity.models.bitwise_self_correction import BitwiseSelfCorrection
        from infinity.models.bsq_vae.multiscale_bsq import MultiScaleBSQ

        torch.manual_seed(args.seed)
        q = MultiScaleBSQ(dim=d, codebook_size=2 ** d, new_quant=True).eval()
        schedule = [(1, pn, pn) for pn in pns]
        f = torch.randn(B, d, pns[-1], pns[-1])
        with torch.no_grad():
            out, _, bits, *_ = q(f, scale_schedule=schedule)
        cases["quant.f"], cases["quant.out"] = f, out
        for s, b in enumerate(bits):
            cases[f"quant.bits.{s}"] = b.long()

        vae = types.SimpleNamespace(quantizer=q, codebook_dim=d)
        opts = types.SimpleNamespace(noise_apply_layers=-1, noise_apply_requant=1, noise_apply_strength=-1,
                                     apply_spatial_patchify=0, debug_bsc=0)
        bsc = BitwiseSelfCorrection(vae, opts)
        with torch.no_grad():
            inputs, gt = bsc.flip_requant(schedule, None, f, "cpu")
        cases["bsc.inputs"] = inputs
        for s, b in enumerate(gt):
            cases[f"bsc.bits.{s}"] = b.long()

        draw = infinity_module.sample_with_top_k_top_p_also_inplace_modifying_logits_
        for i, setting in enumerate(DRAWS):
            logits = torch.randn(B, 7, 2 * d) * 2
            rng = torch.Generator().manual_seed(1000 + i)
            pairs = logits.clone().reshape(B, -1, 2)
            drawn = draw(pairs, rng=rng, num_samples=1, **setting)[:, :, 0]
            cases[f"draw.logits.{i}"], cases[f"draw.seed.{i}"] = logits, torch.tensor(1000 + i)
            cases[f"draw.bits.{i}"] = drawn.reshape(B, 7, d)

        C, classes = 32, 5
        weights = {"E": torch.randn(classes + 1, C), "w_in": torch.randn(C, d) / d ** 0.5, "b_in": torch.randn(C),
                   "w_out": torch.randn(2 * d, C) / C ** 0.5 * 2, "b_out": torch.randn(2 * d)}
        cases.update({f"loop.{k}": v for k, v in weights.items()})
        for i, (labels, cfg_list, top_k, top_p, seed) in enumerate(LOOPS):
            seen, canvas = official_loop(infinity_module, q, weights, labels, cfg_list, top_k, top_p, seed, pns)
            cases[f"loop.{i}.canvas"] = canvas
            for s, b in enumerate(seen):
                cases[f"loop.{i}.bits.{s}"] = b
    args.out.mkdir(parents=True, exist_ok=True)
    torch.save(cases, args.out / "cases.pt")
    commit = subprocess.run(["git", "--git-dir", str(args.mirror), "rev-parse", "HEAD"], capture_output=True,
                            text=True).stdout.strip()
    config = {"bits": d, "patch_nums": pns, "batch": B, "seed": args.seed, "draws": list(DRAWS),
              "loops": [{"labels": lab, "cfg_list": cfg, "top_k": k, "top_p": p, "seed": sd, "classes": 5}
                        for lab, cfg, k, p, sd in LOOPS],
              "official_commit": commit, "command": "bench/infinity_reference.py " + " ".join(sys.argv[1:])}
    (args.out / "config.json").write_text(json.dumps(config, indent=1) + "\n")
    (args.out / "README.md").write_text(
        "# infinity_tiny: Infinity's bitwise quantiser, self-correction chain and per-bit draw\n\n"
        "Made by arvision's `bench/infinity_reference.py` from the official code at commit "
        f"`{commit}` (see that script's docstring for every key of `cases.pt`; settings in `config.json`).\n")
    print(f"wrote {args.out} ({len(cases)} tensors)")


if __name__ == "__main__":
    main()
