"""AR training: it learns, it resumes bit-identically, and data-parallel equals one process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from arvision.bundled import tiny_random_pipeline
from arvision.training.ar_trainer import ARTrainConfig, ARTrainer
from arvision.training.checkpoint import list_checkpoints


def toy_data(pipe, n=64):
    """Tokens that are a function of the label, so a model can learn them."""
    labels = torch.arange(n) % pipe.config.num_classes
    pos = torch.arange(pipe.schedule.length)
    tokens = (labels[:, None] * 7 + pos[None, :] * 3) % pipe.config.transformer.vocab_size
    return tokens, labels


def fresh_pipe(seed=0):
    pipe = tiny_random_pipeline(seed)
    pipe.transformer.init_weights()
    return pipe


def params(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_loss_drops_and_logs_per_scale(tmp_path):
    pipe = fresh_pipe()
    tokens, labels = toy_data(pipe)
    cfg = ARTrainConfig(steps=30, batch_size=16, lr=3e-3, warmup_steps=3, log_every=5, sample_every=30,
                        ckpt_every=30, precision="fp32", label_drop=0.0)
    ARTrainer(pipe, tokens, labels, cfg, tmp_path, progress=False).train()
    log = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert log[-1]["loss"] < 0.5 * log[0]["loss"]
    assert {"acc", "lr", "grad_norm", "loss/scale0", "acc/scale3"} <= set(log[-1])
    assert (tmp_path / "samples" / "step-0000030.png").is_file()
    assert (tmp_path / "config.json").is_file() and (tmp_path / "transformer.safetensors").is_file()
    from arvision.pipeline import ARPipeline

    again = ARPipeline.from_pretrained(tmp_path)  # the run's output is a model folder
    assert all(torch.equal(a, b) for a, b in zip(again.transformer.state_dict().values(),
                                                 pipe.transformer.state_dict().values()))


@pytest.mark.parametrize("label_drop", [0.0, 0.5])
def test_resume_is_bit_identical(tmp_path, label_drop):
    cfg = ARTrainConfig(steps=8, batch_size=8, lr=1e-3, warmup_steps=2, log_every=1, sample_every=100,
                        ckpt_every=3, precision="fp32", label_drop=label_drop)
    pipe = fresh_pipe()
    tokens, labels = toy_data(pipe)
    ARTrainer(pipe, tokens, labels, cfg, tmp_path / "full", progress=False).train()
    want = params(pipe.transformer)

    pipe = fresh_pipe()
    ARTrainer(pipe, tokens, labels, cfg, tmp_path / "split", progress=False).train(stop_after=5)
    torch.manual_seed(1234)  # a new process would start with another global RNG state; resume must restore it
    pipe = fresh_pipe()  # the same frozen tokenizer, as a user resumes with the same tokenizer folder
    with torch.no_grad():  # and scrambled transformer weights: they must all come from the checkpoint
        for p in pipe.transformer.parameters():
            p.normal_()
    trainer = ARTrainer(pipe, tokens, labels, cfg, tmp_path / "split", progress=False)
    trainer.train(resume=True)
    got = params(pipe.transformer)
    assert want.keys() == got.keys()
    assert all(torch.equal(want[k], got[k]) for k in want)


def test_resume_skips_a_corrupt_checkpoint(tmp_path):
    cfg = ARTrainConfig(steps=6, batch_size=8, lr=1e-3, warmup_steps=1, sample_every=100, ckpt_every=2,
                        precision="fp32", keep_last=5)
    pipe = fresh_pipe()
    tokens, labels = toy_data(pipe)
    ARTrainer(pipe, tokens, labels, cfg, tmp_path, progress=False).train(stop_after=4)
    ckpts = list_checkpoints(tmp_path / "checkpoints")
    assert [p.name for p in ckpts] == ["step-0000002", "step-0000004"]
    weights = ckpts[-1] / "weights.safetensors"
    weights.write_bytes(weights.read_bytes()[:-100])  # half-written
    trainer = ARTrainer(fresh_pipe(), tokens, labels, cfg, tmp_path, progress=False)
    with pytest.warns(UserWarning, match="step-0000004"):
        assert trainer.resume()
    assert trainer.step == 2


WORKER = Path(__file__).parent / "ddp_worker.py"


@pytest.mark.parametrize("mode", ["plain", "student"])
def test_two_processes_equal_one(tmp_path, mode):
    """With SAR's student forcing each step runs two forwards through DDP before one backward."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).parent)}
    extra = ["student"] if mode == "student" else []
    single = subprocess.run([sys.executable, str(WORKER), str(tmp_path / "single.pt"), *extra], env=env,
                            capture_output=True, text=True, timeout=300)
    assert single.returncode == 0, single.stderr[-2000:]
    port = "29533" if mode == "plain" else "29534"
    multi = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                            "--master_port", port, str(WORKER), str(tmp_path / "multi.pt"), *extra],
                           env=env, capture_output=True, text=True, timeout=300)
    assert multi.returncode == 0, multi.stderr[-3000:]
    a = torch.load(tmp_path / "single.pt", weights_only=True)
    b = torch.load(tmp_path / "multi.pt", weights_only=True)
    assert a["world"] == 1 and b["world"] == 2
    changed = [k for k in a["before"] if not torch.equal(a["before"][k], a["after"][k])]
    assert changed, "the step changed no parameter"
    for k in a["after"]:
        torch.testing.assert_close(b["after"][k], a["after"][k], rtol=1e-5, atol=1e-6)
