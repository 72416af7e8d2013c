"""``arvision make-data``: write a built-in procedural dataset to a folder of PNGs.

    arvision make-data shapes --out shapes-1k --num 1000 --seed 0

``shapes``: scene ``i`` of the shapes dataset (``arvision.training.datasets.Shapes`` with that seed) as
``{i:05d}.png`` (64x64 RGB), and ``scenes.jsonl``, one line per image: ``{"index", "file", "objects": [{"shape",
"color", "x", "y", "r"}, ...], "captions": [...]}`` (the scene graph, centres and radii in pixels, and every true
caption, ``arvision.captions.training_captions``).

The folder is written whole or not at all: everything goes to a hidden sibling folder first, which is renamed to
``--out`` at the end (``--out`` must be new or empty).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

from arvision.cli import types
from arvision.errors import ArvisionError


def add_parser(sub) -> None:
    p = sub.add_parser("make-data", help="write a built-in procedural dataset to a folder of PNGs",
                       description="Write a built-in procedural dataset to a folder: PNG images and a JSON-lines "
                                   "file of their scene graphs and captions.")
    dsub = p.add_subparsers(dest="dataset", required=True, metavar="DATASET")
    s = dsub.add_parser("shapes", help="64x64 scenes of coloured shapes, with scene graphs and captions",
                        description="Scene i of the shapes dataset -> {i:05d}.png, plus scenes.jsonl (objects: "
                                    "shape, color, x, y, r; captions).")
    s.add_argument("--out", required=True, help="output folder (new or empty)")
    s.add_argument("--num", type=types.positive_int, default=1000, help="number of scenes (default 1000)")
    s.add_argument("--seed", type=types.seed, default=0, help="dataset seed: scene i is drawn from (seed, i) "
                                                               "(default 0)")
    s.set_defaults(func=cmd_make_shapes)


def _check_new_or_empty(path: Path) -> Path:
    from arvision.images import check_output_dir

    check_output_dir(path, "the dataset")
    if path.is_dir() and any(path.iterdir()):
        raise ArvisionError(f"{path} is not empty: give a new or empty folder for the dataset")
    return path


def cmd_make_shapes(args) -> None:
    from PIL import Image

    from arvision import scenes
    from arvision.captions import training_captions
    from arvision.images import _umask as umask
    from arvision.progress import progress
    from arvision.training.datasets import Shapes

    out = _check_new_or_empty(Path(args.out))
    data = Shapes(num_scenes=args.num, seed=args.seed)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".part", dir=out.parent))
    try:
        lines = []
        for i in progress(range(args.num), desc="make-data shapes", unit="images"):
            scene = data.scene(i)
            name = f"{i:05d}.png"
            Image.fromarray(scenes.render(scene)).save(tmp / name)
            lines.append(json.dumps({
                "index": i, "file": name,
                "objects": [{"shape": o.shape, "color": o.color, "x": o.x, "y": o.y, "r": o.r}
                            for o in scene.objects],
                "captions": training_captions(scene)}))
        (tmp / "scenes.jsonl").write_text("\n".join(lines) + "\n")
        os.chmod(tmp, 0o777 & ~umask())  # mkdtemp makes 0700 folders; give it a plain folder's mode
        if out.is_dir():
            out.rmdir()  # empty (checked above)
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    print(f"wrote {args.num} images and scenes.jsonl to {out}")

