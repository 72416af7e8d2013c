"""NAR (next-neighbour prediction by anti-diagonal fronts) against the official code, through ``../shared/vectors/
nar_tiny`` (see its README.md): the diagonal schedule, strict loading of the official files, the VQ, the two heads
and their combination under teacher forcing, the official ``generate()``'s tokens and the guided logits that drew
them, export back to the official layout, and ``arvision convert nar`` / ``sample --save-tokens``.

Tokens: ids are compared exactly.  Logits: within ATOL (the official decode runs over a padded raster-ordered cache,
ours over the positions written so far in front order, so sums are taken in another order).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from arvision import CheckpointError
from arvision.errors import ArvisionError
from arvision.pipeline import ARPipeline
from arvision.schedules import DiagonalSchedule
from conftest import missing_reference

ATOL = 1e-4
CASE = "nar_tiny"


# -- the schedule, without references ------------------------------------------------------------------------------
def test_diagonal_schedule_fronts_order_spans_and_mask():
    s = DiagonalSchedule.of_grid(3)
    assert s.step_sizes == (1, 2, 3, 2, 1) and s.length == 9 and s.num_steps == 5
    assert s.cells == ((0, 0), (0, 1), (1, 0), (0, 2), (1, 1), (2, 0), (1, 2), (2, 1), (2, 2))
    assert s.order == (0, 1, 3, 2, 4, 6, 5, 7, 8)
    # step 0 feeds the class token, step c the front c - 1; the last front is never fed
    assert s.input_spans == ((0, 1), (1, 2), (2, 4), (4, 7), (7, 9)) and s.seq_length == 10 and s.first_len == 1
    vis = s.visible_positions()
    assert vis.shape == (10, 10)
    assert vis[0].tolist() == [True] + [False] * 9  # the class token sees itself only
    assert vis[2].tolist() == [True] * 4 + [False] * 6  # (0, 1) sees the class, (0, 0) and its whole front
    tokens = torch.arange(9)[None] * 10
    assert torch.equal(s.from_raster(s.to_raster(tokens)), tokens)
    assert s.to_raster(tokens)[0, 3].item() == 20  # raster cell 3 = (1, 0) is the third token in front order
    assert s.named_tokens(tokens)["tokens"].tolist() == s.to_raster(tokens).tolist()


def test_diagonal_neighbours_follow_the_official_rule():
    s = DiagonalSchedule.of_grid(3)
    # step 0 (the class position) predicts (0, 0) with both heads
    assert s.neighbours(0, 1) == ([0], [0])
    # step 2 feeds (0, 1), (1, 0) at positions 2, 3 and predicts (0, 2), (1, 1), (2, 0)
    assert s.neighbours(2, 4) == ([0, 1, -1], [-1, 0, 1])
    # step 4 feeds (1, 2), (2, 1) and predicts (2, 2) from both
    assert s.neighbours(7, 9) == ([1], [0])
    right, down = s.neighbours(0, s.seq_length)  # teacher forcing: every token
    assert len(right) == 9 and right[0] == down[0] == 0


# -- the official reference ------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def case(vectors_dir):
    folder = vectors_dir / CASE
    if not folder.is_dir():
        missing_reference(f"reference vectors not found at {folder}: case folder missing")
    config = json.loads((folder / "config.json").read_text())
    vectors = torch.load(folder / "cases.pt")
    # the head count is not in the checkpoint (README: 2 here, width / 64): given, so no warning
    pipe = ARPipeline.from_official("nar", folder / "vq.pth", folder / "gpt.pth", image_size=config["image_size"],
                                    num_heads=2)
    return folder, config, vectors, pipe


def max_abs(a: torch.Tensor, b: torch.Tensor) -> float:
    assert a.shape == b.shape, (a.shape, b.shape)
    return (a.float() - b.float()).abs().max().item()


def sample(pipe, config, vectors, i, **extra):
    (sc,) = [g for g in config["generate"] if g["case"] == i]
    top_p = sc["top_p"] if sc["top_p"] < 1.0 else 0.0  # official 1.0 = off = our 0
    return pipe(vectors[f"gen.{i}.labels"].tolist(), guidance_scale=sc["cfg_scale"], top_k=sc["top_k"], top_p=top_p,
                temperature=sc["temperature"], generator=torch.Generator().manual_seed(sc["seed"]),
                cfg_interval=sc["cfg_interval"], output_type="tokens", **extra)


def test_from_official_reads_the_architecture(case):
    _, config, _, pipe = case
    tr, gpt = pipe.config.transformer, config["gpt"]
    assert pipe.config.family == "nar" and pipe.config.image_size == config["image_size"]
    assert (tr.depth, tr.width, tr.num_heads) == (gpt["n_layer"] + gpt["medusa_attention_num"], gpt["dim"], 2)
    assert tr.ffn_hidden == 384 and tr.vocab_size == gpt["vocab_size"] and tr.num_classes == gpt["num_classes"]
    assert pipe.schedule.image_grid == (config["grid_size"],) * 2
    assert pipe.schedule.num_steps == 2 * config["grid_size"] - 1


def test_schedule_order_is_the_official_generation_order(case):
    _, _, v, pipe = case
    assert list(pipe.schedule.order) == v["gen.order"].tolist()


def test_tokenizer_matches_official(case):
    _, _, v, pipe = case
    assert torch.equal(pipe.tokenizer.encode(v["tok.img"]), v["tok.idx"])
    with torch.no_grad():
        assert max_abs(pipe.tokenizer.decode(v["tok.idx"]), v["tok.recon"]) <= ATOL
        # the pipeline's tokens are in front order
        assert torch.equal(pipe.schedule.to_raster(pipe.encode(v["tok.img"])), v["tok.idx"])
        assert max_abs(pipe.decode(pipe.encode(v["tok.img"])), v["tok.recon"].clamp(-1, 1)) <= ATOL


def test_teacher_forced_heads_and_logits_match_official(case):
    _, _, v, pipe = case
    s, tr = pipe.schedule, pipe.transformer
    tokens = s.from_raster(v["tok.idx"])
    with torch.no_grad():
        cond = tr.condition(pipe.condition(v["tf.labels"]))
        layout = tr.layout(s)
        h = tr.embed(cond.emb, pipe.inputs.teacher(tokens), 0, s.seq_length, layout)
        h, taps = tr._blocks(h, cond, layout.rope, s.position_bias(), None, 0)
        right, down = tr.head.heads(h, taps)
        logits = tr(pipe.condition(v["tf.labels"]), pipe.inputs.teacher(tokens), s)
    # our positions: class, then the tokens in front order; the official ones: class, then raster order
    raster_pos = torch.tensor([0] + [1 + p for p in s.order])
    assert torch.equal(s.position_bias() == 0, v["tf.mask"][raster_pos][:, raster_pos])
    want_right, want_down = v["tf.head_right"][:, raster_pos], v["tf.head_down"][:, raster_pos]
    assert max_abs(right, want_right) <= ATOL and max_abs(down, want_down) <= ATOL
    assert logits.shape == v["tf.logits"].shape
    assert max_abs(s.to_raster(logits), v["tf.logits"]) <= ATOL


@pytest.mark.parametrize("i", range(4))
def test_sampling_matches_official_generate(case, i):
    _, config, v, pipe = case
    seen = {}

    def record(logits, s, run):  # the guided logits, before temperature and filters
        seen[s] = logits.clone()
        return logits

    out = sample(pipe, config, v, i, processors=[record])
    assert out.tokens.shape == v[f"gen.{i}.tokens"].shape
    assert torch.equal(out.tokens, v[f"gen.{i}.tokens_genorder"].long()), f"case {i}: tokens differ (front order)"
    assert torch.equal(pipe.schedule.to_raster(out.tokens), v[f"gen.{i}.tokens"].long())
    assert out.stats["forwards"] == pipe.schedule.num_steps
    logits = torch.cat([seen[s] for s in range(pipe.schedule.num_steps)], dim=1)
    assert max_abs(pipe.schedule.to_raster(logits), v[f"gen.{i}.logits"]) <= ATOL


def test_cached_decode_equals_teacher_forcing_on_its_own_tokens(case):
    _, config, v, pipe = case
    out = sample(pipe, config, v, 0, processors=[])  # greedy, no guidance
    seen = []
    sample(pipe, config, v, 0, processors=[lambda logits, s, run: seen.append(logits.clone()) or logits])
    with torch.no_grad():
        tf = pipe.transformer(pipe.condition(v["gen.0.labels"]), pipe.inputs.teacher(out.tokens), pipe.schedule)
    assert max_abs(torch.cat(seen, dim=1), tf) <= ATOL


def test_cfg_interval_switches_guidance_off_after_that_many_tokens(case):
    _, config, v, pipe = case
    g = pipe.family.guidance(4.0, pipe.schedule, {"cfg_interval": 3})
    # tokens before each step: 0, 1, 3, 6, 10, 13, 15 -> off once more than 3 exist
    assert g.off == frozenset({3, 4, 5, 6}) and g.doubles_batch
    assert pipe.family.guidance(4.0, pipe.schedule, {"cfg_interval": -1}).off == frozenset()
    cond, uncond = torch.ones(1, 1, 2), torch.zeros(1, 1, 2)
    assert torch.equal(g.combine(cond, uncond, 3, 7), cond) and torch.equal(g.combine(cond, uncond, 2, 7), 4 * cond)
    with pytest.raises(ArvisionError, match="cfg_interval"):
        pipe([1], cfg_interval=-2, output_type="tokens")


def test_official_export_round_trips(case, tmp_path):
    folder, config, v, pipe = case
    tok, gpt = pipe.official_state_dicts()
    official = torch.load(folder / "gpt.pth", weights_only=True)["model"]
    assert set(gpt) == set(official)
    assert all(torch.equal(gpt[k], official[k]) for k in official)
    torch.save({"model": gpt}, tmp_path / "gpt.pth")
    torch.save({"model": tok}, tmp_path / "vq.pth")
    with pytest.warns(UserWarning, match="assuming 2 heads"):
        again = ARPipeline.from_official("nar", tmp_path / "vq.pth", tmp_path / "gpt.pth", image_size=8)
    assert torch.equal(sample(again, config, v, 2).tokens, v["gen.2.tokens_genorder"].long())


def test_save_pretrained_round_trip(case, tmp_path):
    _, config, v, pipe = case
    again = ARPipeline.from_pretrained(pipe.save_pretrained(tmp_path / "m"))
    assert again.config.family == "nar"
    assert torch.equal(sample(again, config, v, 1).tokens, v["gen.1.tokens_genorder"].long())


def test_the_wrong_converter_names_the_right_family_and_damage_is_refused(case, tmp_path):
    folder, *_ = case
    with pytest.raises(CheckpointError, match="arvision convert nar"):
        ARPipeline.from_official("llamagen", folder / "vq.pth", folder / "gpt.pth", image_size=8, num_heads=2)
    official = torch.load(folder / "gpt.pth", weights_only=True)["model"]
    for key in ("medusa_norm.weight", "layers.2.ffn_norm.weight"):
        torch.save({"model": {k: t for k, t in official.items() if k != key}}, tmp_path / "gpt.pth")
        with pytest.raises(CheckpointError):
            ARPipeline.from_official("nar", folder / "vq.pth", tmp_path / "gpt.pth", image_size=8, num_heads=2)


def test_cli_convert_then_sample_save_tokens(case, tmp_path):
    from safetensors.torch import load_file

    from arvision.cli import main

    folder, config, v, _ = case
    out = tmp_path / "nar"
    assert main(["convert", "nar", "--vq", str(folder / "vq.pth"), "--gpt", str(folder / "gpt.pth"),
                 "--image-size", "8", "--vq-ch", "32", "--num-heads", "2", "--out", str(out)]) == 0
    (sc,) = [g for g in config["generate"] if g["case"] == 1]
    labels = [str(k) for k in v["gen.1.labels"].tolist()]
    path = tmp_path / "tokens.safetensors"
    assert main(["sample", str(out), "--classes", *labels, "--cfg", str(sc["cfg_scale"]), "--top-k", "0",
                 "--top-p", "0", "--seed", str(sc["seed"]), "--cfg-interval", "-1", "--save-tokens", str(path)]) == 0
    assert torch.equal(load_file(str(path))["tokens"].long(), v["gen.1.tokens"].long())


def test_training_from_scratch_runs_on_the_combined_logits(tmp_path):
    from arvision.config import ModelConfig, TokenizerConfig, TransformerConfig
    from arvision.training.ar_trainer import ARTrainConfig, ARTrainer

    tok = TokenizerConfig(kind="vq", vocab_size=16, embed_dim=4, z_channels=32, ch=32, ch_mult=(1, 1), l2_norm=True)
    tr = TransformerConfig(block="llama", width=64, depth=3, num_heads=2, vocab_size=16, num_classes=3, in_channels=4)
    pipe = ARPipeline(ModelConfig(family="nar", image_size=8, tokenizer=tok, transformer=tr))
    pipe.transformer.init_weights()
    assert pipe.transformer.head.proj.weight.abs().sum() == 0
    tokens = torch.randint(0, 16, (16, pipe.schedule.length), generator=torch.Generator().manual_seed(0))
    cfg = ARTrainConfig(steps=3, batch_size=8, lr=1e-3, warmup_steps=1, log_every=1, sample_every=100, ckpt_every=100,
                        precision="fp32")
    ARTrainer(pipe, tokens, torch.arange(16) % 3, cfg, tmp_path, progress=False).train()
    log = [json.loads(line) for line in (Path(tmp_path) / "log.jsonl").read_text().splitlines()]
    assert log and all(torch.isfinite(torch.tensor(e["loss"])) for e in log)
    out = pipe([0, 1], generator=torch.Generator().manual_seed(0), output_type="tokens")
    assert out.tokens.shape == (2, pipe.schedule.length)


def test_serve_previews_grey_the_cells_of_fronts_not_sampled_yet():
    from arvision.serve.handlers import _grey_unknown_rows

    s = DiagonalSchedule.of_grid(3)
    x = torch.zeros(1, 3, 6, 6)
    out = _grey_unknown_rows(x, s, s.begin_ends[1][1])  # fronts 0 and 1 known: cells (0,0), (0,1), (1,0)
    known = torch.tensor([[1, 1, 0], [1, 0, 0], [0, 0, 0]], dtype=torch.bool)
    cells = out[0, 0].reshape(3, 2, 3, 2)[:, 0, :, 0]
    assert torch.equal(cells == 0, known) and torch.equal(cells == 0.5, ~known)
