"""Fuzzing the two places user input enters: ``config.json`` (``ModelConfig``) and the command line's options.

Property: whatever the input, the outcome is a working value or an :class:`ArvisionError` (one ``error:`` line at
the command line) -- never another exception.  New config fields and new options are covered without new tests:
the config mutations draw their keys from the configs themselves, and the option list below is checked against
the parser.
"""

from __future__ import annotations

import copy
import json
import math
from unittest import mock

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from arvision.config import ModelConfig, TokenizerConfig, TransformerConfig
from arvision.errors import ArvisionError


def _valid_configs() -> dict[str, dict]:
    """One small valid config.json per family."""
    from arvision.bundled import tiny_random_pipeline

    llamagen = ModelConfig(
        family="llamagen", image_size=8,
        tokenizer=TokenizerConfig(kind="vq", vocab_size=50, embed_dim=8, z_channels=16, ch=32, ch_mult=(1, 1),
                                  num_res_blocks=1, attn_style="split", quant_conv_ks=1, l2_norm=True),
        transformer=TransformerConfig(block="llama", width=64, depth=2, num_heads=2, vocab_size=50, num_classes=3,
                                      in_channels=8),
        sampling={"guidance_scale": 2.0, "top_k": 0})
    flexvar = ModelConfig(
        family="flexvar", image_size=8,
        tokenizer=TokenizerConfig(kind="multiscale-independent", vocab_size=29, embed_dim=8, z_channels=16, ch=32,
                                  ch_mult=(1, 1), num_res_blocks=1, attn_style="split", quant_conv_ks=1,
                                  l2_norm=True, patch_nums=(1, 2, 3, 4)),
        transformer=TransformerConfig(block="adaln", width=96, depth=2, num_heads=3, vocab_size=29, num_classes=4,
                                      in_channels=8, pos_grid=6))
    configs = {"var": tiny_random_pipeline().config, "llamagen": llamagen, "flexvar": flexvar}
    return {name: json.loads(json.dumps(cfg.to_dict())) for name, cfg in configs.items()}


VALID = _valid_configs()

# JSON values, weighted towards ones close to valid (small numbers, lists of small integers)
leaves = (st.none() | st.booleans() | st.integers(-3, 40) | st.integers(-2**70, 2**70)
          | st.floats(allow_nan=True, allow_infinity=True) | st.floats(-2, 8) | st.text(max_size=6)
          | st.sampled_from(["32", "abc", "four", "x", "var", "vq", "adaln", "llama", "fused", "split", ""]))
json_values = st.recursive(leaves, lambda inner: st.lists(inner, max_size=5)
                           | st.dictionaries(st.text(max_size=5), inner, max_size=3), max_leaves=8)
small_int_lists = st.lists(st.integers(-1, 20), max_size=6)


@st.composite
def mutated_configs(draw):
    data = copy.deepcopy(VALID[draw(st.sampled_from(sorted(VALID)))])
    for _ in range(draw(st.integers(1, 3))):
        section = draw(st.sampled_from([None, "tokenizer", "transformer"]))
        target = data if section is None else data.get(section)
        if not isinstance(target, dict):
            target = data
        key = draw(st.sampled_from(sorted(target)) | st.text(max_size=6) if target else st.text(max_size=6))
        action = draw(st.sampled_from(["replace", "replace", "list", "delete"]))
        if action == "delete":
            target.pop(key, None)
        else:
            target[key] = draw(small_int_lists if action == "list" else json_values)
    return data


def test_every_valid_config_loads():
    for data in VALID.values():
        assert ModelConfig.from_dict(data).to_dict() == ModelConfig.from_dict(ModelConfig.from_dict(data)
                                                                               .to_dict()).to_dict()


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mutated_configs())
def test_mutated_config_loads_or_says_why(data):
    try:
        cfg = ModelConfig.from_dict(data)
    except ArvisionError as e:
        assert str(e)
        return
    # what loads is a proper config: it survives its own round trip through JSON and builds a model
    again = ModelConfig.from_dict(json.loads(json.dumps(cfg.to_dict(), allow_nan=False)))
    assert again.to_dict() == cfg.to_dict()
    tr, tok = cfg.transformer, cfg.tokenizer
    small = (tr.width * tr.depth <= 512 and tok.ch * max(tok.ch_mult) <= 256 and len(tok.ch_mult) <= 4
             and cfg.image_size <= 64 and tr.vocab_size <= 5000 and tr.num_classes <= 5000
             and (tr.ffn_hidden or 0) <= 2048 and tr.mlp_ratio <= 16 and tr.pos_grid <= 64)
    if small:
        from arvision.pipeline import ARPipeline

        try:
            ARPipeline(cfg)
        except ArvisionError:
            pass


@settings(max_examples=50, deadline=None)
@given(st.binary(max_size=64) | st.text(max_size=64).map(str.encode))
def test_config_file_of_any_bytes(tmp_path_factory, raw):
    path = tmp_path_factory.mktemp("cfg") / "config.json"
    path.write_bytes(raw)
    with pytest.raises(ArvisionError):
        ModelConfig.load(path)


# -- the command line ---------------------------------------------------------------------------------------

class Reached(Exception):
    """The command got past its argument checks to a model load."""


def _reached(*args, **kwargs):
    raise Reached


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    from PIL import Image

    d = tmp_path_factory.mktemp("fuzz")
    Image.new("RGB", (16, 16)).save(d / "img.png")
    Image.new("L", (16, 16), 255).save(d / "mask.png")
    (d / "a.pth").write_bytes(b"x")
    (d / "out").mkdir()
    return d


# command line before the option, and the numeric / list options each command takes
OPTIONS = {
    "sample m --out {o}/g.png": ["--cfg", "--top-k", "--top-p", "--temperature", "--seed", "--classes", "--patch-nums",
                                 "--max-pn", "--cfg-interval", "--batch-size", "--device", "--kv-policy", "--decoding",
                                 "--search"],
    "sample m --out {o}/g.png --watermark-key k": ["--watermark-gamma", "--watermark-pool", "--watermark-delta",
                                                   "--watermark-start-step", "--watermark-align",
                                                   "--watermark-align-steps"],
    "sample m --out {o}/g.png --prompt x": ["--per-prompt"],
    "edit m --image {d}/img.png --mask {d}/mask.png --out {o}/e.png": ["--cfg", "--top-k", "--top-p",
                                                                      "--temperature", "--seed", "--class"],
    "edit m --image {d}/img.png --out {o}/e.png": ["--box"],
    "demo --out {o}/d.png": ["--seed"],
    "bench m": ["--classes", "--batch-size", "--seed", "--cfg", "--top-k", "--top-p", "--temperature", "--warmup",
                "--repeat", "--threads", "--memory-budget", "--max-batch-size"],
    "watermark detect {d}/img.png --key k": ["--gamma", "--pool", "--start-step", "--threshold"],
    "calibrate-kv m --out {o}/c.json": ["--samples", "--seed", "--alpha", "--drafters"],
    "eval sample m --out {o}/ev": ["--per-class", "--classes", "--seed", "--cfg", "--top-k", "--top-p",
                                   "--temperature", "--batch-size", "--memory-budget", "--max-batch-size"],
    "eval tokenizer m": ["--n", "--seed", "--batch-size"],
    "convert var --vae {d}/a.pth --var {d}/a.pth --out {o}/m": ["--patch-nums", "--num-classes"],
    "convert llamagen --vq {d}/a.pth --gpt {d}/a.pth --out {o}/m": ["--image-size", "--vq-ch", "--num-heads"],
    "convert nar --vq {d}/a.pth --gpt {d}/a.pth --out {o}/m": ["--image-size", "--vq-ch", "--num-heads"],
}
CASES = [(prefix, option) for prefix, options in OPTIONS.items() for option in options]

numberish = st.one_of(
    st.integers(-2**70, 2**70).map(str), st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.sampled_from(["nan", "-nan", "inf", "-inf", "1e309", "-0", "0", "0.0", "1", "1.5", "0x10", "1_000", " 3",
                     "", "1,2", "1,x", ",", "0,1", "-1", "cuda", "cuda:7", "cpu", "bogus", "hard", "bon:0", "plain"]),
    st.text(max_size=8))


SPEC_OPTIONS = {"--device", "--kv-policy", "--decoding", "--search", "--watermark-delta"}  # not plain numbers


def _non_finite(text: str) -> bool:
    try:
        return not math.isfinite(float(text))
    except ValueError:
        return False


def test_option_table_matches_the_parser(capsys):
    """Every option named above exists (so the table cannot rot silently)."""
    from arvision.cli import main

    for prefix, options in OPTIONS.items():
        with pytest.raises(SystemExit) as e:
            main(prefix.format(d=".", o=".").split() + ["--help"])
        assert e.value.code == 0
        shown = capsys.readouterr().out
        assert all(option in shown for option in options), (prefix, options)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(case=st.sampled_from(CASES), value=numberish)
def test_any_option_value_is_accepted_or_refused_in_one_line(files, capsys, case, value):
    from arvision.cli import main
    from arvision.pipeline import ARPipeline

    prefix, option = case
    argv = prefix.format(d=files, o=files / "out").split() + [f"{option}={value}"]
    with mock.patch.object(ARPipeline, "from_pretrained", _reached), \
            mock.patch.object(ARPipeline, "from_official", _reached), \
            mock.patch("arvision.cli.sample.load_pipeline", _reached), \
            mock.patch("arvision.cli.loading.load_pipeline", _reached), \
            mock.patch("arvision.bundled.tiny_random_pipeline", _reached), \
            mock.patch("arvision.training.distributed.init_distributed", _reached):
        try:
            code = main(argv)
        except Reached:
            capsys.readouterr()
            # what gets through to the model is at least a finite number where a number is asked for
            assert option in SPEC_OPTIONS or not _non_finite(value), argv
            return
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error: "), (argv, code, err)
    assert not any((files / "out").iterdir()), argv
