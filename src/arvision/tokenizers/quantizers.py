"""Codebooks: nearest-code lookup (Euclidean or l2-normalised) and VAR's phi residual convs."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


def nearest_code(z: torch.Tensor, codebook: torch.Tensor) -> torch.Tensor:
    """Index of the nearest codebook row for each row of ``z``.

    z: (N, D), codebook: (V, D) -> (N,) int64.  The distance is expanded as |z|^2 + |e|^2 - 2 z.e, the same
    arithmetic as the released tokenizers, so near-ties resolve the same way.
    """
    d = z.square().sum(dim=1, keepdim=True) + codebook.square().sum(dim=1)
    d = torch.addmm(d, z, codebook.T, beta=1, alpha=-2)
    return d.argmin(dim=1)


class Codebook(nn.Module):
    """``embedding``: (V, D) codes.  With ``l2_norm`` both codes and queries are unit-normalised."""

    def __init__(self, vocab_size: int, dim: int, l2_norm: bool = False):
        super().__init__()
        self.embedding = nn.Embedding(vocab_size, dim)
        self.l2_norm = l2_norm
        nn.init.uniform_(self.embedding.weight, -1.0 / vocab_size, 1.0 / vocab_size)

    @property
    def codes(self) -> torch.Tensor:
        """(V, D) the codes as used for lookup and decoding."""
        w = self.embedding.weight
        return F.normalize(w, dim=-1) if self.l2_norm else w

    def lookup(self, idx: torch.Tensor) -> torch.Tensor:
        """idx (...,) -> (..., D)."""
        return F.embedding(idx, self.codes)

    def quantize(self, z: torch.Tensor) -> torch.Tensor:
        """z (N, D) -> nearest indices (N,)."""
        if self.l2_norm:
            z = F.normalize(z, dim=-1)
        return nearest_code(z, self.codes)


class Phi(nn.Conv2d):
    """phi(h) = (1 - r) h + r conv3x3(h): the residual refinement applied to each upsampled scale."""

    def __init__(self, dim: int, ratio: float):
        super().__init__(dim, dim, kernel_size=3, stride=1, padding=1)
        self.ratio = abs(ratio)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return h.mul(1 - self.ratio) + super().forward(h).mul_(self.ratio)


class PhiBank(nn.Module):
    """K phi convs; scale ``si`` of ``SN`` uses the one whose tick is nearest to si/(SN-1).

    ``share``: 0 -> one per scale, 1 -> one for all, K>1 -> K partially shared (VAR ships K=4).
    """

    def __init__(self, dim: int, num_scales: int, share: int, ratio: float):
        super().__init__()
        k = num_scales if share == 0 else share
        self.qresi_ls = nn.ModuleList([Phi(dim, ratio) for _ in range(k)])
        if k == 1:
            self.ticks = np.array([0.5])
        elif k == 4:  # the released tokenizer's ticks (1/12, 11/12 endpoints)
            self.ticks = np.linspace(1 / 3 / k, 1 - 1 / 3 / k, k)
        else:
            self.ticks = np.linspace(1 / 2 / k, 1 - 1 / 2 / k, k)
        self.num_scales = num_scales
        self.index = [int(np.argmin(np.abs(self.ticks - si / max(num_scales - 1, 1))))
                      for si in range(num_scales)]

    def forward(self, si: int, h: torch.Tensor) -> torch.Tensor:
        return self.qresi_ls[self.index[si]](h)
