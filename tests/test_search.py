"""Search controllers on the one sampler: best-of-N, beam, lookahead, TTS-VAR, their verifier and their cost."""

from __future__ import annotations

import pytest
import torch

from arvision.cli import main
from arvision.errors import ArvisionError
from arvision.sampling.loop import SamplingRun, fork_generator
from arvision.sampling.search import (
    TTSVAR,
    BeamSearch,
    BestOfN,
    Lookahead,
    candidate_generators,
    kmeans_medoids,
    parse_search,
    partial_decode,
    potential_resample,
    search_generate,
)
from arvision.sampling.verifiers import ClassifierVerifier
from test_consistency import make_pipe

VAR4 = "var_pn2358_w96h3_q1"  # scales 2, 3, 5, 8: 4 + 9 + 25 + 64 = 102 tokens, 4 steps
VAR3 = "var_pn124_w96h3_q0"  # scales 1, 2, 4: 21 tokens, 3 steps
RASTER = "llamagen_g3_w64h2"  # 3x3 = 9 raster steps


@pytest.fixture(autouse=True)
def one_thread():
    """The models here are tiny: on a busy 2-core machine a second thread only adds waiting."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def brightness(images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """A cheap deterministic verifier: mean pixel value (images in [-1, 1])."""
    assert images.min() >= -1 and images.max() <= 1
    return images.float().mean((1, 2, 3)).cpu()


def gens(seeds):
    return [torch.Generator().manual_seed(s) for s in seeds]


def run_of(pipe, labels, generators) -> SamplingRun:
    return SamplingRun(pipe.transformer, pipe.inputs, pipe.condition(labels), pipe.sampling_options(), generators)


@pytest.mark.parametrize("name", [VAR4, RASTER])
def test_bon_1_is_plain_sampling(name):
    pipe = make_pipe(name)
    labels = [0, 1, 2]
    plain = pipe(labels, generator=gens([5, 6, 7]), output_type="tokens")
    found = pipe(labels, generator=gens([5, 6, 7]), search="bon:1", verifier=brightness, output_type="tokens")
    assert torch.equal(found.tokens, plain.tokens)
    assert found.stats["search"]["token_forwards"] == plain.stats["token_forwards"]


@pytest.mark.parametrize("name", [VAR4, RASTER])
def test_bon_picks_the_verifiers_best_of_the_plain_candidates(name):
    pipe = make_pipe(name)
    labels, seeds, N = [2, 0, 1], [11, 12, 13], 5
    out = pipe(labels, generator=gens(seeds), search=f"bon:{N}", verifier=brightness, output_type="pt")
    for i, (label, seed) in enumerate(zip(labels, seeds)):
        cands = pipe([label] * N, generator=candidate_generators(torch.Generator().manual_seed(seed), N),
                     output_type="pt")
        assert len({tuple(t.tolist()) for t in cands.tokens}) > 1  # the candidates differ
        best = int(brightness(cands.images * 2 - 1, None).argmax())
        assert torch.equal(out.tokens[i], cands.tokens[best])
        assert out.stats["search_scores"][i] == pytest.approx(float(brightness(cands.images[best:best + 1] * 2 - 1,
                                                                                None)), abs=1e-5)



def select_midway(run, rows, after: int = 2):
    """Start ``run``, take ``after`` steps, re-batch it to ``rows`` (``SamplingRun.select``), finish it."""
    with run.context():
        run.start()
        for _ in range(after):
            run.step()
        run.select(rows)
        run.finish()
    return run

@pytest.mark.parametrize("name", [VAR4, RASTER])
def test_select_rebatching_continues_each_row_exactly(name):
    """Re-batch after two steps (drop, reorder, repeat): a kept row ends with the tokens of a run that was never
    re-batched with the same generator; repeats diverge, and all of it is reproducible."""
    pipe = make_pipe(name)

    def rebatched():
        return select_midway(run_of(pipe, [0, 1, 2], gens([1, 2, 3])), [2, 0, 2, 2])

    run = rebatched()
    assert run.labels.tolist() == [2, 0, 2, 2] and run.cache.batch == 8  # guidance: conditional + unconditional
    for row, (label, seed) in zip((0, 1), ((2, 3), (0, 1))):
        alone = run_of(pipe, [label], gens([seed]))
        with alone.context():
            alone.start().finish()
        assert torch.equal(run.tokens[row], alone.tokens[0])
        if pipe.schedule.step_maps:
            torch.testing.assert_close(run.state[row], alone.state[0], rtol=0, atol=1e-6)
    repeats = [tuple(run.tokens[r].tolist()) for r in (0, 2, 3)]
    assert len(set(repeats)) == 3  # duplicates diverged through their forked generators
    assert torch.equal(rebatched().tokens, run.tokens)


def test_repeats_get_forks_not_the_same_generator():
    g = torch.Generator().manual_seed(4)
    pipe = make_pipe(VAR3)
    run = run_of(pipe, [1], [g])
    with run.context():
        run.start()
        run.select([0, 0, 0])
    assert run.generator[0] is g and len({id(x) for x in run.generator}) == 3
    f1 = fork_generator(g, 1)
    assert torch.equal(run.generator[1].get_state(), f1.get_state())
    assert not torch.equal(run.generator[1].get_state(), run.generator[2].get_state())
    assert torch.equal(g.get_state(), torch.Generator().manual_seed(4).get_state())  # forking drew nothing


def test_cost_meter_counts_token_forwards_by_hand():
    pipe = make_pipe(VAR4)  # steps of 4, 9, 25, 64 tokens; guidance doubles every row
    n = 2
    labels = pipe.condition([0, 3])
    options = pipe.sampling_options()
    assert options.guidance.doubles_batch

    def search(spec):
        return search_generate(spec, pipe.transformer, pipe.inputs, labels, options, gens([1, 2]), brightness)

    res = search("bon:3")
    assert res.cost.token_forwards == n * 3 * 102 * 2 and res.cost.plain_token_forwards == n * 102 * 2
    assert res.cost.verifier_calls == res.cost.decoder_calls == n * 3
    assert res.batches == [n * 3] * 4

    # beam 2x2: 4 rows per label at every step; scored after steps 1 and 2 and at the end
    res = search("beam:2,expand=2,steps=1/2")
    assert res.cost.token_forwards == n * 4 * 102 * 2
    assert res.cost.verifier_calls == n * 4 * 3 and res.batches == [n * 4] * 4
    assert search("beam:2,expand=2").cost.verifier_calls == n * 4 * 2  # default: step 2 (6/13 of 4 steps) only

    # lookahead: the same, plus greedy roll-outs of all 4 rows from after step 1 (25 + 64 tokens to go) and from
    # after step 2 (64 to go)
    res = search("lookahead:2,expand=2,steps=1/2")
    rollout = n * 4 * ((25 + 64) + 64) * 2
    assert res.cost.rollout_token_forwards == rollout
    assert res.cost.token_forwards == n * 4 * 102 * 2 + rollout
    assert res.cost.forwards == 4 + (2 + 1)  # 4 steps, then roll-outs of 2 and 1 steps

    # tts-var with an explicit schedule: batches 8, 8, 4, 2 per label at steps 0..3
    res = search("tts-var:8,cluster=1,resample=2,schedule=8/4/2/2")
    assert res.batches == [n * b for b in (8, 8, 4, 2)]
    assert res.cost.token_forwards == n * (8 * 4 + 8 * 9 + 4 * 25 + 2 * 64) * 2
    assert res.cost.verifier_calls == n * (8 + 4 + 2)  # features at the cluster step, scores after, final scores
    assert res.tokens.shape == (n, 102) and res.scores.shape == (n,)


def test_tts_var_default_schedule_on_the_bundled_model():
    """TTS-VAR's 8 -> 6 -> 4 -> 2 -> 1 at the clustering (2x2, 3x3) and resampling (4x4, 6x6) scales."""
    from arvision.bundled import bundled_model_dir
    from arvision.pipeline import ARPipeline

    pipe = ARPipeline.from_pretrained(bundled_model_dir())
    ctl = parse_search("tts-var")
    assert ctl.events(6) == ((1, 2), (3, 4)) and ctl.batches(6) == (8, 6, 4, 2, 1, 1)
    out = pipe([4, 9], generator=gens([0, 1]), search=ctl, output_type="pt")
    cost = out.stats["search"]
    # scales 1, 2, 3, 4, 6, 8 -> 1, 4, 9, 16, 36, 64 tokens, run with 8, 8, 6, 4, 2, 1 rows, doubled by guidance
    assert cost["token_forwards"] == 2 * (8 * 1 + 8 * 4 + 6 * 9 + 4 * 16 + 2 * 36 + 1 * 64) * 2
    assert cost["verifier_calls"] == 2 * (8 + 6 + 4 + 2 + 1)
    assert len(out.images) == 2 and out.images.shape[1:] == (3, 32, 32)


@pytest.mark.parametrize("name", [VAR4, VAR3, RASTER])
@pytest.mark.parametrize("spec", ["beam:2", "lookahead:2,expand=1", "tts-var:4", "bon:2"])
def test_controllers_run_their_schedule_and_return_one_image_per_label(name, spec):
    pipe = make_pipe(name)
    labels = [1, 2, 0]
    ctl = parse_search(spec)
    S = pipe.schedule.num_steps
    out = pipe(labels, generator=gens([3, 4, 5]), search=ctl, verifier=brightness, output_type="pt")
    assert out.images.shape[0] == 3 and out.class_labels == labels and out.tokens.shape == (3, pipe.schedule.length)
    options = pipe.sampling_options()
    res = search_generate(ctl, pipe.transformer, pipe.inputs, pipe.condition(labels), options, gens([3, 4, 5]),
                          brightness)
    assert res.batches == [3 * b for b in ctl.planned_batches(S)]
    assert torch.equal(res.tokens, out.tokens)  # deterministic, and the pipeline adds nothing
    per_token = 2 if options.guidance.doubles_batch else 1
    sizes = pipe.schedule.step_sizes
    expected = sum(b * n for b, n in zip(res.batches, sizes)) * per_token + res.cost.rollout_token_forwards
    assert res.cost.token_forwards == expected


def test_beam_keeps_the_best_partial_images():
    """After a scoring step the rows are the top-width rows by the verifier, each repeated expand times."""
    pipe = make_pipe(VAR4)
    seen, tokens = [], {}

    def recording(images, labels):
        seen.append(brightness(images, labels))
        return seen[-1]

    res = search_generate(BeamSearch(2, expand=3, steps=(1,)), pipe.transformer, pipe.inputs, pipe.condition([1]),
                          pipe.sampling_options(), gens([9]), recording,
                          on_step=lambda s, state, toks: tokens.setdefault(s, toks.clone()))
    assert len(seen) == 2 and seen[0].shape == (6,) and res.batches == [6, 6, 6, 6]
    top = seen[0].topk(2).indices.tolist()
    prefix = 4 + 9  # the tokens of steps 0 and 1, fixed when the beam was pruned
    expected = tokens[1][[top[0]] * 3 + [top[1]] * 3, :prefix]
    assert torch.equal(tokens[2][:, :prefix], expected)
    assert len({tuple(t.tolist()) for t in tokens[2][:, prefix:prefix + 25]}) == 6  # the repeats diverged
    assert res.scores.item() == pytest.approx(seen[1].max().item())
    assert torch.equal(res.tokens[0, :prefix], tokens[1][top[0], :prefix]) or \
        torch.equal(res.tokens[0, :prefix], tokens[1][top[1], :prefix])


def test_partial_decode_and_lookahead_leave_the_run_untouched():
    pipe = make_pipe(RASTER)
    run = run_of(pipe, [1, 2], gens([1, 2]))
    with run.context():
        run.start()
        for _ in range(4):  # 4 of 9 tokens known
            run.step()
        images = partial_decode(run)
        filled = run.tokens[:, :4][:, torch.arange(9) % 4]
        torch.testing.assert_close(images, pipe.inputs.finish(None, filled))
        before = (run.tokens.clone(), [t.clone() for t in run.cache.k], [g.get_state() for g in run.generator])
        from arvision.sampling.search import rollout_decode

        rolled, spent = rollout_decode(run)
        assert rolled.shape == images.shape and spent.token_forwards == 2 * 5 * 2
        assert torch.equal(run.tokens, before[0]) and all(map(torch.equal, run.cache.k, before[1]))
        assert all(torch.equal(g.get_state(), s) for g, s in zip(run.generator, before[2]))


def test_selection_rules():
    x = torch.tensor([[0.0, 0.0], [0.1, 0.0], [5.0, 5.0], [5.1, 5.0], [5.0, 5.2], [-7.0, 3.0]])
    picks = kmeans_medoids(x, 3)
    assert sorted(picks.tolist()) in ([0, 3, 5], [1, 3, 5], [0, 2, 5], [1, 2, 5], [0, 4, 5], [1, 4, 5])
    assert torch.equal(kmeans_medoids(x, 3), picks)  # deterministic
    assert len(set(kmeans_medoids(torch.zeros(5, 2), 3).tolist())) == 3  # identical points: still distinct rows
    g = torch.Generator().manual_seed(0)
    scores = torch.tensor([-3.0, -0.1, -2.0, -5.0])
    assert potential_resample(scores, 50, 1000.0, g).eq(1).all()  # a sharp potential keeps the best
    counts = torch.bincount(potential_resample(scores, 4000, 0.0, g), minlength=4)
    assert counts.min() > 850  # lam = 0: uniform


def test_classifier_verifier_scores_real_digits_by_their_label():
    from arvision.training.datasets import Mnist5k

    ds = Mnist5k(32)
    idx = [0, 600, 1100, 1700, 2300, 2600, 3200, 3700, 4100, 4800]
    images = torch.stack([ds[i][0] for i in idx]).expand(-1, 3, -1, -1)
    labels = torch.tensor([ds[i][1] for i in idx])
    ver = ClassifierVerifier()
    right = ver(images, labels)
    wrong = ver(images, (labels + 1) % 10)
    assert right.shape == (10,) and (right <= 0).all() and (right > wrong).all()
    assert ver.features(images).shape == (10, 128)
    with pytest.raises(ArvisionError, match="digits 0..9"):
        ver(images[:1], torch.tensor([10]))


@pytest.mark.parametrize("spec, message", [
    ("", "spec string"),
    ("bon", "needs its N"),
    ("bon:0", "positive"),
    ("bon:x", "integer"),
    ("beam", "needs its width"),
    ("beam:4,expand=0", "expand must be a positive"),
    ("beam:4,width=3", "unknown option 'width'"),
    ("beam:4,2", "cannot read '2'"),
    ("greedy:3", "unknown search 'greedy'"),
    ("tts-var:8,lam=-1", "lam must be >= 0"),
    ("tts-var:8,lam=x", "must be a number"),
    ("gridar:6", "multiple of 4"),
    ("gridar:0", "positive"),
    ("gridar:x", "integer"),
    ("gridar:4,stages=4", "among 1/2/3"),
    ("gridar:4,stages=", "among 1/2/3"),
    ("gridar:4,thr=high", "thr must be a number"),
    ("gridar:4,lam=2", "unknown option 'lam'"),
    ("gridar:4,8", "cannot read '8'"),
])
def test_bad_specs_are_explained(spec, message):
    with pytest.raises(ArvisionError, match=message):
        parse_search(spec)


def test_specs_parse_and_validate_against_the_model():
    assert parse_search("bon:8") == BestOfN(8)
    assert parse_search("beam:4") == BeamSearch(4, expand=2)
    assert parse_search("lookahead:3,expand=2,steps=2/1") == Lookahead(3, expand=2, steps=(1, 2))
    tts = parse_search("tts-var")
    assert isinstance(tts, TTSVAR) and tts.n == 8 and tts.lam == 10
    assert parse_search("tts-var,schedule=4/4/2/1").n == 4 and TTSVAR(schedule=(4, 4, 2, 1)).n == 4
    assert TTSVAR().n == 8 and TTSVAR().batches(6) == (8, 6, 4, 2, 1, 1)
    pipe = make_pipe(VAR4)
    for spec, message in [("beam:2,steps=3", "out of range"), ("tts-var,schedule=8/4", "4 steps"),
                          ("tts-var:8,cluster=1,resample=2,schedule=8/4/4/2", "step 3"),
                          ("tts-var:2,cluster=1,resample=2,schedule=2/4/2/2", "cannot grow")]:
        with pytest.raises(ArvisionError, match=message):
            pipe([0], search=spec, verifier=brightness)
    with pytest.raises(ArvisionError, match="only used by a search"):
        pipe([0], verifier=brightness)
    with pytest.raises(ArvisionError, match="token override"):
        pipe([0], search="bon:2", verifier=brightness, override=object())
    with pytest.raises(ArvisionError, match="10 classes"):
        pipe([0], search="bon:2")  # the default digit verifier on a 5-class model


def test_cli_search_on_the_bundled_model(tmp_path, capsys):
    rc = main(["sample", "--classes", "3", "8", "--seed", "2", "--search", "bon:2", "--out-dir", str(tmp_path)])
    out = capsys.readouterr().out
    assert rc == 0 and sorted(p.name for p in tmp_path.iterdir()) == ["00000_class3.png", "00001_class8.png"]
    # 2 labels x 2 candidates x 130 tokens x 2 (guidance)
    assert "search bon:2: 1040 token forwards (2.00x plain sampling), 4 verifier calls" in out
    rc = main(["sample", "--classes", "3", "--search", "beam:two", "--out-dir", str(tmp_path)])
    assert rc == 2 and "beam's count must be an integer" in capsys.readouterr().err
