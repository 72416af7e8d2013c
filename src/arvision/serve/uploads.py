"""What a page accepts from a visitor's files: images within a size limit, and masks painted in the editor.

An upload is checked before it is decoded: its bytes (Gradio's own ``max_file_size`` refuses bigger files before
they are stored; this check names the file the same way when a client skips that limit), then the pixel count
from its header (a small file can hold a huge image: decoding it would take the memory the limit protects), then
it is read by :func:`arvision.images.read_image` like every image the command line reads, so a file that is not
an image gets the command line's message.  Messages name the file as the visitor knows it, not the server's copy.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from arvision.errors import ArvisionError
from arvision.images import read_image, read_image_size

MAX_UPLOAD_MB = 10
MAX_UPLOAD_BYTES = MAX_UPLOAD_MB * 2**20
MAX_UPLOAD_PIXELS = 4096 * 4096
EDITOR_MIN_SIDE = 256  # small images (28-64 px digits and shapes) are shown enlarged so that a brush can paint them
EDITOR_MAX_SIDE = 768  # large ones shown reduced: the painted mask is mapped back to the image's own size


def _named(path: Path, error: ArvisionError) -> ArvisionError:
    return ArvisionError(str(error).replace(str(path), path.name))


def check_upload(path: str | Path) -> Path:
    """An uploaded file that may be read: present, at most ``MAX_UPLOAD_BYTES`` and ``MAX_UPLOAD_PIXELS``."""
    path = Path(path)
    if not path.is_file():
        raise ArvisionError(f"upload {path.name} did not arrive; upload it again")
    size = path.stat().st_size
    if size > MAX_UPLOAD_BYTES:
        raise ArvisionError(f"upload {path.name} is {size / 2**20:.1f} MB; this page takes files up to "
                            f"{MAX_UPLOAD_MB} MB")
    try:
        w, h = read_image_size(path)
    except ArvisionError as e:
        raise _named(path, e) from None
    if w * h > MAX_UPLOAD_PIXELS:
        raise ArvisionError(f"image {path.name} is {w}x{h} pixels ({w * h / 1e6:.1f} megapixels); this page takes "
                            f"images up to {MAX_UPLOAD_PIXELS / 1e6:.1f} megapixels: downscale it first")
    return path


def read_upload(path: str | Path) -> Image.Image:
    """:func:`check_upload`, then the image as RGB (upright, transparency over white) like the command line."""
    path = check_upload(path)
    try:
        return read_image(path)
    except ArvisionError as e:
        raise _named(path, e) from None


def editor_view(image: Image.Image) -> Image.Image:
    """The picture the editor shows for ``image``: enlarged by a whole factor (nearest, so each pixel stays a
    block) to at least ``EDITOR_MIN_SIDE``, or reduced to at most ``EDITOR_MAX_SIDE``."""
    w, h = image.size
    if max(w, h) < EDITOR_MIN_SIDE:
        f = -(-EDITOR_MIN_SIDE // max(w, h))
        return image.resize((w * f, h * f), Image.NEAREST)
    if max(w, h) > EDITOR_MAX_SIDE:
        f = EDITOR_MAX_SIDE / max(w, h)
        return image.resize((max(1, round(w * f)), max(1, round(h * f))), Image.BILINEAR)
    return image


def painted_mask(layers, size: tuple[int, int]) -> np.ndarray:
    """The editor's paint layers (RGBA images of the shown picture's size) -> (H, W) bool at the image's ``size``
    (width, height): True where any layer is painted (alpha > 0), area-averaged onto the image's pixels (a pixel is
    painted when at least half of it is)."""
    union = None
    for layer in layers or []:
        if layer is None:
            continue
        alpha = np.asarray(layer.convert("RGBA"))[..., 3] > 0
        union = alpha if union is None else union | alpha
    if union is None:
        return np.zeros((size[1], size[0]), dtype=bool)
    grey = Image.fromarray(union.astype(np.uint8) * 255)
    if grey.size != tuple(size):
        grey = grey.resize(tuple(size), Image.BOX)  # area average when reducing; blocks when enlarging
    return np.asarray(grey) >= 128
