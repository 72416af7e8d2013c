"""Spec strings: the one reader of ``NAME[:ARG...][,KEY=VALUE...]`` options (``--kv-policy``, ``--decoding``,
``--search``).

    spec = parse_spec("beam:4,steps=2/6", "search", {"beam": "beam:W[,steps=a/b]"}, {"beam": ("steps",)})
    spec.name, spec.args, spec.options      # 'beam', ('4',), {'steps': '2/6'}
    spec.integer(spec.args[0], "beam's width"), spec.integers(spec.options["steps"], "steps")   # 4, (2, 6)

Grammar: a name, then items separated by ``:`` or ``,``.  An item ``key=value`` is an option; any other item is a
positional argument, and positional arguments come before the options.  Case is ignored, ``_`` in the name
reads as ``-`` (``tts_var`` is ``tts-var``), spaces around items are dropped and empty items are ignored
(``sjd:`` is ``sjd``); a repeated option keeps its last value.  Values stay strings until a caller converts
them with the typed helpers, whose errors name the option, the value and what is allowed.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field
from typing import NoReturn

from arvision.errors import ArvisionError


@dataclass(frozen=True)
class Spec:
    """A parsed spec string.  ``text``, ``what`` and ``usage`` only make error messages: they are not compared."""

    name: str
    args: tuple[str, ...] = ()
    options: dict[str, str] = field(default_factory=dict)
    text: str = field(default="", compare=False)  # the string as given
    what: str = field(default="spec", compare=False)  # what it specifies: "search", "decoding", ...
    usage: str = field(default="", compare=False)  # how this name is written, e.g. "sjd[:WINDOW]"

    def fail(self, message: str) -> NoReturn:
        """Raise :class:`ArvisionError` ``<what> '<text>': <message>``."""
        raise ArvisionError(f"{self.what} {self.text!r}: {message}")

    def max_args(self, n: int) -> None:
        """Check that at most ``n`` positional arguments were given."""
        if len(self.args) > n:
            takes = "no parameters" if n == 0 else f"at most {n} parameter{'s' if n > 1 else ''}"
            self.fail(f"cannot read {self.args[n]!r}: {self.name} takes {takes}; use {self.usage}")

    def _convert(self, value: str, option: str, convert: Callable, allowed: str, ok: Callable | None):
        try:
            x = convert(value)
        except ValueError:
            x = None
        if x is None or (ok is not None and not ok(x)):
            self.fail(f"{option} must be {allowed}, got {value!r}")
        return x

    def integer(self, value: str, option: str, allowed: str = "an integer",
                ok: Callable[[int], bool] | None = None) -> int:
        """``value`` as an int (Python's ``int``: ``'8'``, ``' 8'``, ``'-1'``); ``ok`` an extra check, described by
        ``allowed``."""
        return self._convert(value, option, int, allowed, ok)

    def number(self, value: str, option: str, allowed: str = "a number",
               ok: Callable[[float], bool] | None = None) -> float:
        """``value`` as a float (Python's ``float``: ``'0.1'``, ``'1e-3'``); ``ok`` an extra check, described by
        ``allowed``."""
        return self._convert(value, option, float, allowed, ok)

    def integers(self, value: str, option: str) -> tuple[int, ...]:
        """A '/'-separated list of ints, ``'2/4/6'`` -> (2, 4, 6); empty items are ignored (``''`` -> ())."""
        def ints(text: str) -> tuple[int, ...]:
            return tuple(int(t) for t in text.split("/") if t.strip())

        return self._convert(value, option, ints, "integers separated by '/' (e.g. 2/4)", None)


def parse_spec(text: str, what: str, names: Mapping[str, str],
               options: Mapping[str, Collection[str]] | None = None) -> Spec:
    """Read a spec string (grammar: the module docstring).

    text: the string; what: what it specifies, for messages ("search", "decoding", "KV-cache policy");
    names: every allowed name -> how it is written (its usage line, listed when the name is unknown);
    options: name -> the option keys it takes (names not listed take none).
    Raises :class:`ArvisionError` for an empty or non-string spec, an unknown name, an unknown option or a
    positional argument after an option, each message saying what is allowed.
    """
    usage = " | ".join(names.values())
    if not isinstance(text, str) or not text.strip():
        raise ArvisionError(f"{what} must be a spec string ({usage}), got {text!r}")
    head, *items = re.split("[:,]", text.strip().lower())
    name = head.strip().replace("_", "-")
    if name not in names:
        raise ArvisionError(f"unknown {what} {name!r} in {text!r}; use {usage}")
    allowed = tuple((options or {}).get(name, ()))
    args, opts = [], {}
    for item in filter(None, (i.strip() for i in items)):
        key, eq, value = (x.strip() for x in item.partition("="))
        if not eq:
            if opts:
                raise ArvisionError(f"{what} {text!r}: cannot read {item!r}: positional parameters come before the "
                                    f"options; use {names[name]}")
            args.append(item)
        elif key in allowed:
            opts[key] = value
        else:
            raise ArvisionError(f"unknown option {key!r} for {name} {what} in {text!r}; "
                                f"options: {', '.join(allowed) or 'none'}")
    return Spec(name, tuple(args), opts, text, what, names[name])
