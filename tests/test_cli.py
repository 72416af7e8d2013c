"""The command line: the documented forms work, and bad input gets one clear message and exit status 2."""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from arvision.cli import main


@pytest.fixture(scope="module")
def official_var(tmp_path_factory, tiny_model):
    """The tiny model exported in the official VAR checkpoint layout."""
    from arvision.pipeline import ARPipeline

    d = tmp_path_factory.mktemp("official")
    tok, tr = ARPipeline.from_pretrained(tiny_model).official_state_dicts()
    torch.save(tok, d / "vae.pth")
    torch.save(tr, d / "var.pth")
    return d


def run_err(capsys, argv) -> str:
    code = main(argv)
    err = capsys.readouterr().err
    assert code == 2, f"expected exit 2, got {code}; stderr={err!r}"
    assert err.startswith("error: ") and "Traceback" not in err
    return err


def test_sample_writes_grid_images_and_tokens(tmp_path, tiny_model, capsys):
    argv = [
        "sample", str(tiny_model), "--classes", "1", "3", "7", "--seed", "42", "--cfg", "1.5", "--top-k", "0",
        "--top-p", "0", "--out", str(tmp_path / "grid.png"), "--out-dir", str(tmp_path / "imgs"),
        "--save-tokens", str(tmp_path / "tok.safetensors"),
    ]
    assert main(argv) == 0
    assert (tmp_path / "grid.png").stat().st_size > 0
    names = sorted(p.name for p in (tmp_path / "imgs").iterdir())
    assert names == ["00000_class1.png", "00001_class3.png", "00002_class7.png"]
    tokens = load_file(str(tmp_path / "tok.safetensors"))
    assert sorted(tokens) == ["step.0", "step.1", "step.2", "step.3"]
    assert [tuple(tokens[f"step.{s}"].shape) for s in range(4)] == [(3, 1), (3, 4), (3, 16), (3, 64)]
    # same seed, same tokens: the CLI consumes one seeded generator exactly as the API does
    from arvision.pipeline import ARPipeline

    out = ARPipeline.from_pretrained(tiny_model)([1, 3, 7], guidance_scale=1.5, top_k=0, top_p=0,
                                                 generator=torch.Generator().manual_seed(42), output_type="tokens")
    for s in range(4):
        assert torch.equal(out.step_tokens[s], tokens[f"step.{s}"])


def test_convert_var_then_sample_matches(tmp_path, official_var, tiny_model, capsys):
    out = tmp_path / "converted"
    assert main(["convert", "var", "--vae", str(official_var / "vae.pth"), "--var", str(official_var / "var.pth"),
                 "--patch-nums", "1,2,4,8", "--num-classes", "10", "--out", str(out)]) == 0
    a, b = tmp_path / "a.safetensors", tmp_path / "b.safetensors"
    for model, path in ((out, a), (tiny_model, b)):
        assert main(["sample", str(model), "--classes", "0", "5", "--seed", "3", "--save-tokens", str(path)]) == 0
    ta, tb = load_file(str(a)), load_file(str(b))
    assert all(torch.equal(ta[k], tb[k]) for k in tb)


def test_info(tiny_model, capsys):
    assert main(["info", str(tiny_model)]) == 0
    assert "4 scales 1,2,4,8" in capsys.readouterr().out


def test_demo_writes_png(tmp_path, capsys):
    out = tmp_path / "demo.png"
    assert main(["demo", "--out", str(out)]) == 0
    assert out.stat().st_size > 0
    assert str(out.resolve()) in capsys.readouterr().out


class Boom:
    """Unpickling this would run a shell command."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_refuses_code_running_pickle(tmp_path, official_var, capsys):
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.pth"
    with open(evil, "wb") as f:
        pickle.dump({"weight": Boom(marker)}, f)
    err = run_err(capsys, ["convert", "var", "--vae", str(evil), "--var", str(official_var / "var.pth"),
                           "--out", str(tmp_path / "o")])
    assert "refused" in err and "arbitrary code" in err
    assert not marker.exists()


def test_truncated_checkpoint(tmp_path, official_var, capsys):
    data = (official_var / "var.pth").read_bytes()
    bad = tmp_path / "trunc.pth"
    bad.write_bytes(data[: len(data) // 2])
    err = run_err(capsys, ["convert", "var", "--vae", str(official_var / "vae.pth"), "--var", str(bad),
                           "--out", str(tmp_path / "o")])
    assert "trunc.pth" in err and "corrupt" in err


def test_truncated_safetensors_in_model_folder(tmp_path, tiny_model, capsys):
    import shutil

    folder = tmp_path / "m"
    shutil.copytree(tiny_model, folder)
    w = folder / "transformer.safetensors"
    w.write_bytes(w.read_bytes()[:1000])
    err = run_err(capsys, ["sample", str(folder), "--out", str(tmp_path / "g.png")])
    assert "transformer.safetensors" in err


def test_other_family_checkpoint(tmp_path, official_var, capsys):
    err = run_err(capsys, ["convert", "llamagen", "--vq", str(official_var / "vae.pth"),
                           "--gpt", str(official_var / "var.pth"), "--out", str(tmp_path / "o")])
    assert "convert var" in err


def test_mismatched_shapes_and_keys_are_named(tmp_path, official_var, capsys):
    sd = torch.load(official_var / "var.pth", weights_only=True)
    sd["head.bias"] = torch.zeros(65)  # wrong shape
    del sd["blocks.1.ffn.fc1.bias"]  # missing
    sd["blocks.0.attn.extra"] = torch.zeros(3)  # unexpected
    torch.save(sd, tmp_path / "var.pth")
    err = run_err(capsys, ["convert", "var", "--vae", str(official_var / "vae.pth"), "--var",
                           str(tmp_path / "var.pth"), "--out", str(tmp_path / "o")])
    for key in ("head.bias", "blocks.1.ffn.fc1.bias", "blocks.0.attn.extra"):
        assert key in err


def test_patch_nums_disagreeing_with_checkpoint(tmp_path, official_var, capsys):
    err = run_err(capsys, ["convert", "var", "--vae", str(official_var / "vae.pth"), "--var",
                           str(official_var / "var.pth"), "--patch-nums", "1,2,3,4", "--out", str(tmp_path / "o")])
    assert "1,2,4,8" in err


@pytest.mark.parametrize("args,needle", [
    (["--classes", "10"], "out of range"),
    (["--classes", "-1"], "out of range"),
    (["--cfg", "-1"], "guidance"),
    (["--top-p", "1.5"], "top-p"),
    (["--top-p", "-0.1"], "top-p"),
    (["--top-k", "65"], "top-k"),
    (["--temperature", "0"], "temperature"),
    (["--batch-size", "0"], "batch size"),
])
def test_bad_sampling_arguments(tmp_path, tiny_model, capsys, args, needle):
    err = run_err(capsys, ["sample", str(tiny_model), *args, "--out", str(tmp_path / "g.png")])
    assert needle in err
    assert not (tmp_path / "g.png").exists()


def test_output_paths(tmp_path, tiny_model, capsys):
    (tmp_path / "afile").write_text("x")
    err = run_err(capsys, ["sample", str(tiny_model), "--out", str(tmp_path / "missing" / "g.png")])
    assert "does not exist" in err
    err = run_err(capsys, ["sample", str(tiny_model), "--out", str(tmp_path)])
    assert "is a folder" in err
    err = run_err(capsys, ["sample", str(tiny_model), "--out-dir", str(tmp_path / "afile")])
    assert "is a file" in err
    err = run_err(capsys, ["sample", str(tiny_model), "--save-tokens", str(tmp_path / "nope" / "t.safetensors")])
    assert "does not exist" in err
    err = run_err(capsys, ["convert", "var", "--vae", "x.pth", "--var", "y.pth", "--out", str(tmp_path / "afile")])
    assert "file is in the way" in err


def test_missing_model_folder_and_file(tmp_path, capsys):
    err = run_err(capsys, ["sample", str(tmp_path / "nope"), "--out", str(tmp_path / "g.png")])
    assert "not found" in err
    err = run_err(capsys, ["convert", "var", "--vae", str(tmp_path / "nope.pth"), "--var", "y.pth",
                           "--out", str(tmp_path / "o")])
    assert "not found" in err


def test_console_script_exit_code_without_traceback(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "arvision", "sample", str(tmp_path / "nope"), "--out",
                           str(tmp_path / "g.png")], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip().startswith("error:") and "Traceback" not in proc.stderr
    assert Path(tmp_path / "g.png").exists() is False


def test_progression_picture_and_api(tmp_path, tiny_model, capsys):
    from PIL import Image

    from arvision.pipeline import ARPipeline

    path = tmp_path / "prog.png"
    assert main(["sample", str(tiny_model), "--classes", "2", "4", "--progression", str(path)]) == 0
    one_row = Image.open(path).size
    assert main(["sample", str(tiny_model), "--classes", "2", "--progression", str(path)]) == 0
    assert Image.open(path).size[0] == one_row[0] and Image.open(path).size[1] < one_row[1]
    pipe = ARPipeline.from_pretrained(tiny_model)
    out = pipe([2, 4], generator=torch.Generator().manual_seed(0), output_type="pt", return_progression=True)
    assert len(out.progression) == pipe.schedule.num_steps
    assert torch.equal(out.progression[-1], out.images)  # the last stage is the final image
    assert not torch.equal(out.progression[0], out.images)
