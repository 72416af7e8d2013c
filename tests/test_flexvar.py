"""FlexVAR: parity with the official code through ``../shared/vectors/flexvar_tiny``, and its own invariants.

The vectors hold a tiny random FlexVAR in the official checkpoint format and what the official code produced
(``shared/vectors/flexvar_tiny/README.md``): per-scale independent tokens, teacher-forced logits on the training
list and on a list the constructor never saw, and sampled tokens for eight cases (other scale lists, more than ten
steps, ``max_pn`` below the last scale, LlamaGen's guidance).  Everything else here uses small random models of
other shapes, so nothing depends on the vectors' sizes.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from arvision.config import ModelConfig, TokenizerConfig, TransformerConfig
from arvision.errors import ArvisionError, CheckpointError
from arvision.families.flexvar import FlexGuidance, patch_nums_from_mask, random_scale_list
from arvision.pipeline import ARPipeline
from arvision.schedules import ScaleSchedule
from conftest import missing_reference

ATOL = 1e-4
STAT_BUFFERS = {"quantize.codebook_used", "attn_bias_for_masking"}


@pytest.fixture(scope="module")
def case(vectors_dir):
    folder = vectors_dir / "flexvar_tiny"
    if not folder.is_dir():
        missing_reference(f"reference vectors not found at {folder}: case folder missing")
    config = json.loads((folder / "config.json").read_text())
    vectors = torch.load(folder / "cases.pt")
    # the head count is in the weights only with attn_l2_norm; pass it, as a user of another configuration would
    pipe = ARPipeline.from_official("flexvar", folder / "vae.pth", folder / "var.pth",
                                    patch_nums=config["var"]["patch_nums"], num_heads=config["var"]["num_heads"])
    return folder, config, vectors, pipe


def max_abs(a: torch.Tensor, b: torch.Tensor) -> float:
    assert a.shape == b.shape, (a.shape, b.shape)
    return (a.float() - b.float()).abs().max().item()


def per_scale(vectors: dict, prefix: str) -> list[torch.Tensor]:
    out, s = [], 0
    while f"{prefix}.{s}" in vectors:
        out.append(vectors[f"{prefix}.{s}"])
        s += 1
    return out


# -- loading ------------------------------------------------------------------------------------------------
def test_loads_strictly_and_infers_the_architecture(case):
    folder, config, _, pipe = case
    cfg, var, vae = pipe.config, config["var"], config["vae"]
    assert cfg.family == "flexvar" and cfg.tokenizer.kind == "multiscale-independent"
    assert cfg.tokenizer.patch_nums == tuple(var["patch_nums"]) and cfg.image_size == config["image_size"]
    assert (cfg.transformer.depth, cfg.transformer.width, cfg.transformer.num_heads) == (
        var["depth"], var["embed_dim"], var["num_heads"])
    assert cfg.transformer.shared_adaln == var["shared_aln"] and cfg.transformer.attn_l2_norm == var["attn_l2_norm"]
    assert cfg.num_classes == var["num_classes"] and cfg.transformer.pos_grid == 32
    assert cfg.tokenizer.vocab_size == vae["codebook_size"] and cfg.tokenizer.embed_dim == vae["codebook_embed_dim"]
    assert cfg.tokenizer.ch == vae["ch"] and cfg.tokenizer.z_channels == vae["z_channels"]
    # every loaded value is the file's value (exported back under the official names)
    tok_out, tr_out = pipe.official_state_dicts()
    for path, exported in ((folder / "vae.pth", tok_out), (folder / "var.pth", tr_out)):
        official = torch.load(path, map_location="cpu")
        official = official.get("model", official)
        assert set(exported) == set(official), sorted(set(exported) ^ set(official))
        for key, value in official.items():
            if key not in STAT_BUFFERS:
                assert torch.equal(exported[key], value), f"{path.name}: {key} differs after loading"


def test_training_checkpoint_layout_loads_the_same(case, tmp_path):
    folder, config, _, pipe = case
    bare = torch.load(folder / "var.pth", map_location="cpu")
    torch.save({"epoch": 3, "trainer": {"var_wo_ddp": bare, "config": {"patch_nums": [1, 2]}}}, tmp_path / "ckpt.pth")
    again = ARPipeline.from_official("flexvar", folder / "vae.pth", tmp_path / "ckpt.pth",
                                     patch_nums=config["var"]["patch_nums"])
    assert again.config.to_dict() == pipe.config.to_dict()
    a, b = again.transformer.state_dict(), pipe.transformer.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_other_families_checkpoints_are_named(case, vectors_dir, tmp_path):
    folder, config, _, _ = case
    var_case = vectors_dir / "var_tiny"
    with pytest.raises(CheckpointError, match="FlexVAR transformer checkpoint.*convert flexvar"):
        ARPipeline.from_official("var", var_case / "vae.pth", folder / "var.pth")
    with pytest.raises(CheckpointError, match="VAR transformer checkpoint.*convert var"):
        ARPipeline.from_official("flexvar", folder / "vae.pth", var_case / "var.pth")
    with pytest.raises(CheckpointError, match="disagrees with the checkpoint's training list"):
        ARPipeline.from_official("flexvar", folder / "vae.pth", folder / "var.pth", patch_nums=[1, 2, 3])


def test_the_training_list_is_read_from_the_mask_buffer(case, tmp_path):
    folder, config, _, pipe = case
    assert ARPipeline.from_official("flexvar", folder / "vae.pth", folder / "var.pth").config.to_dict() == \
        pipe.config.to_dict()
    sd = torch.load(folder / "var.pth", map_location="cpu")
    del sd["attn_bias_for_masking"]  # the official loaders drop it, so a checkpoint may come without it
    torch.save(sd, tmp_path / "var.pth")
    again = ARPipeline.from_official("flexvar", folder / "vae.pth", tmp_path / "var.pth",
                                     patch_nums=config["var"]["patch_nums"])
    assert again.config.to_dict() == pipe.config.to_dict()
    for sides in ((1, 2, 3, 5, 7), (1, 2, 4, 8, 16), (2, 3)):
        mask = ScaleSchedule.from_sides(sides).attn_bias()[None, None]
        assert patch_nums_from_mask(mask) == sides


# -- tokenizer ------------------------------------------------------------------------------------------------
def test_tokenizer_matches_official(case):
    _, config, v, pipe = case
    tok, sides = pipe.tokenizer, config["var"]["patch_nums"]
    with torch.no_grad():
        assert max_abs(tok.features(v["tok.img"]), v["tok.h"]) <= ATOL
        ids = tok.encode(v["tok.img"], sides)
        for s, want in enumerate(per_scale(v, "tok.idx")):
            assert torch.equal(ids[s], want), f"scale {s}: token ids differ"
        flat = torch.cat(per_scale(v, "tok.idx"), dim=1)
        assert torch.equal(pipe.encode(v["tok.img"]), flat)
        # teacher inputs: the previous scale's codes, bicubic-up (the official takes the straight-through value)
        assert max_abs(pipe.inputs.teacher(flat), v["tok.var_input"]) <= ATOL
        assert max_abs(tok.decode(ids[-1]), v["tok.recon"]) <= ATOL
        assert max_abs(pipe.decode(flat), v["tok.recon"].clamp(-1, 1)) <= ATOL


# -- teacher forcing ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("alt", [False, True])
def test_teacher_forced_logits_match_official(case, alt):
    _, config, v, pipe = case
    prefix = "tf.alt." if alt else "tf."
    sides = v["tf.alt.patch_nums"].tolist() if alt else config["var"]["patch_nums"]
    if alt:
        assert sides != list(pipe.config.tokenizer.patch_nums)  # a list the constructor never saw
    schedule = pipe.sampling_schedule(sides)
    cond = pipe.condition(v["tf.labels"])
    ids = torch.cat(per_scale(v, "tf.alt.idx" if alt else "tok.idx"), dim=1)
    inputs = pipe.family.input_builder(pipe.tokenizer, schedule)
    with torch.no_grad():
        assert torch.equal(inputs.targets(v["tok.img"]), ids)
        logits = pipe.transformer(cond, v[f"{prefix}var_input"], schedule)
        ours = pipe.transformer(cond, inputs.teacher(ids), schedule)
    assert logits.shape == v[f"{prefix}logits"].shape
    assert max_abs(logits, v[f"{prefix}logits"]) <= ATOL
    assert max_abs(ours, v[f"{prefix}logits"]) <= ATOL


# -- sampling ---------------------------------------------------------------------------------------------------
def sample(pipe, v, settings):
    return pipe(v[f"sample.{settings['case']}.labels"].tolist(), guidance_scale=settings["cfg"],
                top_k=settings["top_k"], top_p=settings["top_p"],
                generator=torch.Generator().manual_seed(settings["g_seed"]), patch_nums=settings["patch_nums"],
                max_pn=settings["max_pn"], cfg_mode=settings["cfg_mode"], output_type="tokens")


@pytest.mark.parametrize("i", range(8))
def test_sampling_matches_official(case, i):
    _, config, v, pipe = case
    (settings,) = [sc for sc in config["sampling"] if sc["case"] == i]
    out = sample(pipe, v, settings)
    want = per_scale(v, f"sample.{i}.idx")
    assert len(want) == len(settings["patch_nums"]) == len(out.step_tokens)
    for s, w in enumerate(want):
        assert torch.equal(out.step_tokens[s], w), f"case {i} scale {s}: sampled tokens differ"


def test_sampled_image_is_the_decode_of_the_last_scale(case):
    _, config, v, pipe = case
    settings = config["sampling"][0]
    out = pipe(v["sample.0.labels"].tolist(), guidance_scale=settings["cfg"], top_k=settings["top_k"],
               top_p=settings["top_p"], generator=torch.Generator().manual_seed(settings["g_seed"]), output_type="pt")
    with torch.no_grad():
        raw = pipe.tokenizer.decode(out.step_tokens[-1][:1])  # the official sampler returns it unclamped
    assert max_abs(raw, v["sample.0.img"]) <= ATOL
    assert max_abs(out.images[:1], v["sample.0.img"].clamp(-1, 1).add(1).mul(0.5)) <= ATOL


def test_cases_cover_the_official_rules(case):
    """The vectors exercise what other lists change (README): an off-set side, > 10 steps, max_pn, llamagen cfg."""
    _, config, _, pipe = case
    by_case = {sc["case"]: sc for sc in config["sampling"]}
    assert 7 in by_case[4]["patch_nums"] and len(by_case[5]["patch_nums"]) > 10
    assert by_case[6]["max_pn"] < by_case[6]["patch_nums"][-1] and by_case[7]["cfg_mode"] == "llamagen"
    opts = pipe.sampling_options(schedule=pipe.sampling_schedule(by_case[4]["patch_nums"]), max_pn=16)
    assert opts.tokens.greedy_steps == {4}  # side 7 is outside the official sampler's set
    opts = pipe.sampling_options(2.0, schedule=pipe.sampling_schedule(by_case[6]["patch_nums"]), max_pn=4)
    assert opts.tokens.greedy_steps == {3, 4} and opts.guidance.weights[3:] == (2.0, 2.0)


# -- invariants on other shapes -------------------------------------------------------------------------------------
def tiny_flexvar(patch_nums=(1, 2, 3, 4), width=96, heads=3, pos_grid=6, l2=True, shared=False, seed=0) -> ARPipeline:
    torch.manual_seed(seed)
    tok = TokenizerConfig(kind="multiscale-independent", vocab_size=29, embed_dim=8, z_channels=16, ch=32,
                          ch_mult=(1, 1), num_res_blocks=1, attn_style="split", quant_conv_ks=1, l2_norm=True,
                          patch_nums=patch_nums)
    tr = TransformerConfig(block="adaln", width=width, depth=2, num_heads=heads, vocab_size=29, num_classes=4,
                           in_channels=8, pos_grid=pos_grid, attn_l2_norm=l2, shared_adaln=shared)
    pipe = ARPipeline(ModelConfig(family="flexvar", image_size=patch_nums[-1] * 2, tokenizer=tok, transformer=tr))
    pipe.transformer.init_weights()
    with torch.no_grad():
        for p in pipe.transformer.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return pipe


@pytest.mark.parametrize("sides", [(1, 2, 3, 4), (1, 3, 5), (1, 2, 4, 5, 6)])
def test_cached_sampling_equals_teacher_forcing_on_any_list(sides):
    """Greedy samples on a scale list are the teacher-forced argmax of those tokens (no guidance)."""
    pipe = tiny_flexvar(l2=False, shared=True)
    out = pipe([0, 3], guidance_scale=0.0, top_k=1, top_p=0.0, patch_nums=sides, output_type="tokens",
               generator=torch.Generator().manual_seed(0))
    schedule = pipe.sampling_schedule(sides)
    assert out.tokens.shape == (2, schedule.length) and [t.shape[1] for t in out.step_tokens] == list(
        schedule.step_sizes)
    inputs = pipe.family.input_builder(pipe.tokenizer, schedule)
    with torch.no_grad():
        logits = pipe.transformer(pipe.condition([0, 3]), inputs.teacher(out.tokens), schedule)
    assert torch.equal(logits.argmax(-1), out.tokens)


def test_positions_are_the_grid_resized_per_scale():
    pipe = tiny_flexvar()
    grid = pipe.transformer.embed.pos_grid
    layout = pipe.layout(ScaleSchedule.from_sides((1, 3, 6)))
    assert layout.pos.shape == (1, 1 + 9 + 36, 96)
    torch.testing.assert_close(layout.pos[0, 0], grid.mean((2, 3))[0])  # a 1x1 map: the mean of the grid
    torch.testing.assert_close(layout.pos[0, 10:].T.reshape(96, 6, 6), grid[0])  # full size: the grid itself
    assert torch.allclose(layout.pos[0, 1:10].T.reshape(96, 3, 3), torch.nn.functional.avg_pool2d(grid, 2)[0])


def test_scale_lists_the_model_cannot_serve_get_one_clear_line():
    pipe = tiny_flexvar()
    for bad, what in (((1, 3, 2), "strictly increase"), ((2, 3, 4), "start at 1"), ((1,), "at least two"),
                      ((1, 2, 8), "position grid")):
        with pytest.raises(ArvisionError, match=what):
            pipe([0], patch_nums=bad, output_type="tokens")
    with pytest.raises(ArvisionError, match="max_pn"):
        pipe([0], max_pn=0, output_type="tokens")
    with pytest.raises(ArvisionError, match="cfg_mode"):
        pipe([0], cfg_mode="other", output_type="tokens")
    with pytest.raises(ArvisionError, match="soft code"):
        pipe([0], more_smooth=True, output_type="tokens")


def test_var_models_refuse_other_scale_lists_and_flexvar_options():
    from test_consistency import make_pipe

    var = make_pipe("var_pn124_w96h3_q0")
    with pytest.raises(ArvisionError, match="trained scale list"):
        var([0], patch_nums=(1, 2, 3), output_type="tokens")
    with pytest.raises(ArvisionError, match="max_pn"):
        var([0], max_pn=4, output_type="tokens")


def test_guidance_rules_by_hand():
    cond, uncond = torch.tensor([[[2.0, -1.0]]]), torch.tensor([[[1.0, 1.0]]])
    g = FlexGuidance.build(3.0, (1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12), max_pn=10, mode="var")
    # t = cfg * s / min(S - 1, 9): the ramp reaches cfg at step 9 and keeps growing; cfg above max_pn
    assert g.weights[:3] == (0.0, 3.0 * (1 / 9), 3.0 * (2 / 9)) and g.weights[9] == 3.0
    assert g.weights[10:] == (3.0, 3.0)
    assert torch.equal(g.combine(cond, uncond, 0, 12), cond) and g.doubles_batch
    llama = FlexGuidance.build(1.5, (1, 2), max_pn=16, mode="llamagen")
    assert torch.equal(llama.combine(cond, uncond, 1, 2), torch.tensor([[[2.5, -2.0]]])) and llama.doubles_batch


def test_random_training_lists_follow_the_official_recipe():
    g = torch.Generator().manual_seed(0)
    base = (1, 2, 3, 4, 5, 6, 8, 10, 13, 16)
    lists = [random_scale_list(base, g) for _ in range(400)]
    budget = sum(p * p for p in base)
    for sides in lists:
        assert sides[:2] == (1, 2) and all(b > a for a, b in zip(sides, sides[1:]))
        assert sum(p * p for p in sides) <= budget
    assert sum(sides == base for sides in lists) > 5  # the default list, with probability ~0.05
    assert len(set(lists)) > 100
    g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    assert [random_scale_list((1, 2, 3, 4, 6, 8), g1) for _ in range(20)] == [
        random_scale_list((1, 2, 3, 4, 6, 8), g2) for _ in range(20)]  # reproducible from the generator


def test_save_and_reload_keeps_sampling(tmp_path):
    pipe = tiny_flexvar(patch_nums=(1, 2, 4), pos_grid=8)
    out = pipe([1, 2], generator=torch.Generator().manual_seed(4), patch_nums=(1, 3, 5, 7), output_type="tokens")
    again = ARPipeline.from_pretrained(pipe.save_pretrained(tmp_path / "m"))
    out2 = again([1, 2], generator=torch.Generator().manual_seed(4), patch_nums=(1, 3, 5, 7), output_type="tokens")
    assert torch.equal(out.tokens, out2.tokens)
    assert (Path(tmp_path / "m") / "config.json").is_file()


@pytest.mark.parametrize("shape", [dict(l2=False, shared=True, width=64, heads=4),
                                   dict(l2=True, shared=False, patch_nums=(1, 2, 4, 5), pos_grid=10)])
def test_official_format_round_trip_on_other_shapes(shape, tmp_path):
    """Export to the official layout (the tokenizer wrapped as FlexVAE.pth is), convert back: same config and
    samples, whatever the widths, heads, AdaLN sharing, attention norm, grid and training list."""
    pipe = tiny_flexvar(**shape)
    tok, tr = pipe.official_state_dicts()
    torch.save({"model": tok}, tmp_path / "vae.pth")
    torch.save(tr, tmp_path / "var.pth")
    again = ARPipeline.from_official("flexvar", tmp_path / "vae.pth", tmp_path / "var.pth",
                                     num_heads=pipe.config.transformer.num_heads)
    assert again.config.to_dict() == pipe.config.to_dict()
    kw = dict(patch_nums=(1, 2, 3, 5), output_type="tokens")
    assert torch.equal(again([1, 2], generator=torch.Generator().manual_seed(0), **kw).tokens,
                       pipe([1, 2], generator=torch.Generator().manual_seed(0), **kw).tokens)
