"""Loading the model a command names: a model folder (or Hub name), or the model bundled with arvision."""

from __future__ import annotations


def load_pipeline(model: str | None, device: str = "cpu"):
    """``ARPipeline`` of ``model``, or of the bundled model when ``model`` is None or empty."""
    from arvision.bundled import bundled_model_dir
    from arvision.pipeline import ARPipeline

    return ARPipeline.from_pretrained(model if model else bundled_model_dir(), device=device)
