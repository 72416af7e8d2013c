"""The speed features keep the sampler exact: compiled steps, bf16 weights, timings (not timed tests)."""

from __future__ import annotations

import pytest
import torch
import torch._dynamo.testing

from arvision.errors import ArvisionError
from test_consistency import make_pipe

NAMES = ["var_pn2358_w128h4_shared_q4", "var_pn124_w96h3_q0", "llamagen_g3_w64h2"]


@pytest.mark.parametrize("name", NAMES)
def test_step_function_traces_as_one_graph(name):
    """torch.compile of forward_step sees no graph break at the first step or a later one."""
    pipe = make_pipe(name)
    tr = pipe.transformer
    labels = pipe.condition([1, pipe.config.num_classes], allow_null=True)
    teacher = pipe.inputs.teacher(torch.randint(0, tr.cfg.vocab_size, (2, pipe.schedule.length)))
    with torch.no_grad():
        cond = tr.condition(labels)
        cache = tr.new_cache(2, pipe.schedule)
        layout = pipe.layout()
        for s in (0, 1):
            begin, end = pipe.schedule.begin_ends[s]
            first = pipe.schedule.first_len
            x = None if s == 0 else teacher[:, begin - first:end - first]
            explained = torch._dynamo.explain(tr.forward_step)(s, cond, x, cache, layout)
            assert explained.graph_break_count == 0 and explained.graph_count == 1, explained.break_reasons


@pytest.mark.parametrize("name", NAMES)
def test_compiled_step_samples_the_same_tokens(name):
    torch._dynamo.reset()
    eager = make_pipe(name)
    labels = [1, 2]
    kw = dict(output_type="tokens", top_k=0, top_p=0.0)
    want = eager(labels, generator=torch.Generator().manual_seed(3), **kw).tokens
    compiled = make_pipe(name).compile(backend="aot_eager")  # the same cached object: undone below
    try:
        got = compiled(labels, generator=torch.Generator().manual_seed(3), **kw).tokens
    finally:
        for attr in ("forward_step", "forward_token"):
            compiled.transformer.__dict__.pop(attr, None)
        compiled.transformer.token_steps = False
    assert torch.equal(got, want)


def test_raster_token_step_is_exact_and_one_graph_for_every_position():
    """The compiled raster step (forward_token, its position from a dynamic length) samples the tokens the eager
    forward_step does, and traces as one graph for all of a sample's positions: no recompilation per position."""
    import copy

    pipe = copy.deepcopy(make_pipe("llamagen_g5_w96h4"))  # compiled below; the cached one stays eager
    kw = dict(output_type="tokens", guidance_scale=3.0, top_k=0)
    want = pipe([0, 1, 2], generator=torch.Generator().manual_seed(5), **kw).tokens
    torch._dynamo.reset()
    counter = torch._dynamo.testing.CompileCounter()
    pipe.compile(backend=counter)
    got = pipe([0, 1, 2], generator=torch.Generator().manual_seed(5), **kw).tokens
    assert torch.equal(got, want)
    assert pipe.schedule.num_steps > 3 and counter.frame_count == 1  # one graph, no recompilation for new positions
    assert counter.op_count > 0


def test_raster_token_step_compiles_each_batch_size_static():
    """A new batch size (a last, smaller batch of ``sample --compile``) compiles a graph of its own with a static
    batch, as the first did (the GEMMs keep fixed row counts to be tuned for), not one whose batch is symbolic
    (dynamo's default after a size changes: a slower compile and kernels for any row count)."""
    import copy

    pipe = copy.deepcopy(make_pipe("llamagen_g5_w96h4"))
    kw = dict(output_type="tokens", guidance_scale=3.0, top_k=0)
    want = pipe([2], generator=torch.Generator().manual_seed(1), **kw).tokens
    torch._dynamo.reset()
    symbols = []  # per graph: the symbolic sizes of its tensor inputs

    def backend(gm, example_inputs):
        fakes = [n.meta["example_value"] for n in gm.graph.nodes if n.op == "placeholder"]
        sizes = [d for t in fakes for d in (t.shape if isinstance(t, torch.Tensor) else [t])]
        symbols.append({str(d) for d in sizes if isinstance(d, torch.SymInt)})
        return gm.forward

    pipe.compile(backend=backend)
    pipe([0, 1, 2], generator=torch.Generator().manual_seed(5), **kw)
    got = pipe([2], generator=torch.Generator().manual_seed(1), **kw).tokens
    assert torch.equal(got, want)
    assert len(symbols) == 2 and all(len(s) == 1 for s in symbols), symbols  # the cache length only


def test_bf16_weights_sample_in_bf16_only_and_report_stats():
    import copy

    pipe = copy.deepcopy(make_pipe("var_pn2358_w128h4_shared_q4"))  # cast to bf16 below; the cached one stays fp32
    fp32 = pipe([1, 2], generator=torch.Generator().manual_seed(0), output_type="pt", precision="fp32")
    assert fp32.stats["precision"] == "float32" and fp32.stats["kv_cache_bytes"] > 0
    assert fp32.stats["transformer_seconds"] > 0 and fp32.stats["decode_seconds"] > 0
    cache = pipe.transformer.new_cache(4, pipe.schedule)
    held = sum(t.numel() for t in cache.k) * 4 * 2  # [cond; uncond] batch of 4, keys and values
    assert fp32.stats["kv_cache_bytes"] == cache.nbytes == held

    pipe.to(dtype=torch.bfloat16)
    assert pipe.weight_dtype == torch.bfloat16
    assert next(pipe.tokenizer.parameters()).dtype == torch.float32  # the tokenizer decides tokens: kept fp32
    out = pipe([1, 2], generator=torch.Generator().manual_seed(0), output_type="pt", precision="bf16",
               time_steps=True)
    assert out.stats["precision"] == "bfloat16" and out.stats["kv_cache_bytes"] == fp32.stats["kv_cache_bytes"] // 2
    assert len(out.stats["step_seconds"]) == pipe.schedule.num_steps
    assert out.images.shape == fp32.images.shape and torch.isfinite(out.images).all()
    # bf16 rounding may change a few tokens, but not most of them
    same = (out.tokens == fp32.tokens).float().mean().item()
    assert same > 0.5
    with pytest.raises(ArvisionError, match="reload the model"):
        pipe([1], precision="fp32")


def test_bf16_raster_model_keeps_fp32_rotary_angles():
    import copy

    pipe = copy.deepcopy(make_pipe("llamagen_g3_w64h2")).to(dtype=torch.bfloat16)  # the cached one stays fp32
    assert pipe.layout().rope.dtype == torch.float32
    assert pipe.transformer.embed.input_proj.weight.dtype == torch.bfloat16
    out = pipe([0, 1], generator=torch.Generator().manual_seed(0), output_type="tokens", precision="bf16")
    assert out.tokens.shape == (2, pipe.schedule.length)
    assert 0 <= out.tokens.min() and out.tokens.max() < pipe.config.transformer.vocab_size


def test_bench_cli_json_line(tmp_path, capsys):
    import json

    from arvision.bundled import tiny_random_pipeline
    from arvision.cli import main

    model = tmp_path / "tiny"
    tiny_random_pipeline(seed=3).save_pretrained(model)
    argv = ["bench", str(model), "--classes", "4", "--batch-size", "2", "--precision", "fp32", "--warmup", "0",
            "--repeat", "2", "--json"]
    assert main(argv) == 0
    out = capsys.readouterr().out.strip().splitlines()
    result = json.loads(out[-1])
    for key in ("seconds_per_image", "transformer_seconds_per_image", "decode_seconds_per_image",
                "peak_memory_bytes", "kv_cache_bytes", "precision", "threads", "device", "tokens_sha256"):
        assert key in result, key
    assert result["precision"] == "float32" and result["batch_size"] == 2
    assert result["seconds_per_image"] == pytest.approx(
        result["transformer_seconds_per_image"] + result["decode_seconds_per_image"], rel=0.5)
    assert len(result["step_seconds"]) == 4 and "seconds per image" in out[0] + out[1]
    # the same seed gives the same tokens: the hash is reproducible
    assert main(argv) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["tokens_sha256"] == result["tokens_sha256"]
