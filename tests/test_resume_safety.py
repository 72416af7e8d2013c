"""The training commands keep their promises: arguments checked before any work (and nothing written), a run
folder never silently overwritten or appended to, ``--resume`` refusing changed settings (by name) unless allowed,
refusing when every checkpoint is corrupt, and recovering from a damaged token cache."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from arvision.cli import main
from arvision.config import TokenizerConfig
from arvision.tokenizers.models import build_tokenizer
from arvision.training.checkpoint import list_checkpoints
from arvision.training.tokenizer_trainer import save_tokenizer_folder

SIZE = 16


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    """An image folder: 2 classes x 4 smooth 16 px images."""
    root = tmp_path_factory.mktemp("data")
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:SIZE, 0:SIZE] / SIZE
    for k, name in enumerate(("a", "b")):
        (root / name).mkdir()
        for i in range(4):
            f = rng.uniform(1, 4, size=3)
            img = 127.5 * (1 + np.sin(f[:, None, None] * (xx + k * yy)[None] * 6 + i))
            Image.fromarray(img.transpose(1, 2, 0).astype(np.uint8)).save(root / name / f"{i}.png")
    return root


@pytest.fixture(scope="module")
def tok_dir(tmp_path_factory):
    """A tiny multi-scale tokenizer folder (random weights: training only needs its tokens)."""
    torch.manual_seed(0)
    cfg = TokenizerConfig(kind="multiscale", vocab_size=32, embed_dim=8, z_channels=8, ch=32, ch_mult=(1, 2),
                          num_res_blocks=1, patch_nums=(1, 2, 4, 8))
    return save_tokenizer_folder(tmp_path_factory.mktemp("tok"), build_tokenizer(cfg), SIZE)


def train_argv(tok_dir, data_dir, out, *extra) -> list[str]:
    return ["train", "--tokenizer", str(tok_dir), "--data", str(data_dir), "--out", str(out), "--preset", "tiny",
            "--steps", "4", "--batch-size", "4", "--lr", "1e-3", "--warmup", "0", "--ckpt-every", "2",
            "--sample-every", "1000", "--precision", "fp32", "--device", "cpu", *extra]


def tokenizer_argv(data_dir, out, *extra) -> list[str]:
    return ["train-tokenizer", "--data", str(data_dir), "--out", str(out), "--image-size", str(SIZE), "--vocab",
            "32", "--code-dim", "8", "--ch", "32", "--ch-mult", "1,2", "--patch-nums", "1,2,4,8", "--steps", "2",
            "--batch-size", "4", "--ckpt-every", "1", "--sample-every", "1000", "--precision", "fp32", "--device",
            "cpu", *extra]


def run(argv, capsys) -> tuple[int, str, str]:
    code = main(argv)
    cap = capsys.readouterr()
    return code, cap.out, cap.err


def one_error_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert "Traceback" not in err
    return lines[0]


def log_lines(out) -> int:
    return len((out / "log.jsonl").read_text().splitlines())


@pytest.fixture()
def no_work(monkeypatch):
    """Loading the tokenizer, building the dataset or tokenising it fails the test: argument errors must come
    first."""
    import arvision.training.ar_trainer as ar
    import arvision.training.datasets as datasets
    import arvision.training.tokenizer_trainer as tt

    def forbidden(*a, **k):
        raise AssertionError("expensive work started before the arguments were checked")

    monkeypatch.setattr(datasets, "build_dataset", forbidden)
    monkeypatch.setattr(ar, "tokenize_dataset", forbidden)
    monkeypatch.setattr(tt, "load_tokenizer_folder", forbidden)


TRAIN_MISTAKES = {
    "steps 0": (["--steps", "0"], "steps"),
    "batch 0": (["--batch-size", "0"], "batch_size"),
    "negative lr": (["--lr", "-1"], "lr"),
    "nan lr": (["--lr", "nan"], "lr"),
    "inf lr": (["--lr", "inf"], "lr"),
    "label drop 1.5": (["--label-drop", "1.5"], "label_drop"),
    "nan label drop": (["--label-drop", "nan"], "label_drop"),
    "negative warmup": (["--warmup", "-1"], "warmup"),
    "ckpt every 0": (["--ckpt-every", "0"], "ckpt_every"),
    "sample every 0": (["--sample-every", "0"], "sample_every"),
    "negative seed": (["--seed", "-3"], "seed"),
    "bogus preset": (["--preset", "bogus"], "unknown preset 'bogus'"),
    "zero heads": (["--heads", "0"], "--heads"),
    "heads not dividing": (["--heads", "5"], "divisible"),
    "resume and overwrite": (["--resume", "--overwrite"], "--overwrite"),
}


@pytest.mark.parametrize("case", sorted(TRAIN_MISTAKES))
def test_train_argument_errors_come_before_any_work(case, tok_dir, data_dir, tmp_path, capsys, no_work):
    extra, expect = TRAIN_MISTAKES[case]
    out = tmp_path / "run"
    code, _, err = run(train_argv(tok_dir, data_dir, out, *extra), capsys)
    assert code == 2
    assert expect in one_error_line(err)
    assert not out.exists()  # no half-made run folder


def test_train_path_errors_come_before_any_work(tok_dir, data_dir, tmp_path, capsys, no_work):
    out = tmp_path / "run"
    cases = [(train_argv(tmp_path / "no-tok", data_dir, out), "tokenizer folder not found"),
             (train_argv(tok_dir, tmp_path / "no-data", out), "does not exist"),
             (train_argv(tok_dir, data_dir, out, "--init", str(tmp_path)), "--init")]
    for argv, expect in cases:
        code, _, err = run(argv, capsys)
        assert code == 2 and expect in one_error_line(err)
        assert not out.exists()
    file_out = tmp_path / "a-file"
    file_out.write_text("keep me")
    code, _, err = run(train_argv(tok_dir, data_dir, file_out), capsys)
    assert code == 2 and "is an existing file" in one_error_line(err)
    assert file_out.read_text() == "keep me"


TOKENIZER_MISTAKES = {
    "steps 0": (["--steps", "0"], "steps"),
    "inf lr": (["--lr", "inf"], "lr"),
    "negative disc weight": (["--disc-weight", "-1"], "disc_weight"),
    "nan perceptual weight": (["--perceptual-weight", "nan"], "perceptual_weight"),
    # image size not a multiple of the downsampling: blamed on --image-size, with the sizes that fit
    "image size": (["--image-size", "17"], "--image-size 17 is not a multiple of 2"),
    # the scales end at the wrong side: blamed on --patch-nums, with the end that fits and the size that fits
    "patch nums": (["--patch-nums", "1,2,4"], "end --patch-nums at 8, or use --image-size 8"),
    "conv width": (["--ch", "48"], "multiple of 32"),
    "empty ch mult": (["--ch-mult", ""], "--ch-mult"),
}


@pytest.mark.parametrize("case", sorted(TOKENIZER_MISTAKES))
def test_tokenizer_argument_errors_come_before_any_work(case, data_dir, tmp_path, capsys, no_work):
    extra, expect = TOKENIZER_MISTAKES[case]
    out = tmp_path / "tok"
    code, _, err = run(tokenizer_argv(data_dir, out, *extra), capsys)
    assert code == 2
    assert expect in one_error_line(err)
    assert not out.exists()


def test_image_size_mistake_names_image_size_and_what_fits(data_dir, tmp_path, capsys, no_work):
    code, _, err = run(tokenizer_argv(data_dir, tmp_path / "t", "--image-size", "17", "--patch-nums", "1,2,9"),
                       capsys)
    line = one_error_line(err)
    assert code == 2 and "--image-size 16 or 18" in line and "patch-nums" not in line.split(":")[1]


def test_rerun_is_refused_and_overwrite_starts_over(tok_dir, data_dir, tmp_path, capsys):
    out = tmp_path / "run"
    code, stdout, _ = run(train_argv(tok_dir, data_dir, out, "--resume"), capsys)
    assert code == 0 and "nothing to resume" in stdout  # said, not silent
    first = log_lines(out)
    assert json.loads((out / "run.json").read_text())["--lr"] == 1e-3
    code, _, err = run(train_argv(tok_dir, data_dir, out), capsys)
    line = one_error_line(err)
    assert code == 2 and "already holds a training run (finished)" in line and "--resume" in line
    assert log_lines(out) == first  # not appended to
    code, _, _ = run(train_argv(tok_dir, data_dir, out, "--overwrite"), capsys)
    assert code == 0 and log_lines(out) == first  # started over, not doubled


def test_resume_refuses_changed_settings_by_name(tok_dir, data_dir, tmp_path, capsys):
    out = tmp_path / "run"
    assert run(train_argv(tok_dir, data_dir, out), capsys)[0] == 0
    code, _, err = run(train_argv(tok_dir, data_dir, out, "--resume", "--lr", "2e-3", "--seed", "1"), capsys)
    line = one_error_line(err)
    assert code == 2 and "--lr 0.002 (run: 0.001)" in line and "--seed 1 (run: 0)" in line
    assert "--allow-changed-settings" in line
    # a different preset: the same one line, not a traceback from loading mis-shaped weights
    code, _, err = run(train_argv(tok_dir, data_dir, out, "--resume", "--preset", "base"), capsys)
    assert code == 2 and "--preset base (run: tiny)" in one_error_line(err)
    # checkpoint and sample intervals do not shape the run: free to change
    code, stdout, _ = run(train_argv(tok_dir, data_dir, out, "--resume", "--ckpt-every", "3"), capsys)
    assert code == 0 and "resumed from step 4" in stdout


def test_allowed_change_warns_and_continues(tok_dir, data_dir, tmp_path, capsys):
    out = tmp_path / "run"
    assert run(train_argv(tok_dir, data_dir, out), capsys)[0] == 0
    with pytest.warns(UserWarning, match=r"--steps 6 \(run: 4\).*no longer be bit-identical"):
        code, stdout, _ = run(train_argv(tok_dir, data_dir, out, "--resume", "--steps", "6",
                                         "--allow-changed-settings"), capsys)
    assert code == 0 and "resumed from step 4" in stdout
    assert json.loads((out / "log.jsonl").read_text().splitlines()[-1])["step"] == 6
    # a changed model size, allowed, still ends in one line (the checkpoint does not fit), not a traceback
    with pytest.warns(UserWarning):
        code, _, err = run(train_argv(tok_dir, data_dir, out, "--resume", "--steps", "6", "--preset", "base",
                                      "--allow-changed-settings"), capsys)
    assert code == 2 and "does not fit" in one_error_line(err)


def test_every_checkpoint_corrupt_is_refused(tok_dir, data_dir, tmp_path, capsys):
    out = tmp_path / "run"
    assert run(train_argv(tok_dir, data_dir, out), capsys)[0] == 0
    ckpts = list_checkpoints(out / "checkpoints")
    assert len(ckpts) == 2
    for c in ckpts:
        path = c / "weights.safetensors"
        path.write_bytes(path.read_bytes()[:100])
    before = log_lines(out)
    code, _, err = run(train_argv(tok_dir, data_dir, out, "--resume"), capsys)
    assert code == 2 and "nothing can be resumed" in one_error_line(err)
    assert log_lines(out) == before


def test_damaged_token_cache_is_made_again_and_the_resume_stays_exact(tok_dir, data_dir, tmp_path, capsys):
    out = tmp_path / "run"
    assert run(train_argv(tok_dir, data_dir, out), capsys)[0] == 0
    # copies: load_file's tensors may map the file, which is about to be damaged
    uninterrupted = {k: v.clone() for k, v in load_file(str(out / "transformer.safetensors")).items()}
    cache = out / "tokens.safetensors"
    tokens = {k: v.clone() for k, v in load_file(str(cache)).items()}
    # as if killed after the checkpoint of step 2, and the cache then damaged
    for name in ("config.json", "transformer.safetensors", "tokenizer.safetensors"):
        (out / name).unlink()
    shutil.rmtree(list_checkpoints(out / "checkpoints")[-1])
    cache.write_bytes(cache.read_bytes()[:-40])
    code, stdout, err = run(train_argv(tok_dir, data_dir, out, "--resume"), capsys)
    assert code == 0, err
    assert "token cache" in stdout and "damaged" in stdout and "resumed from step 2" in stdout
    again = load_file(str(cache))
    assert all(torch.equal(again[k], tokens[k]) for k in tokens)
    resumed = load_file(str(out / "transformer.safetensors"))
    assert all(torch.equal(resumed[k], uninterrupted[k]) for k in uninterrupted)


def test_train_tokenizer_run_folder_is_protected_too(data_dir, tmp_path, capsys):
    out = tmp_path / "tok"
    assert run(tokenizer_argv(data_dir, out), capsys)[0] == 0
    n = log_lines(out)
    code, _, err = run(tokenizer_argv(data_dir, out), capsys)
    assert code == 2 and "--resume" in one_error_line(err) and log_lines(out) == n
    code, _, err = run(tokenizer_argv(data_dir, out, "--resume", "--vocab", "64"), capsys)
    assert code == 2 and "--vocab 64 (run: 32)" in one_error_line(err)
    # a tokenizer run that is not finished is named as such when a transformer is trained on it
    (out / "tokenizer_config.json").unlink()
    code, _, err = run(train_argv(out, data_dir, tmp_path / "m"), capsys)
    assert code == 2 and "has not finished" in one_error_line(err)


def test_token_cache_checksum_catches_changed_bytes(tmp_path, capsys):
    from safetensors.torch import save_file

    from arvision.cli.train import _digest, _read_token_cache

    tokens, labels = torch.arange(600).reshape(20, 30), torch.arange(20)
    key = {"tokenizer_sha256": "x", "data": "d", "content": "tokens"}
    path = tmp_path / "tokens.safetensors"
    save_file({"tokens": tokens, "labels": labels}, str(path), metadata={**key, "sha256": _digest(tokens, labels)})
    got = _read_token_cache(path, key)
    assert got is not None and torch.equal(got[0], tokens)
    assert _read_token_cache(path, {**key, "data": "other"}) is None  # another run's cache: stale, no note
    assert capsys.readouterr().out == ""
    raw = bytearray(path.read_bytes())
    raw[-7] ^= 0xFF  # one byte of the tensors, the file still well-formed
    path.write_bytes(bytes(raw))
    assert _read_token_cache(path, key) is None
    assert "damaged" in capsys.readouterr().out


@pytest.mark.parametrize("flag", ["--ch-mult", "--patch-nums"])
def test_malformed_lists_are_usage_errors(flag, data_dir, tmp_path, capsys, no_work):
    code = main(tokenizer_argv(data_dir, tmp_path / "t", flag, "1,x"))
    err = capsys.readouterr().err
    assert code == 2 and f"argument {flag}: expected comma-separated integers" in err
    assert "Traceback" not in err and not (tmp_path / "t").exists()
