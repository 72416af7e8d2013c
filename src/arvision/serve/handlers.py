"""The page's requests, as the command line's: page values -> a command's arguments -> the command's own checks
and functions -> files and a few lines of text.  No Gradio here (``app.py`` wires these to the page), so every
handler is tested directly.

Each handler builds the argument list of the matching command (:func:`sample_argv`, :func:`edit_argv`,
:func:`detect_argv`) and parses it with the real ``arvision`` parser, so the argparse types and the command's checks
produce the same one-line messages as in a terminal, and the equivalent command the page shows is that list.
"""

from __future__ import annotations

import math
import shlex
import time
from collections.abc import Generator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from arvision.errors import ArvisionError
from arvision.serve.models import SEARCH_KINDS, ServedModel
from arvision.serve.streaming import stream
from arvision.serve.uploads import read_upload

MAX_IMAGES = 16  # per request on the page (a shared server); `arvision sample --out-dir` takes any number
MAX_DETECT_FILES = 32
PRECISIONS = ("fp32", "bf16", "auto")
EDIT_MODES = ("in-paint", "out-paint", "class edit")


# -- the command line ----------------------------------------------------------------------------------------------

def parse_command(argv: list[str]):
    """``argv`` (without ``arvision``) -> the parsed namespace, exactly as the command line parses it; a refused
    argument raises ``ArvisionError`` with argparse's one line (e.g. "argument --top-k: '-1' is out of range: ...")."""
    from arvision.cli import UsageError, build_parser

    try:
        return build_parser().parse_args(argv)
    except UsageError as e:
        raise ArvisionError(str(e)) from None


def command_line(argv: list[str], folder: Path | None = None) -> str:
    """The shell command for ``argv``, with files of ``folder`` named by their bare names (what a visitor would call
    the downloaded files)."""
    def bare(arg: str) -> str:
        if folder is not None:
            arg = arg.replace(f"{folder}/", "")
        return arg

    return "arvision " + shlex.join(bare(a) for a in argv)


def _text(value) -> str | None:
    """A page value as command-line text; None for an empty box (the option is left out: the model's default)."""
    if value is None:
        return None
    text = str(value).strip()
    return text or None


def _option(argv: list[str], option: str, value) -> None:
    """Append ``--option=value`` unless the value is empty (``=`` keeps a value such as "-1" from reading as an
    option)."""
    text = _text(value)
    if text is not None:
        argv.append(f"{option}={text}")


def _count(value, what: str) -> int:
    """A "how many" box: an integer >= 1 (empty: 1), with the command line's message for anything else."""
    import argparse

    from arvision.cli import types

    text = _text(value)
    if text is None:
        return 1
    try:
        return types.positive_int(text)
    except argparse.ArgumentTypeError as e:
        raise ArvisionError(f"{what}: {e}") from None


# -- Generate (and the Watermark tab's generation) -------------------------------------------------------------------

@dataclass(frozen=True)
class SampleForm:
    """What the Generate tab sends, as typed: checked only when it becomes a command (:func:`sample_argv`).

    classes: class ids picked or typed (class models); prompt (text models); per_item: images per class / prompt;
    the knobs: None or "" = the model's default; search: "none" or a label of ``SEARCH_KINDS``, search_n its count;
    watermark_*: the Watermark tab's generation (key None: no watermark; align None: not aligned)."""

    classes: tuple = ()
    prompt: str = ""
    per_item: object = 1
    seed: object = 0
    cfg: object = None
    top_k: object = None
    top_p: object = None
    temperature: object = None
    precision: str = "fp32"
    batch_size: object = None
    search: str = "none"
    search_n: object = 4
    watermark_key: str | None = None
    watermark_delta: object = None
    watermark_align: object = None


def sample_argv(model: ServedModel, form: SampleForm, folder: Path) -> list[str]:
    """The ``arvision sample`` arguments of a request, writing its grid and tokens into ``folder``."""
    argv = ["sample", model.name]
    per = _count(form.per_item, "images per prompt" if model.takes_text else "images per class")
    if model.takes_text:
        argv.append(f"--prompt={form.prompt or ''}")
        if per > 1:
            argv.append(f"--per-prompt={per}")
        n = per
    else:
        picked = [_text(c) for c in (form.classes or ()) if _text(c) is not None]
        if not picked:
            raise ArvisionError("no class picked: pick one or more classes (or type a class id)")
        argv += ["--classes", *[c for c in picked for _ in range(per)]]
        n = len(picked) * per
    if n > MAX_IMAGES:
        raise ArvisionError(f"{n} images is more than this page makes at once ({MAX_IMAGES}); `arvision sample "
                            "--out-dir DIR` makes any number")
    if _text(form.seed) is None:
        raise ArvisionError("seed: give a seed (an integer >= 0), or press Random seed")
    _option(argv, "--seed", form.seed)
    for option, value in (("--cfg", form.cfg), ("--top-k", form.top_k), ("--top-p", form.top_p),
                          ("--temperature", form.temperature), ("--precision", form.precision),
                          ("--batch-size", None if _text(form.batch_size) == "0" else form.batch_size)):
        _option(argv, option, value)  # batch size 0: automatic (a number box cannot be emptied)
    if form.search and form.search != "none":
        name = model.searches.get(form.search)
        if name is None:
            why = f" ({model.search_note})" if model.search_note else ""
            raise ArvisionError(f"{model.name} cannot run the search {form.search!r}{why}")
        argv.append(f"--search={name}:{_count(form.search_n, 'search count')}")
    if form.watermark_key is not None:
        argv.append(f"--watermark-key={form.watermark_key}")
        _option(argv, "--watermark-delta", form.watermark_delta)
        _option(argv, "--watermark-align", form.watermark_align)
    argv += [f"--out={folder / 'grid.png'}", f"--save-tokens={folder / 'tokens.safetensors'}"]
    return argv


@dataclass
class Preview:
    """One step of a run, as it was computed: the batch's images so far (a grid like the final one) and a line."""

    image: Image.Image
    caption: str


@dataclass
class SampleResult:
    grid: Path  # what `arvision sample --out` writes for the same arguments
    tokens: Path  # what `--save-tokens` writes
    images: list[Path]  # one PNG per image, named as `--out-dir` names them
    info: str  # time per image, search cost
    command: str  # the equivalent command


def generate(model: ServedModel, form: SampleForm, folder: Path,
             previews: bool = True) -> Generator[Preview, None, SampleResult]:
    """Sample as ``arvision sample`` would with the page's values, yielding a :class:`Preview` after each step as
    it is computed (scale-wise models: one per scale; raster models: one per row of tokens, the rows not sampled
    yet grey), and return the files (``result = yield from generate(...)``).  With a search (or ``previews``
    False) no preview is made: a search's batch of candidates changes between steps."""
    from arvision.cli.sample import check_condition, check_condition_args, check_sampling_args

    argv = sample_argv(model, form, folder)
    args = parse_command(argv)
    check_condition_args(args)
    check_sampling_args(args)
    check_condition(model.pipe, args)
    return (yield from stream(lambda emit: _sample(model, args, argv, folder, emit if previews else None)))


def _sample(model: ServedModel, args, argv: list[str], folder: Path, emit) -> SampleResult:
    """The run of :func:`generate`, in its worker thread."""
    import torch

    from arvision.cli.sample import iter_sampling, sampled_prompts
    from arvision.cli.sample_outputs import sample_grid, save_tokens
    from arvision.images import save_image, to_pil

    pipe = model.pipe
    labels = sampled_prompts(args) or list(args.classes)
    schedule = pipe.sampling_schedule(getattr(args, "patch_nums", None), iterations=getattr(args, "iterations", None))
    every = max(1, schedule.num_steps // schedule.image_grid[0])  # raster: once per row of tokens
    done = {"images": 0, "preview_s": 0.0}

    def on_step(s: int, num_steps: int, preview) -> None:
        if (s + 1) % every and s != num_steps - 1:
            return
        t0 = time.perf_counter()
        x = _grey_unknown_rows(preview(), schedule, schedule.begin_ends[s][1])
        rows = labels[done["images"]:done["images"] + x.shape[0]]
        grid = sample_grid(pipe, to_pil(x), rows, getattr(args, "per_prompt", None))
        done["preview_s"] += time.perf_counter() - t0
        known = sum(schedule.step_sizes[:s + 1])  # a masked model's steps each rewrite the whole map
        emit(Preview(grid, f"step {s + 1}/{num_steps}: {known}/{schedule.length} tokens"))

    t0 = time.perf_counter()
    images, tokens, stats = [], [], {}
    observe = emit is not None and not args.search
    for out in iter_sampling(pipe, args, progress=False, step_callback=on_step if observe else None):
        images += out.images
        tokens.append(out.tokens.cpu())
        stats = out.stats
        done["images"] += len(out.images)
    seconds = time.perf_counter() - t0 - done["preview_s"]
    save_image(sample_grid(pipe, images, labels, getattr(args, "per_prompt", None)), args.out)
    save_tokens(args.save_tokens, pipe, schedule, torch.cat(tokens), labels, args.seed)
    files = []
    for i, (im, k) in enumerate(zip(images, labels)):  # `--out-dir`'s names
        files.append(save_image(im, folder / (f"{i:05d}.png" if pipe.takes_text else f"{i:05d}_class{k}.png")))
    n = len(images)
    info = f"{n} image(s) in {seconds:.2f} s: **{seconds / n:.3f} s per image**"
    if done["preview_s"]:
        info += f" (decoding the previews took {done['preview_s']:.2f} s more)"
    if "search" in stats:
        cost = stats["search"]
        info += (f"; search {cost['spec']}: {cost['plain_equivalents']:.2f}x the forwards of plain sampling, "
                 "no progression shown (the candidates change between steps)")
    return SampleResult(Path(args.out), Path(args.save_tokens), files, info, command_line(argv, folder))


def _grey_unknown_rows(x, schedule, known: int):
    """Token-by-token schedules (raster rows, NAR's diagonal fronts): the preview pads the tokens not sampled yet by
    repeating the known ones; grey out their cells so that the picture shows what was computed.  Scale-wise
    schedules' previews are whole pictures."""
    import torch

    if schedule.step_maps or known >= schedule.length:
        return x
    h, w = schedule.image_grid
    unknown = schedule.to_raster((torch.arange(schedule.length) >= known)[None].long())[0].bool().view(h, w)
    unknown = unknown.repeat_interleave(x.shape[-2] // h, 0).repeat_interleave(x.shape[-1] // w, 1)
    x = x.clone()
    x[..., unknown.to(x.device)] = 0.5
    return x


# -- Edit ------------------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class EditForm:
    """The Edit tab's choices: mode (one of ``EDIT_MODES``), the class of a class edit, the seed."""

    mode: str = "in-paint"
    klass: object = None
    seed: object = 0


@dataclass
class EditResult:
    compare: Path  # source | mask | edit, what `arvision edit --compare` writes
    edited: Path  # the edited image at the model's size (`--out`)
    info: str
    command: str


def take_source(path: str | Path, folder: Path) -> Path:
    """An uploaded (or generated) image to edit, checked like an upload and kept as a PNG in ``folder`` (what the
    equivalent ``arvision edit --image`` reads)."""
    from arvision.images import save_image

    return save_image(read_upload(path), folder / "source.png")


def edit_argv(model: ServedModel, form: EditForm, folder: Path) -> list[str]:
    if form.mode not in EDIT_MODES:
        raise ArvisionError(f"edit mode must be one of {', '.join(EDIT_MODES)}, got {form.mode!r}")
    argv = ["edit", model.name, f"--image={folder / 'source.png'}", f"--mask={folder / 'mask.png'}"]
    if form.mode == "class edit":
        if _text(form.klass) is None:
            raise ArvisionError("class edit: pick the class to regenerate the painted region as")
        argv.append(f"--class={_text(form.klass)}")
    if _text(form.seed) is None:
        raise ArvisionError("seed: give a seed (an integer >= 0)")
    _option(argv, "--seed", form.seed)
    return argv + [f"--out={folder / 'edited.png'}", f"--compare={folder / 'compare.png'}"]


def edit(model: ServedModel, source: Path, painted: np.ndarray, form: EditForm) -> EditResult:
    """Edit ``source`` (from :func:`take_source`; the files go beside it) where ``painted`` (H, W) bool says, as
    ``arvision edit`` would: in-paint regenerates the painted region, out-paint keeps it and regenerates the rest,
    class edit regenerates it as the chosen class."""
    from arvision.cli.edit import edit_with, read_edit_inputs

    if model.takes_text:
        raise ArvisionError(f"{model.name} takes prompts: the page edits with class-conditional models only "
                            "(`arvision edit --prompt` edits with a text model from the command line)")
    if not painted.any():
        raise ArvisionError("nothing painted: paint the region to regenerate (in-paint, class edit) or to keep "
                            "(out-paint) on the image first")
    folder = Path(source).parent
    if not Path(source).is_file():  # its request folder was removed (an hour old)
        raise ArvisionError("the image to edit is gone: upload it (or take the Generate tab's sample) again")
    argv = edit_argv(model, form, folder)
    regenerate = ~painted if form.mode == "out-paint" else painted
    Image.fromarray(regenerate.astype(np.uint8) * 255).save(folder / "mask.png")
    args = parse_command(argv)
    image, mask = read_edit_inputs(args)
    lines = edit_with(model.pipe, args, image, mask)
    info = "\n".join(f"- {line.replace(f'{folder}/', '')}" for line in lines)
    return EditResult(Path(args.compare), Path(args.out), info, command_line(argv, folder))


# -- Watermark detection ---------------------------------------------------------------------------------------------

@dataclass
class Detection:
    name: str
    z: float
    p_value: float
    green: int
    scored: int
    watermarked: bool


Z_MEANING = (
    "**z** counts how many standard deviations more of the key's *green* codes the image's tokens hold than an "
    "unwatermarked image would by chance (half of the codes are green): about 0 for an image made without the key, "
    "large for one made with it.  The image is called watermarked when z is above the threshold (default 4, which an "
    "unwatermarked image passes by chance in roughly 1 in 10,000 cases).  **p** is the exact chance of at least "
    "that many green codes without the watermark (corrected for the key's pool of lists).  The detector only sees "
    "the image and re-tokenises it, so a watermark embedded without alignment rarely survives (docs/watermark.md).")


def detect_argv(model: ServedModel, paths: list[Path], key: str | None, threshold) -> list[str]:
    argv = ["watermark", "detect", *map(str, paths), f"--key={key or ''}", f"--model={model.name}"]
    _option(argv, "--threshold", threshold)
    return argv


def detect(model: ServedModel, paths: list[str | Path], key: str | None, threshold=None) -> list[Detection]:
    """``arvision watermark detect`` on uploaded images (each checked as an upload first) -> one row per image."""
    from arvision.cli.watermark import detect_spec, detect_with

    if not paths:
        raise ArvisionError("no image to test: upload one or more images")
    if len(paths) > MAX_DETECT_FILES:
        raise ArvisionError(f"{len(paths)} images is more than this page tests at once ({MAX_DETECT_FILES})")
    args = parse_command(detect_argv(model, [Path(p) for p in paths], key, threshold))
    detect_spec(args)
    for path in paths:
        read_upload(path)  # a file that is not an image is named by the visitor's name, before the model runs
    rows = []
    for path, res in detect_with(model.pipe, args):
        rows.append(Detection(Path(path).name, res.z, res.p_value, res.green, res.scored, res.watermarked))
    return rows


def detection_table(rows: list[Detection]) -> str:
    """The rows as a Markdown table."""
    lines = ["| image | z | p | green codes | verdict |", "|---|---|---|---|---|"]
    for r in rows:
        z = f"{r.z:.2f}" if math.isfinite(r.z) else str(r.z)
        verdict = "watermarked" if r.watermarked else "not watermarked"
        name = r.name.replace("|", "\\|")
        lines.append(f"| {name} | {z} | {r.p_value:.3g} | {r.green}/{r.scored} | {verdict} |")
    return "\n".join(lines)


def search_labels() -> list[str]:
    return ["none", *SEARCH_KINDS]


__all__ = ["EDIT_MODES", "MAX_IMAGES", "PRECISIONS", "Detection", "EditForm", "EditResult", "Preview", "SampleForm",
           "SampleResult", "Z_MEANING", "command_line", "detect", "detection_table", "edit",
           "generate", "parse_command", "sample_argv", "take_source"]
