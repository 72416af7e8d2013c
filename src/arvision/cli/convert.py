"""``arvision convert FAMILY``: official checkpoints -> an arvision model folder, one sub-command per family.

    arvision convert var --vae vae_ch160v4096z32.pth --var var_d16.pth --out var-d16
    arvision convert llamagen --vq vq_ds16_c2i.pt --gpt c2i_B_256.pt --out llamagen-b
    arvision convert flexvar --vae FlexVAE.pth --var FlexVARd16-epo179.pth --out flexvar-d16

Each family declares its two files and its options (``Family.official_files``, ``convert_options``); this module
only turns those declarations into flags.
"""

from __future__ import annotations

from pathlib import Path

from arvision.cli.types import int_list
from arvision.errors import ArvisionError

OPTION_TYPES = {"path": str, "int": int, "int_list": int_list}


def add_parser(sub) -> None:
    from arvision.families import all_families

    p = sub.add_parser("convert", help="convert official checkpoints into an arvision model folder")
    csub = p.add_subparsers(dest="family", required=True, metavar="FAMILY")
    for family in all_families():
        c = csub.add_parser(family.name, help=family.convert_help)
        for option in (*family.official_files, *family.convert_options):
            c.add_argument(f"--{option.name.replace('_', '-')}", dest=option.name, type=OPTION_TYPES[option.kind],
                           required=option.required, default=None, help=option.help)
        c.add_argument("--out", required=True, help="output model folder")
        c.set_defaults(func=cmd_convert, official=family)


def cmd_convert(args) -> None:
    from arvision.cli.sample import describe
    from arvision.pipeline import ARPipeline

    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise ArvisionError(f"cannot write the model to {out}: a file is in the way")
    if not out.parent.is_dir():
        raise ArvisionError(f"cannot create {out}: parent folder {out.parent} does not exist")
    family = args.official
    tokenizer_file, transformer_file = (getattr(args, o.name) for o in family.official_files)
    options = {o.name: getattr(args, o.name) for o in family.convert_options if getattr(args, o.name) is not None}
    pipe = ARPipeline.from_official(family.name, tokenizer_file, transformer_file, **options)
    pipe.save_pretrained(out)
    print(describe(pipe))
    print(f"saved to {out}")
