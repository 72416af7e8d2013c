"""``arvision calibrate-kv``: measure a VAR model's layers and heads for the ScaleKV / HACK cache policies
(``arvision.sampling.kv_calibration``) and save the result in the model folder.

    arvision calibrate-kv [MODEL] --samples 4 --seed 0
"""

from __future__ import annotations

from pathlib import Path

from arvision.cli import types
from arvision.cli.loading import model_help
from arvision.sampling.kv_calibration import CALIBRATION_FILE, DEFAULT_ALPHA, calibrate


def add_parser(sub) -> None:
    p = sub.add_parser("calibrate-kv", help="classify layers (ScaleKV drafters) and heads (HACK) of a VAR model")
    p.add_argument("model", nargs="?", default=None, help=model_help())
    p.add_argument("--samples", type=types.positive_int, default=4,
                   help="images sampled to measure the layers and heads (default 4)")
    p.add_argument("--seed", type=types.seed, default=0, help="seed of those images (default 0)")
    p.add_argument("--alpha", type=types.fraction, default=DEFAULT_ALPHA,
                   help=f"fraction of contextual heads (HACK) (default {DEFAULT_ALPHA})")
    p.add_argument("--drafters", type=types.positive_int, default=None,
                   help="drafter layers per step (default max(1, depth/16))")
    p.add_argument("--out", default=None, help=f"output file (default: MODEL/{CALIBRATION_FILE})")
    p.set_defaults(func=cmd_calibrate)


def cmd_calibrate(args) -> None:
    from arvision.bundled import model_location
    from arvision.cli.loading import load_pipeline
    from arvision.images import check_output_file

    folder = Path(model_location(args.model))  # a bundled name (or none): that model's folder in the package
    out = Path(args.out) if args.out else folder / CALIBRATION_FILE
    if args.out or folder.is_dir():  # a missing model folder is reported by the loader
        check_output_file(out, suffix=".json")
    pipe = load_pipeline(str(folder))
    calib = calibrate(pipe, args.samples, args.seed, alpha=args.alpha, num_drafters=args.drafters, progress=True)
    out = calib.save(out)
    print(f"drafters per step: {calib.drafters}")
    n_ctx = sum(t == "contextual" for row in calib.head_types for t in row)
    print(f"contextual heads: {n_ctx} of {calib.depth * calib.heads}")
    print(f"wrote {out}")
