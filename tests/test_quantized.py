"""Weight-only int8 linear layers (``pipe.quantize_weights``, ``arvision bench --weights int8``)."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from arvision.errors import ArvisionError
from arvision.models.quantized import Int8Linear, linear_dtype
from test_consistency import make_pipe


def test_int8_linear_is_the_dequantised_weight_times_the_input():
    torch.manual_seed(0)
    lin = nn.Linear(64, 96)
    lin.weight.data[3] = 0.0  # an all-zero row must not divide by zero
    q = Int8Linear.from_linear(lin)
    assert q.qweight.dtype == torch.int8 and q.qweight.abs().max() == 127 and linear_dtype(q) == torch.bfloat16
    x = torch.randn(2, 5, 64).bfloat16()
    y = q(x)
    assert y.shape == (2, 5, 96) and y.dtype == torch.bfloat16 and torch.isfinite(y).all()
    dequant = q.qweight.float() * q.scales.float()[:, None]
    want = torch.nn.functional.linear(x.float(), dequant, lin.bias.bfloat16().float())
    torch.testing.assert_close(y.float(), want, atol=0.05, rtol=0.02)
    # and the quantisation stays within half a step of each row's (stored) scale
    assert ((dequant - lin.weight).abs() <= q.scales.float()[:, None] * 0.51 + 1e-7).all()
    # a per-call bias replaces the layer's own (VAR's q/k/v biases)
    other = torch.randn(96)
    torch.testing.assert_close(q(x, other).float() - y.float(), (other - lin.bias).bfloat16().float().expand(2, 5, 96),
                               atol=0.1, rtol=0.02)


@pytest.mark.parametrize("name", ["var_pn124_w96h3_q0", "llamagen_g3_w64h2"])
def test_quantized_pipeline_keeps_the_bf16_logits_and_refuses_exact_mode(name, tmp_path):
    pipe = make_pipe.__wrapped__(name)  # a fresh copy: the cached one is shared by other tests
    pipe.to(dtype=torch.bfloat16)
    tr = pipe.transformer
    labels = pipe.condition([1, 2])
    torch.manual_seed(0)
    x_in = pipe.inputs.teacher(torch.randint(0, tr.cfg.vocab_size, (2, pipe.schedule.length)))
    with torch.no_grad():
        want = tr(labels, x_in, pipe.schedule)
        pipe.quantize_weights("int8")
        got = tr(labels, x_in, pipe.schedule)
    linears = [m for m in tr.blocks.modules() if isinstance(m, nn.Linear)]
    assert not linears and isinstance(tr.head.proj, Int8Linear) and pipe.weight_format == "int8"
    cos = torch.nn.functional.cosine_similarity(got.flatten(1), want.flatten(1), dim=1)
    assert (cos > 0.99).all(), cos
    out = pipe([1, 2], generator=torch.Generator().manual_seed(0), output_type="tokens", precision="bf16")
    assert out.tokens.shape[0] == 2 and 0 <= out.tokens.min() and out.tokens.max() < tr.cfg.vocab_size
    with pytest.raises(ArvisionError, match="cannot sample in"):
        pipe([1], output_type="tokens", precision="fp32")
    with pytest.raises(ArvisionError, match="quantized"):
        pipe.save_pretrained(tmp_path / "q")
    with pytest.raises(ArvisionError, match="int8"):
        pipe.quantize_weights("int4")


def test_bench_cli_int8_weights(tmp_path, capsys):
    from arvision.bundled import tiny_random_pipeline
    from arvision.cli import main

    model = tmp_path / "tiny"
    tiny_random_pipeline(seed=3).save_pretrained(model)
    argv = ["bench", str(model), "--classes", "4", "--batch-size", "1", "--warmup", "0", "--repeat", "1",
            "--no-decode", "--weights", "int8", "--json"]
    assert main(argv) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["weights_dtype"] == "int8" and result["precision"] == "bfloat16" and result["weights"] == "int8"
    assert main(argv[:-1] + ["--precision", "fp32"]) == 2
    assert "--weights int8 computes in bf16" in capsys.readouterr().err


def test_sample_cli_int8_weights(tmp_path, capsys):
    from PIL import Image

    from arvision.cli import main

    out = tmp_path / "grid.png"
    assert main(["sample", "--classes", "1", "2", "--weights", "int8", "--out", str(out)]) == 2
    assert "--weights int8 computes in bf16" in capsys.readouterr().err and not out.exists()
    assert main(["sample", "--classes", "1", "2", "--weights", "int8", "--precision", "bf16", "--out", str(out)]) == 0
    with Image.open(out) as im:
        assert im.size[0] > 32 and im.getextrema() != ((0, 0), (0, 0), (0, 0))
