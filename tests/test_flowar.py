"""FlowAR: the flow head against the official code (``bench/flowar_reference.py`` on a local mirror), continuous
tokens through the one loop, its outputs and ``--save-tokens``, guidance on the velocity, the loss falling in a tiny
training run, and ``arvision train --family flowar`` end to end.

The official comparison runs the bench script in a child process (it replaces ``torch.Tensor.cuda`` and stands in
for torchvision there, never here); it is skipped, with the reason, when the mirror or timm/einops are absent.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors import safe_open
from safetensors.torch import load_file

from arvision.cli import main
from arvision.conditions import ClassCondition
from arvision.config import ModelConfig, TokenizerConfig, TransformerConfig
from arvision.errors import ArvisionError, CheckpointError
from arvision.families.flowar import doubling_sides
from arvision.models.flow_head import VelocityGuidance, euler_times
from arvision.pipeline import ARPipeline
from arvision.tokenizers.models import build_tokenizer
from arvision.training.ar_trainer import ARTrainConfig, ARTrainer
from arvision.training.tokenizer_trainer import save_tokenizer_folder

REPO = Path(__file__).resolve().parents[1]
MIRROR = Path(os.environ.get("ARVISION_FLOWAR_MIRROR", "/work/.mirror/wangqiang9+FlowAR/repo"))
DEPS = os.environ.get("ARVISION_FLOWAR_DEPS", "")
TOL = 1e-4  # largest absolute difference from the official code (fp32 nets, float64 Euler state)


@pytest.fixture(autouse=True)
def _one_thread():
    """These models are tiny: one thread, so a busy machine's scheduler never keeps a parallel region waiting on a
    descheduled second thread (conftest restores the count after each test)."""
    torch.set_num_threads(1)


def tiny_tokenizer_config() -> TokenizerConfig:
    return TokenizerConfig(kind="vq", vocab_size=29, embed_dim=8, z_channels=16, ch=32, ch_mult=(1, 1),
                           num_res_blocks=1, attn_style="split", quant_conv_ks=1, l2_norm=True)


def tiny_flowar(seed: int = 0, image_size: int = 16) -> ARPipeline:
    """4 classes, an 8x8 latent of 8 channels (scales 1, 2, 4, 8), a 2-block trunk of width 64."""
    torch.manual_seed(seed)
    tr = TransformerConfig(block="adaln", width=64, depth=2, num_heads=2, vocab_size=29, num_classes=4,
                           in_channels=8, pos_grid=image_size // 2)
    pipe = ARPipeline(ModelConfig(family="flowar", image_size=image_size, tokenizer=tiny_tokenizer_config(),
                                  transformer=tr))
    pipe.transformer.init_weights()
    return pipe


def sample(pipe, labels, seed=0, flow_steps=4, **kw):
    """Few Euler steps: what these tests check does not depend on the grid (the official one is the bench's)."""
    return pipe(labels, generator=torch.Generator().manual_seed(seed), output_type="pt", flow_steps=flow_steps, **kw)


# -- the official code ---------------------------------------------------------------------------------------------
def test_matches_the_official_head_sampler_loss_and_inputs(tmp_path):
    """The command that produced the comparison: ``python bench/flowar_reference.py --json OUT`` (with
    ``ARVISION_FLOWAR_DEPS`` naming a folder holding timm and einops)."""
    if not MIRROR.is_dir():
        pytest.skip(f"no FlowAR mirror at {MIRROR} (fetch github:wangqiang9/FlowAR, or set ARVISION_FLOWAR_MIRROR)")
    # found, not imported: timm imports torchvision, which the bench stands in for
    probe = subprocess.run([sys.executable, "-c", "import importlib.util as u, sys; "
                            "sys.exit(not (u.find_spec('einops') and u.find_spec('timm')))"],
                           capture_output=True, env={**os.environ, "PYTHONPATH": DEPS})
    if probe.returncode != 0:
        pytest.skip("timm and einops are not importable: set ARVISION_FLOWAR_DEPS to a folder made with "
                    "`pip install --no-deps --target DIR timm einops`")
    out = tmp_path / "flowar.json"
    cmd = [sys.executable, str(REPO / "bench" / "flowar_reference.py"), "--mirror", str(MIRROR), "--tol", str(TOL),
           "--json", str(out)] + (["--deps", DEPS] if DEPS else [])
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    res = json.loads(out.read_text())
    assert res["ok"] and res["max_abs_diff"] <= TOL
    assert res["velocity"]["velocity"] <= TOL and res["training"]["loss"] <= TOL
    assert res["training"]["targets"] == 0 and res["training"]["teacher_inputs"] == 0
    sampled = [v for k, v in res.items() if k.startswith("sample")]
    assert len(sampled) == 2 and all(c["scales"] == 5 and c["tokens"] <= TOL and c["next_inputs"] <= TOL
                                     and c["cfg_weights"] == 0 for c in sampled)


# -- parts -----------------------------------------------------------------------------------------------------
def test_scales_double_and_the_euler_grid_is_flowars():
    assert doubling_sides(16) == (1, 2, 4, 8, 16) and doubling_sides(7) == (1, 2, 4, 7)
    t = euler_times(25)
    assert len(t) == 25 and t[0] == 1 and t[-1] == 0 and torch.all(t[1:] < t[:-1])
    assert torch.allclose(t[11:13], torch.tensor([0.3, 0.25], dtype=torch.float64))
    assert torch.allclose(euler_times(50), torch.linspace(1, 0, 51, dtype=torch.float64))
    g = VelocityGuidance(3.0, high=0.9)
    assert [g.weight(s, 5) for s in range(5)] == [1.0, 1.5, 2.0, 2.5, 3.0]
    assert not g.applies(0, 5, 0.5) and g.applies(2, 5, 0.9) and not g.applies(2, 5, 0.95)
    assert VelocityGuidance(1.0).doubles_batch is False


def test_inputs_are_the_previous_scale_upsampled_then_area_resized():
    pipe = tiny_flowar()
    inputs = pipe.inputs
    latent = torch.randn(2, 8, 8, 8)
    tokens = inputs.targets_from_latents(latent)
    assert tokens.shape == (2, pipe.schedule.length, 8)
    last = inputs.split(tokens)[-1]
    assert torch.equal(inputs.as_map(3, last), latent)  # the last scale is the latent itself
    teacher = inputs.teacher(tokens)
    second = inputs.split(tokens)[1]  # step 1 (2x2) -> the input of step 2 (4x4)
    up = torch.nn.functional.interpolate(inputs.as_map(1, second), size=(8, 8), mode="bicubic")
    expected = torch.nn.functional.interpolate(up, size=(4, 4), mode="area").flatten(2).transpose(1, 2)
    assert teacher.shape == (2, pipe.schedule.length - 1, 8)
    assert torch.allclose(teacher[:, 0:4], inputs.next_input(0, inputs.as_map(0, inputs.split(tokens)[0])))
    assert torch.allclose(teacher[:, 4:20], expected)
    # the image encodes to the l2-normalised pre-quantisation latent (the VQ's codes are l2-normalised)
    img = torch.rand(2, 3, 16, 16) * 2 - 1
    feats = pipe.tokenizer.features(img)
    assert torch.allclose(inputs.latent(img), torch.nn.functional.normalize(feats, dim=1))


# -- continuous tokens through the one loop -----------------------------------------------------------------------
def test_tokens_are_continuous_through_the_loop_and_decode_to_the_images():
    pipe = tiny_flowar()
    out = sample(pipe, [0, 3], guidance_scale=2.0)
    L, sides = pipe.schedule.length, pipe.schedule.sides
    assert out.tokens.shape == (2, L, 8) and out.tokens.dtype == torch.float32 and out.tokens.isfinite().all()
    assert [t.shape for t in out.step_tokens] == [(2, p * p, 8) for p in sides]
    assert out.images.shape == (2, 3, 16, 16)
    assert torch.allclose(pipe.decode(out.tokens).add(1).mul(0.5), out.images, atol=1e-6)
    again = sample(pipe, [0, 3], guidance_scale=2.0)
    assert torch.equal(again.tokens, out.tokens)  # same seed, same tokens
    assert not torch.allclose(sample(pipe, [0, 3], seed=1, guidance_scale=2.0).tokens, out.tokens)


def test_cached_sampling_sees_what_teacher_forcing_sees():
    """The condition the head gets at every step of cached sampling is the teacher-forced pass's over the sampled
    tokens (so training and sampling build the same inputs)."""
    pipe = tiny_flowar()
    with torch.no_grad():
        for p in pipe.transformer.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    head = pipe.transformer.head
    seen = []
    choose = head.choose

    def recording(z, s, run):
        seen.append(z[:run.batch].clone())
        return choose(z, s, run)

    head.choose = recording
    out = sample(pipe, [1, 2], guidance_scale=3.0)
    del head.choose
    with torch.no_grad():
        cond = ClassCondition(torch.tensor([1, 2]), pipe.config.num_classes)
        z = pipe.transformer(cond, pipe.inputs.teacher(out.tokens), pipe.schedule)
    assert z.shape == (2, pipe.schedule.length, 64)
    for s, (b, e) in enumerate(pipe.schedule.begin_ends):
        assert torch.allclose(seen[s], z[:, b:e], atol=1e-5), s


def test_per_image_generators_make_each_image_independent_of_its_batch():
    pipe = tiny_flowar()
    both = pipe([0, 1], generator=[torch.Generator().manual_seed(5), torch.Generator().manual_seed(6)],
                output_type="tokens", guidance_scale=2.0, flow_steps=4)
    alone = pipe([1], generator=[torch.Generator().manual_seed(6)], output_type="tokens", guidance_scale=2.0,
                 flow_steps=4)
    assert torch.allclose(both.tokens[1], alone.tokens[0], atol=1e-5)


def test_guidance_acts_on_the_velocity_only_below_guidance_high():
    pipe = tiny_flowar()
    with torch.no_grad():
        for p in pipe.transformer.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    plain = sample(pipe, [2], guidance_scale=1.0).tokens
    never = sample(pipe, [2], guidance_scale=3.0, guidance_high=0.0).tokens  # doubled, but never applied
    guided = sample(pipe, [2], guidance_scale=3.0).tokens
    assert torch.allclose(never, plain, atol=1e-5)
    assert (guided - plain).abs().max() > 1e-3
    # the first scale is never guided (its ramp weight is 1)
    n0 = pipe.schedule.step_sizes[0]
    assert torch.allclose(guided[:, :n0], plain[:, :n0], atol=1e-5)


def test_save_tokens_writes_the_continuous_steps(tmp_path, capsys):
    pipe = tiny_flowar()
    folder = pipe.save_pretrained(tmp_path / "m")
    path = tmp_path / "t.safetensors"
    assert main(["sample", str(folder), "--classes", "0", "2", "--seed", "4", "--cfg", "2",
                 "--save-tokens", str(path), "--out", str(tmp_path / "g.png")]) == 0
    saved = load_file(str(path))
    with safe_open(str(path), "pt") as f:
        assert f.metadata()["class_labels"] == "0,2"
    again = ARPipeline.from_pretrained(folder)
    out = again([0, 2], guidance_scale=2.0, generator=torch.Generator().manual_seed(4), output_type="tokens")
    assert sorted(saved) == [f"step.{s}" for s in range(4)]
    for s, t in enumerate(out.step_tokens):
        assert saved[f"step.{s}"].dtype == torch.float32 and torch.equal(saved[f"step.{s}"], t)


def test_bad_settings_are_one_clear_error():
    pipe = tiny_flowar()
    with pytest.raises(ArvisionError, match="continuous .* top-k, top-p and temperature do not apply"):
        sample(pipe, [0], top_k=5)
    with pytest.raises(ArvisionError, match="flow_steps must be an integer >= 2"):
        sample(pipe, [0], flow_steps=1)
    with pytest.raises(ArvisionError, match=r"guidance_high must be a flow time in \[0, 1\]"):
        sample(pipe, [0], guidance_high=1.5)
    with pytest.raises(ArvisionError, match="doubling scales 1,2,4,8 only"):
        pipe.family.schedule(pipe.config, patch_nums=(1, 2, 3, 8))
    with pytest.raises(CheckpointError, match="cannot be converted"):
        pipe.family.read_official({}, {})
    assert pipe.family.owns_transformer_checkpoint({"flownet.input_proj.weight": torch.zeros(1)})


# -- training --------------------------------------------------------------------------------------------------
def test_the_flow_loss_falls_on_synthetic_data(tmp_path):
    pipe = tiny_flowar()
    g = torch.Generator().manual_seed(0)
    # 8 images of 4 classes: smooth colour ramps, class = direction and palette
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, 16), torch.linspace(-1, 1, 16), indexing="ij")
    images, labels = [], []
    for i in range(8):
        k = i % 4
        ramp = (xx, yy, -xx, -yy)[k]
        colour = torch.rand(3, 1, 1, generator=g) * 0.5 + 0.5
        images.append((ramp[None] * colour).clamp(-1, 1))
        labels.append(k)
    tokens = pipe.encode(torch.stack(images))
    assert tokens.shape == (8, pipe.schedule.length, 8)
    cfg = ARTrainConfig(steps=60, batch_size=8, lr=3e-3, warmup_steps=5, log_every=1, sample_every=1000,
                        ckpt_every=1000, precision="fp32", seed=0)
    trainer = ARTrainer(pipe, tokens, torch.tensor(labels), cfg, tmp_path / "run", progress=False)
    losses = [trainer.train_step()["loss"] for _ in range(cfg.steps)]
    assert all(np.isfinite(losses))
    first, last = np.mean(losses[:10]), np.mean(losses[-10:])
    assert last < 0.7 * first, (first, last)


def test_cli_trains_and_samples_a_flowar_model_end_to_end(tmp_path, capsys):
    root = tmp_path / "data"
    rng = np.random.default_rng(0)
    for k, name in enumerate(("a", "b")):
        (root / name).mkdir(parents=True)
        for i in range(4):
            img = rng.uniform(0, 255, size=(16, 16, 3)) * 0.3 + 90 * k
            Image.fromarray(img.astype(np.uint8)).save(root / name / f"{i}.png")
    torch.manual_seed(0)
    tok = save_tokenizer_folder(tmp_path / "tok", build_tokenizer(tiny_tokenizer_config()), 16)
    out = tmp_path / "model"
    argv = ["train", "--tokenizer", str(tok), "--data", str(root), "--out", str(out), "--family", "flowar",
            "--preset", "tiny", "--steps", "3", "--batch-size", "4", "--lr", "1e-3", "--warmup", "0",
            "--ckpt-every", "3", "--sample-every", "1000", "--precision", "fp32", "--device", "cpu"]
    assert main(argv) == 0
    logs = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert logs and all("loss" in r and "acc" not in r and np.isfinite(r["loss"]) for r in logs)
    config = json.loads((out / "config.json").read_text())
    assert config["family"] == "flowar"
    capsys.readouterr()
    assert main(["sample", str(out), "--classes", "1", "--seed", "0", "--out", str(tmp_path / "g.png"),
                 "--save-tokens", str(tmp_path / "t.safetensors")]) == 0
    assert (tmp_path / "g.png").is_file()
    saved = load_file(str(tmp_path / "t.safetensors"))
    assert saved["step.3"].shape == (1, 64, 8) and saved["step.3"].dtype == torch.float32

