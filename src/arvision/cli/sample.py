"""``arvision sample``, ``info`` and ``demo``: drawing images from a model folder (or the bundled model).

    arvision sample [MODEL] --classes 1 3 7 --seed 42 --out grid.png
    arvision info MODEL
    arvision demo

Also what other commands share with ``sample``: the loop's efficiency options (:func:`add_policy_args`, also
``bench``), ``--weights int8`` (:func:`apply_weights`, also ``bench``) and :func:`describe` (also ``convert``).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from arvision.cli import types
from arvision.cli.loading import load_pipeline
from arvision.cli.watermark import add_sample_args as add_watermark_args
from arvision.cli.watermark import spec_from_args
from arvision.errors import ArvisionError


def add_policy_args(p: argparse.ArgumentParser) -> None:
    """The loop's efficiency options, shared by `sample` and `bench`."""
    p.add_argument("--kv-policy", default=None,
                   help="scale-wise models: KV-cache compression, e.g. scalekv:0.1 or hack:0.3 (default: full cache)")
    p.add_argument("--decoding", default=None,
                   help="raster models: plain (default), sjd, mcsjd or gsd[:G] (speculative Jacobi decoding)")


def apply_weights(pipe, args) -> None:
    """``--weights int8``: quantize the pipeline's linear layers, which compute in bf16 (so ``--precision`` becomes
    bf16; an explicit fp32 is an error)."""
    if args.weights == "int8":
        if args.precision == "fp32":
            raise ArvisionError("--weights int8 computes in bf16: use --precision bf16 (or auto)")
        args.precision = "bf16"
        pipe.quantize_weights("int8")


def _add_sampling_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--classes", type=types.class_id, nargs="+",
                   help="class ids, one image each (default: 0..7 or all)")
    p.add_argument("--seed", type=types.seed, default=0, help="seeds torch.Generator().manual_seed(SEED) (default 0)")
    p.add_argument("--cfg", type=types.guidance, default=None,
                   help="guidance scale (default: the family's, VAR 1.5, LlamaGen 2.0)")
    p.add_argument("--top-k", type=types.top_k, default=None, help="0 = off (default: VAR 900, LlamaGen 0)")
    p.add_argument("--top-p", type=types.top_p, default=None, help="0 = off (default: VAR 0.96, LlamaGen 0)")
    p.add_argument("--temperature", type=types.temperature, default=None,
                   help="default 1 (or the model's own setting)")
    p.add_argument("--smooth", action="store_true", help="VAR's Gumbel `more_smooth` (visualisation only)")
    p.add_argument("--patch-nums", type=types.positive_int_list, default=None, metavar="LIST",
                   help="sample on another scale list, e.g. 1,2,3,4,5,6,8,10,12 (models whose family supports it: "
                        "FlexVAR; default: the trained list)")
    p.add_argument("--max-pn", type=types.positive_int, default=None,
                   help="FlexVAR: sides above it are sampled greedily at full guidance (default 16)")
    p.add_argument("--cfg-mode", choices=["var", "llamagen"], default=None,
                   help="FlexVAR: guidance rule, the ramp (var, default) or constant (llamagen)")
    add_policy_args(p)
    p.add_argument("--batch-size", type=int, default=None, help="images per forward batch (default: all)")
    p.add_argument("--precision", choices=["auto", "fp32", "bf16"], default="fp32",
                   help="fp32 = exact official tokens (default); auto = bf16 where the hardware is fast at it")
    p.add_argument("--weights", choices=["full", "int8"], default="full",
                   help="int8: weight-only int8 linear layers, computing in bf16 (needs --precision bf16 or auto)")
    p.add_argument("--device", default="cpu")


def add_sample_parser(sub) -> None:
    p = sub.add_parser("sample", help="generate images (and tokens) from a model folder")
    p.add_argument("model", nargs="?", help="model folder (default: the model bundled with arvision)")
    _add_sampling_args(p)
    p.add_argument("--search", default=None,
                   help="test-time search: bon:N, beam:W, lookahead:W or tts-var[:N] (options: docs/search.md)")
    p.add_argument("--verifier", default=None,
                   help="with --search: classifier weights (.safetensors) to score with (default: the bundled one)")
    p.add_argument("--out", help="write a labelled PNG grid here")
    p.add_argument("--out-dir", help="write one PNG per image here, named {index:05d}_class{k}.png")
    p.add_argument("--save-tokens", help="write the tokens as safetensors (step.{s} per scale, or tokens)")
    p.add_argument("--progression",
                   help="scale-wise models: write a PNG of each image after every scale (coarse to fine)")
    add_watermark_args(p)
    p.set_defaults(func=cmd_sample)


def add_info_parser(sub) -> None:
    p = sub.add_parser("info", help="describe a model folder")
    p.add_argument("model", nargs="?")
    p.set_defaults(func=cmd_info)


def add_demo_parser(sub) -> None:
    p = sub.add_parser("demo", help="sample a labelled grid from the bundled model into the current folder")
    p.add_argument("--seed", type=types.seed, default=0)
    p.add_argument("--out", default="arvision_demo.png")
    p.set_defaults(func=cmd_demo)


# -- commands -----------------------------------------------------------------------------------------

def _check_outputs(args) -> None:
    from arvision.images import check_output_dir, check_output_file

    if not (args.out or args.out_dir or args.save_tokens or args.progression):
        raise ArvisionError("nothing to write: give --out GRID.png, --out-dir DIR, --save-tokens FILE "
                            "and/or --progression PNG")
    for path in (args.out, args.progression):
        if path:
            check_output_file(path, image=True)
    if args.save_tokens:
        check_output_file(args.save_tokens, suffix=".safetensors")
    if args.out_dir:
        check_output_dir(args.out_dir)
    paths = [Path(p).resolve() for p in (args.out, args.progression, args.save_tokens) if p]
    if len(set(paths)) < len(paths):
        raise ArvisionError("--out, --progression and --save-tokens must name different files")


def check_sampling_args(args) -> None:
    """Everything about ``sample``'s (and ``bench``'s) options that can be judged without the model, so a mistake is
    reported before the model is loaded: the watermark, search and decoding specs, ``--weights`` with
    ``--precision``, the verifier file.  (Numbers are checked by their argparse types; what depends on the model,
    a class id or top-k beyond its vocabulary, is checked by the pipeline before sampling.)"""
    if getattr(args, "weights", "full") == "int8" and args.precision == "fp32":
        raise ArvisionError("--weights int8 computes in bf16: use --precision bf16 (or auto)")
    if getattr(args, "watermark_key", None) is not None:
        spec_from_args(args)  # WatermarkSpec validates every --watermark-* value
    if getattr(args, "search", None):
        from arvision.sampling.search import parse_search

        parse_search(args.search)
    verifier = getattr(args, "verifier", None)
    if verifier:
        if not getattr(args, "search", None):
            raise ArvisionError("--verifier goes with --search (it scores the search's candidates)")
        if not Path(verifier).is_file():
            raise ArvisionError(f"--verifier {verifier}: file not found")
    if args.decoding:
        from arvision.sampling.speculative import parse_decoding

        parse_decoding(args.decoding)  # the spec's form; whether the model can use it is checked after loading


def run_sampling(pipe, args, progress: bool = True):
    """Sample ``pipe`` with ``sample``'s options in ``args`` (a watermark too, aligned if asked); returns the
    pipeline's output, with PIL images."""
    import torch

    n = pipe.config.num_classes
    classes = args.classes if args.classes is not None else list(range(min(n, 8)))
    generator = torch.Generator().manual_seed(args.seed)
    watermark = spec_from_args(args)
    processors = [watermark.processor(pipe)] if watermark is not None else []
    aligned = watermark is not None and watermark.align is not None
    out = pipe(classes, guidance_scale=args.cfg, top_k=args.top_k, top_p=args.top_p,
               temperature=args.temperature, generator=generator, more_smooth=args.smooth,
               output_type="pt" if aligned else "pil", batch_size=args.batch_size, precision=args.precision,
               progress=progress, return_progression=bool(getattr(args, "progression", None)),
               kv_policy=args.kv_policy, decoding=args.decoding, search=getattr(args, "search", None),
               verifier=getattr(args, "verifier", None), processors=processors,
               patch_nums=getattr(args, "patch_nums", None), max_pn=getattr(args, "max_pn", None),
               cfg_mode=getattr(args, "cfg_mode", None))
    if aligned:  # every image of the call comes from the one --seed generator
        from arvision.images import to_pil
        from arvision.sampling.watermark import align_images

        lists = [watermark.list_for(args.seed, k) for k in out.class_labels]
        x = align_images(pipe, out.images * 2 - 1, watermark, lists, progress=progress)
        out.images = to_pil((x + 1) / 2)
    return out


def caption(pipe, k: int) -> str:
    """The label of class ``k`` under an image: its name, else "class k"."""
    names = pipe.config.class_names
    return names[k] if names else f"class {k}"


def cmd_sample(args) -> None:
    _check_outputs(args)
    check_sampling_args(args)
    pipe = load_pipeline(args.model, args.device)
    apply_weights(pipe, args)
    t0 = time.perf_counter()
    out = run_sampling(pipe, args)
    dt = time.perf_counter() - t0
    if args.out:
        from arvision.images import make_grid

        make_grid(out.images, [caption(pipe, k) for k in out.class_labels]).save(args.out)
        print(f"wrote {args.out}")
    if args.out_dir:
        folder = Path(args.out_dir)
        folder.mkdir(exist_ok=True)
        for i, (im, k) in enumerate(zip(out.images, out.class_labels)):
            im.save(folder / f"{i:05d}_class{k}.png")
        print(f"wrote {len(out.images)} images to {folder}")
    if args.progression:
        from arvision.images import make_grid, to_pil

        steps = out.schedule.step_grids
        cells, captions = [], []
        for b, k in enumerate(out.class_labels):  # one row per image, one column per scale
            for s, stage in enumerate(out.progression):
                cells += to_pil(stage[b:b + 1])
                captions.append(caption(pipe, k) if s == 0 else f"{steps[s][0]}x{steps[s][1]}")
        make_grid(cells, captions, ncol=len(out.progression)).save(args.progression)
        print(f"wrote {args.progression}")
    if args.save_tokens:
        from safetensors.torch import save_file

        tensors = out.schedule.named_tokens(out.tokens)  # step.{s} per scale, or tokens (B, L)
        save_file(tensors, args.save_tokens, metadata={"class_labels": ",".join(map(str, out.class_labels)),
                                                       "seed": str(args.seed)})
        print(f"wrote {args.save_tokens}")
    if "search" in out.stats:
        cost = out.stats["search"]
        print(f"search {cost['spec']}: {cost['token_forwards']} token forwards ({cost['plain_equivalents']:.2f}x "
              f"plain sampling), {cost['verifier_calls']} verifier calls, {cost['decoder_calls']} decoder calls; "
              f"verifier scores " + " ".join(f"{x:.3f}" for x in out.stats["search_scores"]))
    print(f"{len(out.class_labels)} image(s) in {dt:.2f} s")


def describe(pipe) -> str:
    """Three lines about a pipeline: family, size and schedule; the transformer; the tokenizer."""
    cfg, tr, tok = pipe.config, pipe.config.transformer, pipe.config.tokenizer
    n_tr = sum(p.numel() for p in pipe.transformer.parameters())
    n_tok = sum(p.numel() for p in pipe.tokenizer.parameters())
    return (f"{cfg.family}: {cfg.image_size}px, {cfg.num_classes} classes, {pipe.schedule.describe()}\n"
            f"  transformer: {tr.block} depth {tr.depth}, width {tr.width}, {tr.num_heads} heads, "
            f"{n_tr / 1e6:.1f}M params\n"
            f"  tokenizer: {tok.kind}, {tok.vocab_size} codes x {tok.embed_dim}, /{tok.downsample}, "
            f"{n_tok / 1e6:.1f}M params")


def cmd_info(args) -> None:
    print(describe(load_pipeline(args.model)))


def cmd_demo(args) -> None:
    from arvision.bundled import bundled_model_dir, tiny_random_pipeline
    from arvision.images import check_output_file, make_grid, save_image

    check_output_file(args.out, image=True)
    try:
        pipe = load_pipeline(str(bundled_model_dir()))
        note = ""
    except ArvisionError:
        pipe = tiny_random_pipeline()
        note = ("note: this installation has no bundled model; this demo samples a tiny "
                "randomly initialised VAR model, so the images are noise.\n")
    ns = argparse.Namespace(classes=list(range(min(pipe.config.num_classes, 10))), seed=args.seed, cfg=None,
                            top_k=None, top_p=None, temperature=None, smooth=False, batch_size=None,
                            precision="auto", device="cpu", kv_policy=None, decoding=None)
    t0 = time.perf_counter()
    out = run_sampling(pipe, ns, progress=False)
    save_image(make_grid(out.images, [caption(pipe, k) for k in out.class_labels], ncol=5), args.out)
    sys.stdout.write(note)
    print(f"{len(out.images)} images in {time.perf_counter() - t0:.1f} s")
    print(Path(args.out).resolve())
