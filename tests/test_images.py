"""The one image reader (``arvision.images.read_image``, ``read_mask``, ``read_image_size``)."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from arvision.errors import ArvisionError
from arvision.images import read_image, read_image_size, read_image_with_mode, read_mask


def test_a_file_that_is_not_an_image_is_a_clear_error(tmp_path):
    bad = tmp_path / "notes.png"
    bad.write_text("not an image")
    for read in (read_image, read_image_size):
        with pytest.raises(ArvisionError, match=r"^cannot read image .*notes\.png: ") as e:
            read(bad)
        assert str(bad) in str(e.value)
    with pytest.raises(ArvisionError, match=r"^cannot read mask .*notes\.png: "):
        read_mask(bad)
    with pytest.raises(ArvisionError, match=r"^cannot read image .*missing\.png: "):
        read_image(tmp_path / "missing.png")


def test_a_truncated_file_is_a_clear_error(tmp_path):
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(tmp_path / "a.png")
    data = (tmp_path / "a.png").read_bytes()
    (tmp_path / "cut.png").write_bytes(data[: len(data) // 2])
    with pytest.raises(ArvisionError, match="cannot read image"):
        read_image(tmp_path / "cut.png")


def test_transparent_png_is_composited_over_white(tmp_path):
    rgba = np.zeros((4, 6, 4), np.uint8)
    rgba[:, :2] = (255, 0, 0, 255)  # opaque red
    rgba[:, 2:4] = (0, 0, 255, 128)  # half-transparent blue
    # columns 4, 5: fully transparent black
    Image.fromarray(rgba, "RGBA").save(tmp_path / "t.png")
    im = read_image(tmp_path / "t.png")
    assert im.mode == "RGB" and im.size == (6, 4)
    arr = np.asarray(im)
    assert (arr[:, :2] == (255, 0, 0)).all()
    assert (arr[:, 4:] == 255).all()  # white, not the black the transparent pixels hold
    assert (np.abs(arr[:, 2:4].astype(int) - (127, 127, 255)) <= 1).all()
    assert read_image_with_mode(tmp_path / "t.png")[1] == "RGBA"


def test_plain_rgb_and_grey_files_read_as_pil_converts_them(tmp_path):
    rng = np.random.default_rng(1)
    Image.fromarray(rng.integers(0, 256, (5, 7, 3), dtype=np.uint8)).save(tmp_path / "rgb.png")
    Image.fromarray(rng.integers(0, 256, (5, 7), dtype=np.uint8), "L").save(tmp_path / "grey.png")
    Image.fromarray(rng.integers(0, 256, (5, 7, 3), dtype=np.uint8)).save(tmp_path / "photo.jpg", quality=90)
    for name in ("rgb.png", "grey.png", "photo.jpg"):
        with Image.open(tmp_path / name) as im:
            want = np.asarray(im.convert("RGB"))
        got = read_image(tmp_path / name)
        assert got.mode == "RGB" and np.array_equal(np.asarray(got), want)
        assert read_image_size(tmp_path / name) == (7, 5)
    with Image.open(tmp_path / "grey.png") as im:
        assert np.array_equal(np.asarray(read_mask(tmp_path / "grey.png")), np.asarray(im.convert("L")))


def test_exif_orientation_turns_the_image_upright(tmp_path):
    arr = np.zeros((4, 8, 3), np.uint8)
    arr[:, :4] = 255  # white left half of a 8x4 (w x h) picture
    exif = Image.Exif()
    exif[0x0112] = 6  # stored rotated: display after turning 90 degrees clockwise
    Image.fromarray(arr).save(tmp_path / "turned.jpg", exif=exif, quality=100)
    im = read_image(tmp_path / "turned.jpg")
    assert im.size == (4, 8) == read_image_size(tmp_path / "turned.jpg")
    assert read_mask(tmp_path / "turned.jpg").size == (4, 8)
    top, bottom = np.asarray(im)[:4].mean(), np.asarray(im)[4:].mean()
    assert top > 200 and bottom < 50  # the left half is now on top


def test_the_image_is_detached_from_the_file(tmp_path):
    path = tmp_path / "a.png"
    Image.new("RGB", (3, 3), (10, 20, 30)).save(path)
    im = read_image(path)
    path.unlink()  # nothing is read from the file any more
    assert np.asarray(im)[0, 0].tolist() == [10, 20, 30]
