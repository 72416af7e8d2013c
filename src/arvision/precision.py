"""Choosing the compute precision by hardware.

fp32 is the exact mode (the official tokens) and always available.  bf16 pays off on GPUs and on CPUs with
native bf16 matrix instructions (AVX512-BF16 or AMX); elsewhere it is emulated and many times slower.
"""

from __future__ import annotations

import functools
from pathlib import Path

import torch

from arvision.errors import ArvisionError

PRECISIONS = ("auto", "fp32", "bf16")


@functools.lru_cache(maxsize=1)
def cpu_has_fast_bf16() -> bool:
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return any(f in flags.split() for f in ("avx512_bf16", "amx_bf16"))


def resolve_precision(precision: str, device: torch.device | str = "cpu") -> torch.dtype:
    if precision not in PRECISIONS:
        raise ArvisionError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    if precision == "fp32":
        return torch.float32
    if precision == "bf16":
        return torch.bfloat16
    device = torch.device(device)
    if device.type == "cuda" or (device.type == "cpu" and cpu_has_fast_bf16()):
        return torch.bfloat16
    return torch.float32
