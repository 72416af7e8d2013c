"""User-facing errors.

Everything that is the caller's fault (a bad argument, a bad file, a checkpoint that does not match)
raises :class:`ArvisionError` with a message that says what is wrong and what is allowed.  The CLI turns
these into one line on stderr and exit status 2, never a stack trace.
"""


class ArvisionError(Exception):
    """A problem with the caller's input; the message is meant for a person."""


class CheckpointError(ArvisionError):
    """A checkpoint file that cannot be read, is unsafe, or does not fit the model."""


def check(condition: bool, message: str) -> None:
    """Raise :class:`ArvisionError` with ``message`` unless ``condition`` holds."""
    if not condition:
        raise ArvisionError(message)
