"""A GenEval-style text-to-image benchmark on the shapes world, with an exact verifier (nothing learned).

GenEval (Ghosh et al. 2023, github.com/djghosh13/geneval) asks a model for ~550 prompts of six templates and
judges each image with an object detector plus a colour classifier.  Here the world is procedural
(:mod:`arvision.scenes`), so detection is exact on clean renders:

* :func:`detect` -- image uint8 ``(64, 64, 3)`` -> :class:`Detection` list (shape, colour, box, centre, area, score);
* :func:`check` -- image + a metadata dict in GenEval's ``evaluation_metadata.jsonl`` format -> (correct, reason);
* :func:`prompt_set` -- the fixed 553-prompt set (GenEval's task sizes), each with ``heldout``;
* ``geneval_scenes.scene_for`` / ``wrong_scenes`` -- scenes that satisfy a prompt, and deliberately wrong ones;
* :func:`score_folder`, :func:`summarize`, :func:`task_picture` -- score a folder of generated PNGs and report;
  :func:`write_jsonl` / :func:`read_jsonl` -- prompt files in GenEval's ``evaluation_metadata.jsonl`` layout.

Detection (thresholds are the module constants):

1. **Palette projection.**  Every pixel p is compared with each colour's mixing line ``BG + a (C - BG)``, a in
   [0, 1] (an anti-aliased edge pixel is such a mix of its colour and the background): ``a`` is the projection of
   ``p - BG`` on ``C - BG``, and the pixel takes the colour whose line is nearest.  Pixels with ``a <
   ALPHA_CUT`` (0.5) are background.
2. **Components**: 8-connected components of each colour (``scipy.ndimage.label``).  Their coverage is 1 inside,
   ``a`` on their boundary pixels and on the ring of background pixels around them (the anti-aliased fringe), so
   the area is the object's true area to within a few per cent.  Components of coverage below ``MIN_AREA``
   (40 px; the smallest object, r = 7, covers 154 px) are noise: absorbed into the one larger component they touch
   (a few off-colour pixels inside a generated shape), else dropped.
3. **Shape**: each of the six shapes is re-rendered (:func:`arvision.scenes.render_mask`) at the component's
   centroid with the radius its area implies (all shapes cover pi r^2); unless the best is already clear (IoU >=
   0.9 and 0.05 ahead of the second), the two best are refined by one step of a small search over centre (+-0.5
   px) and radius (+-4 %).  The best soft IoU (sum min / sum max of coverages) is the
   detection's ``score``; below ``MIN_IOU`` (0.7; two different shapes of one size overlap by at most 0.84, a
   ring and any other shape by under 0.5) the detection is shape ``"unknown"``.

An ``unknown`` detection is an object of no shape: it never satisfies an include clause (which names a shape) and
never counts towards an exclude clause, so a blob is neither a circle nor a fifth circle.  It is listed in failure
reasons.

Judging (:func:`judge`) follows GenEval's ``evaluate_images.py``: include clauses are ANDed, exclude clauses ORed;
an include clause ``{class, count}`` takes the ``count`` most confident detections of its class (here: highest
``score`` first) and fails when there are fewer; its ``color`` must then be the colour of each of them; its
``position: [relation, i]`` must hold of each of them relative to each object matched by include clause ``i``
(:func:`arvision.captions.relations`: box centres, the offset shrunk by 0.1 x the summed box sizes, normalised,
cut at +-0.5).  An exclude clause ``{class, count}`` fails when ``count`` or more of the class are detected -- so
counting prompts (include n, exclude n + 1) need exactly n.  Two differences from GenEval: no detector confidence
thresholds (GenEval's 0.3, and 0.9 for counting), since detections here are exact or unknown; and colour is read
off the palette, not by CLIP.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from arvision import captions as cap
from arvision import scenes
from arvision.errors import ArvisionError

__all__ = ["ALPHA_CUT", "MIN_AREA", "MIN_IOU", "TASK_SIZES", "Detection", "check", "detect", "judge", "project",
           "prompt_set", "read_jsonl", "score_folder", "summarize", "task_picture", "write_jsonl"]

ALPHA_CUT = 0.5  # a pixel belongs to a colour when it is at least half that colour (else background)
MIN_AREA = 40.0  # components with less coverage (px) are noise
MIN_IOU = 0.7  # below this best shape IoU a component is "unknown"
TASK_SIZES = {"single_object": 80, "two_object": 99, "counting": 80, "colors": 94, "position": 100, "color_attr": 100}
PROMPT_SEED = 2023
# the shape fit is refined unless the first guess is already this good and this far ahead of the second shape
REFINE_ABOVE, REFINE_MARGIN = 0.9, 0.05

_PALETTE = np.array([scenes.COLORS[c] for c in scenes.COLOR_NAMES], dtype=np.float64)  # (8, 3)
_BG = np.array(scenes.BACKGROUND, dtype=np.float64)
_EIGHT = np.ones((3, 3), dtype=bool)


@dataclass(frozen=True)
class Detection:
    """One detected object.

    ``shape``: one of ``scenes.SHAPES`` or ``"unknown"``; ``color``: a colour name; ``bbox``: ``(x0, y0, x1, y1)``
    integer pixel box of the component's pixels, ends exclusive (a pixel i spans [i, i + 1), x right, y down);
    ``center``: coverage-weighted centroid (x, y) in the same continuous coordinates; ``area``: summed coverage in
    px; ``r``: the fitted radius; ``score``: soft IoU of the best re-rendered shape, in [0, 1] (the confidence)."""

    shape: str
    color: str
    bbox: tuple[int, int, int, int]
    center: tuple[float, float]
    area: float
    r: float
    score: float


# -- detection --------------------------------------------------------------------------------------------------------

def project(image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Palette projection of a uint8 ``(H, W, 3)`` image -> (label int ``(H, W)``: colour index into
    ``scenes.COLOR_NAMES`` of the nearest mixing line, -1 where background; alphas float ``(8, H, W)``: each pixel's
    amount of each colour, clipped to [0, 1])."""
    p = image.astype(np.float64) - _BG  # (H, W, 3)
    d = _PALETTE - _BG  # (8, 3)
    dd = (d * d).sum(1)[:, None, None]  # (8, 1, 1)
    pd = np.einsum("hwc,kc->khw", p, d)  # (8, H, W)
    alphas = np.clip(pd / dd, 0.0, 1.0)
    resid = (p * p).sum(-1)[None] - 2 * alphas * pd + alphas * alphas * dd  # |p - a d|^2, (8, H, W)
    best = resid.argmin(0)
    a = np.take_along_axis(alphas, best[None], 0)[0]
    label = np.where(a >= ALPHA_CUT, best, -1)
    return label, alphas.astype(np.float32)


def _soft_iou(a: np.ndarray, b: np.ndarray) -> float:
    den = np.maximum(a, b).sum()
    return float(np.minimum(a, b).sum() / den) if den > 0 else 0.0


def _fit_shape(cov: np.ndarray, cx: float, cy: float, area: float) -> tuple[str, float, float, float, float]:
    """Best shape for coverage ``cov`` (H, W) -> (shape, score, x, y, r)."""
    r0 = math.sqrt(area / math.pi)
    scored = []
    for shape in scenes.SHAPES:
        m = scenes.render_mask(scenes.Obj(shape, "white", cx, cy, r0))
        scored.append((_soft_iou(cov, m), shape, cx, cy, r0))
    scored.sort(reverse=True)
    best = scored[0]
    if best[0] >= REFINE_ABOVE and best[0] - scored[1][0] >= REFINE_MARGIN:
        return best[1], best[0], cx, cy, r0
    for _, shape, x, y, r in scored[:2]:  # refine the two best: one step of a small local search
        for dx, dy, k in ((0.5, 0, 1), (-0.5, 0, 1), (0, 0.5, 1), (0, -0.5, 1), (0, 0, 0.96), (0, 0, 1.04)):
            cand = (_soft_iou(cov, scenes.render_mask(scenes.Obj(shape, "white", x + dx, y + dy, r * k))),
                    shape, x + dx, y + dy, r * k)
            if cand[0] > best[0]:
                best = cand
    score, shape, x, y, r = best
    return shape, score, x, y, r


def detect(image: np.ndarray) -> list[Detection]:
    """The objects of a uint8 ``(64, 64, 3)`` RGB image, most confident (highest score) first.  See the module
    docstring for the method and its thresholds.  Needs scipy."""
    from scipy import ndimage

    image = np.asarray(image)
    if image.shape != (scenes.SIZE, scenes.SIZE, 3) or image.dtype != np.uint8:
        raise ArvisionError(f"the verifier reads uint8 ({scenes.SIZE}, {scenes.SIZE}, 3) images, got "
                            f"{image.dtype} {tuple(image.shape)}")
    label, alphas = project(image)
    fg = label >= 0
    big, small = [], []  # big: [colour index, hard mask, coverage]; small: hard masks
    for k in np.unique(label[fg]).tolist():
        mask = label == k
        lab, n = ndimage.label(mask, structure=_EIGHT)
        # coverage: 1 inside, alpha on the component's edge and on the background ring around it (the fringe
        # pixel goes to the neighbouring component of this colour with the highest label, if two touch it)
        inside = ndimage.binary_erosion(mask, _EIGHT)
        grown = ndimage.grey_dilation(lab, footprint=_EIGHT)
        owner = np.where(mask, lab, np.where(fg, 0, grown))
        weight = np.where(inside, 1.0, np.where(owner > 0, alphas[k], 0.0))
        areas = np.bincount(owner.ravel(), weight.ravel(), minlength=n + 1)
        for i in range(1, n + 1):
            if areas[i] >= MIN_AREA:
                big.append([k, lab == i, np.where(owner == i, weight, 0.0).astype(np.float32)])
            else:
                small.append(lab == i)
    if small and big:
        # off-colour specks inside or on a larger object are part of it: those that touch exactly one
        ids = np.zeros(label.shape, np.int64)
        for j, (_, hard, _) in enumerate(big, 1):
            ids[hard] = j
        near_max = ndimage.grey_dilation(ids, footprint=_EIGHT)
        near_min = ndimage.grey_erosion(np.where(ids > 0, ids, len(big) + 1), footprint=_EIGHT)
        for hard in small:
            touching = set(near_max[hard].tolist()) | set(near_min[hard].tolist())
            touching -= {0, len(big) + 1}
            if len(touching) == 1:
                b = big[touching.pop() - 1]
                b[1] = b[1] | hard
                b[2] = np.maximum(b[2], hard.astype(np.float32))
    ys, xs = np.mgrid[0:scenes.SIZE, 0:scenes.SIZE]
    out = []
    for k, hard, cov in big:
        area = float(cov.sum())
        cx, cy = float((cov * xs).sum() / area + 0.5), float((cov * ys).sum() / area + 0.5)
        shape, score, _, _, r = _fit_shape(cov, cx, cy, area)
        rows, cols = np.nonzero(hard)
        box = (int(cols.min()), int(rows.min()), int(cols.max()) + 1, int(rows.max()) + 1)
        out.append(Detection(shape if score >= MIN_IOU else "unknown", scenes.COLOR_NAMES[k], box, (cx, cy),
                             area, float(r), float(score)))
    out.sort(key=lambda d: (-d.score, d.bbox))
    return out


# -- judging ----------------------------------------------------------------------------------------------------------

def _noun(shape: str, n: int) -> str:
    return shape if n == 1 else cap.PLURALS.get(shape, shape + "s")


def judge(detections: Sequence[Detection], meta: dict) -> tuple[bool, str]:
    """GenEval's verdict (see the module docstring) for ``detections`` (most confident first) and a metadata dict
    ``{"tag", "include": [...], "exclude": [...], "prompt"}`` -> (correct, reason; "" when correct, else one
    sentence per failed clause joined by "; ")."""
    by_class: dict[str, list[Detection]] = {}
    for d in sorted(detections, key=lambda d: -d.score):
        if d.shape != "unknown":
            by_class.setdefault(d.shape, []).append(d)
    unknown = sum(d.shape == "unknown" for d in detections)
    exact = {c["class"]: c["count"] - 1 for c in meta.get("exclude", [])}
    reasons, matched = [], []
    for clause in meta.get("include", []):
        cls, n = clause["class"], int(clause["count"])
        have = by_class.get(cls, [])
        found, met = have[:n], True
        if len(found) < n:
            met = False
            want = f"exactly {n}" if exact.get(cls) == n else f"at least {n}"
            reasons.append(f"found {len(have)} {_noun(cls, len(have))}, expected {want}")
        else:
            if "color" in clause:
                colors = [d.color for d in found]
                color = clause["color"]
                if colors.count(color) < n:
                    met = False
                    want = f"{'an' if color[0] in 'aeiou' else 'a'} {color} {cls}" if n == 1 else \
                        f"{n} {color} {_noun(cls, n)}"
                    top = f"the most confident {cls} is" if n == 1 else f"the {n} most confident {_noun(cls, n)} are"
                    reasons.append(f"expected {want}, {top} {' and '.join(colors)}")
            if "position" in clause and met:
                rel, target = clause["position"]
                group = matched[target] if target < len(matched) else None
                if group is None:
                    met = False
                    reasons.append(f"no object for the {cls} to be {rel}")
                else:
                    for d in found:
                        for t in group:
                            rels = cap.relations(d.bbox, t.bbox)
                            if rel not in rels:
                                met = False
                                reasons.append(f"expected the {cls} {rel} the {t.shape}, found it "
                                               f"{' and '.join(sorted(rels)) or 'in no clear relation to'} it")
                                break
                        if not met:
                            break
        matched.append(found if met else None)
    for clause in meta.get("exclude", []):
        cls, n = clause["class"], int(clause["count"])
        have = len(by_class.get(cls, []))
        if have >= n:
            want = f"exactly {n - 1}" if any(c["class"] == cls and c["count"] == n - 1
                                             for c in meta.get("include", [])) else f"fewer than {n}"
            reasons.append(f"found {have} {_noun(cls, have)}, expected {want}")
    if not reasons:
        return True, ""
    if unknown:
        reasons.append(f"{unknown} object{'s' if unknown > 1 else ''} of no recognised shape")
    return False, "; ".join(reasons)


def check(image: np.ndarray, meta: dict) -> tuple[bool, str]:
    """Is uint8 ``(64, 64, 3)`` ``image`` correct for ``meta`` (GenEval's metadata format)?  -> (correct, reason)."""
    return judge(detect(image), meta)


# -- the prompt set -------------------------------------------------------------------------------------------------

def _meta(text: str, heldout: bool = False) -> dict:
    return {**cap.prompt_meta(text), "heldout": heldout}


def _cycle(items: list, n: int) -> list:
    return [items[i % len(items)] for i in range(n)]


def prompt_set() -> list[dict]:
    """The fixed prompt set: 553 metadata dicts (GenEval's format plus ``heldout``), task by task in the order of
    ``captions.TASKS`` with GenEval's sizes (:data:`TASK_SIZES`), built from a fixed seed (same list every call).

    * single_object (80): the 6 shapes, cycled (each 13 or 14 times -- only 6 distinct prompts).
    * two_object (99): the 30 ordered pairs of different shapes in a shuffled order, cycled (each 3 or 4 times).
    * counting (80): the 18 (shape, two|three|four) prompts, cycled (each 4 or 5 times).
    * colors (94): 47 prompts cycle the 12 held-out pairs (each 3 or 4 times; ``heldout: true``), 47 cycle the 36
      seen pairs in a shuffled order.
    * position (100): 100 distinct of the 120 (A, relation, B) prompts, A != B.
    * color_attr (100): distinct prompts of two different shapes in two different colours (as GenEval): 50 where
      both pairs are held out (``heldout: true``), 50 where both are seen pairs.

    ``heldout`` is true exactly when the prompt binds a held-out (shape, colour) pair.
    """
    rng = np.random.default_rng(PROMPT_SEED)
    shapes = list(scenes.SHAPES)
    out = [_meta(cap.prompt("single_object", s)) for s in _cycle(shapes, TASK_SIZES["single_object"])]
    pairs = [(a, b) for a in shapes for b in shapes if a != b]
    pairs = [pairs[i] for i in rng.permutation(len(pairs))]
    out += [_meta(cap.prompt("two_object", a, b)) for a, b in _cycle(pairs, TASK_SIZES["two_object"])]
    counts = [(s, n) for n in cap.NUMBERS for s in shapes]
    out += [_meta(cap.prompt("counting", s, n)) for s, n in _cycle(counts, TASK_SIZES["counting"])]
    held = sorted(cap.HELD_OUT, key=lambda p: (shapes.index(p[0]), scenes.COLOR_NAMES.index(p[1])))
    seen = [(s, c) for s in shapes for c in scenes.COLOR_NAMES if (s, c) not in cap.HELD_OUT]
    seen = [seen[i] for i in rng.permutation(len(seen))]
    n_held = TASK_SIZES["colors"] // 2
    out += [_meta(cap.prompt("colors", s, c), True) for s, c in _cycle(held, n_held)]
    out += [_meta(cap.prompt("colors", s, c)) for s, c in _cycle(seen, TASK_SIZES["colors"] - n_held)]
    positions = [(a, rel, b) for a, b in pairs for rel in cap.RELATIONS]
    out += [_meta(cap.prompt("position", *positions[i]))
            for i in sorted(rng.choice(len(positions), TASK_SIZES["position"], replace=False))]
    for pool, heldout, n in ((held, True, TASK_SIZES["color_attr"] // 2),
                             (seen, False, TASK_SIZES["color_attr"] - TASK_SIZES["color_attr"] // 2)):
        chosen: list[str] = []
        while len(chosen) < n:
            i, j = rng.choice(len(pool), 2, replace=False)
            (a, ca), (b, cb) = pool[i], pool[j]
            text = cap.prompt("color_attr", (a, ca), (b, cb))
            if a != b and ca != cb and text not in chosen:
                chosen.append(text)
        out += [_meta(t, heldout) for t in chosen]
    return out


# -- scoring a folder and reporting ----------------------------------------------------------------------------------

def first_per_task(metas: Sequence[dict], n: int) -> list[dict]:
    """The first ``n`` prompts of each task of ``metas``, in their order (quick subsets of the prompt set)."""
    seen: dict[str, int] = {}
    kept = []
    for m in metas:
        seen[m["tag"]] = seen.get(m["tag"], 0) + 1
        if seen[m["tag"]] <= n:
            kept.append(m)
    return kept


def score_folder(folder: str | Path, metas: Sequence[dict], per_prompt: int) -> list[dict]:
    """Judge the images of ``folder``: image ``{index:05d}.png`` with ``index = line * per_prompt + j`` is sample
    ``j`` of prompt ``metas[line]``.  Every expected file must exist (a missing one is an error naming it).

    Returns one dict per image: ``line``, ``index``, ``file``, ``tag``, ``prompt``, ``heldout``, ``correct``,
    ``reason``, ``detections`` (list of :class:`Detection` as dicts)."""
    from arvision.images import read_image

    folder = Path(folder)
    if not folder.is_dir():
        raise ArvisionError(f"image folder not found: {folder}")
    if isinstance(per_prompt, bool) or not isinstance(per_prompt, int) or per_prompt < 1:
        raise ArvisionError(f"per_prompt must be a positive integer, got {per_prompt!r}")
    names = [f"{line * per_prompt + j:05d}.png" for line in range(len(metas)) for j in range(per_prompt)]
    missing = [n for n in names if not (folder / n).is_file()]
    if missing:
        raise ArvisionError(f"{len(missing)} of {len(names)} images missing in {folder} (first: {missing[0]}; "
                            f"expected {{line * {per_prompt} + j:05d}}.png for {len(metas)} prompts)")
    results = []
    for line, meta in enumerate(metas):
        for j in range(per_prompt):
            index = line * per_prompt + j
            path = folder / names[index]
            image = np.asarray(read_image(path))
            if image.shape != (scenes.SIZE, scenes.SIZE, 3):
                raise ArvisionError(f"{path}: {image.shape[1]}x{image.shape[0]} px, the verifier reads "
                                    f"{scenes.SIZE}x{scenes.SIZE}")
            dets = detect(image)
            ok, reason = judge(dets, meta)
            results.append({"line": line, "index": index, "file": names[index], "tag": meta["tag"],
                            "prompt": meta["prompt"], "heldout": bool(meta.get("heldout", False)), "correct": ok,
                            "reason": reason, "detections": [asdict(d) for d in dets]})
    return results


def summarize(results: Sequence[dict]) -> dict:
    """GenEval's summary of per-image results (dicts with ``tag``, ``correct`` and optionally ``line``, ``heldout``):

    * ``tasks``: per task (in the order of ``captions.TASKS``, then any other tag) ``accuracy`` = correct images /
      images, ``correct``, ``images``, and for tasks with held-out prompts ``heldout_accuracy`` / ``seen_accuracy``;
    * ``overall``: the mean of the task accuracies (GenEval's score: every task weighs the same);
    * ``image_accuracy``: correct images / images;
    * ``prompt_accuracy``: the share of prompts with at least one correct image (prompts keyed by ``line`` when
      present, else by ``prompt`` text);
    * ``images``, ``prompts``.
    """
    if not results:
        raise ArvisionError("no results to summarize")
    tags = [t for t in cap.TASKS if any(r["tag"] == t for r in results)]
    tags += sorted({r["tag"] for r in results} - set(tags))
    tasks = {}
    for t in tags:
        rs = [r for r in results if r["tag"] == t]
        row = {"accuracy": sum(bool(r["correct"]) for r in rs) / len(rs),
               "correct": sum(bool(r["correct"]) for r in rs), "images": len(rs)}
        held = [r for r in rs if r.get("heldout")]
        if held:
            seen = [r for r in rs if not r.get("heldout")]
            row["heldout_accuracy"] = sum(bool(r["correct"]) for r in held) / len(held)
            row["seen_accuracy"] = sum(bool(r["correct"]) for r in seen) / len(seen) if seen else None
        tasks[t] = row
    by_prompt: dict = {}
    for r in results:
        key = r.get("line", r.get("prompt"))
        by_prompt[key] = by_prompt.get(key, False) or bool(r["correct"])
    return {"tasks": tasks, "overall": float(np.mean([tasks[t]["accuracy"] for t in tags])),
            "image_accuracy": sum(bool(r["correct"]) for r in results) / len(results),
            "prompt_accuracy": sum(by_prompt.values()) / len(by_prompt), "images": len(results),
            "prompts": len(by_prompt)}


def _mark(draw, x: int, y: int, ok: bool) -> None:
    """A 12 px tick (green) or cross (red) on a white disc at (x, y) (top-left)."""
    draw.ellipse([x, y, x + 14, y + 14], fill="white")
    if ok:
        draw.line([(x + 3, y + 7), (x + 6, y + 10), (x + 11, y + 3)], fill=(0, 150, 0), width=2)
    else:
        draw.line([(x + 4, y + 4), (x + 10, y + 10)], fill=(200, 0, 0), width=2)
        draw.line([(x + 10, y + 4), (x + 4, y + 10)], fill=(200, 0, 0), width=2)


def task_picture(images: Sequence[np.ndarray], metas: Sequence[dict], per_task: int = 8,
                 verdicts: Sequence[bool] | None = None):
    """A labelled grid (PIL RGB image): one row per task (the order of ``captions.TASKS``, tasks without images
    left out) of its first ``per_task`` images, each upscaled 2x with a tick or a cross in its corner and the
    prompt (without "a photo of") underneath.  ``images``: uint8 ``(64, 64, 3)`` arrays, ``metas``: their prompts'
    metadata; ``verdicts``: their correctness (default: :func:`check` each shown image)."""
    from PIL import Image, ImageDraw, ImageFont

    if len(images) != len(metas) or (verdicts is not None and len(verdicts) != len(images)):
        raise ArvisionError("task_picture needs one meta (and one verdict) per image")
    rows = []
    for t in list(cap.TASKS) + sorted({m["tag"] for m in metas} - set(cap.TASKS)):
        picks = [i for i, m in enumerate(metas) if m["tag"] == t][:per_task]
        if picks:
            rows.append((t, picks))
    if not rows:
        raise ArvisionError("no images to draw")
    cell, label_w, text_h, pad = 2 * scenes.SIZE, 96, 24, 4
    ncol = max(len(p) for _, p in rows)
    pic = Image.new("RGB", (label_w + ncol * (cell + pad) + pad, len(rows) * (cell + text_h + pad) + pad), "white")
    draw = ImageDraw.Draw(pic)
    font = ImageFont.load_default()
    for r, (t, picks) in enumerate(rows):
        y = pad + r * (cell + text_h + pad)
        oks = [bool(verdicts[i]) if verdicts is not None else check(np.asarray(images[i]), metas[i])[0]
               for i in picks]
        draw.text((pad, y + cell // 2 - 10), t, fill="black", font=font)
        draw.text((pad, y + cell // 2 + 4), f"{sum(oks)}/{len(oks)} correct", fill="gray", font=font)
        for c, (i, ok) in enumerate(zip(picks, oks)):
            x = label_w + c * (cell + pad)
            pic.paste(Image.fromarray(np.asarray(images[i], dtype=np.uint8)).resize((cell, cell), Image.NEAREST),
                      (x, y))
            _mark(draw, x + cell - 16, y + 2, ok)
            text = metas[i]["prompt"].removeprefix("a photo of ")
            split = text.rfind(" ", 0, 21) if len(text) > 21 else -1
            lines = [text[:split], text[split + 1:]] if split > 0 else [text]
            for k, line in enumerate(lines[:2]):
                draw.text((x + 1, y + cell + 1 + 11 * k), line[:22], fill="black", font=font)
    return pic


def write_jsonl(metas: Sequence[dict], path: str | Path) -> Path:
    """Write metadata dicts one JSON object a line (GenEval's ``evaluation_metadata.jsonl`` layout), whole or not at
    all (a temporary file in the same folder, renamed)."""
    import os
    import tempfile

    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".part", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            f.write("".join(json.dumps(m) + "\n" for m in metas))
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def read_jsonl(path: str | Path) -> list[dict]:
    """Metadata dicts from a JSON-lines file (GenEval's layout; blank lines skipped); a bad line is an error naming
    it."""
    path = Path(path)
    if not path.is_file():
        raise ArvisionError(f"prompt file not found: {path}")
    out = []
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            meta = json.loads(line)
        except json.JSONDecodeError as e:
            raise ArvisionError(f"{path}:{n}: not JSON ({e.msg})") from None
        if not isinstance(meta, dict) or "tag" not in meta or "include" not in meta:
            raise ArvisionError(f"{path}:{n}: expected an object with 'tag' and 'include' (GenEval's metadata)")
        out.append(meta)
    return out


class OracleVerifier:
    """The exact verifier as a search reward (``arvision.sampling.verifiers`` protocol): 1.0 when the image passes
    its prompt's check, else 0.0.  An oracle: a search ranked by it is an upper bound, and best-of-N with it must
    score the empirical pass@N.  ``images`` (B, 3, 64, 64) in [-1, 1]; ``prompts`` B strings of the scene language
    (parsed by :func:`arvision.captions.prompt_meta`)."""

    def __init__(self):
        self._metas: dict[str, dict] = {}

    def meta(self, prompt: str) -> dict:
        if prompt not in self._metas:
            self._metas[prompt] = cap.prompt_meta(prompt)
        return self._metas[prompt]

    def __call__(self, images, prompts):
        import torch

        from arvision.images import to_uint8

        arr = to_uint8((images.detach().float() + 1) / 2)
        return torch.tensor([float(check(a, self.meta(p))[0]) for a, p in zip(arr, prompts)])
