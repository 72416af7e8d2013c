"""The ``arvision`` command line.

    arvision sample [MODEL] --classes 1 3 7 --seed 42 --out grid.png
    arvision sample shapes --prompt "a photo of a red circle" --per-prompt 4 --out grid.png
    arvision convert var --vae vae_ch160v4096z32.pth --var var_d16.pth --out var-d16
    arvision convert llamagen --vq vq_ds16_c2i.pt --gpt c2i_B_256.pt --out llamagen-b
    arvision info [MODEL]                                  (no MODEL: also the bundled models' names)
    arvision demo
    arvision train-tokenizer ... / arvision train ...      (arvision.cli.train)
    arvision eval fid|sample|tokenizer|classify ...       (arvision.cli.evaluate)
    arvision bench MODEL --classes 207 --precision auto --json
    arvision edit [MODEL] --image IN.png --mask MASK.png [--class K] --seed 0 --out OUT.png
    arvision sample --watermark-key KEY --out-dir imgs; arvision watermark detect imgs/*.png --key KEY
    arvision make-data shapes --out shapes-1k --num 1000 --seed 0
    arvision serve [MODEL ...] [--port 7860]                (a web page; the demo extra)

Mistakes in the input (files, arguments) print one ``error:`` line and exit with status 2.
"""

# One module per command (or family of commands), each with its parser and its command function: sample.py
# (its outputs: sample_outputs.py), info.py (info, demo), convert.py, train.py, evaluate.py, bench.py, edit.py,
# watermark.py, calibrate_kv.py, data.py (make-data), serve.py (the web page of arvision.serve); and
# loading.py (the model a command names).  Only this package imports the pipeline on behalf of a command: the
# library layers below (sampling, models, tokenizers, families, evaluation, training) never import it.

from __future__ import annotations

import argparse
import re
import sys

from arvision.errors import ArvisionError

__all__ = ["OneLineParser", "build_parser", "main"]


class UsageError(Exception):
    """A command line argparse refused (unknown option, bad value, missing argument); ``prog`` names the command."""

    def __init__(self, prog: str, message: str):
        super().__init__(message)
        self.prog = prog


class OneLineParser(argparse.ArgumentParser):
    """An ArgumentParser whose mistakes are reported like every other input mistake: one ``error:`` line and exit
    status 2 (argparse's own ``error`` prints the whole usage block first).  Sub-parsers inherit the class."""

    def error(self, message: str):
        raise UsageError(self.prog, message)


def build_parser() -> argparse.ArgumentParser:
    from arvision import __version__
    from arvision.cli import bench, calibrate_kv, convert, data, edit, evaluate, info, sample, serve, train, watermark

    examples = __doc__.split("\n", 1)[1].replace("``", "").strip("\n")  # the docstring's body, as plain text
    parser = OneLineParser(
        prog="arvision", formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Autoregressive image generation (the VAR, LlamaGen and FlexVAR families) from the command "
                    "line.\n`arvision COMMAND --help` describes a command and its options.",
        epilog="examples:\n" + examples)
    parser.add_argument("--version", action="version", version=f"arvision {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    sample.add_sample_parser(sub)
    convert.add_parser(sub)
    train.add_parsers(sub)
    evaluate.add_parsers(sub)
    bench.add_parser(sub)
    edit.add_parser(sub)
    watermark.add_parser(sub)
    calibrate_kv.add_parser(sub)
    data.add_parser(sub)
    serve.add_parser(sub)
    info.add_info_parser(sub)
    info.add_demo_parser(sub)
    _values_may_start_with_minus(parser)
    return parser


def _warning_line(message, category, filename, lineno, line=None) -> str:
    """Warnings as the CLI prints them: one ``warning: ...`` line (no category, file or source line)."""
    return f"warning: {message}\n"
def _values_may_start_with_minus(parser: argparse.ArgumentParser) -> None:
    """Let values such as ``--box -0.1,0,0.5,0.5`` or ``--patch-nums -1,2`` reach their option (and its check)
    instead of being read as an unknown option: argparse < 3.13 takes only plain numbers (``-1``, ``-.5``) for
    values, 3.13 any ``-<digit>...``; this applies the newer rule (no option of ours starts with a digit)."""
    parser._negative_number_matcher = re.compile(r"^-\.?\d")
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for child in action.choices.values():
                _values_may_start_with_minus(child)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except UsageError as e:
        print(f"error: {e.prog}: {e} (see `{e.prog} --help`)", file=sys.stderr)
        return 2
    import warnings

    previous, warnings.formatwarning = warnings.formatwarning, _warning_line  # restored: main may be called in-process
    try:
        if getattr(args, "device", None) is not None:  # every command's --device, checked before any work
            from arvision.devices import check_device

            args.device = check_device(args.device)
        args.func(args)
    except ArvisionError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    finally:
        warnings.formatwarning = previous
    return 0
