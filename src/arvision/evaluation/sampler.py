"""The evaluation sampler: N images per class, one seed per image, sharded over processes, resumable.

Image ``i`` (0 <= i < N * per_class, class ``classes[i // per_class]``) is drawn from its own generator seeded by
``image_seed(seed, i)``, so it is the same whatever the batch size, the number of processes or an interruption
(the sampler's per-image generators make a row independent of its batch).  Each image is written as
``{i:06d}_class{k}.png`` with a temporary name and a rename, so a folder never holds a half-written PNG; a rerun
skips the images already there.  Under ``torchrun --nproc_per_node P`` rank r draws images r, r + P, r + 2P, ...;
once all are done, rank 0 packs them into ``samples.npz`` in the ADM sample-batch layout (``arr_0``: uint8
``(N, H, W, 3)``, plus ``labels`` ``(N,)``), the file the OpenAI evaluator and ``arvision eval fid`` read.

    torchrun --nproc_per_node 4 -m arvision eval sample MODEL --per-class 50 --out samples/
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from arvision.errors import ArvisionError
from arvision.images import read_image

__all__ = ["EvalSamplingSpec", "check_spec", "image_seed", "pack_npz", "sample_for_evaluation"]


def image_seed(seed: int, index: int) -> int:
    """A 63-bit seed for image ``index`` of a run seeded ``seed`` (distinct streams, unlike ``seed + index``)."""
    return int(np.random.SeedSequence([seed, index]).generate_state(2, np.uint64)[0] >> np.uint64(1))


@dataclass(frozen=True)
class EvalSamplingSpec:
    """What to sample; stored as ``spec.json`` in the output folder so a resumed run cannot mix settings."""

    per_class: int = 50
    classes: tuple[int, ...] | None = None  # None: every class of the model
    seed: int = 0
    guidance_scale: float | None = None  # None: the model's / family's defaults
    top_k: int | None = None
    top_p: float | None = None
    temperature: float | None = None
    precision: str = "fp32"

    def __post_init__(self):
        if self.per_class < 1:
            raise ArvisionError(f"per_class must be >= 1, got {self.per_class}")

    def labels(self, num_classes: int) -> list[int]:
        classes = list(self.classes) if self.classes is not None else list(range(num_classes))
        bad = [c for c in classes if not 0 <= c < num_classes]
        if bad:
            raise ArvisionError(f"class id(s) {bad} out of range: the model has {num_classes} classes")
        return [c for c in classes for _ in range(self.per_class)]


def _file(out: Path, i: int, k: int) -> Path:
    return out / f"{i:06d}_class{k}.png"


def check_spec(out: str | os.PathLike, spec: EvalSamplingSpec, model: str) -> None:
    """Write ``spec.json`` into ``out`` or, if one is there, refuse settings that differ from it."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    record = {"model": model, **asdict(spec)}
    record["classes"] = list(spec.classes) if spec.classes is not None else None
    path = out / "spec.json"
    if path.is_file():
        old = json.loads(path.read_text())
        if old != record:
            diff = sorted(k for k in record if old.get(k) != record[k])
            raise ArvisionError(f"{out} holds samples drawn with other settings ({', '.join(diff)} differ; see "
                                f"{path}); use another --out folder or delete it")
    else:
        tmp = path.with_name(f".spec.json.{os.getpid()}")
        tmp.write_text(json.dumps(record, indent=2))
        tmp.replace(path)


def sample_for_evaluation(pipe, out: str | os.PathLike, spec: EvalSamplingSpec, *, batch_size: int = 25,
                          rank: int = 0, world: int = 1, model_name: str = "", progress: bool = True) -> list[Path]:
    """Draw this rank's missing images into ``out``; returns the paths this call wrote.

    pipe: an :class:`~arvision.pipeline.ARPipeline`.  Every image's settings and seed come from ``spec`` (see the
    module docstring); ``rank``/``world`` pick this process's share.
    """
    from arvision.progress import progress as progress_of

    if batch_size < 1:
        raise ArvisionError(f"batch size must be >= 1, got {batch_size}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    if rank == 0:
        check_spec(out, spec, model_name)
    labels = spec.labels(pipe.config.num_classes)
    todo = [i for i in range(rank, len(labels), world) if not _file(out, i, labels[i]).is_file()]
    written = []
    bar = progress_of(total=len(todo), desc="sampling", unit="img", disable=not progress or rank != 0 or not todo)
    for j in range(0, len(todo), batch_size):
        chunk = todo[j:j + batch_size]
        gens = [torch.Generator(device=pipe.device).manual_seed(image_seed(spec.seed, i)) for i in chunk]
        res = pipe([labels[i] for i in chunk], guidance_scale=spec.guidance_scale, top_k=spec.top_k,
                   top_p=spec.top_p, temperature=spec.temperature, generator=gens, output_type="pil",
                   precision=spec.precision)
        for i, im in zip(chunk, res.images):
            path = _file(out, i, labels[i])
            tmp = path.with_name(f".{path.name}.tmp")
            im.save(tmp, format="PNG")
            tmp.replace(path)
            written.append(path)
        bar.update(len(chunk))
    bar.close()
    return written


def pack_npz(out: str | os.PathLike, labels: Sequence[int], path: str | os.PathLike | None = None) -> Path:
    """Pack ``{i:06d}_class{k}.png`` for every ``i`` into an ADM sample batch (``arr_0`` (N, H, W, 3) uint8,
    ``labels`` (N,)); errors name the first missing image."""
    out = Path(out)
    images = []
    for i, k in enumerate(labels):
        f = _file(out, i, k)
        if not f.is_file():
            raise ArvisionError(f"missing sample {f}: rerun the same command to finish the run")
        images.append(np.asarray(read_image(f), dtype=np.uint8))
    path = Path(path) if path is not None else out / "samples.npz"
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as fh:
        np.savez(fh, arr_0=np.stack(images), labels=np.asarray(labels, dtype=np.int64))
    tmp.replace(path)
    return path
