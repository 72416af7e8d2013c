"""The model shipped inside the package, and a tiny random stand-in for demos before one is trained."""

from __future__ import annotations

from pathlib import Path

import torch

from arvision.errors import ArvisionError

ASSETS = Path(__file__).parent / "assets"


def bundled_model_dir() -> Path:
    """Folder of the bundled trained model; an error says so plainly when this build has none."""
    folder = ASSETS / "model"
    if not (folder / "config.json").is_file():
        raise ArvisionError("no trained model is bundled with this version of arvision yet; pass a model folder "
                            "(make one from official checkpoints with `arvision convert`)")
    return folder


def tiny_random_pipeline(seed: int = 0):
    """A tiny randomly initialised class-conditional VAR model (10 classes, 32 px, 4 scales).

    Its images are noise; it exists so that the demo and the README's first command run end to end."""
    from arvision.config import ModelConfig, TokenizerConfig, TransformerConfig
    from arvision.pipeline import ARPipeline

    tok = TokenizerConfig(kind="multiscale", vocab_size=64, embed_dim=8, z_channels=8, ch=32, ch_mult=(1, 2, 2),
                          patch_nums=(1, 2, 4, 8))
    tr = TransformerConfig(block="adaln", width=128, depth=2, num_heads=2, vocab_size=64, num_classes=10,
                           in_channels=8)
    torch.manual_seed(seed)
    pipe = ARPipeline(ModelConfig(family="var", image_size=32, tokenizer=tok, transformer=tr,
                                  class_names=tuple(str(i) for i in range(10))))
    pipe.transformer.init_weights()
    return pipe
