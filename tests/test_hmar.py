"""HMAR (Markovian next-scale prediction + masked sub-steps) against the official code, through ``../shared/vectors/
hmar_tiny`` (see its README.md): strict loading of the official files, VAR's tokenizer, the next-scale and masked
routes under teacher forcing, every sampled token of every case (sub-steps included), export back to the official
layout, ``arvision convert hmar`` / ``sample --mask-steps --save-tokens``.  Without the vectors: the block-diagonal
attention rule, the mask-step option, and other trunk shapes through our own converter round trip, where the
step-by-step (cache-less) forwards must equal the full-sequence forward under the block-diagonal mask.

Tokens: compared exactly.  Logits: within ATOL.
"""

from __future__ import annotations

import json

import pytest
import torch

from arvision import CheckpointError
from arvision.config import ModelConfig, TokenizerConfig, TransformerConfig
from arvision.errors import ArvisionError
from arvision.families import get_family
from arvision.families.hmar_parts import MaskedInput, parse_mask_steps
from arvision.models.attention import StepLocalCache
from arvision.pipeline import ARPipeline
from arvision.schedules import ScaleSchedule
from conftest import missing_reference, random_image_folder

ATOL = 1e-4
CASE = "hmar_tiny"


def max_abs(a: torch.Tensor, b: torch.Tensor) -> float:
    assert a.shape == b.shape, (a.shape, b.shape)
    return (a.float() - b.float()).abs().max().item()


# -- the official reference ------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def case(vectors_dir):
    """(folder, config.json, cases.pt, the pipeline read from the official files) of the hmar_tiny case."""
    folder = vectors_dir / CASE
    if not folder.is_dir():
        missing_reference(f"reference vectors not found at {folder}: case folder missing")
    return (folder, json.loads((folder / "config.json").read_text()), torch.load(folder / "cases.pt"),
            ARPipeline.from_official("hmar", folder / "vae.pth", folder / "hmar.pth"))


def settings(config: dict, i: int) -> dict:
    (sc,) = [g for g in config["sampling"] if g["case"] == i]
    return sc


def sample(pipe, config, vectors, i, **extra):
    sc = settings(config, i)
    steps = sc["mask_schedule"] if sc["mask"] else "none"
    return pipe(vectors[f"sample.{i}.labels"].tolist(), guidance_scale=sc["cfg"], top_k=sc["top_k"],
                top_p=sc["top_p"], generator=torch.Generator().manual_seed(sc["g_seed"]), mask_steps=steps,
                output_type="pt", **extra)


def test_from_official_reads_the_architecture(case):
    _, config, _, pipe = case
    tr, hm = pipe.config.transformer, config["hmar"]
    assert pipe.config.family == "hmar" and pipe.config.image_size == config["image_size"]
    assert (tr.depth, tr.width, tr.num_heads, tr.branch_depth) == (hm["depth"], hm["embed_dim"], hm["num_heads"],
                                                                   hm["n_layers_train"])
    assert tr.num_classes == hm["num_classes"] and tr.shared_adaln == hm["shared_aln"]
    assert pipe.schedule.sides == tuple(hm["patch_nums"]) and pipe.schedule.attention == "block-diagonal"
    # one shared block, then two copies of the last two (next-scale, masked)
    assert len(pipe.transformer.blocks) == hm["depth"] + hm["n_layers_train"]
    assert pipe.transformer.routes == {"next-scale": (0, 1, 2), "masked": (0, 3, 4)}


def test_tokenizer_matches_official(case):
    _, _, v, pipe = case
    ids = pipe.tokenizer.encode(v["tok.img"])
    for s, t in enumerate(ids):
        assert torch.equal(t, v[f"tok.idx.{s}"]), f"scale {s}"
    with torch.no_grad():
        assert max_abs(pipe.tokenizer.canvas_from_ids(ids), v["tok.fhat"]) <= ATOL
        assert max_abs(pipe.tokenizer.decode(ids), v["tok.recon"].clamp(-1, 1)) <= ATOL


def teacher_forced(pipe, v):
    """(next-scale logits (2, L, V), masked-route logits (2, L - 1, V), the masked input) of the tf case."""
    tokens = torch.cat([v[f"tok.idx.{s}"] for s in range(pipe.schedule.num_steps)], dim=1)
    masked = torch.zeros(tokens.shape[0], tokens.shape[1] - 1, dtype=torch.bool)
    masked[:, v["tf.mask_pos"]] = True
    tr = pipe.transformer
    with torch.no_grad():
        cond = tr.condition(pipe.condition(v["tf.labels"].tolist()))
        ns = tr(cond, pipe.inputs.teacher(tokens), pipe.schedule)
        x_masked = pipe.inputs.teacher_masked(tokens, masked)
        mask = tr(cond, x_masked, pipe.schedule, route="masked")[:, 1:]  # the class row is not a masked prediction
    return ns, mask, x_masked


def test_teacher_forced_logits_match_official(case):
    _, _, v, pipe = case
    ns, mask, x_masked = teacher_forced(pipe, v)
    assert max_abs(x_masked.canvas, v["tf.ns_input"]) <= ATOL
    assert max_abs(x_masked.codes, v["tf.mask_input"]) <= ATOL
    assert max_abs(ns, v["tf.ns_logits"]) <= ATOL
    assert max_abs(mask, v["tf.mask_logits"]) <= ATOL
    assert (mask - ns[:, 1:]).abs().max() > 1e-2  # the two routes are different models


@pytest.mark.parametrize("i", range(4))
def test_sampling_matches_official_generate(case, i):
    _, config, v, pipe = case
    out = sample(pipe, config, v, i)
    for s in range(pipe.schedule.num_steps):
        assert torch.equal(out.step_tokens[s], v[f"sample.{i}.idx.{s}"]), f"case {i}: scale {s} differs"
    assert max_abs(out.images, v[f"sample.{i}.img"]) <= ATOL
    sc = settings(config, i)
    sub = sum(len(c) - 1 for c, n in zip(sc["mask_schedule"] or (), pipe.schedule.step_sizes) if n > 1)
    assert out.stats["forwards"] == pipe.schedule.num_steps + sub
    assert out.stats["kv_cache_bytes"] == 0  # Markovian: nothing is cached
    if i == 0:  # scale 2's last sub-step re-drew its masked positions, and the sub-steps changed the scale
        positions = v["sample.0.masked.2.3"]
        assert torch.equal(out.step_tokens[2].gather(1, positions), v["sample.0.draw.2.3"].gather(1, positions))
        assert not torch.equal(v["sample.0.draw.2.0"], out.step_tokens[2])


def test_official_export_round_trips(case, tmp_path):
    folder, config, v, pipe = case
    tok, tr = pipe.official_state_dicts()
    official = torch.load(folder / "hmar.pth", weights_only=True)
    assert set(tr) == set(official)
    assert all(torch.equal(tr[k], official[k]) for k in official)
    torch.save(tr, tmp_path / "hmar.pth")
    torch.save(tok, tmp_path / "vae.pth")
    again = ARPipeline.from_official("hmar", tmp_path / "vae.pth", tmp_path / "hmar.pth")
    assert torch.equal(torch.cat(sample(again, config, v, 1).step_tokens, 1),
                       torch.cat([v[f"sample.1.idx.{s}"] for s in range(4)], 1))


def test_save_pretrained_round_trip(case, tmp_path):
    _, config, v, pipe = case
    again = ARPipeline.from_pretrained(pipe.save_pretrained(tmp_path / "m"))
    assert again.config.family == "hmar" and again.config.transformer.branch_depth == 2
    out = sample(again, config, v, 0)
    assert all(torch.equal(out.step_tokens[s], v[f"sample.0.idx.{s}"]) for s in range(4))


def test_the_wrong_converter_names_the_right_family_and_damage_is_refused(case, tmp_path, vectors_dir):
    folder, *_ = case
    var = vectors_dir / "var_tiny" / "var.pth"
    if var.is_file():
        with pytest.raises(CheckpointError, match="arvision convert var"):
            ARPipeline.from_official("hmar", folder / "vae.pth", var)
    # HMAR's files carry VAR's lvl_1L buffer too; the VAR converter must still name HMAR's (Family.refines)
    with pytest.raises(CheckpointError, match="arvision convert hmar"):
        ARPipeline.from_official("var", folder / "vae.pth", folder / "hmar.pth")
    official = torch.load(folder / "hmar.pth", weights_only=True)
    for key, match in (("mask_blocks.1.ffn.fc2.bias", "mask_blocks"), ("mask_head_nm.ada_lin.1.weight",
                                                                       "mask_head_nm.ada_lin.1.weight")):
        torch.save({k: t for k, t in official.items() if k != key}, tmp_path / "hmar.pth")
        with pytest.raises(CheckpointError, match=match):
            ARPipeline.from_official("hmar", folder / "vae.pth", tmp_path / "hmar.pth")
    torch.save({**official, "mask_blocks.0.extra": torch.zeros(1)}, tmp_path / "hmar.pth")
    with pytest.raises(CheckpointError, match="mask_blocks.0.extra"):
        ARPipeline.from_official("hmar", folder / "vae.pth", tmp_path / "hmar.pth")


def test_cli_convert_then_sample_with_mask_steps_and_save_tokens(case, tmp_path):
    from safetensors.torch import load_file

    from arvision.cli import main

    folder, config, v, _ = case
    out = tmp_path / "hmar"
    assert main(["convert", "hmar", "--vae", str(folder / "vae.pth"), "--var", str(folder / "hmar.pth"),
                 "--patch-nums", "1,2,3,4", "--num-classes", "10", "--out", str(out)]) == 0
    for i in (0, 1):
        sc = settings(config, i)
        sched = "/".join(",".join(map(str, c)) for c in sc["mask_schedule"])
        labels = [str(k) for k in v[f"sample.{i}.labels"].tolist()]
        path = tmp_path / f"tokens{i}.safetensors"
        assert main(["sample", str(out), "--classes", *labels, "--cfg", str(sc["cfg"]), "--top-k", str(sc["top_k"]),
                     "--top-p", str(sc["top_p"]), "--seed", str(sc["g_seed"]), "--mask-steps", sched,
                     "--save-tokens", str(path)]) == 0
        saved = load_file(str(path))
        for s in range(4):
            assert torch.equal(saved[f"step.{s}"].long(), v[f"sample.{i}.idx.{s}"]), f"case {i} scale {s}"


# -- without references ----------------------------------------------------------------------------------------------
def test_block_diagonal_schedule_sees_only_its_own_scale():
    s = ScaleSchedule.from_sides((1, 2, 3), attention="block-diagonal")
    vis = s.visible()
    ids = s.step_ids()
    assert torch.equal(vis, ids[None, :] == ids[:, None]) and not s.sees_earlier_steps
    assert ScaleSchedule.from_sides((1, 2, 3)).sees_earlier_steps
    assert s != ScaleSchedule.from_sides((1, 2, 3))  # the rule is part of the schedule


def test_mask_steps_option_is_parsed_and_checked():
    s = ScaleSchedule.from_sides((1, 2, 3, 4))
    assert parse_mask_steps("1/1,3/1,1,2,5/16", s) == ((1,), (1, 3), (1, 1, 2, 5), (16,))
    assert parse_mask_steps("none", s) == () and parse_mask_steps([[1], [2, 2], [3], [4]], s)[1] == (2, 2)
    for bad, match in (("1/1,3/16", "3 group"), ("1/1,x/1/1", "invalid mask steps"), ("1,1/1/1/1", "one token"),
                       ("1/1,5/1/1", "re-predict 5 of its 4"), ("1/0/1/1", "counts"), (7, "invalid mask steps")):
        with pytest.raises(ArvisionError, match=match):
            parse_mask_steps(bad, s)
    fam = get_family("hmar")
    assert fam.check_sampling_options({}, ScaleSchedule.from_sides((1, 2, 3, 4, 5, 6, 8, 10, 13, 16)))[
        "mask_steps"][2] == (1, 1, 2, 5)  # the official default on the 256 px list
    assert fam.check_sampling_options({}, s) == {"mask_steps": ()}


def test_capabilities_say_no_kv_policies_and_no_speculative_decoding():
    caps = get_family("hmar").capabilities
    assert not caps.kv_policies and not caps.speculative_decoding and not caps.soft_codes and caps.progression


def hidden_config(depth: int, width: int, heads: int, branch: int, shared: bool, sides) -> ModelConfig:
    tok = TokenizerConfig(kind="multiscale", vocab_size=48, embed_dim=6, z_channels=6, ch=32, ch_mult=(1, 1),
                          num_res_blocks=1, patch_nums=tuple(sides), share_quant_resi=2)
    tr = TransformerConfig(block="adaln", width=width, depth=depth, num_heads=heads, vocab_size=48, num_classes=5,
                           in_channels=6, shared_adaln=shared, branch_depth=branch)
    return ModelConfig(family="hmar", image_size=sides[-1] * 2, tokenizer=tok, transformer=tr)


def randomized(config: ModelConfig, seed: int) -> ARPipeline:
    """Every float tensor random (the k biases and the masked copies included), so no part can hide as zero."""
    pipe = ARPipeline(config)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in (pipe.tokenizer, pipe.transformer):
            for t in [*module.parameters(), *module.buffers()]:
                if t.is_floating_point():
                    t.copy_(torch.randn(t.shape, generator=g) * 0.3)
    return pipe


HIDDEN = {"d4w96b1_shared": (4, 96, 3, 1, True, (1, 2, 3, 5)),
          "d2w32b2": (2, 32, 2, 2, False, (1, 3, 4))}


@pytest.fixture(scope="module", params=list(HIDDEN))
def hidden(request, tmp_path_factory):
    """A random model of another shape, converted to the official layout and read back by our own converter."""
    config = hidden_config(*HIDDEN[request.param])
    pipe = randomized(config, seed=3)
    tok, tr = pipe.official_state_dicts()
    folder = tmp_path_factory.mktemp("hmar_hidden")
    torch.save(tok, folder / "vae.pth")
    torch.save(tr, folder / "hmar.pth")
    again = ARPipeline.from_official("hmar", folder / "vae.pth", folder / "hmar.pth")
    return pipe, again


def test_converter_round_trip_keeps_the_shape_and_every_weight(hidden):
    pipe, again = hidden
    a, b = pipe.config.transformer, again.config.transformer
    assert (a.depth, a.width, a.num_heads, a.branch_depth, a.shared_adaln) == (b.depth, b.width, b.num_heads,
                                                                               b.branch_depth, b.shared_adaln)
    assert again.schedule == pipe.schedule
    theirs = again.transformer.state_dict()
    assert all(torch.equal(t, theirs[k]) for k, t in pipe.transformer.state_dict().items())


def test_step_forwards_equal_the_block_diagonal_full_forward_on_both_routes(hidden):
    _, pipe = hidden
    tr, s = pipe.transformer, pipe.schedule
    g = torch.Generator().manual_seed(0)
    tokens = torch.randint(0, 48, (2, s.length), generator=g)
    masked = torch.rand(2, s.length - s.first_len, generator=g) < 0.4
    with torch.no_grad():
        cond = tr.condition(pipe.condition([1, 4]))
        layout = tr.layout(s)
        x_ns = pipe.inputs.teacher(tokens)
        x_mask = pipe.inputs.teacher_masked(tokens, masked)
        full_ns, full_mask = tr(cond, x_ns, layout), tr(cond, x_mask, layout, route="masked")
        cache = tr.new_cache(2, s)
        assert isinstance(cache, StepLocalCache) and cache.peak_nbytes == 0
        for step, (begin, end) in enumerate(s.begin_ends):
            if step == 0:
                ns = tr.forward_step(0, cond, None, cache, layout)
            else:
                lo, hi = begin - s.first_len, end - s.first_len
                ns = tr.forward_step(step, cond, x_ns[:, lo:hi], cache, layout)
                part = MaskedInput(x_mask.canvas[:, lo:hi], x_mask.codes[:, lo:hi], x_mask.masked[:, lo:hi])
                mk = tr.forward_positions(begin, end, cond, part, cache, layout, route="masked")
                assert max_abs(mk, full_mask[:, begin:end]) <= ATOL
            assert max_abs(ns, full_ns[:, begin:end]) <= ATOL


def test_markovian_rule_earlier_scales_reach_a_scale_only_through_its_input(hidden):
    """With scale s's input rows held fixed, changing what the earlier scales fed the trunk changes nothing at s."""
    _, pipe = hidden
    tr, s = pipe.transformer, pipe.schedule
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, s.length - s.first_len, 6, generator=g)
    step = s.num_steps - 1
    begin, end = s.begin_ends[step]
    changed = x.clone()
    changed[:, : begin - s.first_len] = torch.randn(changed[:, : begin - s.first_len].shape, generator=g)
    with torch.no_grad():
        cond = tr.condition(pipe.condition([0, 2]))
        before, after = tr(cond, x, s), tr(cond, changed, s)
        assert max_abs(before[:, begin:end], after[:, begin:end]) <= 1e-6
        assert (before[:, :begin] - after[:, :begin]).abs().max() > 1e-3  # the earlier scales themselves changed
        own = x.clone()
        own[:, begin - s.first_len] += 1.0
        assert (tr(cond, own, s)[:, begin:end] - before[:, begin:end]).abs().max() > 1e-3
        # a block-causal trunk (VAR's rule) on the same weights would see the change
        causal = ScaleSchedule.from_sides(s.sides)
        assert (tr(cond, x, causal)[:, begin:end] - tr(cond, changed, causal)[:, begin:end]).abs().max() > 1e-3


def test_sampling_with_substeps_sees_the_teacher_forced_next_scale_logits(hidden):
    pipe, again = hidden
    s = pipe.schedule
    steps = "/".join("1" if n == 1 else f"1,{min(2, n)},1" for n in s.step_sizes)
    seen = []

    def record(logits, step, run):
        seen.append((step, logits.clone()))
        return logits

    kwargs = dict(guidance_scale=2.0, top_k=10, top_p=0.9, mask_steps=steps, output_type="tokens")
    out = again([1, 3], generator=torch.Generator().manual_seed(5), processors=[record], **kwargs)
    ref = pipe([1, 3], generator=torch.Generator().manual_seed(5), **kwargs)
    assert torch.equal(out.tokens, ref.tokens)  # the converted model samples as the original
    subs = sum(2 for n in s.step_sizes if n > 1)
    assert out.stats["forwards"] == s.num_steps + subs and len(seen) == s.num_steps + subs
    firsts = {}
    for step, logits in seen:  # each step's first call is its next-scale draw
        firsts.setdefault(step, logits)
    tr = again.transformer
    with torch.no_grad():
        rows = again.condition([1, 3])
        x = again.inputs.teacher(out.tokens)
        both = tr(rows.cat(rows.null()), torch.cat([x, x]), s)  # [cond; null class], as sampling guides

    for step, (begin, end) in enumerate(s.begin_ends):
        t = 2.0 * step / (s.num_steps - 1)
        want = (1 + t) * both[:2, begin:end] - t * both[2:, begin:end]
        assert max_abs(firsts[step], want) <= ATOL


def test_bad_options_are_refused_with_one_line(hidden):
    _, pipe = hidden
    with pytest.raises(ArvisionError, match="2 group"):
        pipe([0], mask_steps="1/1", output_type="tokens")
    with pytest.raises(ArvisionError, match="HMAR"):
        pipe([0], kv_policy="scalekv:0.5", output_type="tokens")
    with pytest.raises(ArvisionError):
        ModelConfig.from_dict({**pipe.config.to_dict(), "transformer": {**pipe.config.to_dict()["transformer"],
                                                                        "branch_depth": 0}})
    var = pipe.config.to_dict()
    with pytest.raises(ArvisionError, match="branch_depth"):
        ModelConfig.from_dict({**var, "family": "var"})


# -- training ---------------------------------------------------------------------------------------------------------
def test_lognorm_loss_weights_follow_the_official_formula():
    np = pytest.importorskip("numpy")
    stats = pytest.importorskip("scipy.stats")
    fam = get_family("hmar")
    for sides in ((1, 2, 3, 4), (1, 2, 3, 4, 5, 6, 8, 10, 13, 16), (1, 3, 4)):
        s = ScaleSchedule.from_sides(sides, attention="block-diagonal")
        w = fam.loss_weights(s)
        assert w.shape == (s.length,) and abs(w.sum().item() - 1) < 1e-6
        # the official trainer's computation, independently: scipy's density of the reversed ratios' z-scores
        ratios = np.array(sides) / sides[-1]
        z = (np.array(sides[::-1]) / sides[-1] - ratios.mean()) / np.std(ratios, ddof=1)
        share = stats.norm.pdf(z) / stats.norm.pdf(z).sum()
        want = np.concatenate([[share[i] / p ** 2] * p ** 2 for i, p in enumerate(sides)])
        assert np.allclose(w.numpy(), want, rtol=1e-6, atol=0)
    assert get_family("var").loss_weights(s) is None  # other families keep the plain mean


def test_training_step_uses_the_weighted_next_scale_loss(tmp_path):
    import copy

    import torch.nn.functional as F

    from arvision.training.ar_trainer import ARTrainConfig, ARTrainer

    config = hidden_config(3, 32, 2, 1, False, (1, 2, 3))
    pipe = ARPipeline(config)
    torch.manual_seed(0)
    pipe.transformer.init_weights()
    assert pipe.transformer.head.mask_proj.weight.abs().max() < 0.05  # the masked head is sized like the other
    before = copy.deepcopy(pipe.transformer)
    tokens = torch.randint(0, 48, (4, pipe.schedule.length), generator=torch.Generator().manual_seed(0))
    labels = torch.tensor([0, 1, 2, 3])
    cfg = ARTrainConfig(steps=1, batch_size=4, lr=1e-3, warmup_steps=1, log_every=1, sample_every=100,
                       ckpt_every=100, precision="fp32", label_drop=0.0)
    metrics = ARTrainer(pipe, tokens, labels, cfg, tmp_path, progress=False).train_step()
    with torch.no_grad():
        logits = before(pipe.condition(labels.tolist()), pipe.inputs.teacher(tokens), pipe.schedule)
        ce = F.cross_entropy(logits.flatten(0, 1), tokens.flatten(), reduction="none").view_as(tokens)
    w = pipe.family.loss_weights(pipe.schedule)
    assert abs(metrics["loss"] - (ce * w).sum(-1).mean().item()) < 1e-5
    assert abs(metrics["loss"] - ce.mean().item()) > 1e-4  # the weights are not the plain mean


def test_a_preset_trunk_trains_from_scratch():
    """`arvision train --family hmar --preset ...` builds a valid HMAR (one block per route) without any official
    file: the from-scratch path must not leave branch_depth at the shared config's 0."""
    from arvision.training.presets import transformer_config

    tr = transformer_config("hmar", "tiny", 48, 4, 8, latent_side=3)
    assert tr.branch_depth == 1
    tok = TokenizerConfig(vocab_size=48, embed_dim=8, z_channels=8, ch=32, ch_mult=(1, 1), patch_nums=(1, 2, 3))
    pipe = ARPipeline(ModelConfig(family="hmar", image_size=6, tokenizer=tok, transformer=tr))
    routes = pipe.family.block_routes(pipe.config)
    assert routes["next-scale"] == (0, 1) and routes["masked"] == (0, 2)


def test_masked_stage_trains_only_the_masked_route_on_the_masked_positions(tmp_path):
    """HMAR's second stage (`arvision train --masked-stage`): the masked copies start as the next-scale route's own
    blocks and head, the loss is the mean cross-entropy of the masked route over the masked positions only, each
    scale after the first masks ceil(p * n) of its n positions, and nothing outside the masked route moves (so
    next-scale sampling is unchanged)."""
    import copy
    import math

    import torch.nn.functional as F

    from arvision.training.ar_trainer import ARTrainConfig, ARTrainer

    config = hidden_config(3, 32, 2, 1, False, (1, 2, 3))
    pipe = ARPipeline(config)
    torch.manual_seed(0)
    pipe.transformer.init_weights()
    tokens = torch.randint(0, 48, (4, pipe.schedule.length), generator=torch.Generator().manual_seed(0))
    labels = torch.tensor([0, 1, 2, 3])
    sample = dict(guidance_scale=2.0, top_k=10, mask_steps="none", output_type="tokens")
    before_tokens = pipe([1, 3], generator=torch.Generator().manual_seed(5), **sample).tokens
    cfg = ARTrainConfig(steps=1, batch_size=4, lr=1e-3, warmup_steps=1, log_every=1, sample_every=100,
                        ckpt_every=100, precision="fp32", label_drop=0.0, masked_stage=True)
    trainer = ARTrainer(pipe, tokens, labels, cfg, tmp_path, progress=False)
    tr = pipe.transformer
    assert trainer.route == "masked"
    routes = pipe.family.block_routes(config)
    assert routes == {"next-scale": (0, 1, 2), "masked": (0, 1, 3)}
    own, copy_ = 2, 3
    for (k, a), b in zip(tr.blocks[own].state_dict().items(), tr.blocks[copy_].state_dict().values()):
        assert torch.equal(a, b), k
    assert torch.equal(tr.head.mask_proj.weight, tr.head.proj.weight)
    trainable = {n for n, p in tr.named_parameters() if p.requires_grad}
    assert trainable and all(n.startswith(("blocks.3.", "head.mask_norm.", "head.mask_proj.", "embed.mask_embed."))
                             for n in trainable)
    before = copy.deepcopy(tr)

    # the same draws as the trainer's input generator (seed + 29)
    g = torch.Generator().manual_seed(cfg.seed + 29)
    p = torch.rand((), generator=g).item()
    x_in, w = pipe.inputs.masked_training_inputs(tokens, torch.Generator().manual_seed(cfg.seed + 29))
    assert isinstance(x_in, MaskedInput) and w.shape == tokens.shape
    assert torch.equal(x_in.masked, w[:, 1:].bool())
    for (begin, end), n in zip(pipe.schedule.begin_ends, pipe.schedule.step_sizes):
        want = 0 if begin == 0 else max(1, math.ceil(n * p))
        assert (w[:, begin:end].sum(1) == want).all()
    metrics = trainer.train_step()
    with torch.no_grad():
        logits = before(pipe.condition(labels.tolist()), x_in, pipe.schedule, route="masked")
        ce = F.cross_entropy(logits.flatten(0, 1), tokens.flatten(), reduction="none").view_as(tokens)
    assert abs(metrics["loss"] - ((ce * w).sum() / w.sum()).item()) < 1e-5
    moved = {n for (n, a), b in zip(tr.named_parameters(), before.parameters()) if not torch.equal(a, b)}
    assert moved and moved <= trainable
    tr.eval()
    after_tokens = pipe([1, 3], generator=torch.Generator().manual_seed(5), **sample).tokens
    assert torch.equal(after_tokens, before_tokens)


def test_masked_stage_is_refused_where_there_is_no_masked_route(tmp_path):
    from arvision.training.ar_trainer import ARTrainConfig, ARTrainer

    with pytest.raises(ArvisionError, match="not with student forcing"):
        ARTrainConfig(masked_stage=True, student_forcing=True)
    tok = TokenizerConfig(kind="multiscale", vocab_size=48, embed_dim=6, z_channels=6, ch=32, ch_mult=(1, 1),
                          num_res_blocks=1, patch_nums=(1, 2))
    tr = TransformerConfig(block="adaln", width=32, depth=1, num_heads=2, vocab_size=48, num_classes=2, in_channels=6)
    pipe = ARPipeline(ModelConfig(family="var", image_size=4, tokenizer=tok, transformer=tr))
    with pytest.raises(ArvisionError, match="no masked route"):
        ARTrainer(pipe, torch.zeros(2, 5, dtype=torch.long), torch.tensor([0, 1]), ARTrainConfig(masked_stage=True),
                  tmp_path, progress=False)


def test_cli_masked_stage_needs_a_model_to_continue(tmp_path, capsys):
    from arvision.cli import main

    code = main(["train", "--tokenizer", str(tmp_path / "tok"), "--data", "mnist-5k", "--out", str(tmp_path / "m"),
                 "--family", "hmar", "--masked-stage"])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error: ") and "--init MODEL" in err
    assert not (tmp_path / "m").exists()


def test_cli_trains_the_masked_stage_of_a_trained_model_and_samples_with_substeps(tmp_path, capsys):
    """`arvision train --family hmar`, then `--masked-stage --init` that model, then `sample --mask-steps`: the
    continued model keeps every weight outside the masked route, and its sub-steps run."""
    from safetensors.torch import load_file

    from arvision.cli import main
    from arvision.tokenizers.models import build_tokenizer
    from arvision.training.tokenizer_trainer import save_tokenizer_folder

    size, data = 8, random_image_folder(tmp_path / "data", 8)
    torch.manual_seed(0)
    tok_cfg = TokenizerConfig(kind="multiscale", vocab_size=32, embed_dim=6, z_channels=6, ch=32, ch_mult=(1, 1),
                              num_res_blocks=1, patch_nums=(1, 2, 4))
    tok = save_tokenizer_folder(tmp_path / "tok", build_tokenizer(tok_cfg), size)
    common = ["--tokenizer", str(tok), "--data", str(data), "--family", "hmar", "--preset", "tiny", "--batch-size",
              "4", "--lr", "1e-3", "--warmup", "0", "--ckpt-every", "3", "--sample-every", "1000", "--precision",
              "fp32", "--device", "cpu", "--steps", "3"]
    assert main(["train", *common, "--out", str(tmp_path / "ns")]) == 0
    assert main(["train", *common, "--out", str(tmp_path / "mp"), "--init", str(tmp_path / "ns"),
                 "--masked-stage"]) == 0
    ns = load_file(tmp_path / "ns" / "transformer.safetensors")
    mp = load_file(tmp_path / "mp" / "transformer.safetensors")
    depth = json.loads((tmp_path / "ns" / "config.json").read_text())["transformer"]["depth"]
    masked = (f"blocks.{depth}.", "head.mask_norm.", "head.mask_proj.", "embed.mask_embed.")
    assert ns.keys() == mp.keys()
    assert all(torch.equal(ns[k], mp[k]) for k in ns if not k.startswith(masked))
    assert any(not torch.equal(ns[k], mp[k]) for k in ns if k.startswith(masked))
    saved = tmp_path / "tokens.safetensors"
    capsys.readouterr()
    assert main(["sample", str(tmp_path / "mp"), "--classes", "0", "1", "--seed", "0", "--mask-steps", "1/1,2,1/16",
                 "--out", str(tmp_path / "grid.png"), "--save-tokens", str(saved)]) == 0
    assert load_file(saved)["step.1"].shape == (2, 4) and (tmp_path / "grid.png").is_file()
