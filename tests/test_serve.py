"""``arvision serve``'s handlers, without a browser: the page's requests give the command line's files and messages.

The handlers (``arvision.serve.handlers``) import no Gradio, so these run without the ``demo`` extra; the few tests
of the Gradio page itself skip when Gradio is absent.  The real browser test is ``test_serve_browser.py``.
"""

from __future__ import annotations

import functools
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors import safe_open

from arvision.cli import main
from arvision.errors import ArvisionError
from arvision.serve import handlers
from arvision.serve.handlers import EditForm, SampleForm
from arvision.serve.models import ServedModel, load_models, probe_searches
from arvision.serve.streaming import stream
from arvision.serve.uploads import check_upload, editor_view, painted_mask, read_upload
from conftest import tiny_raster_pipeline

torch.set_num_threads(1)  # the page and the command run in this process: the same threads, the same float sums


@functools.cache
def mnist() -> ServedModel:
    return load_models(["mnist"])[0]


@functools.cache
def shapes() -> ServedModel:
    return load_models(["shapes"])[0]


def run(gen):
    """Drain a handler generator -> (previews, result)."""
    previews = []
    while True:
        try:
            previews.append(next(gen))
        except StopIteration as done:
            return previews, done.value


def cli_error(capsys, argv) -> str:
    """The message ``arvision ARGV`` prints (its one ``error:`` line, without the prefix)."""
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and err.startswith("error: "), err
    return err.removeprefix("error: ")


def same_pixels(a: Path, b: Path) -> bool:
    x, y = np.asarray(Image.open(a)), np.asarray(Image.open(b))
    return x.shape == y.shape and bool((x == y).all())


# -- Generate ------------------------------------------------------------------------------------------------------

def test_generate_streams_every_scale_and_equals_the_cli(tmp_path, capsys):
    m = mnist()
    d = m.defaults()
    form = SampleForm(classes=(3, "7"), per_item=2, seed="5", cfg=d["guidance_scale"], top_k=d["top_k"],
                      top_p=d["top_p"], temperature=d["temperature"])
    previews, result = run(handlers.generate(m, form, tmp_path))
    steps = m.pipe.schedule.num_steps
    assert [p.caption.split(":")[0] for p in previews] == [f"step {s}/{steps}" for s in range(1, steps + 1)]
    assert previews[-1].image.size == Image.open(result.grid).size
    assert "s per image" in result.info
    assert result.command.startswith("arvision sample mnist --classes 3 3 7 7 --seed=5 ")
    # the command the page shows writes the same grid and tokens
    cli = tmp_path / "cli"
    cli.mkdir()
    assert main(["sample", "mnist", "--classes", "3", "3", "7", "7", "--seed", "5", "--out", str(cli / "grid.png"),
                 "--save-tokens", str(cli / "tokens.safetensors"), "--out-dir", str(cli / "images")]) == 0
    capsys.readouterr()
    assert (cli / "grid.png").read_bytes() == result.grid.read_bytes()
    with safe_open(str(result.tokens), "pt") as a, safe_open(str(cli / "tokens.safetensors"), "pt") as b:
        assert a.metadata() == b.metadata() and set(a.keys()) == set(b.keys())
        assert all(torch.equal(a.get_tensor(k), b.get_tensor(k)) for k in a.keys())
    assert [p.name for p in result.images] == sorted(p.name for p in (cli / "images").iterdir())
    assert all(same_pixels(p, cli / "images" / p.name) for p in result.images)


def test_a_text_model_takes_a_prompt_and_equals_the_cli(tmp_path, capsys):
    m = shapes()
    _, result = run(handlers.generate(m, SampleForm(prompt="a photo of a red circle", per_item=2, seed=1),
                                      tmp_path))
    assert main(["sample", "shapes", "--prompt", "a photo of a red circle", "--per-prompt", "2", "--seed", "1",
                 "--out", str(tmp_path / "cli.png")]) == 0
    capsys.readouterr()
    assert same_pixels(result.grid, tmp_path / "cli.png")
    with pytest.raises(ArvisionError, match="empty"):
        run(handlers.generate(m, SampleForm(prompt="  "), tmp_path))


def test_a_search_runs_without_previews(tmp_path, capsys):
    m = mnist()
    assert set(m.searches) == {"best-of-N", "beam", "TTS-VAR"}
    previews, result = run(handlers.generate(m, SampleForm(classes=(2,), seed=0, search="best-of-N", search_n=2),
                                             tmp_path))
    assert previews == [] and "search bon:2" in result.info
    assert main(["sample", "mnist", "--classes", "2", "--seed", "0", "--search", "bon:2",
                 "--out", str(tmp_path / "cli.png")]) == 0
    capsys.readouterr()
    assert same_pixels(result.grid, tmp_path / "cli.png")


def test_a_model_without_a_verifier_offers_no_search(tmp_path):
    m = raster_model(tmp_path / "raster")  # 3 classes: not the bundled classifier's 10 digits
    searches, note = probe_searches(m.pipe)
    assert searches == {} and "10 classes" in note
    with pytest.raises(ArvisionError, match="cannot run the search 'beam'"):
        handlers.sample_argv(ServedModel("tiny", m.pipe, searches, note), SampleForm(classes=(1,), search="beam"),
                             tmp_path)


def raster_model(folder: Path) -> ServedModel:
    """The tiny raster model of ``conftest``, served from ``folder``."""
    from arvision.pipeline import ARPipeline

    tiny_raster_pipeline(0).save_pretrained(folder)
    return ServedModel(str(folder), ARPipeline.from_pretrained(folder))


def test_a_raster_model_streams_one_preview_per_row_the_rest_grey(tmp_path, capsys):
    m = raster_model(tmp_path / "raster")
    out = tmp_path / "out"
    out.mkdir()
    previews, result = run(handlers.generate(m, SampleForm(classes=(1,), seed=2), out))
    h, w = m.pipe.schedule.image_grid
    assert [p.caption.split(":")[0] for p in previews] == [f"step {w * r}/{h * w}" for r in range(1, h + 1)]
    first = np.asarray(previews[0].image)  # one row of 4 known: the rest of the image grey
    cell = first.shape[1] - 4  # the 8 px image enlarged in a grid with 2 px padding
    rows = cell // h
    assert (first[2 + rows:2 + cell, 2:2 + cell] == 128).all()
    assert not (first[2:2 + rows, 2:2 + cell] == 128).all()
    assert main(["sample", str(tmp_path / "raster"), "--classes", "1", "--seed", "2",
                 "--out", str(tmp_path / "cli.png")]) == 0
    capsys.readouterr()
    assert same_pixels(result.grid, tmp_path / "cli.png")


# -- the command line's messages ----------------------------------------------------------------------------------

@pytest.mark.parametrize("form, argv", [
    (dict(classes=(12,)), ["--classes", "12"]),
    (dict(classes=("x",)), ["--classes", "x"]),
    (dict(classes=(3,), seed="abc"), ["--classes", "3", "--seed", "abc"]),
    (dict(classes=(3,), seed=-1), ["--classes", "3", "--seed", "-1"]),
    (dict(classes=(3,), top_k=9999), ["--classes", "3", "--top-k", "9999"]),
    (dict(classes=(3,), top_k=-2), ["--classes", "3", "--top-k", "-2"]),
    (dict(classes=(3,), top_p=1.5), ["--classes", "3", "--top-p", "1.5"]),
    (dict(classes=(3,), temperature=0), ["--classes", "3", "--temperature", "0"]),
    (dict(classes=(3,), cfg="nan"), ["--classes", "3", "--cfg", "nan"]),
    (dict(classes=(3,), batch_size=-3), ["--classes", "3", "--batch-size", "-3"]),
    (dict(classes=(3,), precision="fp8"), ["--classes", "3", "--precision", "fp8"]),
    (dict(classes=(3,), watermark_key="", watermark_delta="x"), ["--classes", "3", "--watermark-key", "",
                                                                  "--watermark-delta", "x"]),
], ids=lambda v: str(v)[:40] if isinstance(v, dict) else None)
def test_bad_values_get_the_cli_message(tmp_path, capsys, form, argv):
    with pytest.raises(ArvisionError) as page:
        run(handlers.generate(mnist(), SampleForm(**form), tmp_path))
    message = cli_error(capsys, ["sample", "mnist", *argv, "--out", str(tmp_path / "x.png")])
    assert str(page.value) in message  # argparse's lines: "arvision sample: <the page's message> (see ...)"


def test_the_page_own_limits_say_what_to_do(tmp_path):
    for form, message in [(SampleForm(), "no class picked"),
                          (SampleForm(classes=(1, 2), per_item=9), "more than this page makes at once (16)"),
                          (SampleForm(classes=(1,), per_item="two"), "images per class: expected an integer >= 1"),
                          (SampleForm(classes=(1,), seed=""), "seed: give a seed")]:
        with pytest.raises(ArvisionError, match=message.replace("(", r"\(").replace(")", r"\)")):
            run(handlers.generate(mnist(), form, tmp_path))


# -- uploads -------------------------------------------------------------------------------------------------------

def test_uploads_are_checked_and_named_as_the_visitor_named_them(tmp_path, monkeypatch):
    (tmp_path / "notes.txt").write_text("not a picture")
    with pytest.raises(ArvisionError, match=r"^cannot read image notes.txt: cannot identify image file 'notes.txt'$"):
        read_upload(tmp_path / "notes.txt")
    Image.new("L", (5000, 4000)).save(tmp_path / "huge.png")  # a small file holding 20 megapixels
    with pytest.raises(ArvisionError, match=r"huge.png is 5000x4000 pixels \(20.0 megapixels\); this page takes "
                                            r"images up to 16.8 megapixels"):
        check_upload(tmp_path / "huge.png")
    Image.new("RGB", (8, 8)).save(tmp_path / "small.png")
    monkeypatch.setattr("arvision.serve.uploads.MAX_UPLOAD_BYTES", 10)
    with pytest.raises(ArvisionError, match=r"upload small.png is 0.0 MB; this page takes files up to 10 MB"):
        check_upload(tmp_path / "small.png")


def test_painted_layers_become_a_mask_at_the_image_size():
    image = Image.new("RGB", (32, 20))
    view = editor_view(image)
    assert view.size == (256, 160)  # enlarged 8x, whole pixels
    layer = Image.new("RGBA", view.size, (0, 0, 0, 0))
    layer.paste((255, 0, 0, 255), (0, 0, 64, 40))  # the image's pixels (0..7, 0..4)
    mask = painted_mask([None, layer], image.size)
    assert mask.shape == (20, 32) and mask[:5, :8].all() and mask.sum() == 40
    assert not painted_mask([], image.size).any()
    assert editor_view(Image.new("RGB", (1536, 1000))).size == (768, 500)


# -- Edit ----------------------------------------------------------------------------------------------------------

def test_edit_equals_the_cli_in_every_mode(tmp_path, capsys):
    m = mnist()
    assert main(["sample", "mnist", "--classes", "4", "--seed", "0", "--out-dir", str(tmp_path / "s")]) == 0
    sample = tmp_path / "s" / "00000_class4.png"
    painted = np.zeros((32, 32), dtype=bool)
    painted[8:24, 4:20] = True
    for mode, klass, extra in [("in-paint", None, []), ("out-paint", None, []), ("class edit", 9, ["--class", "9"])]:
        folder = tmp_path / mode.replace(" ", "-")
        folder.mkdir()
        source = handlers.take_source(sample, folder)
        result = handlers.edit(m, source, painted, EditForm(mode, klass, 3))
        assert "tokens kept from the source" in result.info
        mask = np.asarray(Image.open(folder / "mask.png")) >= 128
        assert (mask == (~painted if mode == "out-paint" else painted)).all()
        assert main(["edit", "mnist", "--image", str(sample), "--mask", str(folder / "mask.png"), "--seed", "3",
                     *extra, "--out", str(tmp_path / "e.png"), "--compare", str(tmp_path / "c.png")]) == 0
        capsys.readouterr()
        assert same_pixels(result.edited, tmp_path / "e.png") and same_pixels(result.compare, tmp_path / "c.png")
        assert result.command.startswith("arvision edit mnist --image=source.png --mask=mask.png")


def test_edit_refusals(tmp_path):
    Image.new("RGB", (32, 32)).save(tmp_path / "in.png")
    source = handlers.take_source(tmp_path / "in.png", tmp_path)
    painted = np.ones((32, 32), dtype=bool)
    cases = [(mnist(), np.zeros((32, 32), dtype=bool), EditForm(), "nothing painted"),
             (mnist(), painted, EditForm("class edit"), "class edit: pick the class"),
             (mnist(), painted, EditForm("class edit", 10), r"class id\(s\) \[10\] out of range"),
             (mnist(), painted, EditForm("swap"), "edit mode must be one of"),
             (shapes(), painted, EditForm(), "takes prompts: the page edits with class-conditional models only")]
    for model, mask, form, message in cases:
        with pytest.raises(ArvisionError, match=message):
            handlers.edit(model, source, mask, form)


# -- Watermark -----------------------------------------------------------------------------------------------------

def test_detect_reports_each_image_and_refuses_bad_files(tmp_path):
    m = mnist()
    _, result = run(handlers.generate(m, SampleForm(classes=(1,), seed=0, watermark_key="k", watermark_delta="hard"),
                                      tmp_path, previews=False))
    assert "--watermark-key=k --watermark-delta=hard" in result.command
    rows = handlers.detect(m, result.images, "k", 4)
    assert len(rows) == 1 and rows[0].name == "00000_class1.png" and rows[0].scored > 0
    table = handlers.detection_table(rows)
    assert "| 00000_class1.png |" in table and ("not watermarked" in table or "| watermarked |" in table)
    (tmp_path / "a.txt").write_text("x")
    for paths, key, message in [([], "k", "no image to test"), (result.images, "", "key must be a non-empty"),
                                ([tmp_path / "a.txt"], "k", "cannot read image a.txt")]:
        with pytest.raises(ArvisionError, match=message):
            handlers.detect(m, paths, key)


# -- the pieces ----------------------------------------------------------------------------------------------------

def test_stream_yields_events_returns_the_result_and_raises_errors():
    def work(emit):
        for i in range(3):
            emit(i)
        return "done"

    gen = stream(work)
    events = []
    with pytest.raises(StopIteration) as stop:
        while True:
            events.append(next(gen))
    assert events == [0, 1, 2] and stop.value.value == "done"

    def broken(emit):
        raise ArvisionError("one line")

    with pytest.raises(ArvisionError, match="one line"):
        next(stream(broken))


def test_stream_stops_the_worker_when_the_consumer_leaves():
    import threading
    import time

    finished = threading.Event()
    steps = []

    def work(emit):  # 50 s unless stopped
        try:
            for i in range(10_000):
                steps.append(i)
                emit(i)
                time.sleep(0.005)
        finally:
            finished.set()

    gen = stream(work)
    next(gen)
    gen.close()
    assert finished.wait(10) and len(steps) < 10_000


def test_the_step_callback_sees_every_step_and_changes_nothing():
    pipe = mnist().pipe
    seen = []
    out = pipe([3, 5], generator=torch.Generator().manual_seed(1), output_type="pt",
               step_callback=lambda s, n, preview: seen.append((s, n, tuple(preview().shape))))
    plain = pipe([3, 5], generator=torch.Generator().manual_seed(1), output_type="pt")
    assert torch.equal(out.tokens, plain.tokens) and torch.equal(out.images, plain.images)
    n = pipe.schedule.num_steps
    assert seen == [(s, n, (2, 3, 32, 32)) for s in range(n)]
    with pytest.raises(ArvisionError, match="cannot follow a search"):
        pipe([3], search="bon:2", step_callback=lambda *a: None)


def test_serve_without_gradio_says_how_to_install_it(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "gradio", None)  # import gradio -> ImportError
    assert main(["serve"]) == 2
    err = capsys.readouterr().err
    assert err.strip() == ('error: arvision serve needs Gradio, which is not installed: pip install -e ".[demo]" '
                           "(in a clone of arvision; elsewhere pip install gradio)")


def test_serve_options_are_checked(capsys):
    assert "a port in [1, 65535]" in cli_error(capsys, ["serve", "--port", "70000"])
    assert "an integer >= 1" in cli_error(capsys, ["serve", "--queue-size", "0"])


def test_the_page_shows_errors_as_one_line_and_bounds_its_queue():
    gr = pytest.importorskip("gradio")
    from arvision.serve.app import build_app, shown
    from arvision.serve.workspace import Workspace

    def bad():
        raise ArvisionError("class id(s) [12] out of range <b>")

    def bug():
        raise KeyError("x")

    def stream_bad():
        yield 1
        raise ArvisionError("late")

    with pytest.raises(gr.Error) as e:
        shown(bad)()
    assert e.value.message == "class id(s) [12] out of range &lt;b&gt;"
    with pytest.raises(gr.Error, match="internal error \\(KeyError\\); the server's log has the details"):
        shown(bug)()
    gen = shown(stream_bad)()
    assert next(gen) == 1
    with pytest.raises(gr.Error, match="late"):
        next(gen)
    workspace = Workspace()
    try:
        demo = build_app([mnist()], workspace, queue_size=5)
        assert demo._queue.max_size == 5
        assert {"generate", "edit", "watermark", "detect"} <= {fn.api_name for fn in demo.fns.values()}
    finally:
        workspace.close()


def test_the_page_edits_the_picture_it_took_and_no_other(tmp_path):
    pytest.importorskip("gradio")
    from arvision.serve.app import Page
    from arvision.serve.workspace import Workspace

    Image.new("RGB", (32, 32)).save(tmp_path / "in.png")
    workspace = Workspace()
    try:
        page = Page([mnist()], workspace)
        editor, source, status = page.take_upload(str(tmp_path / "in.png"))
        assert editor["background"].size == (256, 256) and "paint the region" in status
        layer = Image.new("RGBA", (256, 256), (0, 0, 0, 0))
        layer.paste((255, 0, 0, 255), (64, 64, 192, 192))
        compare, *_ = page.edit("mnist", source, {**editor, "layers": [layer]}, "in-paint", None, "0")
        assert Image.open(compare).size == (200, 82)  # source | mask | edit, 32 px cells enlarged to 64
        other = {"background": Image.new("RGB", (100, 80)), "layers": [layer]}
        with pytest.raises(ArvisionError, match="the editor shows another picture"):
            page.edit("mnist", source, other, "in-paint", None, "0")
        with pytest.raises(ArvisionError, match="no sample yet"):
            page.take_sample([])
    finally:
        workspace.close()
