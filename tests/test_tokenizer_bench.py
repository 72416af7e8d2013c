"""The tokenizer benchmark (arvision.evaluation.tokenizer_bench): metrics by hand, data sets, the bundled tokenizer's
round trip, the side-by-side PNG, the Markdown table and `arvision eval tokenizer`."""

from __future__ import annotations

import argparse
import json
import math

import numpy as np
import pytest
import torch
from PIL import Image

from arvision.cli.evaluate import add_tokenizer_parser
from arvision.errors import ArvisionError
from arvision.evaluation import tokenizer_bench as tb
from inception_helpers import one_thread


@pytest.fixture(scope="module")
def pipe():
    from arvision.bundled import bundled_model_dir
    from arvision.pipeline import ARPipeline

    return ARPipeline.from_pretrained(bundled_model_dir())


@pytest.fixture(scope="module")
def results(pipe):
    """n=8 digits and photos through the bundled tokenizer, without Inception."""
    return {d: tb.benchmark_tokenizer(pipe, d, n=8, seed=0, inception=False) for d in ("mnist-5k", "photos")}


def tiny_vq_pipeline():
    from arvision.config import ModelConfig, TokenizerConfig, TransformerConfig
    from arvision.pipeline import ARPipeline

    tok = TokenizerConfig(kind="vq", vocab_size=64, embed_dim=8, z_channels=32, ch=32, ch_mult=(1, 2, 2),
                          attn_style="split", quant_conv_ks=1, l2_norm=True)
    tr = TransformerConfig(block="llama", width=64, depth=1, num_heads=2, vocab_size=64, num_classes=10)
    torch.manual_seed(0)
    return ARPipeline(ModelConfig(family="llamagen", image_size=32, tokenizer=tok, transformer=tr))


# -- metrics -----------------------------------------------------------------------------------------------------------


def test_psnr_identity_and_known_mse():
    a = np.random.default_rng(0).integers(0, 250, (3, 16, 16, 3)).astype(np.uint8)
    assert np.isinf(tb.psnr(a, a)).all()
    b = a + np.uint8(5)  # every value off by 5: MSE 25
    np.testing.assert_allclose(tb.psnr(a, b), 10 * math.log10(255**2 / 25), rtol=1e-12)
    c = a.copy()
    c[1, 0, 0, 0] += 4  # one value of 768 off by 4 in image 1 only: MSE 16/768
    p = tb.psnr(a, c)
    assert np.isinf(p[0]) and np.isinf(p[2]) and p[1] == pytest.approx(10 * math.log10(255**2 * 768 / 16))
    with pytest.raises(ArvisionError):
        tb.psnr(a, a[:2])


def test_ssim_identity_window_and_order():
    rng = np.random.default_rng(1)
    a = rng.integers(0, 256, (2, 32, 32, 3)).astype(np.uint8)
    np.testing.assert_allclose(tb.ssim(a, a), 1.0)
    noisy = np.clip(a.astype(int) + rng.integers(-20, 21, a.shape), 0, 255).astype(np.uint8)
    worse = np.clip(a.astype(int) + rng.integers(-80, 81, a.shape), 0, 255).astype(np.uint8)
    s1, s2 = tb.ssim(a, noisy), tb.ssim(a, worse)
    assert (s1 < 1).all() and (s2 < s1).all()
    assert tb.ssim_window(32) == 7 and tb.ssim_window(5) == 5 and tb.ssim_window(4) == 3
    with pytest.raises(ArvisionError):
        tb.ssim_window(2)


def test_perceptual_distance_formula():
    a = torch.rand(2, 192, 17, 17)
    np.testing.assert_allclose(tb.perceptual_distance(a, a), 0.0, atol=1e-12)
    np.testing.assert_allclose(tb.perceptual_distance(a, 3 * a), 0.0, atol=1e-12)  # per-position unit norm
    # two channels, 2 positions: orthogonal unit vectors at one (squared distance 2), equal at the other -> mean 1
    x = torch.tensor([[[[1.0, 1.0]], [[0.0, 0.0]]]])  # (1, 2, 1, 2)
    y = torch.tensor([[[[0.0, 2.0]], [[5.0, 0.0]]]])
    np.testing.assert_allclose(tb.perceptual_distance(x, y), [1.0])
    np.testing.assert_allclose(tb.perceptual_distance(x, -x), [4.0])  # the maximum
    with pytest.raises(ArvisionError):
        tb.perceptual_distance(x, y[:, :1])


def test_codebook_stats_by_hand():
    scale0 = torch.zeros(4, 1, dtype=torch.long)  # one code only: usage 1/V, perplexity 1
    scale1 = torch.tensor([[0, 1], [2, 3], [0, 1], [2, 3]])  # four codes equally often: perplexity 4
    stats = tb.codebook_stats([scale0, scale1], vocab_size=16, labels=["1x1", "1x2"])
    assert [s["scale"] for s in stats] == ["1x1", "1x2", "all"]
    assert stats[0] == {"scale": "1x1", "tokens": 4, "used": 1, "usage": 1 / 16, "perplexity": pytest.approx(1.0)}
    assert stats[1]["used"] == 4 and stats[1]["perplexity"] == pytest.approx(4.0)
    p = np.array([6, 2, 2, 2]) / 12  # all: code 0 six times, codes 1..3 twice
    assert stats[2]["tokens"] == 12 and stats[2]["perplexity"] == pytest.approx(math.exp(-(p * np.log(p)).sum()))
    assert [s["scale"] for s in tb.codebook_stats([scale1], 16, ["1x2"])] == ["1x2"]  # no "all" for one step


def test_rfid_in_the_sample_span_equals_full_dimension():
    import warnings

    from arvision.evaluation.fid import fid_from_features

    rng = np.random.default_rng(2)
    a, b = rng.normal(size=(8, 200)), rng.normal(1.0, 2.0, size=(6, 200)) ** 2
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        full = fid_from_features(a, b, method="eigh")
    assert tb.rfid_from_features(a, b) == pytest.approx(full, rel=1e-7)
    assert abs(tb.rfid_from_features(a, a)) < 1e-9


# -- data sets ---------------------------------------------------------------------------------------------------------


def test_datasets_shapes_determinism_and_content():
    from arvision.evaluation.classifier import mnist5k_split
    from arvision.images import to_uint8
    from arvision.training.datasets import Mnist5k

    for name in tb.DATASETS:
        x = tb.load_images(name, 5, 32, seed=3)
        assert x.shape == (5, 32, 32, 3) and x.dtype == np.uint8
        np.testing.assert_array_equal(x, tb.load_images(name, 5, 32, seed=3))
        assert not np.array_equal(x, tb.load_images(name, 5, 32, seed=4))
    photos = tb.load_images("photos", 9, 32).astype(int)
    assert all((p[..., 0] != p[..., 1]).any() for p in photos)  # colour crops only
    text = tb.load_images("text", 3, 32)
    assert (text[..., 0] == text[..., 2]).all()  # grey replicated
    assert tb.load_images("photos", 2, 300).shape == (2, 300, 300, 3)  # larger than the 256 px crop
    digits = tb.load_images("mnist-5k", 20, 32)
    ds, held = Mnist5k(32), mnist5k_split()[1]
    held_imgs = to_uint8(torch.stack([ds[int(i)][0] for i in held]).add(1).mul(0.5)).reshape(len(held), -1)
    rows = [np.flatnonzero((held_imgs == d.reshape(-1)).all(axis=1)) for d in digits]
    assert all(len(r) >= 1 for r in rows) and len({int(r[0]) for r in rows}) == 20  # distinct held-out digits
    assert len({int(ds.labels[held[r[0]]]) for r in rows}) > 3  # in random order, not sorted by digit


def test_bad_arguments_raise(pipe):
    with pytest.raises(ArvisionError, match="unknown tokenizer-benchmark dataset"):
        tb.benchmark_tokenizer(pipe, "imagenet", n=2)
    for n in (0, -1, 1.5):
        with pytest.raises(ArvisionError, match="positive integer"):
            tb.benchmark_tokenizer(pipe, "photos", n=n)
    with pytest.raises(ArvisionError, match="at most 500"):
        tb.load_images("mnist-5k", 501, 32)
    with pytest.raises(ArvisionError, match="native image size 32"):
        tb.benchmark_tokenizer(pipe, "photos", n=2, image_size=64)
    with pytest.raises(ArvisionError):
        tb.write_side_by_side(object(), "x.png")


# -- the bundled tokenizer ---------------------------------------------------------------------------------------------


def test_bundled_tokenizer_reconstructs_digits_far_better_than_photos(pipe, results):
    digits, photos = results["mnist-5k"], results["photos"]
    # measured once (n=8, seed 0): digits 28.4 dB / SSIM 0.958, photos 10.8 dB / 0.26 (it only saw digits)
    assert digits["psnr"] > 25 and min(digits["psnr_per_image"]) > 22 and digits["ssim"] > 0.9
    assert photos["psnr"] < digits["psnr"] - 10 and photos["ssim"] < 0.6
    assert digits["perceptual"] is None and digits["rfid"] is None
    # reconstruct() is pipe.encode / pipe.decode
    orig = digits["images"]["original"]
    rec, steps, labels = tb.reconstruct(pipe, orig[:2])
    ids = pipe.encode(torch.from_numpy(orig[:2]).permute(0, 3, 1, 2).float() / 127.5 - 1)
    assert torch.equal(torch.cat(steps, 1), ids)
    np.testing.assert_array_equal(rec, digits["images"]["reconstruction"][:2])


def test_bundled_codebook_usage_per_scale(pipe, results):
    V = pipe.config.tokenizer.vocab_size
    for r in results.values():
        cb = r["codebook"]
        assert [c["scale"] for c in cb] == [f"{p}x{p}" for p in pipe.config.tokenizer.patch_nums] + ["all"]
        for c, size in zip(cb, [p * p for p in pipe.config.tokenizer.patch_nums]):
            assert c["tokens"] == 8 * size
        for c in cb:
            assert 0 < c["usage"] <= 1 and c["used"] == round(c["usage"] * V)
            assert 1 - 1e-9 <= c["perplexity"] <= min(V, c["tokens"]) + 1e-9
        assert cb[-1]["used"] > cb[0]["used"]  # the 8x8 scale and the pool use many more codes than the 1x1


def test_inception_metrics(pipe):
    with one_thread():
        r = tb.benchmark_tokenizer(pipe, "mnist-5k", n=4, seed=1)
        same = tb._inception_metrics(r["images"]["original"], r["images"]["original"], "cpu", 4, False)
    assert 0 < r["perceptual"] < 4 and all(d > 0 for d in r["perceptual_per_image"])
    assert r["rfid"] > 0 and r["rfid_n"] == 4
    assert same["perceptual"] == 0.0 and abs(same["rfid"]) < 1e-6


def test_single_scale_vq_tokenizer_at_native_and_other_size():
    vq = tiny_vq_pipeline()
    r = tb.benchmark_tokenizer(vq, "text", n=2, inception=False)
    assert [c["scale"] for c in r["codebook"]] == ["8x8"] and r["codebook"][0]["tokens"] == 128
    r64 = tb.benchmark_tokenizer(vq, "text", n=2, image_size=64, inception=False)
    assert r64["images"]["reconstruction"].shape == (2, 64, 64, 3) and r64["codebook"][0]["scale"] == "16x16"
    with pytest.raises(ArvisionError, match="multiple of the tokenizer downsample 4"):
        tb.benchmark_tokenizer(vq, "text", n=2, image_size=30)


# -- reporting and CLI -------------------------------------------------------------------------------------------------


def test_side_by_side_png(pipe, results, tmp_path):
    path = tb.write_side_by_side([results["mnist-5k"], results["photos"]], tmp_path / "pairs.png", pairs=4)
    im = Image.open(path)
    # 32 px cells upscaled to 64 (make_grid's min_cell), 2 px padding, 14 px captions: 8 cells wide, 2 rows
    assert im.size == (8 * (64 + 2) + 2, 2 * (64 + 14 + 2) + 2)
    cell = np.asarray(im)[2:66, 2 + 66:2 + 66 + 64]  # row 0, first reconstruction, nearest-upscaled x2
    np.testing.assert_array_equal(cell[::2, ::2], results["mnist-5k"]["images"]["reconstruction"][0])
    im2 = Image.open(tb.write_side_by_side(pipe, tmp_path / "p.png", pairs=3, dataset="text"))
    assert im2.size == (6 * 66 + 2, 80 + 2)
    with pytest.raises(ArvisionError):
        tb.write_side_by_side(results["photos"], tmp_path / "missing" / "x.png")


def test_format_table(results):
    r = dict(results["mnist-5k"], psnr=float("inf"), rfid=12.345, rfid_n=8, perceptual=0.1234)
    table = tb.format_table([r, results["photos"]])
    lines = table.splitlines()
    assert len(lines) == 4 and lines[0].startswith("| dataset | n | PSNR (dB) | SSIM | perceptual | rFID")
    assert "codes 1x1: usage / ppl" in lines[0] and "codes all: usage / ppl" in lines[0]
    assert all(line.count("|") == lines[0].count("|") for line in lines)
    assert lines[2].startswith("| mnist-5k | 8 | inf |") and "12.3 (n=8)" in lines[2] and "0.123" in lines[2]
    assert "| – | – |" in lines[3]  # no Inception metrics for photos here
    assert json.loads(json.dumps(tb.to_jsonable(results["photos"])))["n"] == 8


def test_cli_eval_tokenizer(tmp_path, capsys):
    parser = argparse.ArgumentParser(prog="arvision")
    esub = parser.add_subparsers(dest="command").add_parser("eval").add_subparsers(dest="eval_command")
    add_tokenizer_parser(esub)
    args = parser.parse_args(["eval", "tokenizer", "--data", "mnist-5k,text", "--n", "2", "--no-inception",
                              "--json", str(tmp_path / "r.json"), "--out-png", str(tmp_path / "r.png")])
    args.func(args)
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("| dataset |") and out[2].startswith("| mnist-5k | 2 |") and out[3].startswith("| text |")
    saved = json.loads((tmp_path / "r.json").read_text())
    assert [r["dataset"] for r in saved["results"]] == ["mnist-5k", "text"] and "images" not in saved["results"][0]
    assert Image.open(tmp_path / "r.png").size == (16 * 66 + 2, 2 * 80 + 2)
    args = parser.parse_args(["eval", "tokenizer", "--data", "photos,cifar"])
    with pytest.raises(ArvisionError):
        args.func(args)
    with pytest.raises(SystemExit):  # --n 0 is refused while the command line is parsed, before any work
        parser.parse_args(["eval", "tokenizer", "--n", "0"])
