"""``arvision serve``: a web page (Gradio) over the one pipeline: Generate, Edit and Watermark tabs.

The page is a front end of the command line, not a second engine: every request is turned into the arguments of the
matching command (``arvision sample``, ``edit``, ``watermark detect``), parsed and checked by the command's own parser
and checks, and run by the same functions, so the page shows exactly what the command would write (the tests compare
the two pixel for pixel) and a mistake gets the command's one-line message.

* :mod:`~arvision.serve.models`     the models a server holds (loaded once per process) and what each supports;
* :mod:`~arvision.serve.handlers`   page values -> command arguments -> results (no Gradio here: unit-testable);
* :mod:`~arvision.serve.streaming`  a sampling run in a worker thread, its per-step previews as a generator;
* :mod:`~arvision.serve.uploads`    checks of uploaded files (size, pixels, images at all) and painted masks;
* :mod:`~arvision.serve.workspace`  per-request folders for the files a page offers for download;
* :mod:`~arvision.serve.app`        the Gradio page (the only module importing Gradio).

Above the library like the CLI: nothing under ``sampling/``, ``models/`` etc. (nor ``pipeline.py``) imports it.
"""
