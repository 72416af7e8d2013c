"""The speed features keep the sampler exact: compiled steps, bf16 weights, timings (not timed tests)."""

from __future__ import annotations

import pytest
import torch

from arvision.errors import ArvisionError
from test_consistency import make_pipe

NAMES = ["var_pn2358_w128h4_shared_q4", "var_pn124_w96h3_q0", "llamagen_g3_w64h2"]


@pytest.mark.parametrize("name", NAMES)
def test_step_function_traces_as_one_graph(name):
    """torch.compile of forward_step sees no graph break at the first step or a later one."""
    pipe = make_pipe(name)
    tr = pipe.transformer
    labels = torch.tensor([1, pipe.config.num_classes])
    with torch.no_grad():
        cond = tr.condition(labels)
        cache = tr.new_cache(2)
        for s in (0, 1):
            n = pipe.schedule.step_sizes[s]
            x = None if s == 0 else (torch.randn(2, n, tr.cfg.in_channels) if tr.adaln
                                     else torch.randint(0, tr.cfg.vocab_size, (2, n)))
            explained = torch._dynamo.explain(tr.forward_step)(s, cond, x, cache)
            assert explained.graph_break_count == 0 and explained.graph_count == 1, explained.break_reasons


@pytest.mark.parametrize("name", NAMES)
def test_compiled_step_samples_the_same_tokens(name):
    torch._dynamo.reset()
    eager = make_pipe(name)
    labels = [1, 2]
    kw = dict(output_type="tokens", top_k=0, top_p=0.0)
    want = eager(labels, generator=torch.Generator().manual_seed(3), **kw).tokens
    compiled = make_pipe(name).compile(backend="aot_eager")
    got = compiled(labels, generator=torch.Generator().manual_seed(3), **kw).tokens
    assert torch.equal(got, want)


def test_bf16_weights_sample_in_bf16_only_and_report_stats():
    pipe = make_pipe("var_pn2358_w128h4_shared_q4")
    fp32 = pipe([1, 2], generator=torch.Generator().manual_seed(0), output_type="pt", precision="fp32")
    assert fp32.stats["precision"] == "float32" and fp32.stats["kv_cache_bytes"] > 0
    assert fp32.stats["transformer_seconds"] > 0 and fp32.stats["decode_seconds"] > 0
    cache = pipe.transformer.new_cache(4)
    assert fp32.stats["kv_cache_bytes"] == cache.nbytes == cache.k.numel() * 4 * 2  # [cond; uncond] batch of 4

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
