"""Transformer sizes for training from scratch: the small named trunks and each family's released sizes."""

from __future__ import annotations

from arvision.errors import ArvisionError

# Trunk sizes for training from scratch: name -> (depth, width); heads = width / 64.  The released sizes
# (VAR d16..d36, LlamaGen B..3B) are available too, through their family's ``presets``.
SIZES = {"tiny": (2, 64), "small": (6, 192), "base": (8, 256), "medium": (12, 512)}


def transformer_config(family: str, preset: str, vocab: int, num_classes: int, in_channels: int,
                       heads: int | None = None, latent_side: int | None = None):
    """The ``TransformerConfig`` of ``family`` (a registered name) at size ``preset`` (a name of ``SIZES`` or a
    released size of the family); ``heads`` overrides the head count of the ``SIZES`` trunks.  ``latent_side``:
    the tokenizer's latent grid side, for the fields a family derives from it (``Family.from_scratch``).  ``vocab``:
    the tokenizer's code count (the head's logits: ``Family.trunk_vocab``)."""
    from arvision.config import TransformerConfig
    from arvision.families import get_family

    fam = get_family(family)
    if preset in SIZES:
        depth, width = SIZES[preset]
        nh = heads or max(width // 64, 1)
    elif preset in fam.presets:
        depth, width, nh = fam.presets[preset]
    else:
        known = sorted(SIZES) + sorted(fam.presets)
        raise ArvisionError(f"unknown preset {preset!r} for {family}; known: {', '.join(known)}")
    extra = fam.from_scratch(latent_side) if latent_side is not None else {}
    return TransformerConfig(block=fam.block, width=width, depth=depth, num_heads=nh,
                             vocab_size=fam.trunk_vocab(vocab, in_channels),
                             num_classes=num_classes, in_channels=in_channels, **extra)
