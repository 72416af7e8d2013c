"""Self-consistency on shapes the reference vectors never use.

Small random models with other scale lists (including a first scale > 1), head counts, widths, grids,
vocabularies and phi sharing prove that nothing depends on the vectors' sizes: the KV-cached sampler path
equals teacher forcing, greedy samples are the teacher-forced argmax, seeds reproduce, the official-format
export round-trips, and the logits processors do what the released samplers do (checked by hand).
"""

from __future__ import annotations

import functools
import math

import pytest
import torch

from arvision.config import ModelConfig, TokenizerConfig, TransformerConfig
from arvision.errors import ArvisionError
from arvision.pipeline import ARPipeline
from arvision.sampling.processors import Guidance, TokenSampling, top_k_filter_, top_p_filter_

VOCAB_VAR, CLASSES_VAR = 37, 5
VOCAB_LG, CLASSES_LG = 50, 3
NOISE = 0.05  # perturbation added to every transformer parameter after init_weights()

# name -> spec.  The tokenizer downsamples by 2 (ch_mult (1, 1)); ch * mult must be a multiple of 32.
VAR_SPECS = {
    "var_pn124_w96h3_q0": dict(patch_nums=(1, 2, 4), width=96, heads=3, shared=False, share_q=0),
    "var_pn2358_w128h4_shared_q4": dict(patch_nums=(2, 3, 5, 8), width=128, heads=4, shared=True, share_q=4),
    "var_pn2358_w96h3_q1": dict(patch_nums=(2, 3, 5, 8), width=96, heads=3, shared=False, share_q=1),
    "var_pn124_w128h4_shared_q1": dict(patch_nums=(1, 2, 4), width=128, heads=4, shared=True, share_q=1),
}
LLAMAGEN_SPECS = {
    "llamagen_g3_w64h2": dict(grid=3, width=64, heads=2),
    "llamagen_g5_w96h4": dict(grid=5, width=96, heads=4),
}
ALL = list(VAR_SPECS) + list(LLAMAGEN_SPECS)
DOWNSAMPLE = 2


def _perturb(pipe: ARPipeline, seed: int) -> ARPipeline:
    torch.manual_seed(seed)
    pipe.transformer.init_weights()
    with torch.no_grad():
        for p in pipe.transformer.parameters():
            p.add_(torch.randn_like(p) * NOISE)
    return pipe


@functools.cache
def make_pipe(name: str) -> ARPipeline:
    """A small random pipeline (built once per name; tests must not modify it)."""
    torch.manual_seed(0)
    if name in VAR_SPECS:
        sp = VAR_SPECS[name]
        tok = TokenizerConfig(kind="multiscale", vocab_size=VOCAB_VAR, embed_dim=8, z_channels=8, ch=32,
                              ch_mult=(1, 1), num_res_blocks=1, patch_nums=sp["patch_nums"],
                              share_quant_resi=sp["share_q"])
        tr = TransformerConfig(block="adaln", width=sp["width"], depth=3, num_heads=sp["heads"],
                               vocab_size=VOCAB_VAR, num_classes=CLASSES_VAR, in_channels=8,
                               shared_adaln=sp["shared"])
        cfg = ModelConfig(family="var", image_size=sp["patch_nums"][-1] * DOWNSAMPLE, tokenizer=tok, transformer=tr)
    else:
        sp = LLAMAGEN_SPECS[name]
        tok = TokenizerConfig(kind="vq", vocab_size=VOCAB_LG, embed_dim=8, z_channels=16, ch=32, ch_mult=(1, 1),
                              num_res_blocks=1, attn_style="split", quant_conv_ks=1, l2_norm=True)
        tr = TransformerConfig(block="llama", width=sp["width"], depth=2, num_heads=sp["heads"],
                               vocab_size=VOCAB_LG, num_classes=CLASSES_LG, in_channels=8)
        cfg = ModelConfig(family="llamagen", image_size=sp["grid"] * DOWNSAMPLE, tokenizer=tok, transformer=tr)
    return _perturb(ARPipeline(cfg), seed=1)


def is_var(pipe: ARPipeline) -> bool:
    return pipe.config.family == "var"


def labels_for(pipe: ARPipeline) -> list[int]:
    return [c % pipe.config.num_classes for c in (0, 2, 4)]


def random_tokens(pipe: ARPipeline, batch: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(pipe.config.transformer.vocab_size, (batch, pipe.schedule.length), generator=g)


def sample_tokens(pipe: ARPipeline, seed: int | None, **kw) -> torch.Tensor:
    generator = None if seed is None else torch.Generator().manual_seed(seed)
    return pipe(labels_for(pipe), generator=generator, output_type="tokens", **kw).tokens


def test_specs_use_sizes_the_vectors_do_not():
    pns = {VAR_SPECS[n]["patch_nums"] for n in VAR_SPECS}
    assert (2, 3, 5, 8) in pns and (1, 2, 4) in pns  # the vectors use (1,2,3,4) and (1,2,3,4,6)
    assert {VAR_SPECS[n]["share_q"] for n in VAR_SPECS} == {0, 1, 4}
    assert {VAR_SPECS[n]["shared"] for n in VAR_SPECS} == {True, False}
    for name in ALL:
        pipe = make_pipe(name)
        assert pipe.config.transformer.vocab_size == (VOCAB_VAR if is_var(pipe) else VOCAB_LG)  # vectors: 64
        if is_var(pipe):
            assert pipe.schedule.first_len == VAR_SPECS[name]["patch_nums"][0] ** 2
        else:
            assert pipe.schedule.length == LLAMAGEN_SPECS[name]["grid"] ** 2


# -- KV cache vs teacher forcing ------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ALL)
def test_cached_steps_equal_full_sequence_forward(name):
    pipe = make_pipe(name)
    tr, sched = pipe.transformer, pipe.schedule
    B = 2
    labels = torch.tensor([1, pipe.config.num_classes])  # a class and the null class
    tokens = random_tokens(pipe, B, seed=3)
    with torch.no_grad():
        teacher = pipe.inputs.teacher(tokens)
        full = tr(pipe.condition(labels, allow_null=True), teacher, sched)
        cond = tr.condition(pipe.condition(labels, allow_null=True))
        cache = tr.new_cache(B, sched)
        layout = tr.layout(sched)
        steps = []
        first = sched.first_len
        for s, (begin, end) in enumerate(sched.begin_ends):
            if s == 0:
                x = None
            elif is_var(pipe):
                x = teacher[:, begin - first:end - first]
            else:
                x = tokens[:, s - 1:s]
            out = tr.forward_step(s, cond, x, cache, layout)
            assert out.shape == (B, end - begin, tr.cfg.vocab_size)
            steps.append(out)
        stepped = torch.cat(steps, dim=1)
    assert full.shape == (B, sched.length, tr.cfg.vocab_size)
    assert full.std() > 1e-2, "logits are (nearly) constant: the perturbation did not take"
    torch.testing.assert_close(stepped, full, atol=1e-5, rtol=0)


@pytest.mark.parametrize("name", ALL)
def test_teacher_forcing_is_causal_over_steps(name):
    """Changing the tokens of the last step must not change any logit: they are never an input."""
    pipe = make_pipe(name)
    labels = torch.tensor([0, 1])
    tokens = random_tokens(pipe, 2, seed=4)
    changed = tokens.clone()
    begin, end = pipe.schedule.begin_ends[-1]
    changed[:, begin:end] = (changed[:, begin:end] + 1) % pipe.config.transformer.vocab_size
    begin2, _ = pipe.schedule.begin_ends[-2]
    changed2 = tokens.clone()
    changed2[:, begin2:begin] = (changed2[:, begin2:begin] + 1) % pipe.config.transformer.vocab_size
    with torch.no_grad():
        cond, sched = pipe.condition(labels), pipe.schedule
        ref = pipe.transformer(cond, pipe.inputs.teacher(tokens), sched)
        same = pipe.transformer(cond, pipe.inputs.teacher(changed), sched)
        other = pipe.transformer(cond, pipe.inputs.teacher(changed2), sched)
    assert torch.equal(ref, same)
    # the second-to-last step's tokens feed the last step, and only it
    assert torch.equal(ref[:, :begin], other[:, :begin])
    assert not torch.allclose(ref[:, begin:], other[:, begin:])


# -- greedy sampling is the teacher-forced argmax --------------------------------------------------------
@pytest.mark.parametrize("name", ALL)
def test_greedy_samples_are_the_teacher_forced_argmax(name):
    pipe = make_pipe(name)
    scale = 0.0 if is_var(pipe) else 1.0  # no guidance (VAR still runs the doubled batch)
    out = pipe(labels_for(pipe), guidance_scale=scale, top_k=1, top_p=0.0, output_type="tokens",
               generator=torch.Generator().manual_seed(0))
    tokens = out.tokens
    assert tokens.shape == (3, pipe.schedule.length) and tokens.dtype == torch.int64
    assert tokens.unique().numel() > 1
    with torch.no_grad():
        logits = pipe.transformer(pipe.condition(out.class_labels), pipe.inputs.teacher(tokens), pipe.schedule)
    assert torch.equal(logits.argmax(dim=-1), tokens)
    # per-step split is consistent with the flat tokens
    assert torch.equal(torch.cat(out.step_tokens, dim=1), tokens)
    assert [t.shape[1] for t in out.step_tokens] == (
        list(pipe.schedule.step_sizes) if is_var(pipe) else [pipe.schedule.length])


@pytest.mark.parametrize("name", list(VAR_SPECS))
def test_var_sampler_canvas_equals_teacher_inputs(name):
    """The sampler's advance() and teacher() build the same step inputs and the same final canvas."""
    pipe = make_pipe(name)
    tokens = random_tokens(pipe, 2, seed=5)
    per_step = pipe.inputs.split(tokens)
    state = pipe.inputs.start(2)
    inputs = []
    with torch.no_grad():
        for s, ids in enumerate(per_step):
            state, x = pipe.inputs.advance(state, s, ids)
            if s == len(per_step) - 1:
                assert x is None
            else:
                assert x.shape == (2, pipe.schedule.step_sizes[s + 1], pipe.config.tokenizer.embed_dim)
                inputs.append(x)
        teacher = pipe.inputs.teacher(tokens)
        canvas = pipe.tokenizer.canvas_from_ids(per_step)
    assert teacher.shape == (2, pipe.schedule.length - pipe.schedule.first_len, pipe.config.tokenizer.embed_dim)
    torch.testing.assert_close(torch.cat(inputs, dim=1), teacher, atol=1e-6, rtol=0)
    torch.testing.assert_close(state, canvas, atol=1e-6, rtol=0)


# -- seeds ----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ALL)
def test_same_seed_same_tokens_other_seed_other_tokens(name):
    pipe = make_pipe(name)
    a = sample_tokens(pipe, 11, top_k=0, top_p=0.0)
    b = sample_tokens(pipe, 11, top_k=0, top_p=0.0)
    c = sample_tokens(pipe, 12, top_k=0, top_p=0.0)
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    # the global RNG is not touched when a generator is given
    torch.manual_seed(5)
    expected = torch.rand(3)
    torch.manual_seed(5)
    sample_tokens(pipe, 11, top_k=0, top_p=0.0)
    assert torch.equal(torch.rand(3), expected)


@pytest.mark.parametrize("name", ALL)
def test_per_image_generators_make_images_independent_of_their_batch(name):
    """With one generator per image, image i is the same alone, in a batch, or at another position."""
    pipe = make_pipe(name)
    labels, seeds = labels_for(pipe), [101, 102, 103]
    smooth = {"more_smooth": True} if is_var(pipe) else {}

    def run(lab, sd, **kw):
        gens = [torch.Generator().manual_seed(s) for s in sd]
        return pipe(lab, generator=gens, output_type="tokens", top_k=0, top_p=0.0, **smooth, **kw).tokens

    together = run(labels, seeds)
    alone = torch.cat([run([lab], [sd]) for lab, sd in zip(labels, seeds)])
    reversed_ = run(labels[::-1], seeds[::-1]).flip(0)
    split = run(labels, seeds, batch_size=2)
    assert torch.equal(together, alone) and torch.equal(together, reversed_) and torch.equal(together, split)
    assert not torch.equal(together, run(labels, [7, 8, 9]))  # the seeds matter
    with pytest.raises(ArvisionError, match="one per image"):
        run(labels, seeds[:2])


# -- official-format round trip ----------------------------------------------------------------------------
def _official_roundtrip(pipe: ARPipeline, folder) -> ARPipeline:
    tok, tr = pipe.official_state_dicts()
    names = ("vae.pth", "var.pth") if is_var(pipe) else ("vq.pth", "gpt.pth")
    torch.save(tok, folder / names[0])
    torch.save(tr, folder / names[1])
    options = {} if is_var(pipe) else dict(image_size=pipe.config.image_size,
                                           num_heads=pipe.config.transformer.num_heads)
    return ARPipeline.from_official(pipe.config.family, folder / names[0], folder / names[1], **options)


@pytest.mark.parametrize("name", ALL)
def test_official_format_round_trip(name, tmp_path):
    pipe = make_pipe(name)
    again = _official_roundtrip(pipe, tmp_path)
    assert again.schedule == pipe.schedule
    for a, b in ((again.tokenizer, pipe.tokenizer), (again.transformer, pipe.transformer)):
        sa, sb = a.state_dict(), b.state_dict()
        assert sa.keys() == sb.keys()
        for k in sa:
            assert torch.equal(sa[k], sb[k]), k
    kw = dict(top_k=0, top_p=0.0, guidance_scale=2.0)
    assert torch.equal(sample_tokens(again, 21, **kw), sample_tokens(pipe, 21, **kw))


@pytest.mark.parametrize("name", ALL)
def test_official_format_round_trip_keeps_the_config(name, tmp_path):
    pipe = make_pipe(name)
    again = _official_roundtrip(pipe, tmp_path)
    if is_var(pipe):
        assert again.config.tokenizer.share_quant_resi == pipe.config.tokenizer.share_quant_resi
    assert again.config.to_dict() == pipe.config.to_dict()


@pytest.mark.parametrize("name", list(VAR_SPECS))
def test_var_export_uses_the_official_phi_layout(name):
    """The official VectorQuantizer2 stores phi as quant_resi.{i} (share 0, PhiNonShared, a ModuleList),
    quant_resi.qresi (share 1, PhiShared) or quant_resi.qresi_ls.{i} (K > 1, PhiPartiallyShared)."""
    pipe = make_pipe(name)
    share, S = pipe.config.tokenizer.share_quant_resi, len(pipe.config.tokenizer.patch_nums)
    if share == 0:
        want = {f"quantize.quant_resi.{i}.{p}" for i in range(S) for p in ("weight", "bias")}
    elif share == 1:
        want = {f"quantize.quant_resi.qresi.{p}" for p in ("weight", "bias")}
    else:
        want = {f"quantize.quant_resi.qresi_ls.{i}.{p}" for i in range(share) for p in ("weight", "bias")}
    tok, _ = pipe.official_state_dicts()
    assert {k for k in tok if k.startswith("quantize.quant_resi.")} == want


@pytest.mark.parametrize("name", [n for n in VAR_SPECS if VAR_SPECS[n]["share_q"] in (0, 1)])
def test_var_loads_official_phi_layouts(name, tmp_path):
    """Files in the official share-0 / share-1 layouts load, into the same phi convs."""
    pipe = make_pipe(name)
    share, S = pipe.config.tokenizer.share_quant_resi, len(pipe.config.tokenizer.patch_nums)
    tok, tr = pipe.official_state_dicts()
    renamed = {}
    for k, v in tok.items():
        if k.startswith("quantize.quant_resi.qresi_ls."):
            i, rest = k[len("quantize.quant_resi.qresi_ls."):].split(".", 1)
            k = f"quantize.quant_resi.{i}.{rest}" if share == 0 else f"quantize.quant_resi.qresi.{rest}"
        renamed[k] = v
    torch.save(renamed, tmp_path / "vae.pth")
    torch.save(tr, tmp_path / "var.pth")
    again = ARPipeline.from_official("var", tmp_path / "vae.pth", tmp_path / "var.pth")
    assert again.config.tokenizer.share_quant_resi == share
    sa, sb = again.tokenizer.state_dict(), pipe.tokenizer.state_dict()
    assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)
    assert len(again.tokenizer.quantize.quant_resi.qresi_ls) == (S if share == 0 else 1)


# -- tokenizers -------------------------------------------------------------------------------------------------
def _images(pipe: ARPipeline, batch: int = 2) -> torch.Tensor:
    g = torch.Generator().manual_seed(7)
    H = pipe.config.image_size
    return torch.rand(batch, 3, H, H, generator=g) * 2 - 1


@pytest.mark.parametrize("name", list(VAR_SPECS))
def test_var_tokenizer_shapes_and_canvas(name):
    pipe = make_pipe(name)
    tok, pn = pipe.tokenizer, pipe.config.tokenizer.patch_nums
    img = _images(pipe)
    ids = tok.encode(img)
    assert len(ids) == len(pn)
    for t, p in zip(ids, pn):
        assert t.shape == (2, p * p) and t.dtype == torch.int64
        assert 0 <= int(t.min()) and int(t.max()) < VOCAB_VAR
    with torch.no_grad():
        ids2, f_hat = tok.quantize_features(tok.features(img))
        assert f_hat.shape == (2, pipe.config.tokenizer.embed_dim, pn[-1], pn[-1])
        assert all(torch.equal(a, b) for a, b in zip(ids, ids2))
        torch.testing.assert_close(tok.canvas_from_ids(ids), f_hat, atol=1e-6, rtol=0)
        flat = pipe.encode(img)
        assert flat.shape == (2, pipe.schedule.length) and torch.equal(flat, torch.cat(ids, dim=1))
        image = pipe.decode(flat)
    H = pipe.config.image_size
    assert image.shape == (2, 3, H, H) and image.abs().max() <= 1
    # decoding goes through the same canvas
    with torch.no_grad():
        torch.testing.assert_close(image, tok.decode_features(f_hat).clamp(-1, 1), atol=1e-5, rtol=0)


@pytest.mark.parametrize("name", list(LLAMAGEN_SPECS))
def test_llamagen_tokenizer_shapes(name):
    pipe = make_pipe(name)
    grid, H = LLAMAGEN_SPECS[name]["grid"], pipe.config.image_size
    img = _images(pipe)
    ids = pipe.tokenizer.encode(img)
    assert ids.shape == (2, grid * grid) and ids.dtype == torch.int64
    assert torch.equal(pipe.encode(img), ids)
    with torch.no_grad():
        image = pipe.decode(ids)
        feats = pipe.tokenizer.ids_to_features(ids, (grid, grid))
    assert feats.shape == (2, pipe.config.tokenizer.embed_dim, grid, grid)
    # l2-normalised codebook: every looked-up code has unit norm
    torch.testing.assert_close(feats.norm(dim=1), torch.ones(2, grid, grid), atol=1e-5, rtol=0)
    assert image.shape == (2, 3, H, H) and image.abs().max() <= 1


# -- guidance --------------------------------------------------------------------------------------------------
def _batch_sizes(pipe: ARPipeline, monkeypatch, **kw) -> tuple[list[int], torch.Tensor]:
    seen = []
    original = pipe.transformer.forward_step

    def spy(s, cond, x_in, cache, layout):
        seen.append(cond[0].shape[0])
        return original(s, cond, x_in, cache, layout)

    monkeypatch.setattr(pipe.transformer, "forward_step", spy)
    try:
        tokens = sample_tokens(pipe, 31, top_k=0, top_p=0.0, **kw)
    finally:
        monkeypatch.undo()
    return seen, tokens


@pytest.mark.parametrize("name", ["var_pn2358_w128h4_shared_q4", "var_pn124_w96h3_q0"])
def test_var_guidance_uses_the_doubled_batch(name, monkeypatch):
    pipe = make_pipe(name)
    B, S = 3, pipe.schedule.num_steps
    sizes0, t0 = _batch_sizes(pipe, monkeypatch, guidance_scale=0.0)
    sizes4, t4 = _batch_sizes(pipe, monkeypatch, guidance_scale=4.0)
    # the released VAR sampler always runs [cond; uncond], even at cfg 0
    assert sizes0 == sizes4 == [2 * B] * S
    assert not torch.equal(t0, t4)
    # the ramp's weight is 0 at the first step: same logits, same generator state, same tokens
    n0 = pipe.schedule.step_sizes[0]
    assert torch.equal(t0[:, :n0], t4[:, :n0])


@pytest.mark.parametrize("name", list(LLAMAGEN_SPECS))
def test_llamagen_guidance_doubles_only_above_one(name, monkeypatch):
    pipe = make_pipe(name)
    B, S = 3, pipe.schedule.num_steps
    assert not Guidance("constant", 1.0).doubles_batch
    assert Guidance("constant", 1.5).doubles_batch
    sizes1, t1 = _batch_sizes(pipe, monkeypatch, guidance_scale=1.0)
    sizes_half, t_half = _batch_sizes(pipe, monkeypatch, guidance_scale=0.5)
    sizes3, t3 = _batch_sizes(pipe, monkeypatch, guidance_scale=3.0)
    assert sizes1 == sizes_half == [B] * S
    assert sizes3 == [2 * B] * S
    # at or below 1 the conditional logits are used as they are (the released sampler ignores the scale)
    assert torch.equal(t1, t_half)
    assert not torch.equal(t1, t3)


def test_guidance_combine_by_hand():
    cond, uncond = torch.tensor([[[2.0, -1.0]]]), torch.tensor([[[1.0, 1.0]]])
    ramp = Guidance("ramp", 2.0)
    assert ramp.doubles_batch and Guidance("ramp", 0.0).doubles_batch
    # S = 3: t = 2 * s / 2 = s; logits = (1 + t) cond - t uncond
    assert torch.equal(ramp.combine(cond, uncond, 0, 3), cond)
    assert torch.equal(ramp.combine(cond, uncond, 1, 3), torch.tensor([[[3.0, -3.0]]]))  # 2c - u
    assert torch.equal(ramp.combine(cond, uncond, 2, 3), torch.tensor([[[4.0, -5.0]]]))  # 3c - 2u
    # constant: u + (c - u) * 1.5
    assert torch.equal(Guidance("constant", 1.5).combine(cond, uncond, 5, 9), torch.tensor([[[2.5, -2.0]]]))


# -- logits processors, checked by hand -----------------------------------------------------------------------
def kept(logits: torch.Tensor) -> list[int]:
    """Indices of the tokens a filter kept, for one row of logits."""
    assert logits.ndim == 1
    return torch.isfinite(logits).nonzero().flatten().tolist()


def test_top_k_keeps_ties():
    x = torch.tensor([1.0, 3.0, 3.0, 2.0, 0.5])
    assert kept(top_k_filter_(x.clone(), 1)) == [1, 2]  # both 3s are "the largest"
    assert kept(top_k_filter_(x.clone(), 2)) == [1, 2]  # the 2nd largest is also 3
    assert kept(top_k_filter_(x.clone(), 3)) == [1, 2, 3]
    assert kept(top_k_filter_(x.clone(), 0)) == [0, 1, 2, 3, 4]  # off
    y = torch.tensor([2.0, 2.0, 2.0, 1.0])
    assert kept(top_k_filter_(y.clone(), 2)) == [0, 1, 2]
    # in place, with -inf
    z = x.clone()
    top_k_filter_(z, 2)
    assert z[0] == -math.inf and z[1] == 3.0


def test_top_p_rules_agree_on_clear_cases():
    # probs [0.5, 0.3, 0.15, 0.05] (shuffled positions), p = 0.75
    # descending: cumulative [0.5, 0.8, 0.95, 1]; drop a token once the cumulative before it exceeds 0.75:
    #   0.5 (before: 0) keep, 0.3 (before: 0.5) keep, 0.15 (before: 0.8 > 0.75) drop, 0.05 drop -> {0.5, 0.3}
    # ascending: sorted [0.05, 0.15, 0.3, 0.5], cumulative [0.05, 0.2, 0.5, 1]; drop where <= 1 - 0.75 = 0.25:
    #   0.05 and 0.15 dropped -> {0.3, 0.5}
    logits = torch.tensor([0.15, 0.5, 0.05, 0.3]).log()
    assert kept(top_p_filter_(logits.clone(), 0.75, "descending")) == [1, 3]
    assert kept(top_p_filter_(logits.clone(), 0.75, "ascending")) == [1, 3]
    # p = 0.4: descending keeps only 0.5 (0.3 comes after 0.5 > 0.4); ascending drops cumulative <= 0.6,
    # i.e. 0.05, 0.15, 0.3 (cum 0.5) -> only 0.5.
    assert kept(top_p_filter_(logits.clone(), 0.4, "descending")) == [1]
    assert kept(top_p_filter_(logits.clone(), 0.4, "ascending")) == [1]
    # p = 0 or 1: off
    for p in (0.0, 1.0):
        for rule in ("ascending", "descending"):
            assert kept(top_p_filter_(logits.clone(), p, rule)) == [0, 1, 2, 3]


def test_top_p_rules_differ_at_the_boundary():
    # Uniform over 4 tokens: probs are exactly 0.25 and the cumulative sums 0.25, 0.5, 0.75, 1.0 are exact.
    # p = 0.5, descending (LlamaGen/HF): the cumulative *before* each token is 0, 0.25, 0.5, 0.75; a token is
    #   dropped when that exceeds 0.5 strictly -> only the 4th -> 3 tokens kept.
    # ascending (VAR): drop where the ascending cumulative <= 1 - 0.5 = 0.5 -> cumulative 0.25 and 0.5 are
    #   dropped -> 2 tokens kept.
    logits = torch.zeros(4)
    assert len(kept(top_p_filter_(logits.clone(), 0.5, "descending"))) == 3
    assert len(kept(top_p_filter_(logits.clone(), 0.5, "ascending"))) == 2


def test_top_p_never_drops_the_best():
    # A tiny p: descending keeps exactly the most likely; ascending's 1 - p rounds to 1.0 in float32 so the
    # cumulative (<= 1.0) would drop everything without the "never the best one" guard.
    logits = torch.tensor([[0.1, 2.0, 0.3, -1.0], [5.0, 0.0, 0.0, 0.0]])
    for rule in ("ascending", "descending"):
        out = top_p_filter_(logits.clone(), 1e-9, rule)
        assert torch.isfinite(out).sum(dim=-1).tolist() == [1, 1]
        assert out.argmax(dim=-1).tolist() == [1, 0]


def test_token_sampling_order_and_draw():
    # temperature 0.5 doubles the logits, then top-k 2, then top-p (ascending): by hand
    logits = torch.tensor([[[1.0, 3.0, 2.0, 0.0]]])
    ts = TokenSampling(temperature=0.5, top_k=2, top_p=0.0, top_p_rule="ascending")
    out = ts.process(logits)
    assert torch.equal(logits, torch.tensor([[[1.0, 3.0, 2.0, 0.0]]]))  # input left alone
    assert out[0, 0, 1] == 6.0 and out[0, 0, 2] == 4.0
    assert kept(out[0, 0]) == [1, 2]
    # top-k 1 makes the draw the argmax, whatever the generator
    greedy = TokenSampling(top_k=1)
    x = torch.randn(2, 5, 11, generator=torch.Generator().manual_seed(0))
    for seed in range(3):
        ids = greedy.draw(greedy.process(x), torch.Generator().manual_seed(seed))
        assert ids.shape == (2, 5) and torch.equal(ids, x.argmax(dim=-1))
