"""Speculative Jacobi decoding (SJD, MC-SJD, GSD) as a decoding policy of the one loop.

Lossless rules must be lossless: greedy tokens equal plain decoding's exactly, and under sampling the joint
distribution of a whole (tiny) token sequence matches the one the model defines, by a chi-square test against
the exact probabilities enumerated with teacher forcing.  The same test rejects a lossy rule (GSD with a
large group), which shows it has the power to see a wrong sampler.
"""

from __future__ import annotations

import functools
import itertools

import pytest
import torch
from scipy import stats

from arvision.config import ModelConfig, TokenizerConfig, TransformerConfig
from arvision.errors import ArvisionError
from arvision.pipeline import ARPipeline
from arvision.sampling.loop import SamplingOptions, generate
from arvision.sampling.processors import Guidance, TokenSampling
from arvision.sampling.speculative import (
    GroupedAcceptance,
    JacobiDecoding,
    StandardAcceptance,
    parse_decoding,
    residual,
)
from test_consistency import make_pipe

VOCAB, GRID = 4, 2  # 4^4 = 256 possible sequences: small enough to enumerate


@functools.cache
def toy_pipe() -> ARPipeline:
    """A tiny raster model whose sequence distribution can be enumerated, peaked enough that drafts get accepted."""
    torch.manual_seed(0)
    tok = TokenizerConfig(kind="vq", vocab_size=VOCAB, embed_dim=8, z_channels=16, ch=32, ch_mult=(1, 1),
                          num_res_blocks=1, attn_style="split", quant_conv_ks=1, l2_norm=True)
    tr = TransformerConfig(block="llama", width=32, depth=2, num_heads=2, vocab_size=VOCAB, num_classes=2,
                           in_channels=8)
    pipe = ARPipeline(ModelConfig(family="llamagen", image_size=GRID * 2, tokenizer=tok, transformer=tr))
    with torch.no_grad():
        for p in pipe.transformer.parameters():
            p.copy_(torch.randn_like(p) * 0.5)
    return pipe


def exact_distribution(pipe: ARPipeline, label: int, guidance: Guidance, sampling: TokenSampling) -> torch.Tensor:
    """P(sequence) for all VOCAB**L sequences (in itertools.product order), by teacher forcing."""
    L = pipe.schedule.length
    seqs = torch.tensor(list(itertools.product(range(VOCAB), repeat=L)))
    N = seqs.shape[0]
    with torch.no_grad():
        cond = pipe.transformer(pipe.condition([label] * N), seqs[:, :-1], pipe.schedule)
        if guidance.doubles_batch:
            uncond = pipe.transformer(pipe.condition([label] * N).null(), seqs[:, :-1], pipe.schedule)
            cond = guidance.combine(cond, uncond, 0, L)
        logp = sampling.process(cond).log_softmax(-1).gather(-1, seqs[..., None])[..., 0]
    return logp.double().sum(-1).exp()


def sample_sequences(pipe, decoding, label, guidance, sampling, n: int, batch: int, seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n // batch):
        options = SamplingOptions(guidance, sampling, decoding=decoding)
        res = generate(pipe.transformer, pipe.inputs, pipe.condition([label] * batch), options, gen)
        out.append(res.tokens)
    return torch.cat(out)


def chi_square_p(samples: torch.Tensor, probs: torch.Tensor) -> float:
    """Goodness of fit of sampled sequences to ``probs``; cells with expected count < 5 are pooled."""
    index = (samples * (VOCAB ** torch.arange(samples.shape[1] - 1, -1, -1))).sum(-1)
    counts = torch.bincount(index, minlength=probs.numel()).double()
    expected = probs * samples.shape[0]
    small = expected < 5
    obs = torch.cat([counts[~small], counts[small].sum()[None]])
    exp = torch.cat([expected[~small], expected[small].sum()[None]])
    obs, exp = obs[exp > 0], exp[exp > 0]
    return float(stats.chisquare(obs.numpy(), exp.numpy() * obs.sum().item() / exp.sum().item()).pvalue)


SETTINGS = {
    "cfg1": (Guidance("constant", 1.0), TokenSampling(1.0, 0, 0.0, "descending")),
    "cfg3_topk3_temp": (Guidance("constant", 3.0), TokenSampling(0.9, 3, 0.0, "descending")),
}


@pytest.mark.parametrize("setting", list(SETTINGS))
@pytest.mark.parametrize("decoding", ["sjd", "mcsjd"])
def test_lossless_rules_preserve_the_sequence_distribution(decoding, setting):
    torch.set_num_threads(1)
    pipe = toy_pipe()
    guidance, sampling = SETTINGS[setting]
    probs = exact_distribution(pipe, 1, guidance, sampling)
    dec = parse_decoding(decoding, pipe)
    samples = sample_sequences(pipe, dec, 1, guidance, sampling, n=4000, batch=2, seed=11)
    assert chi_square_p(samples, probs) > 1e-3
    # drafts were accepted (otherwise this would only test plain decoding): fewer forwards than tokens
    assert len(dec.emitted) < pipe.schedule.length


def test_the_chi_square_test_rejects_a_lossy_rule():
    torch.set_num_threads(1)
    pipe = toy_pipe()
    guidance, sampling = SETTINGS["cfg1"]
    probs = exact_distribution(pipe, 1, guidance, sampling)
    lossy = JacobiDecoding(acceptance=GroupedAcceptance(size=VOCAB, prob_gap=1.0), name="gsd")
    samples = sample_sequences(pipe, lossy, 1, guidance, sampling, n=4000, batch=2, seed=11)
    assert chi_square_p(samples, probs) < 1e-6


@pytest.mark.parametrize("spec", ["sjd", "mcsjd", "gsd:3", "sjd:3", "mcsjd:5"])
@pytest.mark.parametrize("cfg", [1.0, 4.0])
def test_greedy_speculative_tokens_equal_plain_decoding(spec, cfg):
    pipe = make_pipe("llamagen_g5_w96h4")
    labels = [0, 1, 2, 0]
    plain = pipe(labels, guidance_scale=cfg, top_k=1, output_type="tokens")
    dec = parse_decoding(spec, pipe)
    out = pipe(labels, guidance_scale=cfg, top_k=1, output_type="tokens", decoding=dec)
    assert torch.equal(out.tokens, plain.tokens)
    assert out.stats["forwards"] == len(dec.emitted) and sum(dec.emitted) == pipe.schedule.length


def test_greedy_exact_in_float64_on_a_longer_sequence():
    """fp64 weights: batched-window and one-token forwards agree to ~1e-15, so near-ties cannot flip."""
    pipe = make_pipe("llamagen_g5_w96h4")
    tr = pipe.transformer.double()
    try:
        g, s = Guidance("constant", 2.0), TokenSampling(1.0, 1, 0.0, "descending")
        labels = pipe.condition([0, 1, 2, 1, 0, 2])
        plain = generate(tr, pipe.inputs, labels, SamplingOptions(g, s, dtype=torch.float64))
        dec = JacobiDecoding(window=8, coupled=True)
        fast = generate(tr, pipe.inputs, labels, SamplingOptions(g, s, dtype=torch.float64, decoding=dec))
        assert torch.equal(plain.tokens, fast.tokens)
    finally:
        tr.float()


def test_rejected_drafts_are_redrawn_from_the_residual():
    p = torch.tensor([[0.5, 0.3, 0.2, 0.0]])
    q = torch.tensor([[0.1, 0.6, 0.1, 0.2]])
    torch.testing.assert_close(residual(p, q), torch.tensor([[0.4, 0.0, 0.1, 0.0]]))
    torch.testing.assert_close(residual(p, p), p)  # nothing left: the target itself


def test_acceptance_probabilities_by_hand():
    p = torch.tensor([[[0.5, 0.3, 0.15, 0.05]]])
    q = torch.tensor([[[0.25, 0.25, 0.25, 0.25]]])
    x = torch.tensor([[2]])
    assert StandardAcceptance().probability(p, q, x).item() == pytest.approx(0.6)
    # group of 3 around x by target rank: tokens 3, 2, 1 (probabilities .05, .15, .3), all within 0.15 of p(x)?
    # |0.3-0.15| = 0.15 is not < 0.15, so the group is {3, 2}: P = 0.2, Q = 0.5
    assert GroupedAcceptance(size=3).probability(p, q, x).item() == pytest.approx(0.4)
    assert GroupedAcceptance(size=3, prob_gap=1.0).probability(p, q, x).item() == pytest.approx(0.5 / 0.75)
    assert GroupedAcceptance(size=1).probability(p, q, x).item() == pytest.approx(0.6)
    # a draft outside the filtered support is never accepted, though its group holds mass
    p0 = torch.tensor([[[0.6, 0.4, 0.0, 0.0]]])
    assert GroupedAcceptance(size=4, prob_gap=1.0).probability(p0, q, torch.tensor([[3]])).item() == 0.0


def test_gsd_with_group_one_equals_sjd():
    pipe = make_pipe("llamagen_g3_w64h2")
    runs = []
    for dec in (parse_decoding("sjd", pipe), parse_decoding("gsd:1", pipe)):
        runs.append(pipe([0, 1], top_k=0, output_type="tokens", generator=torch.Generator().manual_seed(3),
                         decoding=dec).tokens)
    assert torch.equal(*runs)


def test_specs_and_errors():
    pipe = make_pipe("llamagen_g3_w64h2")
    assert parse_decoding("plain", pipe) is None
    d = parse_decoding("gsd:5:8", pipe)
    assert d.window == 8 and d.acceptance.size == 5
    assert parse_decoding("mcsjd", pipe).coupled
    for bad in ("fast", "sjd:x", "sjd:0", "gsd:0", "gsd:1:2:3", "plain:3"):
        with pytest.raises(ArvisionError):
            parse_decoding(bad, pipe)
    with pytest.raises(ArvisionError, match="raster"):
        parse_decoding("sjd", make_pipe("var_pn124_w96h3_q0"))


def test_sample_and_bench_cli_take_decoding(tmp_path):
    import json
    import subprocess
    import sys

    pipe = make_pipe("llamagen_g3_w64h2")
    folder = pipe.save_pretrained(tmp_path / "m")
    cmd = [sys.executable, "-m", "arvision", "bench", str(folder), "--classes", "0", "1", "--warmup", "0",
           "--repeat", "1", "--json", "--top-k", "1", "--precision", "fp32"]

    def bench(*extra):
        done = subprocess.run(cmd + list(extra), capture_output=True, text=True, check=True)
        return json.loads(done.stdout.strip().splitlines()[-1])

    res, plain = bench("--decoding", "mcsjd:4"), bench()
    assert res["decoding"] == "mcsjd:4" and res["tokens_sha256"] == plain["tokens_sha256"]
    assert res["forwards_per_batch"] <= plain["forwards_per_batch"] == pipe.schedule.length
    out = subprocess.run([sys.executable, "-m", "arvision", "sample", str(folder), "--decoding", "sjdx",
                          "--out", str(tmp_path / "g.png")], capture_output=True, text=True)
    assert out.returncode != 0 and "unknown decoding" in out.stderr


