"""Tokenizers made from other tokenizers.

:func:`single_map_from_multiscale` turns VAR's multi-scale residual tokenizer into LlamaGen's single-map kind with
the same convolutional trunk, so that a raster (or MaskGIT / NAR) model can be trained on images a VAR model was
trained on without training a tokenizer from scratch: the encoder, decoder and quant / post-quant convs are kept,
VAR's residual convs (phi) have no counterpart and are dropped, and the codebook is seeded with the encoder's own
features, so every code starts in use.  Fine-tune the result (``arvision train-tokenizer --init``): a single 8x8
map of codes holds less than the six residual scales did.
"""

from __future__ import annotations

import dataclasses

import torch

from arvision.errors import ArvisionError

__all__ = ["single_map_from_multiscale"]


@torch.no_grad()
def single_map_from_multiscale(src, images: torch.Tensor, vocab_size: int,
                               generator: torch.Generator | None = None, batch_size: int = 64):
    """A ``VQTokenizer`` with ``src``'s trunk and ``vocab_size`` codes drawn from its features.

    src: a ``MultiScaleVQTokenizer``.  images: (N, 3, S, S) in [-1, 1]; their N * h * w latent positions
    (``src.features``) must number at least ``vocab_size``, and ``vocab_size`` distinct positions, chosen with
    ``generator``, become the codes.  Returns the new tokenizer in eval mode on ``src``'s device.
    """
    from arvision.tokenizers.models import MultiScaleVQTokenizer, build_tokenizer

    if not isinstance(src, MultiScaleVQTokenizer):
        raise ArvisionError(f"a multi-scale tokenizer is needed, got a {src.cfg.kind!r} one")
    cfg = dataclasses.replace(src.cfg, kind="vq", vocab_size=int(vocab_size))
    with torch.random.fork_rng(devices=[]):  # its codebook init is overwritten; leave the caller's RNG alone
        vq = build_tokenizer(cfg)
    trunk = {k: v for k, v in src.state_dict().items() if not k.startswith("quantize.")}
    missing, unexpected = vq.load_state_dict(trunk, strict=False)
    if missing != ["quantize.embedding.weight"] or unexpected:  # the trunks must match key for key
        raise ArvisionError(f"the trunks differ: missing {missing}, unexpected {unexpected}")
    vq = vq.to(images.device).eval()
    feats = torch.cat([src.features(images[i:i + batch_size]) for i in range(0, len(images), batch_size)])
    feats = feats.permute(0, 2, 3, 1).reshape(-1, feats.shape[1])
    if len(feats) < vocab_size:
        raise ArvisionError(f"{len(images)} images give {len(feats)} latent positions, fewer than the "
                            f"{vocab_size} codes to seed: give more images")
    rows = torch.randperm(len(feats), generator=generator, device="cpu")[:vocab_size].to(feats.device)
    vq.quantize.embedding.weight.copy_(feats[rows])
    return vq
