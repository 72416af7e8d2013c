"""LBW watermarking: bias sampling toward a key-derived green list of codes, detect it by re-tokenising.

Lexical-bias watermarking (LBW, arXiv 2506.01011) on the one sampling loop.  A *green list* is a context-free
subset of the codebook, ``round(gamma * V)`` codes, derived from a secret key: the same list for every position
and every scale, which is what lets it survive the decode -> re-encode round trip better than context-hashed lists.
A *pool* of ``K`` lists (key + list index) keeps any one list from being estimated from many images; each image is
watermarked with one list of the pool, and detection tests all ``K``.

    spec = WatermarkSpec("my secret", delta=4.0, pool=4)
    out = pipe(labels, generator=gens, processors=[spec.processor(pipe)])      # watermarked samples
    results = detect_images(pipe, images, spec)                                # images (B, 3, H, W) in [-1, 1]
    results[0].z, results[0].p_value, results[0].watermarked

Embedding (:class:`WatermarkProcessor`): soft bias ``logits[..., G] += delta`` or hard ``logits[..., V \\ G] = -inf``,
applied after guidance and before temperature/top-k/top-p, at every step ``s >= start_step``.

Which list an image uses: ``sha256(key, its generator's seed, its class label) mod K`` (or ``list_index`` when the
spec fixes one).  Both the seed and the label are carried by the run row by row and follow ``SamplingRun.select``
(search controllers re-batching, duplicating or dropping rows), so the processor keeps no per-row state of its own
and a re-batched row keeps its list.  With one generator shared by the batch (the CLI's ``--seed``), every image of
the call gets the list of (seed, class); with per-image generators each image has its own.

Detection (:func:`detect_tokens`, :func:`detect_images`): tokens of steps ``>= start_step`` are scored; with ``T``
scored tokens of which ``n_g`` are green under list ``k``,
``z_k = (n_g - gamma T) / sqrt(T gamma (1 - gamma))``; the result reports ``z = max_k z_k`` and the exact one-sided
binomial p-value ``P[Binomial(T, gamma) >= n_g]`` of that list times ``K`` (Bonferroni over the pool, capped at 1).
``unique=True`` (the default) scores each distinct code once: digits repeat one background code dozens of times,
which breaks the i.i.d. null (scoring every token, clean samples of the bundled model reach z > 4 in 12% of cases,
``bench/watermark_eval.py``); ``unique=False`` scores every token.

Known limit (measured, ``docs/watermark.md``): detection re-tokenises the *image*, and the bundled VAR tokenizer keeps
only 24% of the tokens through decode -> re-encode (reverse cycle-consistency; 40% even from the exact canvas), so
the bias that is plain in the sampled tokens (z about 6 at delta 4, distinct codes scored) does not survive into
the image's tokens on this model.  :func:`align_images` (pixel-domain alignment, ``--watermark-align``) puts it
there: Adam on the decoded image toward green re-quantisation, traded against fidelity.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, field

import torch

from arvision.errors import ArvisionError

__all__ = ["WatermarkSpec", "WatermarkProcessor", "DetectionResult", "green_list", "green_lists",
           "detect_tokens", "detect_images", "parse_delta", "align_images", "residual_code_logits"]

DEFAULT_GAMMA = 0.5
DEFAULT_DELTA = 4.0
DEFAULT_POOL = 4
DEFAULT_START_STEP = 0
DEFAULT_THRESHOLD = 4.0
DEFAULT_ALIGN_STEPS = 100


def _digest_int(*parts) -> int:
    """A 63-bit integer from sha256 of the parts (joined with a separator that cannot occur in str(int))."""
    text = "\x1f".join(str(p) for p in parts).encode()
    return int.from_bytes(hashlib.sha256(text).digest()[:8], "big") & (2**63 - 1)


def green_list(key: str, index: int, vocab_size: int, gamma: float) -> torch.Tensor:
    """The green list ``index`` of ``key``: a bool mask (V,) with exactly ``round(gamma * V)`` True entries.

    A permutation of the codebook drawn from a CPU ``torch.Generator`` seeded by sha256(key, index); its first
    ``round(gamma * V)`` codes are green.  Same key and index -> same list on every machine."""
    g = torch.Generator().manual_seed(_digest_int("arvision-lbw", key, index))
    n = round(gamma * vocab_size)
    mask = torch.zeros(vocab_size, dtype=torch.bool)
    mask[torch.randperm(vocab_size, generator=g)[:n]] = True
    return mask


def green_lists(key: str, pool: int, vocab_size: int, gamma: float) -> torch.Tensor:
    """All ``pool`` green lists of ``key``: (K, V) bool."""
    return torch.stack([green_list(key, k, vocab_size, gamma) for k in range(pool)])


def parse_delta(text: str | float) -> tuple[float, bool]:
    """``"hard"`` -> (0, True); a number -> (delta, False).  The CLI's ``--watermark-delta``."""
    if isinstance(text, str) and text.strip().lower() == "hard":
        return 0.0, True
    try:
        return float(text), False
    except ValueError:
        raise ArvisionError(f"watermark delta must be a number >= 0 or 'hard', got {text!r}") from None


@dataclass(frozen=True)
class WatermarkSpec:
    """A watermark: key, green fraction ``gamma``, soft bias ``delta`` (or ``hard``), pool size, start step.

    key: the secret (non-empty string).  gamma in (0, 1): the green fraction of the codebook.  delta >= 0: the
    soft bias added to green logits (0 = no watermark, sampling unchanged).  hard: sample only green codes (delta
    ignored).  pool >= 1: number of key-derived green lists.  start_step >= 0: scale-wise models can leave the
    coarsest steps (global layout) unbiased; detection then counts only steps >= start_step.
    list_index: fix the list every image uses (None: chosen per image, see the module docstring).
    align: None, or the fidelity weight lambda >= 0 of :func:`align_images` (applied to the decoded images by
    ``arvision sample --watermark-align``); align_steps: its Adam steps.
    """

    key: str
    gamma: float = DEFAULT_GAMMA
    delta: float = DEFAULT_DELTA
    hard: bool = False
    pool: int = DEFAULT_POOL
    start_step: int = DEFAULT_START_STEP
    list_index: int | None = None
    align: float | None = None
    align_steps: int = DEFAULT_ALIGN_STEPS

    def __post_init__(self):
        if not isinstance(self.key, str) or not self.key:
            raise ArvisionError("watermark key must be a non-empty string")
        if not isinstance(self.gamma, (int, float)) or not 0.0 < self.gamma < 1.0:
            raise ArvisionError(f"watermark gamma (green fraction) must be in (0, 1), got {self.gamma}")
        if not isinstance(self.delta, (int, float)) or not math.isfinite(self.delta) or self.delta < 0:
            raise ArvisionError(f"watermark delta must be a finite number >= 0 (or use hard=True), got {self.delta}")
        if not isinstance(self.pool, int) or self.pool < 1:
            raise ArvisionError(f"watermark pool size must be an integer >= 1, got {self.pool}")
        if not isinstance(self.start_step, int) or self.start_step < 0:
            raise ArvisionError(f"watermark start step must be an integer >= 0, got {self.start_step}")
        if self.list_index is not None and not (isinstance(self.list_index, int) and 0 <= self.list_index < self.pool):
            raise ArvisionError(f"watermark list index must be in [0, {self.pool - 1}] (the pool), "
                                f"got {self.list_index}")

        if self.align is not None and (not isinstance(self.align, (int, float)) or not math.isfinite(self.align)
                                       or self.align < 0):
            raise ArvisionError(f"watermark alignment weight must be a finite number >= 0, got {self.align}")
        if not isinstance(self.align_steps, int) or self.align_steps < 1:
            raise ArvisionError(f"watermark alignment steps must be an integer >= 1, got {self.align_steps}")

    def list_for(self, seed: int, label: int | str) -> int:
        """The pool list of an image sampled from generator seed ``seed`` with class ``label`` (or, for a text
        model, prompt ``label``): sha256 of the key, seed and label, the same in every process (never ``hash``)."""
        if self.list_index is not None or self.pool == 1:
            return self.list_index or 0
        return _digest_int("arvision-lbw-choice", self.key, seed, label) % self.pool

    def lists(self, vocab_size: int) -> torch.Tensor:
        """(K, V) bool green lists."""
        if round(self.gamma * vocab_size) < 1 or round(self.gamma * vocab_size) >= vocab_size:
            raise ArvisionError(f"gamma {self.gamma} leaves no green or no red code in a vocabulary of {vocab_size}")
        return green_lists(self.key, self.pool, vocab_size, self.gamma)

    def processor(self, pipe_or_vocab) -> WatermarkProcessor:
        """The logits processor for a pipeline (or a vocabulary size)."""
        if isinstance(pipe_or_vocab, int):
            return WatermarkProcessor(self, pipe_or_vocab)
        pipe = pipe_or_vocab
        check_code_logits(pipe.family)
        if self.start_step:
            check_start_step(self, pipe.schedule)
            S = pipe.schedule.num_steps
            if self.start_step >= S:
                raise ArvisionError(f"watermark start step {self.start_step} is past the model's last step "
                                    f"({S} steps: 0..{S - 1})")
        return WatermarkProcessor(self, pipe.config.transformer.vocab_size)


def check_start_step(spec: WatermarkSpec, schedule) -> None:
    """A start step > 0 leaves the first steps' tokens unscored: only where those sit at fixed positions."""
    if spec.start_step and not schedule.fixed_positions:
        raise ArvisionError(f"watermark start step {spec.start_step} needs steps whose tokens sit at fixed positions; "
                            f"this model's steps ({schedule.describe()}) reveal tokens wherever they are chosen at "
                            "run time: use start step 0")


def check_code_logits(family) -> None:
    """Raise unless ``family``'s head scores every code of the vocabulary (the green lists are sets of codes)."""
    if not family.capabilities.code_logits:
        raise ArvisionError(f"the watermark biases one logit per code; {family.description} models score each bit of "
                            "a token separately, so it does not apply to them")


class WatermarkProcessor:
    """Logits processor ``(logits (B, n, V), s, run) -> logits``: green bias on the list each row uses."""

    def __init__(self, spec: WatermarkSpec, vocab_size: int):
        self.spec, self.vocab_size = spec, vocab_size
        self.masks = spec.lists(vocab_size)  # (K, V) bool, CPU; moved to the logits' device on first use

    def row_lists(self, run) -> torch.Tensor:
        """The list index of every row of ``run`` (B,) int64, from (key, generator seed, class label).

        Fixed per image the first time a run is seen, then indexed by ``run.rows`` (the starting-batch row
        each image descends from): rows repeated by a search controller get forked generators but keep the
        list of the image they descend from."""
        rows = getattr(run, "rows", None)
        if rows is None:
            return self._choose(run)
        chosen = run.slot(self, dict)  # this run's list per starting-batch row, fixed the first time it is seen
        if "lists" not in chosen:
            chosen["lists"] = torch.zeros(int(rows.max()) + 1, dtype=torch.long)
            chosen["lists"][rows.cpu()] = self._choose(run)
        return chosen["lists"][rows.cpu()]

    def _choose(self, run) -> torch.Tensor:
        keys = run.condition.keys()
        gen = run.generator
        if isinstance(gen, list):
            seeds = [g.initial_seed() for g in gen]
        else:
            seeds = [gen.initial_seed() if gen is not None else torch.initial_seed()] * len(keys)
        return torch.tensor([self.spec.list_for(sd, key) for sd, key in zip(seeds, keys)], dtype=torch.long)

    def __call__(self, logits: torch.Tensor, s: int, run) -> torch.Tensor:
        if s < self.spec.start_step or (self.spec.delta == 0 and not self.spec.hard):
            return logits
        if self.masks.device != logits.device:
            self.masks = self.masks.to(logits.device)
        green = self.masks[self.row_lists(run).to(logits.device)][:, None, :]  # (B, 1, V)
        if self.spec.hard:
            return logits.masked_fill(~green, -torch.inf)
        return logits + self.spec.delta * green.to(logits.dtype)


@dataclass
class DetectionResult:
    """One image's test.  z: max over the pool; p_value: exact binomial, Bonferroni-corrected over the pool."""

    z: float
    p_value: float
    list_index: int  # the pool list with the most green tokens
    green: int  # green tokens (under that list) among the scored ones
    scored: int  # T: tokens scored (steps >= start_step; distinct codes in unique mode)
    watermarked: bool  # z > threshold
    z_per_list: list[float] = field(default_factory=list)
    z_per_step: list[float] = field(default_factory=list)  # the best list's z within each scored step

    def line(self) -> str:
        verdict = "watermarked" if self.watermarked else "not-watermarked"
        return (f"z={self.z:.3f} p={self.p_value:.3g} list={self.list_index} green={self.green}/{self.scored} "
                f"{verdict}")


def z_score(green: torch.Tensor | float, scored: torch.Tensor | float, gamma: float):
    """(n_g - gamma T) / sqrt(T gamma (1 - gamma))."""
    return (green - gamma * scored) / math.sqrt(gamma * (1 - gamma)) / (scored ** 0.5)


def detect_tokens(tokens: torch.Tensor, spec: WatermarkSpec, vocab_size: int, step_sizes=None, *,
                  threshold: float = DEFAULT_THRESHOLD, unique: bool = True) -> list[DetectionResult]:
    """Test token maps (B, L) (schedule order) against the spec's pool -> one result per row.

    step_sizes: tokens per step (sums to L), needed when ``spec.start_step > 0`` and for ``z_per_step``
    (None: one step of L tokens).  unique: score every distinct code once (default); False: every token.
    """
    from scipy.stats import binom

    if tokens.ndim != 2:
        raise ArvisionError(f"tokens must be (B, L), got shape {tuple(tokens.shape)}")
    sizes = list(step_sizes) if step_sizes is not None else [tokens.shape[1]]
    if sum(sizes) != tokens.shape[1]:
        raise ArvisionError(f"step sizes {sizes} do not add up to the {tokens.shape[1]} tokens per image")
    if spec.start_step >= len(sizes):
        raise ArvisionError(f"watermark start step {spec.start_step} is past the last step (0..{len(sizes) - 1})")
    tokens = tokens.long().cpu()
    if tokens.numel() and (tokens.min() < 0 or tokens.max() >= vocab_size):
        raise ArvisionError(f"token ids must be in [0, {vocab_size}), got {tokens.min()}..{tokens.max()}")
    lists = spec.lists(vocab_size)  # (K, V)
    begin = sum(sizes[:spec.start_step])
    scored_steps = sizes[spec.start_step:]
    out = []
    for row in tokens:
        scored = row[begin:]
        if unique:
            codes = scored.unique()
            T = codes.numel()
            greens = lists[:, codes].sum(1)  # (K,)
        else:
            T = scored.numel()
            greens = lists[:, scored].sum(1)
        zs = z_score(greens.double(), float(T), spec.gamma)
        k = int(zs.argmax())
        n_g = int(greens[k])
        p = min(1.0, spec.pool * float(binom.sf(n_g - 1, T, spec.gamma)))
        per_step = []
        if not unique:
            for part in lists[k][scored].split(scored_steps):
                per_step.append(float(z_score(part.sum().double(), float(part.numel()), spec.gamma)))
        z = float(zs[k])
        out.append(DetectionResult(z, p, k, n_g, T, z > threshold, zs.tolist(), per_step))
    return out


@torch.no_grad()
def detect_images(pipe, images: torch.Tensor, spec: WatermarkSpec, *, threshold: float = DEFAULT_THRESHOLD,
                  unique: bool = True, batch_size: int = 256) -> list[DetectionResult]:
    """Re-tokenise images (B, 3, H, W) in [-1, 1] at the model's size with its own tokenizer (VAR: the multi-scale
    residual quantiser), then :func:`detect_tokens`."""
    check_code_logits(pipe.family)
    if images.ndim != 4 or images.shape[1] != 3:
        raise ArvisionError(f"images must be (B, 3, H, W) in [-1, 1], got shape {tuple(images.shape)}")
    size = pipe.config.image_size
    if tuple(images.shape[-2:]) != (size, size):
        raise ArvisionError(f"images must be {size}x{size} for this model, got {tuple(images.shape[-2:])}")
    check_start_step(spec, pipe.schedule)
    tokens = torch.cat([pipe.encode(images[i:i + batch_size].float()) for i in range(0, len(images), batch_size)])
    return detect_tokens(tokens, spec, pipe.config.transformer.vocab_size, pipe.schedule.step_sizes,
                         threshold=threshold, unique=unique)


def residual_code_logits(tokenizer, f: torch.Tensor, forced: list[torch.Tensor] | None = None) -> list[torch.Tensor]:
    """Negative squared distances of the features to every code, as the tokenizer quantises them: a list of
    (B, n, V), one per scale for VAR's multi-scale residual quantiser (f (B, D, p, p)), one entry for a
    single-scale VQ (unit-normalised features and codes when the codebook is l2-normalised).

    VAR: the tokenizer's own loop (``residual_quantize``, as ``encode``); the residual after each scale subtracts
    the ``forced`` tokens (teacher forcing, a list of (B, pn^2)) or, without them, the nearest codes (the argmax
    of the logits); the subtracted term is a constant, so gradients flow to ``f`` through every scale's
    residual."""
    codes = tokenizer.quantize.codes.detach()
    B, D = f.shape[:2]

    def logits(z):  # z (B, n, D)
        return -(z.square().sum(-1, keepdim=True) - 2 * z @ codes.T + codes.square().sum(1))

    if not hasattr(tokenizer, "residual_quantize"):
        z = f.permute(0, 2, 3, 1).reshape(B, -1, D)
        return [logits(torch.nn.functional.normalize(z, dim=-1) if tokenizer.quantize.l2_norm else z)]
    out = []

    def choose(si, z):  # z (B, D, pn, pn) keeps its graph to f; the ids (and so the subtracted term) have none
        out.append(logits(z.permute(0, 2, 3, 1).reshape(B, -1, D)))
        return forced[si] if forced is not None else out[-1].argmax(-1)

    tokenizer.residual_quantize(f, choose)
    return out


def align_images(pipe, images: torch.Tensor, spec: WatermarkSpec, lists, *, strength: float | None = None,
                 steps: int | None = None, lr: float = 0.005, temperature: float = 0.02, batch_size: int = 256,
                 progress: bool = False) -> torch.Tensor:
    """Pixel-domain alignment: nudge images so that their *own re-tokenisation* lands on the green list.

    The logit bias puts green codes into the sampled tokens, but detection re-tokenises the image, and a VAR
    tokenizer returns only a fraction of the sampled tokens (``docs/watermark.md``: 24% on the bundled model; 40% even
    from the exact canvas).  This step runs Adam (``lr``) on the images x, from x0, minimising

        sum over re-quantised positions of -log P(green)  +  strength * |x - x0|^2

    with P = softmax(-distance / temperature) over the codes, the residuals taken at the nearest codes as the
    detector does.  ``strength`` (default ``spec.align``, else 1) trades detection for fidelity: measured on the
    bundled model in ``docs/watermark.md``.

    images (B, 3, H, W) in [-1, 1] at the model's size; lists: each image's pool list, (B,) ints (for images sampled
    with a generator seed s and class k: ``spec.list_for(s, k)``).  Returns the aligned images, (B, 3, H, W) in
    [-1, 1], float32.  The tokenizer's weights are untouched.
    """
    check_code_logits(pipe.family)
    from arvision.progress import progress as progress_of

    strength = (spec.align if spec.align is not None else 1.0) if strength is None else strength
    steps = spec.align_steps if steps is None else steps
    if strength < 0 or steps < 1:
        raise ArvisionError(f"alignment needs strength >= 0 and steps >= 1, got {strength}, {steps}")
    if images.ndim != 4 or images.shape[1] != 3 or tuple(images.shape[-2:]) != (pipe.config.image_size,) * 2:
        raise ArvisionError(f"images must be (B, 3, {pipe.config.image_size}, {pipe.config.image_size}) in [-1, 1], "
                            f"got shape {tuple(images.shape)}")
    lists = torch.as_tensor(lists, dtype=torch.long).flatten()
    if lists.numel() != images.shape[0] or lists.min() < 0 or lists.max() >= spec.pool:
        raise ArvisionError(f"need one list index in [0, {spec.pool}) per image, got {lists.tolist()}")
    tok = pipe.tokenizer
    green_all = spec.lists(pipe.config.transformer.vocab_size).to(pipe.device)
    out = []
    bar = progress_of(total=steps * -(-images.shape[0] // batch_size), desc="watermark alignment",
                      disable=not progress)
    for i in range(0, images.shape[0], batch_size):
        x0 = images[i:i + batch_size].to(pipe.device, torch.float32)
        green = green_all[lists[i:i + batch_size].to(pipe.device)][:, None, :]  # (b, 1, V)
        x = x0.clone().requires_grad_(True)
        opt = torch.optim.Adam([x], lr=lr)
        with torch.enable_grad():
            for _ in range(steps):
                loss = x.new_zeros(x.shape[0])
                for lg in residual_code_logits(tok, tok.features(x)):
                    logp = torch.log_softmax(lg / temperature, dim=-1)
                    loss = loss - torch.logsumexp(logp.masked_fill(~green, -torch.inf), dim=-1).sum(1)
                loss = (loss + strength * (x - x0).square().flatten(1).sum(1)).mean()
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                with torch.no_grad():
                    x.clamp_(-1, 1)
                bar.update()
        out.append(x.detach())
    bar.close()
    return torch.cat(out)
