"""GridAR on the one sampler: the verdict and copy rules, equality with best-of-N when nothing is impossible, the
copies' shared prefixes, the padding of the partial images, the cost, and the errors."""

from __future__ import annotations

import functools

import pytest
import torch

from arvision.cli import main
from arvision.config import ModelConfig, TokenizerConfig, TransformerConfig
from arvision.errors import ArvisionError
from arvision.pipeline import ARPipeline
from arvision.sampling.loop import fork_generator
from arvision.sampling.search import (
    GridAR,
    parse_search,
    possible_candidates,
    propagate_possible,
    search_generate,
)
from test_consistency import _perturb, make_pipe
from test_search import brightness, gens, one_thread, run_of  # noqa: F401 - one_thread: autouse fixture

GRID = 4  # a 4x4 raster grid: the stages fall after 1 and 2 of its 4 token rows (steps 3 and 7 of 16)
L = GRID * GRID


@functools.cache
def raster_pipe(classes: int = 3) -> ARPipeline:
    """A tiny random LlamaGen model on a 4x4 token grid (tests must not modify it)."""
    torch.manual_seed(0)
    tok = TokenizerConfig(kind="vq", vocab_size=50, embed_dim=8, z_channels=16, ch=32, ch_mult=(1, 1),
                          num_res_blocks=1, attn_style="split", quant_conv_ks=1, l2_norm=True)
    tr = TransformerConfig(block="llama", width=64, depth=2, num_heads=2, vocab_size=50, num_classes=classes,
                           in_channels=8)
    return _perturb(ARPipeline(ModelConfig(family="llamagen", image_size=2 * GRID, tokenizer=tok, transformer=tr)),
                    seed=1)


def search(pipe, ctl, labels, seeds, verifier, on_step=None):
    return search_generate(ctl, pipe.transformer, pipe.inputs, pipe.condition(labels), pipe.sampling_options(),
                           gens(seeds), verifier, on_step=on_step)


def recorder(steps):
    """on_step that keeps a copy of all rows' tokens after each step of ``steps``."""
    seen = {}

    def on_step(s, state, tokens):
        if s in steps:
            seen[s] = tokens.clone()
    return seen, on_step


class Scripted:
    """A verifier that returns the given scores call after call (then brightness), and keeps the images."""

    def __init__(self, *scores):
        self.scores, self.images = list(scores), []

    def __call__(self, images, labels):
        self.images.append(images.clone())
        k = len(self.images) - 1
        return torch.tensor(self.scores[k], dtype=torch.float) if k < len(self.scores) else brightness(images, labels)


# -- the rules --------------------------------------------------------------------------------------------------

def test_verdicts_and_the_copy_rule():
    binary = torch.tensor([[0.0, 1, 0, 0, 1, 0, 1, 0], [0, 0, 0, 0, 1, 1, 1, 1]])
    # below the group-of-4 mean = 0 on a 0/1 verifier; a group of zeros (nothing above its mean) moves nothing
    assert possible_candidates(binary).tolist() == [[False, True, False, False, True, False, True, False],
                                                    [True] * 8]
    assert torch.equal(possible_candidates(binary, thr=0.5), binary.bool())
    cont = torch.tensor([[0.5, 0.4, 0.45, -3.0], [3.0, 0.1, 0.1, 0.1], [2.0, 2.0, 2.0, 2.0],
                         [float("nan"), 1.0, float("-inf"), 0.0]])
    assert possible_candidates(cont).tolist() == [[True, True, True, False], [True, False, False, False],
                                                  [True] * 4, [False, True, False, False]]
    # round-robin over the possible rows of each group of 4; possible rows stay; no possible row: unchanged
    possible = torch.tensor([0, 1, 0, 0, 1, 0, 1, 0, 0, 0, 0, 0, 0, 1, 0, 1], dtype=torch.bool)
    assert propagate_possible(possible).tolist() == [1, 1, 1, 1, 4, 4, 6, 6, 8, 9, 10, 11, 13, 13, 15, 15]
    assert propagate_possible(torch.tensor([1, 0, 1, 0, 1, 0, 0, 0], dtype=torch.bool)).tolist() == \
        [0, 0, 2, 2, 4, 4, 4, 4]


def test_select_in_place_keeps_the_generator_of_a_row_at_its_own_index():
    pipe = raster_pipe()
    g = gens([1, 2, 3, 4])
    run = run_of(pipe, [0, 0, 0, 0], g)
    with run.context():
        run.start()
        run.select([1, 1, 2, 2], in_place=True)
    assert run.generator[1] is g[1] and run.generator[2] is g[2]  # the possible rows keep theirs
    assert torch.equal(run.generator[0].get_state(), fork_generator(g[1], 1).get_state())
    assert torch.equal(run.generator[3].get_state(), fork_generator(g[2], 1).get_state())
    run = run_of(pipe, [0, 0, 0, 0], g)
    with run.context():
        run.start()
        run.select([1, 1, 2, 2])  # default: the first copy keeps it
    assert run.generator[0] is g[1] and run.generator[2] is g[2] and run.generator[1] is not g[1]


# -- the search -------------------------------------------------------------------------------------------------

def test_nothing_impossible_is_best_of_n():
    """A threshold below every score calls every candidate possible: GridAR draws best-of-N's candidates and picks
    the same one; only the stages' decodes and verifier calls are added."""
    pipe = raster_pipe()
    labels, seeds, N = [2, 0], [5, 6], 8
    steps = {L - 1}
    bon_seen, bon_step = recorder(steps)
    grid_seen, grid_step = recorder(steps)
    bon = search(pipe, f"bon:{N}", labels, seeds, brightness, bon_step)
    grid = search(pipe, GridAR(N, thr=-2.0), labels, seeds, brightness, grid_step)  # brightness >= -1
    assert torch.equal(grid_seen[L - 1], bon_seen[L - 1])  # the same N candidates per label
    assert len({tuple(t.tolist()) for t in bon_seen[L - 1]}) == len(labels) * N
    assert torch.equal(grid.tokens, bon.tokens) and torch.equal(grid.scores, bon.scores)
    assert grid.cost.token_forwards == bon.cost.token_forwards
    assert grid.cost.verifier_calls == bon.cost.verifier_calls + 2 * len(labels) * N
    out = pipe(labels, generator=gens(seeds), search="gridar:8,thr=-2", verifier=brightness, output_type="tokens")
    assert torch.equal(out.tokens, bon.tokens)  # the pipeline and its spec string


def test_impossible_candidates_take_a_copy_of_a_possible_prefix():
    """Stage 1 (after the first row) marks candidates impossible: each is overwritten by a possible one of its group
    of 4, round-robin, and continues from that row with its own randomness; possible candidates and groups without
    a possible one continue exactly as in best-of-N."""
    pipe = raster_pipe()
    labels, seeds = [1, 2], [3, 4]
    stage1 = [0, 1, 0, 0, 1, 0, 1, 0,   # label 1: rows 0, 2, 3 <- 1; rows 5 <- 4, 7 <- 6
              0, 0, 0, 0, 0, 1, 0, 1]   # label 2: all impossible (unchanged); rows 4 <- 5, 6 <- 7
    source = [1, 1, 1, 1, 4, 4, 6, 6, 8, 9, 10, 11, 13, 13, 15, 15]
    verifier = Scripted(stage1, [1.0] * 16)  # stage 2: all possible
    seen, on_step = recorder({GRID - 1, L - 1})
    res = search(pipe, "gridar:8", labels, seeds, verifier, on_step)
    bon_seen, bon_step = recorder({L - 1})
    search(pipe, "bon:8", labels, seeds, brightness, bon_step)
    first, final, plain = seen[GRID - 1], seen[L - 1], bon_seen[L - 1]
    assert len(verifier.images) == 3 and all(x.shape[0] == 16 for x in verifier.images)
    for row, src in enumerate(source):
        assert torch.equal(final[row, :GRID], first[src, :GRID])  # the copied first row
        if src == row:
            assert torch.equal(final[row], plain[row])  # never touched: best-of-N's candidate
        else:
            assert torch.equal(final[row, :GRID], final[src, :GRID])
            assert not torch.equal(final[row, GRID:], final[src, GRID:])  # then its own draws
            assert not torch.equal(final[row, :GRID], plain[row, :GRID])
    best = torch.stack([brightness(verifier.images[2][8 * i:8 * i + 8], None).argmax() for i in range(2)])
    assert torch.equal(res.tokens, final[best + torch.tensor([0, 8])])


def test_partial_images_tile_the_known_rows():
    """At a stage the verifier sees the decode of the token map whose unknown rows repeat the known ones in turn
    (row r takes known row r mod k, the released `pad: repeat`), not zeros and not the last row repeated."""
    pipe = raster_pipe()
    verifier = Scripted()
    seen, on_step = recorder({GRID - 1, 2 * GRID - 1})
    search(pipe, "gridar:4", [0], [7], verifier, on_step)
    def decoded(tokens, order):
        """The token map whose row r is row order[r] of ``tokens`` (B, L), decoded."""
        return pipe.inputs.finish(None, tokens.view(-1, GRID, GRID)[:, order].reshape(-1, L))

    for images, s, k in ((verifier.images[0], GRID - 1, 1), (verifier.images[1], 2 * GRID - 1, 2)):
        torch.testing.assert_close(images, decoded(seen[s], [r % k for r in range(GRID)]))
        zeros = seen[s].clone()
        zeros[:, k * GRID:] = 0
        assert not torch.allclose(images, pipe.inputs.finish(None, zeros))
        if k == 2:
            assert not torch.allclose(images, decoded(seen[s], [0, 1, 1, 1]))  # repeat-last would differ


@pytest.mark.parametrize("spec, stages", [("gridar:4", 2), ("gridar:8,stages=2", 1), ("gridar:4,stages=1/2/3", 3)])
def test_costs_are_counted_exactly(spec, stages):
    pipe = raster_pipe()
    n, N = 2, parse_search(spec).n
    options = pipe.sampling_options()
    assert options.guidance.doubles_batch  # LlamaGen's default guidance 2: conditional + unconditional rows
    res = search(pipe, spec, [0, 1], [1, 2], brightness)
    cost = res.cost
    assert cost.token_forwards == n * N * L * 2 and cost.plain_token_forwards == n * L * 2
    assert cost.forwards == L and cost.rollout_token_forwards == 0
    assert cost.verifier_calls == cost.decoder_calls == n * N * (stages + 1)
    assert res.batches == [n * N] * L and cost.plain_equivalents == N


def test_text_to_image_raster_model():
    """Prompts reach the verifier as the labels; the chosen image is the verifier's best final candidate."""
    from test_text_condition import text_pipe

    pipe = text_pipe("llamagen")  # 8x8 tokens: stages after 2 and 4 rows
    assert GridAR(4).stage_steps(pipe.schedule) == {15: 2, 31: 4}
    calls = []

    def red(images, prompts):
        calls.append(list(prompts))
        return (images[:, 0] > images[:, 1]).float().mean((1, 2)).gt(0.5).float()  # a 0/1 stand-in oracle

    out = pipe(prompts=["a red circle", "a blue square"], generator=gens([1, 2]), search="gridar:4", verifier=red,
               output_type="pt")
    assert len(calls) == 3 and calls[0] == ["a red circle"] * 4 + ["a blue square"] * 4
    assert out.images.shape[0] == 2 and out.stats["search"]["verifier_calls"] == 24


# -- errors -----------------------------------------------------------------------------------------------------

def test_specs_parse():  # the bad gridar specs are in test_search.py's test_bad_specs_are_explained
    assert parse_search("gridar") == GridAR(4, stages=(1, 2))
    assert parse_search("gridar:8,thr=0.5,stages=2") == GridAR(8, thr=0.5, stages=(2,))
    assert GridAR(8, thr=0.5, stages=(2,)).spec() == "gridar:8,thr=0.5,stages=2"


def test_models_gridar_cannot_search_are_refused():
    var = make_pipe("var_pn2358_w96h3_q1")
    with pytest.raises(ArvisionError, match="gridar searches raster models.*VAR models predict whole maps"):
        var([0], search="gridar:4", verifier=brightness)
    with pytest.raises(ArvisionError, match="gridar searches raster models"):
        search_generate("gridar:4", var.transformer, var.inputs, var.condition([0]), var.sampling_options(),
                        gens([0]), brightness)
    with pytest.raises(ArvisionError, match="after 0/1 of this model's 3 rows"):
        make_pipe("llamagen_g3_w64h2")([0], search="gridar:4", verifier=brightness)
    make_pipe("llamagen_g3_w64h2")([0], search="gridar:4,stages=2/3", verifier=brightness)  # rows 1 and 2 fit


def test_cli(tmp_path, tiny_model, capsys):
    folder = tmp_path / "raster"
    raster_pipe(classes=10).save_pretrained(folder)
    rc = main(["sample", str(folder), "--classes", "3", "8", "--seed", "2", "--search", "gridar:4",
               "--out-dir", str(tmp_path / "out")])
    out = capsys.readouterr().out
    assert rc == 0 and len(list((tmp_path / "out").iterdir())) == 2
    # 2 labels x 4 candidates x 16 tokens x 2 (guidance); the digit classifier scores 8 images at 2 stages + the end
    assert "search gridar:4,stages=1/2: 256 token forwards (4.00x plain sampling), 24 verifier calls" in out
    assert main(["sample", str(tiny_model), "--classes", "3", "--search", "gridar:4", "--out-dir",
                 str(tmp_path / "var")]) == 2
    err = capsys.readouterr().err
    assert "gridar searches raster models" in err and len(err.strip().splitlines()) == 1
    assert main(["sample", str(folder), "--classes", "3", "--search", "gridar:6", "--out-dir", str(tmp_path)]) == 2
    assert "multiple of 4" in capsys.readouterr().err
