"""Linear layers whose weights are packed once for oneDNN's CPU GEMM: the same arithmetic precision, a faster kernel.

``F.linear`` on a CPU calls the BLAS GEMM, which re-lays the weight out into its blocked format at every call.
At the small row counts of sampling (raster decoding multiplies 2 rows per image through every weight; VAR's
early scales 2-72) that repacking, not the arithmetic, is most of the time: on a 2-core AVX2 AMD EPYC a GPT-B
step's linear layers stream their fp32 weights at 6 GB/s through ``F.linear`` and at 14-16 GB/s through oneDNN with
the weights packed once at load (``bench/packed_linear.py``).  The result is fp32 (or bf16) arithmetic like
``F.linear``'s, summed in another order: equal to it within rounding (~1e-6 relative), not bit for bit, so the
exact mode (``--precision fp32``, the official tokens) keeps ``F.linear``.
"""

from __future__ import annotations

import functools

import torch
from torch import nn

from arvision.models.quantized import swap_linears

# oneDNN picks its blocking for a row count; any count runs on any packing, and hints of 2, 64 and 512 rows moved
# a GPT-B step by 4-20% here (bench/packed_linear.py), near the machine's noise, so one hint serves every batch
ROWS_HINT = 64
# below ~256K weights a layer sits in the cache and both kernels cost their call overhead (~40 us here), packed
# no faster (0.8x at 192x576, 1.4x at 256x1024, 3.4x at 768x2304 at 2 rows; bench/packed_linear.py): only larger ones
# are packed
MIN_WEIGHTS = 1 << 18


@functools.cache
def packing_available(dtype: torch.dtype = torch.float32) -> bool:
    """Whether this PyTorch build and CPU can pack ``dtype`` weights for oneDNN (bf16 needs AVX512 or
    AVX-NE-CONVERT)."""
    if not torch.backends.mkldnn.is_available():
        return False
    try:
        w = torch.zeros(8, 8, dtype=dtype)
        packed = torch.ops.mkldnn._reorder_linear_weight(w, ROWS_HINT)
        torch.ops.mkldnn._linear_pointwise(torch.zeros(2, 8, dtype=dtype), packed, None, "none", [], "")
    except (RuntimeError, AttributeError):
        return False
    return True


class PackedLinear(nn.Module):
    """y = x @ W.T + bias with W (N, K) held in oneDNN's blocked layout (an opaque buffer of W's size and dtype)."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None):
        super().__init__()
        if weight.device.type != "cpu":
            raise ValueError(f"packed weights are for CPUs; this weight is on {weight.device}")
        w = weight.detach().contiguous()
        self.register_buffer("packed", torch.ops.mkldnn._reorder_linear_weight(w, ROWS_HINT))
        self.register_buffer("bias", None if bias is None else bias.detach().clone())
        self.in_features, self.out_features = w.shape[1], w.shape[0]

    @classmethod
    def from_linear(cls, linear: nn.Linear) -> PackedLinear:
        return cls(linear.weight, linear.bias)

    @property
    def dtype(self) -> torch.dtype:
        """The dtype it computes in (what callers cast inputs to, in place of a float weight's dtype)."""
        return self.packed.dtype

    def forward(self, x: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
        """x (..., K) -> (..., N).  ``bias`` replaces the layer's own (VAR's q/k/v biases are passed per call)."""
        bias = self.bias if bias is None else bias
        dtype = self.packed.dtype
        if x.dtype != dtype:
            x = x.to(dtype)
        if bias is not None and bias.dtype != dtype:
            bias = bias.to(dtype)
        # the op overload itself: a raster step makes ~60 of these calls, each saving the packet's lookup
        return torch.ops.mkldnn._linear_pointwise.default(x, self.packed, bias, "none", [], "")

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, oneDNN-packed {self.dtype}"


def pack_linears(module: nn.Module, only: tuple[str, ...] = (), min_weights: int = MIN_WEIGHTS) -> int:
    """Replace every ``nn.Linear`` with at least ``min_weights`` weights inside ``module`` (recursively; with
    ``only``, just the direct children of those names) by a ``PackedLinear``; returns how many."""
    return swap_linears(module, lambda linear: (PackedLinear.from_linear(linear)
                                                if linear.weight.numel() >= min_weights else None), only)
