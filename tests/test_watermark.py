"""LBW watermark: green lists, the logits processor, the detector's statistics, and the CLI round trip."""

from __future__ import annotations

import math
import re

import pytest
import torch
from scipy.stats import binom

from arvision.bundled import bundled_model_dir, tiny_random_pipeline
from arvision.cli import main
from arvision.cli.watermark import load_images_for
from arvision.conditions import ClassCondition
from arvision.errors import ArvisionError
from arvision.pipeline import ARPipeline
from arvision.sampling.watermark import (
    WatermarkSpec,
    align_images,
    detect_images,
    detect_tokens,
    green_list,
    parse_delta,
)
from test_search import select_midway


@pytest.fixture(scope="module")
def tiny():
    return tiny_random_pipeline(seed=1)


def test_green_lists_deterministic_sized_and_key_dependent():
    a = green_list("key-a", 0, 512, 0.5)
    assert a.dtype == torch.bool and a.shape == (512,)
    assert int(a.sum()) == 256
    assert torch.equal(a, green_list("key-a", 0, 512, 0.5))
    assert not torch.equal(a, green_list("key-b", 0, 512, 0.5))
    assert not torch.equal(a, green_list("key-a", 1, 512, 0.5))
    assert int(green_list("k", 3, 100, 0.25).sum()) == 25
    lists = WatermarkSpec("k", pool=3, gamma=0.3).lists(64)
    assert lists.shape == (3, 64) and lists.sum(1).tolist() == [19, 19, 19]


@pytest.mark.parametrize("kw", [dict(key=""), dict(key="k", gamma=0.0), dict(key="k", gamma=1.0),
                                dict(key="k", delta=-1.0), dict(key="k", delta=float("inf")), dict(key="k", pool=0),
                                dict(key="k", start_step=-1), dict(key="k", pool=2, list_index=2),
                                dict(key="k", align=-0.1), dict(key="k", align=float("nan")),
                                dict(key="k", align_steps=0)])
def test_spec_validation(kw):
    with pytest.raises(ArvisionError):
        WatermarkSpec(**kw)


def test_parse_delta():
    assert parse_delta("hard") == (0.0, True)
    assert parse_delta("2.5") == (2.5, False)
    with pytest.raises(ArvisionError, match="hard"):
        parse_delta("strong")


class FakeRun:
    def __init__(self, labels, generator):
        self.condition, self.generator = ClassCondition.of(labels, 10), generator
        self.labels = self.condition.labels


def test_processor_biases_exactly_the_chosen_list_and_hard_masks_the_rest():
    V = 64
    spec = WatermarkSpec("k", delta=2.5, pool=3)
    proc = spec.processor(V)
    gens = [torch.Generator().manual_seed(s) for s in (5, 6, 7, 8)]
    run = FakeRun([1, 2, 3, 4], gens)
    logits = torch.randn(4, 3, V)
    out = proc(logits.clone(), 0, run)
    rows = proc.row_lists(run)
    masks = spec.lists(V)
    for b in range(4):
        expect = logits[b] + 2.5 * masks[rows[b]].float()
        assert torch.equal(out[b], expect)
    # the choice follows the rows: re-batching (as SamplingRun.select does) keeps each image's list
    sel = FakeRun([3, 1, 1], [gens[2], gens[0], gens[0]])
    assert proc.row_lists(sel).tolist() == [rows[2].item(), rows[0].item(), rows[0].item()]
    hard = WatermarkSpec("k", hard=True, pool=3).processor(V)
    out = hard(logits.clone(), 0, run)
    for b in range(4):
        green = masks[rows[b]]
        assert torch.equal(out[b][:, green], logits[b][:, green])
        assert torch.isneginf(out[b][:, ~green]).all()
    late = WatermarkSpec("k", delta=2.5, start_step=2).processor(V)
    assert torch.equal(late(logits.clone(), 1, run), logits)


def test_pool_choice_spreads_over_lists():
    proc = WatermarkSpec("k", pool=4).processor(64)
    run = FakeRun([i % 10 for i in range(40)], [torch.Generator().manual_seed(i) for i in range(40)])
    assert set(proc.row_lists(run).tolist()) == {0, 1, 2, 3}


def test_detector_z_and_p_match_the_formulas():
    V, gamma = 64, 0.5
    spec = WatermarkSpec("k", gamma=gamma, pool=1)
    green = spec.lists(V)[0]
    gid, rid = green.nonzero().flatten(), (~green).nonzero().flatten()
    T = 130
    all_green = gid[torch.arange(T) % len(gid)][None]
    g = torch.Generator().manual_seed(0)
    n_g = 80
    mix = torch.cat([gid[torch.randint(len(gid), (n_g,), generator=g)],
                     rid[torch.randint(len(rid), (T - n_g,), generator=g)]])[None]
    res = detect_tokens(torch.cat([all_green, mix]), spec, V, unique=False)
    z_all = (T - gamma * T) / math.sqrt(T * gamma * (1 - gamma))
    z_mix = (n_g - gamma * T) / math.sqrt(T * gamma * (1 - gamma))
    assert res[0].z == pytest.approx(z_all) and res[0].green == T and res[0].watermarked
    assert res[1].z == pytest.approx(z_mix) and res[1].green == n_g
    assert res[1].p_value == pytest.approx(float(binom.sf(n_g - 1, T, gamma)))
    # random tokens: |z| small; Bonferroni multiplies the best list's p by K
    rand = torch.randint(V, (200, T), generator=g)
    zs = torch.tensor([r.z for r in detect_tokens(rand, WatermarkSpec("k", pool=1), V, unique=False)])
    assert zs.abs().max() < 4.5 and zs.mean().abs() < 0.3
    pooled = detect_tokens(mix, WatermarkSpec("k", pool=5), V, unique=False)[0]
    best = float(binom.sf(pooled.green - 1, T, gamma))
    assert pooled.p_value == pytest.approx(min(1.0, 5 * best))
    assert pooled.z == pytest.approx(max(pooled.z_per_list))


def test_detector_start_step_and_unique():
    V = 64
    spec = WatermarkSpec("k", pool=1, start_step=1)
    green = spec.lists(V)[0]
    r = (~green).nonzero().flatten()[0]
    gid = green.nonzero().flatten()
    tokens = torch.cat([r.repeat(10), gid[:4], gid[:4]])[None]  # step 0: 10 red, step 1: 8 green (4 distinct)
    res = detect_tokens(tokens, spec, V, [10, 8], unique=False)[0]
    assert res.scored == 8 and res.green == 8
    uniq = detect_tokens(tokens, spec, V, [10, 8])[0]  # default: distinct codes
    assert uniq.scored == 4 and uniq.green == 4
    with pytest.raises(ArvisionError):
        detect_tokens(tokens, WatermarkSpec("k", start_step=2), V, [10, 8])


def test_zero_bias_leaves_sampling_unchanged_and_bias_changes_it(tiny):
    def run(procs):
        return pipe_tokens(tiny, procs)

    plain = run([])
    assert torch.equal(run([WatermarkSpec("k", delta=0.0).processor(tiny)]), plain)
    hard_spec = WatermarkSpec("k", hard=True, pool=1)
    hard = run([hard_spec.processor(tiny)])
    assert not torch.equal(hard, plain)
    assert hard_spec.lists(64)[0][hard].all()  # hard mode: every sampled token is green


def pipe_tokens(pipe, procs):
    gens = [torch.Generator().manual_seed(s) for s in range(4)]
    return pipe([1, 2, 3, 4], generator=gens, output_type="tokens", processors=procs).tokens


@pytest.fixture(scope="module")
def bundled():
    try:
        return ARPipeline.from_pretrained(bundled_model_dir())
    except ArvisionError:
        pytest.skip("no bundled model")


def test_cli_sample_and_detect_on_the_bundled_model(bundled, tmp_path, capsys):
    """Through the CLI: watermarked PNGs are written and detected by `watermark detect`; its printed z equals the
    API's on the same files.  Hard mode: every generated token is green under the image's list."""
    key = ["--watermark-key", "secret", "--watermark-delta", "hard"]
    classes = ["--classes", "0", "1", "2", "3", "4", "5"]
    assert main(["sample", *classes, "--seed", "7", "--out-dir", str(tmp_path / "wm"),
                 "--save-tokens", str(tmp_path / "wm.safetensors"), *key]) == 0
    assert main(["sample", *classes, "--seed", "7", "--out-dir", str(tmp_path / "plain")]) == 0
    capsys.readouterr()
    from safetensors.torch import load_file

    toks = load_file(str(tmp_path / "wm.safetensors"))
    tokens = torch.cat([toks[f"step.{s}"] for s in range(len(toks))], 1)
    spec = WatermarkSpec("secret")
    on_tokens = detect_tokens(tokens, spec, 512, bundled.schedule.step_sizes)
    assert all(r.green == r.scored for r in on_tokens)  # the embedding itself is perfect
    files = sorted((tmp_path / "wm").iterdir()) + sorted((tmp_path / "plain").iterdir())
    assert main(["watermark", "detect", *map(str, files), "--key", "secret"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == len(files)
    zs = [float(re.search(r"z=(-?[0-9.]+)", line).group(1)) for line in lines]
    api = detect_images(bundled, load_images_for(bundled, files), spec)
    assert zs == pytest.approx([r.z for r in api], abs=1e-3)
    assert all(z < 4 for z in zs[len(files) // 2:])  # unwatermarked samples are not flagged


def test_cli_detect_errors(tmp_path, capsys):
    bad = tmp_path / "x.png"
    bad.write_bytes(b"not a png")
    assert main(["watermark", "detect", str(bad), "--key", "k"]) == 2
    assert "cannot read image" in capsys.readouterr().err
    assert main(["sample", "--classes", "1", "--out-dir", str(tmp_path / "o"), "--watermark-key", "k",
                 "--watermark-delta", "lots"]) == 2
    assert "hard" in capsys.readouterr().err


def test_lists_follow_rows_through_select(tiny):
    """A search controller re-batches mid-run: in hard mode every row's tokens, before and after ``select``, are green
    under that image's own list."""
    from arvision.sampling.loop import SamplingRun

    spec = WatermarkSpec("k", hard=True, pool=3)
    proc = spec.processor(tiny)
    options = tiny.sampling_options(processors=[proc])
    for first in range(0, 400, 4):  # seeds whose images use at least three different lists, so a mix-up shows
        gens = [torch.Generator().manual_seed(first + i) for i in range(4)]
        run = SamplingRun(tiny.transformer, tiny.inputs, tiny.condition([1, 2, 3, 4]), options, gens)
        before = proc.row_lists(run)
        if len(set(before[[2, 0, 3]].tolist())) == 3:
            break
    assert len(set(before[[2, 0, 3]].tolist())) == 3
    select_midway(run, [2, 0, 0, 3])
    lists = spec.lists(64)
    assert proc.row_lists(run).tolist() == before[[2, 0, 0, 3]].tolist()
    for b, k in enumerate(before[[2, 0, 0, 3]].tolist()):
        assert lists[k][run.tokens[b]].all()


def test_alignment_moves_the_retokenised_image_onto_its_list(bundled):
    """Pixel-domain alignment raises the z of the re-tokenised image under the image's own pool list (which
    ``list_for`` gives from its seed and class), and with a large fidelity weight leaves the image nearly as it was."""
    spec = WatermarkSpec("secret", pool=4)
    labels, seeds = [0, 3, 5, 8], [11, 12, 13, 14]
    out = bundled(labels, generator=[torch.Generator().manual_seed(s) for s in seeds], output_type="pt",
                  processors=[spec.processor(bundled)])
    x0 = out.images * 2 - 1
    lists = [spec.list_for(s, k) for s, k in zip(seeds, labels)]
    # list_for is the processor's choice: the sampled tokens are greenest under exactly these lists
    assert [r.list_index for r in detect_tokens(out.tokens, spec, 512, bundled.schedule.step_sizes)] == lists
    before = detect_images(bundled, x0, spec)
    x = align_images(bundled, x0, spec, lists, strength=0.0, steps=60)
    after = detect_images(bundled, x, spec)
    assert x.shape == x0.shape and x.min() >= -1 and x.max() <= 1
    assert sum(r.z for r in after) / 4 > sum(r.z for r in before) / 4 + 1.2, ([r.z for r in before],
                                                                            [r.z for r in after])
    assert [r.list_index for r in after] == lists
    stiff = align_images(bundled, x0, spec, lists, strength=100.0, steps=5)
    assert (stiff - x0).abs().max() < (x - x0).abs().max() / 4
    with pytest.raises(ArvisionError, match="one list index"):
        align_images(bundled, x0, spec, lists[:3])
    with pytest.raises(ArvisionError, match="images must be"):
        align_images(bundled, x0[:, :, :16], spec, lists)


def test_cli_sample_with_alignment(tmp_path, capsys):
    assert main(["sample", "--classes", "2", "7", "--seed", "3", "--out-dir", str(tmp_path / "wm"),
                 "--watermark-key", "secret", "--watermark-align", "0", "--watermark-align-steps", "20"]) == 0
    assert main(["sample", "--classes", "2", "7", "--seed", "3", "--out-dir", str(tmp_path / "plain"),
                 "--watermark-key", "secret"]) == 0
    capsys.readouterr()
    files = sorted((tmp_path / "wm").iterdir()) + sorted((tmp_path / "plain").iterdir())
    assert main(["watermark", "detect", *map(str, files), "--key", "secret"]) == 0
    zs = [float(re.search(r"z=(-?[0-9.]+)", line).group(1)) for line in capsys.readouterr().out.splitlines()]
    assert len(zs) == 4 and zs[0] + zs[1] > zs[2] + zs[3] + 2.0, zs


@pytest.mark.parametrize("name", ["var_pn124_w96h3_q0", "llamagen_g3_w64h2"])
def test_residual_code_logits_pick_the_encoders_tokens(name):
    """The alignment's differentiable view of quantisation agrees with the detector's: the nearest code of every
    (residual) position is the token ``encode`` returns, for VAR's residual quantiser and a (l2-normalised) VQ."""
    from arvision.sampling.watermark import residual_code_logits
    from test_consistency import make_pipe

    pipe = make_pipe(name)  # read only
    torch.manual_seed(0)
    images = torch.rand(3, 3, pipe.config.image_size, pipe.config.image_size) * 2 - 1
    with torch.no_grad():
        logits = residual_code_logits(pipe.tokenizer, pipe.tokenizer.features(images))
    assert torch.equal(torch.cat([lg.argmax(-1) for lg in logits], 1), pipe.encode(images))
