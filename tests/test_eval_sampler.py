"""The evaluation sampler (per-image seeds, sharding, resume, ADM .npz) and `arvision eval sample|classify`."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from arvision.bundled import tiny_random_pipeline
from arvision.cli import main
from arvision.errors import ArvisionError
from arvision.evaluation.sampler import EvalSamplingSpec, image_seed, pack_npz, sample_for_evaluation

SPEC = EvalSamplingSpec(per_class=2, classes=(0, 3, 7), seed=5, top_k=0, top_p=0.0)


@pytest.fixture(scope="module")
def pipe():
    return tiny_random_pipeline(seed=2)


def _bytes(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.glob("*.png"))}


def _same_images(a: Path, b: Path) -> bool:
    """Same files, same pixels up to one grey level: the tokens are identical, but the decoder's convolutions
    round differently for different batch sizes, which can move a pixel across a rounding boundary."""
    fa, fb = sorted(p.name for p in a.glob("*.png")), sorted(p.name for p in b.glob("*.png"))
    if fa != fb:
        return False
    for name in fa:
        x = np.asarray(Image.open(a / name), dtype=np.int16)
        y = np.asarray(Image.open(b / name), dtype=np.int16)
        if np.abs(x - y).max() > 1:
            return False
    return True


def test_image_seeds_are_distinct_streams():
    seeds = {image_seed(s, i) for s in range(4) for i in range(100)}
    assert len(seeds) == 400  # seed + index would collide: (0, 1) and (1, 0)
    assert image_seed(3, 9) == image_seed(3, 9) and 0 <= image_seed(3, 9) < 2**63


def test_same_images_whatever_the_batching_sharding_or_interruption(pipe, tmp_path):
    one = tmp_path / "one"
    written = sample_for_evaluation(pipe, one, SPEC, batch_size=6, progress=False)
    assert [p.name for p in written] == [f"{i:06d}_class{k}.png" for i, k in enumerate((0, 0, 3, 3, 7, 7))]
    reference = _bytes(one)
    assert len(set(reference.values())) == 6  # six different images

    batched = tmp_path / "batched"
    sample_for_evaluation(pipe, batched, SPEC, batch_size=4, progress=False)
    assert _same_images(batched, one)

    sharded = tmp_path / "sharded"  # what two torchrun ranks write, one after the other
    for rank in (1, 0):
        sample_for_evaluation(pipe, sharded, SPEC, batch_size=1, rank=rank, world=2, progress=False)
    assert _same_images(sharded, one)

    # interruption: two images missing (and a stray temporary file); the rerun draws exactly those two
    (one / "000001_class0.png").unlink()
    (one / "000004_class7.png").unlink()
    (one / ".000002_class3.png.tmp").write_bytes(b"half")
    again = sample_for_evaluation(pipe, one, SPEC, batch_size=2, progress=False)
    assert [p.name for p in again] == ["000001_class0.png", "000004_class7.png"]
    assert _bytes(one).keys() == reference.keys() and _same_images(one, batched)
    assert sample_for_evaluation(pipe, one, SPEC, progress=False) == []  # nothing left to do

    npz = pack_npz(one, SPEC.labels(10))
    with np.load(npz) as z:
        assert z["arr_0"].shape == (6, 32, 32, 3) and z["arr_0"].dtype == np.uint8
        assert z["labels"].tolist() == [0, 0, 3, 3, 7, 7]
        assert np.array_equal(z["arr_0"][2], np.asarray(Image.open(one / "000002_class3.png").convert("RGB")))


def test_other_settings_in_the_same_folder_are_refused(pipe, tmp_path):
    sample_for_evaluation(pipe, tmp_path, SPEC, progress=False)
    other = EvalSamplingSpec(per_class=2, classes=(0, 3, 7), seed=6, top_k=0, top_p=0.0)
    with pytest.raises(ArvisionError, match="other settings.*seed"):
        sample_for_evaluation(pipe, tmp_path, other, progress=False)
    (tmp_path / "000003_class3.png").unlink()
    with pytest.raises(ArvisionError, match="missing sample .*000003_class3.png"):
        pack_npz(tmp_path, SPEC.labels(10))
    with pytest.raises(ArvisionError, match="out of range"):
        EvalSamplingSpec(classes=(10,)).labels(10)
    with pytest.raises(ArvisionError, match="per_class"):
        EvalSamplingSpec(per_class=0)


def test_eval_sample_cli_writes_pngs_spec_and_npz(pipe, tmp_path, capsys):
    model = tmp_path / "model"
    pipe.save_pretrained(model)
    out = tmp_path / "samples"
    argv = ["eval", "sample", str(model), "--per-class", "1", "--classes", "1", "2", "--seed", "3", "--out", str(out)]
    assert main(argv) == 0
    assert "packed" in capsys.readouterr().out
    assert sorted(p.name for p in out.glob("*.png")) == ["000000_class1.png", "000001_class2.png"]
    assert json.loads((out / "spec.json").read_text())["seed"] == 3
    with np.load(out / "samples.npz") as z:
        assert z["arr_0"].shape == (2, 32, 32, 3)
    # the same images as the API with the same settings
    api = tmp_path / "api"
    sample_for_evaluation(pipe, api, EvalSamplingSpec(per_class=1, classes=(1, 2), seed=3), progress=False)
    assert _same_images(api, out)


@pytest.mark.slow
def test_eval_sample_under_torchrun_equals_one_process(pipe, tmp_path):
    model = tmp_path / "model"
    pipe.save_pretrained(model)
    args = ["eval", "sample", str(model), "--per-class", "1", "--classes", "0", "1", "2", "--seed", "4",
            "--device", "cpu"]
    two = tmp_path / "two"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29533",
           "-m", "arvision", *args, "--out", str(two)]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    one = tmp_path / "one"
    assert main([*args, "--out", str(one)]) == 0
    assert _same_images(two, one) and len(_bytes(one)) == 3
    assert (two / "samples.npz").is_file()


# -- classify -----------------------------------------------------------------------------------------------

def _real_digits(folder: Path, wrong_labels: bool = False) -> Path:
    from arvision.evaluation.classifier import mnist5k_split
    from arvision.training.datasets import Mnist5k

    ds = Mnist5k(image_size=28)
    held_out = mnist5k_split()[1][::10][:30]  # 30 held-out digits, 3 per class
    folder.mkdir()
    for j, i in enumerate(held_out):
        x, k = ds[int(i)]
        arr = ((x[0] + 1) * 127.5).round().clamp(0, 255).byte().numpy()
        label = (k + 1) % 10 if wrong_labels else k
        Image.fromarray(arr).save(folder / f"{j:06d}_class{label}.png")
    return folder


def test_eval_classify_reads_labels_from_names(tmp_path, capsys):
    right = _real_digits(tmp_path / "right")
    assert main(["eval", "classify", str(right)]) == 0
    out = capsys.readouterr().out
    acc = float(out.split("accuracy ")[1].split()[0])
    assert acc >= 0.9 and "images 30" in out
    wrong = _real_digits(tmp_path / "wrong", wrong_labels=True)
    assert main(["eval", "classify", str(wrong)]) == 0
    assert float(capsys.readouterr().out.split("accuracy ")[1].split()[0]) <= 0.1


def test_classifier_fid_separates_digits_from_noise(tmp_path):
    from arvision.evaluation.classifier import classifier_report

    real = torch.stack([torch.from_numpy(np.array(Image.open(p))) for p in
                        sorted(_real_digits(tmp_path / "d").glob("*.png"))])[:, None]
    noise = torch.randint(0, 256, real.shape, generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
    with pytest.warns(UserWarning, match="singular"):  # 30 samples for 128-d features
        fid_real = classifier_report(real, fid_real="mnist-5k")["fid"]
        fid_noise = classifier_report(noise, fid_real="mnist-5k")["fid"]
    assert fid_noise > 5 * fid_real
    with pytest.raises(ArvisionError, match="labels for"):
        classifier_report(real, [0, 1])
