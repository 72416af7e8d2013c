"""The prefix text mode (``TransformerConfig.text_mode = "prefix"``): the prompt's per-word states enter the trunk
as prefix positions that pass through the blocks' own self-attention, seeing only each other, while the image
positions attend to them and to each other in one softmax.

The cached context (each block's prefix keys/values computed once per sequence in ``ARTransformer.condition``)
must equal the literal formulation (the prefix concatenated in front of the image sequence under the joint mask);
KV-cached sampling (full, one-token static, speculative windows, compressed caches) must equal teacher forcing;
padding words must change nothing; training, the command line and the errors work end to end.
"""

from __future__ import annotations

import functools
import json

import pytest
import torch

from arvision.bundled import bundled_model_dir
from arvision.cli import main
from arvision.conditions import TextCondition
from arvision.config import TransformerConfig
from arvision.errors import ArvisionError
from arvision.models.attention import attend
from arvision.pipeline import ARPipeline
from arvision.sampling.kv_calibration import Calibration
from arvision.sampling.kv_policies import HACK, SnapKV
from arvision.sampling.speculative import parse_decoding
from test_consistency import _perturb
from test_text_condition import VOCAB, text_pipe

# different lengths (padding differs per row), the same bag of words with swapped bindings, and the null text
PROMPTS = ["a red circle and a blue square", "a blue circle and a red square", "a photo of a red circle left", ""]
FAMILIES = ["var", "llamagen"]


def build(family: str, text_len: int = 12) -> ARPipeline:
    """A tiny random prefix-mode text model (tests/test_text_condition.py's), weights perturbed so that no
    zero-initialised or tiny gain (VAR's AdaLN gammas, LlamaGen's zero head) makes a comparison vacuous."""
    return _perturb(text_pipe(family, text_len=text_len, text_mode="prefix"), seed=1)


@functools.cache
def prefix_pipe(family: str) -> ARPipeline:
    """Built once per family; tests must not modify it."""
    return build(family)


def prompts(pipe, texts=PROMPTS) -> TextCondition:
    return TextCondition.of(texts, pipe.transformer.text_encoder.tokenizer)


def random_tokens(pipe, batch: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, pipe.config.transformer.vocab_size, (batch, pipe.schedule.length), generator=g)


def literal_prefix_logits(tr, cond: TextCondition, x_in, schedule) -> torch.Tensor:
    """The slow reference: the text's states concatenated in front of the image sequence, the blocks run over the
    whole of it under the joint mask (words see the valid words only; images see the valid words and what their
    schedule lets them see), the prefix outputs dropped.  Prefix positions are not rotated (RoPE identity)."""
    enc = cond.encode(tr)
    c = tr.condition(cond)  # only its embedding and modulations: the condition's share besides the text states
    layout = tr.layout(schedule)
    B, T, _ = enc.states.shape
    L = schedule.length
    h = torch.cat([enc.states, tr.embed(c.emb, x_in, 0, L, layout)], dim=1)
    pad = torch.zeros(B, T).masked_fill(~enc.valid, float("-inf"))
    mask = torch.full((B, 1, T + L, T + L), float("-inf"))
    mask[:, 0, :, :T] = pad[:, None, :]
    mask[:, 0, T:, T:] = schedule.attn_bias()
    rope = None
    if layout.rope is not None:
        identity = torch.stack([torch.ones(T, layout.rope.shape[1]), torch.zeros(T, layout.rope.shape[1])], dim=-1)
        rope = torch.cat([identity, layout.rope])
    for i, (blk, mod) in enumerate(zip(tr.blocks, c.blocks)):
        assert blk.cross is None  # prefix mode: no cross sub-layer, the words go through the block itself
        h = blk(h, mod, rope, mask, None, i, 0, None)
    return tr.head(h[:, T:], c.head)


# -- the attention primitive ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("n", [1, 5])
@pytest.mark.parametrize("masked", [False, True])
def test_attend_with_prefix_is_one_softmax_over_the_joined_keys(n, masked):
    g = torch.Generator().manual_seed(0)
    B, H, T, m, hd = 2, 3, 4, 6, 8
    q, k, v = (torch.randn(B, H, x, hd, generator=g) for x in (n, m, m))
    pk, pv = torch.randn(B, H, T, hd, generator=g), torch.randn(B, H, T, hd, generator=g)
    bias = torch.zeros(B, 1, 1, T)
    bias[0, ..., 3:] = float("-inf")  # row 0 has three words, row 1 four
    mask = torch.triu(torch.full((n, m), float("-inf")), diagonal=m - n + 1) if masked else None
    out = attend(q, k, v, 0.3, mask, prefix=(pk, pv, bias))
    # by hand
    logits = torch.cat([pk, k], 2).transpose(-2, -1)
    logits = (q @ logits) * 0.3 + torch.cat([bias.expand(B, 1, n, T),
                                             (mask if masked else torch.zeros(n, m)).expand(B, 1, n, m)], -1)
    ref = logits.softmax(-1) @ torch.cat([pv, v], 2)
    torch.testing.assert_close(out, ref, atol=1e-6, rtol=1e-6)
    # the padding word of row 0 is invisible: changing its key and value changes nothing
    pk2, pv2 = pk.clone(), pv.clone()
    pk2[0, :, 3], pv2[0, :, 3] = 100.0, -100.0
    torch.testing.assert_close(attend(q, k, v, 0.3, mask, prefix=(pk2, pv2, bias)), out, atol=1e-6, rtol=0)


# -- 1. the cached context equals the literal prefix-in-sequence formulation ----------------------------------------
@pytest.mark.parametrize("family", FAMILIES)
def test_cached_context_equals_the_literal_prefix_formulation(family):
    pipe = prefix_pipe(family)
    tr, sched = pipe.transformer, pipe.schedule
    assert all(blk.cross is None for blk in tr.blocks)
    assert not any(".cross" in name for name, _ in tr.named_parameters())
    cond = prompts(pipe)
    x_in = pipe.inputs.teacher(random_tokens(pipe, len(PROMPTS), seed=1))
    with torch.no_grad():
        fast = tr(cond, x_in, sched)
        ref = literal_prefix_logits(tr, cond, x_in, sched)
    assert fast.std() > 0.1, "logits nearly constant: the comparison would be vacuous"
    torch.testing.assert_close(fast, ref, atol=2e-5, rtol=1e-5)
    # the context: one (k, v, bias) per block, the bias -inf exactly at the padding words
    ctx = tr.condition(cond).context
    assert len(ctx) == tr.cfg.depth and ctx[0][0].shape == (4, 2, 12, 32)
    assert ctx[1][2][0, 0, 0, :7].eq(0).all() and ctx[1][2][0, 0, 0, 7:].eq(float("-inf")).all()
    assert ctx[1][2][3, 0, 0, 1:].eq(float("-inf")).all()  # the null text: one NULL word


@pytest.mark.parametrize("family", FAMILIES)
def test_the_prefix_carries_word_order(family, monkeypatch):
    """Two prompts with the same bag of words but swapped bindings, given the same pooled vector (so the same
    first input and modulations): their logits differ only through the per-word states, so the prefix reaches
    the trunk; with the same states too, the same logits."""
    pipe = prefix_pipe(family)
    tr = pipe.transformer
    x = pipe.inputs.teacher(random_tokens(pipe, 1, seed=2).expand(2, -1))
    encode = type(tr.text_encoder).forward

    def first_pooled(self, ids):
        pooled, states, valid = encode(self, ids)
        return pooled[:1].expand_as(pooled), states, valid

    monkeypatch.setattr(type(tr.text_encoder), "forward", first_pooled)
    with torch.no_grad():
        logits = tr(prompts(pipe, PROMPTS[:2]), x, pipe.schedule)
        assert not torch.allclose(logits[0], logits[1], atol=1e-3)
        same = tr(prompts(pipe, PROMPTS[:1] * 2), x, pipe.schedule)
        torch.testing.assert_close(same[0], same[1], atol=1e-6, rtol=0)


# -- 2. KV-cached sampling equals teacher forcing ----------------------------------------------------------------
@pytest.mark.parametrize("family", FAMILIES)
def test_cached_steps_equal_teacher_forcing(family):
    pipe = prefix_pipe(family)
    tr, sched = pipe.transformer, pipe.schedule
    B = len(PROMPTS)
    tokens = random_tokens(pipe, B, seed=3)
    with torch.no_grad():
        teacher = pipe.inputs.teacher(tokens)
        full = tr(prompts(pipe), teacher, sched)
        cond = tr.condition(prompts(pipe))
        layout = tr.layout(sched)
        cache = tr.new_cache(B, sched)
        steps, first = [], sched.first_len
        for s, (begin, end) in enumerate(sched.begin_ends):
            if s == 0:
                x = None
            elif family == "var":
                x = teacher[:, begin - first:end - first]
            else:
                x = tokens[:, s - 1:s]
            steps.append(tr.forward_step(s, cond, x, cache, layout))
        torch.testing.assert_close(torch.cat(steps, 1), full, atol=2e-5, rtol=1e-5)
        if family == "llamagen":  # the one-token step pipe.compile compiles: its position from a tensor's length
            cache = tr.new_cache(B, sched)
            out = [tr.forward_positions(0, 1, cond, None, cache, layout)]
            for p in range(1, sched.length):
                out.append(tr.forward_token(torch.arange(p + 1), cond, tokens[:, p - 1:p], cache, layout))
            torch.testing.assert_close(torch.cat(out, 1), full, atol=2e-5, rtol=1e-5)


@pytest.mark.parametrize("family", FAMILIES)
def test_greedy_samples_are_the_teacher_forced_argmax(family):
    pipe = prefix_pipe(family)
    texts = PROMPTS[:3]
    scale = 0.0 if family == "var" else 1.0  # no guidance
    out = pipe(prompts=texts, guidance_scale=scale, top_k=1, top_p=0.0, output_type="tokens",
               generator=torch.Generator().manual_seed(0))
    assert out.tokens.unique().numel() > 1
    with torch.no_grad():
        logits = pipe.transformer(prompts(pipe, texts), pipe.inputs.teacher(out.tokens), pipe.schedule)
    assert torch.equal(logits.argmax(-1), out.tokens)


@pytest.mark.parametrize("spec", ["sjd:3", "mcsjd:5"])
def test_speculative_windows_see_the_prefix(spec):
    """Speculative decoding verifies draft windows under a causal mask, joined with the prefix's: greedy tokens
    equal plain decoding's."""
    pipe = prefix_pipe("llamagen")
    texts = PROMPTS[:3]
    plain = pipe(prompts=texts, guidance_scale=3.0, top_k=1, output_type="tokens")
    out = pipe(prompts=texts, guidance_scale=3.0, top_k=1, output_type="tokens", decoding=parse_decoding(spec, pipe))
    assert torch.equal(out.tokens, plain.tokens)


def test_compressed_caches_see_the_whole_prefix():
    """KV policies compress the image keys only; the prefix is seen in full (outside the budget).  A full budget
    gives the full cache's tokens, one head group (snapkv) or two (hack: heads split into groups)."""
    pipe = prefix_pipe("var")
    texts = PROMPTS[:3]
    gens = lambda: [torch.Generator().manual_seed(10 + i) for i in range(3)]  # noqa: E731
    base = pipe(prompts=texts, generator=gens(), output_type="tokens")
    depth, steps = pipe.config.transformer.depth, pipe.schedule.num_steps
    calib = Calibration(depth, 2, steps, 1, 0, 16, 0.5, 0, drafters=[[] for _ in range(steps)],
                        head_types=[["contextual", "structural"]] * depth)
    for policy in (SnapKV(1.0), HACK(0.0, calib)):
        out = pipe(prompts=texts, generator=gens(), output_type="tokens", kv_policy=policy)
        assert torch.equal(out.tokens, base.tokens), policy
    small = pipe(prompts=texts, generator=gens(), output_type="tokens", kv_policy=SnapKV(0.3))
    assert small.tokens.shape == base.tokens.shape
    assert small.stats["kv_cache_bytes"] < 0.5 * base.stats["kv_cache_bytes"]


# -- 3. padding words change nothing -----------------------------------------------------------------------------
@pytest.mark.parametrize("family", FAMILIES)
def test_padding_words_change_nothing(family):
    """The same prompts read with 12 word slots (a longer text_len: more padding) or with just enough for the longest
    prompt (7): the same logits, teacher-forced and cached."""
    pipe = prefix_pipe(family)
    tr = pipe.transformer
    long = prompts(pipe)
    short = TextCondition(long.ids[:, :7], long.texts, long.null_ids[:7])
    assert long.ids[:, 7:].eq(0).all()
    x = pipe.inputs.teacher(random_tokens(pipe, len(PROMPTS), seed=4))
    with torch.no_grad():
        torch.testing.assert_close(tr(short, x, pipe.schedule), tr(long, x, pipe.schedule), atol=1e-5, rtol=1e-5)
    a = pipe(prompts=PROMPTS[:3], generator=torch.Generator().manual_seed(1), output_type="tokens", top_k=1)
    longer = build(family, text_len=20)
    with torch.no_grad():  # the same weights, eight rows of position table more
        state = dict(pipe.transformer.state_dict())
        state["text_encoder.pos"] = torch.cat([state["text_encoder.pos"], torch.randn(8, 64)])
        longer.transformer.load_state_dict(state)
    b = longer(prompts=PROMPTS[:3], generator=torch.Generator().manual_seed(1), output_type="tokens", top_k=1)
    assert torch.equal(a.tokens, b.tokens)


# -- 4. training, saving, loading, the command line --------------------------------------------------------------
# (training on captions, saving, loading: test_train_on_captions_save_load[prefix] in tests/test_text_condition.py)


# fixtures tok64 (a tiny tokenizer for 64 px) and few_shapes (--data shapes as 6 scenes): tests/conftest.py
def train_argv(tok, data, out, *extra) -> list[str]:
    return [str(a) for a in ["train", "--tokenizer", tok, "--data", data, "--out", out, "--preset", "tiny",
                             "--steps", "3", "--batch-size", "4", "--warmup", "0", "--ckpt-every", "3",
                             "--sample-every", "1000", "--captions-per-image", "2", "--precision", "fp32",
                             "--device", "cpu", *extra]]


def test_cli_trains_a_prefix_model_that_samples(tok64, few_shapes, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(train_argv(tok64, "shapes", out, "--text-mode", "prefix")) == 0
    assert json.loads((out / "run.json").read_text())["--text-mode"] == "prefix"
    assert json.loads((out / "config.json").read_text())["transformer"]["text_mode"] == "prefix"
    capsys.readouterr()
    assert main(["info", str(out)]) == 0
    assert "text-conditioned (32-word vocabulary) as a prefix" in capsys.readouterr().out
    pipe = ARPipeline.from_pretrained(out)
    assert pipe.config.transformer.text_mode == "prefix" and all(b.cross is None for b in pipe.transformer.blocks)
    assert main(["sample", str(out), "--prompt", "a photo of a red circle", "--seed", "0",
                 "--out", str(tmp_path / "g.png")]) == 0
    assert (tmp_path / "g.png").is_file()
    # the default is cross-attention, recorded as not given
    assert main(train_argv(tok64, "shapes", tmp_path / "cross", "--steps", "1", "--ckpt-every", "1")) == 0
    assert json.loads((tmp_path / "cross" / "run.json").read_text())["--text-mode"] is None
    assert ARPipeline.from_pretrained(tmp_path / "cross").config.transformer.text_mode == "cross"


# -- 5. errors, and models without the field --------------------------------------------------------------------
def test_text_mode_validation_and_old_configs(tmp_path):
    with pytest.raises(ArvisionError, match="invalid text_mode: 'prefx' \\(one of 'cross', 'prefix'\\)"):
        TransformerConfig(condition="text", text_vocab=VOCAB, text_mode="prefx")
    with pytest.raises(ArvisionError, match="text_mode"):
        TransformerConfig(condition="text", text_vocab=VOCAB, text_mode=1)
    folder = build("var").save_pretrained(tmp_path / "m")
    data = json.loads((folder / "config.json").read_text())
    data["transformer"]["text_mode"] = "suffix"
    (folder / "config.json").write_text(json.dumps(data))
    with pytest.raises(ArvisionError, match="config.json: invalid text_mode: 'suffix'"):
        ARPipeline.from_pretrained(folder)
    # a config.json written before the field (the bundled shapes model's) is a cross-attention model
    shapes = json.loads((bundled_model_dir("shapes") / "config.json").read_text())
    assert "text_mode" not in shapes["transformer"]
    pipe = ARPipeline.from_pretrained("shapes")
    assert pipe.config.transformer.text_mode == "cross"
    assert all(blk.cross is not None for blk in pipe.transformer.blocks)


def test_text_mode_needs_a_text_model(tok64, tmp_path, capsys, monkeypatch):
    import arvision.training.datasets as datasets

    def forbidden(*a, **k):
        raise AssertionError("the data was built before the argument was checked")

    with monkeypatch.context() as m:  # --condition class: refused before any work
        m.setattr(datasets, "build_dataset", forbidden)
        assert main(train_argv(tok64, "shapes", tmp_path / "a", "--condition", "class", "--text-mode", "prefix")) == 2
    assert "--text-mode prefix is for text models, not with --condition class" in capsys.readouterr().err
    folder = tmp_path / "images" / "one"  # data without captions: a class-conditional model would be trained
    folder.mkdir(parents=True)
    from PIL import Image

    for i in range(2):
        Image.new("RGB", (64, 64), (i * 90, 20, 40)).save(folder / f"{i}.png")
    assert main(train_argv(tok64, tmp_path / "images", tmp_path / "b", "--text-mode", "cross")) == 2
    err = capsys.readouterr().err
    assert "--text-mode cross is for text models: the data" in err and "has no captions" in err
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()
