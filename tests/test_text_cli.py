"""The bundled models' names on the command line (and, for text models, ``sample --prompt / --prompts-file``)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

import arvision.bundled as bundled
from arvision.cli import main

VOCAB = ("a", "photo", "of", "red", "blue", "circle", "square", "and", "left")


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
    assert "bundled" not in out


def test_a_missing_bundled_model_is_named(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(bundled.BUNDLED, "shapes", "no-such-folder")  # absent whether or not this build ships it
    monkeypatch.chdir(tmp_path)
    assert "shapes" not in bundled.bundled_names()
    for argv in (["sample", "shapes", "--out", "g.png"], ["info", "shapes"],
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
