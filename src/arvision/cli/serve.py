"""``arvision serve``: the web page (``arvision.serve``) over one or more models, on this machine by default.

    arvision serve                      (the bundled models, with a model picker)
    arvision serve my-model --port 8000 --queue-size 32
    arvision serve --host 0.0.0.0       (reachable from other machines: only on a network you trust)

Needs the ``demo`` extra (Gradio): ``pip install -e ".[demo]"``.
"""

from __future__ import annotations

import os

from arvision.bundled import bundled_names
from arvision.cli import types
from arvision.errors import ArvisionError

DEFAULT_QUEUE_SIZE = 16


def add_parser(sub) -> None:
    """Register ``arvision serve`` on the CLI's sub-parsers."""
    p = sub.add_parser("serve", help="open a web page (Gradio) to generate, edit and watermark images",
                       description="Serve a web page with Generate, Edit and Watermark tabs over the models (loaded "
                                   "once, shared by every visitor). Requests wait in one queue and run one at a "
                                   "time; when --queue-size requests wait, new ones are refused at once (Gradio's "
                                   "queue-full error: 'This application is currently busy. Please try again.'). "
                                   "Needs the demo extra: pip install -e \".[demo]\". docs/serve.md has more.")
    p.add_argument("models", nargs="*", metavar="MODEL",
                   help=f"model folders or names of bundled models ({', '.join(bundled_names()) or 'none here'}); "
                        "several get a model picker (default: every bundled model)")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to listen on (default 127.0.0.1: this machine only; 0.0.0.0: every interface)")
    p.add_argument("--port", type=types.port, default=7860, help="port to listen on (default 7860)")
    p.add_argument("--queue-size", type=types.positive_int, default=DEFAULT_QUEUE_SIZE,
                   help="requests that may wait for the model at once; more are refused at once with Gradio's "
                        f"queue-full error (default {DEFAULT_QUEUE_SIZE})")
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (default cpu)")
    p.set_defaults(func=cmd_serve)


def _gradio_available() -> None:
    try:
        import gradio  # noqa: F401
    except ImportError:
        raise ArvisionError('arvision serve needs Gradio, which is not installed: pip install -e ".[demo]" '
                            "(in a clone of arvision; elsewhere pip install gradio)") from None


def cmd_serve(args) -> None:
    # the page runs offline: no usage statistics sent, nothing fetched (Gradio's front end is in its wheel)
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    _gradio_available()
    from arvision.serve.models import load_models

    models = load_models(args.models, args.device)
    from arvision.serve.app import launch

    where = "this machine only" if args.host in ("127.0.0.1", "localhost", "::1") else "other machines too"
    print(f"serving {', '.join(m.name for m in models)} at http://{args.host}:{args.port} ({where}; queue of "
          f"{args.queue_size}; Ctrl+C stops)", flush=True)
    try:
        launch(models, args.host, args.port, args.queue_size, quiet=True)
    except OSError as e:  # Gradio: "Cannot find empty port in range: 7860-7860"
        raise ArvisionError(f"cannot listen on {args.host}:{args.port} ({e}): is it in use? pick another --port") \
            from None
