"""A small image-caption matcher for the shapes world: the *fair* reward of text-to-image search.

The exact verifier (``arvision.evaluation.geneval``) is the benchmark's judge; a search that ranks candidates with
it is an oracle (an upper bound).  A fair reward must not see that judgement.  This matcher plays the part the
field gives CLIP or ImageReward: it is trained once, on procedural (render, caption) pairs only -- never on a
generated image, never on a verdict about one -- to say whether a caption describes an image.

Model: a dual encoder, as CLIP (the reward the field reaches for, with CLIP's known blind spots on binding and
counting).  A patch conv turns the 64x64 image into an 8x8 grid of cells (+ learned positions) read by a small
transformer and mean-pooled; the closed-vocabulary text encoder (``arvision.models.text``, its own weights) gives the
caption's pooled vector; both are projected and normalised, and the score of a pair is their scaled cosine.

Training (``contrastive_batch``, ``train_matcher``): a batch of random scenes of the ``shapes`` dataset's
distribution, one true caption each (a GenEval task form or the full description; never binding a held-out
(shape, colour) pair), and the symmetric InfoNCE loss over the batch (each image against every caption).
``matcher_batch`` builds labelled pairs -- true captions and negatives made by swapping one word for another of its
kind or swapping two colours, labelled by the scene graph's truth -- on which ``bench/train_matcher.py`` reports the
matcher's ranking quality (AUC) on scenes it never trained on.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from arvision.models.text import ClosedVocabEncoder


@dataclass
class MatcherConfig:
    width: int = 128
    depth: int = 2
    heads: int = 4
    text_len: int = 24
    vocab: tuple[str, ...] = ()


class SceneMatcher(nn.Module):
    """images (B, 3, 64, 64) in [-1, 1] + caption ids (B, T) -> scores (B,): the scaled cosine of each pair."""

    def __init__(self, cfg: MatcherConfig):
        super().__init__()
        self.cfg = cfg
        C = cfg.width
        # 4x4 patches, then one 3x3 stride-2 conv: a 64 px image -> 8x8 cells (cheap enough to train on a CPU)
        self.conv = nn.Sequential(nn.Conv2d(3, 64, 4, stride=4), nn.GELU(), nn.Conv2d(64, C, 3, stride=2, padding=1))
        self.cell_pos = nn.Parameter(torch.randn(64, C) * 0.02)
        layer = nn.TransformerEncoderLayer(C, cfg.heads, 4 * C, dropout=0.0, activation="gelu", batch_first=True,
                                           norm_first=True)
        self.cells_net = nn.TransformerEncoder(layer, cfg.depth, enable_nested_tensor=False)
        self.image_proj = nn.Sequential(nn.LayerNorm(C), nn.Linear(C, C))
        self.text = ClosedVocabEncoder(cfg.vocab, cfg.text_len, C, cfg.depth, cfg.heads)
        self.text_proj = nn.Linear(C, C)
        self.log_scale = nn.Parameter(torch.tensor(math.log(10.0)))

    @property
    def tokenizer(self):
        return self.text.tokenizer

    def cells(self, images: torch.Tensor) -> torch.Tensor:
        """images (B, 3, 64, 64) -> cell states (B, 64, C)."""
        if images.shape[-1] != 64:
            images = F.interpolate(images, size=(64, 64), mode="area")
        x = self.conv(images).flatten(2).transpose(1, 2) + self.cell_pos
        return self.cells_net(x)

    def embed_images(self, images: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.image_proj(self.cells(images).mean(1)), dim=-1)

    def embed_texts(self, ids: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.text_proj(self.text(ids)[0]), dim=-1)

    def forward(self, images: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        return (self.embed_images(images) * self.embed_texts(ids)).sum(-1) * self.log_scale.exp()

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """images -> (B, C) the normalised image embeddings (what TTS-VAR clusters coarse images on)."""
        return self.embed_images(images)


class MatcherVerifier:
    """A search verifier (``arvision.sampling.verifiers``) from a :class:`SceneMatcher`: scores = the match logit
    of each image with its prompt; ``features`` for TTS-VAR's clustering."""

    def __init__(self, matcher: SceneMatcher):
        self.matcher = matcher.eval()

    @torch.no_grad()
    def __call__(self, images: torch.Tensor, prompts) -> torch.Tensor:
        ids = self.matcher.tokenizer(list(prompts))
        return self.matcher(images.float().cpu(), ids).float()

    @torch.no_grad()
    def features(self, images: torch.Tensor) -> torch.Tensor:
        return self.matcher.features(images.float().cpu()).float()


def cosine_lr(step: int, total: int, lr: float, warmup: int = 100) -> float:
    if step < warmup:
        return lr * (step + 1) / warmup
    return lr * 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(total - warmup, 1)))


def train_matcher(cfg: MatcherConfig, make_batch, steps: int, batch: int, lr: float = 1e-3, seed: int = 0,
                  log=None) -> SceneMatcher:
    """Train on ``make_batch(rng, batch) -> (images (B, 3, 64, 64) in [-1, 1], captions list[str])`` (each image
    with a true caption) with the symmetric InfoNCE loss over the batch."""
    torch.manual_seed(seed)
    model = SceneMatcher(cfg)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
    rng = np.random.default_rng(seed)
    target = torch.arange(batch)
    for step in range(steps):
        images, captions = make_batch(rng, batch)
        for g in opt.param_groups:
            g["lr"] = cosine_lr(step, steps, lr)
        img, txt = model.embed_images(images), model.embed_texts(model.tokenizer(captions))
        logits = img @ txt.T * model.log_scale.exp()
        loss = (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target)) / 2
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        with torch.no_grad():
            model.log_scale.clamp_(0, math.log(100))
        if log is not None:
            log(step, loss.item(), (logits.argmax(1) == target).float().mean().item())
    return model.eval()


def contrastive_batch(rng: np.random.Generator, batch: int, noise: float = 0.03):
    """``batch`` random scenes with one true caption each (the full description 40% of the time, else a GenEval task
    form; ``arvision.captions.sample_caption``: held-out pairs never bound) -> (images (B, 3, 64, 64) in [-1, 1] with
    Gaussian noise of std ``noise``, captions)."""
    from arvision import captions as cap
    from arvision import scenes

    scene_list = [scenes.sample_scene(rng) for _ in range(batch)]
    texts = [cap.sample_caption(s, rng) for s in scene_list]
    x = torch.from_numpy(np.stack([scenes.render(s) for s in scene_list])).permute(0, 3, 1, 2).float()
    x = x.div(127.5).sub(1)
    return x + noise * torch.from_numpy(rng.standard_normal(x.shape).astype(np.float32)), texts


# -- training pairs ----------------------------------------------------------------------------------------------

_RELATION_WORDS = {"left": "right", "right": "left", "above": "below", "below": "above"}


def perturb(caption: str, rng: np.random.Generator) -> str:
    """One word of ``caption`` swapped for another of its kind (colour, shape, number, relation), or, with two
    colours, the two colours swapped (a binding swap)."""
    from arvision import captions as cap
    from arvision import scenes

    ws = caption.split()
    colours = [i for i, w in enumerate(ws) if w in scenes.COLORS]
    slots = [i for i, w in enumerate(ws) if w in scenes.COLORS or w in cap.SHAPES or w in cap._SINGULAR
             or w in cap._COUNT_OF.keys() - {"a", "an"} or w in _RELATION_WORDS]
    if len(colours) == 2 and rng.random() < 0.3:
        i, j = colours
        ws[i], ws[j] = ws[j], ws[i]
        return " ".join(ws)
    if not slots:
        return caption
    i = slots[int(rng.integers(len(slots)))]
    w = ws[i]
    if w in scenes.COLORS:
        pool = [c for c in scenes.COLORS if c != w]
    elif w in cap.SHAPES:
        pool = [s for s in cap.SHAPES if s != w]
    elif w in cap._SINGULAR:
        pool = [p for p in cap.PLURALS.values() if p != w]
    elif w in _RELATION_WORDS:
        pool = [_RELATION_WORDS[w]]
    else:
        pool = [n for n in cap.NUMBERS.values() if n != w]
    ws[i] = pool[int(rng.integers(len(pool)))]
    text = " ".join(ws)
    # the article follows the next word ("a orange" -> "an orange")
    out = text.split()
    for k in range(len(out) - 1):
        if out[k] in ("a", "an") and k >= 3:
            out[k] = cap._article(out[k + 1])
    return " ".join(out)


def matcher_batch(rng: np.random.Generator, batch: int, noise: float = 0.03):
    """``batch`` (image, caption, label) training pairs: half true captions of random scenes (the task forms of
    ``arvision.captions.caption_forms``, which never bind a held-out (shape, colour) pair), half captions of
    other scenes or perturbed ones, each labelled by its truth on the scene (the exact check on the clean render).
    Negatives that would bind a held-out pair are skipped (the matcher, like the generator, never reads one).
    -> (images (B, 3, 64, 64) in [-1, 1] with Gaussian noise of std ``noise``, captions, labels (B,) int64)."""
    from arvision import captions as cap
    from arvision import scenes
    from arvision.errors import ArvisionError
    from arvision.evaluation.geneval import Detection, judge

    images, texts, labels = [], [], []
    while len(texts) < batch:
        scene = scenes.sample_scene(rng)
        forms = cap.caption_forms(scene)
        tasks = [t for t in cap.TASKS if forms[t]]
        if not tasks:
            continue
        pos = forms[tasks[int(rng.integers(len(tasks)))]]
        caption = pos[int(rng.integers(len(pos)))]
        if len(texts) % 2 == 1:  # a negative candidate
            if rng.random() < 0.7:
                caption = perturb(caption, rng)
            else:
                other = cap.caption_forms(scenes.sample_scene(rng))
                pool = [c for t in cap.TASKS for c in other[t]]
                if not pool:
                    continue
                caption = pool[int(rng.integers(len(pool)))]
        try:
            meta = cap.prompt_meta(caption)
        except ArvisionError:  # a perturbation left the grammar (e.g. one shape named twice)
            continue
        if any((c["class"], c.get("color")) in cap.HELD_OUT for c in meta["include"]):
            continue
        # the truth, judged on the scene graph itself (what the exact check finds on a clean render)
        truth = [Detection(o.shape, o.color, scenes.bbox(o), (o.x, o.y), math.pi * o.r ** 2, o.r, 1.0)
                 for o in scene.objects]
        images.append(scenes.render(scene))
        texts.append(caption)
        labels.append(int(judge(truth, meta)[0]))
    x = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float().div(127.5).sub(1)
    x = x + noise * torch.from_numpy(rng.standard_normal(x.shape).astype(np.float32))
    return x, texts, torch.tensor(labels)


# -- persistence ------------------------------------------------------------------------------------------------

MATCHER_WEIGHTS, MATCHER_CONFIG = "matcher.safetensors", "matcher.json"


def save_matcher(model: SceneMatcher, folder, extra: dict | None = None) -> None:
    import dataclasses
    import json
    from pathlib import Path

    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(folder / MATCHER_WEIGHTS))
    (folder / MATCHER_CONFIG).write_text(json.dumps({**dataclasses.asdict(model.cfg), **(extra or {})}, indent=1))


def load_matcher(folder=None) -> SceneMatcher:
    """The matcher saved in ``folder`` (default: the one bundled with arvision), strictly loaded."""
    import json
    from pathlib import Path

    from safetensors.torch import load_file

    from arvision.errors import ArvisionError

    folder = Path(folder) if folder is not None else Path(__file__).parents[1] / "assets" / "matcher"
    if not (folder / MATCHER_CONFIG).is_file():
        raise ArvisionError(f"no image-caption matcher in {folder} (train one with bench/train_matcher.py)")
    meta = json.loads((folder / MATCHER_CONFIG).read_text())
    fields = {f for f in MatcherConfig.__dataclass_fields__}
    cfg = MatcherConfig(**{k: tuple(v) if k == "vocab" else v for k, v in meta.items() if k in fields})
    model = SceneMatcher(cfg)
    model.load_state_dict(load_file(str(folder / MATCHER_WEIGHTS)), strict=True)
    return model.eval()


def load_matcher_verifier(folder=None) -> MatcherVerifier:
    return MatcherVerifier(load_matcher(folder))
