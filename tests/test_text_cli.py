"""The command line for text models (``sample --prompt / --prompts-file``) and the bundled models' names."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors import safe_open

import arvision.bundled as bundled
from arvision.cli import main

VOCAB = ("a", "photo", "of", "red", "blue", "circle", "square", "and", "left")
LINES = ["a photo of a red circle", "a blue square", "a red square left of a blue circle"]


@pytest.fixture(scope="module")
def text_model(tmp_path_factory) -> Path:
    """A tiny random text-conditioned VAR model folder (9-word vocabulary, 32 px, 4 scales)."""
    from arvision.config import ModelConfig, TokenizerConfig, TransformerConfig
    from arvision.pipeline import ARPipeline

    tok = TokenizerConfig(kind="multiscale", vocab_size=64, embed_dim=8, z_channels=8, ch=32, ch_mult=(1, 2, 2),
                          patch_nums=(1, 2, 4, 8))
    tr = TransformerConfig(block="adaln", width=64, depth=2, num_heads=2, vocab_size=64, num_classes=1,
                           in_channels=8, condition="text", text_vocab=VOCAB, text_len=12)
    torch.manual_seed(0)
    pipe = ARPipeline(ModelConfig(family="var", image_size=32, tokenizer=tok, transformer=tr))
    pipe.transformer.init_weights()
    return pipe.save_pretrained(tmp_path_factory.mktemp("text") / "tiny-text")


def _tree(folder: Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*")}


def run_bad(capsys, argv, watched: Path) -> str:
    """``main(argv)`` exits 2 with exactly one ``error:`` line and writes nothing into ``watched``."""
    before = _tree(watched)
    code = main([str(a) for a in argv])
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2, f"exit {code}, stderr {err!r}"
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in err, err
    assert _tree(watched) == before, f"files written: {_tree(watched) - before}"
    return lines[0]


# -- bundled models by name ----------------------------------------------------------------------------------------

def test_bundled_names_resolve(tmp_path, monkeypatch, capsys):
    import arvision.cli.sample
    from arvision.model_folder import resolve_model_folder

    monkeypatch.chdir(tmp_path)  # no folder named mnist here
    assert "mnist" in bundled.bundled_names() and bundled.DEFAULT_BUNDLED == "mnist"
    assert bundled.bundled_model_dir("mnist") == bundled.ASSETS / "model" == bundled.bundled_model_dir()
    assert bundled.bundled_name("mnist") == "mnist" and bundled.bundled_name(None) == "mnist"
    assert bundled.bundled_name("some/folder") is None
    assert resolve_model_folder("mnist") == bundled.ASSETS / "model"
    assert main(["info", "mnist"]) == 0
    out = capsys.readouterr().out
    assert "the model bundled with arvision as mnist" in out and "10 classes" in out
    loaded = []
    real = arvision.cli.sample.load_pipeline
    monkeypatch.setattr(arvision.cli.sample, "load_pipeline", lambda m, d="cpu": loaded.append(m) or real(m, d))
    assert main(["sample", "mnist", "--classes", "3", "--save-tokens", "t.safetensors"]) == 0
    assert loaded == ["mnist"] and (tmp_path / "t.safetensors").is_file()


def test_a_local_folder_wins_over_a_bundled_name(tmp_path, monkeypatch, text_model, capsys):
    from arvision.pipeline import ARPipeline

    monkeypatch.chdir(tmp_path)
    shutil.copytree(text_model, tmp_path / "mnist")
    assert bundled.bundled_name("mnist") is None
    assert ARPipeline.from_pretrained("mnist").takes_text
    assert main(["info", "mnist"]) == 0
    out = capsys.readouterr().out
    assert "text-conditioned (9-word vocabulary)" in out and "bundled" not in out


def test_a_missing_bundled_model_is_named(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(bundled.BUNDLED, "shapes", "no-such-folder")  # absent whether or not this build ships it
    monkeypatch.chdir(tmp_path)
    assert "shapes" not in bundled.bundled_names()
    for argv in (["sample", "shapes", "--prompt", "a red circle", "--out", "g.png"], ["info", "shapes"],
                 ["bench", "shapes"]):
        err = run_bad(capsys, argv, tmp_path)
        assert "no bundled model named shapes in this build" in err


def test_info_lists_the_bundled_names(capsys):
    assert main(["info"]) == 0
    out = capsys.readouterr().out
    assert "bundled models: mnist (the default)" in out
    with pytest.raises(SystemExit):
        main(["sample", "--help"])
    assert "mnist" in " ".join(capsys.readouterr().out.split())


# -- sampling with prompts ------------------------------------------------------------------------------------------

def test_prompt_per_prompt_writes_numbered_pngs(tmp_path, text_model, capsys):
    argv = ["sample", text_model, "--prompt", "a photo of a red circle", "--per-prompt", "2", "--seed", "0",
            "--out-dir", tmp_path / "d", "--out", tmp_path / "g.png"]
    assert main([str(a) for a in argv]) == 0
    assert sorted(p.name for p in (tmp_path / "d").iterdir()) == ["00000.png", "00001.png"]
    assert Image.open(tmp_path / "g.png").size[0] > 2 * 128  # two captioned cells side by side
    assert main(["info", str(text_model)]) == 0
    out = capsys.readouterr().out
    assert "text-conditioned (9-word vocabulary)" in out and "vocabulary: a photo of red" in out


def test_prompts_file_images_are_the_pipelines(tmp_path, text_model, capsys):
    from arvision.pipeline import ARPipeline

    (tmp_path / "p.txt").write_text("\n".join(LINES) + "\n")
    argv = ["sample", text_model, "--prompts-file", tmp_path / "p.txt", "--per-prompt", "2", "--seed", "5",
            "--batch-size", "4", "--out-dir", tmp_path / "d", "--save-tokens", tmp_path / "t.safetensors"]
    assert main([str(a) for a in argv]) == 0
    names = sorted(p.name for p in (tmp_path / "d").iterdir())
    assert names == [f"{i:05d}.png" for i in range(6)]
    prompts = [line for line in LINES for _ in range(2)]  # image i * 2 + j: line i
    with safe_open(str(tmp_path / "t.safetensors"), "pt") as f:
        assert json.loads(f.metadata()["prompts"]) == prompts and "class_labels" not in f.metadata()
    # one --seed generator consumed batch after batch (4 + 2): the pipeline on the same list and batch size
    out = ARPipeline.from_pretrained(text_model)(prompts=prompts, generator=torch.Generator().manual_seed(5),
                                                 batch_size=4)
    for name, expected in zip(names, out.images):
        assert np.array_equal(np.asarray(Image.open(tmp_path / "d" / name).convert("RGB")), np.asarray(expected))


def test_watermark_with_prompts(tmp_path, text_model, capsys):
    from arvision.sampling.watermark import WatermarkSpec

    spec = WatermarkSpec("K", pool=4)
    # the list is chosen from sha256 of (key, seed, prompt): fixed across processes, no salted hash()
    assert [spec.list_for(3, p) for p in LINES] == [spec.list_for(3, p) for p in list(LINES)]
    assert spec.list_for(3, "a red circle") == 1
    argv = ["sample", text_model, "--prompt", "a blue circle", "--per-prompt", "2", "--watermark-key", "K",
            "--watermark-align", "0.1", "--watermark-align-steps", "1", "--out-dir", tmp_path / "d"]
    assert main([str(a) for a in argv]) == 0
    assert len(list((tmp_path / "d").iterdir())) == 2


# -- bad input: one line, exit status 2, nothing written ----------------------------------------------------------

def _fail_if_called(*args, **kwargs):
    raise AssertionError("a model was loaded before the arguments were checked")


@pytest.fixture
def prompt_files(tmp_path):
    d = tmp_path / "in"
    d.mkdir()
    (d / "empty.txt").write_text("")
    (d / "blanks.txt").write_text("\n \n")
    (d / "gap.txt").write_text("a red circle\n\na blue square\n")
    (d / "latin1.txt").write_bytes("a red circle\na caf\xe9\n".encode("latin-1"))
    (d / "ok.txt").write_text("a red circle\n")
    (d / "folder.txt").mkdir()
    (d / "unknown.txt").write_text("a red circle\na green circle\n")
    (tmp_path / "out").mkdir()
    return d


BEFORE_LOAD = {
    "empty --prompt": (["--prompt", ""], "--prompt is empty"),
    "blank --prompt": (["--prompt", "   "], "--prompt is empty"),
    "--prompt and --prompts-file": (["--prompt", "a red circle", "--prompts-file", "{i}/ok.txt"], "not both"),
    "--classes and --prompt": (["--classes", "1", "--prompt", "a red circle"], "not both"),
    "missing file": (["--prompts-file", "{i}/nope.txt"], "not found"),
    "empty file": (["--prompts-file", "{i}/empty.txt"], "is empty"),
    "only blank lines": (["--prompts-file", "{i}/blanks.txt"], "is empty"),
    "blank line": (["--prompts-file", "{i}/gap.txt"], "line 2 is blank"),
    "not UTF-8": (["--prompts-file", "{i}/latin1.txt"], "not UTF-8 text (line 2"),
    "a folder": (["--prompts-file", "{i}/folder.txt"], "is a folder"),
    "--per-prompt 0": (["--prompt", "a red circle", "--per-prompt", "0"], ">= 1"),
    "--per-prompt without prompts": (["--classes", "1", "--per-prompt", "2"], "--per-prompt goes with"),
}


@pytest.mark.parametrize("case", list(BEFORE_LOAD))
def test_bad_prompt_input_before_loading(case, prompt_files, monkeypatch, capsys):
    import arvision.cli.sample
    from arvision.pipeline import ARPipeline

    monkeypatch.setattr(ARPipeline, "from_pretrained", classmethod(_fail_if_called))
    monkeypatch.setattr(arvision.cli.sample, "load_pipeline", _fail_if_called)
    options, needle = BEFORE_LOAD[case]
    out = prompt_files.parent / "out"
    argv = ["sample", "m", *[o.format(i=prompt_files) for o in options], "--out-dir", out / "d", "--out", out / "g.png"]
    assert needle in run_bad(capsys, argv, prompt_files.parent)


def test_unreadable_prompts_file(prompt_files, monkeypatch, capsys):
    def refuse(self):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(Path, "read_bytes", refuse)  # (chmod 000 does not stop root)
    err = run_bad(capsys, ["sample", "m", "--prompts-file", prompt_files / "ok.txt", "--out", "g.png"],
                  prompt_files.parent)
    assert "cannot read it (Permission denied)" in err


AFTER_LOAD = {
    "unknown word": ("text", ["--prompt", "a green circle"], "does not know: green"),
    "unknown word in a file": ("text", ["--prompts-file", "{i}/unknown.txt"], "unknown.txt, line 2: prompt"),
    "too many words": ("text", ["--prompt", " ".join(["a"] * 13)], "at most 12"),
    "no prompt": ("text", [], "this model takes prompts: give --prompt"),
    "--classes on a text model": ("text", ["--classes", "1"],
                                  "this model takes prompts: use --prompt or --prompts-file"),
    "--search with a missing matcher": ("text", ["--prompt", "a red circle", "--search", "bon:2", "--verifier",
                                                 "{i}/no-matcher"], "not found"),
    "--prompt on a class model": ("class", ["--prompt", "a red circle"],
                                  "this model is class-conditional (classes 0..9): use --classes"),
    "--prompts-file on a class model": ("class", ["--prompts-file", "{i}/ok.txt"], "class-conditional"),
}


@pytest.mark.parametrize("case", list(AFTER_LOAD))
def test_bad_prompt_input_for_the_model(case, prompt_files, text_model, tiny_model, capsys):
    kind, options, needle = AFTER_LOAD[case]
    out = prompt_files.parent / "out"
    model = text_model if kind == "text" else tiny_model
    argv = ["sample", model, *[o.format(i=prompt_files) for o in options], "--out-dir", out / "d",
            "--out", out / "g.png", "--save-tokens", out / "t.safetensors"]
    assert needle in run_bad(capsys, argv, prompt_files.parent)


def test_long_captions_are_cut_at_a_word():
    from PIL import ImageDraw, ImageFont

    from arvision.images import fit_caption

    draw, font = ImageDraw.Draw(Image.new("RGB", (8, 8))), ImageFont.load_default()
    assert fit_caption(draw, "a red circle", font, 200) == "a red circle"
    short = fit_caption(draw, "a photo of a red circle left of a blue square", font, 80)
    assert short.endswith("...") and draw.textlength(short, font=font) <= 80
    assert "a photo of a red circle left of a blue square".startswith(short[:-3])
    assert not short[:-3].endswith(" ")
    cut = fit_caption(draw, "x" * 100, font, 40)
    assert cut.endswith("...") and draw.textlength(cut, font=font) <= 40


def test_edit_with_a_prompt_on_a_text_model(tmp_path, text_model, tiny_model, capsys):
    """`edit --prompt` regenerates the region as the prompt says: the written image is the library's edit with that
    prompt (not the null text's), the kept tokens are the source's; a prompt on a class model and --class on a text
    model are one line each."""
    from arvision.pipeline import ARPipeline
    from arvision.sampling.editing import edit

    src = tmp_path / "src.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(src)
    argv = ["edit", text_model, "--image", src, "--box", "0,0,0.5,1", "--prompt", "a photo of a red circle",
            "--seed", "3", "--out", tmp_path / "e.png", "--compare", tmp_path / "c.png"]
    assert main([str(a) for a in argv]) == 0
    pipe = ARPipeline.from_pretrained(text_model)
    image = Image.open(src).convert("RGB")
    mask = np.zeros((32, 32), bool)
    mask[:16] = True
    want = edit(pipe, image, mask, prompts="a photo of a red circle", generator=torch.Generator().manual_seed(3))
    null = edit(pipe, image, mask, generator=torch.Generator().manual_seed(3))
    got = np.asarray(Image.open(tmp_path / "e.png").convert("RGB"))
    assert np.array_equal(got, np.asarray(want.images[0]))
    assert not np.array_equal(np.asarray(want.images[0]), np.asarray(null.images[0]))
    kept = want.keep[0]
    assert kept.any() and not kept.all()
    assert torch.equal(want.tokens[0][kept], want.source_tokens[0][kept])
    common = ["--image", src, "--box", "0,0,0.5,1", "--out", tmp_path / "x.png"]
    line = run_bad(capsys, ["edit", tiny_model, *common, "--prompt", "a red circle"], tmp_path)
    assert "conditioned on class labels, not text" in line
    line = run_bad(capsys, ["edit", text_model, *common, "--class", "0"], tmp_path)
    assert "conditioned on text, not class labels" in line
