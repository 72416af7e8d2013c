"""Bounded memory by default: sampling never puts an unbounded request in one batch, the CLI streams each batch's
images to disk as it finishes, and batching changes nothing for a given batch size (issue 19, item 2)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from arvision.cli import main
from arvision.sampling.batching import MAX_DEFAULT_BATCH, default_batch_size, per_image_bytes

SRC = Path(__file__).resolve().parents[1] / "src"


@pytest.fixture(scope="module")
def pipe(tiny_model):
    from arvision.pipeline import ARPipeline

    return ARPipeline.from_pretrained(tiny_model)


def test_default_batch_is_bounded_by_memory_and_cap(pipe):
    cfg, sched = pipe.config, pipe.schedule
    assert 1 <= pipe.default_batch_size(100_000) <= MAX_DEFAULT_BATCH
    assert pipe.default_batch_size(3) == 3  # never more than asked for
    one = per_image_bytes(cfg, sched)
    assert default_batch_size(cfg, sched, free_bytes=0, n_images=1000) == 1  # no memory: still one at a time
    assert default_batch_size(cfg, sched, free_bytes=10 * one, n_images=1000) == 5  # half the free memory
    assert default_batch_size(cfg, sched, free_bytes=1 << 50, n_images=1000) == MAX_DEFAULT_BATCH
    # a deeper, wider model needs more per image, so fewer fit
    import dataclasses

    big = dataclasses.replace(cfg, transformer=dataclasses.replace(cfg.transformer, depth=24, width=1024))
    assert per_image_bytes(big, sched) > 10 * one


def test_call_without_batch_size_uses_the_default_and_equals_explicit_batches(pipe, monkeypatch):
    import arvision.pipeline as pipeline_module

    # a default of 4 makes 10 labels three batches, checked against the same explicit batch size
    monkeypatch.setattr(pipeline_module, "default_batch_size", lambda *a, **k: 4)
    labels = [i % 10 for i in range(10)]
    out = pipe(labels, generator=torch.Generator().manual_seed(5), output_type="pt")
    assert out.stats["batch_size"] == 4
    ref = pipe(labels, generator=torch.Generator().manual_seed(5), output_type="pt", batch_size=4)
    assert torch.equal(out.tokens, ref.tokens) and torch.equal(out.images, ref.images)
    # iter_batches hands over the same rows, batch by batch
    parts = list(pipe.iter_batches(labels, generator=torch.Generator().manual_seed(5), output_type="tokens",
                                   batch_size=4))
    assert [len(p.class_labels) for p in parts] == [4, 4, 2]
    assert torch.equal(torch.cat([p.tokens for p in parts]), ref.tokens)
    # a different batch size consumes the one generator differently: the batch is part of the result
    other = pipe(labels, generator=torch.Generator().manual_seed(5), output_type="tokens", batch_size=10)
    assert not torch.equal(other.tokens, ref.tokens)


def test_iter_batches_checks_arguments_before_any_batch(pipe):
    from arvision.errors import ArvisionError

    for kwargs in ({"batch_size": 0}, {"top_k": -1}, {"output_type": "jpeg"}):
        with pytest.raises(ArvisionError):
            pipe.iter_batches([0, 1], **kwargs)  # raised by the call itself, not on the first next()


def test_cli_streams_each_batch_to_disk(tiny_model, tmp_path, monkeypatch, capsys):
    """Every earlier batch's PNGs exist when the next batch is sampled, and the result equals one explicit batch
    size run through the API."""
    from arvision.pipeline import ARPipeline

    seen = []
    original = ARPipeline.iter_batches
    out_dir = tmp_path / "imgs"

    def spy(self, *args, **kwargs):
        for out in original(self, *args, **kwargs):
            seen.append(len(list(out_dir.glob("*.png"))) if out_dir.exists() else 0)
            yield out

    monkeypatch.setattr(ARPipeline, "iter_batches", spy)
    classes = [str(i % 10) for i in range(11)]
    assert main(["sample", str(tiny_model), "--classes", *classes, "--batch-size", "4", "--seed", "2",
                 "--out-dir", str(out_dir), "--save-tokens", str(tmp_path / "t.safetensors")]) == 0
    assert seen == [0, 4, 8]  # written batch by batch, not at the end
    assert len(list(out_dir.glob("*.png"))) == 11 and not list(out_dir.glob(".*"))  # no temporary leftovers
    assert "sampling 11 images in batches of 4" in capsys.readouterr().out
    from safetensors.torch import load_file

    tokens = load_file(str(tmp_path / "t.safetensors"))
    monkeypatch.setattr(ARPipeline, "iter_batches", original)
    ref = ARPipeline.from_pretrained(tiny_model)([int(c) for c in classes], batch_size=4, output_type="tokens",
                                                 generator=torch.Generator().manual_seed(2))
    for s, step in enumerate(ref.step_tokens):
        assert torch.equal(tokens[f"step.{s}"], step)


def test_cli_default_batch_is_said(tiny_model, tmp_path, monkeypatch, capsys):
    import arvision.pipeline as pipeline_module

    monkeypatch.setattr(pipeline_module, "default_batch_size", lambda *a, **k: 3)
    assert main(["sample", str(tiny_model), "--classes", "1", "2", "3", "4", "--out-dir", str(tmp_path / "d")]) == 0
    out = capsys.readouterr().out
    assert "sampling 4 images in batches of 3 (default: bounded by" in out and "--batch-size" in out


def test_huge_grid_is_refused_before_loading(tmp_path, monkeypatch, capsys):
    import arvision.cli.sample as sample_cli

    def no_load(*a, **k):
        raise AssertionError("the model was loaded before the arguments were checked")

    monkeypatch.setattr(sample_cli, "load_pipeline", no_load)
    many = ["0"] * (sample_cli.GRID_MAX_IMAGES + 1)
    assert main(["sample", "--classes", *many, "--out", str(tmp_path / "g.png")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "--out-dir" in err
    assert main(["sample", "--classes", *["0"] * 65, "--progression", str(tmp_path / "p.png")]) == 2
    assert "--progression" in capsys.readouterr().err
    assert not (tmp_path / "g.png").exists()


def test_watermark_alignment_does_not_depend_on_streaming(pipe, monkeypatch):
    """--watermark-align over streamed batches gives the images of one align_images call over all of them."""
    import argparse

    import arvision.cli.sample as sample_cli
    from arvision.sampling.watermark import WatermarkSpec, align_images

    monkeypatch.setattr(sample_cli, "ALIGN_BATCH", 3)  # align chunks that straddle the sampling batches (2)
    args = argparse.Namespace(classes=[1, 2, 3, 4, 5, 6, 7], seed=4, cfg=None, top_k=None, top_p=None,
                              temperature=None, smooth=False, batch_size=2, precision="fp32", kv_policy=None,
                              decoding=None, watermark_key="K", watermark_delta="4", watermark_gamma=0.5,
                              watermark_pool=4, watermark_start_step=0, watermark_align=0.1,
                              watermark_align_steps=2)
    streamed = sample_cli.run_sampling(pipe, args, progress=False)
    spec = WatermarkSpec("K", delta=4.0, align=0.1, align_steps=2)
    raw = pipe(args.classes, generator=torch.Generator().manual_seed(4), output_type="pt", batch_size=2,
               processors=[spec.processor(pipe)])
    x = align_images(pipe, raw.images * 2 - 1, spec, [spec.list_for(4, k) for k in args.classes], batch_size=3)
    from arvision.images import to_pil

    expected = to_pil((x + 1) / 2)
    assert [im.tobytes() for im in streamed.images] == [im.tobytes() for im in expected]


@pytest.mark.skipif(not hasattr(os, "wait4"), reason="peak RSS of a child needs os.wait4 (POSIX)")
def test_two_thousand_images_in_bounded_memory(tiny_model, tmp_path):
    """2,000 images take about as much memory as 100: the default batch bounds the working set and the images go
    to disk as they finish (one batch of 2,000 would hold every image, KV cache and activation at once)."""

    def peak_mib(n: int, folder: Path, *extra: str) -> tuple[int, int]:
        cmd = [sys.executable, "-m", "arvision", "sample", str(tiny_model), "--classes",
               *[str(i % 10) for i in range(n)], "--out-dir", str(folder), *extra]
        env = {**os.environ, "PYTHONPATH": f"{SRC}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
               "OMP_NUM_THREADS": "2"}
        log = folder.parent / f"{folder.name}.log"
        with open(log, "w") as out:
            proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env)
            _, status, usage = os.wait4(proc.pid, 0)  # this child's peak resident memory
        proc.returncode = os.waitstatus_to_exitcode(status)
        assert proc.returncode == 0, log.read_text()[-2000:]
        return usage.ru_maxrss // 1024, len(list(folder.glob("*.png")))

    small, n_small = peak_mib(100, tmp_path / "a")
    large, n_large = peak_mib(2000, tmp_path / "b")
    assert (n_small, n_large) == (100, 2000)
    assert large - small < 120, f"2,000 images peaked {large} MiB against {small} MiB for 100"
