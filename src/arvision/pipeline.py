"""``ARPipeline``: a tokenizer + transformer + schedule, loaded and saved as a folder, called like diffusers.

    pipe = ARPipeline.from_pretrained("my-model")
    out = pipe(class_labels=[1, 3, 7], guidance_scale=1.5, top_k=900, top_p=0.96,
               generator=torch.Generator().manual_seed(0))
    out.images  # list of PIL images

A model folder holds ``config.json``, ``tokenizer.safetensors`` and ``transformer.safetensors``.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Iterator, Sequence
from pathlib import Path

import torch

from arvision.checkpoints import load_strict, read_safetensors, read_torch_checkpoint
from arvision.conditions import ClassCondition, Condition, TextCondition
from arvision.config import ModelConfig
from arvision.errors import ArvisionError
from arvision.families import get_family
from arvision.images import to_pil
from arvision.model_folder import resolve_model_folder
from arvision.models.transformer import ARTransformer, upgrade_legacy_keys
from arvision.precision import resolve_precision
from arvision.sampling.batching import default_batch_size
from arvision.sampling.loop import SamplingOptions, generate
from arvision.sampling.output import GenerationOutput  # defined below the pipeline; still importable from here
from arvision.sampling.processors import Generators
from arvision.tokenizers.models import build_tokenizer

OUTPUT_TYPES = ("pil", "pt", "tokens")


# what ``ARPipeline.weight_format`` values mean, for messages
WEIGHT_FORMATS = {"int8": "quantized to int8", "packed": "packed for oneDNN"}


class ARPipeline:
    def __init__(self, config: ModelConfig, tokenizer=None, transformer=None):
        self.config = config
        self.family = get_family(config.family)
        self.schedule = self.family.schedule(config)  # the default (trained) schedule; calls may pass others
        self.tokenizer = tokenizer if tokenizer is not None else build_tokenizer(config.tokenizer)
        self.transformer = transformer if transformer is not None else ARTransformer(config)
        self.tokenizer.eval().requires_grad_(False)
        self.transformer.eval().requires_grad_(False)
        # channels-last convolutions decode faster on CPUs, in fp32 and bf16 (bench/decoder_formats.py); only the
        # decoder: the encoder's output decides tokens, so it keeps the layout the parity tests pin down
        self.tokenizer.decoder.to(memory_format=torch.channels_last)
        self.tokenizer.post_quant_conv.to(memory_format=torch.channels_last)
        self.inputs = self.family.input_builder(self.tokenizer, self.schedule)
        self.folder: Path | None = None  # the model folder it was loaded from, if any
        self.kv_calibration = None  # ScaleKV/HACK layer and head classes (``arvision calibrate-kv``), loaded lazily
        # "int8" after ``quantize_weights``, "packed" after ``pack_weights``: linear layers no longer nn.Linear
        self.weight_format: str | None = None

    # -- persistence -------------------------------------------------------------------------------
    @classmethod
    def from_pretrained(cls, path: str | Path, device: str | torch.device | None = None) -> ARPipeline:
        """Load a model folder (config.json + safetensors).  A name of the Hugging Face Hub form ``org/name`` that
        is not a local folder is looked up on the Hub (needs network; not when ``HF_HUB_OFFLINE`` is set).  A
        folder that is not a model (a tokenizer, an unfinished training run) is named as such, with what to do."""
        folder = resolve_model_folder(path)
        config = ModelConfig.load(folder / "config.json")
        pipe = cls(config)
        load_strict(pipe.tokenizer, read_safetensors(folder / "tokenizer.safetensors"),
                    str(folder / "tokenizer.safetensors"))
        load_strict(pipe.transformer, upgrade_legacy_keys(read_safetensors(folder / "transformer.safetensors")),
                    str(folder / "transformer.safetensors"))
        pipe.folder = folder  # where per-model extras live (``kv_calibration.json``)
        return pipe.to(device) if device is not None else pipe

    def save_pretrained(self, path: str | Path) -> Path:
        if self.weight_format is not None:
            raise ArvisionError(f"this pipeline's weights are {WEIGHT_FORMATS[self.weight_format]}; reload the model "
                                "to save it")
        from safetensors.torch import save_file

        folder = Path(path)
        if folder.exists() and not folder.is_dir():
            raise ArvisionError(f"cannot save to {folder}: a file is in the way")
        if not folder.parent.is_dir():
            raise ArvisionError(f"cannot save to {folder}: parent folder {folder.parent} does not exist")
        folder.mkdir(exist_ok=True)
        for name, module in (("tokenizer", self.tokenizer), ("transformer", self.transformer)):
            state = {k: v.detach().contiguous().cpu() for k, v in module.state_dict().items()}
            save_file(state, str(folder / f"{name}.safetensors"), metadata={"format": "pt", "arvision": name})
        self.config.save(folder / "config.json")
        return folder

    @classmethod
    def from_official(cls, family: str, tokenizer_ckpt, transformer_ckpt, **options) -> ARPipeline:
        """Build from the official ``.pth``/``.pt`` files of ``family`` (``arvision.families``).  options: the
        family's ``convert_options`` (VAR/FlexVAR ``patch_nums``, ``num_classes``; LlamaGen ``image_size``,
        ``vq_ch``, ``num_heads``, ``num_classes``)."""
        fam = get_family(family)
        allowed = {o.name for o in fam.convert_options} | {"num_heads", "num_classes"}
        unknown = sorted(set(options) - allowed)
        if unknown:
            raise ArvisionError(f"{fam.name} checkpoints take no option(s) {unknown}; theirs: {sorted(allowed)}")
        official = fam.load_official(read_torch_checkpoint(tokenizer_ckpt),
                                     read_torch_checkpoint(transformer_ckpt, fam.transformer_checkpoint_paths),
                                     **options)
        pipe = cls(official.config)
        load_strict(pipe.tokenizer, official.tokenizer_state, str(tokenizer_ckpt), official.tokenizer_keymap,
                    official.tokenizer_buffers)
        load_strict(pipe.transformer, official.transformer_state, str(transformer_ckpt), official.transformer_keymap,
                    official.transformer_buffers)
        return pipe

    def official_state_dicts(self) -> tuple[dict, dict]:
        """(tokenizer, transformer) state dicts in the official layout and names, recomputed buffers included,
        loadable by the research code with ``strict=True`` (and by ``from_official``)."""
        return self.family.official_state_dicts(self)

    def to(self, device=None, dtype: torch.dtype | None = None) -> ARPipeline:
        """Move to ``device``; ``dtype`` (e.g. torch.bfloat16) casts the transformer's weights in place.

        bf16 weights halve the memory and skip autocast's per-call weight casts; such a pipeline samples only in
        bf16 (the exact fp32 mode needs fp32 weights: reload them).  The tokenizer stays fp32 (its nearest-code
        search decides tokens); decoding runs under autocast in the sampling precision.
        """
        if self.weight_format == "packed" and ((dtype is not None and dtype != self.weight_dtype) or
                                               (device is not None and torch.device(device) != self.device)):
            raise ArvisionError("this pipeline's weights are packed for oneDNN on the CPU in "
                                f"{self.weight_dtype}; reload the model to move or cast it")
        if device is not None:
            self.tokenizer.to(device)
            self.transformer.to(device)
        if dtype is not None:
            if not dtype.is_floating_point:
                raise ArvisionError(f"dtype must be a floating point type, got {dtype}")
            self.transformer.to(dtype)  # rotary angles are made per call (``layout``), in fp32
        return self

    # -- weight formats and compiling ------------------------------------------------------------------
    def quantize_weights(self, kind: str = "int8") -> ARPipeline:
        """Weight-only int8: every linear layer of the transformer blocks and the head keeps int8 weights with a
        bf16 scale per output row (``arvision.models.quantized``); the rest of the transformer is cast to bf16.

        Half the bytes of bf16 weights, for bandwidth-bound decoding (raster models at small batch).  Lossy: such
        a pipeline samples in bf16 only and cannot be saved (reload the model for the full-precision weights).
        """
        from arvision.models.quantized import quantize_linears

        if kind != "int8":
            raise ArvisionError(f"weight quantization must be 'int8', got {kind!r}")
        if self.weight_format == "packed":
            raise ArvisionError("this pipeline's weights are packed for oneDNN; reload the model to quantize them")
        if self.weight_format is None:
            self.to(dtype=torch.bfloat16)
            self._swap_linears(quantize_linears)
            self.weight_format = kind
        return self

    def pack_weights(self, min_weights: int | None = None) -> ARPipeline:
        """Pack the linear layers of the transformer blocks and the head with at least ``min_weights`` weights
        (default ``arvision.models.packed.MIN_WEIGHTS``: smaller ones gain nothing) once for oneDNN's CPU GEMM
        (``arvision.models.packed``): same precision as the weights (fp32 or bf16), 1.5-2.5x faster at the small
        row counts of sampling on CPUs whose BLAS repacks weights at every call.  Equal to ``F.linear`` within
        rounding, not bit for bit: the exact fp32 mode (the official tokens) keeps unpacked weights.  Such a
        pipeline samples in its weights' dtype only, on the CPU, and cannot be saved, moved or cast (reload)."""
        from arvision.models.packed import MIN_WEIGHTS, pack_linears, packing_available

        if self.weight_format == "int8":
            raise ArvisionError("this pipeline's weights are int8; reload the model to pack them")
        if self.weight_format is None:
            if self.device.type != "cpu":
                raise ArvisionError(f"packed weights are for CPUs; this pipeline is on {self.device}")
            if {"forward_token", "forward_step"} & vars(self.transformer).keys():
                raise ArvisionError("this pipeline is compiled already: pack its weights first, then compile "
                                    "(pipe.pack_weights().compile())")
            if not packing_available(self.weight_dtype):
                raise ArvisionError(f"this PyTorch build or CPU cannot pack {self.weight_dtype} weights for oneDNN "
                                    "(bf16 needs AVX512 or AVX-NE-CONVERT)")
            least = MIN_WEIGHTS if min_weights is None else min_weights
            if self._swap_linears(lambda m, only=(): pack_linears(m, only, least)):
                self.weight_format = "packed"  # else all its layers were too small to gain: it stays as it is
        return self

    def _swap_linears(self, swap) -> int:
        """``swap(module, only=...)`` (``quantize_linears``, ``pack_linears``) over the linear layers a weight format
        replaces: every one of the transformer blocks, and the head's output projection; returns how many."""
        return (sum(swap(blk) for blk in self.transformer.blocks)
                + swap(self.transformer.head, only=("proj",)))

    def compile(self, **options) -> ARPipeline:
        """Compile the transformer's step function with ``torch.compile(**options)`` (e.g. ``mode="max-autotune"``,
        ``backend="aot_eager"``).  The step traces as one graph, without breaks (``tests/test_speed.py``).  VAR: each
        scale is a specialisation, so the first call of each pays the compile time.  Raster models sample through
        ``forward_token``, whose one varying size (the cache length) is marked dynamic: one graph for every
        position; each batch size compiles its own static graph.

        On a CPU, inductor compiles with ``freezing``: the weights become constants of the graph, so the compiled
        step holds them as they were (such a pipeline samples; reload it to train).  Where ``gemms_picked_when_
        compiled`` (raster models: one graph), full-precision weights are multiplied by inductor's own C++ GEMM,
        generated for each layer's shape, or by the library's, whichever it measures faster for that layer when it
        compiles (``max_autotune``): at the 2 rows of raster decoding the generated kernel streams the weights at
        about the machine's read rate, which neither BLAS nor oneDNN reaches.  Measuring costs compile time (~1 min
        for GPT-B, which ``arvision bench`` reports apart from the per-image figure) and the graph holds its own
        blocked copy of the weights.  Weights packed already (``pack_weights``, first) are called through oneDNN's
        packed linear, which inductor lowers only for graph constants."""
        import contextlib
        import unittest.mock

        import torch._dynamo
        import torch._inductor.config
        from torch._inductor import select_algorithm

        inductor = options.get("backend", "inductor") == "inductor"
        autotune = inductor and self.weight_format is None and self.gemms_picked_when_compiled
        settings = dict(freezing=True) if autotune or (inductor and self.weight_format == "packed") else {}
        if autotune:
            # ATEN: the library GEMM (MKL's packed sgemm for fp32), CPP: inductor's template; TRITON is for GPUs
            settings.update(max_autotune=True, max_autotune_gemm_backends="CPP,ATEN",
                            max_autotune_report_choices_stats=False)
        token = self.family.capabilities.token_step
        tr = self.transformer
        if token:  # static sizes but the cache length marked below: a new batch size compiles a static graph of its
            # own, as the first did (dynamo's default, a symbolic batch, compiled ~2x slower for GPT-B and leaves
            # inductor no row count to tune for)
            options = {"dynamic": False, **options}
        step = torch.compile(tr.forward_token if token else tr.forward_step, **options)

        @functools.wraps(step)
        def compiled(*args, **kwargs):
            if token:  # forward_token's ``seen`` (n,): its length is the only size that changes between positions
                torch._dynamo.maybe_mark_dynamic(args[0], 0)
            # inductor reads its settings when it compiles, lazily at a call (torch.compile's ``options`` do not
            # reach ``freezing`` in torch 2.13); the patches cost ~50 us a call, against ~20 ms for a GPT-B step
            with contextlib.ExitStack() as stack:
                if settings:
                    stack.enter_context(torch._inductor.config.patch(**settings))
                if autotune:  # else the autotuner writes a table per layer to stderr (no public switch in torch 2.13)
                    stack.enter_context(unittest.mock.patch.object(select_algorithm, "PRINT_AUTOTUNE", False))
                return step(*args, **kwargs)

        if token:
            tr.token_steps = True
            tr.forward_token = compiled
        else:
            torch._dynamo.config.cache_size_limit = max(torch._dynamo.config.cache_size_limit,
                                                        4 * self.schedule.num_steps)
            tr.forward_step = compiled
        return self

    @property
    def gemms_picked_when_compiled(self) -> bool:
        """Whether ``compile()`` lets inductor pack this pipeline's full-precision weights and pick each layer's
        GEMM by measuring (``--weights auto`` then leaves them unpacked): on a CPU, for models that sample through
        one graph (``capabilities.token_step``).  A scale schedule compiles a graph per scale, each of which
        would hold its own copy of the weights (ten for VAR-d16), so those are packed first."""
        return self.device.type == "cpu" and self.family.capabilities.token_step

    @property
    def weight_dtype(self) -> torch.dtype:
        return self.transformer.reference_weight.dtype

    @property
    def device(self) -> torch.device:
        return self.transformer.reference_weight.device

    # -- sampling ------------------------------------------------------------------------------------
    def layout(self, schedule=None):
        """The trunk's view of ``schedule`` (default: the model's), what ``transformer.forward`` takes."""
        return self.transformer.layout(self.schedule if schedule is None else schedule)

    def sampling_schedule(self, patch_nums=None, **family_options):
        """The schedule of one call: the model's, or (families with ``capabilities.scale_lists``) another list, or
        the one the family's options make (``family.call_schedule``: MaskGIT's ``iterations``)."""
        schedule = self.schedule if patch_nums is None else self.family.schedule(self.config, patch_nums)
        given = {k: v for k, v in family_options.items() if v is not None}
        return self.family.call_schedule(self.config, schedule, given) if given else schedule

    def sampling_defaults(self) -> dict:
        """What a call that leaves a setting out samples with: the model's stored ``config.sampling``, else the
        family's published default (temperature: 1), keyed like ``sampling_options``' arguments."""
        merged = {**self.family.defaults, **(self.config.sampling or {})}
        return {**merged, "temperature": merged.get("temperature", 1.0)}

    def sampling_options(self, guidance_scale=None, top_k=None, top_p=None, temperature=None, *,
                         more_smooth: bool = False, precision: str = "fp32", schedule=None, processors=(),
                         override=None, kv_policy=None, decoding=None, **family_options) -> SamplingOptions:
        """Validate a call's settings (None = the model's stored default, else the family's published one) and
        resolve them into the loop's :class:`~arvision.sampling.loop.SamplingOptions` for ``schedule``.
        ``family_options``: the family's extra sampling options (``family.sampling_options``, e.g. FlexVAR's
        ``max_pn`` and ``cfg_mode``)."""
        schedule = self.schedule if schedule is None else schedule
        fam = self.sampling_defaults()
        V = self.config.transformer.vocab_size
        given = {k: v for k, v in family_options.items() if v is not None}
        family_options = {**{k: fam[k] for k in self.family.sampling_options if k in fam}, **given}
        guidance_scale = fam["guidance_scale"] if guidance_scale is None else guidance_scale
        top_k = min(fam["top_k"], V) if top_k is None else top_k
        top_p = fam["top_p"] if top_p is None else top_p
        temperature = fam.get("temperature", 1.0) if temperature is None else temperature
        if not isinstance(guidance_scale, (int, float)) or not math.isfinite(guidance_scale) or guidance_scale < 0:
            raise ArvisionError(f"guidance scale must be a finite number >= 0, got {guidance_scale}")
        if not isinstance(top_k, int) or top_k < 0 or top_k > V:
            raise ArvisionError(f"top-k must be an integer in [0, {V}] (0 = off; the vocabulary has {V} codes), "
                                f"got {top_k}")
        if not isinstance(top_p, (int, float)) or not 0.0 <= top_p <= 1.0:
            raise ArvisionError(f"top-p must be in [0, 1] (0 = off), got {top_p}")
        if not isinstance(temperature, (int, float)) or not math.isfinite(temperature) or temperature <= 0:
            raise ArvisionError(f"temperature must be a finite number > 0, got {temperature}")
        if more_smooth and not self.family.capabilities.soft_codes:
            raise ArvisionError(f"more_smooth (soft code inputs) does not exist for {self.family.description} models")
        extra = self.family.check_sampling_options(family_options, schedule)
        kv_policy, decoding = self.policies(kv_policy, decoding)
        return SamplingOptions(
            guidance=self.family.guidance(float(guidance_scale), schedule, extra),
            tokens=self.family.token_sampling(float(temperature), int(top_k), float(top_p), schedule, extra),
            more_smooth=bool(more_smooth), dtype=resolve_precision(precision, self.device),
            processors=tuple(processors), override=override, kv_policy=kv_policy, decoding=decoding)

    @property
    def null_class(self) -> int:
        """The unconditional ("null") class id, ``num_classes``: the row of the class embedding that guidance's
        unconditional half uses (VAR's label 1000 on ImageNet)."""
        return self.config.num_classes

    def check_labels(self, class_labels, allow_null: bool = False) -> list[int]:
        """Class ids in 0..num_classes-1; with ``allow_null`` also the null class id (unconditional rows)."""
        n = self.config.num_classes
        if isinstance(class_labels, int):
            class_labels = [class_labels]
        labels = [int(c) for c in class_labels]
        if not labels:
            raise ArvisionError("no class labels given")
        top = n + 1 if allow_null else n
        bad = [c for c in labels if not 0 <= c < top]
        if bad:
            extra = f", or {n} for the null (unconditional) class" if allow_null else ""
            raise ArvisionError(f"class id(s) {bad} out of range: this model has {n} classes (0..{n - 1}{extra})")
        return labels

    @property
    def takes_text(self) -> bool:
        """Whether this model is conditioned on prompts (else on class ids)."""
        return self.transformer.text_encoder is not None

    def condition(self, class_labels=None, allow_null: bool = False, prompts=None) -> Condition:
        """Class ids (class models; checked as ``check_labels``) or prompts (text models: a string or a list;
        "" = the null text) -> the condition the loop takes.  A ready ``Condition`` passes through."""
        if isinstance(class_labels, Condition):
            return class_labels.to(self.device)
        if self.takes_text:
            if class_labels is not None:
                raise ArvisionError("this model is conditioned on text, not class labels: give prompts")
            if prompts is None or (not isinstance(prompts, str) and len(prompts) == 0):
                raise ArvisionError("no prompts given")
            texts = [prompts] if isinstance(prompts, str) else list(prompts)
            empty = [i for i, t in enumerate(texts) if isinstance(t, str) and not t.strip()]
            if empty and not allow_null:
                raise ArvisionError(f"empty prompt (at position {empty[0]}); describe the image, e.g. "
                                    "'a photo of a red circle'")
            return TextCondition.of(texts, self.transformer.text_encoder.tokenizer, self.device)
        if prompts is not None:
            raise ArvisionError("this model is conditioned on class labels, not text: give class ids, not prompts")
        if class_labels is None:
            raise ArvisionError("no class labels given")
        return ClassCondition.of(self.check_labels(class_labels, allow_null), self.config.num_classes, self.device)

    def __call__(self, class_labels: int | Sequence[int] | None = None, guidance_scale: float | None = None,
                 top_k: int | None = None, top_p: float | None = None, temperature: float | None = None,
                 generator: Generators = None, more_smooth: bool = False,
                 output_type: str = "pil", batch_size: int | None = None, precision: str = "fp32",
                 progress: bool = False, return_progression: bool = False,
                 time_steps: bool = False, processors=(), override=None, kv_policy=None,
                 decoding=None, search=None, verifier=None, allow_null_class: bool = False,
                 patch_nums=None, prompts: str | Sequence[str] | None = None, step_callback=None,
                 **family_options) -> GenerationOutput:
        """Generate one image per class label (class models) or per prompt (text models: ``prompts``).

        guidance_scale, top_k, top_p: None takes the model's stored defaults, else the family's published ones;
        top_k=0 / top_p=0 turn the filter off.  ``generator`` is consumed exactly as the official sampler consumes
        its own, so the same seed gives the official tokens (in fp32).  ``batch_size`` splits the labels into
        batches that run one after another on the same generator; None takes :meth:`default_batch_size` (bounded
        by the model's size and the free memory, at most 64), reported in ``stats["batch_size"]``.  With one
        generator the images depend on the batch size: pass it explicitly to reproduce a call exactly.  A list of
        generators, one per label, makes every image depend only on its own generator (not on its batch or
        position): what evaluation and search use.  For a very large request, :meth:`iter_batches` hands the
        batches over one at a time instead of holding every image.
        ``precision``: "fp32" (exact), "bf16", or "auto" (by hardware).
        ``return_progression`` (families with ``capabilities.progression``): also decode the state after every
        step.  ``time_steps``: record each step's seconds in ``stats["step_seconds"]`` (summed over batches;
        synchronises CUDA per step).
        Options of the one loop (``arvision.sampling.loop``): ``processors`` (extra logits processors),
        ``override`` (forced tokens), ``kv_policy`` (a cache policy or its spec, e.g. "scalekv:0.1"),
        ``decoding`` (a decoding policy or its spec, e.g. "sjd", "gsd:3"; raster models).
        ``allow_null_class``: accept the null class id (``self.null_class``) as a label, i.e. unconditional rows
        (guidance then has nothing to steer); off by default so that an out-of-range id stays an error.  Zero-shot
        editing without a class (``arvision.sampling.editing``) is what uses it.
        ``search``: a search controller or its spec ("bon:8", "beam:4", "lookahead:4", "tts-var", "gridar:4";
        ``arvision.sampling.search``) returns the verifier's best image per label; ``verifier``: callable(images
        (B, 3, H, W) in [-1, 1], labels (B,)) -> scores (B,), or a classifier weights path (default: the bundled
        digit classifier).  Its cost goes to ``stats["search"]``.
        ``patch_nums``: sample on another scale list (families with ``capabilities.scale_lists``: FlexVAR).
        ``family_options``: the family's extra sampling options (FlexVAR: ``max_pn``, ``cfg_mode``).
        ``step_callback(s, num_steps, preview)``: an observer called after every step of every batch, as it is
        computed (what a page streams); ``preview()`` decodes the batch's images so far (scale-wise: the canvas
        after step s; raster: the known tokens, the rest padded by repetition) as (B, 3, H, W) in [0, 1] on the
        CPU; call it during the callback (the state changes in place at the next step).  It draws no randomness, so
        the images are those of a call without it; its time counts in the step timings.  Not with a search (its
        batch changes between steps).
        """
        batches = self.iter_batches(
            class_labels, guidance_scale=guidance_scale, top_k=top_k, top_p=top_p, temperature=temperature,
            generator=generator, more_smooth=more_smooth, output_type=output_type, batch_size=batch_size,
            precision=precision, progress=progress, return_progression=return_progression, time_steps=time_steps,
            processors=processors, override=override, kv_policy=kv_policy, decoding=decoding, search=search,
            verifier=verifier, allow_null_class=allow_null_class, patch_nums=patch_nums, prompts=prompts,
            step_callback=step_callback, **family_options)
        return GenerationOutput.concat(list(batches))

    def default_batch_size(self, n_images: int | None = None, schedule=None) -> int:
        """The batch a call without ``batch_size`` uses for ``n_images`` images on ``schedule`` (default: the
        model's): bounded by the model's per-image memory and the free memory (``arvision.sampling.batching``)."""
        return default_batch_size(self.config, self.schedule if schedule is None else schedule, self.device,
                                  n_images)

    def iter_batches(self, class_labels: int | Sequence[int] | None = None, guidance_scale: float | None = None,
                     top_k: int | None = None, top_p: float | None = None, temperature: float | None = None,
                     generator: Generators = None, more_smooth: bool = False,
                     output_type: str = "pil", batch_size: int | None = None, precision: str = "fp32",
                     progress: bool = False, return_progression: bool = False,
                     time_steps: bool = False, processors=(), override=None, kv_policy=None,
                     decoding=None, search=None, verifier=None, allow_null_class: bool = False,
                     patch_nums=None, prompts: str | Sequence[str] | None = None, step_callback=None,
                     **family_options) -> Iterator[GenerationOutput]:
        """The batches of ``self(...)`` (same options), one :class:`GenerationOutput` per batch as it finishes, so
        that a caller can write each batch out and drop it: any number of images in bounded memory.  Every
        argument is checked here, before the first batch runs; the generator is consumed batch after batch exactly
        as ``self(...)`` consumes it.  Each output's ``stats`` is the running total of the call so far."""
        condition = self.condition(class_labels, allow_null=allow_null_class, prompts=prompts)
        schedule = self.sampling_schedule(patch_nums, **family_options)
        options = self.sampling_options(guidance_scale, top_k, top_p, temperature, more_smooth=more_smooth,
                                        precision=precision, schedule=schedule, processors=processors,
                                        override=override, kv_policy=kv_policy, decoding=decoding, **family_options)
        if output_type not in OUTPUT_TYPES:
            raise ArvisionError(f"output_type must be one of {OUTPUT_TYPES}, got {output_type!r}")
        if return_progression and not self.family.capabilities.progression:
            raise ArvisionError(f"the coarse-to-fine progression does not exist for {self.family.description} models")
        if step_callback is not None and search is not None:
            raise ArvisionError("a step callback cannot follow a search (its batch changes between steps)")
        sample = generate
        if search is not None or verifier is not None:
            from arvision.sampling.search import SearchSampler

            sample = SearchSampler.for_pipeline(self, search, verifier, options, return_progression)
        packed = self.weight_format == "packed"  # packed fp32 weights cannot be autocast either
        if options.dtype != self.weight_dtype and (packed or self.weight_dtype != torch.float32):
            held = "weights are packed in" if packed else "transformer weights are"
            raise ArvisionError(f"this pipeline's {held} {self.weight_dtype}; it cannot sample in {options.dtype} "
                                f"(reload the model{'' if packed else ' for exact fp32 sampling'})")
        n = len(condition.keys())
        if batch_size is not None and (isinstance(batch_size, bool) or not isinstance(batch_size, int)
                                       or batch_size < 1):
            raise ArvisionError(f"batch size must be an integer >= 1, got {batch_size!r}")
        bs = self.default_batch_size(n, schedule) if batch_size is None else batch_size
        if isinstance(generator, (list, tuple)) and len(generator) != n:
            raise ArvisionError(f"got {len(generator)} generators for {n} images; give one per image")
        return self._batches(condition, schedule, options, sample, generator, bs, output_type, progress,
                             return_progression, time_steps, search is not None, step_callback)

    def _batches(self, condition, schedule, options, sample, generator, bs: int, output_type: str, progress: bool,
                 return_progression: bool, time_steps: bool, searching: bool,
                 step_callback=None) -> Iterator[GenerationOutput]:
        """The loop of :meth:`iter_batches`, after its checks."""
        labels = condition.keys()
        inputs = self.inputs if schedule == self.schedule else self.family.input_builder(self.tokenizer, schedule)
        dtype = options.dtype
        per_image = isinstance(generator, (list, tuple))
        stats = {"transformer_seconds": 0.0, "decode_seconds": 0.0, "kv_cache_bytes": 0, "kv_transient_bytes": 0,
                 "forwards": 0, "token_forwards": 0, "precision": str(dtype).removeprefix("torch."),
                 "batch_size": bs}
        for i in range(0, len(labels), bs):
            rows = condition.select(torch.arange(i, min(i + bs, len(labels)), device=condition.device))
            previews, marks = [], []

            def hook(s, state, toks, keep=previews, marks=marks):
                if return_progression:  # decoded after the loop, so that step timings stay the trunk's
                    keep.append((state.clone() if isinstance(state, torch.Tensor) else state, toks.clone(), s + 1))
                if time_steps:
                    marks.append(_clock(self.device))
                if step_callback is not None:  # the state changes in place at the next step: preview now or never
                    args = (state, toks, s + 1)
                    step_callback(s, schedule.num_steps,
                                  lambda: self._decode(inputs.preview, args, dtype).float().add(1).mul(0.5).cpu())

            gen = generator[i:i + bs] if per_image else generator
            t0 = _clock(self.device)
            observed = return_progression or time_steps or step_callback is not None
            res = sample(self.transformer, inputs, rows, options, gen, progress, hook if observed else None)
            if searching:
                sample.record(stats, res)
            t1 = _clock(self.device)
            stats["transformer_seconds"] += t1 - t0
            if time_steps:
                per_step = [b - a for a, b in zip([t0, *marks[:-1]], marks)]
                old = stats.setdefault("step_seconds", [0.0] * len(per_step))
                stats["step_seconds"] = [x + y for x, y in zip(old, per_step)]
            stats["kv_cache_bytes"] = max(stats["kv_cache_bytes"], res.kv_cache_bytes)
            stats["kv_transient_bytes"] = max(stats["kv_transient_bytes"], res.kv_transient_bytes)
            stats["forwards"] += res.forwards
            stats["token_forwards"] += res.token_forwards
            progression = None
            if return_progression:
                progression = [self._decode(inputs.preview, args, dtype).add(1).mul(0.5).cpu() for args in previews]
            images = None
            if output_type != "tokens":
                t2 = _clock(self.device)
                images = self._decode(inputs.finish, (res.state, res.tokens), dtype).float().add(1).mul(0.5).cpu()
                stats["decode_seconds"] += _clock(self.device) - t2
                if output_type == "pil":
                    images = to_pil(images)
            yield GenerationOutput(images, res.tokens, inputs.split(res.tokens), labels[i:i + bs], progression, stats,
                                   schedule)

    def policies(self, kv_policy, decoding):
        """Specs ("scalekv:0.1", "gsd:3", ...) -> policy objects; objects and None pass through."""
        if isinstance(kv_policy, str):
            from arvision.sampling.kv_policies import parse_kv_policy

            kv_policy = parse_kv_policy(kv_policy, self)
        if isinstance(decoding, str):
            from arvision.sampling.speculative import parse_decoding

            decoding = parse_decoding(decoding, self)
        return kv_policy, decoding

    @torch.no_grad()
    def _decode(self, finish, args, dtype: torch.dtype) -> torch.Tensor:
        """``finish(*args)`` (an input builder's state -> images (B, 3, H, W) in [-1, 1]) in ``dtype``: fp32 exactly,
        bf16 under autocast."""
        if dtype == torch.float32:
            return finish(*args)
        with torch.autocast(device_type=self.device.type, dtype=dtype):
            return finish(*args).float()

    # -- tokenizer round trip ------------------------------------------------------------------------
    @torch.no_grad()
    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """images (B, 3, H, W) in [-1, 1] -> (B, L) token ids in schedule order."""
        return self.inputs.targets(images.to(self.device))

    @torch.no_grad()
    def decode(self, tokens: torch.Tensor) -> torch.Tensor:
        """(B, L) ids -> images (B, 3, H, W) in [-1, 1]."""
        return self.inputs.decode(tokens.to(self.device)).clamp(-1, 1)


def _clock(device: torch.device) -> float:
    """Wall time, after the device finished its queued work (CUDA runs asynchronously)."""
    import time

    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter()
