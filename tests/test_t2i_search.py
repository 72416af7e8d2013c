"""The rewards of text-to-image search (the exact verifier as an oracle, the image-caption matcher), best-of-N with
the oracle against pass@N of its own candidates, and `arvision eval geneval` end to end on a tiny text model."""

import json

import numpy as np
import pytest
import torch

from arvision import captions, scenes
from arvision.cli import main
from arvision.evaluation import geneval
from arvision.evaluation.geneval_scenes import scene_for, wrong_scenes
from arvision.evaluation.matcher import (
    MatcherConfig,
    MatcherVerifier,
    SceneMatcher,
    load_matcher,
    matcher_batch,
    perturb,
    save_matcher,
)
from arvision.sampling.search import BestOfN, candidate_generators
from test_text_condition import text_pipe


def render_batch(scene_list) -> torch.Tensor:
    arr = np.stack([scenes.render(s) for s in scene_list])
    return torch.from_numpy(arr).permute(0, 3, 1, 2).float().div(127.5).sub(1)


def test_oracle_scores_right_and_wrong_scenes():
    rng = np.random.default_rng(0)
    metas = [m for m in geneval.prompt_set()[::50]]
    right = render_batch([scene_for(m, rng) for m in metas])
    oracle = geneval.OracleVerifier()
    assert oracle(right, [m["prompt"] for m in metas]).tolist() == [1.0] * len(metas)
    wrong, prompts = [], []
    for m in metas:
        for scene in wrong_scenes(m, rng).values():
            wrong.append(scene)
            prompts.append(m["prompt"])
    assert oracle(render_batch(wrong), prompts).sum() == 0


def test_matcher_pairs_are_labelled_by_the_exact_check():
    rng = np.random.default_rng(1)
    x, texts, labels = matcher_batch(rng, 48, noise=0.0)
    assert x.shape == (48, 3, 64, 64) and 0.3 < labels.float().mean() < 0.7
    arr = ((x.permute(0, 2, 3, 1) + 1) * 127.5 + 0.5).clamp(0, 255).byte().numpy()
    agree = sum(int(geneval.check(a, captions.prompt_meta(t))[0]) == y for a, t, y in zip(arr, texts, labels.tolist()))
    assert agree >= 46  # the scene graph's truth = the verifier's verdict on the clean render (up to rank ties)
    for t in texts:  # no pair ever binds a held-out (shape, colour)
        assert not any((c["class"], c.get("color")) in captions.HELD_OUT for c in captions.prompt_meta(t)["include"])


def test_perturb_changes_one_thing():
    rng = np.random.default_rng(2)
    for text in ["a photo of a red circle", "a photo of three squares", "a photo of a circle left of a ring",
                 "a photo of a red circle and a blue square"]:
        outs = {perturb(text, rng) for _ in range(20)}
        assert text not in outs or len(outs) > 1
        for o in outs:
            assert len(o.split()) == len(text.split())
            assert not captions.unknown_words(o)


def test_matcher_save_load_and_verifier(tmp_path):
    torch.manual_seed(0)
    model = SceneMatcher(MatcherConfig(vocab=captions.VOCAB, width=32, heads=2, depth=1)).eval()
    save_matcher(model, tmp_path / "m", {"note": "test"})
    loaded = load_matcher(tmp_path / "m")
    x, texts, _ = matcher_batch(np.random.default_rng(3), 4)
    v = MatcherVerifier(loaded)
    assert torch.allclose(v(x, texts), MatcherVerifier(model)(x, texts))
    assert v.features(x).shape == (4, 32)


def test_best_of_n_with_the_oracle_is_pass_at_n():
    """Best-of-N ranked by the exact verifier is correct exactly when one of its N candidates is: the candidates
    are those plain sampling draws from ``candidate_generators``."""
    pipe = text_pipe()
    prompts = ["a red circle", "a blue square"]
    oracle_calls = []

    def oracle(images, texts):  # a stand-in oracle on this vocabulary: "bright red pixels present"
        score = ((images[:, 0] > 0.3) & (images[:, 1] < 0)).float().mean((1, 2))
        oracle_calls.append(score)
        return (score > 0.05).float()

    n = 4
    gens = [torch.Generator().manual_seed(10 + j) for j in range(2)]
    out = pipe(prompts=prompts, generator=gens, search=BestOfN(n), verifier=oracle, output_type="pt")
    cand = [c for j in range(2) for c in candidate_generators(torch.Generator().manual_seed(10 + j), n)]
    plain = pipe(prompts=[p for p in prompts for _ in range(n)], generator=cand, output_type="pt")
    passed = oracle(plain.images * 2 - 1, None).view(2, n)
    assert out.stats["search"]["plain_equivalents"] == pytest.approx(n)
    assert oracle(out.images * 2 - 1, None).tolist() == passed.max(1).values.tolist()
    for j in range(2):  # the chosen image is one of the candidates
        assert any(torch.equal(out.tokens[j], t) for t in plain.tokens[j * n:(j + 1) * n])


def test_eval_geneval_cli(tmp_path, capsys):
    folder = tmp_path / "t2i"
    # the tiny model reads 32 px; the benchmark judges 64 px images: a 64 px text model with the scene vocabulary
    from arvision.config import ModelConfig, TokenizerConfig, TransformerConfig
    from arvision.pipeline import ARPipeline

    tok = TokenizerConfig(kind="multiscale", vocab_size=64, embed_dim=8, z_channels=8, ch=32, ch_mult=(1, 2, 2, 2),
                          patch_nums=(1, 2, 4, 8))
    tr = TransformerConfig(block="adaln", width=64, depth=1, num_heads=2, vocab_size=64, num_classes=1,
                           in_channels=8, condition="text", text_vocab=captions.VOCAB, text_len=24)
    torch.manual_seed(0)
    pipe = ARPipeline(ModelConfig(family="var", image_size=64, tokenizer=tok, transformer=tr))
    pipe.transformer.init_weights()
    pipe.save_pretrained(folder)
    code = main(["eval", "geneval", str(folder), "--per-prompt", "2", "--max-prompts", "1", "--json",
                 "--out-dir", str(tmp_path / "imgs"), "--picture", str(tmp_path / "tasks.png")])
    assert code == 0
    report = json.loads(capsys.readouterr().out)
    summary, results = report["summary"], report["results"]
    assert set(summary["tasks"]) == set(captions.TASKS) and summary["images"] == 12 and len(results) == 12
    assert summary["overall"] == pytest.approx(np.mean([t["accuracy"] for t in summary["tasks"].values()]))
    rescored = geneval.score_folder(tmp_path / "imgs", geneval.first_per_task(geneval.prompt_set(), 1), 2)
    assert [r["correct"] for r in rescored] == [r["correct"] for r in results]  # the files are what was judged
    assert (tmp_path / "tasks.png").is_file()


def test_eval_geneval_refuses_class_models(tiny_model, capsys):
    assert main(["eval", "geneval", str(tiny_model), "--max-prompts", "1"]) == 2
    assert "class-conditional" in capsys.readouterr().err


def test_contrastive_training_learns_on_a_fixed_batch():
    from arvision.evaluation.matcher import contrastive_batch, train_matcher

    images, texts = contrastive_batch(np.random.default_rng(4), 16)
    distinct = {t: i for i, t in enumerate(texts)}  # repeated captions would make two right answers
    keep = sorted(distinct.values())
    images, texts = images[keep], [texts[i] for i in keep]
    losses = []
    model = train_matcher(MatcherConfig(vocab=captions.VOCAB, width=32, heads=2, depth=1),
                          lambda rng, b: (images, texts), steps=60, batch=len(texts), lr=3e-3,
                          log=lambda step, loss, acc: losses.append(loss))
    assert losses[-1] < losses[0] - 1.0
    with torch.no_grad():
        sims = model.embed_images(images) @ model.embed_texts(model.tokenizer(texts)).T
    assert (sims.argmax(1) == torch.arange(len(texts))).float().mean() > 0.5
