"""How fast a model samples here, measured the same way on every machine (the library behind ``arvision bench``,
whose command line is ``arvision.cli.bench``).

One run = ``pipe(labels, ...)`` with per-image work timed by the pipeline itself (transformer loop and decoding,
synchronised on CUDA).  After ``warmup`` untimed runs, ``repeat`` timed runs; every reported time is the median.
Memory: on CUDA the allocator's peak; on Linux CPUs the process's peak resident set (``VmHWM``) over the timed
runs, after resetting it once the model is loaded (so it counts the resident weights, the KV cache and the
activations, not the one-off cost of reading the checkpoint).

    arvision bench MODEL --classes 207 --batch-size 1 --cfg 1.5 --top-k 900 --top-p 0.96 --precision auto --json
"""

from __future__ import annotations

import hashlib
import os
import statistics
from pathlib import Path

import torch

from arvision.errors import ArvisionError
from arvision.precision import resolve_precision

__all__ = ["benchmark", "format_report", "reset_peak_memory", "peak_memory_bytes"]


def reset_peak_memory(device: torch.device) -> None:
    """Start a new peak-memory window (CUDA allocator peak, or the Linux process's VmHWM)."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        return
    try:
        Path("/proc/self/clear_refs").write_text("5")  # Linux >= 4.0: resets VmHWM to the current RSS
    except OSError:
        pass


def peak_memory_bytes(device: torch.device) -> int | None:
    """Peak bytes since :func:`reset_peak_memory` (None where the platform does not say)."""
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device))
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def benchmark(pipe, classes: list[int], *, batch_size: int | None = None, seed: int = 0,
              guidance_scale: float | None = None, top_k: int | None = None, top_p: float | None = None,
              temperature: float | None = None, precision: str = "auto", warmup: int = 1, repeat: int = 3,
              decode: bool = True, kv_policy=None, decoding=None) -> dict:
    """Time ``pipe`` generating one batch of ``batch_size`` images (classes cycled to fill it).

    Returns a dict with per-image medians (``seconds_per_image``, ``transformer_seconds_per_image``,
    ``decode_seconds_per_image``), per-step medians (``step_seconds``, for the whole batch), ``peak_memory_bytes``,
    ``kv_cache_bytes``, ``precision``, ``weights_dtype``, ``threads``, ``device`` and ``tokens_sha256`` (of the
    first timed run's int64 tokens: equal hashes = identical tokens).
    """
    if warmup < 0 or repeat < 1:
        raise ArvisionError(f"need warmup >= 0 and repeat >= 1, got {warmup} and {repeat}")
    if not classes:
        raise ArvisionError("no classes given")
    b = batch_size or len(classes)
    if b < 1:
        raise ArvisionError(f"batch size must be >= 1, got {b}")
    labels = [classes[i % len(classes)] for i in range(b)]
    dtype = resolve_precision(precision, pipe.device)
    kw = dict(guidance_scale=guidance_scale, top_k=top_k, top_p=top_p, temperature=temperature,
              output_type="pt" if decode else "tokens", precision=precision, time_steps=True,
              kv_policy=kv_policy, decoding=decoding)

    def run():
        return pipe(labels, generator=torch.Generator(device=pipe.device).manual_seed(seed), **kw)

    for _ in range(warmup):
        run()
    reset_peak_memory(pipe.device)
    runs = [run() for _ in range(repeat)]
    peak = peak_memory_bytes(pipe.device)
    med = statistics.median
    tr = med(r.stats["transformer_seconds"] for r in runs)
    dec = med(r.stats["decode_seconds"] for r in runs)
    tot = med(r.stats["transformer_seconds"] + r.stats["decode_seconds"] for r in runs)
    steps = [med(r.stats["step_seconds"][s] for r in runs) for s in range(len(runs[0].stats["step_seconds"]))]
    tokens = runs[0].tokens.to(torch.int64).cpu().contiguous()
    return {
        "model_family": pipe.config.family,
        "batch_size": b,
        "seconds_per_image": tot / b,
        "transformer_seconds_per_image": tr / b,
        "decode_seconds_per_image": dec / b,
        "step_seconds": steps,
        "step_sizes": list(pipe.schedule.step_sizes),
        "peak_memory_bytes": peak,
        "kv_cache_bytes": runs[0].stats["kv_cache_bytes"],
        "kv_transient_bytes": runs[0].stats["kv_transient_bytes"],
        "forwards_per_batch": runs[0].stats["forwards"],
        "token_forwards_per_batch": runs[0].stats["token_forwards"],
        "precision": str(dtype).removeprefix("torch."),
        "weights_dtype": pipe.weight_quantization or str(pipe.weight_dtype).removeprefix("torch."),
        "threads": torch.get_num_threads(),
        "device": _device_name(pipe.device),
        "warmup": warmup,
        "repeat": repeat,
        "tokens_sha256": hashlib.sha256(tokens.numpy().tobytes()).hexdigest(),
    }


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return f"cuda:{torch.cuda.get_device_name(device)}"
    name = "cpu"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                name = f"cpu:{line.split(':', 1)[1].strip()}"
                break
    except OSError:
        pass
    return f"{name} ({os.cpu_count()} logical cores)"


def format_report(r: dict) -> str:
    """A readable table of one :func:`benchmark` result."""
    mb = 2**20
    lines = [
        f"device {r['device']}, {r['threads']} threads, precision {r['precision']} (weights {r['weights_dtype']}), "
        f"batch {r['batch_size']}, median of {r['repeat']} after {r['warmup']} warm-up",
        f"  seconds per image      {r['seconds_per_image']:.3f}",
        f"    transformer          {r['transformer_seconds_per_image']:.3f}",
        f"    decode               {r['decode_seconds_per_image']:.3f}",
        f"  peak memory            {r['peak_memory_bytes'] / mb:.0f} MiB" if r["peak_memory_bytes"] is not None
        else "  peak memory            n/a",
        f"  KV cache               {r['kv_cache_bytes'] / mb:.1f} MiB stored, {r['kv_transient_bytes'] / mb:.1f} MiB "
        "during a step",
        "  step  tokens  seconds (whole batch)",
    ]
    steps = r["step_seconds"]
    shown = range(len(steps)) if len(steps) <= 16 else [*range(8), None, *range(len(steps) - 4, len(steps))]
    for s in shown:
        if s is None:
            lines.append(f"  ...   ({len(steps) - 12} more steps, mean {statistics.mean(steps[8:-4]):.4f} s)")
        else:
            lines.append(f"  {s:>4d}  {r['step_sizes'][s]:>6d}  {steps[s]:.4f}")
    return "\n".join(lines)
