"""``arvision edit``: zero-shot in-/out-painting and class editing of one image file (``arvision.sampling.editing``).

    arvision edit [MODEL] --image IN.png --mask MASK.png [--class K] --seed 0 --out OUT.png
    arvision edit [MODEL] --image IN.png --box 0.25,0.25,0.75,0.75 [--outpaint] --out OUT.png
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from arvision.cli import types
from arvision.cli.loading import model_help
from arvision.errors import ArvisionError


def _box_arg(text: str) -> list[float]:
    try:
        box = [float(t) for t in text.replace(" ", "").split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected four comma-separated fractions y0,x0,y1,x1, got {text!r}") from None
    if len(box) != 4:
        raise argparse.ArgumentTypeError(f"expected four comma-separated fractions y0,x0,y1,x1, got {text!r}")
    return box


def add_parser(sub) -> None:
    """Register ``arvision edit`` on the CLI's sub-parsers."""
    p = sub.add_parser("edit", help="zero-shot in-/out-painting and class editing of an image (token override)",
                       description="Regenerate the white part of a mask (or a box) in an image, keeping the rest. "
                                   "The image is read as RGB (upright by its EXIF orientation, transparency "
                                   "over white), centre-cropped to a square when it is not one, and resized to the "
                                   "model's image size; the mask gets the same crop.")
    p.add_argument("model", nargs="?", help=model_help())
    p.add_argument("--image", required=True, help="the image to edit (any format PIL reads)")
    where = p.add_mutually_exclusive_group(required=True)
    where.add_argument("--mask", help="mask image of the same size as --image: white = regenerate, black = keep")
    where.add_argument("--box", type=_box_arg, metavar="Y0,X0,Y1,X1",
                       help="regenerate this box, given as fractions of the image (e.g. 0.25,0.25,0.75,0.75)")
    p.add_argument("--outpaint", action="store_true", help="with --box: keep the box, regenerate around it")
    p.add_argument("--class", dest="klass", type=types.class_id, default=None, metavar="K",
                   help="class to regenerate the region as (class editing); default: none (plain in-/out-painting "
                        "with the unconditional class)")
    p.add_argument("--prompt", default=None, metavar="TEXT",
                   help="text models: what to regenerate the region as; default: none (plain in-/out-painting with "
                        "the null text)")
    p.add_argument("--seed", type=types.seed, default=0, help="seeds torch.Generator().manual_seed(SEED) (default 0)")
    p.add_argument("--cfg", type=types.guidance, default=None, help="guidance scale (default: the model's)")
    p.add_argument("--top-k", type=types.top_k, default=None, help="0 = off (default: the model's)")
    p.add_argument("--top-p", type=types.top_p, default=None, help="0 = off (default: the model's)")
    p.add_argument("--temperature", type=types.temperature, default=None,
                   help="default 1 (or the model's own setting)")
    p.add_argument("--smooth", action="store_true", help="VAR's Gumbel `more_smooth` (visualisation only)")
    p.add_argument("--precision", choices=["auto", "fp32", "bf16"], default="fp32",
                   help="fp32 = exact (default); auto = bf16 where the hardware is fast at it")
    p.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    p.add_argument("--out", required=True, help="write the edited image (PNG, the model's size) here")
    p.add_argument("--compare", help="also write a source | mask | edit strip here (default: none)")
    p.set_defaults(func=cmd_edit)


def cmd_edit(args) -> None:
    from arvision.cli.loading import load_pipeline

    image, mask = read_edit_inputs(args)
    pipe = load_pipeline(args.model, args.device)
    for line in edit_with(pipe, args, image, mask):
        print(line, file=sys.stderr if line.startswith("warning:") else sys.stdout)


def read_edit_inputs(args):
    """Check ``edit``'s outputs and options and read its inputs (before any model is loaded) -> (the image as RGB
    PIL, the regenerate mask (H, W) bool at the image's size)."""
    from arvision.images import check_output_file, read_image
    from arvision.sampling.editing import box_mask, load_mask

    check_output_file(args.out, image=True)
    if args.compare:
        check_output_file(args.compare, image=True)
        if Path(args.compare).resolve() == Path(args.out).resolve():
            raise ArvisionError("--compare and --out must name different files")
    if args.outpaint and args.box is None:
        raise ArvisionError("--outpaint goes with --box (a mask image already says what to keep)")
    path = Path(args.image)
    if not path.is_file():
        raise ArvisionError(f"image not found: {path}")
    image = read_image(path)
    W, H = image.size
    if args.mask:
        mask = load_mask(args.mask, size=(W, H))
    else:
        mask = box_mask(H, W, args.box, outpaint=args.outpaint)
    return image, mask


def edit_with(pipe, args, image, mask) -> list[str]:
    """Edit ``image`` (from :func:`read_edit_inputs`) with the loaded ``pipe`` as ``args`` say, write ``--out`` (and
    ``--compare``) -> the lines to report (a line starting with ``warning:`` is a warning)."""
    import numpy as np
    import torch
    from PIL import Image

    from arvision.images import make_grid, save_image, to_pil
    from arvision.sampling.editing import edit

    lines = []
    S = pipe.config.image_size
    if args.klass is not None and not pipe.takes_text:
        pipe.check_labels([args.klass])
    W, H = image.size
    if (W, H) != (S, S):
        crop = " (centre-cropped to a square first)" if W != H else ""
        lines.append(f"note: {Path(args.image).name} is {W}x{H}; resized to the model's {S}x{S}{crop}")
    out = edit(pipe, image, mask, class_labels=args.klass, prompts=args.prompt,
               generator=torch.Generator().manual_seed(args.seed),
               guidance_scale=args.cfg, top_k=args.top_k, top_p=args.top_p, temperature=args.temperature,
               more_smooth=args.smooth, precision=args.precision)
    save_image(out.images[0], args.out)
    kept = out.keep[0].float().mean().item()
    lines.append(f"wrote {args.out} ({kept:.0%} of the tokens kept from the source)")
    if bool(out.keep[0].all()):  # the region is empty, or smaller than half of every token it touches
        lines.append(f"warning: the {'box' if args.box is not None else 'mask'} regenerates no token, so every token "
                     f"was kept from the source and {args.out} is the source as the tokenizer reproduces it; make "
                     "the region to regenerate larger (white = regenerate)")
    if args.compare:
        src = to_pil(out.source_images.add(1).mul(0.5))[0]
        m = Image.fromarray(out.regen_pixels[0].numpy().astype(np.uint8) * 255).convert("RGB")
        what = f"class {args.klass}" if args.klass is not None else (args.prompt or "inpaint")
        save_image(make_grid([src, m, out.images[0]], ["source", "mask", what], ncol=3), args.compare)
        lines.append(f"wrote {args.compare}")
    return lines
