"""argparse value types shared by the commands."""

from __future__ import annotations

import argparse


def int_list(text: str) -> list[int]:
    """Comma-separated integers (``1,2,3``)."""
    try:
        return [int(t) for t in text.replace(" ", "").split(",") if t]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
