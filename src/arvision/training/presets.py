"""Transformer sizes for training from scratch: the small named trunks and the released VAR / LlamaGen sizes."""

from __future__ import annotations

from arvision.errors import ArvisionError

# Trunk sizes for training from scratch: name -> (depth, width); heads = width / 64.  The released sizes
# (VAR d16..d36, LlamaGen B..3B) are available too.
SIZES = {"tiny": (2, 64), "small": (6, 192), "base": (8, 256), "medium": (12, 512)}


def transformer_config(family: str, preset: str, vocab: int, num_classes: int, in_channels: int,
                       heads: int | None = None):
    """The ``TransformerConfig`` of ``family`` ("var" or "llamagen") at size ``preset`` (a name of ``SIZES`` or a
    released size of the family); ``heads`` overrides the head count of the ``SIZES`` trunks."""
    from arvision.config import TransformerConfig
    from arvision.families import llamagen, var

    if preset in SIZES:
        depth, width = SIZES[preset]
        nh = heads or max(width // 64, 1)
    elif family == "var" and preset in var.PRESETS:
        depth, width, nh = var.PRESETS[preset][0], 64 * var.PRESETS[preset][0], var.PRESETS[preset][0]
    elif family == "llamagen" and preset in llamagen.PRESETS:
        depth, width, nh = llamagen.PRESETS[preset]
    else:
        known = sorted(SIZES) + sorted(var.PRESETS if family == "var" else llamagen.PRESETS)
        raise ArvisionError(f"unknown preset {preset!r} for {family}; known: {', '.join(known)}")
    block = "adaln" if family == "var" else "llama"
    return TransformerConfig(block=block, width=width, depth=depth, num_heads=nh, vocab_size=vocab,
                             num_classes=num_classes, in_channels=in_channels)
