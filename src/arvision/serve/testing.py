"""Running the page as a person would, for the browser test, the screenshots and the load test: ``arvision serve``
as a subprocess on a free local port, and a headless chromium (Debian's, driven by Playwright's Python API: its own
browser download is not needed).

    with served(["mnist"]) as url, chromium_page(url) as page:
        page.locator("#generate-button").click()
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
SRC = Path(__file__).resolve().parents[2]  # the folder holding this arvision package


def server_env(threads: int = 1) -> dict:
    """The server's environment: ``threads`` CPU threads (CPU float sums depend on the count: a reference run to
    compare bytes with must use the same), these sources first on the path, no usage statistics."""
    path = os.pathsep.join(filter(None, [str(SRC), os.environ.get("PYTHONPATH")]))
    return dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads),
                GRADIO_ANALYTICS_ENABLED="False", PYTHONPATH=path)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def served(args: list[str], threads: int = 1, start_timeout_s: float = 120) -> Iterator[str]:
    """``arvision serve ARGS --port P`` in a subprocess, up and answering -> its URL; stopped on exit.  A server
    that exits or does not answer in time is reported with its output."""
    with served_process(args, threads, start_timeout_s) as (url, _):
        yield url


@contextlib.contextmanager
def served_process(args: list[str], threads: int = 1,
                   start_timeout_s: float = 120) -> Iterator[tuple[str, subprocess.Popen]]:
    """:func:`served`, also giving the process (its ``pid``: for memory measurements)."""
    port = free_port()
    with tempfile.TemporaryFile() as log:
        proc = subprocess.Popen([sys.executable, "-m", "arvision", "serve", *args, "--port", str(port)],
                                env=server_env(threads), stdout=log, stderr=subprocess.STDOUT)
        url = f"http://127.0.0.1:{port}/"
        try:
            deadline = time.monotonic() + start_timeout_s
            while True:
                try:
                    urllib.request.urlopen(url, timeout=5).close()
                    break
                except OSError:
                    if proc.poll() is not None or time.monotonic() > deadline:
                        log.seek(0)
                        raise RuntimeError("arvision serve did not start:\n"
                                           + log.read().decode(errors="replace")[-4000:]) from None
                    time.sleep(0.5)
            yield url, proc
        finally:
            proc.terminate()
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


@contextlib.contextmanager
def chromium_page(url: str, width: int = 1280, height: int = 1000, timeout_ms: int = 60_000):
    """A fresh headless chromium profile showing ``url`` once the page's Generate button is there."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p, tempfile.TemporaryDirectory() as profile:
        browser = p.chromium.launch_persistent_context(
            profile, executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True, accept_downloads=True,
            viewport={"width": width, "height": height})
        try:
            page = browser.new_page()
            page.set_default_timeout(timeout_ms)
            page.goto(url)
            page.wait_for_selector("#generate-button")
            yield page
        finally:
            browser.close()


# -- what a visitor does -----------------------------------------------------------------------------------------

def pick_classes(page, *values: str, elem_id: str = "classes") -> None:
    """Clear the class picker and type each value (a class id, or anything else: it is sent as typed)."""
    page.locator(f"#{elem_id} [title=Clear]").click()
    box = page.locator(f"#{elem_id} input")
    for v in values:
        box.click()
        box.fill(v)
        box.press("Enter")
    page.keyboard.press("Escape")


def fill(page, elem_id: str, value: str) -> None:
    page.locator(f"#{elem_id} input, #{elem_id} textarea").first.fill(value)


def wait_for_text(page, elem_id: str, text: str) -> None:
    """Wait until element ``elem_id`` shows ``text``; an error toast instead fails at once with its message."""
    page.wait_for_function(f"document.querySelector('#{elem_id}').innerText.includes({text!r}) || "
                           "document.querySelector('.toast-body') !== null")
    toast = page.locator(".toast-body")
    if toast.count() and text not in page.locator(f"#{elem_id}").inner_text():
        raise AssertionError(f"the page said: {toast.first.inner_text()!r} (waiting for {text!r} in #{elem_id})")


def generate(page) -> None:
    page.locator("#generate-button").click()
    wait_for_text(page, "status", "s per image")


def paint_stroke(page, x0: float = -40, y0: float = -20, x1: float = 40, y1: float = 20) -> None:
    """Drag the brush over the editor's canvas from (x0, y0) to (x1, y1), screen pixels from its centre (where the
    picture is)."""
    box = page.locator("#editor canvas").first.bounding_box()
    x, y = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2
    page.mouse.move(x + x0, y + y0)
    page.mouse.down()
    for i in range(21):
        page.mouse.move(x + x0 + (x1 - x0) * i / 20, y + y0 + (y1 - y0) * i / 20)
    page.mouse.up()


def take_sample_and_edit(page, mode: str = "in-paint", klass: str | None = None,
                         strokes: tuple = ((-40, -20, 40, 20),)) -> None:
    """On the Edit tab: take the Generate tab's first image, paint ``strokes`` (:func:`paint_stroke`'s), run the
    edit in ``mode`` (a class edit as class ``klass``)."""
    page.get_by_role("tab", name="Edit").click()
    page.locator("#take-sample").click()
    wait_for_text(page, "edit-status", "paint the region")
    for stroke in strokes:
        paint_stroke(page, *stroke)
    page.locator("#edit-mode").get_by_text(mode, exact=True).click()
    if klass is not None:
        box = page.locator("#edit-class input")
        box.click()
        box.fill(klass)
        box.press("Enter")
    page.locator("#edit-button").click()
    wait_for_text(page, "edit-command", "arvision edit")


def watermark_and_detect(page, key: str = "demo key") -> None:
    """On the Watermark tab: generate with ``key``, then test the images it made."""
    page.get_by_role("tab", name="Watermark").click()
    fill(page, "wm-key", key)
    page.locator("#wm-button").click()
    wait_for_text(page, "wm-status", "s per image")
    page.locator("#detect-button").click()
    wait_for_text(page, "verdicts", "standard deviations")
