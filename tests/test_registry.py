"""The paradigm registry: every family fills the engine's slots, conditions and options flow through one object each,
old model folders still load, and the trainer's per-family paths (random schedules, SAR's student forcing) hold."""

from __future__ import annotations

import json
import math

import pytest
import torch
from safetensors.torch import load_file, save_file

from arvision.bundled import tiny_random_pipeline
from arvision.conditions import ClassCondition
from arvision.config import ModelConfig
from arvision.errors import ArvisionError
from arvision.families import FAMILIES, all_families, family_for_tokenizer, get_family
from arvision.families.base import Capabilities, Family
from arvision.models.blocks import AdaLNBlock
from arvision.models.transformer import LEGACY_KEYS
from arvision.pipeline import ARPipeline
from arvision.training.ar_trainer import ARTrainConfig, ARTrainer
from test_consistency import make_pipe
from test_flexvar import tiny_flexvar


# -- the registry --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", list(FAMILIES))
def test_every_family_fills_the_slots(name):
    fam = get_family(name)
    assert isinstance(fam, Family) and fam.name == name and isinstance(fam.capabilities, Capabilities)
    # a family either converts two released files, or has none (Infinity: no class-conditional release) and says so
    assert len(fam.official_files) in (0, 2) and all(o.required for o in fam.official_files)
    if not fam.official_files:  # refused in one line (a CheckpointError is an ArvisionError)
        with pytest.raises(ArvisionError, match="official"):
            fam.read_official({}, {})
    assert {"guidance_scale", "top_k", "top_p"} <= set(fam.defaults)
    # the official-checkpoint slots only where there are official (PyTorch) checkpoints (not MaskGIT: JAX)
    official = ("read_official", "official_state_dicts", "owns_transformer_checkpoint") if fam.official_files else ()
    for slot in ("schedule", "input_builder", "embedder", "head", "init_weights", *official):
        assert getattr(type(fam), slot) is not getattr(Family, slot), f"{name} leaves {slot} to the base class"
    assert family_for_tokenizer(fam.tokenizer_kind).tokenizer_kind == fam.tokenizer_kind


def test_config_names_its_family_and_unknown_ones_are_refused():
    cfg = tiny_random_pipeline().config.to_dict()
    with pytest.raises(ArvisionError, match="unknown family 'nosuch'; known: var, llamagen, flexvar"):
        ModelConfig.from_dict({**cfg, "family": "nosuch"})
    with pytest.raises(ArvisionError, match="invalid llamagen model parts"):
        ModelConfig.from_dict({**cfg, "family": "llamagen"})  # a VAR tokenizer and trunk under another family


def test_convert_has_one_sub_command_per_family_with_official_checkpoints():
    from arvision.cli import build_parser

    parser = build_parser()
    convert = next(a for a in parser._subparsers._group_actions[0].choices["convert"]._actions
                   if a.dest == "family")
    assert set(convert.choices) == {f.name for f in all_families() if f.official_files}
    assert "maskgit" not in convert.choices  # no official PyTorch checkpoints to convert
    assert {"var", "llamagen", "flexvar", "nar", "hmar"} <= set(convert.choices)


# -- conditions ----------------------------------------------------------------------------------------------------
def test_class_condition_null_select_cat_and_drop():
    c = ClassCondition.of([3, 1, 4], 10)
    assert c.batch == 3 and c.keys() == [3, 1, 4] and torch.equal(c.values, torch.tensor([3, 1, 4]))
    assert c.null().keys() == [10, 10, 10]
    assert c.cat(c.null()).keys() == [3, 1, 4, 10, 10, 10]
    assert c.select(torch.tensor([2, 2, 0])).keys() == [4, 4, 3]
    assert c.with_null(torch.tensor([False, True, False])).keys() == [3, 10, 4]
    with pytest.raises(ArvisionError, match="out of range"):
        ClassCondition.of([11], 10)


def test_the_trunk_encodes_a_condition_once_and_selects_its_rows():
    pipe = make_pipe("var_pn2358_w128h4_shared_q4")
    tr = pipe.transformer
    with torch.no_grad():
        cond = tr.condition(pipe.condition([1, 2, 3]))
        picked = cond.select(torch.tensor([2, 0]))
        again = tr.condition(pipe.condition([3, 1]))
    assert torch.equal(picked.emb, again.emb) and torch.equal(picked.head, again.head)
    assert all(torch.equal(a, b) for a, b in zip(picked.blocks, again.blocks))


# -- our own old model folders --------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["var_pn124_w96h3_q0", "llamagen_g3_w64h2"])
def test_model_folders_of_the_pre_registry_layout_still_load(name, tmp_path):
    pipe = make_pipe(name)
    folder = pipe.save_pretrained(tmp_path / "m")
    state = load_file(str(folder / "transformer.safetensors"))
    legacy = {LEGACY_KEYS.to_official(k): v for k, v in state.items()}
    assert "head.weight" in legacy and not any(k.startswith("embed.") for k in legacy)
    save_file(legacy, str(folder / "transformer.safetensors"))
    again = ARPipeline.from_pretrained(folder)
    def tokens(p):
        return p([0, 1], generator=torch.Generator().manual_seed(1), output_type="tokens").tokens

    assert torch.equal(tokens(again), tokens(pipe))


# -- VAR's attention without the l2 norm ---------------------------------------------------------------------------
def test_adaln_attention_without_l2_norm_scales_logits_by_a_quarter_over_sqrt_head_dim():
    torch.manual_seed(0)
    blk = AdaLNBlock(32, 4, 4.0, 1e-6, shared=False, l2_norm=False)
    x = torch.randn(2, 5, 32)
    attn = blk.attn
    with torch.no_grad():
        q, k, v = torch.nn.functional.linear(
            x, attn.qkv.weight, torch.cat((attn.q_bias, attn.k_bias, attn.v_bias))).view(2, 5, 3, 4, 8).permute(
            2, 0, 3, 1, 4)
        w = (q @ k.transpose(-2, -1) * (0.25 / math.sqrt(8))).softmax(-1)
        want = attn.proj((w @ v).transpose(1, 2).reshape(2, 5, 32))
        got = attn(x)
    torch.testing.assert_close(got, want, atol=1e-6, rtol=0)


# -- the trainer's per-family paths --------------------------------------------------------------------------------
def flexvar_latents(pipe, n=48, seed=0):
    """Latents (N, D, h, w) that depend on the label, so a model can learn their tokens."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % pipe.config.num_classes
    side = pipe.config.latent_size
    base = torch.randn(pipe.config.num_classes, pipe.config.tokenizer.embed_dim, side, side, generator=g)
    return base[labels] + 0.1 * torch.randn(n, *base.shape[1:], generator=g), labels


def train(pipe, data, labels, out, stop_after=None, resume=False, **kw):
    cfg = ARTrainConfig(**{**dict(steps=8, batch_size=8, lr=2e-3, warmup_steps=1, log_every=1, sample_every=100,
                                  ckpt_every=3, precision="fp32", label_drop=0.25), **kw})
    trainer = ARTrainer(pipe, data, labels, cfg, out, progress=False)
    trainer.train(resume=resume, stop_after=stop_after)
    return [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]


def test_random_schedules_train_on_latents_and_resume_bit_identically(tmp_path):
    pipe = tiny_flexvar(patch_nums=(1, 2, 3, 4, 6, 8), pos_grid=16)
    data, labels = flexvar_latents(pipe)
    log = train(pipe, data, labels, tmp_path / "full")
    sides = [sorted(int(k.removeprefix("loss/side")) for k in entry if k.startswith("loss/side")) for entry in log]
    assert len({tuple(s) for s in sides}) > 2  # a new scale list on most steps
    want = {k: v.clone() for k, v in pipe.transformer.state_dict().items()}
    pipe = tiny_flexvar(patch_nums=(1, 2, 3, 4, 6, 8), pos_grid=16)
    train(pipe, data, labels, tmp_path / "split", stop_after=5)
    torch.manual_seed(99)  # a new process starts with another global RNG state; resume must restore it
    pipe = tiny_flexvar(patch_nums=(1, 2, 3, 4, 6, 8), pos_grid=16)  # the same frozen tokenizer
    with torch.no_grad():  # scrambled transformer weights: they must all come from the checkpoint
        for p in pipe.transformer.parameters():
            p.normal_()
    train(pipe, data, labels, tmp_path / "split", resume=True)
    got = pipe.transformer.state_dict()
    assert all(torch.equal(want[k], got[k]) for k in want)
    with pytest.raises(ArvisionError, match="latents"):
        ARTrainer(pipe, torch.zeros(4, 10, dtype=torch.long), labels[:4], ARTrainConfig(), tmp_path / "x")


@pytest.mark.parametrize("family", ["var", "flexvar"])
def test_student_forcing_adds_a_pass_on_the_models_own_predictions(family, tmp_path):
    if family == "var":
        pipe = tiny_random_pipeline(0)
        pipe.transformer.init_weights()
        labels = torch.arange(48) % 10
        data = (labels[:, None] * 7 + torch.arange(pipe.schedule.length)[None] * 3) % 64
    else:
        pipe = tiny_flexvar()
        data, labels = flexvar_latents(pipe)
    log = train(pipe, data, labels, tmp_path / "sar", student_forcing=True, label_drop=0.0)
    for entry in log:
        assert entry["loss"] == pytest.approx(entry["loss/teacher"] + entry["loss/student"], rel=1e-5)
    assert log[-1]["loss/student"] < log[0]["loss/student"]


def test_student_forcing_inputs_come_from_the_teacher_passs_argmax(tmp_path, monkeypatch):
    pipe = tiny_flexvar()
    data, labels = flexvar_latents(pipe)
    seen = []
    original = pipe.transformer.forward

    def spy(cond, x_in, layout, **kwargs):
        out = original(cond, x_in, layout, **kwargs)
        seen.append((x_in, layout, out.detach()))
        return out

    monkeypatch.setattr(pipe.transformer, "forward", spy)
    train(pipe, data, labels, tmp_path / "one", steps=1, student_forcing=True)
    (x_tf, schedule, logits_tf), (x_sf, schedule_sf, _) = seen
    assert schedule_sf == schedule
    inputs = pipe.family.input_builder(pipe.tokenizer, schedule)
    assert torch.equal(x_sf, inputs.teacher(logits_tf.argmax(-1)))
    assert not torch.equal(x_sf, x_tf)


def test_student_forcing_is_refused_where_it_does_not_apply(tmp_path):
    pipe = make_pipe.__wrapped__("llamagen_g3_w64h2")
    tokens = torch.zeros(8, pipe.schedule.length, dtype=torch.long)
    with pytest.raises(ArvisionError, match="student forcing"):
        ARTrainer(pipe, tokens, torch.zeros(8, dtype=torch.long), ARTrainConfig(student_forcing=True), tmp_path)
    assert not get_family("llamagen").capabilities.student_forcing
    assert [f.name for f in all_families() if f.capabilities.student_forcing] == ["var", "flexvar"]
