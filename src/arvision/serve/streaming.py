"""A long call in a worker thread, its progress events handed to the caller as a generator.

The pipeline reports each step through a callback, deep inside its loop; a page wants a generator it can iterate
(Gradio streams what a handler yields).  :func:`stream` runs ``work(emit)`` in a thread: every ``emit(event)`` is
yielded as it happens, and ``work``'s return value becomes the generator's return value (``yield from``).  When the
consumer stops early (the visitor closed the page), the next ``emit`` raises :class:`Stopped`, ending the run at
its next step instead of computing images nobody will see.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Generator


class Stopped(Exception):
    """Raised inside the worker by ``emit`` once the consumer has gone."""


def stream(work: Callable[[Callable[[object], None]], object]) -> Generator[object, None, object]:
    """Yield every event ``work(emit)`` emits, then return what ``work`` returned; an exception in ``work`` is
    raised here, in the consumer's thread."""
    events: queue.Queue = queue.Queue()
    gone = threading.Event()

    def emit(event) -> None:
        if gone.is_set():
            raise Stopped
        events.put(("event", event))

    def run() -> None:
        try:
            events.put(("done", work(emit)))
        except Stopped:
            pass
        except BaseException as e:  # handed to the consumer, which reports it
            events.put(("error", e))

    worker = threading.Thread(target=run, name="arvision-serve-work", daemon=True)
    worker.start()
    try:
        while True:
            kind, value = events.get()
            if kind == "event":
                yield value
            elif kind == "done":
                return value
            else:
                raise value
    finally:
        gone.set()
