"""MaskGIT (masked iterations over one VQ token map) proved by invariants, since no official PyTorch code exists to
be token-exact against (the official sampler is JAX): the reveal counts follow the cosine schedule exactly; with a
greedy draw, no choice noise and one iteration per token the sampler is a one-token-at-a-time greedy decoder over
the training forward (in Halton order, or most-confident-first); masked positions never leak into the loss or the
input; training lowers the loss; a seed fixes the images; guidance combines the null class; options that do not
apply are refused in one line; the plug-ins that do apply (editing, watermark, search) work; the CLI trains and
samples a model end to end."""

from __future__ import annotations

import math

import pytest
import torch

from arvision.conditions import ClassCondition
from arvision.config import ModelConfig, TokenizerConfig, TransformerConfig
from arvision.errors import ArvisionError
from arvision.families import get_family
from arvision.families.maskgit import MaskSchedule
from arvision.pipeline import ARPipeline
from arvision.sampling.loop import generate
from arvision.sampling.masked import halton_order, masked_counts
from arvision.training.ar_trainer import ARTrainConfig, ARTrainer, weighted_mean
from conftest import random_image_folder

V, CLASSES, SIDE = 32, 4, 4  # a 4 x 4 token grid: N = 16


def tiny_pipe(seed: int = 0, side: int = SIDE) -> ARPipeline:
    torch.manual_seed(seed)
    tok = TokenizerConfig(kind="vq", vocab_size=V, embed_dim=8, z_channels=16, ch=32, ch_mult=(1, 1),
                          num_res_blocks=1, attn_style="split", quant_conv_ks=1, l2_norm=True)
    tr = TransformerConfig(block="adaln", width=64, depth=2, num_heads=2, vocab_size=V, num_classes=CLASSES,
                           in_channels=8)
    pipe = ARPipeline(ModelConfig(family="maskgit", image_size=2 * side, tokenizer=tok, transformer=tr))
    pipe.transformer.init_weights()
    with torch.no_grad():  # the recipe's near-zero head and AdaLN gammas: give the model opinions to test
        for p in pipe.transformer.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    pipe.transformer.eval()
    return pipe


@pytest.fixture(scope="module")
def pipe():
    return tiny_pipe()


def canvases(pipe, labels, **options) -> list[torch.Tensor]:
    """The canvas (B, N) after every iteration of one call."""
    seen = []
    schedule = pipe.sampling_schedule(**{k: v for k, v in options.items() if k == "iterations"})
    opts = pipe.sampling_options(schedule=schedule, **options)
    inputs = pipe.family.input_builder(pipe.tokenizer, schedule)
    cond = ClassCondition.of(labels, CLASSES)
    generate(pipe.transformer, inputs, cond, opts, torch.Generator().manual_seed(0),
             on_step=lambda s, state, tokens: seen.append(tokens.clone()))
    return seen


# -- the schedule --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("iterations", [1, 3, 8, 12])
@pytest.mark.parametrize("order", ["confidence", "halton"])
def test_tokens_revealed_per_iteration_follow_the_cosine_schedule_exactly(pipe, iterations, order):
    N = SIDE * SIDE
    steps = canvases(pipe, [0, 1, 2], iterations=iterations, order=order)
    assert len(steps) == iterations
    previous = torch.full((3, N), V)
    for t, canvas in enumerate(steps):
        # after iteration t, floor(N cos(pi/2 (t+1)/T)) positions are still masked (none after the last), but each
        # iteration reveals at least one (binds at T = 12: the cosine keeps 15 of 16 masked after both t = 0 and 1)
        expected = 0 if t == iterations - 1 else math.floor(N * math.cos(math.pi / 2 * (t + 1) / iterations))
        expected = min(expected, int((previous[0] == V).sum()) - 1)
        assert ((canvas == V).sum(1) == expected).all(), (t, canvas)
        # a revealed token is never masked again nor changed
        known = previous != V
        assert torch.equal(canvas[known], previous[known])
        previous = canvas
    assert (previous < V).all()


def test_counts_clamp_to_one_token_per_iteration_and_refuse_more_iterations_than_tokens():
    assert masked_counts(16, 16) == tuple(range(15, -1, -1))  # the cosine would reveal none at some iterations
    for n, T in [(16, 8), (256, 8), (256, 32), (10, 9), (5, 5)]:
        c = (n, *masked_counts(n, T))
        assert c[-1] == 0 and all(a - b >= 1 for a, b in zip(c, c[1:]))
    s = MaskSchedule.of_grid(4, iterations=5)
    assert sum(s.step_sizes) == s.length == 16 and s.masked_after == masked_counts(16, 5)
    assert s.begin_ends == s.input_spans == ((0, 16),) * 5 and s.visible().all()
    with pytest.raises(ArvisionError, match=r"iterations must be an integer in \[1, 16\]"):
        MaskSchedule.of_grid(4, iterations=17)


def test_halton_order_visits_every_cell_once_spread_over_the_grid():
    order = halton_order(16, 16)
    assert sorted(order) == list(range(256))
    # the first 16 cells (raster order: one row) lie in 16 distinct rows, pairwise at least 2 cells apart
    first = [(i // 16, i % 16) for i in order[:16]]
    assert len({r for r, _ in first}) == 16
    assert min(max(abs(a - c), abs(b - d)) for i, (a, b) in enumerate(first) for c, d in first[i + 1:]) >= 2


# -- the greedy limit ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("order", ["halton", "confidence"])
def test_greedy_one_token_per_iteration_is_a_one_at_a_time_greedy_decoder(pipe, order):
    """top-k 1 (the argmax draw) or temperature -> 0, choice temperature 0, T = N: each iteration reveals one token,
    the argmax at the next Halton cell (a fixed order) or at the cell whose argmax is most probable; the reference
    runs the training forward (``transformer(cond, canvas, schedule)``) on the growing canvas."""
    labels, N = [0, 3], SIDE * SIDE
    out = pipe(labels, generator=torch.Generator().manual_seed(5), output_type="tokens", top_k=1,
               iterations=N, choice_temperature=0.0, order=order).tokens
    schedule = MaskSchedule.of_grid(SIDE, iterations=N)
    cond = ClassCondition.of(labels, CLASSES)
    canvas = torch.full((2, N), V)
    with torch.no_grad():
        for _ in range(N):
            logp = pipe.transformer(cond, canvas, schedule).log_softmax(-1)  # (B, N, V)
            best, ids = logp.max(-1)
            for b in range(2):
                if order == "halton":
                    pos = next(p for p in halton_order(SIDE, SIDE) if canvas[b, p] == V)
                else:
                    pos = int(best[b].masked_fill(canvas[b] != V, -math.inf).argmax())
                canvas[b, pos] = ids[b, pos]
    assert torch.equal(out, canvas)
    # temperature -> 0 (the smallest the filters take) is the same decoder as the argmax draw
    cold = pipe(labels, generator=torch.Generator().manual_seed(6), output_type="tokens", temperature=1e-5,
                iterations=N, choice_temperature=0.0, order=order).tokens
    assert torch.equal(cold, canvas)


# -- training ------------------------------------------------------------------------------------------------------
def test_masked_positions_never_leak_into_the_input_or_the_loss(pipe):
    inputs, N = pipe.inputs, SIDE * SIDE
    tokens = torch.randint(0, V, (64, N), generator=torch.Generator().manual_seed(0))
    x_in, w = inputs.training_inputs(tokens, torch.Generator().manual_seed(1))
    masked = w.bool()
    assert masked.any(1).all() and torch.equal(x_in[masked], torch.full_like(x_in[masked], V))
    assert torch.equal(x_in[~masked], tokens[~masked])
    # other targets at the masked positions: the same input (the canvas says nothing about what it hides)
    other = torch.where(masked, (tokens + 1) % V, tokens)
    x_other, w_other = inputs.training_inputs(other, torch.Generator().manual_seed(1))
    assert torch.equal(x_other, x_in) and torch.equal(w_other, w)
    # the loss: other targets at the unmasked positions change nothing, and no gradient reaches their logits
    cond = ClassCondition.of(torch.arange(64) % CLASSES, CLASSES)
    logits = pipe.transformer(cond, x_in, pipe.schedule).detach().requires_grad_(True)
    loss = weighted_mean(pipe.transformer.head.loss(logits, tokens), w)
    loss.backward()
    assert (logits.grad[~masked] == 0).all() and (logits.grad[masked] != 0).any(-1).all()
    shuffled = torch.where(masked, tokens, (tokens + 7) % V)
    assert torch.equal(weighted_mean(pipe.transformer.head.loss(logits, shuffled), w), loss)


def test_mask_ratio_is_drawn_from_the_cosine_schedule():
    pipe, N = tiny_pipe(), SIDE * SIDE
    tokens = torch.zeros(20000, N, dtype=torch.long)
    _, w = pipe.inputs.training_inputs(tokens, torch.Generator().manual_seed(0))
    ratio = w.sum(1) / N
    # ceil(N cos(pi/2 u)) / N: mean between E[cos(pi/2 u)] = 2/pi and that plus 1/N; P(ratio <= 1/2) = P(u >= 2/3)
    assert 2 / math.pi < ratio.mean() < 2 / math.pi + 1 / N
    assert abs((ratio <= 0.5).float().mean() - 1 / 3) < 0.02 and ratio.min() >= 1 / N


def test_training_lowers_the_masked_token_loss(tmp_path):
    pipe = tiny_pipe(seed=1)
    N = SIDE * SIDE
    labels = torch.arange(16) % CLASSES
    # a learnable synthetic set: each class is one fixed token map, with one random token changed per image
    maps = torch.randint(0, V, (CLASSES, N), generator=torch.Generator().manual_seed(0))
    tokens = maps[labels].clone()
    tokens[torch.arange(16), torch.arange(16) % N] = torch.randint(0, V, (16,), generator=torch.Generator())

    def held_out_loss():
        x_in, w = pipe.inputs.training_inputs(tokens, torch.Generator().manual_seed(123))
        with torch.no_grad():
            logits = pipe.transformer(ClassCondition.of(labels, CLASSES), x_in, pipe.schedule)
        return weighted_mean(pipe.transformer.head.loss(logits, tokens), w).item()

    before = held_out_loss()
    cfg = ARTrainConfig(steps=25, batch_size=16, lr=3e-3, warmup_steps=0, label_drop=0.0, log_every=100,
                        sample_every=1000, ckpt_every=1000, precision="fp32")
    trainer = ARTrainer(pipe, tokens, labels, cfg, tmp_path, progress=False)
    assert "inputs" in trainer.generators()  # the masking's generator is checkpointed with the others
    for _ in range(25):
        trainer.train_step()
    pipe.transformer.eval()
    after = held_out_loss()
    assert after < 0.5 * before, (before, after)


def test_a_resumed_run_masks_as_an_uninterrupted_one(tmp_path):
    """The masking's generator is checkpointed: 3 + 3 steps with a resume in between end with the weights of 6."""
    tokens = torch.randint(0, V, (16, SIDE * SIDE), generator=torch.Generator().manual_seed(0))
    labels = torch.arange(16) % CLASSES
    cfg = ARTrainConfig(steps=6, batch_size=8, lr=2e-3, warmup_steps=1, log_every=1, sample_every=100,
                        ckpt_every=3, precision="fp32")

    def run(out, stop_after=None, resume=False, scramble=False):
        pipe = tiny_pipe(seed=2)
        if scramble:  # every weight and the global RNG must come from the checkpoint
            torch.manual_seed(99)
            with torch.no_grad():
                for p in pipe.transformer.parameters():
                    p.normal_()
        ARTrainer(pipe, tokens, labels, cfg, out, progress=False).train(resume=resume, stop_after=stop_after)
        return pipe.transformer.state_dict()

    want = run(tmp_path / "full")
    run(tmp_path / "split", stop_after=3)
    got = run(tmp_path / "split", resume=True, scramble=True)
    assert all(torch.equal(want[k], got[k]) for k in want)


# -- sampling ------------------------------------------------------------------------------------------------------
def test_sampling_is_deterministic_per_seed_and_per_image_generators_ignore_the_batch(pipe):
    def toks(seed, labels=(0, 1, 2), **kw):
        return pipe(list(labels), generator=torch.Generator().manual_seed(seed), output_type="tokens", **kw).tokens

    assert torch.equal(toks(3), toks(3)) and not torch.equal(toks(3), toks(4))
    assert torch.equal(toks(3, order="halton"), toks(3, order="halton"))
    gens = [torch.Generator().manual_seed(10 + i) for i in range(3)]
    batch = pipe([0, 1, 2], generator=gens, output_type="tokens").tokens
    alone = pipe([1], generator=[torch.Generator().manual_seed(11)], output_type="tokens").tokens
    assert torch.equal(batch[1:2], alone)


def test_guidance_combines_the_class_and_the_null_class(pipe):
    """The guided logits of the first iteration are u + w (c - u) of the training forward on the all-masked canvas,
    with the null class as u; at scale 1 the batch is not doubled."""
    seen = {}

    def spy(logits, s, run):
        seen.setdefault(s, logits.clone())
        return logits

    labels, w = [1, 2], 3.0
    out = pipe(labels, generator=torch.Generator().manual_seed(0), output_type="tokens", guidance_scale=w,
               processors=[spy])
    N, T = SIDE * SIDE, pipe.schedule.num_steps
    canvas = torch.full((2, N), V)
    with torch.no_grad():
        c = pipe.transformer(ClassCondition.of(labels, CLASSES), canvas, pipe.schedule)
        u = pipe.transformer(ClassCondition.of([CLASSES, CLASSES], CLASSES), canvas, pipe.schedule)
    torch.testing.assert_close(seen[0], u + w * (c - u), atol=1e-5, rtol=1e-5)
    assert out.stats["token_forwards"] == T * 4 * N
    plain = pipe(labels, generator=torch.Generator().manual_seed(0), output_type="tokens", guidance_scale=1.0)
    assert plain.stats["token_forwards"] == T * 2 * N and not torch.equal(plain.tokens, out.tokens)


def test_options_that_do_not_apply_are_refused_in_one_line(pipe):
    caps = get_family("maskgit").capabilities
    assert not (caps.speculative_decoding or caps.kv_policies or caps.token_step or caps.row_prefixes)
    cases = [dict(decoding="sjd"), dict(kv_policy="scalekv:0.1"), dict(patch_nums=(1, 2)), dict(search="gridar:2"),
             dict(iterations=0), dict(iterations=17), dict(order="random"), dict(choice_temperature=-1.0),
             dict(more_smooth=True), dict(cfg_interval=3)]
    for kw in cases:
        with pytest.raises(ArvisionError) as err:
            pipe([0], generator=torch.Generator().manual_seed(0), output_type="tokens", **kw)
        assert "\n" not in str(err.value) and str(err.value), kw
    with pytest.raises(ArvisionError, match="no official PyTorch checkpoints"):
        pipe.official_state_dicts()


# -- the plug-ins that apply ---------------------------------------------------------------------------------------
def test_editing_keeps_the_source_tokens_and_regenerates_the_rest(pipe):
    from arvision.sampling.editing import EditOverride

    N = SIDE * SIDE
    source = torch.randint(0, V, (2, N), generator=torch.Generator().manual_seed(0))
    keep = torch.zeros(2, N, dtype=torch.bool)
    keep[:, : N // 2] = True  # the top half kept, the bottom half regenerated
    steps = canvases(pipe, [0, 1], override=EditOverride(source, keep))
    assert all(torch.equal(c[keep], source[keep]) for c in steps)
    # the free half follows the schedule of its own M = N/2 positions
    for t, c in enumerate(steps):
        assert ((c == V).sum(1) == masked_counts(N // 2, pipe.schedule.num_steps)[t]).all()
    assert (steps[-1] < V).all()


def test_the_watermark_processor_biases_every_iterations_draws(pipe):
    from arvision.sampling.watermark import WatermarkSpec

    spec = WatermarkSpec("key", hard=True, pool=1)
    out = pipe([0, 1, 2, 3], generator=torch.Generator().manual_seed(0), output_type="tokens",
               processors=[spec.processor(pipe)])
    green = spec.lists(V)[0]
    assert green[out.tokens].all()  # hard mode: only green codes, at every position whatever the iteration
    # leaving the first iterations unbiased cannot be detected: their tokens are anywhere on the map
    with pytest.raises(ArvisionError, match="start step 2 needs steps whose tokens sit at fixed positions"):
        WatermarkSpec("key", start_step=2).processor(pipe)


def test_search_controllers_run_on_the_previews_and_count_a_plain_call_as_t_full_maps(pipe):
    def verifier(images, labels):
        return images.mean(dim=(1, 2, 3))  # brighter is better: any deterministic score

    N, T = SIDE * SIDE, pipe.schedule.num_steps
    for search in ("bon:2", "beam:2", "lookahead:2", "tts-var:4"):
        out = pipe([0, 1], generator=[torch.Generator().manual_seed(i) for i in range(2)], search=search,
                   verifier=verifier, output_type="tokens")
        assert out.tokens.shape == (2, N) and (out.tokens < V).all()
        assert out.stats["search"]["plain_token_forwards"] == 2 * T * N  # every iteration runs the whole map
    best = pipe([0, 1], generator=[torch.Generator().manual_seed(i) for i in range(2)], search="bon:1",
                verifier=verifier, output_type="tokens")
    plain = pipe([0, 1], generator=[torch.Generator().manual_seed(i) for i in range(2)], output_type="tokens")
    assert best.stats["search"]["plain_equivalents"] == 1.0 and best.tokens.shape == plain.tokens.shape


def test_the_progression_shows_every_iterations_canvas_with_its_draws(pipe):
    out = pipe([0], generator=torch.Generator().manual_seed(0), return_progression=True, output_type="pt")
    assert len(out.progression) == pipe.schedule.num_steps
    torch.testing.assert_close(out.progression[-1], out.images)  # the last canvas is the image


def test_the_web_demo_streams_every_iteration_with_its_revealed_count(tmp_path):
    from arvision.serve import handlers
    from arvision.serve.handlers import SampleForm
    from arvision.serve.models import ServedModel

    tiny_pipe().save_pretrained(tmp_path / "m")
    m = ServedModel(str(tmp_path / "m"), ARPipeline.from_pretrained(tmp_path / "m"))
    gen, previews = handlers.generate(m, SampleForm(classes=(1,), seed=2), tmp_path), []
    while True:
        try:
            previews.append(next(gen))
        except StopIteration:
            break
    N, T = SIDE * SIDE, m.pipe.schedule.num_steps
    every = max(1, T // SIDE)  # the page's rule: at most one preview per row of the grid
    revealed = [N - c for c in masked_counts(N, T)]
    assert [p.caption for p in previews] == [f"step {t + 1}/{T}: {k}/{N} tokens" for t, k in enumerate(revealed)
                                             if (t + 1) % every == 0 or t == T - 1]


# -- the command line ----------------------------------------------------------------------------------------------
def test_cli_train_then_sample_end_to_end(tmp_path, capsys):
    from safetensors.torch import load_file

    from arvision.cli import main
    from arvision.tokenizers.models import build_tokenizer
    from arvision.training.tokenizer_trainer import save_tokenizer_folder

    size = 8
    data = random_image_folder(tmp_path / "data", size)
    torch.manual_seed(0)
    tok_cfg = TokenizerConfig(kind="vq", vocab_size=V, embed_dim=8, z_channels=16, ch=32, ch_mult=(1, 1),
                              num_res_blocks=1, attn_style="split", quant_conv_ks=1, l2_norm=True)
    tok = save_tokenizer_folder(tmp_path / "tok", build_tokenizer(tok_cfg), size)
    model = tmp_path / "model"
    assert main(["train", "--tokenizer", str(tok), "--data", str(data), "--out", str(model), "--family", "maskgit",
                 "--preset", "tiny", "--steps", "3", "--batch-size", "4", "--lr", "1e-3", "--warmup", "0",
                 "--ckpt-every", "3", "--sample-every", "1000", "--precision", "fp32", "--device", "cpu"]) == 0
    saved = tmp_path / "tokens.safetensors"
    assert main(["sample", str(model), "--classes", "0", "1", "--seed", "0", "--iterations", "4", "--order",
                 "halton", "--out", str(tmp_path / "grid.png"), "--save-tokens", str(saved)]) == 0
    toks = load_file(saved)["tokens"]
    assert toks.shape == (2, (size // 2) ** 2) and (toks < V).all() and (tmp_path / "grid.png").is_file()
    capsys.readouterr()
    assert main(["sample", str(model), "--classes", "0", "--decoding", "sjd"]) != 0
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 1 and err[0].startswith("error: ")
