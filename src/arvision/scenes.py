"""The ``shapes`` world: procedural 64x64 scenes of coloured shapes, their scene graphs and how they are drawn.

The conventions here are fixed (other tools read these images; the verifier ``arvision.evaluation.geneval``
re-renders candidates with the same code):

* canvas 64x64 RGB, background ``BACKGROUND`` (32, 32, 32);
* shapes ``SHAPES`` (circle, square, triangle, diamond, cross, ring), all of equal area pi r^2 for a "radius" r in
  ``RADIUS_RANGE`` (7..12 px);
* colours ``COLORS`` (8 named RGB values);
* 1..4 objects whose bounding circles (``extent``) keep a gap of at least ``GAP`` px;
* drawn at ``SUPERSAMPLE`` x the size and box-filtered down (anti-aliased edges).

A :class:`Scene` is its list of :class:`Obj` (shape, colour, centre x, y in pixels, radius).  ``sample_scene(rng)``
draws one from a numpy Generator; ``render(scene)`` -> uint8 (64, 64, 3).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

SIZE = 64
BACKGROUND = (32, 32, 32)
SHAPES = ("circle", "square", "triangle", "diamond", "cross", "ring")
COLORS = {
    "red": (220, 40, 40),
    "orange": (245, 140, 30),
    "yellow": (235, 215, 40),
    "green": (40, 190, 60),
    "blue": (50, 90, 235),
    "purple": (160, 60, 210),
    "pink": (240, 120, 190),
    "white": (235, 235, 235),
}
COLOR_NAMES = tuple(COLORS)
RADIUS_RANGE = (7.0, 12.0)
GAP = 2.0
MAX_OBJECTS = 4
SUPERSAMPLE = 4

# Equal areas: every shape covers pi r^2.  Side of a square/diamond: r sqrt(pi); side of the equilateral triangle:
# r sqrt(4 pi / sqrt 3); the cross is a plus of span S and arm width S/3 (area 5 S^2 / 9); the ring's hole has half
# its outer radius R (area 3/4 pi R^2).
_SQUARE_SIDE = math.sqrt(math.pi)
_TRIANGLE_SIDE = math.sqrt(4 * math.pi / math.sqrt(3))
_CROSS_SPAN = 3 * math.sqrt(math.pi / 5)
_RING_OUTER = 2 / math.sqrt(3)

# Radius of each shape's bounding circle about its centre, per unit r (what the gap rule is measured on).
EXTENT = {
    "circle": 1.0,
    "square": _SQUARE_SIDE / math.sqrt(2),
    "triangle": _TRIANGLE_SIDE / math.sqrt(3),
    "diamond": _SQUARE_SIDE / math.sqrt(2),
    "cross": _CROSS_SPAN / 2 * math.sqrt(1 + 1 / 9),
    "ring": _RING_OUTER,
}


@dataclass(frozen=True)
class Obj:
    """One object: ``shape`` in SHAPES, ``color`` in COLORS, centre (x, y) in pixels (x right, y down), radius r."""

    shape: str
    color: str
    x: float
    y: float
    r: float

    @property
    def extent(self) -> float:
        return EXTENT[self.shape] * self.r


@dataclass(frozen=True)
class Scene:
    objects: tuple[Obj, ...]

    def fits(self) -> bool:
        """Inside the canvas and at least GAP apart (bounding circles)."""
        for i, a in enumerate(self.objects):
            if a.x - a.extent < 0 or a.y - a.extent < 0 or a.x + a.extent > SIZE or a.y + a.extent > SIZE:
                return False
            for b in self.objects[i + 1:]:
                if math.hypot(a.x - b.x, a.y - b.y) < a.extent + b.extent + GAP:
                    return False
        return True


def polygon(shape: str, x: float, y: float, r: float) -> list[tuple[float, float]] | None:
    """The outline of a polygonal shape centred at (x, y) (None for circle and ring)."""
    if shape in ("square", "diamond"):
        h = _SQUARE_SIDE * r / 2
        if shape == "square":
            return [(x - h, y - h), (x + h, y - h), (x + h, y + h), (x - h, y + h)]
        d = h * math.sqrt(2)
        return [(x, y - d), (x + d, y), (x, y + d), (x - d, y)]
    if shape == "triangle":  # pointing up, centred on its circumcentre
        R = _TRIANGLE_SIDE * r / math.sqrt(3)
        return [(x + R * math.cos(a), y - R * math.sin(a)) for a in (math.pi / 2, math.pi * 7 / 6, math.pi * 11 / 6)]
    if shape == "cross":
        s, w = _CROSS_SPAN * r / 2, _CROSS_SPAN * r / 6
        return [(x - w, y - s), (x + w, y - s), (x + w, y - w), (x + s, y - w), (x + s, y + w), (x + w, y + w),
                (x + w, y + s), (x - w, y + s), (x - w, y + w), (x - s, y + w), (x - s, y - w), (x - w, y - w)]
    return None


def bbox(obj: Obj) -> tuple[float, float, float, float]:
    """The exact bounding box (x0, y0, x1, y1) of the drawn shape, in pixels (x right, y down; a pixel i spans
    [i, i + 1))."""
    pts = polygon(obj.shape, obj.x, obj.y, obj.r)
    if pts is None:
        h = obj.r * (_RING_OUTER if obj.shape == "ring" else 1.0)
        return (obj.x - h, obj.y - h, obj.x + h, obj.y + h)
    xs, ys = [p[0] for p in pts], [p[1] for p in pts]
    return (min(xs), min(ys), max(xs), max(ys))


def _draw(draw: ImageDraw.ImageDraw, obj: Obj, fill, k: int) -> None:
    x, y, r = obj.x * k, obj.y * k, obj.r * k
    if obj.shape == "circle":
        draw.ellipse([x - r, y - r, x + r, y + r], fill=fill)
    elif obj.shape == "ring":
        R = _RING_OUTER * r
        draw.ellipse([x - R, y - R, x + R, y + R], fill=fill)
        draw.ellipse([x - R / 2, y - R / 2, x + R / 2, y + R / 2], fill=BACKGROUND)
    else:
        draw.polygon(polygon(obj.shape, x, y, r), fill=fill)


def render(scene: Scene | tuple[Obj, ...] | list[Obj], size: int = SIZE) -> np.ndarray:
    """A scene -> uint8 (size, size, 3): drawn at SUPERSAMPLE x and box-filtered down."""
    objects = scene.objects if isinstance(scene, Scene) else tuple(scene)
    k = SUPERSAMPLE * size / SIZE
    big = Image.new("RGB", (size * SUPERSAMPLE, size * SUPERSAMPLE), BACKGROUND)
    draw = ImageDraw.Draw(big)
    for obj in objects:
        _draw(draw, obj, COLORS[obj.color], k)
    return np.asarray(big.reduce(SUPERSAMPLE))


def render_mask(obj: Obj, size: int = SIZE) -> np.ndarray:
    """Coverage of one object in [0, 1], float32 (size, size), anti-aliased like ``render``."""
    k = SUPERSAMPLE * size / SIZE
    big = Image.new("L", (size * SUPERSAMPLE, size * SUPERSAMPLE), 0)
    draw = ImageDraw.Draw(big)
    x, y, r = obj.x * k, obj.y * k, obj.r * k
    if obj.shape == "circle":
        draw.ellipse([x - r, y - r, x + r, y + r], fill=255)
    elif obj.shape == "ring":
        R = _RING_OUTER * r
        draw.ellipse([x - R, y - R, x + R, y + R], fill=255)
        draw.ellipse([x - R / 2, y - R / 2, x + R / 2, y + R / 2], fill=0)
    else:
        draw.polygon(polygon(obj.shape, x, y, r), fill=255)
    return np.asarray(big.reduce(SUPERSAMPLE), dtype=np.float32) / 255.0


def place(rng: np.random.Generator, specs: list[tuple[str, str]], tries: int = 200) -> Scene | None:
    """Positions and radii for objects ``specs`` [(shape, colour), ...], drawn until they fit (None if not)."""
    lo, hi = RADIUS_RANGE
    for _ in range(tries):
        # more objects, smaller on average: four large triangles cannot fit on 64 px
        top = hi - (hi - lo) * 0.5 * max(0, len(specs) - 2) / 2
        objs = []
        for shape, color in specs:
            r = float(rng.uniform(lo, top))
            e = EXTENT[shape] * r
            objs.append(Obj(shape, color, float(rng.uniform(e, SIZE - e)), float(rng.uniform(e, SIZE - e)), r))
        scene = Scene(tuple(objs))
        if scene.fits():
            return scene
    return None


def sample_scene(rng: np.random.Generator, n: int | None = None,
                 allowed: set[tuple[str, str]] | None = None) -> Scene:
    """A random scene of ``n`` objects (1..MAX_OBJECTS uniformly when None); (shape, colour) pairs from ``allowed``
    when given.  Same-shape groups are made likely (counting needs them): with probability 1/3 every object shares
    the first one's shape."""
    while True:
        k = int(rng.integers(1, MAX_OBJECTS + 1)) if n is None else n
        same = k > 1 and rng.random() < 1 / 3
        specs = []
        for i in range(k):
            shape = specs[0][0] if same and i else SHAPES[int(rng.integers(len(SHAPES)))]
            color = COLOR_NAMES[int(rng.integers(len(COLOR_NAMES)))]
            specs.append((shape, color))
        if allowed is not None and any(s not in allowed for s in specs):
            continue
        scene = place(rng, specs)
        if scene is not None:
            return scene
