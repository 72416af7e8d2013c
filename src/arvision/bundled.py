"""The models shipped inside the package, addressable by name, and a tiny random stand-in for demos.

``BUNDLED`` maps each name to its folder under ``assets/``: ``mnist`` (the class-conditional digits model, the
default of every command that takes a MODEL), ``shapes`` and ``shapes-raster`` (the text-to-image VAR and raster
models of the shapes world).  A build may lack some of them; :func:`bundled_names` lists those present.  Wherever a
model folder is accepted (the command line, ``ARPipeline.from_pretrained``) a bundled name works too, unless a file
or folder of that name exists in the working directory: a path that exists always wins.
"""

from __future__ import annotations

from pathlib import Path

import torch

from arvision.errors import ArvisionError

ASSETS = Path(__file__).parent / "assets"
BUNDLED = {"mnist": "model", "shapes": "shapes", "shapes-raster": "shapes_raster"}  # name -> folder under ASSETS
DEFAULT_BUNDLED = "mnist"


def _present(name: str) -> bool:
    return (ASSETS / BUNDLED[name] / "config.json").is_file()


def bundled_names() -> list[str]:
    """The names of the bundled models this build holds, the default first."""
    return [name for name in BUNDLED if _present(name)]


def bundled_model_dir(name: str = DEFAULT_BUNDLED) -> Path:
    """Folder of the bundled model ``name``; an error says so plainly when this build has none of that name."""
    if name not in BUNDLED or not _present(name):
        have = bundled_names()
        which = f"bundled models: {', '.join(have)}" if have else "it has no bundled model"
        raise ArvisionError(f"no bundled model named {name} in this build ({which}); pass a model folder (make one "
                            "with `arvision train` or, from official checkpoints, `arvision convert`)")
    return ASSETS / BUNDLED[name]


def bundled_name(model: str | Path | None) -> str | None:
    """The bundled name a command's MODEL stands for: the default when it is left out (None or ""), the name
    itself when it is one of ``BUNDLED`` and no file or folder of that name exists here, else None (a path or a
    Hub id).  Says nothing about whether this build holds that model (:func:`bundled_model_dir` does)."""
    if model is None or str(model) == "":
        return DEFAULT_BUNDLED
    if str(model) in BUNDLED and not Path(model).exists():
        return str(model)
    return None


def model_location(model: str | Path | None) -> str | Path:
    """Where MODEL is: a bundled model's folder for a bundled name (see :func:`bundled_name`), else ``model``."""
    name = bundled_name(model)
    return bundled_model_dir(name) if name is not None else model


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
