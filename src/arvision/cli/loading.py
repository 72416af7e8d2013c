"""Loading the model a command names: a model folder (or Hub name), a bundled model's name (``mnist``, ``shapes``),
or the default bundled model when MODEL is left out."""

from __future__ import annotations


def model_help(what: str = "model folder") -> str:
    """The help text of a command's MODEL argument: what it may be, and its default."""
    from arvision.bundled import DEFAULT_BUNDLED, bundled_names

    names = bundled_names()
    if not names:
        return f"{what} (this build bundles no model)"
    listed = ", ".join(names)
    return f"{what}, or the name of a model bundled with arvision ({listed}) (default: {DEFAULT_BUNDLED})"


def load_pipeline(model: str | None, device: str = "cpu"):
    """``ARPipeline`` of ``model`` (a folder, a Hub id or a bundled name), or of the default bundled model when
    ``model`` is None or empty.  A file or folder named like a bundled model wins over the bundled one."""
    from arvision.bundled import bundled_model_dir
    from arvision.pipeline import ARPipeline

    return ARPipeline.from_pretrained(model if model else bundled_model_dir(), device=device)
