"""Where images leave the library: tensors -> PIL, labelled grids, one file per image.

Every image written by arvision goes through ``to_pil``, so later hooks (watermarking) have one place to live.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

from arvision.errors import ArvisionError


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """(B, 3, H, W) in [0, 1] -> (B, H, W, 3) uint8 (rounded, as torchvision's save_image does)."""
    arr = images.detach().float().clamp(0, 1).mul(255).add_(0.5).clamp_(0, 255).to(torch.uint8)
    return arr.permute(0, 2, 3, 1).cpu().numpy()


def to_pil(images: torch.Tensor) -> list[Image.Image]:
    return [Image.fromarray(a) for a in to_uint8(images)]


def check_output_file(path: str | Path) -> Path:
    """Fail early, with a clear message, if ``path`` cannot be written as a file."""
    path = Path(path)
    if path.is_dir():
        raise ArvisionError(f"cannot write {path}: it is a folder, expected a file path")
    if not path.parent.is_dir():
        what = "is a file" if path.parent.exists() else "does not exist"
        raise ArvisionError(f"cannot write {path}: parent folder {path.parent} {what}")
    return path


def check_output_dir(path: str | Path) -> Path:
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise ArvisionError(f"cannot write images into {path}: it is a file, expected a folder")
    if not path.parent.is_dir():
        raise ArvisionError(f"cannot create {path}: parent folder {path.parent} does not exist")
    return path


def make_grid(images: Sequence[Image.Image], captions: Sequence[str] | None = None, ncol: int | None = None,
              pad: int = 2, min_cell: int = 64) -> Image.Image:
    """Tile PIL images into one picture, each with an optional caption strip underneath.

    Small images (e.g. 28 px digits) are upscaled (nearest) to at least ``min_cell`` pixels so captions fit.
    """
    n = len(images)
    ncol = ncol or min(n, max(1, math.ceil(math.sqrt(n))))
    nrow = math.ceil(n / ncol)
    w, h = images[0].size
    scale = max(1, math.ceil(min_cell / max(w, 1)))
    cw, ch = w * scale, h * scale
    cap_h = 14 if captions else 0
    grid = Image.new("RGB", (ncol * (cw + pad) + pad, nrow * (ch + cap_h + pad) + pad), "white")
    draw = ImageDraw.Draw(grid)
    font = ImageFont.load_default()
    for i, im in enumerate(images):
        r, c = divmod(i, ncol)
        x, y = pad + c * (cw + pad), pad + r * (ch + cap_h + pad)
        grid.paste(im.resize((cw, ch), Image.NEAREST) if scale > 1 else im, (x, y))
        if captions:
            draw.text((x + 2, y + ch + 1), str(captions[i])[: max(4, cw // 6)], fill="black", font=font)
    return grid
