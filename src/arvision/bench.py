"""How fast a model samples here, measured the same way on every machine (the library behind ``arvision bench``,
whose command line is ``arvision.cli.bench``).

One run = ``pipe(labels, ...)`` with per-image work timed by the pipeline itself (transformer loop and decoding,
synchronised on CUDA).  After ``warmup`` untimed runs, ``repeat`` timed runs; every reported time is the median.
Memory: on CUDA the allocator's peak; on Linux CPUs the process's peak resident set (``VmHWM``) over the timed
runs, after resetting it once the model is loaded (so it counts the resident weights, the KV cache and the
activations, not the one-off cost of reading the checkpoint).

    arvision bench MODEL --classes 207 --batch-size 1 --cfg 1.5 --top-k 900 --top-p 0.96 --precision auto --json

Throughput mode (:func:`sweep_batch_sizes`): the same measurement at several batch sizes, or at doubling ones
(``auto``) until the peak memory would pass a budget or images per second stop growing; the best batch size is the
one with the most images per second within the budget.

    arvision bench MODEL --batch-size 8 16 32 --json
    arvision bench MODEL --batch-size auto --memory-budget 40GiB
"""

from __future__ import annotations

import hashlib
import os
import statistics
import time
from pathlib import Path

import torch

from arvision.errors import ArvisionError
from arvision.precision import resolve_precision

__all__ = ["benchmark", "default_memory_budget", "format_report", "format_sweep", "machine_info",
           "peak_memory_bytes", "reset_peak_memory", "sweep_batch_sizes"]


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
    ``kv_cache_bytes``, ``precision``, ``weights_dtype``, ``threads``, ``device``, ``tokens_sha256`` (of the
    first timed run's int64 tokens: equal hashes = identical tokens) and ``warmup_seconds`` (each warm-up run's
    wall time: a compiled pipeline's first includes compiling).
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

    warmup_seconds = []
    for _ in range(warmup):
        t0 = time.perf_counter()
        run()
        warmup_seconds.append(time.perf_counter() - t0)
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
        "images_per_second": b / tot if tot > 0 else None,
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
        "weights_format": pipe.weight_format or "full",
        "weights_dtype": "int8" if pipe.weight_format == "int8" else str(pipe.weight_dtype).removeprefix("torch."),
        "threads": torch.get_num_threads(),
        "device": _device_name(pipe.device),
        "warmup": warmup,
        "warmup_seconds": warmup_seconds,
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


# -- throughput mode -------------------------------------------------------------------------------------------
def default_memory_budget(device: torch.device, fraction: float = 0.9) -> int | None:
    """``fraction`` of the memory this process could use on ``device`` now, in the units :func:`peak_memory_bytes`
    counts (so a budget compares with a measured peak): on CUDA, the free device memory plus what PyTorch's
    allocator already holds; on Linux CPUs, ``MemAvailable`` plus this process's resident set.  None where the
    platform does not say (no budget)."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(fraction * (free + torch.cuda.memory_reserved(device)))
    try:
        avail = next(int(ln.split()[1]) * 1024 for ln in Path("/proc/meminfo").read_text().splitlines()
                     if ln.startswith("MemAvailable:"))
        rss = next(int(ln.split()[1]) * 1024 for ln in Path("/proc/self/status").read_text().splitlines()
                   if ln.startswith("VmRSS:"))
    except (OSError, StopIteration, ValueError):
        return None
    return int(fraction * (avail + rss))


def _out_of_memory(exc: BaseException) -> bool:
    return isinstance(exc, torch.OutOfMemoryError) or "out of memory" in str(exc).lower()


def sweep_batch_sizes(pipe, classes: list[int], batch_sizes: list[int] | None = None, *,
                      memory_budget: int | None = None, max_batch_size: int = 64, min_gain: float = 0.05,
                      on_result=None, **bench_kw) -> dict:
    """:func:`benchmark` at several batch sizes; the best is the one with the most images per second whose peak
    memory fits ``memory_budget`` (bytes; None = no limit).

    batch_sizes: the sizes to measure, in order; None = auto: 1, 2, 4, ... up to ``max_batch_size`` (which is
    always tried last if it is not a power of two), stopping before a size whose peak memory, extrapolated linearly
    in the batch size from the last two measured, would pass the budget; after one that passed it (or ran out of
    memory); or once a doubling gained less than ``min_gain`` (a fraction) over the best images per second so far:
    the plateau, where larger batches only cost memory and latency.  Explicit sizes are all measured except that
    a size after an out-of-memory one is skipped.  ``on_result(result)`` is called after each measurement
    (progress).  ``bench_kw`` goes to :func:`benchmark`.

    Returns ``{"results": [benchmark dicts, each with "within_budget"; or {"batch_size", "out_of_memory": True}],
    "best": the best result or None, "best_batch_size", "memory_budget_bytes", "stopped": why the sweep ended}``.
    """
    if max_batch_size < 1:
        raise ArvisionError(f"the largest batch size must be >= 1, got {max_batch_size}")
    if batch_sizes is not None and (not batch_sizes or any(b < 1 for b in batch_sizes)):
        raise ArvisionError(f"batch sizes must be integers >= 1, got {batch_sizes}")
    auto = batch_sizes is None
    if auto:
        batch_sizes = [1 << i for i in range(max_batch_size.bit_length()) if 1 << i <= max_batch_size]
        if batch_sizes[-1] != max_batch_size:
            batch_sizes.append(max_batch_size)
    results: list[dict] = []
    stopped = f"reached the largest batch size, {batch_sizes[-1]}" if auto else "measured every batch size"
    for b in batch_sizes:
        ok = [r for r in results if "seconds_per_image" in r and r["peak_memory_bytes"] is not None]
        if auto and memory_budget is not None and len(ok) >= 2:
            (b1, p1), (b2, p2) = ((r["batch_size"], r["peak_memory_bytes"]) for r in ok[-2:])
            predicted = p2 + (p2 - p1) / (b2 - b1) * (b - b2)
            if predicted > memory_budget:
                stopped = f"batch {b} would need about {predicted / 2**20:.0f} MiB, over the budget"
                break
        try:
            r = benchmark(pipe, classes, batch_size=b, **bench_kw)
        except (RuntimeError, MemoryError) as exc:  # torch.OutOfMemoryError is a RuntimeError
            if not _out_of_memory(exc):
                raise
            if pipe.device.type == "cuda":
                torch.cuda.empty_cache()
            results.append({"batch_size": b, "out_of_memory": True})
            stopped = f"batch {b} ran out of memory"
            break
        r["within_budget"] = memory_budget is None or r["peak_memory_bytes"] is None or \
            r["peak_memory_bytes"] <= memory_budget
        prev_best = max((x["images_per_second"] or 0 for x in results if x.get("within_budget")), default=None)
        results.append(r)
        if on_result is not None:
            on_result(r)
        if auto and not r["within_budget"]:
            stopped = f"batch {b} passed the memory budget"
            break
        if auto and prev_best and (r["images_per_second"] or 0) < (1 + min_gain) * prev_best:
            stopped = f"batch {b} gained less than {min_gain:.0%} images/s over the best smaller batch"
            break
    fits = [r for r in results if r.get("within_budget")]
    best = max(fits, key=lambda r: r["images_per_second"] or 0, default=None)
    return {"results": results, "best": best, "best_batch_size": best["batch_size"] if best else None,
            "memory_budget_bytes": memory_budget, "stopped": stopped}


def format_sweep(sweep: dict) -> str:
    """A table of :func:`sweep_batch_sizes`: images per second, seconds per image and peak memory per batch size."""
    mb = 2**20
    budget = sweep["memory_budget_bytes"]
    lines = [f"memory budget {budget / mb:.0f} MiB" if budget is not None else "no memory budget",
             "  batch  images/s  s/image  peak MiB  fits"]
    for r in sweep["results"]:
        if r.get("out_of_memory"):
            lines.append(f"  {r['batch_size']:>5d}  out of memory")
            continue
        peak = f"{r['peak_memory_bytes'] / mb:.0f}" if r["peak_memory_bytes"] is not None else "n/a"
        mark = "yes" if r["within_budget"] else "no"
        lines.append(f"  {r['batch_size']:>5d}  {r['images_per_second']:>8.3f}  {r['seconds_per_image']:>7.4f}  "
                     f"{peak:>8s}  {mark}")
    best = sweep["best"]
    lines.append(f"best: batch {best['batch_size']}, {best['images_per_second']:.3f} images/s" if best else
                 "best: none fits the memory budget")
    lines.append(f"({sweep['stopped']})")
    return "\n".join(lines)


def machine_info() -> dict:
    """Which machine a figure comes from: ``lscpu``'s model name and flags (``/proc/cpuinfo`` where lscpu is
    missing), core count, torch version and, when one is visible, the CUDA device."""
    import platform
    import shutil
    import subprocess

    fields: dict[str, str] = {}
    if shutil.which("lscpu"):
        out = subprocess.run(["lscpu"], capture_output=True, text=True, env={**os.environ, "LC_ALL": "C"}).stdout
        fields = {k.strip(): v.strip() for k, _, v in (ln.partition(":") for ln in out.splitlines()) if v}
    if not fields.get("Flags"):
        try:
            for ln in Path("/proc/cpuinfo").read_text().splitlines():
                k, _, v = ln.partition(":")
                if k.strip() in ("model name", "flags") and v:
                    fields.setdefault("Model name" if k.strip() == "model name" else "Flags", v.strip())
        except OSError:
            pass
    info = {"cpu_model": fields.get("Model name") or platform.processor() or "unknown",
            "cpu_flags": fields.get("Flags", "").split(), "logical_cores": os.cpu_count(),
            "torch": torch.__version__, "python": platform.python_version()}
    if torch.cuda.is_available():
        info["cuda_device"] = torch.cuda.get_device_name()
        info["cuda_version"] = torch.version.cuda
    return info
