"""The one generation loop, for every family.

for each step s: build the input from the canvas -> trunk step with the KV cache -> logits -> guidance ->
processors -> choose tokens -> update the canvas.  Families differ only in the parts plugged in (input
builder, guidance rule, top-p rule); later methods plug in here as policies, never as a second loop.
"""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

from arvision.sampling.processors import Generators, Guidance, TokenSampling, gumbel_soft_codes


@dataclass
class LoopResult:
    tokens: torch.Tensor  # (B, L) int64, schedule order
    state: object  # the input builder's final state (VAR: canvas f_hat)
    kv_cache_bytes: int = 0  # bytes the KV cache held (allocated once, at full length)


@torch.no_grad()
def generate(transformer, inputs, labels: torch.Tensor, guidance: Guidance, sampling: TokenSampling,
             generator: Generators = None, more_smooth: bool = False,
             dtype: torch.dtype = torch.float32, progress: bool = False, on_step=None) -> LoopResult:
    """Sample token sequences for class ``labels`` (B,).

    transformer: ``ARTransformer``; inputs: an input builder (``arvision.inputs``).  All randomness is drawn
    from ``generator`` in the order the released samplers draw it, or from ``generator[b]`` for image b when a
    list of B generators is given.  ``dtype`` other than fp32 runs the trunk under autocast; logits, the token
    choice and the canvas stay fp32.  ``on_step(s, state, tokens)`` is called after each step (observers only:
    pictures of the coarse-to-fine progression, logging, timing).
    """
    sched = transformer.schedule
    B, S, device = labels.shape[0], sched.num_steps, labels.device
    if isinstance(generator, (list, tuple)) and len(generator) != B:
        raise ValueError(f"got {len(generator)} generators for a batch of {B} images")
    doubled = guidance.doubles_batch
    null = torch.full_like(labels, transformer.cfg.num_classes)
    all_labels = torch.cat([labels, null]) if doubled else labels
    # One autocast context around the whole loop: autocast keeps its cast copy of each fp32 weight until the
    # outermost context exits, so the weights are cast once per call, not once per step.  The parts outside the
    # trunk (guidance, filters, the draw, the canvas) run with autocast switched off, in fp32.
    # Weights already in the sampling dtype (``pipe.to(dtype=...)``) need no autocast, which would only add a
    # dispatch layer to every small op of every step.
    mixed = dtype != torch.float32 and transformer.class_emb.weight.dtype != dtype
    trunk_ctx = torch.autocast(device_type=device.type, dtype=dtype) if mixed else nullcontext()
    fp32_ctx = (lambda: torch.autocast(device_type=device.type, enabled=False)) if mixed else nullcontext
    cache = transformer.new_cache(all_labels.shape[0], dtype=dtype, device=device)
    state = inputs.start(B, device)
    tokens = torch.empty(B, sched.length, dtype=torch.long, device=device)
    codes = inputs.tok.quantize.codes if more_smooth else None
    x_in = None
    with trunk_ctx:
        cond = transformer.condition(all_labels)
        for s in tqdm(range(S), desc="steps", disable=True if not progress else None, leave=False):
            logits = transformer.forward_step(s, cond, x_in, cache)
            with fp32_ctx():
                if doubled:
                    logits = guidance.combine(logits[:B], logits[B:], s, S)
                logits = sampling.process(logits)
                ids = sampling.draw(logits, generator)
                begin, end = sched.begin_ends[s]
                tokens[:, begin:end] = ids
                embeds = gumbel_soft_codes(logits, s / max(S - 1, 1), codes, generator) if more_smooth else None
                x_in = inputs.advance(state, s, ids, embeds)
                if on_step is not None:
                    on_step(s, state, tokens)
                if x_in is not None and doubled:
                    x_in = torch.cat([x_in, x_in])
    return LoopResult(tokens, state, cache.nbytes)
