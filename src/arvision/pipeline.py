"""``ARPipeline``: a tokenizer + transformer + schedule, loaded and saved as a folder, called like diffusers.

    pipe = ARPipeline.from_pretrained("my-model")
    out = pipe(class_labels=[1, 3, 7], guidance_scale=1.5, top_k=900, top_p=0.96,
               generator=torch.Generator().manual_seed(0))
    out.images  # list of PIL images

A model folder holds ``config.json``, ``tokenizer.safetensors`` and ``transformer.safetensors``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch

from arvision.checkpoints import load_strict, read_safetensors, read_torch_checkpoint
from arvision.config import ModelConfig
from arvision.errors import ArvisionError
from arvision.images import to_pil
from arvision.inputs import build_inputs
from arvision.models.transformer import ARTransformer
from arvision.precision import resolve_precision
from arvision.sampling.loop import generate
from arvision.sampling.output import GenerationOutput  # defined below the pipeline; still importable from here
from arvision.sampling.processors import Generators, Guidance, TokenSampling
from arvision.schedules import Schedule
from arvision.tokenizers.models import build_tokenizer

# Per family: guidance rule, top-p rule, and defaults (VAR: its FID protocol; LlamaGen: its README).
FAMILY_SAMPLING = {
    "var": dict(guidance="ramp", top_p_rule="ascending", guidance_scale=1.5, top_k=900, top_p=0.96),
    "llamagen": dict(guidance="constant", top_p_rule="descending", guidance_scale=2.0, top_k=0, top_p=0.0),
}
OUTPUT_TYPES = ("pil", "pt", "tokens")


def schedule_for(config: ModelConfig) -> Schedule:
    if config.family == "var":
        return Schedule.scales(config.tokenizer.patch_nums)
    return Schedule.raster(config.latent_size)


class ARPipeline:
    def __init__(self, config: ModelConfig, tokenizer=None, transformer=None):
        self.config = config
        self.schedule = schedule_for(config)
        self.tokenizer = tokenizer if tokenizer is not None else build_tokenizer(config.tokenizer)
        self.transformer = transformer if transformer is not None else ARTransformer(config.transformer,
                                                                                     self.schedule)
        self.tokenizer.eval().requires_grad_(False)
        self.transformer.eval().requires_grad_(False)
        # channels-last convolutions decode faster on CPUs, in fp32 and bf16 (bench/decoder_formats.py); only the
        # decoder: the encoder's output decides tokens, so it keeps the layout the parity tests pin down
        self.tokenizer.decoder.to(memory_format=torch.channels_last)
        self.tokenizer.post_quant_conv.to(memory_format=torch.channels_last)
        self.inputs = build_inputs(self.tokenizer, self.schedule)
        self.folder: Path | None = None  # the model folder it was loaded from, if any
        self.kv_calibration = None  # ScaleKV/HACK layer and head classes (``arvision calibrate-kv``), loaded lazily
        self.weight_quantization: str | None = None  # "int8" after ``quantize_weights``

    # -- persistence -------------------------------------------------------------------------------
    @classmethod
    def from_pretrained(cls, path: str | Path, device: str | torch.device | None = None) -> ARPipeline:
        """Load a model folder (config.json + safetensors).  A name that is not a local folder is looked up on
        the Hugging Face Hub (needs network)."""
        folder = Path(path)
        if not folder.exists():
            if "/" in str(path) and not str(path).startswith((".", "/")):
                folder = _download(str(path))
            else:
                raise ArvisionError(f"model folder not found: {path}")
        if not folder.is_dir():
            raise ArvisionError(f"{path} is a file; expected a model folder with config.json "
                                "(use `arvision convert` for official .pth checkpoints)")
        config = ModelConfig.load(folder / "config.json")
        pipe = cls(config)
        load_strict(pipe.tokenizer, read_safetensors(folder / "tokenizer.safetensors"),
                    str(folder / "tokenizer.safetensors"))
        load_strict(pipe.transformer, read_safetensors(folder / "transformer.safetensors"),
                    str(folder / "transformer.safetensors"))
        pipe.folder = folder  # where per-model extras live (``kv_calibration.json``)
        return pipe.to(device) if device is not None else pipe

    def save_pretrained(self, path: str | Path) -> Path:
        if self.weight_quantization is not None:
            raise ArvisionError(f"this pipeline's weights are quantized ({self.weight_quantization}); reload the "
                                "model to save it")
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
        """Build from the official ``.pth``/``.pt`` files.  options: VAR ``patch_nums``, ``num_classes``;
        LlamaGen ``image_size``, ``vq_ch``, ``num_heads``, ``num_classes``."""
        from arvision.families import llamagen, var

        tok_sd = read_torch_checkpoint(tokenizer_ckpt)
        tr_sd = read_torch_checkpoint(transformer_ckpt)
        if family == "var":
            config = var.config_from_official(tok_sd, tr_sd, **options)
            tok_map, tr_map = var.vae_keymap(config.tokenizer.share_quant_resi), var.VAR_KEYMAP
            tok_buf, tr_buf = var.expected_buffers(config)
        elif family == "llamagen":
            config = llamagen.config_from_official(tok_sd, tr_sd, **options)
            tok_map, tr_map = llamagen.vq_keymap(len(config.tokenizer.dec_ch_mult)), llamagen.GPT_KEYMAP
            tok_buf, tr_buf = {"quantize.codebook_used": (None,)}, {}
        else:
            raise ArvisionError(f"unknown family {family!r}; use 'var' or 'llamagen'")
        pipe = cls(config)
        load_strict(pipe.tokenizer, tok_sd, str(tokenizer_ckpt), tok_map, tok_buf)
        load_strict(pipe.transformer, tr_sd, str(transformer_ckpt), tr_map, tr_buf)
        return pipe

    def official_state_dicts(self) -> tuple[dict, dict]:
        """(tokenizer, transformer) state dicts in the official layout and names, recomputed buffers included,
        loadable by the research code with ``strict=True`` (and by ``from_official``)."""
        from arvision.families import llamagen, var

        tok = {k: v.detach().clone() for k, v in self.tokenizer.state_dict().items()}
        tr = {k: v.detach().clone() for k, v in self.transformer.state_dict().items()}
        if self.config.family == "var":
            tok = {var.vae_keymap(self.config.tokenizer.share_quant_resi).to_official(k): v for k, v in tok.items()}
            tr = {var.VAR_KEYMAP.to_official(k): v for k, v in tr.items()}
            S, V = self.schedule.num_steps, self.config.tokenizer.vocab_size
            tok["quantize.ema_vocab_hit_SV"] = torch.zeros(S, V)
            tr["lvl_1L"] = self.schedule.step_ids()[None]
            tr["attn_bias_for_masking"] = self.schedule.attn_bias()[None, None]
        else:
            keymap = llamagen.vq_keymap(len(self.config.tokenizer.dec_ch_mult))
            tok = {keymap.to_official(k): v for k, v in tok.items()}
            tr = {llamagen.GPT_KEYMAP.to_official(k): v for k, v in tr.items()}
            tok["quantize.codebook_used"] = torch.zeros(65536)
        return tok, tr

    def to(self, device=None, dtype: torch.dtype | None = None) -> ARPipeline:
        """Move to ``device``; ``dtype`` (e.g. torch.bfloat16) casts the transformer's weights in place.

        bf16 weights halve the memory and skip autocast's per-call weight casts; such a pipeline samples only in
        bf16 (the exact fp32 mode needs fp32 weights: reload them).  The tokenizer stays fp32 (its nearest-code
        search decides tokens); decoding runs under autocast in the sampling precision.
        """
        if device is not None:
            self.tokenizer.to(device)
            self.transformer.to(device)
        if dtype is not None:
            if not dtype.is_floating_point:
                raise ArvisionError(f"dtype must be a floating point type, got {dtype}")
            rope = getattr(self.transformer, "rope", None)
            self.transformer.to(dtype)
            if rope is not None:
                self.transformer.rope = rope  # rotary angles stay fp32: bf16 cos/sin would blur positions
        return self

    def quantize_weights(self, kind: str = "int8") -> ARPipeline:
        """Weight-only int8: every linear layer of the transformer blocks and the head keeps int8 weights with a
        bf16 scale per output row (``arvision.models.quantized``); the rest of the transformer is cast to bf16.

        Half the bytes of bf16 weights, for bandwidth-bound decoding (raster models at small batch).  Lossy: such
        a pipeline samples in bf16 only and cannot be saved (reload the model for the full-precision weights).
        """
        from arvision.models.quantized import quantize_linears

        if kind != "int8":
            raise ArvisionError(f"weight quantization must be 'int8', got {kind!r}")
        if self.weight_quantization is None:
            self.to(dtype=torch.bfloat16)
            for blk in self.transformer.blocks:
                quantize_linears(blk)
            quantize_linears(self.transformer, only=("head",))
            self.weight_quantization = kind
        return self

    def compile(self, **options) -> ARPipeline:
        """Compile the transformer's step function with ``torch.compile(**options)`` (e.g. ``mode="max-autotune"``,
        ``backend="aot_eager"``).  The step traces as one graph, without breaks (``tests/test_speed.py``).  VAR: each
        scale is a specialisation, so the first call of each pays the compile time.  Raster models sample through
        ``forward_token``, a fixed-shape step over the whole (zero-initialised) static cache with a position mask,
        compiled once for every position."""
        import torch._dynamo

        if self.schedule.kind == "raster":
            # one fixed-shape step for every position after the first: one specialisation, compiled once
            self.transformer.static_steps = True
            self.transformer.forward_token = torch.compile(self.transformer.forward_token, **options)
            return self
        limit = max(torch._dynamo.config.cache_size_limit, 4 * self.schedule.num_steps)
        torch._dynamo.config.cache_size_limit = limit
        self.transformer.forward_step = torch.compile(self.transformer.forward_step, **options)
        return self

    @property
    def weight_dtype(self) -> torch.dtype:
        return self.transformer.class_emb.weight.dtype

    @property
    def device(self) -> torch.device:
        return self.transformer.class_emb.weight.device

    # -- sampling ------------------------------------------------------------------------------------
    def sampling_settings(self, guidance_scale=None, top_k=None, top_p=None, temperature=None):
        """Validate user settings (None = family default) -> (Guidance, TokenSampling)."""
        fam = {**FAMILY_SAMPLING[self.config.family], **(self.config.sampling or {})}
        V = self.config.transformer.vocab_size
        if guidance_scale is None:
            guidance_scale = fam["guidance_scale"]
        if top_k is None:
            top_k = min(fam["top_k"], V)
        if top_p is None:
            top_p = fam["top_p"]
        if temperature is None:
            temperature = fam.get("temperature", 1.0)
        if not isinstance(guidance_scale, (int, float)) or guidance_scale < 0:
            raise ArvisionError(f"guidance scale must be >= 0, got {guidance_scale}")
        if not isinstance(top_k, int) or top_k < 0 or top_k > V:
            raise ArvisionError(f"top-k must be an integer in [0, {V}] (0 = off; the vocabulary has {V} codes), "
                                f"got {top_k}")
        if not isinstance(top_p, (int, float)) or not 0.0 <= top_p <= 1.0:
            raise ArvisionError(f"top-p must be in [0, 1] (0 = off), got {top_p}")
        if not isinstance(temperature, (int, float)) or temperature <= 0:
            raise ArvisionError(f"temperature must be > 0, got {temperature}")
        return (Guidance(fam["guidance"], float(guidance_scale)),
                TokenSampling(float(temperature), int(top_k), float(top_p), fam["top_p_rule"]))

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

    def __call__(self, class_labels: int | Sequence[int], guidance_scale: float | None = None,
                 top_k: int | None = None, top_p: float | None = None, temperature: float | None = None,
                 generator: Generators = None, more_smooth: bool = False,
                 output_type: str = "pil", batch_size: int | None = None, precision: str = "fp32",
                 progress: bool = False, return_progression: bool = False,
                 time_steps: bool = False, processors=(), override=None, kv_policy=None,
                 decoding=None, search=None, verifier=None, allow_null_class: bool = False) -> GenerationOutput:
        """Generate one image per class label.

        guidance_scale, top_k, top_p: None takes the family's published defaults; top_k=0 / top_p=0 turn the
        filter off.  ``generator`` is consumed exactly as the official sampler consumes its own, so the same
        seed gives the official tokens (in fp32).  ``batch_size`` splits the labels into batches that run one
        after another on the same generator.  A list of generators, one per label, makes every image depend only
        on its own generator (not on its batch or position): what evaluation and search use.
        ``precision``: "fp32" (exact), "bf16", or "auto" (by hardware).
        ``return_progression`` (scale-wise models): also decode the canvas after every scale.  ``time_steps``:
        record each step's seconds in ``stats["step_seconds"]`` (summed over batches; synchronises CUDA per step).
        Options of the one loop (``arvision.sampling.loop``): ``processors`` (extra logits processors),
        ``override`` (forced tokens), ``kv_policy`` (a cache policy or its spec, e.g. "scalekv:0.1"),
        ``decoding`` (a decoding policy or its spec, e.g. "sjd", "gsd:3"; raster models).
        ``allow_null_class``: accept the null class id (``self.null_class``) as a label, i.e. unconditional rows
        (guidance then has nothing to steer); off by default so that an out-of-range id stays an error.  Zero-shot
        editing without a class (``arvision.sampling.editing``) is what uses it.
        ``search``: a search controller or its spec ("bon:8", "beam:4", "lookahead:4", "tts-var";
        ``arvision.sampling.search``) returns the verifier's best image per label; ``verifier``: callable(images
        (B, 3, H, W) in [-1, 1], labels (B,)) -> scores (B,), or a classifier weights path (default: the bundled
        digit classifier).  Its cost goes to ``stats["search"]``.
        """
        labels = self.check_labels(class_labels, allow_null=allow_null_class)
        guidance, sampling = self.sampling_settings(guidance_scale, top_k, top_p, temperature)
        if output_type not in OUTPUT_TYPES:
            raise ArvisionError(f"output_type must be one of {OUTPUT_TYPES}, got {output_type!r}")
        if (more_smooth or return_progression) and self.config.family != "var":
            raise ArvisionError("more_smooth and the coarse-to-fine progression exist only for VAR models")
        dtype = resolve_precision(precision, self.device)
        kv_policy, decoding = self.policies(kv_policy, decoding)
        sample = generate
        if search is not None or verifier is not None:
            from arvision.sampling.search import SearchSampler

            sample = SearchSampler.for_pipeline(self, search, verifier, decoding, override, return_progression)
        if self.weight_dtype != torch.float32 and dtype != self.weight_dtype:
            raise ArvisionError(f"this pipeline's transformer weights are {self.weight_dtype}; it cannot sample in "
                                f"{dtype} (reload the model for exact fp32 sampling)")
        bs = len(labels) if batch_size is None else batch_size
        if bs < 1:
            raise ArvisionError(f"batch size must be >= 1, got {batch_size}")
        per_image = isinstance(generator, (list, tuple))
        if per_image and len(generator) != len(labels):
            raise ArvisionError(f"got {len(generator)} generators for {len(labels)} class labels; give one per image")
        tokens, images, steps = [], [], []
        stats = {"transformer_seconds": 0.0, "decode_seconds": 0.0, "kv_cache_bytes": 0, "kv_transient_bytes": 0,
                 "forwards": 0,
                 "token_forwards": 0, "precision": str(dtype).removeprefix("torch.")}
        for i in range(0, len(labels), bs):
            lab = torch.tensor(labels[i:i + bs], device=self.device)
            canvases, marks = [], []

            def hook(s, state, toks, keep=canvases, marks=marks):
                if return_progression:
                    keep.append(state.clone())
                if time_steps:
                    marks.append(_clock(self.device))

            gen = generator[i:i + bs] if per_image else generator
            t0 = _clock(self.device)
            res = sample(self.transformer, self.inputs, lab, guidance, sampling, gen, more_smooth, dtype,
                         progress, hook if (return_progression or time_steps) else None,
                         processors=processors, override=override, kv_policy=kv_policy, decoding=decoding)
            if search is not None:
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
            if return_progression:
                steps.append([self._decode_state(c, None, dtype).add(1).mul(0.5).cpu() for c in canvases])
            tokens.append(res.tokens)
            if output_type != "tokens":
                t2 = _clock(self.device)
                images.append(self._decode_state(res.state, res.tokens, dtype).float().add(1).mul(0.5).cpu())
                stats["decode_seconds"] += _clock(self.device) - t2
        tokens = torch.cat(tokens)
        out_images = None
        if output_type != "tokens":
            out_images = torch.cat(images)
            if output_type == "pil":
                out_images = to_pil(out_images)
        progression = [torch.cat(per_step) for per_step in zip(*steps)] if return_progression else None
        return GenerationOutput(out_images, tokens, self.inputs.split(tokens), labels, progression, stats)

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
    def _decode_state(self, state, tokens, dtype: torch.dtype) -> torch.Tensor:
        """The input builder's final state (and tokens) -> images (B, 3, H, W) in [-1, 1], decoded in ``dtype``
        (fp32 exactly; bf16 under autocast)."""
        if dtype == torch.float32:
            return self.inputs.finish(state, tokens)
        with torch.autocast(device_type=self.device.type, dtype=dtype):
            return self.inputs.finish(state, tokens).float()

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


def _download(repo_id: str) -> Path:
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(repo_id, allow_patterns=["config.json", "*.safetensors"]))
    except Exception as e:  # noqa: BLE001 - network, auth, missing repo: one message for the user
        raise ArvisionError(f"{repo_id!r} is not a local folder and could not be fetched from the Hub: {e}") from None
