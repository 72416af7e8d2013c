"""Checks of the training configs' fields (``ARTrainConfig``, ``TokenizerTrainConfig``): types and ranges, one
readable error per bad field, raised when the config is built -- before any data is read."""

from __future__ import annotations

import math

from arvision.errors import ArvisionError


def is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def is_number(value) -> bool:
    """A finite real number (NaN and infinities pass every ``<``/``>`` test the wrong way, so they are refused)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def need(config, name: str, ok: bool, allowed: str) -> None:
    """Raise ``invalid NAME: VALUE (must be ALLOWED)`` unless ``ok``."""
    if not ok:
        raise ArvisionError(f"invalid {name}: {getattr(config, name)!r} (must be {allowed})")


def check_counts(config, at_least_one: tuple[str, ...], at_least_zero: tuple[str, ...]) -> None:
    """Integer fields: those of ``at_least_one`` >= 1, those of ``at_least_zero`` >= 0."""
    for name in at_least_one:
        need(config, name, is_int(getattr(config, name)) and getattr(config, name) >= 1, "an integer >= 1")
    for name in at_least_zero:
        need(config, name, is_int(getattr(config, name)) and getattr(config, name) >= 0, "an integer >= 0")


def check_common(config) -> None:
    """The fields every training config has: learning rate and its schedule, clipping, precision."""
    from arvision.precision import PRECISIONS

    need(config, "lr", is_number(config.lr) and config.lr > 0, "a finite number > 0")
    for name in ("weight_decay", "grad_clip"):
        need(config, name, is_number(getattr(config, name)) and getattr(config, name) >= 0, "a finite number >= 0")
    need(config, "decay", config.decay in ("cosine", "linear", "constant"), "'cosine', 'linear' or 'constant'")
    need(config, "min_lr_ratio", is_number(config.min_lr_ratio) and 0 <= config.min_lr_ratio <= 1, "in [0, 1]")
    need(config, "precision", config.precision in PRECISIONS, f"one of {', '.join(PRECISIONS)}")
