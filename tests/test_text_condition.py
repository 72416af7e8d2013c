"""Text conditioning: the closed-vocabulary tokenizer, TextCondition's rows, cross-attention reaching the trunk,
training on captions, saving and loading a text model, and the errors a user sees."""

import json

import pytest
import torch

from arvision.conditions import ClassCondition, TextCondition
from arvision.config import ModelConfig, TokenizerConfig, TransformerConfig
from arvision.errors import ArvisionError
from arvision.pipeline import ARPipeline
from arvision.training.ar_trainer import ARTrainConfig, ARTrainer
from arvision.training.condition_data import Captions

VOCAB = ("a", "photo", "of", "red", "blue", "circle", "square", "and", "left")


def text_pipe(family="var", seed=0, text_len=12, text_mode="cross", text_encoder="closed"):
    """A tiny random text model (9-word vocabulary, 32 px), VAR (4 scales) or LlamaGen (8x8 raster); with
    ``text_encoder="minilm"`` read by the frozen MiniLM (tests/test_text_minilm.py)."""
    if family == "var":
        tok = TokenizerConfig(kind="multiscale", vocab_size=64, embed_dim=8, z_channels=8, ch=32, ch_mult=(1, 2, 2),
                              patch_nums=(1, 2, 4, 8))
        block = "adaln"
    else:
        tok = TokenizerConfig(kind="vq", vocab_size=64, embed_dim=8, z_channels=8, ch=32, ch_mult=(1, 2, 2),
                              patch_nums=(8,), l2_norm=True, quant_conv_ks=1, attn_style="split")
        block = "llama"
    tr = TransformerConfig(block=block, width=64, depth=2, num_heads=2, vocab_size=64, num_classes=1, in_channels=8,
                           condition="text", text_vocab=VOCAB if text_encoder == "closed" else None,
                           text_encoder=text_encoder, text_len=text_len, text_mode=text_mode)
    torch.manual_seed(seed)
    pipe = ARPipeline(ModelConfig(family=family, image_size=32, tokenizer=tok, transformer=tr))
    pipe.transformer.init_weights()
    return pipe


def test_tokenizer_ids_null_and_errors():
    tok = text_pipe().transformer.text_encoder.tokenizer
    ids = tok(["a red circle", "A photo of a blue square, left"])
    assert ids.shape == (2, 12) and ids.dtype == torch.long
    assert ids[0, :3].tolist() == [2 + VOCAB.index(w) for w in ("a", "red", "circle")] and ids[0, 3:].eq(0).all()
    assert ids[1, 4:7].tolist() == [2 + VOCAB.index(w) for w in ("blue", "square", "left")]  # case, comma
    assert tok([""])[0, 0] == 1 and tok([""])[0, 1:].eq(0).all()  # the null text: one NULL word
    with pytest.raises(ArvisionError, match="green, triangle"):
        tok(["a green triangle and a red circle"])
    with pytest.raises(ArvisionError, match="at most 12"):
        tok(["a " * 13])


def test_text_condition_rows():
    tok = text_pipe().transformer.text_encoder.tokenizer
    c = TextCondition.of(["a red circle", "a blue square", "a red square"], tok)
    assert c.batch == 3 and c.keys() == ["a red circle", "a blue square", "a red square"]
    sel = c.select(torch.tensor([2, 0, 0]))
    assert sel.keys() == ["a red square", "a red circle", "a red circle"] and torch.equal(sel.ids[1], c.ids[0])
    drop = c.with_null(torch.tensor([False, True, False]))
    assert drop.keys() == ["a red circle", "", "a red square"] and torch.equal(drop.ids[1], c.null_ids)
    both = c.cat(c.null())
    assert both.batch == 6 and both.ids[3:].eq(c.null_ids).all()
    with pytest.raises(ArvisionError):
        c.cat(ClassCondition.of([0, 1, 2], 3))


@pytest.mark.parametrize("family", ["var", "llamagen"])
def test_cross_attention_carries_word_order(family):
    """Two prompts with the same bag of words but swapped bindings give different logits: the per-word states
    reach the trunk (a pooled-only path could still differ; the cross-attention's share is checked directly)."""
    pipe = text_pipe(family)
    tr = pipe.transformer
    torch.nn.init.normal_(tr.head.proj.weight, std=0.02)  # LlamaGen's recipe starts the head at zero
    c = TextCondition.of(["a red circle and a blue square", "a blue circle and a red square"],
                         tr.text_encoder.tokenizer)
    x = torch.randint(0, 64, (2, pipe.schedule.length))
    with torch.no_grad():
        logits = tr(c, pipe.inputs.teacher(x), pipe.schedule)
        assert not torch.allclose(logits[0], logits[1], atol=1e-5)
        for blk in tr.blocks:  # without the cross-attention the two rows differ only through the pooled vector
            blk.cross.proj.weight.zero_()
            blk.cross.proj.bias.zero_()
        cond = tr.condition(c)
        ctx = cond.context[0]
        assert ctx[0].shape == (2, 2, 12, 32) and ctx[2][0, 0, 0, 7:].eq(float("-inf")).all()
        assert not torch.allclose(tr(c, pipe.inputs.teacher(x), pipe.schedule), logits, atol=1e-5)


@pytest.mark.parametrize("family", ["var", "llamagen"])
def test_sampling_prompts_guidance_and_errors(family):
    pipe = text_pipe(family)
    out = pipe(prompts=["a red circle", "a blue square"], generator=torch.Generator().manual_seed(0),
               guidance_scale=2.0)
    assert out.tokens.shape == (2, pipe.schedule.length) and out.class_labels == ["a red circle", "a blue square"]
    per = pipe(prompts=["a red circle", "a blue square"], generator=[torch.Generator().manual_seed(i) for i in (0, 1)],
               guidance_scale=2.0)
    alone = pipe(prompts=["a blue square"], generator=[torch.Generator().manual_seed(1)], guidance_scale=2.0)
    assert torch.equal(per.tokens[1], alone.tokens[0])  # one generator per image: independent of the batch
    with pytest.raises(ArvisionError, match="empty prompt"):
        pipe(prompts=["a red circle", "  "])
    with pytest.raises(ArvisionError, match="does not know: green"):
        pipe(prompts=["a green circle"])
    with pytest.raises(ArvisionError, match="conditioned on text"):
        pipe([0, 1])
    with pytest.raises(ArvisionError, match="no prompts"):
        pipe(prompts=[])


def test_class_model_refuses_prompts(tiny_model):
    pipe = ARPipeline.from_pretrained(tiny_model)
    with pytest.raises(ArvisionError, match="class labels, not text"):
        pipe(prompts=["a red circle"])


@pytest.mark.parametrize("text_mode", ["cross", "prefix"])
def test_train_on_captions_save_load(tmp_path, text_mode):
    """A few steps on captions lower the loss, every parameter of the text path gets a gradient, and the saved
    folder loads strictly into a model that samples the same tokens (both text modes: tests/test_text_prefix.py)."""
    pipe = text_pipe(text_mode=text_mode)
    N = 8
    tok = pipe.transformer.text_encoder.tokenizer
    patterns = torch.randint(0, 64, (2, pipe.schedule.length))
    tokens = patterns[torch.arange(N) % 2]  # the image is a function of its caption: learnable through the text
    caps = Captions.of([["a red circle", "a photo of a red circle"] if i % 2 else ["a blue square"] * 2
                        for i in range(N)], tok)
    trainer = ARTrainer(pipe, tokens, caps, ARTrainConfig(steps=30, batch_size=8, lr=3e-3, warmup_steps=0,
                                                          sample_every=30, ckpt_every=30, log_every=1),
                        tmp_path / "run", progress=False)
    first = trainer.train_step()["loss"]
    grads = {n for n, p in trainer.model.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}
    assert any(n.startswith("text_encoder.layers") for n in grads)
    if text_mode == "cross":
        assert any(".cross.kv" in n for n in grads)
    else:  # the words go through the blocks' own attention: no cross sub-layer at all
        assert not any(".cross" in n for n, _ in trainer.model.named_parameters())
    losses = [trainer.train_step()["loss"] for _ in range(25)]
    assert sum(losses[-5:]) / 5 < first - 1.0
    trainer.train()  # the remaining steps, then the model folder
    assert (tmp_path / "run" / "samples").is_dir()
    assert json.loads((tmp_path / "run" / "config.json").read_text())["transformer"]["text_mode"] == text_mode
    loaded = ARPipeline.from_pretrained(tmp_path / "run")
    assert loaded.takes_text and loaded.config.transformer.text_vocab == VOCAB
    assert loaded.config.transformer.text_mode == text_mode
    a = pipe(prompts=["a red circle"], generator=torch.Generator().manual_seed(3))
    b = loaded(prompts=["a red circle"], generator=torch.Generator().manual_seed(3))
    assert torch.equal(a.tokens, b.tokens)


def test_text_config_validation():
    with pytest.raises(ArvisionError, match="text_vocab"):
        TransformerConfig(condition="text", text_vocab=None)
    with pytest.raises(ArvisionError, match="text_vocab"):
        TransformerConfig(condition="text", text_vocab=("a", "a"))
    with pytest.raises(ArvisionError, match="condition"):
        TransformerConfig(condition="image")
