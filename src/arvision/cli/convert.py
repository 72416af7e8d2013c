"""``arvision convert FAMILY``: official checkpoints -> an arvision model folder, one sub-command per family.

    arvision convert var --vae vae_ch160v4096z32.pth --var var_d16.pth --out var-d16
    arvision convert llamagen --vq vq_ds16_c2i.pt --gpt c2i_B_256.pt --out llamagen-b
    arvision convert flexvar --vae FlexVAE.pth --var FlexVARd16-epo179.pth --out flexvar-d16

Each family declares its two files and its options (``Family.official_files``, ``convert_options``); this module
only turns those declarations into flags.
"""

from __future__ import annotations

from pathlib import Path

from arvision.cli import types
from arvision.errors import ArvisionError

# every option a family declares is a count, a size or a list of them: all positive
OPTION_TYPES = {"path": str, "int": types.positive_int, "int_list": types.positive_int_list}


def add_parser(sub) -> None:
    from arvision.families import all_families

    p = sub.add_parser("convert", help="convert official checkpoints into an arvision model folder")
    csub = p.add_subparsers(dest="family", required=True, metavar="FAMILY")
    for family in all_families():
        if not family.official_files:  # no released PyTorch checkpoints (MaskGIT: JAX; Infinity: no class model)
            continue
        c = csub.add_parser(family.name, help=family.convert_help)
        for option in (*family.official_files, *family.convert_options):
            c.add_argument(f"--{option.name.replace('_', '-')}", dest=option.name, type=OPTION_TYPES[option.kind],
                           required=option.required, default=None, help=option.help)
        c.add_argument("--out", required=True, help="output model folder")
        c.set_defaults(func=cmd_convert, official=family)


def cmd_convert(args) -> None:
    from arvision.cli.info import describe
    from arvision.images import check_output_dir
    from arvision.pipeline import ARPipeline

    out = check_output_dir(args.out, "the model")
    family = args.official
    tokenizer_file, transformer_file = (getattr(args, o.name) for o in family.official_files)
    for option in family.official_files:  # both, before the first (maybe gigabytes) is read
        path = Path(getattr(args, option.name))
        if not path.is_file():
            what = "is a folder" if path.is_dir() else "not found"
            raise ArvisionError(f"--{option.name.replace('_', '-')} {path}: checkpoint {what}")
    options = {o.name: getattr(args, o.name) for o in family.convert_options if getattr(args, o.name) is not None}
    pipe = ARPipeline.from_official(family.name, tokenizer_file, transformer_file, **options)
    pipe.save_pretrained(out)
    print(describe(pipe))
    print(f"saved to {out}")
