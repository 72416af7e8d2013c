"""arvision: autoregressive image generation (VAR next-scale, LlamaGen next-token) on one core."""

__version__ = "0.1.0"

from arvision.errors import ArvisionError, CheckpointError  # noqa: E402

__all__ = ["ArvisionError", "CheckpointError", "ARPipeline", "__version__"]


def __getattr__(name):
    # The pipeline pulls in torch; import it lazily so `arvision --help` stays fast.
    if name == "ARPipeline":
        from arvision.pipeline import ARPipeline

        return ARPipeline
    raise AttributeError(name)
