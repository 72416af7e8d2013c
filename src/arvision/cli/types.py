"""argparse value types shared by the commands.

Each type checks its value's form and range while the command line is parsed, so a bad number is refused before
any model is loaded or any data is read; argparse reports the ``ArgumentTypeError`` message as one line (see
:class:`arvision.cli.OneLineParser`).  NaN and infinities are never accepted: they would pass ``x < 0`` style checks
and only fail deep inside sampling or training.
"""

from __future__ import annotations

import argparse
import math
import re

# torch.Generator().manual_seed accepts [-2**63, 2**64); a seed outside it is a RuntimeError deep in torch.
SEED_MIN, SEED_MAX = 0, 2**63 - 1


def _number(text: str, kind, what: str):
    try:
        value = kind(text)
    except (TypeError, ValueError):
        raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
    if kind is float and not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"expected {what}, got {text!r} (not a finite number)")
    return value


def _ranged(kind, what: str, lo=None, hi=None, lo_open: bool = False, hi_open: bool = False):
    """An argparse type: ``kind`` (int or finite float) within [lo, hi] (open ends where asked)."""

    def parse(text: str):
        value = _number(text, kind, what)
        if (lo is not None and (value < lo or (lo_open and value == lo))) or \
                (hi is not None and (value > hi or (hi_open and value == hi))):
            raise argparse.ArgumentTypeError(f"{text!r} is out of range: expected {what}")
        return value

    parse.__name__ = what  # argparse names the type in some messages
    return parse


finite_float = _ranged(float, "a finite number")
nonneg_float = _ranged(float, "a finite number >= 0", lo=0.0)
positive_float = _ranged(float, "a finite number > 0", lo=0.0, lo_open=True)
fraction = _ranged(float, "a number in [0, 1]", lo=0.0, hi=1.0)
fraction_below_one = _ranged(float, "a number in [0, 1)", lo=0.0, hi=1.0, hi_open=True)  # e.g. a drop rate
open_fraction = _ranged(float, "a number in (0, 1)", lo=0.0, hi=1.0, lo_open=True, hi_open=True)
nonneg_int = _ranged(int, "an integer >= 0", lo=0)
positive_int = _ranged(int, "an integer >= 1", lo=1)
port = _ranged(int, "a port in [1, 65535]", lo=1, hi=65535)
threads = _ranged(int, "a thread count in [1, 4096]", lo=1, hi=4096)  # torch.set_num_threads takes a C int
class_id = _ranged(int, "a class id: an integer >= 0", lo=0)
seed = _ranged(int, f"a seed in [{SEED_MIN}, 2**63 - 1]", lo=SEED_MIN, hi=SEED_MAX)
guidance = _ranged(float, "a guidance scale: a finite number >= 0", lo=0.0)
temperature = _ranged(float, "a temperature: a finite number > 0", lo=0.0, lo_open=True)
top_p = _ranged(float, "a top-p in [0, 1] (0 = off)", lo=0.0, hi=1.0)
top_k = _ranged(int, "a top-k: an integer >= 0 (0 = off)", lo=0)


def int_list(text: str) -> list[int]:
    """Comma-separated integers (``1,2,3``)."""
    try:
        return [int(t) for t in text.replace(" ", "").split(",") if t]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


def positive_int_list(text: str) -> list[int]:
    """Comma-separated integers >= 1, at least one (``--patch-nums 1,2,4,8``, ``--ch-mult 1,2,2``)."""
    values = int_list(text)
    if not values or any(v < 1 for v in values):
        raise argparse.ArgumentTypeError(f"expected comma-separated integers >= 1, got {text!r}")
    return values



def batch_size(text: str):
    """A batch size (an integer >= 1) or ``auto`` (throughput mode: the batch size with the most images per second
    within the memory budget, see :func:`arvision.bench.sweep_batch_sizes`)."""
    if text.strip().lower() == "auto":
        return "auto"
    try:
        return positive_int(text)
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(f"expected a batch size (an integer >= 1) or 'auto', got {text!r}") from None


_MEMORY_UNITS = {"": 1, "b": 1, "k": 2**10, "kb": 10**3, "kib": 2**10, "m": 2**20, "mb": 10**6, "mib": 2**20,
                 "g": 2**30, "gb": 10**9, "gib": 2**30, "t": 2**40, "tb": 10**12, "tib": 2**40}


def memory_size(text: str) -> int:
    """A number of bytes: ``40GiB``, ``512MiB``, ``1.5GB``, ``2G`` (binary, as ``G`` is in ``free -h``) or plain
    bytes; more than zero."""
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([a-zA-Z]*)\s*", text)
    unit = m.group(2).lower() if m else None
    if m is None or unit not in _MEMORY_UNITS or float(m.group(1)) <= 0:
        raise argparse.ArgumentTypeError(f"expected a memory size > 0 such as 40GiB, 512MiB or 1.5GB, got {text!r}")
    return int(float(m.group(1)) * _MEMORY_UNITS[unit])
