"""The ``arvision`` command line.

    arvision sample [MODEL] --classes 1 3 7 --seed 42 --out grid.png
    arvision convert var --vae vae_ch160v4096z32.pth --var var_d16.pth --out var-d16
    arvision convert llamagen --vq vq_ds16_c2i.pt --gpt c2i_B_256.pt --out llamagen-b
    arvision info MODEL
    arvision demo
    arvision train-tokenizer ... / arvision train ...      (arvision.training.cli)
    arvision eval fid|sample|tokenizer|classify ...       (arvision.evaluation.cli)
    arvision bench MODEL --classes 207 --precision auto --json
    arvision edit [MODEL] --image IN.png --mask MASK.png [--class K] --seed 0 --out OUT.png
    arvision sample --watermark-key KEY --out-dir imgs; arvision watermark detect imgs/*.png --key KEY

Mistakes in the input (files, arguments) print one ``error:`` line and exit with status 2.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from arvision.errors import ArvisionError


def _int_list(text: str) -> list[int]:
    try:
        return [int(t) for t in text.replace(" ", "").split(",") if t]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


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
    p.add_argument("--classes", type=int, nargs="+", help="class ids, one image each (default: 0..7 or all)")
    p.add_argument("--seed", type=int, default=0, help="seeds torch.Generator().manual_seed(SEED) (default 0)")
    p.add_argument("--cfg", type=float, default=None,
                   help="guidance scale (default: the family's, VAR 1.5, LlamaGen 2.0)")
    p.add_argument("--top-k", type=int, default=None, help="0 = off (default: VAR 900, LlamaGen 0)")
    p.add_argument("--top-p", type=float, default=None, help="0 = off (default: VAR 0.96, LlamaGen 0)")
    p.add_argument("--temperature", type=float, default=None, help="default 1 (or the model's own setting)")
    p.add_argument("--smooth", action="store_true", help="VAR's Gumbel `more_smooth` (visualisation only)")
    add_policy_args(p)
    p.add_argument("--batch-size", type=int, default=None, help="images per forward batch (default: all)")
    p.add_argument("--precision", choices=["auto", "fp32", "bf16"], default="fp32",
                   help="fp32 = exact official tokens (default); auto = bf16 where the hardware is fast at it")
    p.add_argument("--weights", choices=["full", "int8"], default="full",
                   help="int8: weight-only int8 linear layers, computing in bf16 (needs --precision bf16 or auto)")
    p.add_argument("--device", default="cpu")


def build_parser() -> argparse.ArgumentParser:
    from arvision import __version__

    parser = argparse.ArgumentParser(prog="arvision", description=__doc__.split("\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"arvision {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

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
    p.add_argument("--progression", help="VAR: write a PNG of each image after every scale (coarse to fine)")
    from arvision.sampling.watermark import add_sample_args as add_watermark_args

    add_watermark_args(p)
    p.set_defaults(func=cmd_sample)

    p = sub.add_parser("convert", help="convert official checkpoints into an arvision model folder")
    csub = p.add_subparsers(dest="family", required=True, metavar="FAMILY")
    c = csub.add_parser("var", help="VAR: vae_ch160v4096z32.pth + var_d{16,20,24,30,36}.pth")
    c.add_argument("--vae", required=True, help="the multi-scale VQ-VAE checkpoint")
    c.add_argument("--var", required=True, help="the VAR transformer checkpoint")
    c.add_argument("--patch-nums", type=_int_list, default=None,
                   help="scale sides, e.g. 1,2,3,4,5,6,8,10,13,16 (default: read from the checkpoint)")
    c.add_argument("--num-classes", type=int, default=None, help="check the class count")
    c.add_argument("--out", required=True, help="output model folder")
    c.set_defaults(func=cmd_convert)
    c = csub.add_parser("llamagen", help="LlamaGen: vq_ds16_c2i.pt + c2i_{B,L,XL,XXL,3B}_*.pt")
    c.add_argument("--vq", required=True, help="the VQ tokenizer checkpoint")
    c.add_argument("--gpt", required=True, help="the GPT checkpoint")
    c.add_argument("--image-size", type=int, default=256, help="image side in pixels (default 256)")
    c.add_argument("--vq-ch", type=int, default=None,
                   help="check the tokenizer base width (read from the checkpoint; the released VQ-16 has 128)")
    c.add_argument("--num-heads", type=int, default=None,
                   help="attention heads (default: the released model of this depth/width, else width/64)")
    c.add_argument("--num-classes", type=int, default=None, help="check the class count")
    c.add_argument("--out", required=True, help="output model folder")
    c.set_defaults(func=cmd_convert)

    from arvision.training.cli import add_parsers

    add_parsers(sub)

    from arvision.evaluation.cli import add_parsers as add_eval_parsers

    add_eval_parsers(sub)

    from arvision.bench import add_parser as add_bench_parser

    add_bench_parser(sub)

    from arvision.sampling.editing import add_parser as add_edit_parser

    add_edit_parser(sub)

    from arvision.sampling.watermark import add_parser as add_watermark_parser

    add_watermark_parser(sub)

    from arvision.sampling.kv_calibration import add_parser as add_calibrate_kv_parser

    add_calibrate_kv_parser(sub)

    p = sub.add_parser("info", help="describe a model folder")
    p.add_argument("model", nargs="?")
    p.set_defaults(func=cmd_info)

    p = sub.add_parser("demo", help="sample a labelled grid from the bundled model into the current folder")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="arvision_demo.png")
    p.set_defaults(func=cmd_demo)
    return parser


# -- commands -----------------------------------------------------------------------------------------

def _load(model: str | None, device: str = "cpu"):
    from arvision.bundled import bundled_model_dir
    from arvision.pipeline import ARPipeline

    return ARPipeline.from_pretrained(model if model else bundled_model_dir(), device=device)


def _check_outputs(args) -> None:
    from arvision.images import check_output_dir, check_output_file

    if not (args.out or args.out_dir or args.save_tokens or args.progression):
        raise ArvisionError("nothing to write: give --out GRID.png, --out-dir DIR, --save-tokens FILE "
                            "and/or --progression PNG")
    for path in (args.out, args.progression):
        if path:
            check_output_file(path)
    if args.save_tokens:
        check_output_file(args.save_tokens)
    if args.out_dir:
        check_output_dir(args.out_dir)


def run_sampling(pipe, args, progress: bool = True):
    import torch

    from arvision.sampling.watermark import spec_from_args

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
               verifier=getattr(args, "verifier", None), processors=processors)
    if aligned:  # every image of the call comes from the one --seed generator
        from arvision.images import to_pil
        from arvision.sampling.watermark import align_images

        lists = [watermark.list_for(args.seed, k) for k in out.class_labels]
        x = align_images(pipe, out.images * 2 - 1, watermark, lists, progress=progress)
        out.images = to_pil((x + 1) / 2)
    return out


def caption(pipe, k: int) -> str:
    names = pipe.config.class_names
    return names[k] if names else f"class {k}"


def cmd_sample(args) -> None:
    _check_outputs(args)
    pipe = _load(args.model, args.device)
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

        steps = pipe.schedule.step_grids
        cells, captions = [], []
        for b, k in enumerate(out.class_labels):  # one row per image, one column per scale
            for s, stage in enumerate(out.progression):
                cells += to_pil(stage[b:b + 1])
                captions.append(caption(pipe, k) if s == 0 else f"{steps[s][0]}x{steps[s][1]}")
        make_grid(cells, captions, ncol=len(out.progression)).save(args.progression)
        print(f"wrote {args.progression}")
    if args.save_tokens:
        from safetensors.torch import save_file

        if pipe.schedule.kind == "scales":
            tensors = {f"step.{s}": t.contiguous() for s, t in enumerate(out.step_tokens)}
        else:
            tensors = {"tokens": out.tokens.contiguous()}
        save_file(tensors, args.save_tokens, metadata={"class_labels": ",".join(map(str, out.class_labels)),
                                                       "seed": str(args.seed)})
        print(f"wrote {args.save_tokens}")
    if "search" in out.stats:
        cost = out.stats["search"]
        print(f"search {cost['spec']}: {cost['token_forwards']} token forwards ({cost['plain_equivalents']:.2f}x "
              f"plain sampling), {cost['verifier_calls']} verifier calls, {cost['decoder_calls']} decoder calls; "
              f"verifier scores " + " ".join(f"{x:.3f}" for x in out.stats["search_scores"]))
    print(f"{len(out.class_labels)} image(s) in {dt:.2f} s")


def cmd_convert(args) -> None:
    from arvision.pipeline import ARPipeline

    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise ArvisionError(f"cannot write the model to {out}: a file is in the way")
    if not out.parent.is_dir():
        raise ArvisionError(f"cannot create {out}: parent folder {out.parent} does not exist")
    if args.family == "var":
        pipe = ARPipeline.from_official("var", args.vae, args.var, patch_nums=args.patch_nums,
                                        num_classes=args.num_classes)
    else:
        if args.image_size <= 0:
            raise ArvisionError(f"--image-size must be positive, got {args.image_size}")
        pipe = ARPipeline.from_official("llamagen", args.vq, args.gpt, image_size=args.image_size,
                                        vq_ch=args.vq_ch, num_heads=args.num_heads, num_classes=args.num_classes)
    pipe.save_pretrained(out)
    print(describe(pipe))
    print(f"saved to {out}")


def describe(pipe) -> str:
    cfg, tr, tok = pipe.config, pipe.config.transformer, pipe.config.tokenizer
    n_tr = sum(p.numel() for p in pipe.transformer.parameters())
    n_tok = sum(p.numel() for p in pipe.tokenizer.parameters())
    sched = pipe.schedule
    steps = (f"{sched.num_steps} scales {','.join(str(h) for h, _ in sched.step_grids)}"
             if sched.kind == "scales" else f"{sched.num_steps} raster steps ({sched.image_grid[0]}x"
                                            f"{sched.image_grid[1]} tokens)")
    return (f"{cfg.family}: {cfg.image_size}px, {cfg.num_classes} classes, {steps}\n"
            f"  transformer: {tr.block} depth {tr.depth}, width {tr.width}, {tr.num_heads} heads, "
            f"{n_tr / 1e6:.1f}M params\n"
            f"  tokenizer: {tok.kind}, {tok.vocab_size} codes x {tok.embed_dim}, /{tok.downsample}, "
            f"{n_tok / 1e6:.1f}M params")


def cmd_info(args) -> None:
    print(describe(_load(args.model)))


def cmd_demo(args) -> None:
    from arvision.bundled import bundled_model_dir, tiny_random_pipeline
    from arvision.images import check_output_file, make_grid

    check_output_file(args.out)
    try:
        pipe = _load(str(bundled_model_dir()))
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
    make_grid(out.images, [caption(pipe, k) for k in out.class_labels], ncol=5).save(args.out)
    sys.stdout.write(note)
    print(f"{len(out.images)} images in {time.perf_counter() - t0:.1f} s")
    print(Path(args.out).resolve())


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        args.func(args)
    except ArvisionError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
