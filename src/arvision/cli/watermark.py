"""``arvision watermark detect`` and ``sample``'s ``--watermark-*`` options (LBW: ``arvision.sampling.watermark``).

    arvision sample --watermark-key KEY --out-dir imgs
    arvision watermark detect imgs/*.png --key KEY
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

from arvision.cli import types
from arvision.cli.loading import model_help
from arvision.errors import ArvisionError
from arvision.images import read_image
from arvision.sampling.watermark import (
    DEFAULT_ALIGN_STEPS,
    DEFAULT_DELTA,
    DEFAULT_GAMMA,
    DEFAULT_POOL,
    DEFAULT_START_STEP,
    DEFAULT_THRESHOLD,
    WatermarkSpec,
    detect_images,
    parse_delta,
)


def load_images_for(pipe, paths) -> torch.Tensor:
    """Image files -> (B, 3, S, S) in [-1, 1] at the model's size S (other sizes resized, bicubic)."""
    size = pipe.config.image_size
    arrays = []
    for path in paths:
        rgb = read_image(path)
        if rgb.size != (size, size):
            rgb = rgb.resize((size, size), Image.BICUBIC)
        arrays.append(np.asarray(rgb, dtype=np.float32))
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).div(127.5).sub(1.0)


def add_spec_args(p, prefix: str = "") -> None:
    """gamma / pool / start-step options (``--watermark-`` prefixed in ``sample``)."""
    p.add_argument(f"--{prefix}gamma", type=types.open_fraction, default=DEFAULT_GAMMA,
                   help=f"green fraction of the codebook (default {DEFAULT_GAMMA})")
    p.add_argument(f"--{prefix}pool", type=types.positive_int, default=DEFAULT_POOL,
                   help=f"number of key-derived green lists (default {DEFAULT_POOL})")
    p.add_argument(f"--{prefix}start-step", type=types.nonneg_int, default=DEFAULT_START_STEP,
                   help=f"first biased / scored step (scale) (default {DEFAULT_START_STEP})")


def spec_from_args(args) -> WatermarkSpec | None:
    """``sample``'s --watermark-* options -> a spec (None without --watermark-key)."""
    key = getattr(args, "watermark_key", None)
    if key is None:
        return None
    delta, hard = parse_delta(args.watermark_delta)
    return WatermarkSpec(key, gamma=args.watermark_gamma, delta=delta, hard=hard, pool=args.watermark_pool,
                         start_step=args.watermark_start_step, align=args.watermark_align,
                         align_steps=args.watermark_align_steps)


def add_sample_args(p) -> None:
    p.add_argument("--watermark-key", default=None, help="embed an LBW watermark with this secret key (default: none)")
    p.add_argument("--watermark-delta", default=str(DEFAULT_DELTA),
                   help=f"green-list logit bias, or 'hard' (only green codes) (default {DEFAULT_DELTA})")
    add_spec_args(p, "watermark-")
    p.add_argument("--watermark-align", type=types.nonneg_float, default=None, metavar="LAMBDA",
                   help="also align the images' re-tokenisation with the green list (pixel-domain Adam; fidelity "
                        "weight LAMBDA, e.g. 0.3: stronger detection, visible cost; docs/watermark.md)")
    p.add_argument("--watermark-align-steps", type=types.positive_int, default=DEFAULT_ALIGN_STEPS,
                   help=f"Adam steps of the alignment (default {DEFAULT_ALIGN_STEPS})")


def add_parser(sub) -> None:
    p = sub.add_parser("watermark", help="detect LBW watermarks (embed them with `sample --watermark-key`)")
    wsub = p.add_subparsers(dest="watermark_command", required=True, metavar="ACTION")
    d = wsub.add_parser("detect", help="re-tokenise images and test them against a key's green lists")
    d.add_argument("images", nargs="+", help="image files (resized to the model's size if needed)")
    d.add_argument("--key", required=True, help="the watermark's secret key")
    d.add_argument("--model", default=None, help=model_help())
    add_spec_args(d)
    d.add_argument("--threshold", type=types.finite_float, default=DEFAULT_THRESHOLD,
                   help=f"declare watermarked when z > this (default {DEFAULT_THRESHOLD})")
    d.add_argument("--all-tokens", action="store_true",
                   help="score every token (default: each distinct code once, robust to repeated background codes)")
    d.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    d.set_defaults(func=cmd_detect)


def cmd_detect(args) -> None:
    from arvision.cli.loading import load_pipeline

    detect_spec(args)  # the spec's values, before anything is read
    missing = [p for p in args.images if not Path(p).is_file()]
    if missing:
        raise ArvisionError(f"image(s) not found: {', '.join(missing[:5])}{' ...' if len(missing) > 5 else ''}")
    pipe = load_pipeline(args.model, args.device)
    for path, res in detect_with(pipe, args):
        print(f"{path}: {res.line()}")


def detect_spec(args) -> WatermarkSpec:
    """``watermark detect``'s key, gamma, pool and start step as a spec (validated)."""
    return WatermarkSpec(args.key, gamma=args.gamma, pool=args.pool, start_step=args.start_step)


def detect_with(pipe, args) -> list[tuple[str, object]]:
    """Test ``args.images`` against the key with the loaded ``pipe`` -> (path, ``DetectionResult``) per image."""
    images = load_images_for(pipe, args.images)
    results = detect_images(pipe, images, detect_spec(args), threshold=args.threshold, unique=not args.all_tokens)
    return list(zip(args.images, results))
