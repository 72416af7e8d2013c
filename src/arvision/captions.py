"""The language of the shapes world: a closed vocabulary, GenEval's six prompt templates, and true captions of scenes.

Grammar (every caption and every prompt starts with "a photo of")::

    caption   := "a photo of" body
    body      := phrase                                   single_object, colors, counting
               | phrase "and" phrase                      two_object, color_attr
               | phrase relation phrase                   position
               | phrase ("," phrase)* "and" phrase        a full description (three or more groups)
    phrase    := ("a" | "an") [colour] shape              one object ("an" before a vowel: "an orange ring")
               | ("two" | "three" | "four") [colour] plural
    relation  := "left of" | "right of" | "above" | "below"

The six GenEval templates (Ghosh et al. 2023) are the forms of :data:`TASKS`:

=============== ============================================ ===================================================
task            prompt                                       true when (GenEval's rules, see ``prompt_meta``)
=============== ============================================ ===================================================
single_object   a photo of a {shape}                         at least one {shape}
two_object      a photo of a {A} and a {B}                   at least one A and one B (A != B)
counting        a photo of {two|three|four} {plural}         exactly n (at least n, and not n + 1)
colors          a photo of a {colour} {shape}                the most confident {shape} has that colour
position        a photo of a {A} {relation} a {B}            :func:`relations` of the two boxes holds it
color_attr      a photo of a {cA} {A} and a {cB} {B}         both colour clauses (A != B)
=============== ============================================ ===================================================

and the full description names every object of a scene, grouped by (shape, colour): "a photo of a red circle, a
blue square and two green crosses" (groups ordered left to right by their leftmost member).

Held-out pairs: :data:`HELD_OUT` is a fixed quarter of the 48 (shape, colour) pairs that training captions never
bind together -- an object of a held-out pair is still drawn, but described by its shape alone ("a circle").  The
colour tasks of :func:`arvision.evaluation.geneval.prompt_set` ask for these pairs: a compositional test.

Nothing here renders or imports torch; the truth of position captions uses the exact geometry of the scene graph
(:func:`arvision.scenes.bbox`) with a safety margin, so that the verifier, which measures pixels, agrees.
"""

from __future__ import annotations

import string
from collections import Counter

import numpy as np

from arvision.errors import ArvisionError
from arvision.scenes import COLOR_NAMES, SHAPES, Obj, Scene, bbox

__all__ = ["DESCRIPTION_SHARE", "HELD_OUT", "NUMBERS", "PLURALS", "POSITION_THRESHOLD", "RELATIONS", "TASKS",
           "VOCAB", "caption_forms", "clear_relations", "description", "description_groups", "parse", "phrase",
           "prompt", "prompt_meta", "relation_components", "relations", "sample_caption", "training_captions",
           "unknown_words", "words"]

TASKS = ("single_object", "two_object", "counting", "colors", "position", "color_attr")
PLURALS = {"circle": "circles", "square": "squares", "triangle": "triangles", "diamond": "diamonds",
           "cross": "crosses", "ring": "rings"}
NUMBERS = {2: "two", 3: "three", 4: "four"}
RELATIONS = ("left of", "right of", "above", "below")

VOCAB: tuple[str, ...] = ("a", "an", "photo", "of", "and", *SHAPES, *PLURALS.values(), *COLOR_NAMES,
                          *NUMBERS.values(), "left", "right", "above", "below")

# 12 of the 48 (shape, colour) pairs: every shape twice, red/yellow/green/blue twice and the other colours once.
HELD_OUT: frozenset[tuple[str, str]] = frozenset({
    ("circle", "red"), ("circle", "green"),
    ("square", "orange"), ("square", "blue"),
    ("triangle", "yellow"), ("triangle", "purple"),
    ("diamond", "green"), ("diamond", "pink"),
    ("cross", "blue"), ("cross", "white"),
    ("ring", "red"), ("ring", "yellow"),
})

DESCRIPTION_SHARE = 0.4  # sample_caption: the full description this often, else one task form

# GenEval's relative-position rule (evaluate_images.py, POSITION_THRESHOLD = 0.1)
POSITION_THRESHOLD = 0.1
# a position caption is written only when its component of the rule clears the 0.5 cut by this much: the boxes the
# verifier measures on a render are the exact ones rounded to pixels, which moved a component by at most 0.04 over
# 850 random pairs; twice that keeps the verdict the same
CLEAR_MARGIN = 0.08


# -- words ------------------------------------------------------------------------------------------------------------

def words(text: str) -> list[str]:
    """Lower-cased words of ``text``: split on whitespace, punctuation stripped from both ends ("circle," -> "circle");
    a word that is only punctuation is dropped."""
    out = []
    for w in str(text).lower().split():
        w = w.strip(string.punctuation)
        if w:
            out.append(w)
    return out


def unknown_words(text: str) -> list[str]:
    """The words of ``text`` not in :data:`VOCAB`, in order (repeats kept)."""
    vocab = set(VOCAB)
    return [w for w in words(text) if w not in vocab]


# -- building text ------------------------------------------------------------------------------------------------

def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def phrase(shape: str, color: str | None = None, count: int = 1) -> str:
    """One group: ``("circle", "orange")`` -> "an orange circle", ``("cross", None, 2)`` -> "two crosses"."""
    if shape not in SHAPES or (color is not None and color not in COLOR_NAMES):
        raise ArvisionError(f"no such object: {color or ''} {shape}".replace("  ", " "))
    if count == 1:
        head = color or shape
        return f"{_article(head)} {color + ' ' if color else ''}{shape}"
    if count not in NUMBERS:
        raise ArvisionError(f"counts are 1..4 in this language, got {count}")
    return f"{NUMBERS[count]} {color + ' ' if color else ''}{PLURALS[shape]}"


def description(groups: list[tuple[int, str | None, str]]) -> str:
    """A full description from groups ``[(count, colour or None, shape), ...]``: "a photo of a red circle, a square
    and two green crosses"."""
    parts = [phrase(shape, color, count) for count, color, shape in groups]
    if not parts:
        raise ArvisionError("a description needs at least one object")
    body = parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]
    return "a photo of " + body


def prompt(tag: str, *args) -> str:
    """The text of a GenEval template.  ``prompt("single_object", "circle")``, ``prompt("two_object", A, B)``,
    ``prompt("counting", shape, n)``, ``prompt("colors", shape, colour)``, ``prompt("position", A, relation, B)``
    ("A relation B"), ``prompt("color_attr", (A, cA), (B, cB))``."""
    if tag == "single_object":
        return "a photo of " + phrase(args[0])
    if tag == "two_object":
        return f"a photo of {phrase(args[0])} and {phrase(args[1])}"
    if tag == "counting":
        return "a photo of " + phrase(args[0], None, args[1])
    if tag == "colors":
        return "a photo of " + phrase(args[0], args[1])
    if tag == "position":
        return f"a photo of {phrase(args[0])} {args[1]} {phrase(args[2])}"
    if tag == "color_attr":
        (a, ca), (b, cb) = args
        return f"a photo of {phrase(a, ca)} and {phrase(b, cb)}"
    raise ArvisionError(f"unknown task {tag!r} (the tasks are {', '.join(TASKS)})")


# -- parsing ------------------------------------------------------------------------------------------------------

_SINGULAR = {v: k for k, v in PLURALS.items()}
_COUNT_OF = {"a": 1, "an": 1, **{v: k for k, v in NUMBERS.items()}}


def parse(text: str) -> dict:
    """``text`` -> ``{"groups": [(count, colour or None, shape), ...], "relation": str or None}``.

    Raises :class:`ArvisionError` naming the unknown words (never dropped silently), or saying where the text leaves
    the grammar of this module."""
    unknown = unknown_words(text)
    if unknown:
        raise ArvisionError(f"unknown word{'s' if len(unknown) > 1 else ''} {', '.join(map(repr, unknown))} in "
                            f"{text!r} (the vocabulary: {' '.join(VOCAB)})")
    ws = words(text)
    if ws[:3] != ["a", "photo", "of"]:
        raise ArvisionError(f"{text!r}: a prompt starts with 'a photo of'")
    i, groups, relation, joins = 3, [], None, []

    def fail(why: str):
        raise ArvisionError(f"{text!r}: {why} (see arvision.captions for the grammar)")

    while True:
        if i >= len(ws) or ws[i] not in _COUNT_OF:
            fail(f"expected a, an, two, three or four at word {i + 1}")
        count = _COUNT_OF[ws[i]]
        i += 1
        color = ws[i] if i < len(ws) and ws[i] in COLOR_NAMES else None
        i += color is not None
        if i >= len(ws):
            fail("it ends before the shape")
        noun = ws[i]
        shape = noun if count == 1 else _SINGULAR.get(noun)
        if (count == 1 and noun not in SHAPES) or shape is None:
            fail(f"expected {'a shape' if count == 1 else 'a plural shape'} at word {i + 1}, got {noun!r}")
        if count == 1 and ws[i - 1 - (color is not None)] != _article(color or shape):
            fail(f"{ws[i - 1 - (color is not None)]!r} before {(color or shape)!r}")
        groups.append((count, color, shape))
        i += 1
        if i == len(ws):
            break
        if ws[i] == "and":
            joins.append("and")
            i += 1
        elif ws[i] in ("left", "right") and i + 1 < len(ws) and ws[i + 1] == "of":
            joins.append(f"{ws[i]} of")
            i += 2
        elif ws[i] in ("above", "below"):
            joins.append(ws[i])
            i += 1
        else:
            joins.append(",")  # the comma between groups was stripped with the punctuation
    rel = [j for j in joins if j in RELATIONS]
    if rel:
        if len(groups) != 2:
            fail("a relation joins exactly two objects")
        relation = rel[0]
    elif len(groups) > 1 and joins[-1] != "and":
        fail("the last two groups are joined by 'and'")
    elif any(j == "and" for j in joins[:-1]):
        fail("groups before the last are separated by commas, not 'and'")
    return {"groups": groups, "relation": relation}


def prompt_meta(text: str) -> dict:
    """A prompt of one of the six templates -> GenEval's metadata: ``{"tag", "include", ["exclude"], "prompt"}``
    with ``include = [{"class", "count", ["color"], ["position": [relation, index]]}, ...]``.

    As in GenEval's ``create_prompts.py``: counting adds ``exclude [{"class", "count": n + 1}]``; position lists the
    reference object B first and A second with ``"position": [relation, 0]`` (A relative to include clause 0).  The
    two objects of two_object, position and color_attr must be different shapes (GenEval's rules judge a clause
    on the most confident objects of its class, so "a red circle and a blue circle" could never be true)."""
    p = parse(text)
    groups, rel = p["groups"], p["relation"]
    shapes = [g[2] for g in groups]
    clean = " ".join(words(text))
    if len(groups) == 2 and shapes[0] == shapes[1]:
        raise ArvisionError(f"{text!r}: the two objects of a prompt must be different shapes")
    if len(groups) == 1:
        count, color, shape = groups[0]
        if count == 1 and color is None:
            return {"tag": "single_object", "include": [{"class": shape, "count": 1}], "prompt": clean}
        if count == 1:
            return {"tag": "colors", "include": [{"class": shape, "count": 1, "color": color}], "prompt": clean}
        if color is None:
            return {"tag": "counting", "include": [{"class": shape, "count": count}],
                    "exclude": [{"class": shape, "count": count + 1}], "prompt": clean}
    elif len(groups) == 2 and all(g[0] == 1 for g in groups):
        (_, ca, a), (_, cb, b) = groups
        if rel is not None and ca is None and cb is None:
            return {"tag": "position", "include": [{"class": b, "count": 1},
                                                   {"class": a, "count": 1, "position": [rel, 0]}], "prompt": clean}
        if rel is None and ca is None and cb is None:
            return {"tag": "two_object", "include": [{"class": a, "count": 1}, {"class": b, "count": 1}],
                    "prompt": clean}
        if rel is None and ca is not None and cb is not None:
            return {"tag": "color_attr", "include": [{"class": a, "count": 1, "color": ca},
                                                     {"class": b, "count": 1, "color": cb}], "prompt": clean}
    raise ArvisionError(f"{text!r} is not one of the six GenEval templates ({', '.join(TASKS)})")


# -- the position words ---------------------------------------------------------------------------------------------

def relation_components(box_a, box_b, threshold: float = POSITION_THRESHOLD) -> tuple[float, float] | None:
    """GenEval's relative position of A to B, as the two numbers its cut at 0.5 is applied to.

    Boxes are ``(x0, y0, x1, y1)`` (x right, y down).  With c the box centres and w the box sizes (width, height),
    the offset ``c_A - c_B`` is pulled towards zero by ``threshold * (w_A + w_B)`` per axis (not past zero) and
    divided by the length of the unshrunk offset.  Returns (dx, dy), each in [-1, 1], or None when the shrunk offset
    is (nearly) zero: the boxes are too close for any relation."""
    a, b = np.asarray(box_a, dtype=np.float64), np.asarray(box_b, dtype=np.float64)
    offset = (a[:2] + a[2:]) / 2 - (b[:2] + b[2:]) / 2
    sizes = (a[2:] - a[:2]) + (b[2:] - b[:2])
    shrunk = np.sign(offset) * np.maximum(np.abs(offset) - threshold * sizes, 0.0)
    if np.all(np.abs(shrunk) < 1e-3):
        return None
    dx, dy = shrunk / np.linalg.norm(offset)
    return float(dx), float(dy)


def relations(box_a, box_b, threshold: float = POSITION_THRESHOLD) -> set[str]:
    """The relations that hold of A to B (GenEval's rule, :func:`relation_components`): "left of" when dx < -0.5,
    "right of" when dx > 0.5, "above" when dy < -0.5, "below" when dy > 0.5 (none, one or two of them)."""
    d = relation_components(box_a, box_b, threshold)
    if d is None:
        return set()
    dx, dy = d
    return {name for name, holds in (("left of", dx < -0.5), ("right of", dx > 0.5), ("above", dy < -0.5),
                                     ("below", dy > 0.5)) if holds}


def clear_relations(a: Obj, b: Obj, margin: float = CLEAR_MARGIN) -> set[str]:
    """The relations of object A to object B that hold on the exact boxes of the scene graph with ``margin`` to
    spare (their component beyond the cut at +-0.5 by at least ``margin``): what a caption may say of them."""
    d = relation_components(bbox(a), bbox(b))
    if d is None:
        return set()
    dx, dy = d
    return {name for name, holds in (("left of", dx < -0.5 - margin), ("right of", dx > 0.5 + margin),
                                     ("above", dy < -0.5 - margin), ("below", dy > 0.5 + margin)) if holds}


# -- captions of a scene ---------------------------------------------------------------------------------------------

def _visible_color(obj: Obj) -> str | None:
    """The colour a training caption may bind to this object: None for a held-out pair."""
    return None if (obj.shape, obj.color) in HELD_OUT else obj.color


def description_groups(scene: Scene) -> list[tuple[int, str | None, str]]:
    """The scene's objects grouped by (shape, visible colour), ordered left to right by each group's leftmost
    member (ties: top first): ``[(count, colour or None, shape), ...]``."""
    first: dict[tuple[str, str | None], tuple[float, float]] = {}
    counts: Counter = Counter()
    for o in scene.objects:
        key = (o.shape, _visible_color(o))
        counts[key] += 1
        first[key] = min(first.get(key, (o.x, o.y)), (o.x, o.y))
    return [(counts[k], k[1], k[0]) for k in sorted(counts, key=lambda k: (first[k], k[0], k[1] or ""))]


def caption_forms(scene: Scene) -> dict[str, list[str]]:
    """Every caption that is true of ``scene`` under GenEval's rules, by task (the six of :data:`TASKS`, plus
    "description": the one full description).  A task with no true form has an empty list.

    Forms are written only where the verdict cannot depend on which of several same-shape objects a detector ranks
    first: colour forms (colors, color_attr) only for a shape whose objects all share one colour; position forms
    only for two shapes present once each, and only relations that hold clearly (:func:`clear_relations`).
    Held-out pairs are never bound: an object of a held-out pair gets no colour form."""
    objs = scene.objects
    by_shape: dict[str, list[Obj]] = {}
    for o in objs:
        by_shape.setdefault(o.shape, []).append(o)
    present = [s for s in SHAPES if s in by_shape]
    uniform = {s: os_[0].color for s, os_ in by_shape.items()
               if len({o.color for o in os_}) == 1 and (s, os_[0].color) not in HELD_OUT}
    forms: dict[str, list[str]] = {t: [] for t in TASKS}
    forms["single_object"] = [prompt("single_object", s) for s in present]
    forms["two_object"] = [prompt("two_object", a, b) for a in present for b in present if a != b]
    forms["counting"] = [prompt("counting", s, len(by_shape[s])) for s in present if len(by_shape[s]) in NUMBERS]
    forms["colors"] = [prompt("colors", s, uniform[s]) for s in present if s in uniform]
    forms["color_attr"] = [prompt("color_attr", (a, uniform[a]), (b, uniform[b]))
                           for a in present for b in present if a != b and a in uniform and b in uniform]
    single = [s for s in present if len(by_shape[s]) == 1]
    for a in single:
        for b in single:
            if a != b:
                rels = clear_relations(by_shape[a][0], by_shape[b][0])
                forms["position"] += [prompt("position", a, r, b) for r in RELATIONS if r in rels]
    forms["description"] = [description(description_groups(scene))]
    return forms


def training_captions(scene: Scene) -> list[str]:
    """Every caption of :func:`caption_forms`, the full description first, then task by task (order of TASKS)."""
    forms = caption_forms(scene)
    return forms["description"] + [c for t in TASKS for c in forms[t]]


def sample_caption(scene: Scene, rng: np.random.Generator) -> str:
    """One caption of ``scene``: the full description with probability :data:`DESCRIPTION_SHARE` (0.4), else a
    task drawn uniformly among the tasks with at least one true form, then one of its forms uniformly.  Draws
    exactly two numbers from ``rng`` (deterministic given its state)."""
    forms = caption_forms(scene)
    u, v = rng.random(), rng.random()
    tasks = [t for t in TASKS if forms[t]]
    if u < DESCRIPTION_SHARE or not tasks:
        return forms["description"][0]
    options = forms[tasks[min(int((u - DESCRIPTION_SHARE) / (1 - DESCRIPTION_SHARE) * len(tasks)), len(tasks) - 1)]]
    return options[min(int(v * len(options)), len(options) - 1)]
