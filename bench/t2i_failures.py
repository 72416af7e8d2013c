"""Why text-to-image samples fail the verifier: the reasons of an `arvision eval geneval --json` report, tallied.

    arvision eval geneval shapes --per-prompt 1 --seed 1000 --json > eval.json
    python bench/t2i_failures.py eval.json [more.json ...]

Per failing image, each clause the verifier rejected falls in one class: a named shape missing, the wrong count, the
wrong colour on the most confident object of the named shape, the wrong relation; and whether the image holds
objects of no recognised shape (blobs).  For wrong colours it prints the confusion pairs and how often the colour
drawn is one of the two palette colours nearest (in RGB) to the one asked for, against the 2/7 that a colour drawn
at random among the other seven would give: near-misses point at a model that has learnt colours only roughly,
uniform errors at one that ignores the colour word.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from arvision.scenes import COLORS  # noqa: E402

_MISSING = re.compile(r"found 0 \w+, expected at least")
_COUNT = re.compile(r"found [1-9]\d* \w+, expected (exactly|at least|fewer than) \d+")
_COLOR = re.compile(r"expected an? (\w+) (\w+), the most confident \w+ is (\w+)")  # one-object colour clauses


def nearest_colors(name: str, k: int = 2) -> set[str]:
    """The ``k`` palette colours nearest to ``name`` in RGB (``name`` itself excluded)."""
    ref = COLORS[name]
    dist = sorted((sum((a - b) ** 2 for a, b in zip(rgb, ref, strict=True)), other)
                  for other, rgb in COLORS.items() if other != name)
    return {other for _, other in dist[:k]}


def tally(results: list[dict]) -> dict:
    """Failure classes over the failing images of one or more reports."""
    classes: Counter = Counter()
    pairs: Counter = Counter()
    failing = 0
    for r in results:
        if r["correct"]:
            continue
        failing += 1
        reason = r["reason"]
        if _MISSING.search(reason):
            classes["a named shape missing"] += 1
        if _COUNT.search(reason):
            classes["wrong count"] += 1
        if "no object for the" in reason or "expected the " in reason:
            classes["wrong or missing relation"] += 1
        colors = _COLOR.findall(reason)
        if colors:
            classes["wrong colour"] += 1
        for want, _shape, got in colors:
            pairs[(want, got)] += 1
        if "of no recognised shape" in reason:
            classes["objects of no recognised shape present"] += 1
    near = sum(n for (want, got), n in pairs.items() if got in nearest_colors(want))
    return {"images": len(results), "failing": failing, "classes": dict(classes.most_common()),
            "color_errors": sum(pairs.values()), "color_errors_to_nearest_two": near,
            "pairs": [(w, g, n) for (w, g), n in pairs.most_common()]}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("reports", nargs="+", help="JSON written by `arvision eval geneval --json`")
    args = ap.parse_args()
    results = []
    for path in args.reports:
        results += json.loads(Path(path).read_text())["results"]
    t = tally(results)
    print(f"{t['failing']} of {t['images']} images fail; a failing image can fall in several classes")
    print("| failure | images | share of failing |\n|---|---:|---:|")
    for name, n in t["classes"].items():
        print(f"| {name} | {n} | {n / max(t['failing'], 1):.1%} |")
    if t["color_errors"]:
        share = t["color_errors_to_nearest_two"] / t["color_errors"]
        print(f"\nwrong colours: {t['color_errors']} clauses; the colour drawn is one of the two palette colours "
              f"nearest the one asked for in {share:.1%} (2/7 = 28.6% if it were drawn at random among the others)")
        print("most frequent (asked -> drawn): " + ", ".join(f"{w}->{g} {n}" for w, g, n in t["pairs"][:10]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
