"""Linear layers packed once for oneDNN (``pipe.pack_weights``, ``--weights packed``, the ``auto`` path on CPUs
without fast bf16): the same arithmetic as ``F.linear`` within rounding, the same sampled tokens."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from arvision.errors import ArvisionError
from arvision.models.packed import PackedLinear, packing_available
from arvision.models.quantized import linear_dtype
from test_consistency import make_pipe

pytestmark = pytest.mark.skipif(not packing_available(torch.float32),
                                reason="this PyTorch build has no oneDNN (mkldnn) to pack weights for")


def test_packed_linear_is_f_linear_within_rounding():
    torch.manual_seed(0)
    lin = nn.Linear(96, 160)
    p = PackedLinear.from_linear(lin)
    assert linear_dtype(p) == torch.float32 and p.packed.shape == lin.weight.shape
    for shape in [(2, 96), (2, 1, 96), (3, 7, 96), (64, 96)]:  # raster steps, VAR scales, a whole batch
        x = torch.randn(*shape)
        y = p(x)
        assert y.shape == (*shape[:-1], 160)
        torch.testing.assert_close(y, nn.functional.linear(x, lin.weight, lin.bias), atol=1e-5, rtol=1e-5)
    # a per-call bias replaces the layer's own (VAR's q/k/v biases); none at all also works
    x, other = torch.randn(2, 5, 96), torch.randn(160)
    torch.testing.assert_close(p(x, other), nn.functional.linear(x, lin.weight, other), atol=1e-5, rtol=1e-5)
    nobias = PackedLinear(lin.weight, None)
    torch.testing.assert_close(nobias(x), nn.functional.linear(x, lin.weight), atol=1e-5, rtol=1e-5)
    assert "oneDNN-packed" in repr(p)


@pytest.mark.parametrize("name", ["var_pn124_w96h3_q0", "llamagen_g3_w64h2"])
def test_packed_pipeline_keeps_the_logits_and_the_tokens(name, tmp_path):
    pipe = make_pipe.__wrapped__(name)  # a fresh copy: the cached one is shared by other tests
    tr = pipe.transformer
    labels = pipe.condition([1, 2])
    torch.manual_seed(0)
    x_in = pipe.inputs.teacher(torch.randint(0, tr.cfg.vocab_size, (2, pipe.schedule.length)))
    kw = dict(output_type="tokens", precision="fp32")
    with torch.no_grad():
        want = tr(labels, x_in, pipe.schedule)
    want_tokens = pipe([0, 1, 2, 1], generator=torch.Generator().manual_seed(0), **kw).tokens
    pipe.pack_weights(min_weights=0)
    with torch.no_grad():
        got = tr(labels, x_in, pipe.schedule)
    assert not [m for m in tr.blocks.modules() if isinstance(m, nn.Linear)]
    assert isinstance(tr.head.proj, PackedLinear) and pipe.weight_format == "packed"
    torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)
    # the same sampled tokens (rounding-level logit differences cannot move a draw of these tiny models)
    got_tokens = pipe([0, 1, 2, 1], generator=torch.Generator().manual_seed(0), **kw).tokens
    assert torch.equal(got_tokens, want_tokens)
    with pytest.raises(ArvisionError, match="packed in torch.float32; it cannot sample in torch.bfloat16"):
        pipe([1], output_type="tokens", precision="bf16")
    with pytest.raises(ArvisionError, match="packed for oneDNN; reload the model to save it"):
        pipe.save_pretrained(tmp_path / "p")
    with pytest.raises(ArvisionError, match="reload the model to move or cast it"):
        pipe.to(dtype=torch.bfloat16)
    with pytest.raises(ArvisionError, match="reload the model to quantize"):
        pipe.quantize_weights("int8")
    assert pipe.pack_weights(min_weights=0) is pipe  # packing twice is a no-op


def test_int8_pipeline_refuses_packing():
    pipe = make_pipe.__wrapped__("llamagen_g3_w64h2").quantize_weights("int8")
    with pytest.raises(ArvisionError, match="int8; reload the model to pack them"):
        pipe.pack_weights(min_weights=0)


def test_bench_auto_packs_fp32_weights_where_bf16_is_slow(tmp_path, capsys, monkeypatch):
    """``--precision auto`` on a CPU without fast bf16 samples fp32 through packed weights: the exact mode's tokens."""
    import arvision.models.packed
    import arvision.precision
    from arvision.bundled import tiny_random_pipeline
    from arvision.cli import main

    monkeypatch.setattr(arvision.precision, "cpu_has_fast_bf16", lambda: False)
    model = tmp_path / "tiny"
    tiny_random_pipeline(seed=3).save_pretrained(model)
    argv = ["bench", str(model), "--classes", "4", "5", "--batch-size", "2", "--warmup", "0", "--repeat", "1",
            "--no-decode", "--json"]
    # its layers are all below the size where packing gains: left as they are, and the report says so
    assert main(argv + ["--precision", "auto"]) == 0
    r = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert r["weights"] == "full" and r["weights_format"] == "full" and r["precision"] == "float32"
    monkeypatch.setattr(arvision.models.packed, "MIN_WEIGHTS", 0)
    results = {}
    for precision in ("auto", "fp32"):
        assert main(argv + ["--precision", precision]) == 0
        results[precision] = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert results["auto"]["weights"] == "packed" and results["auto"]["weights_format"] == "packed"
    assert results["auto"]["precision"] == "float32"
    assert results["fp32"]["weights"] == "full" and results["fp32"]["weights_format"] == "full"
    assert results["auto"]["tokens_sha256"] == results["fp32"]["tokens_sha256"]
    # with fast bf16, auto keeps the weights as loaded (and casts them to bf16)
    monkeypatch.setattr(arvision.precision, "cpu_has_fast_bf16", lambda: True)
    assert main(argv + ["--precision", "auto"]) == 0
    r = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert r["weights"] == "full" and r["precision"] == "bfloat16"


@pytest.mark.parametrize("name", ["mnist", "shapes", "shapes-raster"])
def test_bundled_models_are_too_small_to_pack(name):
    """Their layers (width 192) are below ``MIN_WEIGHTS``: ``auto`` samples them as ``fp32`` does, bit for bit."""
    from arvision.cli.loading import load_pipeline
    pipe = load_pipeline(name, "cpu").to(dtype=torch.float32)
    assert [m for m in pipe.transformer.blocks.modules() if isinstance(m, nn.Linear)]
    pipe.pack_weights()
    assert pipe.weight_format is None
    assert not [m for m in pipe.transformer.modules() if isinstance(m, PackedLinear)]


def test_packed_raster_pipeline_compiles_with_frozen_weights():
    """Inductor lowers oneDNN's packed linear only for weights that are graph constants: ``pipe.compile()`` of a
    packed pipeline compiles with freezing (one graph for every position) and samples the eager packed tokens."""
    pipe = make_pipe.__wrapped__("llamagen_g3_w64h2").pack_weights(min_weights=0)
    kw = dict(output_type="tokens", precision="fp32", guidance_scale=2.0, top_k=0)
    want = pipe([0, 1], generator=torch.Generator().manual_seed(4), **kw).tokens
    torch._dynamo.reset()
    pipe.compile()
    got = pipe([0, 1], generator=torch.Generator().manual_seed(4), **kw).tokens
    assert torch.equal(got, want)
    assert pipe.transformer.token_steps
    with pytest.raises(ArvisionError, match="compiled already: pack its weights first"):
        make_pipe.__wrapped__("llamagen_g3_w64h2").compile().pack_weights(min_weights=0)


def test_compiled_cpu_pipeline_measures_each_gemm_over_frozen_full_weights():
    """On a CPU, ``pipe.compile()`` of full-precision weights freezes them and lets inductor measure its own C++ GEMM
    against the library's for each layer (``max_autotune``): the tokens stay eager's, and the autotuner ran."""
    from torch._dynamo.utils import counters

    pipe = make_pipe.__wrapped__("llamagen_g3_w64h2")
    kw = dict(output_type="tokens", precision="fp32", guidance_scale=2.0, top_k=0)
    want = pipe([0, 1], generator=torch.Generator().manual_seed(4), **kw).tokens
    torch._dynamo.reset()
    counters.clear()
    pipe.compile()
    # the autotuner's results of an earlier run on this machine would be read from its on-disk cache, not measured
    with torch._inductor.config.patch(autotune_local_cache=False):
        got = pipe([0, 1], generator=torch.Generator().manual_seed(4), **kw).tokens
    assert torch.equal(got, want)
    assert counters["inductor"]["select_algorithm_autotune"] > 0
    assert pipe.weight_format is None


def test_bench_compile_leaves_the_weights_to_inductor(monkeypatch):
    """``--weights auto`` with ``--compile`` on a CPU without fast bf16: a raster model's weights stay as loaded
    (its one graph packs them and picks each GEMM itself); a scale schedule's (a graph per scale) and any model's
    without ``--compile`` are packed."""
    import argparse

    import arvision.models.packed
    import arvision.precision
    from arvision.cli.sample import apply_weights

    monkeypatch.setattr(arvision.precision, "cpu_has_fast_bf16", lambda: False)
    monkeypatch.setattr(arvision.models.packed, "MIN_WEIGHTS", 0)
    for name, compile_, want in (("llamagen_g3_w64h2", True, "full"), ("llamagen_g3_w64h2", False, "packed"),
                                 ("var_pn124_w96h3_q0", True, "packed")):
        pipe = make_pipe.__wrapped__(name)
        assert pipe.gemms_picked_when_compiled == name.startswith("llamagen")
        args = argparse.Namespace(weights="auto", precision="auto", compile=compile_)
        apply_weights(pipe, args)
        assert args.weights == want and (pipe.weight_format or "full") == want


def test_sample_and_eval_sample_compile_when_asked(tmp_path, capsys, monkeypatch):
    """``arvision sample --compile`` and ``eval sample --compile`` compile the step once, after the weights are set,
    and draw what the eager step draws, a smaller last batch included; without the flag nothing is compiled.  (Which
    weights ``--weights auto`` leaves to a compiled step: ``test_bench_compile_leaves_the_weights_to_inductor``.)"""
    from safetensors.torch import load_file

    from arvision.cli import main
    from arvision.pipeline import ARPipeline
    from conftest import tiny_raster_pipeline

    model = tmp_path / "raster"
    tiny_raster_pipeline(seed=2).save_pretrained(model)
    real, calls = ARPipeline.compile, []

    def compile_eagerly(pipe, **options):  # dynamo's trace of the real step, without inductor's minute of work
        calls.append(pipe.weight_format)
        return real(pipe, backend="eager")

    monkeypatch.setattr(ARPipeline, "compile", compile_eagerly)
    common = ["--classes", "0", "1", "2", "--batch-size", "2", "--seed", "5", "--precision", "auto"]
    tokens = {}
    for flag in ([], ["--compile"]):
        path = tmp_path / f"tokens{len(flag)}.safetensors"
        assert main(["sample", str(model), *common, *flag, "--save-tokens", str(path)]) == 0
        tokens[bool(flag)] = load_file(str(path))
        assert calls == ([None] if flag else [])
    assert "compiling the step function" in capsys.readouterr().out
    assert tokens[True].keys() == tokens[False].keys()
    assert all(torch.equal(tokens[True][k], tokens[False][k]) for k in tokens[False])

    images = {}
    for flag in ([], ["--compile"]):
        out = tmp_path / f"eval{len(flag)}"
        assert main(["eval", "sample", str(model), "--out", str(out), "--per-class", "1", "--classes", "0", "2",
                     "--device", "cpu", *flag]) == 0
        images[bool(flag)] = {p.name: p.read_bytes() for p in sorted(out.glob("*.png"))}
    assert len(calls) == 2 and len(images[True]) == 2 and images[True] == images[False]


def test_compile_if_asked_compiles_on_every_rank_and_says_so_on_one(capsys):
    """``eval sample --compile`` under torchrun: every process compiles its step, one prints the line about it."""
    import argparse
    import types

    from arvision.cli.sample import compile_if_asked

    calls = []
    pipe = types.SimpleNamespace(compile=lambda: calls.append("compiled"))
    compile_if_asked(pipe, argparse.Namespace(compile=True), say=False)
    assert calls == ["compiled"] and capsys.readouterr().out == ""
    compile_if_asked(pipe, argparse.Namespace(compile=True))
    assert calls == ["compiled"] * 2 and "compiling the step function" in capsys.readouterr().out
    compile_if_asked(pipe, argparse.Namespace(compile=False))
    assert calls == ["compiled"] * 2
