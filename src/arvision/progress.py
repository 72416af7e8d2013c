"""Progress of long work: a tqdm bar on a terminal, periodic plain lines in a log file.

tqdm's bars redraw themselves with ``\\r``, which turns a log file into one unreadable line (or, with tqdm's own
non-terminal default, prints nothing at all until the work ends).  ``progress`` picks per call: on a terminal the
usual tqdm bar; otherwise a :class:`LineProgress` that writes a plain line such as

    train: 120/2000 steps (6%) loss=0.412 acc=0.53 | 9.8 steps/s, elapsed 12s, ETA 3m12s

each time another ``every_pct`` percent is done or ``every_s`` seconds have passed, and once at the end.  Both
objects take the same calls (``update``, ``set_postfix``, ``write``, ``close``, iteration, ``with``), so call sites
do not care which one they got.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterable, Iterator
from typing import IO, Any

__all__ = ["LineProgress", "format_duration", "progress"]


def _is_terminal(stream) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # closed or replaced streams (captured output, pytest)
        return False


def progress(iterable: Iterable | None = None, *, total: int | None = None, desc: str = "", unit: str = "it",
             initial: int = 0, disable: bool = False, leave: bool = True, lines: bool = True,
             file: IO[str] | None = None, every_pct: float = 5.0, every_s: float = 60.0, **bar_kwargs: Any):
    """A progress reporter over ``iterable`` (or a count up to ``total``).

    disable: report nothing.  lines: whether to report at all when ``file`` (default: stderr) is not a terminal;
    pass False for short inner loops (a few steps inside a longer, reported one) so logs are not flooded.
    every_pct / every_s: how often plain lines are written.  Other keyword arguments go to tqdm on a terminal.
    """
    stream = sys.stderr if file is None else file
    if total is None and iterable is not None:
        try:
            total = len(iterable)  # type: ignore[arg-type]
        except TypeError:
            total = None
    if not disable and _is_terminal(stream):
        from tqdm.auto import tqdm

        return tqdm(iterable, total=total, desc=desc, unit=unit, initial=initial, leave=leave, file=stream,
                    dynamic_ncols=True, **bar_kwargs)
    return LineProgress(iterable, total=total, desc=desc, unit=unit, initial=initial,
                        disable=disable or not lines, file=stream, every_pct=every_pct, every_s=every_s)


def format_duration(seconds: float) -> str:
    """``75`` -> ``"1m15s"``; ``4000`` -> ``"1h06m"``; ``9`` -> ``"9s"``."""
    s = int(round(max(seconds, 0.0)))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


class LineProgress:
    """The non-terminal reporter: plain, complete lines (see the module docstring), never ``\\r``."""

    def __init__(self, iterable: Iterable | None = None, *, total: int | None = None, desc: str = "",
                 unit: str = "it", initial: int = 0, disable: bool = False, file: IO[str] | None = None,
                 every_pct: float = 5.0, every_s: float = 60.0):
        self.iterable, self.total, self.desc, self.unit = iterable, total, desc, unit
        self.n = self.start_n = self.last_n = initial
        self.disable, self.file = disable, file
        self.every_pct, self.every_s = every_pct, every_s
        self.postfix: dict[str, Any] = {}
        self.t0 = self.last_t = time.monotonic()
        self.closed = False

    # -- the tqdm calls the package uses -----------------------------------------------------------------------
    def __iter__(self) -> Iterator:
        for item in self.iterable if self.iterable is not None else ():
            yield item
            self.update(1)
        self.close()

    def __enter__(self) -> LineProgress:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def update(self, n: int = 1) -> None:
        self.n += n
        if self.disable:
            return
        now = time.monotonic()
        due = now - self.last_t >= self.every_s
        if self.total:
            step = self.total * self.every_pct / 100
            due = due or int(self.n / step) > int(self.last_n / step)
        if due and self.n < (self.total or float("inf")):
            self._emit(now)

    def set_postfix(self, values: dict | None = None, refresh: bool = True, **kw) -> None:
        self.postfix = {**(values or {}), **kw}

    def set_description(self, desc: str, refresh: bool = True) -> None:
        self.desc = desc

    def write(self, text: str) -> None:
        if not self.disable:
            print(text, file=self._stream(), flush=True)

    def refresh(self) -> None:
        pass

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        if not self.disable and self.n > self.last_n:  # the final count, unless just reported
            self._emit(time.monotonic())

    # -- the line ----------------------------------------------------------------------------------------------
    def line(self, now: float | None = None) -> str:
        """The current state as one line."""
        now = time.monotonic() if now is None else now
        elapsed = now - self.t0
        done = self.n - self.start_n
        rate = done / elapsed if elapsed > 0 else 0.0
        head = f"{self.desc}: " if self.desc else ""
        count = f"{self.n}/{self.total} {self.unit}" if self.total else f"{self.n} {self.unit}"
        pct = f" ({100 * self.n / self.total:.0f}%)" if self.total else ""
        post = "".join(f" {k}={v}" for k, v in self.postfix.items())
        tail = f" | {rate:.3g} {self.unit}/s, elapsed {format_duration(elapsed)}"
        if self.total and rate > 0:
            tail += f", ETA {format_duration((self.total - self.n) / rate)}"
        return head + count + pct + post + tail

    def _emit(self, now: float) -> None:
        print(self.line(now), file=self._stream(), flush=True)
        self.last_t, self.last_n = now, self.n

    def _stream(self):
        return sys.stderr if self.file is None else self.file
