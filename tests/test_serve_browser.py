"""``arvision serve`` in a real browser: Debian's chromium, driven by Playwright's Python API.

The server runs as a subprocess on a free local port (the command a person types); the page is opened in headless
chromium, a class picked, an image generated and downloaded, and it must be the PNG that ``arvision sample`` writes
for the same seed and settings, byte for byte (so the page cannot show something the engine did not compute).  Then
a mask is painted and the edit compared with ``arvision edit``'s, a watermark made and tested, and each bad input
submitted to see its one-line message.

Needs chromium at ``/usr/bin/chromium`` (``.ci/run`` installs it: ``apt-get install -y chromium``) and the test
extra (Gradio, Playwright); skipped with the reason otherwise.  Playwright's own browser download is not used.
"""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from arvision.serve.testing import CHROMIUM

if not CHROMIUM.exists():
    pytest.skip(f"the browser test needs chromium at {CHROMIUM} (apt-get install -y chromium)",
                allow_module_level=True)
pytest.importorskip("gradio", reason="the browser test needs Gradio (pip install -e '.[test]')")
pytest.importorskip("playwright.sync_api", reason="the browser test needs Playwright (pip install -e '.[test]')")

from arvision.serve.testing import (  # noqa: E402  (after the skips: the helpers import Playwright when used)
    chromium_page,
    fill,
    generate,
    pick_classes,
    served,
    take_sample_and_edit,
    watermark_and_detect,
)


@pytest.fixture(scope="module")
def page():
    with served(["mnist"], threads=1) as url, chromium_page(url) as page:
        yield page


def arvision(*argv: str) -> None:
    """The command line, in this process, on one thread like the server (CPU float sums depend on the thread count,
    and the test compares bytes; conftest restores the count after each test)."""
    import torch

    from arvision.cli import main

    torch.set_num_threads(1)
    assert main(list(argv)) == 0


def expect_error(page, message: str) -> None:
    """The page shows ``message`` in an error toast (never a traceback); the toast is closed after."""
    toast = page.locator(".toast-body").filter(has_text=message).first
    toast.wait_for()
    text = toast.inner_text()
    assert "Traceback" not in text and 'File "' not in text
    toast.locator(".toast-close").click()
    toast.wait_for(state="detached")


def shown(page, selector: str, path):
    """Save what the page's <img> shows (the server's file, as the browser gets it)."""
    src = page.locator(selector).get_attribute("src")
    path.write_bytes(page.request.get(src).body())
    return path


def download(page, button: str, path):
    with page.expect_download() as d:
        page.locator(f"#{button}").click()
    d.value.save_as(path)
    return path


# every picture the preview shows, recorded in the page as it changes (the streamed coarse-to-fine progression)
RECORD_PREVIEWS = """() => { window.previews = new Set(); const root = document.querySelector('#preview');
  new MutationObserver(() => root.querySelectorAll('img').forEach(i => window.previews.add(i.src)))
    .observe(root, {subtree: true, childList: true, attributes: true, attributeFilter: ['src']}); }"""


def test_generate_shows_what_the_cli_writes(page, tmp_path):
    pick_classes(page, "3")
    fill(page, "seed", "5")
    page.evaluate(RECORD_PREVIEWS)
    generate(page)
    # one picture per scale as it was computed (6 on the bundled model; a busy browser may draw two in one frame)
    assert page.evaluate("window.previews.size") >= 2
    png = download(page, "download-png", tmp_path / "page.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "arvision sample mnist --classes 3 --seed=5" in page.locator("#command").inner_text()
    arvision("sample", "mnist", "--classes", "3", "--seed", "5", "--out", str(tmp_path / "cli.png"))
    with Image.open(png) as a:
        assert a.size == (68, 82)  # one 32 px digit, enlarged to 64 px, with its caption
    assert png.read_bytes() == (tmp_path / "cli.png").read_bytes()
    assert shown(page, "#result img", tmp_path / "shown.png").read_bytes() == png.read_bytes()
    assert download(page, "download-tokens", tmp_path / "t.safetensors").stat().st_size > 0


def test_paint_a_mask_and_edit_as_the_cli_would(page, tmp_path):
    take_sample_and_edit(page)  # the sample of the test above: class 3, seed 5
    strip = shown(page, "#edit-result img", tmp_path / "page.png")
    # the mask the page made, read back from the strip (source | mask | edit: 32 px cells enlarged 2x, 2 px pad)
    mask = np.asarray(Image.open(strip).convert("L"))[2:66, 68:132][::2, ::2]
    assert 0 < (mask > 127).sum() < 32 * 32
    Image.fromarray(mask).save(tmp_path / "mask.png")
    arvision("sample", "mnist", "--classes", "3", "--seed", "5", "--out-dir", str(tmp_path / "images"))
    arvision("edit", "mnist", "--image", str(tmp_path / "images" / "00000_class3.png"), "--mask",
             str(tmp_path / "mask.png"), "--seed", "0", "--out", str(tmp_path / "edited.png"), "--compare",
             str(tmp_path / "cli.png"))
    assert strip.read_bytes() == (tmp_path / "cli.png").read_bytes()
    edited = download(page, "download-edit", tmp_path / "download.png")
    assert edited.read_bytes() == (tmp_path / "edited.png").read_bytes()


def test_watermark_then_detect(page):
    watermark_and_detect(page)
    table = page.locator("#verdicts").inner_text()
    assert "00000_class0.png" in table and "watermarked" in table


def test_bad_inputs_get_one_line_messages(page, tmp_path):
    page.get_by_role("tab", name="Generate").click()
    pick_classes(page, "12")
    page.locator("#generate-button").click()
    expect_error(page, "class id(s) [12] out of range: this model has 10 classes (0..9)")
    pick_classes(page, "3")
    fill(page, "seed", "abc")
    page.locator("#generate-button").click()
    expect_error(page, "argument --seed: expected a seed in [0, 2**63 - 1], got 'abc'")
    fill(page, "seed", "0")
    fill(page, "top-k", "99999")
    page.locator("#generate-button").click()
    expect_error(page, "top-k must be an integer in [0, 512] (0 = off; the vocabulary has 512 codes), got 99999")
    fill(page, "top-k", "0")

    page.get_by_role("tab", name="Edit").click()
    upload = page.locator("#edit-upload input[type=file]")
    (tmp_path / "notes.txt").write_text("not a picture")
    upload.set_input_files(str(tmp_path / "notes.txt"))
    expect_error(page, "cannot read image notes.txt: cannot identify image file 'notes.txt'")
    Image.new("L", (5000, 4000)).save(tmp_path / "huge.png")  # 20 megapixels in a small file
    page.locator("#edit-upload [aria-label='Clear'], #edit-upload button[title='Clear']").first.click()
    upload.set_input_files(str(tmp_path / "huge.png"))
    expect_error(page, "image huge.png is 5000x4000 pixels (20.0 megapixels); this page takes images up to 16.8 "
                       "megapixels: downscale it first")
