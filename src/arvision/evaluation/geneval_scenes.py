"""Scenes for a prompt of the GenEval-style prompt set (``evaluation/geneval.py``): a random scene that satisfies
it (:func:`scene_for`), and deliberately wrong ones by kind (:func:`wrong_scenes`).  They are the oracle images the
verifier is measured on (``bench/t2i_verifier.py``, the tests) and the search benchmarks' known answers."""

from __future__ import annotations

import numpy as np

from arvision import captions as cap
from arvision import scenes
from arvision.errors import ArvisionError


def _required(meta: dict, rng: np.random.Generator) -> list[tuple[str, str]]:
    specs = []
    for clause in meta.get("include", []):
        for _ in range(int(clause["count"])):
            color = clause.get("color") or scenes.COLOR_NAMES[int(rng.integers(len(scenes.COLOR_NAMES)))]
            specs.append((clause["class"], color))
    return specs


def _position_clause(meta: dict) -> tuple[str, str, str] | None:
    """(A, relation, B) of a position prompt, else None."""
    inc = meta.get("include", [])
    for clause in inc:
        if "position" in clause:
            rel, target = clause["position"]
            return clause["class"], rel, inc[target]["class"]
    return None


def _holds_clearly(scene: scenes.Scene, meta: dict) -> bool:
    pos = _position_clause(meta)
    if pos is None:
        return True
    a, rel, b = pos
    oa = next(o for o in scene.objects if o.shape == a)
    ob = next(o for o in scene.objects if o.shape == b)
    return rel in cap.clear_relations(oa, ob)


def _grid_scene(specs: list[tuple[str, str]], rng: np.random.Generator) -> scenes.Scene:
    """Up to 9 small objects (r = 7) in random cells of a 3x3 grid: always fits (for five objects of one shape,
    which random placement rarely manages)."""
    cell = scenes.SIZE / 3
    cells = rng.permutation(9)[:len(specs)]
    return scenes.Scene(tuple(
        scenes.Obj(shape, color, float((c % 3 + 0.5) * cell + rng.uniform(-0.5, 0.5)),
                   float((c // 3 + 0.5) * cell + rng.uniform(-0.5, 0.5)), scenes.RADIUS_RANGE[0])
        for (shape, color), c in zip(specs, cells)))


def scene_for(meta: dict, rng: np.random.Generator, distractors: bool = True) -> scenes.Scene:
    """A random scene that satisfies ``meta``: the objects its include clauses ask for (uncoloured clauses get random
    colours), placed so that a position clause holds with margin (:func:`arvision.captions.clear_relations`), plus
    0-2 distractors (up to ``scenes.MAX_OBJECTS`` objects in all) whose shapes no clause mentions, so they cannot
    change the verdict.  Deterministic given ``rng``."""
    named = {c["class"] for c in meta.get("include", []) + meta.get("exclude", [])}
    others = [s for s in scenes.SHAPES if s not in named]
    for _ in range(1000):
        specs = _required(meta, rng)
        room = max(0, scenes.MAX_OBJECTS - len(specs))
        k = int(rng.integers(0, min(2, room) + 1)) if distractors and others else 0
        for _ in range(k):
            specs.append((others[int(rng.integers(len(others)))],
                          scenes.COLOR_NAMES[int(rng.integers(len(scenes.COLOR_NAMES)))]))
        scene = scenes.place(rng, specs) if len(specs) <= scenes.MAX_OBJECTS else _grid_scene(specs, rng)
        if scene is not None and _holds_clearly(scene, meta):
            return scene
    raise ArvisionError(f"no scene found for {meta.get('prompt')!r}")


def wrong_scenes(meta: dict, rng: np.random.Generator) -> dict[str, scenes.Scene]:
    """Deliberately wrong scenes for ``meta``, by kind (only the kinds that apply to its task):

    * ``missing_object``: every object of the first include clause's shape removed (one of another shape is added
      if nothing is left); for counting this is zero objects of the shape;
    * ``count_minus_one`` / ``count_plus_one`` (counting): n - 1 / n + 1 objects of the shape (n + 1 = 5 for
      "four": one more than ``scenes.MAX_OBJECTS``, small and on a 3x3 grid);
    * ``wrong_color`` (colors, color_attr): the first coloured object in another colour (not the other clause's);
    * ``swapped_position`` (position): the two objects trade places;
    * ``swapped_binding`` (color_attr): the two objects trade colours.
    """
    tag = meta["tag"]
    inc = meta["include"]
    out: dict[str, scenes.Scene] = {}
    base = scene_for(meta, rng)
    first = inc[0]["class"]
    kept = tuple(o for o in base.objects if o.shape != first)
    if not kept:
        other = next(s for s in scenes.SHAPES if s != first)
        kept = (scenes.Obj(other, "white", 32.0, 32.0, 9.0),)
    out["missing_object"] = scenes.Scene(kept)
    if tag == "counting":
        n = int(inc[0]["count"])
        for name, m in (("count_minus_one", n - 1), ("count_plus_one", n + 1)):
            out[name] = scene_for({"tag": "counting", "include": [{"class": first, "count": m}]}, rng,
                                  distractors=False)
    if tag in ("colors", "color_attr"):
        used = {c["color"] for c in inc}
        target = inc[0]
        colors = [c for c in scenes.COLOR_NAMES if c not in used]
        new = colors[int(rng.integers(len(colors)))]
        out["wrong_color"] = scenes.Scene(tuple(
            scenes.Obj(o.shape, new, o.x, o.y, o.r) if o.shape == target["class"] else o for o in base.objects))
    if tag == "color_attr":
        (a, ca), (b, cb) = ((c["class"], c["color"]) for c in inc)
        swap = {a: cb, b: ca}
        out["swapped_binding"] = scenes.Scene(tuple(
            scenes.Obj(o.shape, swap.get(o.shape, o.color), o.x, o.y, o.r) for o in base.objects))
    if tag == "position":
        a, _, b = _position_clause(meta)
        oa = next(o for o in base.objects if o.shape == a)
        ob = next(o for o in base.objects if o.shape == b)
        moved = {a: (ob.x, ob.y), b: (oa.x, oa.y)}
        swapped = scenes.Scene(tuple(scenes.Obj(o.shape, o.color, *moved[o.shape], o.r) if o.shape in moved else o
                                     for o in base.objects))
        if not swapped.fits():  # different sizes may no longer fit where the other was: mirror the scene instead
            a_, rel, b_ = _position_clause(meta)
            horizontal = rel in ("left of", "right of")
            swapped = scenes.Scene(tuple(
                scenes.Obj(o.shape, o.color, scenes.SIZE - o.x if horizontal else o.x,
                           o.y if horizontal else scenes.SIZE - o.y, o.r) for o in base.objects))
        out["swapped_position"] = swapped
    return out
