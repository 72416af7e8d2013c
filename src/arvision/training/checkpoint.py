"""Training checkpoints: atomic, verifiable, and complete enough to resume bit-identically.

A checkpoint is a folder ``checkpoints/step-0000100/`` holding

    weights.safetensors   every trained module, keys prefixed by module name ("transformer.", "disc."...)
    state.pt              optimizer states, the step, RNG states (plain tensors/ints: weights_only loadable)
    manifest.json         sha256 of both files, written last

It is written as ``step-0000100.tmp/`` and renamed into place, so a crash leaves either a whole checkpoint
or a ``.tmp`` folder that is ignored.  On resume, a checkpoint whose manifest is missing or whose hashes do not
match is reported and skipped in favour of the previous good one.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import warnings
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from arvision.errors import CheckpointError

WEIGHTS, STATE, MANIFEST = "weights.safetensors", "state.pt", "manifest.json"


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def save_checkpoint(root: str | Path, step: int, modules: dict[str, torch.nn.Module], state: dict,
                    keep_last: int = 3) -> Path:
    """Write checkpoint ``step`` under ``root`` atomically; prune all but the ``keep_last`` newest."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step-{step:07d}"
    tmp = root / f"step-{step:07d}.tmp"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    weights = {f"{name}.{k}": v.detach().contiguous().cpu()
               for name, module in modules.items() for k, v in module.state_dict().items()}
    save_file(weights, str(tmp / WEIGHTS))
    torch.save({**state, "step": step}, tmp / STATE)
    manifest = {"step": step, "files": {f: _sha256(tmp / f) for f in (WEIGHTS, STATE)}}
    (tmp / MANIFEST).write_text(json.dumps(manifest, indent=1))
    _fsync_dir(tmp)
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    _fsync_dir(root)
    for old in list_checkpoints(root)[:-keep_last] if keep_last > 0 else []:
        shutil.rmtree(old, ignore_errors=True)
    return final


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def list_checkpoints(root: str | Path) -> list[Path]:
    """Finished checkpoint folders, oldest first (``.tmp`` leftovers excluded)."""
    root = Path(root)
    if not root.is_dir():
        return []
    return sorted(p for p in root.iterdir() if p.is_dir() and p.name.startswith("step-") and
                  not p.name.endswith(".tmp"))


def verify_checkpoint(path: Path) -> str | None:
    """None if ``path`` is a complete checkpoint whose files match its manifest, else the reason it is not."""
    try:
        manifest = json.loads((path / MANIFEST).read_text())
    except FileNotFoundError:
        return "no manifest (interrupted while writing?)"
    except (json.JSONDecodeError, UnicodeDecodeError):
        return "unreadable manifest"
    for name, digest in manifest.get("files", {}).items():
        if not (path / name).is_file():
            return f"{name} is missing"
        if _sha256(path / name) != digest:
            return f"{name} does not match its checksum (truncated or corrupted)"
    return None


def load_checkpoint(path: Path, modules: dict[str, torch.nn.Module], verified: bool = False) -> dict:
    """Load weights into ``modules`` (strictly) and return the training state dict.  ``verified``: the caller has
    just checked ``path`` against its manifest (``resumable_checkpoint``), so its files are not hashed again."""
    problem = None if verified else verify_checkpoint(path)
    if problem:
        raise CheckpointError(f"checkpoint {path} is not usable: {problem}")
    weights = load_file(str(path / WEIGHTS))
    for name, module in modules.items():
        prefix = f"{name}."
        part = {k[len(prefix):]: v for k, v in weights.items() if k.startswith(prefix)}
        try:
            missing, unexpected = module.load_state_dict(part, strict=False)
        except RuntimeError as e:  # mis-shaped tensors: a checkpoint of another model size
            first = str(e).strip().splitlines()[1:2] or [str(e)]
            raise CheckpointError(f"checkpoint {path} does not fit module '{name}' (a different model size?): "
                                  f"{first[0].strip()}") from None
        if missing or unexpected:
            raise CheckpointError(f"checkpoint {path} does not fit module '{name}': missing {missing[:8]}, "
                                  f"unexpected {unexpected[:8]}")
    return torch.load(path / STATE, map_location="cpu", weights_only=True)


def latest_good_checkpoint(root: str | Path) -> Path | None:
    """The newest checkpoint that verifies; corrupt newer ones are reported (warnings) and skipped."""
    for path in reversed(list_checkpoints(root)):
        problem = verify_checkpoint(path)
        if problem is None:
            return path
        warnings.warn(f"skipping checkpoint {path}: {problem}; falling back to an earlier one", stacklevel=2)
    return None


def resumable_checkpoint(root: str | Path) -> Path | None:
    """The checkpoint a resume starts from: the newest good one, or None when there is none at all.

    When checkpoints exist but none verifies, nothing can be resumed, and starting again from step 0 without a
    word would break the resume's promise: that is an error naming the newest one's problem."""
    found = list_checkpoints(root)
    problems = {}
    for path in reversed(found):
        problems[path] = verify_checkpoint(path)
        if problems[path] is None:
            for bad, problem in problems.items():
                if bad != path:
                    warnings.warn(f"skipping checkpoint {bad}: {problem}; falling back to {path.name}", stacklevel=2)
            return path
    if found:
        raise CheckpointError(f"nothing can be resumed: all {len(found)} checkpoint(s) under {root} are unusable "
                              f"(newest, {found[-1].name}: {problems[found[-1]]}); remove them to start again from "
                              "step 0")
    return None


def rng_state(generators: dict[str, torch.Generator]) -> dict:
    """Every RNG a training run draws from: torch's global CPU (and CUDA) generators plus named ones."""
    state = {"torch": torch.get_rng_state(), **{f"gen.{k}": g.get_state() for k, g in generators.items()}}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict, generators: dict[str, torch.Generator]) -> None:
    torch.set_rng_state(state["torch"])
    for k, g in generators.items():
        g.set_state(state[f"gen.{k}"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
