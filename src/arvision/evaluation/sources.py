"""Where features come from: a folder of images or an ``.npz`` (ADM reference or sample batch, or our caches).

:class:`FeatureSource` turns either into Inception statistics (``mu``/``sigma``, and ``mu_s``/``sigma_s`` for
sFID) plus the activations when a metric needs them (precision/recall, KID).  An ``.npz`` is read as ADM's
evaluator writes and reads them: ``mu``, ``sigma``, ``mu_s``, ``sigma_s`` (statistics), ``arr_0`` (a sample batch
of uint8 images ``(N, H, W, 3)``, or activations ``(N, d)``), and ours: ``activations``, ``spatial_activations``.
Images are only run through the network when what is asked cannot be read from the file.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from arvision.errors import ArvisionError
from arvision.evaluation.fid import load_stats, open_npz, statistics
from arvision.evaluation.inception import InceptionFeatures, features_from_folder

__all__ = ["FeatureSource", "lazy_extractor"]


def lazy_extractor(batch_size: int = 50, device: str = "cpu", progress: bool | None = None
                   ) -> Callable[[], InceptionFeatures]:
    """A function returning one shared :class:`InceptionFeatures`, built on first use (sources that are
    statistics files never load the network)."""
    holder: list[InceptionFeatures] = []

    def make() -> InceptionFeatures:
        if not holder:
            holder.append(InceptionFeatures(device=device, batch_size=batch_size, progress=progress))
        return holder[0]

    return make


class FeatureSource:
    """One side of a comparison: statistics and, when needed, the activations behind them."""

    def __init__(self, path: str | os.PathLike, *, need_acts: bool = False, need_spatial: bool = False,
                 extractor: Callable[[], InceptionFeatures] | None = None, batch_size: int = 50,
                 cache_dir: str | os.PathLike | None = None):
        extractor_fn = extractor or lazy_extractor(batch_size)
        p = Path(path).expanduser()
        self.name = p.name
        self.acts = self.spatial = None
        self.mu_s = self.sigma_s = None
        if p.is_dir():
            cache = Path(cache_dir) / f"{p.resolve().name}-features.npz" if cache_dir else None
            if need_spatial:
                self.acts, self.spatial = features_from_folder(p, batch_size, cache=cache,
                                                               extractor=extractor_fn(), spatial=True)
                self.mu_s, self.sigma_s = statistics(self.spatial)
            else:
                self.acts = features_from_folder(p, batch_size, cache=cache, extractor=extractor_fn())
            self.mu, self.sigma = statistics(self.acts)
            return
        if not p.is_file():
            raise ArvisionError(f"not found: {p} (expected a folder of images or an .npz)")
        if p.suffix != ".npz":
            raise ArvisionError(f"{p} is neither a folder nor an .npz file")
        with open_npz(p) as z:
            keys = set(z.files)
            images = z["arr_0"] if "arr_0" in keys and z["arr_0"].ndim == 4 else None
            acts = z["activations"] if "activations" in keys else (z["arr_0"] if "arr_0" in keys and images is None
                                                                   else None)
            has_stats = {"mu", "sigma"} <= keys
            if {"mu_s", "sigma_s"} <= keys:
                self.mu_s, self.sigma_s = np.asarray(z["mu_s"], np.float64), np.asarray(z["sigma_s"], np.float64)
            if "spatial_activations" in keys:
                self.spatial = np.asarray(z["spatial_activations"], np.float64)
        if images is not None and (need_acts or not has_stats or (need_spatial and self.mu_s is None)):
            if images.dtype != np.uint8 or images.shape[-1] != 3:
                raise ArvisionError(f"{p}: arr_0 has dtype {images.dtype} and shape {images.shape}; an ADM sample "
                                    "batch holds uint8 images (N, H, W, 3)")
            x = torch.from_numpy(images).permute(0, 3, 1, 2).contiguous()
            self.acts, spatial = extractor_fn().pool_and_spatial(x)
            if need_spatial:
                self.spatial = spatial
                self.mu_s, self.sigma_s = statistics(spatial)
        elif acts is not None:
            self.acts = np.asarray(acts, np.float64)
        if has_stats:
            self.mu, self.sigma = load_stats(p)
        elif self.acts is not None:
            self.mu, self.sigma = statistics(self.acts)
        else:
            raise ArvisionError(f"{p} has neither mu/sigma, activations nor arr_0 images; keys found: "
                                f"{', '.join(sorted(keys)) or 'none'}")
        if need_acts and self.acts is None:
            raise ArvisionError(f"{p} holds only statistics (mu/sigma); precision/recall and KID need the "
                                "activations or the images (arr_0)")
        if need_spatial and self.mu_s is None:
            if self.spatial is None:
                raise ArvisionError(f"{p} has no spatial statistics (mu_s/sigma_s) or images for sFID")
            self.mu_s, self.sigma_s = statistics(self.spatial)
