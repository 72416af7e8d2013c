"""What a newcomer reads: loading messages that say what a folder is and what to do, `info` on the bundled model and
its stored defaults, a line when --classes is left out, help text for every option, a readable top-level help,
values that start with a minus sign, and the watermark note (issue 19, items 7, 8 and 9)."""

from __future__ import annotations

import argparse

import pytest
import torch
from safetensors.torch import save_file

import arvision.model_folder as model_folder
from arvision.cli import build_parser, main
from arvision.errors import ArvisionError


@pytest.fixture
def no_hub(monkeypatch):
    """Fail the test if the Hugging Face Hub is tried."""
    calls = []

    def download(repo_id):
        calls.append(repo_id)
        raise AssertionError(f"the Hub was tried for {repo_id!r}")

    monkeypatch.setattr(model_folder, "_download", download)
    return calls


def error_of(capsys, argv) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err
    return err


# -- loading ------------------------------------------------------------------------------------------------------

def test_missing_relative_path_is_not_a_hub_id(tmp_path, monkeypatch, capsys, no_hub):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "models").mkdir()
    for name in ("no-such-model", "./x/y", "models/missing", "a/b/c", "../up/model"):
        err = error_of(capsys, ["sample", name, "--out", "g.png"])
        assert f"model folder not found: {name}" in err and "no such folder" in err
    assert no_hub == []


def test_hub_only_for_org_name_and_only_online(tmp_path, monkeypatch, capsys, tiny_model):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(model_folder, "_download", lambda repo: pytest.fail("tried the Hub while offline"))
    err = error_of(capsys, ["info", "someorg/somemodel"])
    assert "HF_HUB_OFFLINE" in err and "not looked up" in err
    # online: an org/name is fetched (here: a stand-in for the download)
    monkeypatch.delenv("HF_HUB_OFFLINE")
    fetched = []
    monkeypatch.setattr(model_folder, "_download", lambda repo: fetched.append(repo) or tiny_model)
    assert main(["info", "someorg/somemodel"]) == 0
    assert fetched == ["someorg/somemodel"] and "4 scales 1,2,4,8" in capsys.readouterr().out


def test_hub_failure_is_one_line(monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # nothing listens there: fails at once, offline
    with pytest.raises(ArvisionError) as e:
        model_folder.resolve_model_folder("someorg/not-a-model")
    assert "could not be fetched from the Hugging Face Hub" in str(e.value) and "\n" not in str(e.value)


def test_tokenizer_folder_says_what_it_is(tmp_path, capsys):
    tok = tmp_path / "tok"
    tok.mkdir()
    (tok / "tokenizer_config.json").write_text("{}")
    save_file({"w": torch.zeros(1)}, str(tok / "tokenizer.safetensors"))
    err = error_of(capsys, ["sample", str(tok), "--out", str(tmp_path / "g.png")])
    assert "is a tokenizer folder" in err and f"arvision train --tokenizer {tok}" in err


@pytest.mark.parametrize("module,command", [("transformer", "train"), ("tokenizer", "train-tokenizer")])
def test_unfinished_run_says_how_to_finish(tmp_path, capsys, module, command):
    run = tmp_path / "run"
    ckpt = run / "checkpoints" / "step-0000200"
    ckpt.mkdir(parents=True)
    save_file({f"{module}.w": torch.zeros(1)}, str(ckpt / "weights.safetensors"))
    err = error_of(capsys, ["sample", str(run), "--out", str(tmp_path / "g.png")])
    assert "has not finished" in err and "step-0000200" in err
    assert f"arvision {command} ... --out {run} --resume" in err


def test_other_folder_without_config(tmp_path, capsys):
    err = error_of(capsys, ["info", str(tmp_path)])
    assert "has no config.json" in err and "arvision convert" in err


# -- info, defaults, --classes ----------------------------------------------------------------------------------

def test_info_names_the_bundled_model_and_its_stored_defaults(capsys):
    from arvision.bundled import bundled_model_dir
    from arvision.config import ModelConfig

    stored = ModelConfig.load(bundled_model_dir() / "config.json").sampling
    for argv in (["info"], ["info", str(bundled_model_dir())]):
        assert main(argv) == 0
        out = capsys.readouterr().out
        assert "the model bundled with arvision" in out and str(bundled_model_dir()) in out
        assert f"cfg {stored['guidance_scale']}" in out and f"top-k {stored['top_k']}" in out
        assert "stored in the model" in out


def test_info_of_another_model_shows_family_defaults(tiny_model, capsys):
    assert main(["info", str(tiny_model)]) == 0
    out = capsys.readouterr().out
    assert "bundled" not in out
    assert "cfg 1.5, top-k 900, top-p 0.96, temperature 1.0 (the VAR family's published defaults)" in out


def test_sample_help_states_true_defaults():
    text = _parser("sample").format_help().replace("\n", " ")
    assert "stored setting" in " ".join(text.split())


def test_omitted_classes_are_announced(tiny_model, tmp_path, capsys):
    assert main(["sample", str(tiny_model), "--out-dir", str(tmp_path / "d")]) == 0
    assert "no --classes given: sampling classes 0..7, one image each" in capsys.readouterr().out
    assert len(list((tmp_path / "d").glob("*.png"))) == 8
    assert main(["sample", str(tiny_model), "--classes", "3", "--out-dir", str(tmp_path / "e")]) == 0
    assert "no --classes" not in capsys.readouterr().out


# -- help texts ----------------------------------------------------------------------------------------------------

# train and train-tokenizer get their help texts in a parallel change (issue 19, item 9); add them here after it
def _parser(*path: str) -> argparse.ArgumentParser:
    parser = build_parser()
    for name in path:
        sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
        parser = sub.choices[name]
    return parser


def _commands(parser: argparse.ArgumentParser, path=()):
    """(command path, parser) for every command and sub-command."""
    yield path, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, child in action.choices.items():
                yield from _commands(child, (*path, name))


def test_every_option_has_help_and_states_its_default():
    missing = []
    for path, parser in _commands(build_parser()):
        for action in parser._actions:
            if isinstance(action, (argparse._HelpAction, argparse._VersionAction, argparse._SubParsersAction)):
                continue
            name = " ".join(("arvision", *path, action.option_strings[-1] if action.option_strings else action.dest))
            flag = isinstance(action, (argparse._StoreTrueAction, argparse._StoreFalseAction))
            if not action.help:
                missing.append(f"{name}: no help")
            elif action.default not in (None, argparse.SUPPRESS) and not flag and "default" not in action.help:
                missing.append(f"{name}: default {action.default!r} not stated")
    assert not missing, "\n".join(missing)


def test_top_level_help_is_plain_text():
    text = build_parser().format_help()
    assert "``" not in text and ":func:" not in text
    assert "arvision sample" in text and "--help" in text


# -- values starting with a minus sign ------------------------------------------------------------------------------

def test_box_starting_with_minus_reaches_its_check(tmp_path, capsys):
    from PIL import Image

    Image.new("RGB", (32, 32)).save(tmp_path / "in.png")
    err = error_of(capsys, ["edit", "--image", str(tmp_path / "in.png"), "--box", "-0.1,0,0.5,0.5",
                            "--out", str(tmp_path / "o.png")])
    assert "0 <= y0 < y1 <= 1" in err
    assert not (tmp_path / "o.png").exists()


def test_watermark_without_alignment_says_it_will_not_be_detected(tiny_model, tmp_path, capsys):
    assert main(["sample", str(tiny_model), "--classes", "1", "--watermark-key", "K",
                 "--out-dir", str(tmp_path / "w")]) == 0
    assert "note: without --watermark-align" in capsys.readouterr().out
