"""Where images enter and leave the library: image files -> PIL, tensors -> PIL, labelled grids.

Every image file arvision reads (training folders, images to edit or test for a watermark, FID folders, evaluation
samples) goes through :func:`read_image` (masks through :func:`read_mask`), so every command treats EXIF
orientation, transparency and unusual modes alike and names the file when it cannot be read.  Every image written
by arvision goes through ``to_pil``, so later hooks (watermarking) have one place to live.
"""

from __future__ import annotations

import io
import math
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont, ImageOps

from arvision.errors import ArvisionError

_EXIF_ORIENTATION = 0x0112
_SIDEWAYS = (5, 6, 7, 8)  # EXIF orientations that swap width and height


# -- reading ----------------------------------------------------------------------------------------------------

def _read(path: str | Path, what: str, decode):
    """``decode(im)`` on the opened file; any failure (PIL raises OSError, ValueError, SyntaxError,
    DecompressionBombError, ...) becomes ``ArvisionError("cannot read WHAT PATH: reason")``.  The one place that
    opens image files."""
    try:
        with Image.open(path) as im:
            return decode(im)
    except Exception as e:
        raise ArvisionError(f"cannot read {what} {path}: {str(e) or type(e).__name__}") from e


def _oriented(im: Image.Image) -> Image.Image:
    """Fully decoded, turned upright by its EXIF orientation, detached from the file."""
    upright = ImageOps.exif_transpose(im)  # a new image (a copy when there is nothing to turn)
    return upright.copy() if upright is im else upright


def _to_rgb(im: Image.Image) -> Image.Image:
    """Any PIL mode -> RGB.  Transparent pixels are composited over white; 16-bit and float grey are rescaled."""
    mode = im.mode
    if mode == "RGB":
        return im
    if mode == "P" or mode == "PA":
        im = im.convert("RGBA") if ("transparency" in im.info or mode == "PA") else im.convert("RGB")
        mode = im.mode
        if mode == "RGB":
            return im
    if mode in ("RGBA", "RGBa", "LA", "La"):
        rgba = im.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    if mode.startswith("I;16") or mode in ("I", "F"):
        arr = np.asarray(im).astype(np.float64)
        if mode.startswith("I;16") or (mode == "I" and arr.size and arr.max() > 255):
            arr = arr / 257.0  # 16-bit range -> 8-bit range
        elif mode == "F" and arr.size and arr.max() <= 1.0:
            arr = arr * 255.0  # float images in [0, 1]
        gray = np.clip(np.rint(arr), 0, 255).astype(np.uint8)
        return Image.fromarray(gray, "L").convert("RGB")
    return im.convert("RGB")


def read_image_with_mode(path: str | Path) -> tuple[Image.Image, str]:
    """:func:`read_image`, plus the mode the file decodes to (e.g. ``"RGBA"``, ``"L"``; ``"RGB"`` when nothing was
    converted)."""

    def decode(im):
        upright = _oriented(im)
        return _to_rgb(upright), upright.mode

    return _read(path, "image", decode)


def read_image(path: str | Path) -> Image.Image:
    """An image file -> a fully loaded RGB PIL image, detached from the file.

    Turned upright by its EXIF orientation; transparent pixels composited over white; palette images expanded;
    16-bit and float grey rescaled to 8 bits; grey replicated to three channels.  Plain RGB and 8-bit grey files
    give exactly PIL's ``convert("RGB")``.  Any failure raises ``ArvisionError("cannot read image PATH: reason")``.
    """
    return read_image_with_mode(path)[0]


def read_mask(path: str | Path) -> Image.Image:
    """A mask file -> a fully loaded grey (``"L"``) PIL image, upright like :func:`read_image`; colour and alpha are
    dropped (PIL's ``convert("L")``).  Failures raise ``ArvisionError("cannot read mask PATH: reason")``."""
    return _read(path, "mask", lambda im: _oriented(im).convert("L"))


def read_image_size(path: str | Path) -> tuple[int, int]:
    """(width, height) :func:`read_image` gives for ``path``, from the file's header where the format allows
    (upright: EXIF orientations that turn the image by 90 degrees swap the two)."""

    def size(im):
        w, h = im.size
        return (h, w) if im.getexif().get(_EXIF_ORIENTATION, 1) in _SIDEWAYS else (w, h)

    return _read(path, "image", size)


# -- writing ----------------------------------------------------------------------------------------------------

def to_uint8(images: torch.Tensor) -> np.ndarray:
    """(B, 3, H, W) in [0, 1] -> (B, H, W, 3) uint8 (rounded, as torchvision's save_image does)."""
    arr = images.detach().float().clamp(0, 1).mul(255).add_(0.5).clamp_(0, 255).to(torch.uint8)
    return arr.permute(0, 2, 3, 1).cpu().numpy()


def to_pil(images: torch.Tensor) -> list[Image.Image]:
    return [Image.fromarray(a) for a in to_uint8(images)]


def _rgb_writer(ext: str) -> str | None:
    """The PIL format that writes RGB images under extension ``ext`` (``".png"``), else None.  Tried for real on a
    tiny image, because PIL registers formats it cannot write in RGB (``.xbm`` is 1-bit only) or without their
    library (WebP, AVIF)."""
    Image.init()
    fmt = Image.registered_extensions().get(ext.lower())
    if fmt is None or fmt not in Image.SAVE:
        return None
    try:
        Image.new("RGB", (16, 16)).save(io.BytesIO(), format=fmt)
    except Exception:  # noqa: BLE001 - any failure means: not writable this way
        return None
    return fmt


def _check_writable_folder(folder: Path, path: Path) -> None:
    if not os.access(folder, os.W_OK | os.X_OK):
        raise ArvisionError(f"cannot write {path}: no permission to write in {folder}")


def check_output_file(path: str | Path, image: bool = False, suffix: str | None = None) -> Path:
    """Fail early, with a clear message, if ``path`` cannot be written as a file: it is a folder, its folder does not
    exist or is not writable, or (``image``) PIL cannot write RGB images in its extension's format, or its extension
    is not ``suffix`` (e.g. ``".safetensors"``).  Called by every command on every output before any work."""
    path = Path(path)
    if path.is_dir():
        raise ArvisionError(f"cannot write {path}: it is a folder, expected a file path")
    if not path.parent.is_dir():
        what = "is a file" if path.parent.exists() else "does not exist"
        raise ArvisionError(f"cannot write {path}: parent folder {path.parent} {what}")
    if path.exists() and not os.access(path, os.W_OK):
        raise ArvisionError(f"cannot write {path}: the existing file is read-only")
    _check_writable_folder(path.parent, path)
    if image and _rgb_writer(path.suffix) is None:
        raise ArvisionError(f"cannot write {path}: {path.suffix or 'no extension'!s} is not an image format arvision "
                            "can write; use .png (or .jpg, .webp, .bmp, .tif)")
    if suffix is not None and path.suffix.lower() != suffix:
        raise ArvisionError(f"cannot write {path}: expected a {suffix} file name")
    return path


def check_output_dir(path: str | Path, what: str = "images") -> Path:
    """Fail early if ``path`` cannot be (created and) written as a folder: a file is in the way, its parent does
    not exist, or either is not writable."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise ArvisionError(f"cannot write {what} into {path}: a file is in the way (it is a file, expected a folder)")
    if path.is_dir():
        _check_writable_folder(path, path)
        return path
    if not path.parent.is_dir():
        raise ArvisionError(f"cannot create {path}: parent folder {path.parent} does not exist")
    _check_writable_folder(path.parent, path)
    return path


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def save_image(image: Image.Image, path: str | Path) -> Path:
    """Write ``image`` to ``path`` in its extension's format, whole or not at all: written to a temporary file in the
    same folder, then renamed over ``path`` (so a failure or an interrupt never leaves a truncated picture)."""
    path = Path(path)
    fmt = _rgb_writer(path.suffix) or "PNG"
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".part", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            image.save(f, format=fmt)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600 files; give the picture a plain file's mode
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
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
            draw.text((x + 2, y + ch + 1), fit_caption(draw, str(captions[i]), font, cw - 2), fill="black",
                      font=font)
    return grid


def fit_caption(draw: ImageDraw.ImageDraw, text: str, font, width: int) -> str:
    """``text`` as it fits in ``width`` pixels: whole, else its first words that fit followed by "..." (a first
    word too long on its own is cut inside)."""
    if draw.textlength(text, font=font) <= width:
        return text
    kept = ""
    for word in text.split():
        longer = f"{kept} {word}" if kept else word
        if draw.textlength(longer + "...", font=font) > width:
            break
        kept = longer
    if not kept:
        kept = text.strip()
        while kept and draw.textlength(kept + "...", font=font) > width:
            kept = kept[:-1]
    return kept + "..."
