"""``arvision convert``: official VAR / LlamaGen checkpoints -> an arvision model folder.

    arvision convert var --vae vae_ch160v4096z32.pth --var var_d16.pth --out var-d16
    arvision convert llamagen --vq vq_ds16_c2i.pt --gpt c2i_B_256.pt --out llamagen-b
"""

from __future__ import annotations

import argparse
from pathlib import Path

from arvision.cli.sample import describe
from arvision.errors import ArvisionError


def _int_list(text: str) -> list[int]:
    try:
        return [int(t) for t in text.replace(" ", "").split(",") if t]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


def add_parser(sub) -> None:
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
