"""Progress in logs: plain periodic lines (step, loss, rate, ETA) when stderr is not a terminal, tqdm bars when it
is, and warnings from the CLI as one ``warning:`` line."""

from __future__ import annotations

import io
import subprocess
import sys

import torch

from arvision.bundled import tiny_random_pipeline
from arvision.progress import LineProgress, format_duration, progress
from arvision.training.ar_trainer import ARTrainConfig, ARTrainer


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_non_terminal_training_prints_plain_lines(tmp_path, capsys):
    pipe = tiny_random_pipeline(0)
    pipe.transformer.init_weights()
    labels = torch.arange(32) % pipe.config.num_classes
    tokens = (labels[:, None] * 5 + torch.arange(pipe.schedule.length)) % pipe.config.transformer.vocab_size
    cfg = ARTrainConfig(steps=20, batch_size=8, lr=1e-3, warmup_steps=0, log_every=1, sample_every=1000,
                        ckpt_every=1000, precision="fp32")
    ARTrainer(pipe, tokens, labels, cfg, tmp_path, progress=True).train()
    err = capsys.readouterr().err
    assert "\r" not in err
    lines = [line for line in err.splitlines() if line.startswith("train: ")]
    assert 15 <= len(lines) <= 21  # every 5% of 20 steps, not more
    assert lines[-1].startswith("train: 20/20 steps (100%)")
    middle = lines[len(lines) // 2]
    for part in ("loss=", "acc=", "steps/s", "ETA "):
        assert part in middle, middle


def test_line_progress_reports_every_5_percent_and_at_the_end():
    out = io.StringIO()
    bar = progress(total=100, desc="sampling", unit="img", file=out)
    assert isinstance(bar, LineProgress)
    for _ in range(100):
        bar.update(1)
    bar.close()
    lines = out.getvalue().splitlines()
    assert len(lines) == 20 and "\r" not in out.getvalue()
    assert lines[0].startswith("sampling: 5/100 img (5%)") and "ETA" in lines[0]
    assert lines[-1].startswith("sampling: 100/100 img (100%)")


def test_line_progress_over_an_iterable_and_time_based_lines():
    out = io.StringIO()
    assert list(progress(range(3), desc="x", file=out, every_pct=100, every_s=0)) == [0, 1, 2]
    assert [line.split(" |")[0] for line in out.getvalue().splitlines()] == ["x: 1/3 it (33%)", "x: 2/3 it (67%)",
                                                                               "x: 3/3 it (100%)"]


def test_quiet_cases_print_nothing():
    out = io.StringIO()
    for bar in (progress(total=10, file=out, disable=True), progress(total=10, file=out, lines=False)):
        for _ in range(10):
            bar.update()
        bar.close()
    assert out.getvalue() == ""


def test_terminal_gets_a_tqdm_bar():
    from tqdm.auto import tqdm

    term = Terminal()
    bar = progress(total=5, desc="train", file=term)
    assert isinstance(bar, tqdm)
    for _ in range(5):
        bar.update()
    bar.close()
    assert "\r" in term.getvalue() and "5/5" in term.getvalue()


def test_format_duration():
    assert [format_duration(s) for s in (9, 75, 4000)] == ["9s", "1m15s", "1h06m"]


def test_cli_warnings_are_one_plain_line(tmp_path):
    code = ("import sys, warnings\n"
            "import arvision.cli.train as t\n"
            "t.cmd_train = lambda args: warnings.warn('resuming with changed settings (--lr)')\n"
            "from arvision.cli import main\n"
            "sys.exit(main(['train', '--tokenizer', 't', '--data', 'd', '--out', 'o']))\n")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert res.stderr == "warning: resuming with changed settings (--lr)\n"
