"""``arvision sample``: drawing images from a model folder (or a bundled model).

    arvision sample [MODEL] --classes 1 3 7 --seed 42 --out grid.png
    arvision sample shapes --prompt "a photo of a red circle" --per-prompt 4 --out grid.png
    arvision sample shapes --prompts-file prompts.txt --per-prompt 2 --out-dir images/

Class-conditional models take ``--classes``; text models take ``--prompt`` or ``--prompts-file`` (one prompt per
line), with ``--per-prompt`` images each.

Also what other commands share with ``sample``: the loop's efficiency options (:func:`add_policy_args`, also
``bench``), ``--weights int8`` (:func:`apply_weights`, also ``bench``).  Its outputs (grid, PNGs, progression,
tokens) are written by ``cli/sample_outputs.py``; ``info`` and ``demo`` are ``cli/info.py``.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from arvision.cli import types
from arvision.cli.loading import load_pipeline, model_help
from arvision.cli.sample_outputs import SampleWriters
from arvision.cli.watermark import add_sample_args as add_watermark_args
from arvision.cli.watermark import spec_from_args
from arvision.errors import ArvisionError
from arvision.sampling.batching import MAX_DEFAULT_BATCH


def add_policy_args(p: argparse.ArgumentParser) -> None:
    """The loop's efficiency options, shared by `sample` and `bench`."""
    p.add_argument("--kv-policy", default=None,
                   help="scale-wise models: KV-cache compression, e.g. scalekv:0.1 or hack:0.3 (default: full cache)")
    p.add_argument("--decoding", default=None,
                   help="raster models: plain (default), sjd, mcsjd or gsd[:G] (speculative Jacobi decoding)")


def apply_weights(pipe, args) -> None:
    """``--weights``: ``int8`` quantizes the pipeline's linear layers, which compute in bf16 (so ``--precision``
    becomes bf16; an explicit fp32 is an error); ``packed`` casts the weights to the sampling precision and packs
    them once for oneDNN's CPU GEMM; ``auto`` (the default) packs where ``--precision auto`` picks fp32 on a CPU
    (AVX2-only CPUs: the fast path there), unless a compiled step packs them and picks each layer's GEMM itself
    (``--compile`` of a raster model: ``ARPipeline.gemms_picked_when_compiled``), else keeps the weights as
    loaded.  ``args.weights`` ends as the choice made, so reports name it."""
    import torch

    from arvision.models.packed import packing_available
    from arvision.precision import resolve_precision

    if args.weights == "auto":
        compiled = getattr(args, "compile", False) and pipe.gemms_picked_when_compiled
        fast_fp32 = (args.precision == "auto" and pipe.device.type == "cpu" and not compiled
                     and resolve_precision("auto", pipe.device) == torch.float32)
        args.weights = "packed" if fast_fp32 and packing_available(torch.float32) else "full"
    if args.weights == "int8":
        if args.precision == "fp32":
            raise ArvisionError("--weights int8 computes in bf16: use --precision bf16 (or auto)")
        args.precision = "bf16"
        pipe.quantize_weights("int8")
    elif args.weights == "packed":
        dtype = resolve_precision(args.precision, pipe.device)
        if dtype != pipe.weight_dtype:
            pipe.to(dtype=dtype)
        pipe.pack_weights()
        args.weights = pipe.weight_format or "full"  # layers too small to gain are left as they are


def add_compile_arg(p: argparse.ArgumentParser, when: str = "") -> None:
    """``--compile`` (``sample``, ``bench``, ``eval sample``): ``pipe.compile()`` once the weights are set."""
    p.add_argument("--compile", action="store_true",
                   help="torch.compile the step function: the first step of each new batch size compiles (about a "
                        "minute for LlamaGen GPT-B on a 2-core CPU)" + when + "; on a CPU, raster models' weights are "
                        "frozen and each layer's GEMM measured and picked as it compiles (GPT-B tokens ~2.4x faster "
                        "than --weights packed on an AVX2 CPU, docs/performance.md)")


def compile_if_asked(pipe, args, say: bool = True) -> None:
    """``--compile``: compile the step, saying that the first batch will pay for it (``say``: False for all but one
    process of a torchrun group, and for ``bench``, whose report gives the compile time apart)."""
    if args.compile:
        if say:
            print("compiling the step function as the first batch starts (once per batch size; about a minute for "
                  "GPT-B on a 2-core CPU)", flush=True)
        pipe.compile()


def add_weights_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--weights", choices=["auto", "full", "int8", "packed"], default="auto",
                   help="full: as loaded; packed: packed once for oneDNN's CPU GEMM, same precision, equal within "
                        "rounding; int8: weight-only int8 linear layers computing in bf16 (needs --precision bf16 or "
                        "auto); auto (default): packed when --precision auto picks fp32 on a CPU, else full")


def _family_defaults(key: str) -> str:
    """Each family's published default of a sampling setting, for help texts (from the registry)."""
    from arvision.families import all_families

    return ", ".join(f"{f.description} {f.defaults.get(key, 1.0)}" for f in all_families())


STORED = "default: the model's stored setting (`arvision info MODEL` shows it), else the family's"


def add_knob_args(p: argparse.ArgumentParser) -> None:
    """Guidance, top-k, top-p and temperature, each defaulting to the model's stored setting (``sample``, ``bench``,
    ``eval sample``)."""
    p.add_argument("--cfg", type=types.guidance, default=None,
                   help=f"guidance scale ({STORED}: {_family_defaults('guidance_scale')})")
    p.add_argument("--top-k", type=types.top_k, default=None,
                   help=f"0 = off ({STORED}: {_family_defaults('top_k')})")
    p.add_argument("--top-p", type=types.top_p, default=None,
                   help=f"0 = off ({STORED}: {_family_defaults('top_p')})")
    p.add_argument("--temperature", type=types.temperature, default=None,
                   help=f"sampling temperature ({STORED}: 1)")


def _add_sampling_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--classes", type=types.class_id, nargs="+",
                   help="class-conditional models: class ids, one image each (default: the first 8 classes, 0..7, "
                        "or all if fewer)")
    p.add_argument("--prompt", default=None, metavar="TEXT",
                   help="text models: what to draw, e.g. 'a photo of a red circle' (words of the model's closed "
                        "vocabulary, which `arvision info MODEL` lists; any words for a MiniLM text encoder)")
    p.add_argument("--prompts-file", default=None, metavar="FILE",
                   help="text models: a UTF-8 text file of prompts, one per line, in order; every line is a prompt "
                        "(a blank line is an error, and a line starting with # is a prompt like any other)")
    p.add_argument("--per-prompt", type=types.positive_int, default=None, metavar="N",
                   help="with --prompt/--prompts-file: images per prompt (default 1); --out-dir names image j of "
                        "prompt line i {i*N+j:05d}.png")
    p.add_argument("--seed", type=types.seed, default=0, help="seeds torch.Generator().manual_seed(SEED) (default 0)")
    add_knob_args(p)
    p.add_argument("--smooth", action="store_true", help="VAR's Gumbel `more_smooth` (visualisation only)")
    p.add_argument("--patch-nums", type=types.positive_int_list, default=None, metavar="LIST",
                   help="sample on another scale list, e.g. 1,2,3,4,5,6,8,10,12 (models whose family supports it: "
                        "FlexVAR; default: the trained list)")
    p.add_argument("--max-pn", type=types.positive_int, default=None,
                   help="FlexVAR: sides above it are sampled greedily at full guidance (default 16)")
    p.add_argument("--cfg-mode", choices=["var", "llamagen"], default=None,
                   help="FlexVAR: guidance rule, the ramp (var, default) or constant (llamagen)")
    p.add_argument("--cfg-interval", type=int, default=None, metavar="N",
                   help="NAR: guidance stops once more than N tokens are generated (default -1: never)")
    p.add_argument("--mask-steps", default=None, metavar="SCHED",
                   help="HMAR: masked sub-steps, 'none' or counts per scale separated by '/', within a scale by ',' "
                        "(e.g. 1/1,3/1,1,2,5/16/...; default: the official schedule on the 256 px scales, else none)")
    p.add_argument("--iterations", type=types.positive_int, default=None, metavar="T",
                   help="MaskGIT: masked iterations (default 8)")
    p.add_argument("--choice-temperature", type=float, default=None, metavar="X",
                   help="MaskGIT: Gumbel temperature of the confidence order, annealed to 0 (default 4.5)")
    p.add_argument("--order", choices=["confidence", "halton"], default=None,
                   help="MaskGIT: which draws an iteration keeps: the most confident (default) or Halton order")
    add_policy_args(p)
    p.add_argument("--batch-size", type=int, default=None,
                   help="images per forward batch (default: as many as fit in half the free memory, at most "
                        f"{MAX_DEFAULT_BATCH}; printed when there is more than one batch). With one --seed the images "
                        "depend on it: give it to repeat a run exactly")
    p.add_argument("--precision", choices=["auto", "fp32", "bf16"], default="fp32",
                   help="fp32 = exact official tokens (default); auto = bf16 where the hardware is fast at it, "
                        "else fp32 through packed weights (--weights)")
    add_weights_arg(p)
    add_compile_arg(p)
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (default cpu)")


def add_sample_parser(sub) -> None:
    p = sub.add_parser("sample", help="generate images (and tokens) from a model folder")
    p.add_argument("model", nargs="?", help=model_help())
    _add_sampling_args(p)
    p.add_argument("--search", default=None,
                   help="test-time search: bon:N, beam:W, lookahead:W, tts-var[:N] or (raster models) gridar[:N] "
                        "(options: docs/search.md; default: none)")
    p.add_argument("--verifier", default=None,
                   help="with --search: classifier weights (.safetensors) to score with, or for text models an "
                        "image-caption matcher folder (default: the bundled classifier / matcher)")
    p.add_argument("--out", help=f"write a labelled PNG grid here (up to {GRID_MAX_IMAGES} images; default: none)")
    p.add_argument("--out-dir", help="write one PNG per image here, named {index:05d}_class{k}.png (class models) "
                                     "or {index:05d}.png (text models: index = line x N + j), each batch as it "
                                     "finishes (any number of images; default: none)")
    p.add_argument("--save-tokens", help="write the tokens as safetensors (step.{s} per scale, or tokens; the class "
                                         "labels or prompts in its metadata; default: none)")
    p.add_argument("--progression",
                   help="scale-wise models: write a PNG of each image after every scale (coarse to fine; up to "
                        f"{PROGRESSION_MAX_IMAGES} images; default: none)")
    add_watermark_args(p)
    p.set_defaults(func=cmd_sample)


# -- commands -----------------------------------------------------------------------------------------

GRID_MAX_IMAGES = 1024  # a labelled grid holds every image until it is written; past this it is no picture anyway
PROGRESSION_MAX_IMAGES = 64  # a progression picture has one row per image and one cell per step
ALIGN_BATCH = 256  # images aligned together by --watermark-align (align_images' own batch, kept for exactness)


def _check_outputs(args) -> None:
    from arvision.images import check_output_dir, check_output_file

    if not (args.out or args.out_dir or args.save_tokens or args.progression):
        raise ArvisionError("nothing to write: give --out GRID.png, --out-dir DIR, --save-tokens FILE "
                            "and/or --progression PNG")
    for path in (args.out, args.progression):
        if path:
            check_output_file(path, image=True)
    if args.save_tokens:
        check_output_file(args.save_tokens, suffix=".safetensors")
    if args.out_dir:
        check_output_dir(args.out_dir)
    paths = [Path(p).resolve() for p in (args.out, args.progression, args.save_tokens) if p]
    if len(set(paths)) < len(paths):
        raise ArvisionError("--out, --progression and --save-tokens must name different files")

    n = _requested(args)
    if args.out and n > GRID_MAX_IMAGES:
        raise ArvisionError(f"--out writes one grid picture of every image; {n} images is more than it takes "
                            f"({GRID_MAX_IMAGES}): use --out-dir DIR (one PNG per image, any number)")
    if args.progression and n > PROGRESSION_MAX_IMAGES:
        raise ArvisionError(f"--progression writes one row per image; {n} images is more than it takes "
                            f"({PROGRESSION_MAX_IMAGES}): sample fewer images for the progression picture")


def read_prompts_file(path: str) -> list[str]:
    """The prompts of ``--prompts-file``: one per line, in order, surrounding spaces dropped.  Every line is a
    prompt (no comment syntax); a blank line, an empty file and a file that is not UTF-8 text are errors."""
    file = Path(path)
    if not file.exists():
        raise ArvisionError(f"--prompts-file {path}: file not found")
    if file.is_dir():
        raise ArvisionError(f"--prompts-file {path} is a folder; expected a text file with one prompt per line")
    try:
        data = file.read_bytes()
    except OSError as e:
        raise ArvisionError(f"--prompts-file {path}: cannot read it ({e.strerror or e})") from None
    try:
        text = data.decode("utf-8-sig")  # a byte-order mark some editors write is not part of the first prompt
    except UnicodeDecodeError as e:
        line = data[:e.start].count(b"\n") + 1
        raise ArvisionError(f"--prompts-file {path} is not UTF-8 text (line {line}: byte 0x{data[e.start]:02x}); "
                            "save it as UTF-8") from None
    lines = text.split("\n")
    if lines[-1] == "":  # the newline that ends the last line
        lines.pop()
    lines = [line.removesuffix("\r") for line in lines]  # Windows line ends
    if not any(line.strip() for line in lines):
        raise ArvisionError(f"--prompts-file {path} is empty: write one prompt per line")
    for i, line in enumerate(lines, 1):
        if not line.strip():
            raise ArvisionError(f"--prompts-file {path}, line {i} is blank: write one prompt per line, with no "
                                "blank lines")
    return [line.strip() for line in lines]


MAX_PER_PROMPT = 100_000


def check_condition_args(args) -> None:
    """``--classes``, ``--prompt``, ``--prompts-file`` and ``--per-prompt`` as far as they can be judged without the
    model (the file is read here); sets ``args.prompts``: the prompts in order, or None when none is given."""
    prompt, path = getattr(args, "prompt", None), getattr(args, "prompts_file", None)
    if prompt is not None and path is not None:
        raise ArvisionError("give --prompt or --prompts-file, not both")
    if (prompt is not None or path is not None) and args.classes is not None:
        raise ArvisionError("give --classes (class-conditional models) or --prompt / --prompts-file (text models), "
                            "not both")
    if prompt is not None:
        if not prompt.strip():
            raise ArvisionError("--prompt is empty: describe the image in words the model knows (`arvision info "
                                "MODEL` lists them)")
        args.prompts = [prompt.strip()]
    elif path is not None:
        args.prompts = read_prompts_file(path)
    else:
        args.prompts = None
        if getattr(args, "per_prompt", None) is not None:
            raise ArvisionError("--per-prompt goes with --prompt or --prompts-file (text models)")
    per = getattr(args, "per_prompt", None)
    if per is not None and per > MAX_PER_PROMPT:  # the prompt list is built in memory: 10**18 copies would not fit
        raise ArvisionError(f"--per-prompt {per} is more than {MAX_PER_PROMPT} images per prompt; run the command "
                            "again with another --seed for more")


def check_condition(pipe, args) -> None:
    """What depends on the loaded model: prompts (all in its vocabulary) for a text model, no prompts for a
    class-conditional one (its class ids are checked by the pipeline)."""
    prompts = getattr(args, "prompts", None)
    if pipe.takes_text:
        if args.classes is not None:
            raise ArvisionError("this model takes prompts: use --prompt or --prompts-file")
        if prompts is None:
            raise ArvisionError("this model takes prompts: give --prompt TEXT or --prompts-file FILE (one prompt per "
                                "line; `arvision info MODEL` lists the words it knows)")
        path, seen = getattr(args, "prompts_file", None), set()
        for i, text in enumerate(prompts):
            if text in seen:
                continue
            seen.add(text)
            try:
                pipe.condition(prompts=[text])  # every word known, not too many: the pipeline's own checks
            except ArvisionError as e:
                raise ArvisionError(f"--prompts-file {path}, line {i + 1}: {e}" if path else str(e)) from None
    elif prompts is not None:
        n = pipe.config.num_classes
        raise ArvisionError(f"this model is class-conditional ({f'classes 0..{n - 1}' if n > 1 else 'class 0'}): "
                            "use --classes")


def _requested(args) -> int:
    """The number of images asked for, as far as it is known before loading (the class default: a handful)."""
    prompts = getattr(args, "prompts", None)
    if prompts is not None:
        return len(prompts) * (getattr(args, "per_prompt", None) or 1)
    return len(args.classes) if args.classes is not None else 0


def check_sampling_args(args) -> None:
    """Everything about ``sample``'s (and ``bench``'s) options that can be judged without the model, so a mistake is
    reported before the model is loaded: the watermark, search and decoding specs, ``--weights`` with
    ``--precision``, the verifier file.  (Numbers are checked by their argparse types; what depends on the model,
    a class id or top-k beyond its vocabulary, is checked by the pipeline before sampling.)"""
    if getattr(args, "weights", "full") == "int8" and args.precision == "fp32":
        raise ArvisionError("--weights int8 computes in bf16: use --precision bf16 (or auto)")
    if getattr(args, "watermark_key", None) is not None:
        spec_from_args(args)  # WatermarkSpec validates every --watermark-* value
    if getattr(args, "search", None):
        from arvision.sampling.search import parse_search

        parse_search(args.search)
    verifier = getattr(args, "verifier", None)
    if verifier:
        if not getattr(args, "search", None):
            raise ArvisionError("--verifier goes with --search (it scores the search's candidates)")
        if not Path(verifier).exists():
            raise ArvisionError(f"--verifier {verifier}: not found (classifier weights, or for text models an "
                                "image-caption matcher folder)")
    if args.decoding:
        from arvision.sampling.speculative import parse_decoding

        parse_decoding(args.decoding)  # the spec's form; whether the model can use it is checked after loading


def sampled_prompts(args) -> list[str] | None:
    """The prompt of every image, in order: each of ``args.prompts`` ``--per-prompt`` times in a row (image j of
    prompt i is image i * N + j); None when no prompt is given (class-conditional sampling)."""
    prompts = getattr(args, "prompts", None)
    if prompts is None:
        return None
    per = getattr(args, "per_prompt", None) or 1
    return [p for p in prompts for _ in range(per)]


def sampled_classes(pipe, args, say: bool = False) -> list[int]:
    """``--classes``, or the first (up to) 8 classes of the model; ``say``: print a line when defaulted."""
    if args.classes is not None:
        return list(args.classes)
    classes = list(range(min(pipe.config.num_classes, 8)))
    if say:
        which = f"classes 0..{classes[-1]}" if len(classes) > 1 else "class 0"
        print(f"no --classes given: sampling {which}, one image each")
    return classes


def iter_sampling(pipe, args, progress: bool = True, step_callback=None):
    """Sample ``pipe`` with ``sample``'s options in ``args`` (a watermark too, aligned if asked), batch after
    batch (``args.batch_size``; None: the pipeline's bounded default): an iterator of outputs with PIL images, so
    that a caller can write and drop each one.  ``step_callback``: the pipeline's per-step observer (what
    ``arvision serve`` streams; it leaves the images unchanged)."""
    import torch

    prompts = sampled_prompts(args)
    classes = sampled_classes(pipe, args) if prompts is None else None
    generator = torch.Generator().manual_seed(args.seed)
    watermark = spec_from_args(args)
    processors = [watermark.processor(pipe)] if watermark is not None else []
    aligned = watermark is not None and watermark.align is not None
    batches = pipe.iter_batches(
        classes, guidance_scale=args.cfg, top_k=args.top_k, top_p=args.top_p, temperature=args.temperature,
        generator=generator, more_smooth=args.smooth, output_type="pt" if aligned else "pil",
        batch_size=args.batch_size, precision=args.precision, progress=progress,
        return_progression=bool(getattr(args, "progression", None)), kv_policy=args.kv_policy,
        decoding=args.decoding, search=getattr(args, "search", None), verifier=search_verifier(pipe, args),
        processors=processors, patch_nums=getattr(args, "patch_nums", None), max_pn=getattr(args, "max_pn", None),
        cfg_mode=getattr(args, "cfg_mode", None), cfg_interval=getattr(args, "cfg_interval", None),
        mask_steps=getattr(args, "mask_steps", None), prompts=prompts,
        iterations=getattr(args, "iterations", None), choice_temperature=getattr(args, "choice_temperature", None),
        order=getattr(args, "order", None), step_callback=step_callback)
    return _aligned(pipe, batches, watermark, args.seed, progress) if aligned else batches


def search_verifier(pipe, args):
    """What ``--search`` ranks by: for text models the image-caption matcher (``--verifier`` a matcher folder; default:
    the one bundled with arvision), for class models the classifier weights of ``--verifier`` (default: bundled)."""
    verifier = getattr(args, "verifier", None)
    if pipe.takes_text and getattr(args, "search", None):
        from arvision.evaluation.matcher import load_matcher_verifier

        return load_matcher_verifier(verifier)
    return verifier


def _aligned(pipe, batches, watermark, seed: int, progress: bool):
    """``--watermark-align``: align the sampled images ``ALIGN_BATCH`` at a time, whatever the sampling batch, as
    one call of ``align_images`` over every image would (so the images do not depend on how they were streamed)."""
    from arvision.images import to_pil
    from arvision.sampling.output import GenerationOutput
    from arvision.sampling.watermark import align_images

    def align(out):
        lists = [watermark.list_for(seed, k) for k in out.class_labels]  # one --seed generator for every image
        x = align_images(pipe, out.images * 2 - 1, watermark, lists, batch_size=ALIGN_BATCH,
                         progress=progress and sys.stderr.isatty())  # a bar on a terminal, not in a log file
        out.images = to_pil((x + 1) / 2)
        return out

    pending = None
    for out in batches:
        pending = out if pending is None else GenerationOutput.concat([pending, out])
        while pending is not None and len(pending.class_labels) >= ALIGN_BATCH:
            rest = len(pending.class_labels)
            yield align(pending.rows(0, ALIGN_BATCH))
            pending = pending.rows(ALIGN_BATCH, rest) if rest > ALIGN_BATCH else None
    if pending is not None:
        yield align(pending)


def run_sampling(pipe, args, progress: bool = True):
    """Every image of :func:`iter_sampling` in one output (for a handful of images: ``demo``)."""
    from arvision.sampling.output import GenerationOutput

    return GenerationOutput.concat(list(iter_sampling(pipe, args, progress)))


def cmd_sample(args) -> None:
    check_condition_args(args)
    _check_outputs(args)
    check_sampling_args(args)
    pipe = load_pipeline(args.model, args.device)
    check_condition(pipe, args)
    apply_weights(pipe, args)
    if pipe.takes_text:
        n = len(sampled_prompts(args))
    else:
        args.classes = sampled_classes(pipe, args, say=True)
        n = len(args.classes)
    chosen = args.batch_size is None
    if chosen:
        args.batch_size = pipe.default_batch_size(n, pipe.sampling_schedule(getattr(args, "patch_nums", None)))
    if n > args.batch_size:
        why = " (default: bounded by the model's size and the free memory; --batch-size to change)" if chosen else ""
        print(f"sampling {n} images in batches of {args.batch_size}{why}")
    compile_if_asked(pipe, args)
    if getattr(args, "watermark_key", None) is not None and args.watermark_align is None:
        print("note: without --watermark-align the watermark is in the sampled tokens only; the detector re-tokenises "
              "the images and finds it in almost none of them on the models measured (docs/watermark.md)")
    t0 = time.perf_counter()
    writers = SampleWriters(pipe, args)
    batches = iter_sampling(pipe, args, progress=n <= args.batch_size)
    from arvision.progress import progress

    # one bar (or, in a log, a plain line every 10 s) over the images of a multi-batch run
    with progress(total=n, desc="images", unit="img", disable=n <= args.batch_size, every_s=10.0) as bar:
        for out in batches:
            writers.add(out)
            bar.update(len(out.class_labels))
    dt = time.perf_counter() - t0
    writers.finish()
    if "search" in writers.stats:
        cost = writers.stats["search"]
        print(f"search {cost['spec']}: {cost['token_forwards']} token forwards ({cost['plain_equivalents']:.2f}x "
              f"plain sampling), {cost['verifier_calls']} verifier calls, {cost['decoder_calls']} decoder calls; "
              f"verifier scores " + " ".join(f"{x:.3f}" for x in writers.stats["search_scores"]))
    print(f"{writers.count} image(s) in {dt:.2f} s")
