"""The shapes world and its language: deterministic scenes, the palette and background, the gap, and captions that
are true of their scene under the verifier's (GenEval's) rules and never bind a held-out (shape, colour) pair."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from arvision import captions as cap
from arvision import scenes
from arvision.errors import ArvisionError
from arvision.training.datasets import Shapes


def _scenes(n: int, seed: int = 0) -> list[scenes.Scene]:
    rng = np.random.default_rng(seed)
    return [scenes.sample_scene(rng) for _ in range(n)]


# -- the world ------------------------------------------------------------------------------------------------------

def test_dataset_is_deterministic_per_seed_and_index():
    a, b = Shapes(num_scenes=20, seed=3), Shapes(num_scenes=20, seed=3)
    for i in (0, 7, 19):
        assert a.scene(i) == b.scene(i)
        assert np.array_equal(scenes.render(a.scene(i)), scenes.render(b.scene(i)))
    assert any(a.scene(i) != Shapes(num_scenes=20, seed=4).scene(i) for i in range(5))
    x, label = a[5]
    assert tuple(x.shape) == (3, 64, 64) and label == 0 and -1 <= float(x.min()) <= float(x.max()) <= 1


def test_palette_and_background():
    for scene in _scenes(30, seed=1):
        img = scenes.render(scene)
        assert img.shape == (64, 64, 3) and img.dtype == np.uint8
        colors, counts = np.unique(img.reshape(-1, 3), axis=0, return_counts=True)
        assert tuple(colors[counts.argmax()]) == scenes.BACKGROUND  # mostly background
        for o in scene.objects:  # an interior point of each object is exactly its palette colour
            x, y = int(o.x), int(o.y + 0.75 * o.r) if o.shape == "ring" else int(o.y)
            assert tuple(img[y, x]) == scenes.COLORS[o.color], (o, tuple(img[y, x]))
        # every pixel is a blend of the background and at most one palette colour (anti-aliased edges)
        p = img.reshape(-1, 3).astype(float) - scenes.BACKGROUND
        d = np.array([scenes.COLORS[c] for c in scenes.COLOR_NAMES], float) - scenes.BACKGROUND
        a = np.clip(p @ d.T / (d * d).sum(1), 0, 1)
        resid = np.sqrt(((p[:, None] - a[..., None] * d[None]) ** 2).sum(-1)).min(1)
        assert resid.max() < 2.0


def test_objects_keep_the_gap_and_never_touch():
    for scene in _scenes(60, seed=2):
        assert scene.fits() and 1 <= len(scene.objects) <= scenes.MAX_OBJECTS
        masks = [scenes.render_mask(o) > 0 for o in scene.objects]
        for i in range(len(masks)):
            for j in range(i + 1, len(masks)):
                assert not (masks[i] & masks[j]).any()  # not even an anti-aliased pixel is shared


def test_bbox_matches_the_drawn_pixels():
    for shape in scenes.SHAPES:
        o = scenes.Obj(shape, "red", 30.3, 29.6, 9.3)
        ys, xs = np.nonzero(scenes.render_mask(o) >= 0.5)
        x0, y0, x1, y1 = scenes.bbox(o)
        assert abs(xs.min() - x0) <= 1 and abs(ys.min() - y0) <= 1
        assert abs(xs.max() + 1 - x1) <= 1 and abs(ys.max() + 1 - y1) <= 1


# -- the language ---------------------------------------------------------------------------------------------------

def test_held_out_pairs_are_a_balanced_quarter():
    assert len(cap.HELD_OUT) == 12
    assert all(n == 2 for n in Counter(s for s, _ in cap.HELD_OUT).values())
    per_color = Counter(c for _, c in cap.HELD_OUT)
    assert set(per_color) == set(scenes.COLOR_NAMES) and all(1 <= n <= 2 for n in per_color.values())


def test_words_and_unknown_words():
    assert cap.words("A photo of a Red circle, a square and two crosses.") == \
        ["a", "photo", "of", "a", "red", "circle", "a", "square", "and", "two", "crosses"]
    assert cap.unknown_words("a photo of a purple hexagon, please") == ["hexagon", "please"]
    with pytest.raises(ArvisionError, match="unknown words 'hexagon', 'please'"):
        cap.prompt_meta("a photo of a purple hexagon, please")
    with pytest.raises(ArvisionError, match="not one of the six"):
        cap.prompt_meta("a photo of two red circles")
    with pytest.raises(ArvisionError, match="different shapes"):
        cap.prompt_meta("a photo of a red circle and a blue circle")
    with pytest.raises(ArvisionError, match="'a' before 'orange'"):
        cap.parse("a photo of a orange ring")


def test_templates_parse_to_genevals_metadata():
    assert cap.prompt_meta("a photo of three rings") == {
        "tag": "counting", "include": [{"class": "ring", "count": 3}], "exclude": [{"class": "ring", "count": 4}],
        "prompt": "a photo of three rings"}
    assert cap.prompt_meta("a photo of a cross left of a square")["include"] == [
        {"class": "square", "count": 1}, {"class": "cross", "count": 1, "position": ["left of", 0]}]
    assert cap.prompt_meta("a photo of an orange ring and a blue diamond")["include"] == [
        {"class": "ring", "count": 1, "color": "orange"}, {"class": "diamond", "count": 1, "color": "blue"}]
    assert cap.prompt_meta("a photo of a triangle")["tag"] == "single_object"
    assert cap.prompt_meta("a photo of a white square")["tag"] == "colors"
    assert cap.prompt_meta("a photo of a ring and a circle")["tag"] == "two_object"
    assert cap.parse("a photo of a red circle, a square and two green crosses")["groups"] == [
        (1, "red", "circle"), (1, None, "square"), (2, "green", "cross")]


def test_vocabulary_is_exactly_what_captions_use():
    used = set()
    for scene in _scenes(300, seed=3):
        for c in cap.training_captions(scene):
            assert not cap.unknown_words(c), c
            used.update(cap.words(c))
    assert used == set(cap.VOCAB), set(cap.VOCAB) ^ used
    assert len(cap.VOCAB) == len(set(cap.VOCAB))


def test_captions_are_true_of_their_scene_under_the_verifiers_rules():
    from arvision.evaluation.geneval import detect, judge

    tasks = Counter()
    for scene in _scenes(120, seed=4):
        forms = cap.caption_forms(scene)
        detections = detect(scenes.render(scene))
        for task in cap.TASKS:
            for c in forms[task]:
                meta = cap.prompt_meta(c)
                assert meta["tag"] == task
                ok, why = judge(detections, meta)
                assert ok, (c, why, scene)
                tasks[task] += 1
        groups = cap.parse(forms["description"][0])["groups"]  # the description names every object
        assert sorted(groups, key=str) == sorted(cap.description_groups(scene), key=str)
        assert sum(n for n, _, _ in groups) == len(scene.objects)
    assert all(tasks[t] >= 20 for t in cap.TASKS), tasks  # every template is taught


def test_training_captions_never_bind_a_held_out_pair():
    rng = np.random.default_rng(5)
    held = sorted(cap.HELD_OUT)
    n_held_objects = 0
    for i in range(200):
        scene = scenes.sample_scene(rng) if i % 2 else scenes.place(rng, [held[i % 12], ("square", "red")])
        n_held_objects += sum((o.shape, o.color) in cap.HELD_OUT for o in scene.objects)
        for c in cap.training_captions(scene):
            for _, color, shape in cap.parse(c)["groups"]:
                assert color is None or (shape, color) not in cap.HELD_OUT, c
    assert n_held_objects > 100  # held-out objects were drawn (described without their colour)


def test_sample_caption_is_deterministic_and_mixes_forms():
    scene = scenes.Scene((scenes.Obj("circle", "blue", 12, 12, 8), scenes.Obj("square", "orange", 45, 14, 8),
                          scenes.Obj("cross", "green", 14, 46, 8), scenes.Obj("cross", "green", 46, 46, 8)))
    draw = [cap.sample_caption(scene, np.random.default_rng([7, i])) for i in range(600)]
    assert draw == [cap.sample_caption(scene, np.random.default_rng([7, i])) for i in range(600)]
    desc = cap.caption_forms(scene)["description"][0]
    assert desc == "a photo of a blue circle, two green crosses and a square"  # orange squares are held out
    assert 0.34 < draw.count(desc) / len(draw) < 0.46
    by_task = Counter(cap.prompt_meta(c)["tag"] for c in draw if c != desc)
    assert set(by_task) == set(cap.TASKS) and min(by_task.values()) > 35
    assert set(draw) <= set(cap.training_captions(scene))


def test_dataset_captions():
    data = Shapes(num_scenes=10, seed=0)
    assert data.captions(3) == cap.training_captions(data.scene(3))
    assert data.caption(3, np.random.default_rng(1)) == data.caption(3, np.random.default_rng(1))
    assert data.caption(3, np.random.default_rng(1)) in data.captions(3)
