"""Infinity's bitwise family: the multi-scale BSQ tokenizer, the bitwise head and sampler, self-correction, and
parity with the official code through references that ``bench/infinity_reference.py`` makes from a local mirror of
the official code (the official ``MultiScaleBSQ``, ``BitwiseSelfCorrection.flip_requant``, the per-bit draw and the
sampling loop of ``infinity.py``), read from ``$ARVISION_INFINITY_REFERENCE`` (default ``runs/references/
infinity_tiny``).  They are not among the shipped vectors of ``../shared/vectors``: without them these tests skip
(never fail), saying how to make them.  Bits and inputs are compared exactly."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from arvision.config import ModelConfig, TokenizerConfig, TransformerConfig
from arvision.errors import ArvisionError
from arvision.pipeline import ARPipeline
from arvision.sampling.processors import TokenSampling
from arvision.tokenizers.bitwise import bits_to_codes, pack_bits, unpack_bits
from arvision.tokenizers.models import build_tokenizer

REFERENCE = Path(__file__).resolve().parents[1] / "runs" / "references" / "infinity_tiny"
PATCH_NUMS = (1, 2, 4)


def tiny_pipe(seed: int = 0, bits: int = 8) -> ARPipeline:
    """16 px images, 4x4 latent, scales 1, 2, 4 (21 tokens of ``bits`` bits), 3 classes."""
    torch.manual_seed(seed)
    tok = TokenizerConfig(kind="bsq", vocab_size=2 ** bits, embed_dim=bits, z_channels=bits, ch=32, ch_mult=(1, 1, 1),
                          num_res_blocks=1, patch_nums=PATCH_NUMS)
    tr = TransformerConfig(block="adaln", width=64, depth=2, num_heads=2, vocab_size=2 * bits, num_classes=3,
                           in_channels=bits)
    pipe = ARPipeline(ModelConfig(family="infinity", image_size=16, tokenizer=tok, transformer=tr))
    pipe.transformer.init_weights()
    return pipe


def bsq_tokenizer(bits: int, patch_nums) -> torch.nn.Module:
    cfg = TokenizerConfig(kind="bsq", vocab_size=2 ** bits, embed_dim=bits, z_channels=bits, ch=32, ch_mult=(1, 1),
                          num_res_blocks=1, patch_nums=tuple(patch_nums))
    return build_tokenizer(cfg)


# -- bits and configs ------------------------------------------------------------------------------------------------
def test_bits_pack_most_significant_first_and_round_trip():
    bits = torch.zeros(1, 5, dtype=torch.long)
    bits[0, 0] = 1
    assert pack_bits(bits).item() == 16  # the released int_label: bit 0 is the highest
    rand = torch.randint(0, 2, (3, 7, 40))
    assert torch.equal(unpack_bits(pack_bits(rand), 40), rand)


def test_bsq_config_is_checked():
    with pytest.raises(ArvisionError, match="2\\^embed_dim"):
        TokenizerConfig(kind="bsq", vocab_size=4096, embed_dim=8, z_channels=8, patch_nums=(1, 2))
    with pytest.raises(ArvisionError, match="at most 62"):
        TokenizerConfig(kind="bsq", vocab_size=2 ** 64, embed_dim=64, z_channels=64, patch_nums=(1, 2))
    pipe = tiny_pipe()
    bad = dict(pipe.config.to_dict())
    bad["transformer"] = {**bad["transformer"], "vocab_size": 256}
    with pytest.raises(ArvisionError, match="vocab sizes"):
        ModelConfig.from_dict(bad)


# -- the sampler and the teacher agree ------------------------------------------------------------------------------
def test_greedy_sampling_equals_teacher_forcing():
    """Bits drawn greedily per bit (top-k 1, no guidance) are the argmax of the teacher-forced logits on those very
    bits: the sampler's canvas and the trainer's inputs are the same code (BitCanvas.advance / teacher)."""
    pipe = tiny_pipe()
    out = pipe([0, 1, 2], guidance_scale=1.0, top_k=1, top_p=0.0, temperature=1.0,
               generator=torch.Generator().manual_seed(0))
    tokens = out.tokens
    from arvision.conditions import ClassCondition

    cond = ClassCondition(torch.tensor([0, 1, 2]), pipe.config.num_classes)
    with torch.no_grad():
        logits = pipe.transformer(cond, pipe.inputs.teacher(tokens), pipe.schedule)
    head = pipe.transformer.head
    greedy = pack_bits(head.pairs(logits).argmax(-1))
    assert torch.equal(greedy, tokens)
    assert head.hits(logits, tokens).min().item() == 1.0


def test_per_scale_guidance_and_options():
    pipe = tiny_pipe()
    g = pipe.family.guidance(3.0, pipe.schedule, {"cfg_list": (1.0, 2.0, 1.0)})
    cond, uncond = torch.randn(2, 4, 16), torch.randn(2, 4, 16)
    assert g.doubles_batch
    assert torch.equal(g.combine(cond, uncond, 0, 3), cond)
    assert torch.equal(g.combine(cond, uncond, 1, 3), 2.0 * cond + (1 - 2.0) * uncond)
    assert not pipe.family.guidance(1.0, pipe.schedule, {}).doubles_batch
    with torch.no_grad():  # weights far from their initialisation, so that the class matters
        for p in pipe.transformer.parameters():
            p.normal_(0, 0.3, generator=torch.Generator().manual_seed(p.numel()))
    with pytest.raises(ArvisionError, match="cfg_list must be 3 numbers"):
        pipe([0], cfg_list=[1.0, 2.0], generator=torch.Generator().manual_seed(0))
    a = pipe([0, 1], cfg_list=[1.0, 3.0, 3.0], generator=torch.Generator().manual_seed(5)).tokens
    b = pipe([0, 1], cfg_list=[1.0, 3.0, 3.0], generator=torch.Generator().manual_seed(5)).tokens
    c = pipe([0, 1], guidance_scale=1.0, generator=torch.Generator().manual_seed(5)).tokens
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert int(a.max()) < 2 ** 8


def test_save_load_round_trip_and_encode_decode(tmp_path):
    pipe = tiny_pipe(seed=3)
    pipe.save_pretrained(tmp_path / "m")
    again = ARPipeline.from_pretrained(tmp_path / "m")
    g = torch.Generator
    assert torch.equal(pipe([2], generator=g().manual_seed(1)).tokens, again([2], generator=g().manual_seed(1)).tokens)
    img = torch.rand(2, 3, 16, 16) * 2 - 1
    tokens = pipe.encode(img)
    assert tokens.shape == (2, 21) and tokens.dtype == torch.long
    # decoding the tokens is decoding the quantised canvas of the same image
    f = pipe.tokenizer.features(img)
    _, canvas = pipe.tokenizer.residual_quantize(f)
    assert torch.allclose(pipe.decode(tokens), pipe.tokenizer.decode_features(canvas).clamp(-1, 1), atol=1e-5)


def test_options_that_do_not_apply_say_so():
    from arvision.sampling.watermark import WatermarkSpec

    pipe = tiny_pipe()
    with pytest.raises(ArvisionError, match="each bit"):
        WatermarkSpec(key="k").processor(pipe)
    with pytest.raises(ArvisionError):
        pipe([0], more_smooth=True)
    caps = pipe.family.capabilities
    assert caps.progression and not caps.kv_policies and not caps.speculative_decoding and not caps.code_logits
    assert len(pipe([0], return_progression=True, generator=torch.Generator().manual_seed(0)).progression) == 3


def test_search_controllers_apply_best_of_n_picks_the_verifiers_best():
    """Best-of-N and beam search re-batch the run and score decoded images: nothing in them reads codebook logits,
    so they drive the bitwise family as they drive VAR."""
    from arvision.sampling.search import candidate_generators

    def brightness(images, labels):
        return images.float().mean((1, 2, 3)).cpu()

    pipe = tiny_pipe(seed=2)
    with torch.no_grad():  # weights far from their initialisation, so that candidates differ in brightness
        for p in pipe.transformer.parameters():
            p.normal_(0, 0.3, generator=torch.Generator().manual_seed(p.numel()))
    gens = [torch.Generator().manual_seed(s) for s in (4, 5)]
    out = pipe([0, 2], generator=gens, search="bon:4", verifier=brightness, output_type="pt")
    for i, (label, seed) in enumerate(zip([0, 2], (4, 5))):
        cands = pipe([label] * 4, generator=candidate_generators(torch.Generator().manual_seed(seed), 4),
                     output_type="pt")
        best = int(brightness(cands.images * 2 - 1, None).argmax())
        assert torch.equal(out.tokens[i], cands.tokens[best])
    beam = pipe([1], generator=[torch.Generator().manual_seed(0)], search="beam:2", verifier=brightness,
                output_type="pt")
    assert beam.tokens.shape == (1, 21)


@pytest.mark.parametrize("mode", ["cross", "prefix"])
def test_text_conditioning_through_the_registry(mode):
    """A prompt-conditioned Infinity model (``TextCondition``, the trunk's cross or prefix text mode) samples with
    guidance on a doubled batch of prompts and empty prompts."""
    vocab = ("a", "red", "blue", "circle", "square", "on", "the", "left", "right")
    tok = TokenizerConfig(kind="bsq", vocab_size=2 ** 8, embed_dim=8, z_channels=8, ch=32, ch_mult=(1, 1, 1),
                          num_res_blocks=1, patch_nums=PATCH_NUMS)
    tr = TransformerConfig(block="adaln", width=64, depth=2, num_heads=2, vocab_size=16, num_classes=1,
                           in_channels=8, condition="text", text_vocab=vocab, text_len=8, text_mode=mode)
    torch.manual_seed(0)
    pipe = ARPipeline(ModelConfig(family="infinity", image_size=16, tokenizer=tok, transformer=tr))
    pipe.transformer.init_weights()
    prompts = ["a red circle", "a blue square on the left"]
    a = pipe(prompts=prompts, guidance_scale=3.0, generator=torch.Generator().manual_seed(0))
    b = pipe(prompts=prompts, guidance_scale=3.0, generator=torch.Generator().manual_seed(0))
    assert a.tokens.shape == (2, 21) and torch.equal(a.tokens, b.tokens) and int(a.tokens.max()) < 256


# -- self-correction and training --------------------------------------------------------------------------------------
def test_self_correction_flips_requantise_the_later_scales():
    tok = bsq_tokenizer(16, (1, 2, 4, 8))
    grids = [(p, p) for p in (1, 2, 4, 8)]
    f = torch.randn(4, 16, 8, 8, generator=torch.Generator().manual_seed(0))
    clean_bits, clean_in = tok.self_correct(f, grids)
    bits, inputs = tok.self_correct(f, grids, flip_scales=2, strength=1.0, generator=torch.Generator().manual_seed(1))
    again, _ = tok.self_correct(f, grids, flip_scales=2, strength=1.0, generator=torch.Generator().manual_seed(1))
    assert all(torch.equal(a, b) for a, b in zip(bits, again))  # the flips come from the generator only
    # a flipped scale keeps its true target; its flipped codes feed the next step and the next scales' targets are
    # the signs of what the flipped canvas leaves of the features (they learn to correct the flips)
    assert torch.equal(bits[0], clean_bits[0]) and not torch.equal(inputs, clean_in)
    flipped0 = (inputs[:, 0] > 0).long()  # scale 0 is 1x1: step 1's input is its (flipped) code everywhere
    assert not torch.equal(flipped0, clean_bits[0][:, 0])
    canvas = bits_to_codes(flipped0)[:, :, None, None].expand(4, 16, 8, 8)
    expected = (F.interpolate(f - canvas, size=(2, 2), mode="area") > 0).long().flatten(2).transpose(1, 2)
    assert torch.equal(bits[1], expected) and not torch.equal(bits[1], clean_bits[1])
    assert [b.shape for b in bits] == [b.shape for b in clean_bits]


def test_training_on_synthetic_data_lowers_the_loss(tmp_path):
    from arvision.training.ar_trainer import ARTrainConfig, ARTrainer, tokenize_dataset

    pipe = tiny_pipe(seed=1)
    gen = torch.Generator().manual_seed(0)
    protos = torch.rand(3, 3, 16, 16, generator=gen) * 2 - 1  # one picture per class, slightly noised copies
    data = [((protos[i % 3] + 0.05 * torch.randn(3, 16, 16, generator=gen)).clamp(-1, 1), i % 3) for i in range(24)]
    latents, labels = tokenize_dataset(pipe, data, batch_size=12, progress=False)
    assert latents.ndim == 4  # self-correction quantises per step: latents are cached, not tokens
    cfg = ARTrainConfig(steps=30, batch_size=8, lr=3e-3, warmup_steps=3, label_drop=0.0, sample_every=1000,
                        ckpt_every=1000, self_correction=1, self_correction_strength=0.3)
    trainer = ARTrainer(pipe, latents, labels, cfg, tmp_path, progress=False)
    losses = [trainer.train_step()["loss"] for _ in range(30)]
    assert abs(losses[0] - math.log(2)) < 0.02  # a fresh head: every bit a coin flip (per-bit cross-entropy)
    assert sum(losses[-5:]) / 5 < 0.8 * sum(losses[:5]) / 5
    with pytest.raises(ArvisionError, match="self-correction"):
        var = ARPipeline.from_pretrained(tiny_var_folder(tmp_path))
        ARTrainer(var, torch.zeros(2, var.schedule.length, dtype=torch.long), torch.zeros(2, dtype=torch.long),
                  ARTrainConfig(self_correction=2), tmp_path / "v", progress=False)


def tiny_var_folder(tmp_path):
    from arvision.bundled import tiny_random_pipeline

    folder = tmp_path / "var"
    tiny_random_pipeline(seed=0).save_pretrained(folder)
    return folder


# -- parity with the official code ----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def case():
    folder = Path(os.environ.get("ARVISION_INFINITY_REFERENCE", REFERENCE))
    if not (folder / "cases.pt").is_file():
        pytest.skip(f"{folder / 'cases.pt'} not found: make it from a local mirror of FoundationVision/Infinity with "
                    f"`python bench/infinity_reference.py --out {folder}` (or set ARVISION_INFINITY_REFERENCE)")
    return json.loads((folder / "config.json").read_text()), torch.load(folder / "cases.pt")


def test_official_multiscale_bsq_bits(case):
    """The VAE quantiser (``MultiScaleBSQ.forward``): every scale's bits and the quantised output, exactly."""
    config, c = case
    tok = bsq_tokenizer(config["bits"], config["patch_nums"])
    bits, out = tok.residual_quantize(c["quant.f"])
    for s, b in enumerate(bits):
        ref = c[f"quant.bits.{s}"]
        assert torch.equal(b, ref.reshape(b.shape)), f"scale {s}"
    assert torch.equal(out, c["quant.out"])


def test_official_self_correction_chain(case):
    """``flip_requant`` without noise: the training targets of every scale and the inputs of steps 1..S-1."""
    config, c = case
    tok = bsq_tokenizer(config["bits"], config["patch_nums"])
    bits, inputs = tok.self_correct(c["quant.f"], [(p, p) for p in config["patch_nums"]])
    for s, b in enumerate(bits):
        assert torch.equal(b, c[f"bsc.bits.{s}"]), f"scale {s}"
    assert torch.equal(inputs, c["bsc.inputs"])


def test_official_per_bit_draw(case):
    """``BitwiseHead.choose`` draws the official function's bits from the same logits and generator."""
    config, c = case
    d = config["bits"]
    from arvision.models.heads import AdaLNHeadNorm, BitwiseHead

    head = BitwiseHead(AdaLNHeadNorm(8, 1e-6), 8, d)
    for i, setting in enumerate(config["draws"]):
        tokens = TokenSampling(1.0, setting["top_k"], setting["top_p"], "ascending")
        run = SimpleNamespace(options=SimpleNamespace(tokens=tokens), forced=lambda s: None,
                              generator=torch.Generator().manual_seed(int(c[f"draw.seed.{i}"])),
                              filtered=lambda logits, s, t=tokens: t.process(logits, s))
        ids, _ = head.choose(c[f"draw.logits.{i}"].clone(), 0, run)
        assert torch.equal(unpack_bits(ids, d), c[f"draw.bits.{i}"]), f"draw {i}: {setting}"


# -- the command line, end to end -----------------------------------------------------------------------------------
def test_cli_train_tokenizer_bsq_then_train_infinity_then_sample(tmp_path):
    """``train-tokenizer --quantizer bsq`` -> ``train`` (the family follows from the tokenizer: infinity) with
    self-correction -> ``sample``: every stage runs and writes what the next one reads."""
    import numpy as np
    from PIL import Image

    from arvision.cli import main

    data = tmp_path / "data"
    yy, xx = np.mgrid[0:16, 0:16] / 16
    for k, name in enumerate(("a", "b")):
        (data / name).mkdir(parents=True)
        for i in range(4):
            img = 127.5 * (1 + np.sin((xx + k * yy)[None] * (6 + i) + np.arange(3)[:, None, None]))
            Image.fromarray(img.transpose(1, 2, 0).astype(np.uint8)).save(data / name / f"{i}.png")
    common = ["--steps", "2", "--batch-size", "4", "--sample-every", "1000", "--ckpt-every", "1000", "--precision",
              "fp32", "--device", "cpu"]
    assert main(["train-tokenizer", "--data", str(data), "--out", str(tmp_path / "tok"), "--image-size", "16",
                 "--quantizer", "bsq", "--vocab", "256", "--code-dim", "8", "--ch", "32", "--ch-mult", "1,2",
                 "--patch-nums", "1,2,4,8", *common]) == 0
    assert main(["train", "--tokenizer", str(tmp_path / "tok"), "--data", str(data), "--out", str(tmp_path / "m"),
                 "--preset", "tiny", "--self-correction", "2", "--lr", "1e-3", "--warmup", "0", *common]) == 0
    config = json.loads((tmp_path / "m" / "config.json").read_text())
    assert config["family"] == "infinity" and config["transformer"]["vocab_size"] == 16
    assert main(["sample", str(tmp_path / "m"), "--classes", "0", "1", "--seed", "0", "--out",
                 str(tmp_path / "grid.png"), "--save-tokens", str(tmp_path / "tokens.safetensors")]) == 0
    from safetensors.torch import load_file

    saved = load_file(tmp_path / "tokens.safetensors")
    assert saved["step.3"].shape == (2, 64) and int(saved["step.3"].max()) < 256  # 8-bit ids of the 8x8 scale
    assert (tmp_path / "grid.png").is_file()


class StandInTrunk(torch.nn.Module):
    """The fixed affine trunk of ``bench/infinity_reference.py``'s ``StandIn``, in the interface the loop drives: a
    row's condition is E[label] (the null class E[-1]); step 0's hidden state is that row plus zeros (sos +
    pos_start), step s's is ``w_in @ input + b_in``; the block adds the condition; logits = ``w_out @ h + b_out``."""

    token_steps = False

    def __init__(self, c: dict, head):
        super().__init__()
        self.E, self.w_in, self.b_in, self.w_out, self.b_out = (c[f"loop.{k}"] for k in ("E", "w_in", "b_in",
                                                                                        "w_out", "b_out"))
        self.reference_weight, self.head = self.w_in, head

    def layout(self, schedule):
        return None

    def new_cache(self, rows, schedule, dtype=None, device=None, policy=None):
        return SimpleNamespace(peak_nbytes=0)

    def condition(self, rows):
        return self.E[rows.labels]

    def forward_step(self, s, cond, x_in, cache, layout):
        h = cond[:, None] + torch.zeros(1, 1, cond.shape[1]) if s == 0 else F.linear(x_in, self.w_in, self.b_in)
        return F.linear(h + cond[:, None], self.w_out, self.b_out)


def test_official_sampling_loop_bits_and_canvas(case):
    """arvision's one loop (``generate``) with Infinity's parts (per-scale guidance on the logits, the bitwise head's
    per-bit draw, BitCanvas) around the bench's stand-in trunk draws the official ``autoregressive_infer_cfg``'s
    bits at every scale and ends on its canvas, for guidance on every scale, per-scale guidance and greedy bits."""
    from arvision.conditions import ClassCondition
    from arvision.families.infinity import ScaleGuidance
    from arvision.inputs import BitCanvas
    from arvision.models.heads import AdaLNHeadNorm, BitwiseHead
    from arvision.sampling.loop import SamplingOptions, generate
    from arvision.schedules import ScaleSchedule

    config, c = case
    d, pns = config["bits"], config["patch_nums"]
    trunk = StandInTrunk(c, BitwiseHead(AdaLNHeadNorm(8, 1e-6), 8, d))
    schedule = ScaleSchedule.from_sides(pns)
    inputs = BitCanvas(bsq_tokenizer(d, pns), schedule)
    for i, loop in enumerate(config["loops"]):
        options = SamplingOptions(ScaleGuidance(tuple(loop["cfg_list"])),
                                  TokenSampling(1.0, loop["top_k"], loop["top_p"], "ascending"))
        res = generate(trunk, inputs, ClassCondition.of(loop["labels"], loop["classes"]), options,
                       torch.Generator().manual_seed(loop["seed"]))
        for s, ids in enumerate(schedule.split(res.tokens)):
            assert torch.equal(unpack_bits(ids, d), c[f"loop.{i}.bits.{s}"]), f"loop {i}, scale {s}"
        assert torch.equal(res.state, c[f"loop.{i}.canvas"]), f"loop {i}: canvas"
