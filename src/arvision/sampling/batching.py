"""The default sampling batch: bounded by the model's per-image memory and the memory the machine has free.

Putting every requested image in one batch makes memory grow with the request (1,000 bundled-model images took
3.9 GB, 100,000 died in the allocator).  :func:`default_batch_size` instead picks the largest batch whose estimated
working set fits in a share of the free memory, capped at :data:`MAX_DEFAULT_BATCH` (larger batches stop paying
off on a CPU: ``bench/sample_memory.py``) and never below 1.  The cap, not the free memory, decides the batch of
small models, so the default (and with it which images one ``--seed`` gives) is the same on every ordinary machine;
the chosen batch is reported so that a run can be repeated with an explicit ``batch_size``.

The estimate is deliberately simple and generous: the KV cache of every layer over the whole sequence, the widest
step's activations (attention scores, MLP, logits), and the decoder's largest feature maps, for the two rows
(conditional and unconditional) that guidance runs per image, in fp32.
"""

from __future__ import annotations

import os

import torch

__all__ = ["MAX_DEFAULT_BATCH", "available_memory", "default_batch_size", "per_image_bytes"]

# images: bench/sample_memory.py, 1,000 bundled-model images on a 2-core CPU: batches of 16 / 64 / 128 / 512 / 1,000
# took 19.5 / 21.3 / 20.6 / 23.5 / 29.7 s and 0.36 / 0.54 / 0.86 / 2.1 / 3.8 GB; bigger batches buy nothing here
MAX_DEFAULT_BATCH = 64
MEMORY_SHARE = 0.5  # of the free memory a default batch may plan to use (the rest: the model, outputs, others)
_FALLBACK_FREE = 4 << 30  # bytes assumed free where the platform does not say (no /proc/meminfo)


def per_image_bytes(config, schedule) -> int:
    """Estimated peak working memory of one image (both guidance rows) while sampling ``schedule`` with a model of
    ``config`` (``arvision.config.ModelConfig``), in bytes: KV cache + the widest step's activations + decoding."""
    tr, tok = config.transformer, config.tokenizer
    rows, f32 = 2, 4  # guidance runs a conditional and an unconditional row per image
    L, step = schedule.length, schedule.max_step_size
    kv = 2 * tr.depth * L * tr.width * f32  # keys and values of every layer over the whole sequence
    hidden = tr.ffn_hidden or round(tr.width * tr.mlp_ratio)
    act = step * (8 * tr.width + 2 * hidden + tr.num_heads * L + 3 * tr.vocab_size) * f32
    mults = tok.decoder_ch_mult or tok.ch_mult
    side = config.image_size
    # the decoder runs at full resolution on its first level's width; a few maps are alive at once
    dec = 6 * side * side * tok.ch * max(mults[0], 1) * f32 + 4 * side * side * 3 * f32
    return int(1.5 * (rows * (kv + act) + dec))


def available_memory(device: torch.device | str = "cpu") -> int:
    """Bytes free for a new allocation on ``device``: CUDA's free memory, else the system's MemAvailable."""
    device = torch.device(device)
    if device.type == "cuda":
        free, _total = torch.cuda.mem_get_info(device)
        return int(free)
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:  # other POSIX systems: free physical pages
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return _FALLBACK_FREE


def default_batch_size(config, schedule, device: torch.device | str = "cpu", n_images: int | None = None,
                       free_bytes: int | None = None) -> int:
    """The batch a sampling call uses when none is given: as many images as fit in ``MEMORY_SHARE`` of the free
    memory (``free_bytes``, default :func:`available_memory`), at most :data:`MAX_DEFAULT_BATCH` and ``n_images``,
    at least 1."""
    free = available_memory(device) if free_bytes is None else free_bytes
    fit = int(MEMORY_SHARE * free) // max(per_image_bytes(config, schedule), 1)
    cap = MAX_DEFAULT_BATCH if n_images is None else min(MAX_DEFAULT_BATCH, n_images)
    return max(1, min(cap, fit))
