"""Weight-only int8 linear layers: half the bytes of bf16 weights for bandwidth-bound decoding.

Batch-1 raster decoding reads every weight once per token, so its speed is the memory bandwidth divided by the
weights' bytes (gpt-fast's observation).  ``Int8Linear`` stores a weight (N, K) as int8 with one bf16 scale per
output row (symmetric, absmax / 127) and multiplies bf16 activations by it with PyTorch's fused CPU kernel
``aten._weight_int8pack_mm`` (elsewhere: dequantise, then ``F.linear``).  Lossy, like bf16: sampled tokens
differ from the fp32 ones; the quality cost is measured in docs/performance.md.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class Int8Linear(nn.Module):
    """y = x @ (q * s[:, None]).T + bias, q (N, K) int8, s (N,) and bias (N,) in the activation dtype."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None, dtype: torch.dtype = torch.bfloat16):
        super().__init__()
        w = weight.detach().float()
        # the scale is rounded to the activation dtype first, so the codes are chosen for the scale actually used
        scale = (w.abs().amax(dim=1).clamp_min(1e-12) / 127.0).to(dtype)
        self.register_buffer("qweight", (w / scale.float()[:, None]).round().clamp(-127, 127).to(torch.int8))
        self.register_buffer("scales", scale)
        self.register_buffer("bias", None if bias is None else bias.detach().to(dtype))
        self.in_features, self.out_features = weight.shape[1], weight.shape[0]

    @classmethod
    def from_linear(cls, linear: nn.Linear, dtype: torch.dtype = torch.bfloat16) -> Int8Linear:
        return cls(linear.weight, linear.bias, dtype)

    @property
    def dtype(self) -> torch.dtype:
        """The activation dtype (what callers cast inputs to, in place of a float weight's dtype)."""
        return self.scales.dtype

    def forward(self, x: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
        """x (..., K) -> (..., N).  ``bias`` replaces the layer's own (VAR's q/k/v biases are passed per call)."""
        bias = self.bias if bias is None else bias
        x2 = x.reshape(-1, self.in_features).to(self.scales.dtype)
        if x2.device.type == "cpu":
            y = torch.ops.aten._weight_int8pack_mm(x2, self.qweight, self.scales)
        else:
            y = F.linear(x2, self.qweight.to(x2.dtype) * self.scales[:, None])
        if bias is not None:
            y = y + bias.to(y.dtype)
        return y.view(*x.shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, int8 weights"


def swap_linears(module: nn.Module, make, only: tuple[str, ...] = ()) -> int:
    """Replace every ``nn.Linear`` inside ``module`` (recursively; with ``only``, just the direct children of those
    names) by ``make(linear)``, where that is not None; returns how many were replaced.  The one walk behind the
    weight formats: ``Int8Linear`` here, ``arvision.models.packed.PackedLinear``."""
    count = 0
    for name, child in module.named_children():
        if only and name not in only:
            continue
        if isinstance(child, nn.Linear):
            new = make(child)
            if new is not None:
                setattr(module, name, new)
                count += 1
        else:
            count += swap_linears(child, make)
    return count


def quantize_linears(module: nn.Module, dtype: torch.dtype = torch.bfloat16, only: tuple[str, ...] = ()) -> int:
    """Replace every ``nn.Linear`` inside ``module`` (recursively; with ``only``, just the direct children of those
    names) by an ``Int8Linear``; returns how many."""
    return swap_linears(module, lambda linear: Int8Linear.from_linear(linear, dtype), only)


def linear_dtype(layer: nn.Module) -> torch.dtype:
    """The dtype a linear layer computes in: its weight's, or an ``Int8Linear``'s (``PackedLinear``'s) own."""
    return layer.weight.dtype if isinstance(layer, nn.Linear) else layer.dtype
