"""Bad input to the command line: one ``error:`` line, exit status 2, no traceback, nothing written, and -- for
everything that can be judged without the model -- before any model is loaded (``no_load`` makes every loader
fail the test if it is reached).  ``bench/bad_inputs.py`` runs the same kinds of cases, and the training ones, as
subprocesses and prints them as a table."""

from __future__ import annotations

import json
import os
import shutil

import pytest
import torch
from PIL import Image

from arvision.cli import main


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    """Read-only inputs: a tiny model folder, its official checkpoints, an image, masks, a file and a folder."""
    from arvision.bundled import tiny_random_pipeline

    d = tmp_path_factory.mktemp("inputs")
    pipe = tiny_random_pipeline(seed=1)
    pipe.save_pretrained(d / "model")
    tok, tr = pipe.official_state_dicts()
    torch.save(tok, d / "vae.pth")
    torch.save(tr, d / "var.pth")
    Image.new("RGB", (32, 32), (90, 120, 200)).save(d / "img.png")
    Image.new("L", (32, 32), 255).save(d / "mask.png")
    Image.new("L", (32, 32), 0).save(d / "black.png")
    (d / "afile").write_text("x")
    (d / "adir").mkdir()
    return d


def _fail_if_called(*args, **kwargs):
    raise AssertionError("a model was loaded (or features computed) before the arguments were checked")


@pytest.fixture
def no_load(monkeypatch):
    """Every way a command gets at a model (or at Inception features) fails the test."""
    import arvision.cli.loading
    import arvision.cli.sample
    from arvision.evaluation import sources
    from arvision.pipeline import ARPipeline

    monkeypatch.setattr(ARPipeline, "from_pretrained", classmethod(_fail_if_called))
    monkeypatch.setattr(ARPipeline, "from_official", classmethod(_fail_if_called))
    monkeypatch.setattr(arvision.cli.loading, "load_pipeline", _fail_if_called)
    monkeypatch.setattr(arvision.cli.sample, "load_pipeline", _fail_if_called)
    monkeypatch.setattr("arvision.bundled.tiny_random_pipeline", _fail_if_called)
    monkeypatch.setattr(sources.FeatureSource, "__init__", _fail_if_called)


def _tree(folder) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*")}


def run_bad(capsys, argv, out_dir) -> str:
    """``main(argv)`` must exit 2 with exactly one ``error:`` line on stderr and write nothing into ``out_dir``."""
    before = _tree(out_dir)
    code = main([str(a) for a in argv])
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2, f"exit {code}, stderr {err!r}"
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in err, err
    assert _tree(out_dir) == before, f"files written: {_tree(out_dir) - before}"
    return lines[0]


# (command line, a word the message must hold); {i} = the inputs folder, {o} = the (watched) output folder
BEFORE_LOAD = {
    # item 3: outputs checked before any work
    "sample --out .xyz": ("sample {i}/model --out {o}/s.xyz --out-dir {o}/imgs", "not an image format"),
    "sample --progression .bad": ("sample {i}/model --progression {o}/p.bad", "not an image format"),
    "sample --save-tokens .png": ("sample {i}/model --save-tokens {o}/t.png", ".safetensors"),
    "sample --out folder": ("sample {i}/model --out {i}/adir", "is a folder"),
    "sample --out-dir file": ("sample {i}/model --out-dir {i}/afile", "is a file"),
    "sample --out missing parent": ("sample {i}/model --out {o}/nope/g.png", "does not exist"),
    "sample --out = --progression": ("sample {i}/model --out {o}/a.png --progression {o}/a.png", "different"),
    "demo --out .txt": ("demo --out {o}/x.txt", "not an image format"),
    "edit --out .foo": ("edit {i}/model --image {i}/img.png --mask {i}/mask.png --out {o}/e.foo",
                        "not an image format"),
    "edit --compare .foo": ("edit {i}/model --image {i}/img.png --mask {i}/mask.png --out {o}/e.png "
                            "--compare {o}/c.foo", "not an image format"),
    "edit missing image": ("edit {i}/model --image {i}/nope.png --mask {i}/mask.png --out {o}/e.png", "not found"),
    "eval sample --out file": ("eval sample {i}/model --out {i}/afile", "is a file"),
    "eval tokenizer --out-png .xyz": ("eval tokenizer {i}/model --out-png {o}/t.xyz", "not an image format"),
    "eval fid missing gen": ("eval fid {i}/adir {o}/nope", "not found"),
    "calibrate-kv --out .txt": ("calibrate-kv {i}/model --out {o}/c.txt", ".json"),
    "convert --out file": ("convert var --vae {i}/vae.pth --var {i}/var.pth --out {i}/afile", "file is in the way"),
    "convert missing --var": ("convert var --vae {i}/vae.pth --var {i}/nope.pth --out {o}/m", "not found"),
    "watermark detect missing image": ("watermark detect {o}/nope.png --key k --model {i}/model", "not found"),
    # item 4: numbers, devices and lists
    "sample --cfg nan": ("sample {i}/model --cfg nan --out {o}/g.png", "finite"),
    "sample --cfg inf": ("sample {i}/model --cfg inf --out {o}/g.png", "finite"),
    "sample --cfg -1": ("sample {i}/model --cfg -1 --out {o}/g.png", "guidance"),
    "sample --temperature nan": ("sample {i}/model --temperature nan --out {o}/g.png", "temperature"),
    "sample --temperature 0": ("sample {i}/model --temperature 0 --out {o}/g.png", "temperature"),
    "sample --top-p nan": ("sample {i}/model --top-p nan --out {o}/g.png", "top-p"),
    "sample --top-p 1.5": ("sample {i}/model --top-p 1.5 --out {o}/g.png", "top-p"),
    "sample --top-k -1": ("sample {i}/model --top-k -1 --out {o}/g.png", "top-k"),
    "sample --classes -1": ("sample {i}/model --classes -1 --out {o}/g.png", "out of range"),
    "sample --seed 2**64": ("sample {i}/model --seed 18446744073709551616 --out {o}/g.png", "seed"),
    "sample --device bogus": ("sample {i}/model --device bogus --out {o}/g.png", "unknown device"),
    "sample --patch-nums 1,x": ("sample {i}/model --patch-nums 1,x --out {o}/g.png", "patch-nums"),
    "sample --patch-nums 0,2": ("sample {i}/model --patch-nums 0,2 --out {o}/g.png", "patch-nums"),
    "sample --max-pn 0": ("sample {i}/model --max-pn 0 --out {o}/g.png", "max-pn"),
    "sample --watermark-delta nan": ("sample {i}/model --watermark-key k --watermark-delta nan --out {o}/g.png",
                                     "delta"),
    "sample --watermark-gamma 1.5": ("sample {i}/model --watermark-key k --watermark-gamma 1.5 --out {o}/g.png",
                                     "gamma"),
    "sample --watermark-align nan": ("sample {i}/model --watermark-key k --watermark-align nan --out {o}/g.png",
                                     "finite"),
    "sample --weights int8 fp32": ("sample {i}/model --weights int8 --precision fp32 --out {o}/g.png", "bf16"),
    "sample --search bogus": ("sample {i}/model --search bogus:2 --out {o}/g.png", "search"),
    "sample --decoding bogus": ("sample {i}/model --decoding bogus --out {o}/g.png", "decoding"),
    "sample unknown option": ("sample {i}/model --bogus --out {o}/g.png", "unrecognized"),
    "demo --seed x": ("demo --seed x --out {o}/d.png", "seed"),
    "edit --cfg nan": ("edit {i}/model --image {i}/img.png --mask {i}/mask.png --cfg nan --out {o}/e.png", "finite"),
    "edit --temperature inf": ("edit {i}/model --image {i}/img.png --mask {i}/mask.png --temperature inf "
                               "--out {o}/e.png", "finite"),
    "edit --box nan": ("edit {i}/model --image {i}/img.png --box nan,0,1,1 --out {o}/e.png", "box"),
    "edit --box upside down": ("edit {i}/model --image {i}/img.png --box 0.6,0,0.2,1 --out {o}/e.png", "box"),
    "edit --device bogus": ("edit {i}/model --image {i}/img.png --mask {i}/mask.png --device bogus "
                            "--out {o}/e.png", "unknown device"),
    "watermark --gamma 1.5": ("watermark detect {i}/img.png --key k --gamma 1.5", "gamma"),
    "watermark --threshold nan": ("watermark detect {i}/img.png --key k --threshold nan", "finite"),
    "bench --threads 0": ("bench {i}/model --threads 0", "threads"),
    "bench --cfg nan": ("bench {i}/model --cfg nan", "finite"),
    "bench --device bogus": ("bench {i}/model --device bogus", "unknown device"),
    "eval sample --per-class 0": ("eval sample {i}/model --per-class 0 --out {o}/ev", "per-class"),
    "eval sample --temperature nan": ("eval sample {i}/model --temperature nan --out {o}/ev", "finite"),
    "eval tokenizer --n 0": ("eval tokenizer {i}/model --n 0", "--n"),
    "calibrate-kv --samples 0": ("calibrate-kv {i}/model --samples 0", "samples"),
    "calibrate-kv --alpha 2": ("calibrate-kv {i}/model --alpha 2", "alpha"),
    "convert --patch-nums 1,x": ("convert var --vae {i}/vae.pth --var {i}/var.pth --patch-nums 1,x --out {o}/m",
                                 "patch-nums"),
    "convert --num-classes 0": ("convert var --vae {i}/vae.pth --var {i}/var.pth --num-classes 0 --out {o}/m",
                                "num-classes"),
}


@pytest.mark.parametrize("case", list(BEFORE_LOAD))
def test_refused_before_any_model_is_loaded(case, inputs, tmp_path, capsys, no_load):
    argv, needle = BEFORE_LOAD[case]
    line = run_bad(capsys, argv.format(i=inputs, o=tmp_path).split(), tmp_path)
    assert needle in line


def test_device_cuda_on_a_cpu_only_build(inputs, tmp_path, capsys, no_load):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    line = run_bad(capsys, ["sample", inputs / "model", "--device", "cuda", "--out", tmp_path / "g.png"], tmp_path)
    assert "CUDA" in line


def test_devices_are_checked_by_one_validator():
    from arvision.devices import check_device
    from arvision.errors import ArvisionError

    assert check_device(" cpu ") == "cpu"
    for bad in ("bogus", "cuda:x", "", "meta"):
        with pytest.raises(ArvisionError):
            check_device(bad)


def test_random_bytes_are_not_called_a_malicious_pickle(inputs, tmp_path, capsys):
    junk = tmp_path / "junk.pth"
    junk.write_bytes(os.urandom(4096))
    out = tmp_path / "o"
    line = run_bad(capsys, ["convert", "var", "--vae", junk, "--var", inputs / "var.pth", "--out", out], tmp_path)
    assert "not a PyTorch checkpoint" in line and "arbitrary code" not in line


def test_nan_weights_are_named(inputs, tmp_path, capsys):
    sd = torch.load(inputs / "var.pth", weights_only=True)
    sd["head.weight"][0, 0] = float("nan")
    torch.save(sd, tmp_path / "var_nan.pth")
    line = run_bad(capsys, ["convert", "var", "--vae", inputs / "vae.pth", "--var", tmp_path / "var_nan.pth",
                            "--out", tmp_path / "o"], tmp_path)
    assert "non-finite" in line and "head.weight" in line
    # the same in a model folder (safetensors)
    from safetensors.torch import load_file, save_file

    folder = tmp_path / "m"
    shutil.copytree(inputs / "model", folder)
    state = load_file(str(folder / "tokenizer.safetensors"))
    name = next(k for k, v in state.items() if v.is_floating_point() and v.ndim > 1)
    state[name].view(-1)[0] = float("inf")
    save_file(state, str(folder / "tokenizer.safetensors"))
    line = run_bad(capsys, ["sample", folder, "--out", tmp_path / "g.png"], tmp_path)
    assert "non-finite" in line and name in line


def test_wrongly_typed_config_field_names_file_and_field(inputs, tmp_path, capsys):
    folder = tmp_path / "m"
    shutil.copytree(inputs / "model", folder)
    cfg = json.loads((folder / "config.json").read_text())
    cfg["transformer"]["norm_eps"] = "x"  # used to pass `arvision info`
    (folder / "config.json").write_text(json.dumps(cfg))
    line = run_bad(capsys, ["info", folder], tmp_path)
    assert "config.json" in line and "norm_eps" in line and "'x'" in line


def test_edit_that_keeps_every_token_warns(inputs, tmp_path, capsys):
    out = tmp_path / "e.png"
    assert main(["edit", str(inputs / "model"), "--image", str(inputs / "img.png"), "--mask",
                 str(inputs / "black.png"), "--out", str(out)]) == 0
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert out.is_file()
    assert len(lines) == 1 and lines[0].startswith("warning: ") and "regenerates no token" in lines[0], err
    # a mask with something to regenerate does not warn
    assert main(["edit", str(inputs / "model"), "--image", str(inputs / "img.png"), "--mask",
                 str(inputs / "mask.png"), "--out", str(out)]) == 0
    assert "warning" not in capsys.readouterr().err


def test_images_are_written_whole(tmp_path):
    """save_image writes through a temporary file: a failing write leaves neither the target nor a part file."""
    from arvision.images import save_image

    class Broken:
        def save(self, f, format):
            f.write(b"half")
            raise OSError("disk full")

    with pytest.raises(OSError):
        save_image(Broken(), tmp_path / "x.png")
    assert list(tmp_path.iterdir()) == []
    save_image(Image.new("RGB", (4, 4)), tmp_path / "x.jpg")
    assert Image.open(tmp_path / "x.jpg").format == "JPEG"
    assert list(tmp_path.iterdir()) == [tmp_path / "x.jpg"]


def test_no_load_guard_itself_fires(inputs, tmp_path, no_load):
    """The guard the cases above rely on: a valid command line does reach a loader (and fails the test there)."""
    with pytest.raises(AssertionError, match="before the arguments were checked"):
        main(["sample", str(inputs / "model"), "--out", str(tmp_path / "g.png")])
    with pytest.raises(AssertionError, match="before the arguments were checked"):
        main(["convert", "var", "--vae", str(inputs / "vae.pth"), "--var", str(inputs / "var.pth"),
              "--out", str(tmp_path / "m")])


@pytest.mark.parametrize("option", ["guidance_scale", "temperature", "top_p"])
def test_api_refuses_non_finite_sampling_settings(option):
    """The library checks what the CLI's argparse types check: NaN passed `x < 0` style tests before."""
    from arvision.bundled import tiny_random_pipeline
    from arvision.errors import ArvisionError

    pipe = tiny_random_pipeline()
    for value in (float("nan"), float("inf")):
        with pytest.raises(ArvisionError, match=option.split("_")[0].replace("guidance", "guidance scale")):
            pipe([0], **{option: value}, output_type="tokens")


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_check_finite_finds_one_bad_value_anywhere(dtype):
    from arvision.checkpoints import check_finite
    from arvision.errors import CheckpointError

    good = {"a": torch.randn(64, 64).to(dtype), "ids": torch.arange(5), "empty": torch.zeros(0, dtype=dtype)}
    check_finite(good, "ok")
    for bad_value in (float("nan"), float("inf"), float("-inf")):
        for position in (0, 2047, 4095):
            state = {k: v.clone() for k, v in good.items()}
            state["a"].view(-1)[position] = bad_value
            with pytest.raises(CheckpointError, match=r"non-finite.*\ba\b"):
                check_finite(state, "ckpt")
