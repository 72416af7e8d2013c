"""The checks shared by the training configs (``ARTrainConfig``, ``TokenizerTrainConfig``), raised when the config
is built -- before any data is read.  Types come from the fields' annotations and ranges are checked the way the
model configs check theirs (``arvision.config.check_types`` / ``check_range``): one readable error per bad field."""

from __future__ import annotations

from arvision.config import check_range, check_types, fail


def check_choice(config, name: str, choices: tuple[str, ...]) -> None:
    if getattr(config, name) not in choices:
        fail(name, getattr(config, name), f"one of {', '.join(map(repr, choices))}")


def check_common(config, at_least_one: tuple[str, ...], at_least_zero: tuple[str, ...]) -> None:
    """Every field's type; the counts (``at_least_one`` >= 1, ``at_least_zero`` >= 0); the learning rate, its
    schedule, clipping and precision that every training config has."""
    from arvision.precision import PRECISIONS

    check_types(config)
    for name in at_least_one:
        check_range(name, getattr(config, name), 1)
    for name in at_least_zero:
        check_range(name, getattr(config, name), 0)
    check_range("lr", config.lr, 0.0, lo_open=True)
    check_range("weight_decay", config.weight_decay, 0.0)
    check_range("grad_clip", config.grad_clip, 0.0)
    check_range("min_lr_ratio", config.min_lr_ratio, 0.0, 1.0)
    check_choice(config, "decay", ("cosine", "linear", "constant"))
    check_choice(config, "precision", PRECISIONS)
