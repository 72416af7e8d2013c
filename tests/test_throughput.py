"""Throughput mode: ``arvision bench --batch-size 8 16 32 | auto`` and ``arvision eval sample --batch-size auto``
(``arvision.bench.sweep_batch_sizes``).

The selection rules (memory extrapolation, plateau, out of memory) are checked against a stand-in ``benchmark`` with
known images/s and peak memory per batch size, so each rule is exercised exactly; the commands are then run for real
on a tiny random model.
"""

from __future__ import annotations

import argparse
import json

import numpy as np
import pytest
import torch

from arvision import bench
from arvision.cli import main, types
from arvision.errors import ArvisionError

MIB = 2**20


class FakePipe:
    device = torch.device("cpu")


def fake_benchmark(ips, peak_mib, calls):
    """A stand-in for ``bench.benchmark``: images/s ``ips(b)`` and peak memory ``peak_mib(b)`` MiB at batch ``b``;
    ``ips(b) = None`` raises an out-of-memory error.  Records every batch size it is asked for in ``calls``."""

    def run(pipe, classes, *, batch_size, **kw):
        calls.append(batch_size)
        rate = ips(batch_size)
        if rate is None:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return {"batch_size": batch_size, "images_per_second": rate, "seconds_per_image": 1 / rate,
                "peak_memory_bytes": int(peak_mib(batch_size) * MIB)}

    return run


def test_auto_stops_before_a_batch_predicted_over_budget(monkeypatch):
    calls = []
    # memory 100 MiB + 10 MiB per image; images/s keep growing: only the budget can stop the doubling
    monkeypatch.setattr(bench, "benchmark", fake_benchmark(lambda b: 10.0 * b, lambda b: 100 + 10 * b, calls))
    sweep = bench.sweep_batch_sizes(FakePipe(), [0], memory_budget=300 * MIB, max_batch_size=64)
    # 16 -> 260 MiB fits; 32 would need 420 MiB (extrapolated from 8 and 16): never run
    assert calls == [1, 2, 4, 8, 16]
    assert sweep["best_batch_size"] == 16 and sweep["best"]["images_per_second"] == 160.0
    assert "batch 32 would need about 420 MiB" in sweep["stopped"]
    assert all(r["within_budget"] for r in sweep["results"])


def test_auto_stops_on_the_plateau_and_at_the_largest_size(monkeypatch):
    calls = []
    rates = {1: 10.0, 2: 18.0, 4: 30.0, 8: 31.0, 16: 40.0}  # 8 gains 3% over 4: the sweep ends there
    monkeypatch.setattr(bench, "benchmark", fake_benchmark(rates.get, lambda b: 100, calls))
    sweep = bench.sweep_batch_sizes(FakePipe(), [0], max_batch_size=64)
    assert calls == [1, 2, 4, 8] and sweep["best_batch_size"] == 8
    assert "gained less than 5%" in sweep["stopped"]

    calls.clear()  # a largest size that is not a power of two is still tried, last
    monkeypatch.setattr(bench, "benchmark", fake_benchmark(lambda b: 10.0 * b, lambda b: 100, calls))
    sweep = bench.sweep_batch_sizes(FakePipe(), [0], max_batch_size=6)
    assert calls == [1, 2, 4, 6] and sweep["best_batch_size"] == 6 and "largest batch size, 6" in sweep["stopped"]


def test_over_budget_and_out_of_memory_are_never_best(monkeypatch):
    calls = []
    monkeypatch.setattr(bench, "benchmark", fake_benchmark(lambda b: 10.0 * b, lambda b: 100 * b, calls))
    # explicit sizes: all measured; the fastest (4) passes the budget, so the best is 2
    sweep = bench.sweep_batch_sizes(FakePipe(), [0], [1, 4, 2], memory_budget=250 * MIB)
    assert calls == [1, 4, 2]
    assert [r["within_budget"] for r in sweep["results"]] == [True, False, True]
    assert sweep["best_batch_size"] == 2

    calls.clear()
    monkeypatch.setattr(bench, "benchmark", fake_benchmark(lambda b: None if b >= 4 else 10.0 * b, lambda b: 1,
                                                           calls))
    sweep = bench.sweep_batch_sizes(FakePipe(), [0], [1, 2, 4, 8])
    assert calls == [1, 2, 4] and sweep["results"][-1] == {"batch_size": 4, "out_of_memory": True}
    assert sweep["best_batch_size"] == 2 and sweep["stopped"] == "batch 4 ran out of memory"
    assert "out of memory" in bench.format_sweep(sweep)

    # nothing fits: no best, and the table says so
    sweep = bench.sweep_batch_sizes(FakePipe(), [0], [1], memory_budget=MIB // 2)
    assert sweep["best"] is None and "none fits" in bench.format_sweep(sweep)


def test_a_real_sweep_on_a_tiny_model(tiny_model):
    from arvision.pipeline import ARPipeline

    pipe = ARPipeline.from_pretrained(tiny_model)
    seen = []
    sweep = bench.sweep_batch_sizes(pipe, [1, 2], [1, 3], on_result=lambda r: seen.append(r["batch_size"]),
                                    precision="fp32", warmup=0, repeat=1)
    assert seen == [1, 3] and [r["batch_size"] for r in sweep["results"]] == [1, 3]
    for r in sweep["results"]:
        assert r["images_per_second"] == pytest.approx(1 / r["seconds_per_image"])
        assert r["within_budget"] is True  # no budget
    assert sweep["best"]["images_per_second"] == max(r["images_per_second"] for r in sweep["results"])
    with pytest.raises(ArvisionError, match="batch sizes must be"):
        bench.sweep_batch_sizes(pipe, [1], [0])


def test_memory_and_batch_size_types():
    assert types.memory_size("40GiB") == 40 * 2**30
    assert types.memory_size("512 MiB") == 512 * MIB
    assert types.memory_size("1.5GB") == 1_500_000_000
    assert types.memory_size("2g") == 2 * 2**30 and types.memory_size("4096") == 4096
    for bad in ("0", "-1GiB", "lots", "3 parsecs", "nan"):
        with pytest.raises(argparse.ArgumentTypeError):
            types.memory_size(bad)
    assert types.batch_size("AUTO") == "auto" and types.batch_size("16") == 16
    with pytest.raises(argparse.ArgumentTypeError, match="or 'auto'"):
        types.batch_size("0")


def test_bench_cli_several_batch_sizes(tiny_model, capsys):
    argv = ["bench", str(tiny_model), "--classes", "1", "2", "--batch-size", "1", "2", "--precision", "fp32",
            "--warmup", "0", "--repeat", "1", "--no-decode", "--memory-budget", "64GiB", "--json"]
    assert main(argv) == 0
    out = capsys.readouterr().out.strip().splitlines()
    res = json.loads(out[-1])
    assert [r["batch_size"] for r in res["results"]] == [1, 2]
    assert res["memory_budget_bytes"] == 64 * 2**30
    assert res["best_batch_size"] in (1, 2) and res["best"]["images_per_second"] > 0
    assert res["machine"]["cpu_model"] and isinstance(res["machine"]["cpu_flags"], list)
    assert any(line.startswith("best: batch") for line in out)

    # one batch size keeps the plain report (and its JSON: one result, not a sweep)
    assert main(argv[:7] + argv[8:]) == 0
    one = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert one["batch_size"] == 1 and "results" not in one and one["machine"]["cpu_model"]


def test_bench_cli_refuses_auto_with_sizes(tiny_model, capsys):
    assert main(["bench", str(tiny_model), "--batch-size", "auto", "8"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "stands alone" in err and err.count("\n") == 1


def test_eval_sample_auto_batch_gives_the_same_images(tiny_model, tmp_path, capsys):
    common = ["eval", "sample", str(tiny_model), "--per-class", "3", "--classes", "1", "4", "--seed", "5",
              "--device", "cpu"]
    assert main([*common, "--out", str(tmp_path / "auto"), "--batch-size", "auto", "--max-batch-size", "4"]) == 0
    out = capsys.readouterr().out
    line = next(ln for ln in out.splitlines() if ln.startswith("batch size auto: "))
    chosen = int(line.split()[3])
    assert 1 <= chosen <= 4 and "images/s per batch size 1:" in line
    assert main([*common, "--out", str(tmp_path / "one"), "--batch-size", "1"]) == 0
    a, b = (np.load(tmp_path / d / "samples.npz") for d in ("auto", "one"))
    assert a["arr_0"].shape[0] == 6
    # per-image seeds: the same tokens whatever the batch size; the decoder's convolutions round differently per
    # batch size, which can move a pixel by one grey level (as tests/test_eval_sampler.py allows)
    diff = np.abs(a["arr_0"].astype(np.int16) - b["arr_0"].astype(np.int16))
    assert diff.max() <= 1 and (diff > 0).mean() < 1e-3
    np.testing.assert_array_equal(a["labels"], b["labels"])
