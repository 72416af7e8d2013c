"""Checking a device name before any work: every command's ``--device`` goes through :func:`check_device`.

``torch.device("bogus")`` raises a RuntimeError, and ``torch.device("cuda")`` on a CPU-only build only fails at the
first tensor moved there (an AssertionError deep in torch), so both are turned into one message here, up front.
"""

from __future__ import annotations

from arvision.errors import ArvisionError

__all__ = ["check_device"]


def check_device(name) -> str:
    """``name`` (``"cpu"``, ``"cuda"``, ``"cuda:1"``, ``"mps"``, ...) if this build and machine have that device, else
    ``ArvisionError`` saying why.  Returns the name stripped of spaces."""
    import torch

    text = str(name).strip()
    try:
        dev = torch.device(text)
    except (RuntimeError, ValueError, TypeError):
        raise ArvisionError(f"unknown device {text!r}; use cpu, cuda, cuda:N or mps") from None
    if dev.type == "cpu":
        return text
    if dev.type == "cuda":
        if not torch.backends.cuda.is_built():
            raise ArvisionError(f"device {text!r}: this PyTorch build has no CUDA support (a CPU-only build); "
                                "use --device cpu, or install a CUDA build of PyTorch")
        if not torch.cuda.is_available():
            raise ArvisionError(f"device {text!r}: no CUDA GPU is visible on this machine; use --device cpu")
        count = torch.cuda.device_count()
        if dev.index is not None and dev.index >= count:
            raise ArvisionError(f"device {text!r}: this machine has {count} CUDA GPU(s), numbered 0..{count - 1}")
        return text
    if dev.type == "mps":
        if not torch.backends.mps.is_available():
            raise ArvisionError(f"device {text!r}: Apple MPS is not available here; use --device cpu")
        return text
    backend = getattr(torch, dev.type, None)  # torch.xpu and other accelerator modules
    available = getattr(backend, "is_available", None)
    if available is None or not available():
        raise ArvisionError(f"device {text!r} is not available here; use cpu, cuda, cuda:N or mps")
    return text
