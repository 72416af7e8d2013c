"""Screenshots of ``arvision serve``'s three tabs for the README and docs/serve.md, taken in headless chromium.

    .venv/bin/python bench/serve_screenshots.py [--out docs/img]

Starts ``arvision serve mnist`` on a free port, generates eight digits, edits the first one (its top half painted
and regenerated as a 7), makes a watermarked digit and tests it, and writes ``serve_generate.png``,
``serve_edit.png`` and ``serve_watermark.png`` (the page at 1200 px wide, reduced to a 64-colour palette to stay
small).  Needs Debian's chromium (``apt-get install -y chromium``) and the test extra (Gradio, Playwright).
"""

from __future__ import annotations

import argparse
import io
from pathlib import Path

from PIL import Image

from arvision.serve import testing as visit

REPO = Path(__file__).resolve().parents[1]


def save_small(png: bytes, path: Path) -> None:
    """A screenshot as a 64-colour PNG (a page is flat colours: the palette loses nothing one can see)."""
    with Image.open(io.BytesIO(png)) as im:
        im.convert("RGB").quantize(colors=64, method=Image.Quantize.MEDIANCUT).save(path, optimize=True)
    print(f"wrote {path} ({path.stat().st_size // 1024} KB)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, default=REPO / "docs" / "img", help="folder of the PNGs (default docs/img)")
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    with visit.served(["mnist"]) as url, visit.chromium_page(url, width=1200, height=900) as page:
        visit.pick_classes(page, *[str(k) for k in range(8)])
        visit.fill(page, "seed", "0")
        visit.generate(page)
        save_small(page.screenshot(full_page=True), args.out / "serve_generate.png")
        top_half = tuple((-130, y, 130, y) for y in range(-130, 0, 16))  # the picture is about 290 px across
        visit.take_sample_and_edit(page, "class edit", "7", strokes=top_half)
        save_small(page.screenshot(full_page=True), args.out / "serve_edit.png")
        visit.watermark_and_detect(page)
        save_small(page.screenshot(full_page=True), args.out / "serve_watermark.png")


if __name__ == "__main__":
    main()
