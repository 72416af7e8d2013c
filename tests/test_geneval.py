"""The GenEval-style verifier on the shapes world: exact on clean renders of every prompt, rejects deliberately wrong
scenes, judges clauses as GenEval does (numbers checked by hand), and the prompt set, summaries and folders."""

from __future__ import annotations

import json
from collections import Counter

import numpy as np
import pytest
from PIL import Image

from arvision import captions as cap
from arvision import scenes
from arvision.cli import main
from arvision.errors import ArvisionError
from arvision.evaluation import geneval as G
from arvision.evaluation.geneval import Detection
from arvision.evaluation.geneval_scenes import scene_for, wrong_scenes
from arvision.training.datasets import Shapes


@pytest.fixture(scope="module")
def prompts() -> list[dict]:
    return G.prompt_set()


def _distinct(prompts: list[dict]) -> list[dict]:
    seen, out = set(), []
    for m in prompts:
        if m["prompt"] not in seen:
            seen.add(m["prompt"])
            out.append(m)
    return out


# -- the prompt set ------------------------------------------------------------------------------------------------

def test_prompt_set_has_genevals_sizes_and_is_fixed(prompts):
    assert len(prompts) == 553 and prompts == G.prompt_set()
    assert Counter(m["tag"] for m in prompts) == Counter(G.TASK_SIZES)
    assert [m["tag"] for m in prompts] == sorted((m["tag"] for m in prompts), key=cap.TASKS.index)
    for m in prompts:
        assert {k: v for k, v in m.items() if k != "heldout"} == cap.prompt_meta(m["prompt"])
        bound = {(c["class"], c["color"]) for c in m["include"] if "color" in c}
        assert m["heldout"] == bool(bound & cap.HELD_OUT)
        if m["tag"] == "color_attr":
            assert m["heldout"] == (bound <= cap.HELD_OUT)  # both held out, or neither
            assert len({c for _, c in bound}) == 2
    held = Counter(m["tag"] for m in prompts if m["heldout"])
    assert held == {"colors": 47, "color_attr": 50}
    assert {(c["class"], c["color"]) for m in prompts if m["tag"] == "colors" and m["heldout"]
            for c in m["include"]} == cap.HELD_OUT  # every held-out pair is asked for
    distinct = Counter(m["tag"] for m in _distinct(prompts))
    assert distinct == {"single_object": 6, "two_object": 30, "counting": 18, "colors": 48, "position": 100,
                        "color_attr": 100}


# -- clean renders: every prompt --------------------------------------------------------------------------------------

def test_verifier_passes_clean_renders_of_every_prompt(prompts):
    rng = np.random.default_rng(0)
    results = []
    for line, meta in enumerate(_distinct(prompts)):  # repeated prompts are the same test: each distinct one twice
        for _ in range(2):
            ok, why = G.check(scenes.render(scene_for(meta, rng)), meta)
            results.append({"tag": meta["tag"], "correct": ok, "line": line, "why": why, "prompt": meta["prompt"]})
    summary = G.summarize(results)
    for tag, row in summary["tasks"].items():
        assert row["accuracy"] >= 0.99, (tag, [r for r in results if not r["correct"]][:5])
    assert summary["overall"] >= 0.995


def test_verifier_rejects_deliberately_wrong_scenes(prompts):
    rng = np.random.default_rng(1)
    kinds = Counter()
    for meta in _distinct(prompts)[::2]:
        for kind, scene in wrong_scenes(meta, rng).items():
            ok, why = G.check(scenes.render(scene), meta)
            assert not ok and why, (kind, meta["prompt"], scene)
            kinds[kind] += 1
    assert set(kinds) == {"missing_object", "count_minus_one", "count_plus_one", "wrong_color", "swapped_position",
                          "swapped_binding"}


def test_detect_is_exact_on_clean_renders_and_robust_to_blur_noise_and_specks():
    from scipy import ndimage

    rng = np.random.default_rng(2)
    for i in range(40):
        scene = scenes.sample_scene(rng)
        img = scenes.render(scene)
        if i % 4 == 1:
            img = np.clip(ndimage.gaussian_filter(img.astype(float), (0.8, 0.8, 0)), 0, 255).round().astype(np.uint8)
        elif i % 4 == 2:
            img = np.clip(img + rng.normal(0, 10, img.shape), 0, 255).round().astype(np.uint8)
        elif i % 4 == 3:
            img = img.copy()
            specks = rng.random((64, 64)) < 0.01
            img[specks] = rng.integers(0, 256, (int(specks.sum()), 3))
        found = sorted((d.shape, d.color) for d in G.detect(img))
        assert found == sorted((o.shape, o.color) for o in scene.objects), (i, scene)


def test_detections_describe_the_objects():
    o = scenes.Obj("triangle", "pink", 30.4, 33.2, 10.0)
    (d,) = G.detect(scenes.render([o]))
    x0, y0, x1, y1 = scenes.bbox(o)
    assert (d.shape, d.color) == ("triangle", "pink") and d.score > 0.9
    assert abs(d.center[0] - o.x) < 0.5 and abs(d.center[1] - o.y) < 0.5 and abs(d.r - o.r) < 0.6
    assert abs(d.area - np.pi * o.r ** 2) / (np.pi * o.r ** 2) < 0.05
    assert max(abs(a - b) for a, b in zip(d.bbox, (x0, y0, x1, y1))) <= 1


def test_a_blob_of_no_shape_is_unknown_and_satisfies_nothing():
    img = np.full((64, 64, 3), scenes.BACKGROUND, np.uint8)
    img[30:34, 4:60] = scenes.COLORS["red"]  # a long bar
    img[2:4, 2:4] = scenes.COLORS["blue"]  # a speck: below MIN_AREA, dropped
    (d,) = G.detect(img)
    assert d.shape == "unknown" and d.color == "red" and d.score < G.MIN_IOU
    ok, why = G.check(img, cap.prompt_meta("a photo of a square"))
    assert not ok and "found 0 squares" in why and "1 object of no recognised shape" in why


# -- GenEval's rules ------------------------------------------------------------------------------------------------

def test_position_rule_numbers():
    # offset (15, 0), box sizes 10 + 10: shrunk by 0.1 * 20 = 2 -> (13, 0) / 15
    assert cap.relation_components((0, 0, 10, 10), (15, 0, 25, 10)) == pytest.approx((-13 / 15, 0.0))
    assert cap.relations((0, 0, 10, 10), (15, 0, 25, 10)) == {"left of"}
    assert cap.relations((15, 0, 25, 10), (0, 0, 10, 10)) == {"right of"}
    # diagonal (10, 10): (8, 8) / 14.14 = 0.566 each -> both relations
    assert cap.relation_components((10, 10, 20, 20), (0, 0, 10, 10)) == pytest.approx((8 / 200 ** 0.5,) * 2)
    assert cap.relations((10, 10, 20, 20), (0, 0, 10, 10)) == {"right of", "below"}
    # (10, -6): (8, -4) / 11.66 = (0.686, -0.343): right of only ("above" needs dy < -0.5; y grows downwards)
    assert cap.relations((10, -6, 20, 4), (0, 0, 10, 10)) == {"right of"}
    assert cap.relations((0, -20, 10, -10), (0, 0, 10, 10)) == {"above"}
    # close boxes: the shrunk offset vanishes -> no relation at all
    assert cap.relation_components((1, 1, 11, 11), (0, 0, 10, 10)) is None
    assert cap.relations((1, 1, 11, 11), (0, 0, 10, 10)) == set()
    # on the cut: offset (10, 8.5), sizes 20 -> (8, 6.5) / 13.12 = (0.61, 0.495): below fails by a hair
    dx, dy = cap.relation_components((10, 8.5, 20, 18.5), (0, 0, 10, 10))
    assert (dx, dy) == pytest.approx((8 / np.hypot(10, 8.5), 6.5 / np.hypot(10, 8.5))) and dy < 0.5


def _det(shape, color, box, score=0.95):
    x0, y0, x1, y1 = box
    return Detection(shape, color, box, ((x0 + x1) / 2, (y0 + y1) / 2), float((x1 - x0) * (y1 - y0)), 8.0, score)


def test_clauses_are_judged_as_genevals():
    red, blue = _det("circle", "red", (0, 0, 16, 16), 0.93), _det("circle", "blue", (40, 0, 56, 16), 0.97)
    sq = _det("square", "green", (40, 40, 56, 56))
    # colour: only the most confident circle counts (GenEval takes the top `count` detections of the class)
    assert G.judge([red, blue, sq], cap.prompt_meta("a photo of a blue circle")) == (True, "")
    ok, why = G.judge([red, blue, sq], cap.prompt_meta("a photo of a red circle"))
    assert not ok and why == "expected a red circle, the most confident circle is blue"
    # counting: at least n, and not n + 1
    three = [red, blue, _det("circle", "red", (0, 40, 16, 56))]
    assert G.judge(three, cap.prompt_meta("a photo of three circles"))[0]
    assert G.judge(three, cap.prompt_meta("a photo of two circles")) == (False, "found 3 circles, expected exactly 2")
    assert G.judge(three, cap.prompt_meta("a photo of four circles")) == (False, "found 3 circles, expected exactly 4")
    # unknowns are never a circle, not even a fourth one
    blob = _det("unknown", "red", (20, 40, 36, 56), 0.5)
    assert G.judge(three + [blob], cap.prompt_meta("a photo of three circles"))[0]
    # position: every found A against every matched B
    meta = cap.prompt_meta("a photo of a circle above a square")
    assert G.judge([blue, sq], meta) == (True, "")
    ok, why = G.judge([blue, sq], cap.prompt_meta("a photo of a circle below a square"))
    assert not ok and why == "expected the circle below the square, found it above it"
    ok, why = G.judge([blue], meta)
    assert not ok and why.startswith("found 0 squares, expected at least 1; no object for the circle to be above")
    # include clauses are ANDed
    ok, why = G.judge([red], cap.prompt_meta("a photo of a red circle and a blue square"))
    assert not ok and why == "found 0 squares, expected at least 1"


def test_summarize_arithmetic():
    results = [
        {"tag": "counting", "correct": True, "line": 0}, {"tag": "counting", "correct": False, "line": 0},
        {"tag": "counting", "correct": False, "line": 1}, {"tag": "counting", "correct": False, "line": 1},
        {"tag": "colors", "correct": True, "line": 2, "heldout": True},
        {"tag": "colors", "correct": True, "line": 2, "heldout": True},
        {"tag": "colors", "correct": False, "line": 3, "heldout": False},
        {"tag": "colors", "correct": True, "line": 3, "heldout": False},
    ]
    s = G.summarize(results)
    assert s["tasks"]["counting"] == {"accuracy": 0.25, "correct": 1, "images": 4}
    assert s["tasks"]["colors"] == {"accuracy": 0.75, "correct": 3, "images": 4, "heldout_accuracy": 1.0,
                                    "seen_accuracy": 0.5}
    assert list(s["tasks"]) == ["counting", "colors"]  # captions.TASKS order
    assert s["overall"] == pytest.approx(0.5)  # mean of the task accuracies
    assert s["image_accuracy"] == pytest.approx(4 / 8)
    assert s["prompt_accuracy"] == pytest.approx(3 / 4) and (s["images"], s["prompts"]) == (8, 4)
    with pytest.raises(ArvisionError):
        G.summarize([])


# -- folders and pictures -----------------------------------------------------------------------------------------

def test_score_folder_reads_line_times_per_prompt_plus_j(tmp_path, prompts):
    metas = [prompts[0], prompts[200], prompts[400]]
    rng = np.random.default_rng(3)
    for line, meta in enumerate(metas):
        for j in range(2):
            scene = scene_for(meta, rng) if j == 0 else wrong_scenes(meta, rng)["missing_object"]
            Image.fromarray(scenes.render(scene)).save(tmp_path / f"{line * 2 + j:05d}.png")
    results = G.score_folder(tmp_path, metas, 2)
    assert [(r["line"], r["index"], r["file"], r["correct"]) for r in results] == [
        (0, 0, "00000.png", True), (0, 1, "00001.png", False), (1, 2, "00002.png", True),
        (1, 3, "00003.png", False), (2, 4, "00004.png", True), (2, 5, "00005.png", False)]
    assert results[0]["prompt"] == metas[0]["prompt"] and results[1]["reason"]
    json.dumps(results)
    assert G.summarize(results)["prompt_accuracy"] == 1.0
    with pytest.raises(ArvisionError, match="2 of 8 images missing .*first: 00006.png"):
        G.score_folder(tmp_path, metas + [metas[0]], 2)
    pic = G.task_picture([np.asarray(Image.open(tmp_path / r["file"])) for r in results], [metas[0]] * 2 +
                         [metas[1]] * 2 + [metas[2]] * 2, per_task=2)
    assert pic.mode == "RGB" and pic.size[0] > 2 * 128 and pic.size[1] >= 3 * 128


def test_prompt_files_round_trip(tmp_path, prompts):
    path = G.write_jsonl(prompts, tmp_path / "evaluation_metadata.jsonl")
    assert G.read_jsonl(path) == prompts and [p.name for p in tmp_path.iterdir()] == [path.name]
    (tmp_path / "bad.jsonl").write_text('{"tag": "colors", "include": []}\n\nnot json\n')
    with pytest.raises(ArvisionError, match="bad.jsonl:3: not JSON"):
        G.read_jsonl(tmp_path / "bad.jsonl")


def test_make_data_writes_what_it_says(tmp_path, capsys):
    out = tmp_path / "shapes"
    assert main(["make-data", "shapes", "--out", str(out), "--num", "4", "--seed", "1"]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["00000.png", "00001.png", "00002.png", "00003.png",
                                                     "scenes.jsonl"]
    data = Shapes(num_scenes=4, seed=1)
    lines = [json.loads(line) for line in (out / "scenes.jsonl").read_text().splitlines()]
    for i, rec in enumerate(lines):
        scene = data.scene(i)
        assert np.array_equal(np.asarray(Image.open(out / rec["file"])), scenes.render(scene))
        assert rec["index"] == i and rec["captions"] == data.captions(i)
        assert scenes.Scene(tuple(scenes.Obj(**o) for o in rec["objects"])) == scene
    assert "wrote 4 images" in capsys.readouterr().out
    assert main(["make-data", "shapes", "--out", str(out), "--num", "2"]) == 2  # not empty: refused
    assert "is not empty" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["shapes"]  # nothing half-written beside it
