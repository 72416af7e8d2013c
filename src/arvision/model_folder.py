"""Where a model named on the command line (or to ``ARPipeline.from_pretrained``) lives, and what a folder that is
not a model is instead.

A name is a local folder when it exists.  Otherwise a bundled model's name (``arvision.bundled``: ``mnist``,
``shapes``) is that model's folder in the package, and any other name is looked up on the Hugging Face Hub only
when it has the Hub's ``org/name`` form, its ``org`` part is not a local folder, and online use is allowed
(``HF_HUB_OFFLINE`` is not set): a mistyped relative path gets "no such folder" at once, not a network error
seconds later.  A folder without ``config.json`` is recognised as a tokenizer folder (``arvision
train-tokenizer``) or an unfinished training run (checkpoints, no final model), and the message says what to do
with it.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from arvision.errors import ArvisionError

__all__ = ["hub_allowed", "looks_like_hub_id", "resolve_model_folder"]

# The Hub's repository ids: one "org/name", each part letters, digits, "-", "_", "." (not leading)
_HUB_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,95}/[A-Za-z0-9][A-Za-z0-9_.-]{0,95}")
_HUB_FILES = ["config.json", "*.safetensors"]


def looks_like_hub_id(name: str) -> bool:
    """``org/name`` with Hub-legal parts, and ``org`` not a local folder (then it is a path that does not exist)."""
    return bool(_HUB_ID.fullmatch(name)) and not Path(name.split("/")[0]).exists()


def hub_allowed() -> bool:
    """Online use allowed: ``HF_HUB_OFFLINE`` (huggingface_hub's switch) is not set to a true value."""
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() not in {"1", "true", "yes", "on"}


def resolve_model_folder(path: str | Path) -> Path:
    """The local model folder ``path`` names (downloaded from the Hub if it is a Hub id, see the module doc);
    ``ArvisionError`` with what the folder is and what to do when it is not a model folder."""
    name = str(path)
    folder = Path(path)
    if not folder.exists():
        from arvision.bundled import bundled_model_dir, bundled_name

        if name and bundled_name(name) == name:  # a bundled model's name (a path that exists wins, above)
            return bundled_model_dir(name)
        if not looks_like_hub_id(name):
            raise ArvisionError(f"model folder not found: {name} (no such folder; a Hugging Face Hub model is "
                                "named org/name)")
        if not hub_allowed():
            raise ArvisionError(f"model folder not found: {name} (no such folder, and HF_HUB_OFFLINE is set, so "
                                "it was not looked up on the Hugging Face Hub)")
        folder = _download(name)
    if not folder.is_dir():
        raise ArvisionError(f"{name} is a file; expected a model folder with config.json "
                            "(use `arvision convert` for official .pth checkpoints)")
    if not (folder / "config.json").is_file():
        raise ArvisionError(explain_non_model(folder))
    return folder


def explain_non_model(folder: Path) -> str:
    """Why ``folder`` (no config.json) is not a model folder, and what to do with it."""
    if (folder / "tokenizer_config.json").is_file():
        return (f"{folder} is a tokenizer folder (written by `arvision train-tokenizer`), not a model: train a "
                f"transformer on it with `arvision train --tokenizer {folder} --data DATA --out MODEL`, then sample "
                "MODEL")
    from arvision.training.checkpoint import WEIGHTS, list_checkpoints

    steps = list_checkpoints(folder / "checkpoints")
    if steps:
        command = _trainer_of(steps[-1] / WEIGHTS)
        return (f"{folder} is a training run that has not finished (checkpoints up to {steps[-1].name}, no final "
                f"model yet): finish it with `arvision {command} ... --out {folder} --resume` (the arguments of the "
                "first run), or sample a finished model folder")
    return (f"{folder} has no config.json: it is not an arvision model folder (one holds config.json, "
            "tokenizer.safetensors and transformer.safetensors; make one with `arvision convert` or `arvision "
            "train`)")


def _trainer_of(weights: Path) -> str:
    """The command that wrote a checkpoint: its weights are named by module ("transformer.", "tokenizer."...)."""
    try:
        from safetensors import safe_open

        with safe_open(str(weights), "pt") as f:  # reads the header only
            keys = list(f.keys())
    except Exception:  # noqa: BLE001 - unreadable checkpoint: say "train" (the common case)
        return "train"
    return "train" if any(k.startswith("transformer.") for k in keys) else "train-tokenizer"


def _download(repo_id: str) -> Path:
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(repo_id, allow_patterns=_HUB_FILES))
    except Exception as e:  # noqa: BLE001 - network, auth, missing repo: one message for the user
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ArvisionError(f"model folder not found: {repo_id} is not a local folder and could not be fetched "
                            f"from the Hugging Face Hub ({reason}); set HF_HUB_OFFLINE=1 to skip the Hub") from None
