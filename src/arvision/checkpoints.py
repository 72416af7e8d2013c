"""Reading checkpoints safely and loading them strictly.

Official ``.pth``/``.pt`` files are pickles: they are read with ``torch.load(weights_only=True)``, which
refuses any pickle that would run code.  Our own format is safetensors.  Loading is strict: every missing,
unexpected or mis-shaped key is reported by name, in the checkpoint's own naming.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from arvision.errors import CheckpointError

WRAPPER_KEYS = ("model", "module", "state_dict", "ema")


def read_torch_checkpoint(path: str | Path, nested: tuple[tuple[str, ...], ...] = ()) -> dict[str, torch.Tensor]:
    """A state dict from an official pickle checkpoint (optionally wrapped as {"model": sd} etc., or held at one of
    the key paths ``nested``, e.g. ``("trainer", "var_wo_ddp")`` in FlexVAR's training checkpoints)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - torch raises many types for bad files; all mean the same here
        text = str(e)
        if "Weights only load failed" in text or "Unsupported global" in text or "weights_only" in text:
            raise CheckpointError(
                f"{path}: refused to unpickle: the file contains objects other than tensors, and loading it "
                "could run arbitrary code. Only plain state dicts are accepted.") from None
        raise CheckpointError(f"{path}: not a readable PyTorch checkpoint (truncated or corrupt?): "
                              f"{type(e).__name__}: {text.splitlines()[0] if text else ''}") from None
    for keys in nested:
        inner = obj
        for key in keys:
            inner = inner.get(key) if isinstance(inner, dict) else None
        if isinstance(inner, dict):
            obj = inner
            break
    if isinstance(obj, dict):
        for key in WRAPPER_KEYS:
            if key in obj and isinstance(obj[key], dict) and not isinstance(obj[key], torch.Tensor):
                obj = obj[key]
                break
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointError(f"{path}: expected a state dict of tensors, got {type(obj).__name__}")
    return obj


def read_safetensors(path: str | Path) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"weights not found: {path}")
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"{path}: not a readable safetensors file (truncated or corrupt?): {e}") from None


class KeyMap:
    """Renames an official state dict onto our modules and back, for loading and for error messages.

    ``rules``: (official regex, ours replacement, ours regex, official replacement); replacements may be
    callables taking the match.  ``buffers``: official regexes of buffers we recompute (dropped on load,
    but still required to be present).
    """

    def __init__(self, rules: list[tuple[str, object, str, object]], buffers: tuple[str, ...] = ()):
        self.fwd = [(re.compile(a), b) for a, b, _, _ in rules]
        self.bwd = [(re.compile(c), d) for _, _, c, d in rules]
        self.buffers = [re.compile(b) for b in buffers]

    @staticmethod
    def _apply(rules, key: str) -> str:
        for pat, repl in rules:
            new, n = pat.subn(repl, key, count=1)
            if n:
                return new
        return key

    def is_buffer(self, key: str) -> bool:
        return any(b.fullmatch(key) for b in self.buffers)

    def to_ours(self, key: str) -> str:
        return self._apply(self.fwd, key)

    def to_official(self, key: str) -> str:
        return self._apply(self.bwd, key)


def _summarise(kind: str, names: list[str], limit: int = 12) -> str:
    shown = ", ".join(names[:limit])
    more = f" … and {len(names) - limit} more" if len(names) > limit else ""
    return f"{len(names)} {kind}: {shown}{more}"


def load_strict(module: nn.Module, state: dict[str, torch.Tensor], source: str,
                keymap: KeyMap | None = None,
                expected_buffers: dict[str, tuple[int | None, ...]] | None = None) -> None:
    """Load ``state`` (official names if ``keymap`` is given) into ``module``; any mismatch is an error.

    expected_buffers: official buffer name -> shape (None = any size on that axis) that must be present.
    """
    to_official: Callable[[str], str] = keymap.to_official if keymap else (lambda k: k)
    mapped: dict[str, torch.Tensor] = {}
    problems_shape = []
    for key, value in state.items():
        if keymap is not None and keymap.is_buffer(key):
            want = (expected_buffers or {}).get(key)
            if want is not None and (len(want) != value.ndim or
                                     any(w is not None and w != v for w, v in zip(want, value.shape))):
                problems_shape.append(f"{key} {list(value.shape)} (expected {list(want)})")
            continue
        mapped[keymap.to_ours(key) if keymap else key] = value
    own = module.state_dict()
    missing = [to_official(k) for k in own if k not in mapped]
    missing += [k for k in (expected_buffers or {}) if k not in state]
    unexpected = [to_official(k) for k in mapped if k not in own]
    for k, v in mapped.items():
        if k in own and tuple(own[k].shape) != tuple(v.shape):
            problems_shape.append(f"{to_official(k)} {list(v.shape)} (expected {list(own[k].shape)})")
    if missing or unexpected or problems_shape:
        parts = [_summarise(kind, names) for kind, names in
                 (("missing key(s)", missing), ("unexpected key(s)", unexpected),
                  ("mis-shaped key(s)", problems_shape)) if names]
        raise CheckpointError(f"{source} does not fit the model: " + "; ".join(parts))
    with torch.no_grad():
        for k, v in mapped.items():
            own[k].copy_(v)
