"""The Gradio page of ``arvision serve``: Generate, Edit and Watermark tabs over the handlers (``handlers.py``).

Serving rules: the models are loaded once (``models.load_models``) and shared by every visitor; every request that
runs a model goes through one queue of bounded size (``queue_size``) and one concurrency group of width 1, so a
burst waits in line instead of holding several runs in memory, and a request that finds the line full is refused
at once with Gradio's queue-full error ("This application is currently busy. Please try again.").  A mistake (a
class out of range, a bad number, an upload too large or not an image) is shown as the command line's one-line
message, never a stack trace; anything unexpected is logged on the server and shown as one line saying so.
"""

from __future__ import annotations

import functools
import html
import inspect
import logging
import random
from pathlib import Path

import gradio as gr

from arvision.errors import ArvisionError
from arvision.serve import handlers
from arvision.serve.handlers import EDIT_MODES, PRECISIONS, EditForm, SampleForm
from arvision.serve.models import PROBE_N, ServedModel
from arvision.serve.uploads import MAX_UPLOAD_BYTES, editor_view, painted_mask
from arvision.serve.workspace import Workspace

log = logging.getLogger("arvision.serve")

MODEL_GROUP = "model"  # the concurrency group of every event that runs a model: one run at a time
SEED_MAX_RANDOM = 2**31  # the random button's range (any seed in [0, 2**63 - 1] may be typed)
IMAGE_HEIGHT = 240  # pixels of the page an image takes; the bundled models' 32-64 px images are enlarged to it
# tiny images shown large: keep their pixels sharp instead of smoothing them into a blur
CSS = ("#preview img, #result img, #edit-result img {image-rendering: pixelated; width: 100%; height: 100%; "
       "object-fit: contain;} #wm-gallery img {image-rendering: pixelated;}")


def _one_line(error: BaseException) -> gr.Error:
    """What the page shows for ``error``: an ``ArvisionError``'s message (escaped: the modal renders HTML), or, for
    anything else, a line saying it is a bug (the traceback goes to the server's log only)."""
    if isinstance(error, ArvisionError):
        return gr.Error(html.escape(str(error)), print_exception=False)
    log.exception("request failed", exc_info=error)
    return gr.Error(f"internal error ({type(error).__name__}); the server's log has the details",
                    print_exception=False)


def shown(fn):
    """Wrap a handler so that its errors reach the page as one line (generators too: Gradio streams what they
    yield, and must still see a generator function)."""
    if inspect.isgeneratorfunction(fn):
        @functools.wraps(fn)
        def streaming(*args):
            try:
                yield from fn(*args)
            except gr.Error:
                raise
            except Exception as e:
                raise _one_line(e) from None
        return streaming

    @functools.wraps(fn)
    def plain(*args):
        try:
            return fn(*args)
        except gr.Error:
            raise
        except Exception as e:
            raise _one_line(e) from None
    return plain


class Page:
    """The page's handlers, bound to the served models and the request folders."""

    def __init__(self, models: list[ServedModel], workspace: Workspace):
        self.models = {m.name: m for m in models}
        self.workspace = workspace

    def model(self, name: str) -> ServedModel:
        if name not in self.models:
            raise ArvisionError(f"no model named {name!r} on this server ({', '.join(self.models)})")
        return self.models[name]

    # -- widgets that follow the model ---------------------------------------------------------------------------
    def condition_updates(self, name: str) -> tuple:
        """Class picker or prompt box, and the knobs' defaults, for model ``name``."""
        m = self.model(name)
        d = m.defaults()
        choices = m.class_choices() if not m.takes_text else []
        first = [choices[0][1]] if choices else []
        searches = handlers.search_labels()[:1] + list(m.searches)
        note = self.search_note(name)
        return (gr.update(choices=choices, value=first, visible=not m.takes_text),
                gr.update(visible=m.takes_text),
                gr.update(label="Images per prompt" if m.takes_text else "Images per class"),
                gr.update(value=d["guidance_scale"]), gr.update(value=d["top_k"]), gr.update(value=d["top_p"]),
                gr.update(value=d["temperature"]), gr.update(choices=searches, value="none"),
                gr.update(value=note), gr.update(value=self.describe(name)))

    def search_note(self, name: str) -> str:
        """What ranks a search's candidates on model ``name``, and which searches it cannot run (and why)."""
        m = self.model(name)
        note = (f"Search ranks candidates with {'the caption matcher' if m.takes_text else 'the digit classifier'}."
                if m.searches else "This model supports no search.")
        return note + (f" Not available: {m.search_note}" if m.search_note else "")

    def describe(self, name: str) -> str:
        from arvision.cli.info import describe

        return "```\n" + describe(self.model(name).pipe) + "\n```"

    def watermark_condition(self, name: str) -> tuple:
        m = self.model(name)
        choices = m.class_choices() if not m.takes_text else []
        return (gr.update(choices=choices, value=[choices[0][1]] if choices else [], visible=not m.takes_text),
                gr.update(visible=m.takes_text))

    def edit_classes(self, name: str):
        m = self.model(name)
        return gr.update(choices=m.class_choices() if not m.takes_text else [], value=None)

    # -- Generate ------------------------------------------------------------------------------------------------
    def generate(self, name, classes, prompt, per_item, seed, cfg, top_k, top_p, temperature, precision,
                 batch_size, search, search_n):
        form = SampleForm(classes=tuple(classes or ()), prompt=prompt, per_item=per_item, seed=seed, cfg=cfg,
                          top_k=top_k, top_p=top_p, temperature=temperature, precision=precision,
                          batch_size=batch_size, search=search, search_n=search_n)
        run = handlers.generate(self.model(name), form, self.workspace.new())
        skip = gr.skip()
        while True:
            try:
                preview = next(run)
            except StopIteration as done:
                result = done.value
                break
            yield preview.image, skip, preview.caption, skip, skip, skip, skip
        yield (skip, str(result.grid), result.info, gr.update(value=str(result.grid), interactive=True),
               gr.update(value=str(result.tokens), interactive=True), f"```\n{result.command}\n```",
               [str(p) for p in result.images])

    # -- Edit ----------------------------------------------------------------------------------------------------
    def take_upload(self, path):
        if not path:
            raise ArvisionError("no image uploaded")
        return self._source(path)

    def take_sample(self, images):
        if not images:
            raise ArvisionError("no sample yet: generate an image on the Generate tab first")
        return self._source(images[0])

    def _source(self, path):
        from PIL import Image

        source = handlers.take_source(path, self.workspace.new())
        with Image.open(source) as im:
            view = editor_view(im.convert("RGB"))
        editor = {"background": view, "layers": [], "composite": view}
        w, h = view.size
        return editor, str(source), f"{Path(path).name}: paint the region (the picture is shown at {w}x{h})"

    def edit(self, name, source, editor, mode, klass, seed):
        from PIL import Image

        if not source:
            raise ArvisionError("no image to edit: upload one, or take the Generate tab's sample")
        with Image.open(source) as im:
            size, shown_size = im.size, editor_view(im).size
        background = (editor or {}).get("background")
        if background is not None and background.size != shown_size:  # another picture got into the editor
            raise ArvisionError("the editor shows another picture than the one taken: upload the image with the "
                                "upload box (or take the Generate tab's sample) again")
        painted = painted_mask((editor or {}).get("layers"), size)
        result = handlers.edit(self.model(name), Path(source), painted, EditForm(mode, klass, seed))
        return (str(result.compare), gr.update(value=str(result.edited), interactive=True), result.info,
                f"```\n{result.command}\n```")

    # -- Watermark -----------------------------------------------------------------------------------------------
    def watermark(self, name, key, classes, prompt, seed, delta, align):
        form = SampleForm(classes=tuple(classes or ()), prompt=prompt, seed=seed, watermark_key=key or "",
                          watermark_delta=delta, watermark_align=align)
        run = handlers.generate(self.model(name), form, self.workspace.new(), previews=False)
        while True:  # no previews here: an aligned image changes once more after sampling
            try:
                next(run)
            except StopIteration as done:
                result = done.value
                break
        files = [str(p) for p in result.images]
        return files, files, result.info, f"```\n{result.command}\n```"

    def detect(self, name, files, key, threshold):
        rows = handlers.detect(self.model(name), list(files or []), key, threshold)
        return handlers.detection_table(rows) + "\n\n" + handlers.Z_MEANING


def build_app(models: list[ServedModel], workspace: Workspace, queue_size: int = 16) -> gr.Blocks:
    """The page over ``models`` (a picker when there are several), its queue bounded to ``queue_size`` requests."""
    page = Page(models, workspace)
    first = models[0].name
    busy = {"concurrency_limit": 1, "concurrency_id": MODEL_GROUP}
    m0 = models[0]
    d0, choices0 = m0.defaults(), (m0.class_choices() if not m0.takes_text else [])
    picked0 = [choices0[0][1]] if choices0 else []
    with gr.Blocks(title="arvision", analytics_enabled=False, delete_cache=(600, 3600)) as demo:
        gr.Markdown("# arvision\nAutoregressive image generation: pick a class (or type a prompt), watch the image "
                    "come together coarse to fine, then edit or watermark it.  Every result equals what the "
                    "command shown under it writes.")
        with gr.Row():
            picker = gr.Dropdown([m.name for m in models], value=first, label="Model", visible=len(models) > 1,
                                 elem_id="model")
            about = gr.Markdown(page.describe(first))
        samples = gr.State([])  # this visitor's last generated images (the Edit tab can take the first)

        with gr.Tab("Generate", id="generate"):
            with gr.Row():
                with gr.Column(scale=1):
                    classes = gr.Dropdown(choices0, value=picked0, label="Classes (pick, or type an id)",
                                          multiselect=True, allow_custom_value=True, visible=not m0.takes_text,
                                          elem_id="classes")
                    prompt = gr.Textbox(label="Prompt", placeholder="a photo of a red circle", elem_id="prompt",
                                        visible=m0.takes_text)
                    per_item = gr.Number(1, precision=0, label="Images per prompt" if m0.takes_text
                                         else "Images per class", elem_id="per-item")
                    with gr.Row():
                        seed = gr.Textbox("0", label="Seed", elem_id="seed", scale=3)
                        dice = gr.Button("Random seed", elem_id="random-seed", scale=1)
                    cfg = gr.Slider(0, 10, value=d0["guidance_scale"], step=0.1, label="Guidance (cfg)",
                                    elem_id="cfg")
                    top_k = gr.Number(d0["top_k"], precision=0, label="Top-k (0 = off)", elem_id="top-k")
                    top_p = gr.Slider(0, 1, value=d0["top_p"], step=0.01, label="Top-p (0 = off)", elem_id="top-p")
                    temperature = gr.Slider(0.05, 3, value=d0["temperature"], step=0.05, label="Temperature",
                                            elem_id="temperature")
                    precision = gr.Radio(list(PRECISIONS), value="fp32", label="Precision (fp32 = exact)",
                                         elem_id="precision")
                    batch_size = gr.Number(0, precision=0, label="Batch size (0 = automatic)", elem_id="batch-size")
                    with gr.Row():
                        search = gr.Dropdown(["none", *m0.searches], value="none", label="Search", elem_id="search",
                                             scale=2)
                        search_n = gr.Number(PROBE_N, precision=0, label="Candidates / width", scale=1)
                    search_note = gr.Markdown(page.search_note(first))
                    go = gr.Button("Generate", variant="primary", elem_id="generate-button")
                with gr.Column(scale=2):
                    preview = gr.Image(label="Coarse to fine, as it is computed", type="pil", format="png",
                                       interactive=False, height=IMAGE_HEIGHT, elem_id="preview")
                    grid = gr.Image(label="Result", type="filepath", format="png", interactive=False,
                                    height=IMAGE_HEIGHT, elem_id="result")
                    status = gr.Markdown(elem_id="status")
                    with gr.Row():
                        png = gr.DownloadButton("Download PNG", interactive=False, elem_id="download-png")
                        tokens = gr.DownloadButton("Download tokens (safetensors)", interactive=False,
                                                   elem_id="download-tokens")
                    command = gr.Markdown(elem_id="command")

        with gr.Tab("Edit", id="edit"):
            with gr.Row():
                with gr.Column(scale=1):
                    upload = gr.File(label="Upload an image to edit", type="filepath", elem_id="edit-upload")
                    take = gr.Button("Take the Generate tab's first image", elem_id="take-sample")
                    mode = gr.Radio(list(EDIT_MODES), value="in-paint", label="What to do with the painted region",
                                    info="in-paint: regenerate it; out-paint: keep it, regenerate the rest; class "
                                         "edit: regenerate it as the chosen class", elem_id="edit-mode")
                    edit_class = gr.Dropdown(choices0, value=None, label="Class (class edit)",
                                             allow_custom_value=True, elem_id="edit-class")
                    edit_seed = gr.Textbox("0", label="Seed", elem_id="edit-seed")
                    edit_go = gr.Button("Edit", variant="primary", elem_id="edit-button")
                with gr.Column(scale=2):
                    editor = gr.ImageEditor(type="pil", sources=(), layers=False, transforms=(),
                                            label="Paint the region", elem_id="editor",
                                            brush=gr.Brush(colors=["#ff2a2a"], color_mode="fixed", default_size=24))
                    edit_status = gr.Markdown(elem_id="edit-status")
                    compare = gr.Image(label="Source | mask | edit", type="filepath", format="png",
                                       interactive=False, height=IMAGE_HEIGHT, elem_id="edit-result")
                    edited = gr.DownloadButton("Download the edit", interactive=False, elem_id="download-edit")
                    edit_command = gr.Markdown(elem_id="edit-command")
            source = gr.State(None)

        with gr.Tab("Watermark", id="watermark"):
            with gr.Row():
                with gr.Column():
                    gr.Markdown("### Generate with a key")
                    key = gr.Textbox(label="Secret key", placeholder="any text; the detector needs the same",
                                     elem_id="wm-key")
                    wm_classes = gr.Dropdown(choices0, value=picked0, label="Classes", multiselect=True,
                                             allow_custom_value=True, visible=not m0.takes_text,
                                             elem_id="wm-classes")
                    wm_prompt = gr.Textbox(label="Prompt", visible=m0.takes_text, elem_id="wm-prompt")
                    wm_seed = gr.Textbox("0", label="Seed", elem_id="wm-seed")
                    delta = gr.Textbox("4.0", label="Bias delta (or 'hard')", elem_id="wm-delta")
                    align = gr.Number(0.1, label="Alignment strength (empty = none: the detector rarely finds an "
                                                 "unaligned watermark)", elem_id="wm-align")
                    wm_go = gr.Button("Generate watermarked", variant="primary", elem_id="wm-button")
                    wm_gallery = gr.Gallery(label="Watermarked images", columns=4, height=200, object_fit="contain",
                                            fit_columns=False, preview=False, allow_preview=False, interactive=False,
                                            elem_id="wm-gallery")
                    wm_status = gr.Markdown(elem_id="wm-status")
                    wm_command = gr.Markdown()
                with gr.Column():
                    gr.Markdown("### Detect")
                    files = gr.File(label="Images to test (the generated ones are put here)", file_count="multiple",
                                    type="filepath", elem_id="detect-files")
                    threshold = gr.Number(4.0, label="Threshold on z", elem_id="threshold")
                    detect_go = gr.Button("Detect", variant="primary", elem_id="detect-button")
                    verdicts = gr.Markdown(elem_id="verdicts")

        condition_outputs = [classes, prompt, per_item, cfg, top_k, top_p, temperature, search, search_note, about]
        picker.change(shown(page.condition_updates), picker, condition_outputs, queue=False)
        picker.change(shown(page.watermark_condition), picker, [wm_classes, wm_prompt], queue=False)
        picker.change(shown(page.edit_classes), picker, edit_class, queue=False)
        dice.click(lambda: str(random.randrange(SEED_MAX_RANDOM)), None, seed, queue=False)

        go.click(shown(page.generate),
                 [picker, classes, prompt, per_item, seed, cfg, top_k, top_p, temperature, precision, batch_size,
                  search, search_n],
                 [preview, grid, status, png, tokens, command, samples], api_name="generate", **busy)
        upload.upload(shown(page.take_upload), upload, [editor, source, edit_status], api_name="take_upload")
        take.click(shown(page.take_sample), samples, [editor, source, edit_status], api_name="take_sample")
        edit_go.click(shown(page.edit), [picker, source, editor, mode, edit_class, edit_seed],
                      [compare, edited, edit_status, edit_command], api_name="edit", **busy)
        wm_go.click(shown(page.watermark), [picker, key, wm_classes, wm_prompt, wm_seed, delta, align],
                    [wm_gallery, files, wm_status, wm_command], api_name="watermark", **busy)
        detect_go.click(shown(page.detect), [picker, files, key, threshold], verdicts, api_name="detect", **busy)
    demo.queue(max_size=queue_size, default_concurrency_limit=1)
    return demo


def launch(models: list[ServedModel], host: str = "127.0.0.1", port: int = 7860, queue_size: int = 16,
           quiet: bool = False) -> None:
    """Serve the page until interrupted or terminated (offline: no share link, no analytics, Gradio's bundled front
    end); the request folders are removed either way."""
    import signal
    import sys
    import threading

    if threading.current_thread() is threading.main_thread():  # only the main thread may set signal handlers
        # SIGTERM (a service manager, a test stopping its server) would end Python without running ``finally``
        signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(0))
    workspace = Workspace()
    try:
        demo = build_app(models, workspace, queue_size)
        demo.launch(server_name=host, server_port=port, share=False, inbrowser=False, ssr_mode=False,
                    max_file_size=MAX_UPLOAD_BYTES, quiet=quiet, show_error=False, css=CSS)
    finally:
        workspace.close()
