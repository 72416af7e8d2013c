"""Zero-shot editing by token override: in-painting, out-painting and class-conditional editing.

No training and no second sampler: the source image is tokenised (``pipe.encode``, schedule order; VAR: every scale
of the multi-scale residual quantisation), and the one loop (``arvision.sampling.loop``) samples as usual while an
:class:`EditOverride` forces the source's tokens wherever the mask keeps the image.

**Mask convention: white (1 / True) = regenerate, black (0 / False) = keep.**  A mask has the size of its image.

From pixels to tokens (:func:`keep_tokens`):

1. the (binary) pixel mask is area-averaged over each token's footprint on the final token grid; a token is kept
   when more than half of its pixels are black (a box on token boundaries maps exactly);
2. VAR (as the official zero-shot notebook): that binary keep grid is resized to every scale's grid (bilinear,
   ``align_corners=False``, kept where > 0.5), and steps of at most 3 tokens (the 1x1 scale) always take the
   source's tokens.  Forced tokens enter the canvas f_hat, so every later scale, inside the hole too, is
   conditioned on the kept content at all resolutions: VAR in-paints *and* out-paints;
3. raster (LlamaGen): the keep grid in raster order.  Tokens before the hole are a true prefix; tokens after it
   are forced although the model never saw them when it sampled the hole, so the bottom/right border of a hole
   can show a seam (see docs/editing.md).

``class_labels=None`` edits with the null (unconditional) class, VAR's label 1000 on ImageNet: plain in-/out-
painting (guidance has nothing to steer).  A class k regenerates the white region as class k (class editing).

    out = edit(pipe, images, masks, class_labels=7, generator=torch.Generator().manual_seed(0))
    out.images            # PIL images at the model's size
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from arvision.errors import ArvisionError
from arvision.images import read_mask
from arvision.sampling.output import GenerationOutput

__all__ = [
    "EditOutput",
    "EditOverride",
    "box_mask",
    "edit",
    "keep_tokens",
    "load_mask",
    "prepare_edit_inputs",
]

ALWAYS_SOURCE_MAX_TOKENS = 3
"""Steps with at most this many tokens always take the source's tokens (the notebook's ``pn * pn <= 3``: the 1x1
scale, which carries the image's global colour/brightness)."""


# -- masks ------------------------------------------------------------------------------------------------------

def box_mask(height: int, width: int, box: Sequence[float], outpaint: bool = False) -> torch.Tensor:
    """A (height, width) bool regenerate mask from ``box`` = (y0, x0, y1, x1), fractions of the image in [0, 1].

    In-painting (default): True (regenerate) inside the box.  ``outpaint=True``: the box is kept and everything
    outside it is regenerated.  Box edges are rounded to whole pixels.
    """
    if len(box) != 4:
        raise ArvisionError(f"a box is four fractions y0,x0,y1,x1 in [0, 1], got {list(box)}")
    y0, x0, y1, x1 = (float(v) for v in box)
    if not (0.0 <= y0 < y1 <= 1.0 and 0.0 <= x0 < x1 <= 1.0):
        raise ArvisionError(f"box y0,x0,y1,x1 = {y0},{x0},{y1},{x1} must satisfy 0 <= y0 < y1 <= 1 and "
                            f"0 <= x0 < x1 <= 1 (fractions of the image height and width)")
    if height < 1 or width < 1:
        raise ArvisionError(f"mask size must be positive, got {height}x{width}")
    inside = torch.zeros(height, width, dtype=torch.bool)
    inside[round(y0 * height):round(y1 * height), round(x0 * width):round(x1 * width)] = True
    return ~inside if outpaint else inside


def load_mask(path: str | Path, size: tuple[int, int] | None = None) -> torch.Tensor:
    """Read a mask image -> (H, W) bool, True where it is white (grey level >= 128: regenerate).

    Any image PIL reads (PNG recommended), read by :func:`arvision.images.read_mask`: turned upright by its EXIF
    orientation, colour and alpha dropped (PIL's ``convert("L")``).  ``size`` = (width, height) of the image it
    belongs to: a mask of another size is an error (it would be ambiguous which pixels it means).
    """
    path = Path(path)
    if not path.is_file():
        raise ArvisionError(f"mask file not found: {path}")
    grey = np.asarray(read_mask(path))
    if size is not None and (grey.shape[1], grey.shape[0]) != tuple(size):
        raise ArvisionError(f"mask {path} is {grey.shape[1]}x{grey.shape[0]} pixels but its image is "
                            f"{size[0]}x{size[1]}: the mask must have the image's size (white = regenerate)")
    return torch.from_numpy(grey >= 128)


def _mask_tensor(mask, i: int) -> torch.Tensor:
    """One mask (PIL, array or tensor (H, W), bool or float in [0, 1]) -> (H, W) float32 in {0, 1}."""
    if isinstance(mask, Image.Image):
        return torch.from_numpy(np.asarray(mask.convert("L")) >= 128).float()
    if isinstance(mask, np.ndarray):
        mask = torch.from_numpy(mask)
    if not isinstance(mask, torch.Tensor):
        raise ArvisionError(f"mask {i} is a {type(mask).__name__}; give a PIL image, an array or a tensor (H, W)")
    if mask.ndim != 2:
        raise ArvisionError(f"mask {i} has shape {tuple(mask.shape)}; expected (H, W)")
    if mask.dtype == torch.bool:
        return mask.float()
    mask = mask.float()
    if mask.numel() and (mask.min() < 0 or mask.max() > 1):
        raise ArvisionError(f"mask {i} has values outside [0, 1] (got {mask.min().item()}..{mask.max().item()}); "
                            "use bool or float with 1 = regenerate, 0 = keep")
    return (mask >= 0.5).float()


# -- images -----------------------------------------------------------------------------------------------------

def _centre_square(width: int, height: int) -> tuple[int, int, int, int]:
    """(left, top, right, bottom) of the largest centred square."""
    side = min(width, height)
    left, top = (width - side) // 2, (height - side) // 2
    return left, top, left + side, top + side


def _as_list(items, name: str, item_ndim: int) -> list:
    """One item or a batch of them -> a list; an array/tensor with ``item_ndim`` dims is one item, with one more a
    batch."""
    if isinstance(items, np.ndarray):
        items = torch.from_numpy(items)
    if isinstance(items, torch.Tensor):
        return list(items) if items.ndim == item_ndim + 1 else [items]
    if isinstance(items, Image.Image):
        return [items]
    if isinstance(items, (list, tuple)):
        if not items:
            raise ArvisionError(f"no {name} given")
        return list(items)
    raise ArvisionError(f"{name} must be a PIL image, an array, a tensor or a list of them, got {type(items).__name__}")


def prepare_edit_inputs(images, masks, image_size: int, grid: tuple[int, int]
                        ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Images and regenerate masks -> (sources (B, 3, S, S) in [-1, 1], regen fraction per token (B, h, w) float,
    pixel regenerate mask (B, S, S) bool), S = ``image_size``, (h, w) = the final token ``grid``.

    images: PIL images (any mode; converted to RGB, alpha dropped; a non-square image is centre-cropped to a square,
    then resized to S x S with Lanczos filtering, as VAR's data pipeline does), or float tensors (3, S, S) /
    (B, 3, S, S) in [-1, 1] already at the model's size.  masks: one per image, or one for all; PIL images, arrays
    or tensors (H, W) of the *image's* size (before any resize), bool or float, 1 / white = regenerate.  A mask
    gets its image's crop, then is area-averaged.
    """
    imgs, msks = _as_list(images, "images", 3), _as_list(masks, "masks", 2)
    if len(msks) == 1 and len(imgs) > 1:
        msks = msks * len(imgs)
    if len(msks) != len(imgs):
        raise ArvisionError(f"got {len(msks)} masks for {len(imgs)} images; give one mask per image or one for all")
    S = int(image_size)
    sources, fractions, pixels = [], [], []
    for i, (im, mk) in enumerate(zip(imgs, msks)):
        m = _mask_tensor(mk, i)
        if isinstance(im, Image.Image):
            W, H = im.size
            if (m.shape[1], m.shape[0]) != (W, H):
                raise ArvisionError(f"mask {i} is {m.shape[1]}x{m.shape[0]} pixels but image {i} is {W}x{H}: a mask "
                                    "must have its image's size (white = regenerate)")
            left, top, right, bottom = _centre_square(W, H)
            rgb = im.convert("RGB").crop((left, top, right, bottom))
            if rgb.size != (S, S):
                rgb = rgb.resize((S, S), Image.LANCZOS)
            x = torch.from_numpy(np.asarray(rgb, dtype=np.float32)).permute(2, 0, 1).div(127.5).sub(1.0)
            m = m[top:bottom, left:right]
        elif isinstance(im, torch.Tensor):
            if im.ndim != 3 or im.shape[0] != 3 or tuple(im.shape[1:]) != (S, S) or not im.is_floating_point():
                raise ArvisionError(f"image {i} is a tensor of shape {tuple(im.shape)} ({im.dtype}); image tensors "
                                    f"must be float (3, {S}, {S}) in [-1, 1] (the model's size); pass PIL images "
                                    "to have them converted and resized")
            if tuple(m.shape) != (S, S):
                raise ArvisionError(f"mask {i} is {m.shape[1]}x{m.shape[0]} pixels but image {i} is {S}x{S}: a "
                                    "mask must have its image's size (white = regenerate)")
            x = im.detach().float().cpu()
        else:
            raise ArvisionError(f"image {i} is a {type(im).__name__}; give PIL images or float tensors in [-1, 1]")
        sources.append(x)
        fractions.append(F.adaptive_avg_pool2d(m[None, None], grid)[0, 0])
        pixels.append(F.adaptive_avg_pool2d(m[None, None], (S, S))[0, 0] >= 0.5)
    return torch.stack(sources), torch.stack(fractions), torch.stack(pixels)


# -- tokens -----------------------------------------------------------------------------------------------------

def keep_tokens(schedule, regen_fraction: torch.Tensor) -> torch.Tensor:
    """Regenerate fractions on the final token grid (B, h, w) -> keep (B, L) bool in schedule order.

    A token of the final grid is kept where less than half of its pixels are to be regenerated.  That keep grid
    goes onto every position of the schedule (``schedule.grid_to_positions``): scale-wise schedules resize it to
    every step's map (bilinear, > 0.5) and always keep maps of at most ``ALWAYS_SOURCE_MAX_TOKENS`` tokens; raster
    schedules use it in raster order.
    """
    B = regen_fraction.shape[0]
    if tuple(regen_fraction.shape[1:]) != tuple(schedule.image_grid):
        raise ValueError(f"regen fractions are {tuple(regen_fraction.shape[1:])}, the token grid is "
                         f"{schedule.image_grid}")
    keep_grid = (1.0 - regen_fraction.float()) > 0.5  # (B, h, w)
    keep = schedule.grid_to_positions(keep_grid.float()) > 0.5
    if schedule.step_maps:
        for (begin, end), n in zip(schedule.begin_ends, schedule.step_sizes):
            if n <= ALWAYS_SOURCE_MAX_TOKENS:
                keep[:, begin:end] = True
    return keep.reshape(B, -1)


class EditOverride:
    """The loop's ``TokenOverride`` for editing: step s takes ``source[:, s]`` where ``keep[:, s]`` is True.

    source (N, L) int64 and keep (N, L) bool, schedule order, one row per image of one pipeline call.  A call that
    splits its images into batches runs one ``SamplingRun`` per batch, in order: each run is bound, at its first
    step, to the next rows of the sources.  Within a run, images are found through ``run.rows`` (the starting-batch
    row each image descends from), so a controller that re-batches the run (``run.select``) keeps every image
    with its own source.  Use one override per pipeline call (``edit`` makes a fresh one).
    """

    def __init__(self, source: torch.Tensor, keep: torch.Tensor):
        if source.ndim != 2 or keep.shape != source.shape or keep.dtype != torch.bool:
            raise ValueError(f"source (N, L) int64 and keep (N, L) bool must match, got {tuple(source.shape)} "
                             f"and {tuple(keep.shape)} {keep.dtype}")
        self.source, self.keep = source.long(), keep
        self._next = 0

    def rows_of(self, run) -> torch.Tensor:
        """(B,) rows of ``source`` for the run's current images."""
        bound = run.slot(self, dict)  # this run's offset into the sources, fixed at its first step
        offset = bound.get("offset")
        if offset is None:
            if run.s != 0 or run.rows.shape[0] != run.batch or not torch.equal(
                    run.rows.cpu(), torch.arange(run.batch)):
                raise ArvisionError("an edit override must see a run from its first step, before any re-batching")
            if self._next + run.batch > self.source.shape[0]:
                raise ArvisionError(f"this edit holds {self.source.shape[0]} source image(s) but the sampler asked "
                                    f"for row {self._next + run.batch - 1}: give one label per source image and use "
                                    "a fresh override for each pipeline call")
            if run.schedule.length != self.source.shape[1]:
                raise ArvisionError(f"the source tokens have length {self.source.shape[1]} but the model's schedule "
                                    f"has {run.schedule.length} positions: encode the source with the same model")
            offset = bound["offset"] = self._next
            self._next += run.batch
        return run.rows.to(self.source.device) + offset

    def forced(self, s: int, run) -> tuple[torch.Tensor, torch.Tensor] | None:
        rows = self.rows_of(run)
        begin, end = run.schedule.begin_ends[s]
        keep = self.keep[rows, begin:end]
        if not bool(keep.any()):
            return None
        return self.source[rows, begin:end].to(run.device), keep.to(run.device)


@dataclass
class EditOutput(GenerationOutput):
    """``GenerationOutput`` of an edit, plus what it was made from (all on the CPU)."""

    source_images: torch.Tensor | None = None  # (B, 3, S, S) in [-1, 1]: the sources at the model's size
    source_tokens: torch.Tensor | None = None  # (B, L) int64, schedule order
    keep: torch.Tensor | None = None  # (B, L) bool: where the source's tokens were forced
    regen_pixels: torch.Tensor | None = None  # (B, S, S) bool: the regenerate mask at the model's size


def _edit_labels(pipe, class_labels, n: int) -> list[int]:
    if class_labels is None:
        return [pipe.null_class] * n
    if isinstance(class_labels, (int, np.integer)):
        class_labels = [int(class_labels)] * n
    labels = list(class_labels)
    if len(labels) != n:
        raise ArvisionError(f"got {len(labels)} class labels for {n} images; give one per image, one int for all, "
                            "or None (no class: plain in-/out-painting)")
    return [pipe.null_class if c is None else int(c) for c in labels]


def _edit_prompts(prompts, n: int) -> list[str]:
    if prompts is None:
        return [""] * n  # the null text: plain in-/out-painting
    texts = [prompts] * n if isinstance(prompts, str) else list(prompts)
    if len(texts) != n:
        raise ArvisionError(f"got {len(texts)} prompts for {n} images; give one per image, one string for all, or "
                            "None (no prompt: plain in-/out-painting)")
    return ["" if t is None else t for t in texts]


@torch.no_grad()
def edit(pipe, images, masks, class_labels=None, generator=None, prompts=None, **options) -> EditOutput:
    """Regenerate the white part of each mask, keeping the source's tokens elsewhere.

    images, masks: see :func:`prepare_edit_inputs` (white / True = regenerate).  class_labels (class models): None
    (the null class: plain in-/out-painting), one int for all images, or one per image (None entries = null class).
    prompts (text models), the same way: None (the null text), one string for all, or one per image.  generator and
    ``options`` (guidance_scale, top_k, top_p, temperature, more_smooth, output_type, batch_size, precision,
    kv_policy, ...) go to ``pipe(...)`` unchanged; the same seed gives the same edit.
    """
    if "override" in options:
        raise ArvisionError("edit() builds its own token override; do not pass override=")
    sources, fractions, pixels = prepare_edit_inputs(images, masks, pipe.config.image_size,
                                                     pipe.schedule.image_grid)
    n = len(sources)
    if pipe.takes_text:  # class labels here are refused by pipe.condition with its one line
        condition = pipe.condition(class_labels, allow_null=True, prompts=_edit_prompts(prompts, n))
    else:
        condition = pipe.condition(_edit_labels(pipe, class_labels, n), allow_null=True, prompts=prompts)
    source_tokens = pipe.encode(sources)
    keep = keep_tokens(pipe.schedule, fractions.to(pipe.device))
    out = pipe(condition, generator=generator, override=EditOverride(source_tokens, keep), allow_null_class=True,
               **options)
    fields = {k: getattr(out, k) for k in GenerationOutput.__dataclass_fields__}
    return EditOutput(**fields, source_images=sources, source_tokens=source_tokens.cpu(), keep=keep.cpu(),
                      regen_pixels=pixels)
