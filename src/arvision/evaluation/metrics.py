"""Generation metrics beyond FID, on feature vectors: improved precision/recall, KID and sFID.

All functions take two sets of feature vectors, ``real`` ``(n_r, d)`` and ``fake`` ``(n_f, d)`` (numpy arrays or
torch tensors, computed in float64), typically TF-Inception pool features ``(n, 2048)`` from
:class:`~arvision.evaluation.inception.InceptionFeatures`, or its spatial features ``(n, 2023)`` for sFID.

* :func:`precision_recall` -- Kynkäänniemi et al. 2019, as ADM's evaluator (``nhood_sizes=(3,)``);
* :func:`kid` -- kernel inception distance, unbiased MMD^2 with the cubic polynomial kernel over random subsets, as
  torch-fidelity (``kid_subsets=100, kid_subset_size=1000, rng_seed=2020``);
* :func:`sfid_from_features` -- the Fréchet distance of :mod:`~arvision.evaluation.fid` on spatial features
  (ADM's ``mixed_6/conv`` channels 0..6, see :meth:`InceptionFeatures.pool_and_spatial`).
"""

from __future__ import annotations

import warnings

import numpy as np

from arvision.errors import ArvisionError
from arvision.evaluation.fid import _as_2d, fid_from_features

__all__ = ["kid", "precision_recall", "sfid_from_features"]

_MAX_BLOCK = 1 << 24
"""Most pairwise distances held at once (float64: 128 MiB)."""


def _positive_int(value, name: str, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ArvisionError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def _two_sets(real, fake) -> tuple[np.ndarray, np.ndarray]:
    real, fake = _as_2d(real, "real features"), _as_2d(fake, "fake features")
    if real.shape[1] != fake.shape[1]:
        raise ArvisionError(f"feature sizes differ: real features have {real.shape[1]} dimensions, fake features "
                            f"{fake.shape[1]}")
    return real, fake


def _blocks(n_rows: int, n_cols: int, batch_size: int):
    """``(r0, r1, c0, c1)`` tiles: at most ``batch_size`` rows, and at most ``_MAX_BLOCK`` entries per tile."""
    rows = min(batch_size, n_rows)
    cols = max(1, min(n_cols, _MAX_BLOCK // rows))
    for r0 in range(0, n_rows, rows):
        for c0 in range(0, n_cols, cols):
            yield r0, min(r0 + rows, n_rows), c0, min(c0 + cols, n_cols)


def _sq_dists(a: np.ndarray, a_sq: np.ndarray, b: np.ndarray, b_sq: np.ndarray) -> np.ndarray:
    """Squared Euclidean distances ``(len(a), len(b))`` = ||a||^2 + ||b||^2 - 2 a.b, clipped at 0."""
    d = a_sq[:, None] + b_sq[None, :] - 2.0 * (a @ b.T)
    return np.maximum(d, 0.0, out=d)


def _kth_nn_sq_radii(x: np.ndarray, x_sq: np.ndarray, k: int, batch_size: int) -> np.ndarray:
    """Squared distance from each row of ``x`` to its ``k``-th nearest other row (itself excluded), ``(n,)``."""
    n = x.shape[0]
    radii = np.empty(n)
    best, current = None, None
    for r0, r1, c0, c1 in _blocks(n, n, batch_size):
        if current != r0:  # a new row block: its k smallest distances so far
            if best is not None:
                radii[current : current + best.shape[0]] = best.max(axis=1)
            best, current = np.full((r1 - r0, k), np.inf), r0
        d = _sq_dists(x[r0:r1], x_sq[r0:r1], x[c0:c1], x_sq[c0:c1])
        lo, hi = max(r0, c0), min(r1, c1)  # the point itself, where this tile holds it
        if lo < hi:
            idx = np.arange(lo, hi)
            d[idx - r0, idx - c0] = np.inf
        merged = np.concatenate([best, d], axis=1)
        best = np.partition(merged, k - 1, axis=1)[:, :k]
    radii[current : current + best.shape[0]] = best.max(axis=1)
    return radii


def precision_recall(real_feats, fake_feats, k: int = 3, batch_size: int = 10000) -> tuple[float, float]:
    """Improved precision and recall (Kynkäänniemi et al. 2019), exactly as ADM's evaluator computes them.

    ``real_feats`` ``(n_r, d)``, ``fake_feats`` ``(n_f, d)``; both sets need more than ``k`` points.  Each point
    ``x`` of a set ``S`` gets the radius ``r(x) = ||x - NN_k(x, S \\ {x})||``, the Euclidean distance to its ``k``-th
    nearest neighbour in its own set, itself excluded (a duplicate of ``x`` counts as a neighbour at distance 0).
    With ``B(x) = {y : ||y - x|| <= r(x)}`` (boundary included):

        precision = |{f in fake : f in B(r) for some r in real}| / n_f      (realism of the samples)
        recall    = |{r in real : r in B(f) for some f in fake}| / n_r      (coverage of the reference set)

    Distances are computed in float64 from ``||a||^2 + ||b||^2 - 2 a.b`` after centring both sets on the real
    mean (exact translation invariance, less cancellation), in tiles of at most ``batch_size`` rows and 2^24
    entries (128 MiB), so 10k x 10k sets never hold the whole distance matrix.  Cost: three passes of
    ``n^2 d`` multiply-adds (the real-real, fake-fake and real-fake distances).
    Returns ``(precision, recall)``, two floats in [0, 1].
    """
    real, fake = _two_sets(real_feats, fake_feats)
    k = _positive_int(k, "k")
    batch_size = _positive_int(batch_size, "batch_size")
    for name, s in (("real", real), ("fake", fake)):
        if s.shape[0] <= k:
            raise ArvisionError(f"precision/recall with k={k} needs more than {k} {name} points (each point's "
                                f"radius is the distance to its {k}-th nearest other point), got {s.shape[0]}")
    centre = real.mean(axis=0)
    real, fake = real - centre, fake - centre
    real_sq, fake_sq = np.einsum("ij,ij->i", real, real), np.einsum("ij,ij->i", fake, fake)
    r_real = _kth_nn_sq_radii(real, real_sq, k, batch_size)  # squared radii: compare squared distances
    r_fake = _kth_nn_sq_radii(fake, fake_sq, k, batch_size)

    fake_in_real = np.zeros(fake.shape[0], dtype=bool)  # precision: fake point inside some real ball
    real_in_fake = np.zeros(real.shape[0], dtype=bool)  # recall: real point inside some fake ball
    for r0, r1, c0, c1 in _blocks(fake.shape[0], real.shape[0], batch_size):
        d = _sq_dists(fake[r0:r1], fake_sq[r0:r1], real[c0:c1], real_sq[c0:c1])  # (fake rows, real columns)
        fake_in_real[r0:r1] |= (d <= r_real[None, c0:c1]).any(axis=1)
        real_in_fake[c0:c1] |= (d <= r_fake[r0:r1, None]).any(axis=0)
    return float(fake_in_real.mean()), float(real_in_fake.mean())


def _polynomial_mmd2_unbiased(x: np.ndarray, y: np.ndarray) -> float:
    """Unbiased MMD^2 of two equal-size sets ``(m, d)`` with ``k(a, b) = (a.b / d + 1)^3``."""
    m, d = x.shape
    k_xx = (x @ x.T / d + 1.0) ** 3
    k_yy = (y @ y.T / d + 1.0) ** 3
    k_xy = (x @ y.T / d + 1.0) ** 3
    off_xx = (k_xx.sum() - np.trace(k_xx)) / (m * (m - 1))
    off_yy = (k_yy.sum() - np.trace(k_yy)) / (m * (m - 1))
    return float(off_xx + off_yy - 2.0 * k_xy.mean())


def kid(real_feats, fake_feats, subsets: int = 100, subset_size: int = 1000, seed: int = 2020) -> tuple[float, float]:
    """Kernel inception distance: mean and standard deviation of the unbiased MMD^2 over random subsets.

    Kernel ``k(a, b) = (a.b / d + 1)^3`` (polynomial, degree 3, gamma ``1/d``, coef0 1).  For each of ``subsets``
    draws, ``m = subset_size`` fake rows ``X`` and ``m`` real rows ``Y`` are picked without replacement and

        MMD^2_u = sum_{i != j} k(x_i, x_j) / (m (m - 1)) + sum_{i != j} k(y_i, y_j) / (m (m - 1))
                  - 2 sum_{i, j} k(x_i, y_j) / m^2

    (an unbiased estimate: it can be slightly negative; about 0 when both sets come from one distribution).
    Returns ``(mean, std)`` over the subsets, ``std`` with ``ddof=0``; papers often print both times 1000.

    The draws follow torch-fidelity's (``np.random.RandomState(seed)``; per subset first the fake indices, then the
    real ones, as its ``input1``/``input2``), so the same features give its numbers; ``seed=2020`` is its default.
    ``subset_size`` larger than either set is reduced to the smaller set's size with a warning (as clean-fid does;
    torch-fidelity refuses).
    """
    real, fake = _two_sets(real_feats, fake_feats)
    subsets = _positive_int(subsets, "subsets")
    subset_size = _positive_int(subset_size, "subset_size", 2)
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise ArvisionError(f"seed must be an integer, got {seed!r}")
    n_real, n_fake = real.shape[0], fake.shape[0]
    if min(n_real, n_fake) < 2:
        raise ArvisionError(f"KID needs at least 2 points in each set, got {n_real} real and {n_fake} fake")
    m = min(subset_size, n_real, n_fake)
    if m < subset_size:
        warnings.warn(f"KID subset_size={subset_size} is larger than the sets ({n_real} real, {n_fake} fake "
                      f"points); using subsets of {m}", UserWarning, stacklevel=2)
    rng = np.random.RandomState(seed)
    values = np.empty(subsets)
    for i in range(subsets):
        x = fake[rng.choice(n_fake, m, replace=False)]
        y = real[rng.choice(n_real, m, replace=False)]
        values[i] = _polynomial_mmd2_unbiased(x, y)
    return float(values.mean()), float(values.std())


def sfid_from_features(a_spatial, b_spatial, *, method: str = "sqrtm") -> float:
    """sFID: the Fréchet distance between two sets of spatial features ``(n_a, 2023)`` and ``(n_b, 2023)``.

    Spatial features are ADM's ``mixed_6/conv`` channels 0..6 (see
    :meth:`~arvision.evaluation.inception.InceptionFeatures.pool_and_spatial`); the formula, checks and ``method``
    are those of :func:`~arvision.evaluation.fid.fid_from_features`:
    ``||mu_a - mu_b||^2 + tr(S_a + S_b - 2 (S_a S_b)^(1/2))``.  Like FID it needs many samples (more than 2023 for a
    non-singular covariance; ADM uses 50k samples against 10k+ references).
    """
    return fid_from_features(a_spatial, b_spatial, method=method)
