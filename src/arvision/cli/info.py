"""``arvision info`` and ``arvision demo``: what a model folder (or a bundled model) is, and a first picture.

    arvision info [MODEL]
    arvision demo

:func:`describe` is also what ``convert`` prints about the model it wrote.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from arvision.cli import loading, types  # loading.load_pipeline read at call time: tests replace it there
from arvision.cli.loading import model_help
from arvision.cli.sample import run_sampling
from arvision.cli.sample_outputs import caption
from arvision.errors import ArvisionError


def add_info_parser(sub) -> None:
    p = sub.add_parser("info", help="describe a model folder (family, sizes, stored sampling defaults); without "
                                    "MODEL, also list the bundled models")
    p.add_argument("model", nargs="?", help=model_help())
    p.set_defaults(func=cmd_info)


def add_demo_parser(sub) -> None:
    p = sub.add_parser("demo", help="sample a labelled grid from the bundled model into the current folder")
    p.add_argument("--seed", type=types.seed, default=0, help="seeds torch.Generator().manual_seed(SEED) (default 0)")
    p.add_argument("--out", default="arvision_demo.png", help="the grid to write (default arvision_demo.png)")
    p.set_defaults(func=cmd_demo)


def describe(pipe) -> str:
    """Three lines about a pipeline: family, size and schedule; the transformer; the tokenizer."""
    cfg, tr, tok = pipe.config, pipe.config.transformer, pipe.config.tokenizer
    n_tr = sum(p.numel() for p in pipe.transformer.parameters())
    n_tok = sum(p.numel() for p in pipe.tokenizer.parameters())
    reads = {"cross": "by cross-attention", "prefix": "as a prefix"}[tr.text_mode]
    condition = (f"text-conditioned ({pipe.transformer.text_encoder.describe()}) {reads}" if pipe.takes_text
                 else f"{cfg.num_classes} classes")
    return (f"{cfg.family}: {cfg.image_size}px, {condition}, {pipe.schedule.describe()}\n"
            f"  transformer: {tr.block} depth {tr.depth}, width {tr.width}, {tr.num_heads} heads, "
            f"{n_tr / 1e6:.1f}M params\n"
            f"  tokenizer: {tok.kind}, {tok.vocab_size} codes x {tok.embed_dim}, /{tok.downsample}, "
            f"{n_tok / 1e6:.1f}M params")


_SETTING_NAMES = {"guidance_scale": "cfg", "top_k": "top-k", "top_p": "top-p", "temperature": "temperature"}


def describe_sampling(pipe) -> str:
    """One line: the settings ``sample`` uses when none is given, and where each comes from."""
    stored = pipe.config.sampling or {}
    parts = [f"{_SETTING_NAMES.get(k, k.replace('_', '-'))} {v}" for k, v in pipe.sampling_defaults().items()]
    if stored:
        mine = ", ".join(_SETTING_NAMES.get(k, k) for k in stored)
        source = f"stored in the model: {mine}; the rest: the {pipe.family.description} family's"
    else:
        source = f"the {pipe.family.description} family's published defaults"
    return f"  sampling defaults: {', '.join(parts)} ({source})"


def _bundled_name_of(model: str | None) -> str | None:
    """The bundled model ``model`` (a command's MODEL argument) is, if any: a bundled name (or nothing: the
    default), or the folder of a bundled model."""
    from arvision.bundled import bundled_model_dir, bundled_name, bundled_names

    name = bundled_name(model)
    if name is not None:
        return name
    folder = Path(model).resolve()
    return next((n for n in bundled_names() if bundled_model_dir(n).resolve() == folder), None)


def cmd_info(args) -> None:
    from arvision.bundled import DEFAULT_BUNDLED, bundled_names

    if not args.model:
        names = bundled_names()
        if names:
            listed = ", ".join(f"{n} (the default)" if n == DEFAULT_BUNDLED else n for n in names)
            print(f"bundled models: {listed}; `arvision info NAME` describes one, `arvision sample NAME ...` "
                  "samples it")
    pipe = loading.load_pipeline(args.model)
    name = _bundled_name_of(args.model)
    if name is not None:
        print(f"the model bundled with arvision as {name}, in {pipe.folder}")
    print(describe(pipe))
    print(describe_sampling(pipe))
    if pipe.takes_text and pipe.config.transformer.text_vocab:
        print(f"  vocabulary: {' '.join(pipe.config.transformer.text_vocab)}")
    if pipe.takes_text and pipe.config.transformer.text_encoder_package:
        print(f"  text encoder: {pipe.config.transformer.text_encoder_package} (frozen, from the installed package)")


def cmd_demo(args) -> None:
    from arvision.bundled import bundled_model_dir, tiny_random_pipeline
    from arvision.images import check_output_file, make_grid, save_image

    check_output_file(args.out, image=True)
    try:
        pipe = loading.load_pipeline(str(bundled_model_dir()))
        note = ""
    except ArvisionError:
        pipe = tiny_random_pipeline()
        note = ("note: this installation has no bundled model; this demo samples a tiny "
                "randomly initialised VAR model, so the images are noise.\n")
    ns = argparse.Namespace(classes=list(range(min(pipe.config.num_classes, 10))), seed=args.seed, cfg=None,
                            top_k=None, top_p=None, temperature=None, smooth=False, batch_size=None,
                            precision="auto", device="cpu", kv_policy=None, decoding=None)
    t0 = time.perf_counter()
    out = run_sampling(pipe, ns, progress=False)
    save_image(make_grid(out.images, [caption(pipe, k) for k in out.class_labels], ncol=5), args.out)
    sys.stdout.write(note)
    print(f"{len(out.images)} images in {time.perf_counter() - t0:.1f} s")
    print(Path(args.out).resolve())
