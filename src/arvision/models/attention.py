"""Multi-head self-attention with the options both families need, a static KV cache, and 2-D RoPE."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float | None = None,
           mask: torch.Tensor | None = None, dropout: float = 0.0, prefix: tuple | None = None) -> torch.Tensor:
    """q (B, H, n, hd) against k, v (B, H, m, hd); mask (n, m) additive or None -> (B, H, n, hd).

    prefix: a text prefix's (k, v (B, H, T, hd), bias (B, 1, 1, T)) that every query also sees, in the same
    softmax (``join_prefix``)."""
    if prefix is not None:
        k, v, mask = join_prefix(prefix, k, v, mask)
    if q.shape[2] == 1 and (mask is None or prefix is not None) and dropout == 0.0:
        # one query (raster decoding): the fused CPU kernel's set-up costs more than the arithmetic
        att = (q @ k.transpose(-2, -1)).mul_(q.shape[-1] ** -0.5 if scale is None else scale)
        if mask is not None:
            att = att.add_(mask.to(att.dtype))
        return att.softmax(dim=-1) @ v
    mask = None if mask is None else mask.to(q.dtype)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale, dropout_p=dropout)


def join_prefix(prefix: tuple, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None):
    """Put a prefix's keys/values in front of k, v (B, H, m, hd) -> (k, v (B, H, T+m, hd), mask).

    prefix = (k, v (B, H, T, hd), bias (B, 1, 1, T) additive: -inf at padding words).  mask: (n, m) or (1, m)
    additive, or None (every key visible) -> the joint additive mask (B, 1, n or 1, T+m) in fp32."""
    pk, pv, bias = prefix
    k, v = torch.cat([pk.to(k.dtype), k], dim=2), torch.cat([pv.to(v.dtype), v], dim=2)
    bias = bias.float()
    if mask is None:
        return k, v, F.pad(bias, (0, k.shape[2] - bias.shape[-1]))
    mask = mask.float().expand(bias.shape[0], 1, *mask.shape[-2:])
    return k, v, torch.cat([bias.expand(-1, -1, mask.shape[2], -1), mask], dim=-1)


class KVCache:
    """Keys and values of every layer, allocated once: ``k[layer]``, ``v[layer]`` (batch, heads, length, head_dim).

    A forward over positions [begin, end) writes its keys there and attends to [0, end): no reallocation, no
    copies of the history.  Rewinding (rejected speculative tokens) needs no work: later writes overwrite.
    One tensor per layer, not one for all (gpt-fast's layout): a compiled step then writes each layer's tensor in
    place, where a write into a slice of one all-layer tensor makes inductor copy the whole buffer back at every
    layer (``bench/compile_raster_trial.py``).
    Cache policies (``arvision.sampling.kv_policies``) subclass this and override ``attend``.
    """

    def __init__(self, depth: int, batch: int, heads: int, length: int, head_dim: int,
                 dtype=torch.float32, device=None):
        shape = (batch, heads, length, head_dim)
        # uninitialised: a position is always written before any query reads it, and zero-filling
        # 2 x 89 MB (VAR-d16 with guidance) costs more than a whole early step
        self.k = [torch.empty(shape, dtype=dtype, device=device) for _ in range(depth)]
        self.v = [torch.empty(shape, dtype=dtype, device=device) for _ in range(depth)]

    @property
    def batch(self) -> int:
        return self.k[0].shape[0]

    @property
    def nbytes(self) -> int:
        """Bytes held now."""
        return sum(t.numel() * t.element_size() for t in self.k + self.v)

    @property
    def peak_nbytes(self) -> int:
        """The most bytes held at any time (the static cache holds its full size from the start)."""
        return self.nbytes

    def write(self, layer: int, begin: int, k: torch.Tensor, v: torch.Tensor):
        """k, v (B, H, n, hd) at positions [begin, begin+n) -> views of all keys/values in [0, begin+n)."""
        end = begin + k.shape[2]
        self.k[layer][:, :, begin:end] = k
        self.v[layer][:, :, begin:end] = v
        return self.k[layer][:, :, :end], self.v[layer][:, :, :end]

    def attend(self, layer: int, begin: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
               scale: float | None = None, mask: torch.Tensor | None = None, prefix: tuple | None = None
               ) -> torch.Tensor:
        """Store this forward's k, v (B, H, n, hd) at [begin, begin+n) and attend q (B, H, n, hd) to everything
        cached up to begin+n.  mask: (n, begin+n) additive, or None (the n positions see each other).  prefix: a
        text prefix's (k, v, bias), seen by every query besides the cache (``attend``); it is not stored."""
        k, v = self.write(layer, begin, k, v)
        return attend(q.to(k.dtype), k, v, scale, mask, prefix=prefix)  # under autocast q may leave the l2-norm in fp32

    def select(self, rows: torch.Tensor) -> None:
        """Keep batch rows ``rows`` (int64, repeats allowed): search controllers re-batch the running samples."""
        self.k, self.v = [t[rows] for t in self.k], [t[rows] for t in self.v]


class StepLocalCache(KVCache):
    """The cache of a schedule whose steps see only themselves (block-diagonal attention, HMAR): nothing is stored,
    and a step's positions attend among themselves.  It stands in for :class:`KVCache` in the loop (``select``,
    byte counts), so sampling needs no second code path."""

    def __init__(self, batch: int):
        self._batch = batch

    @property
    def batch(self) -> int:
        return self._batch

    @property
    def nbytes(self) -> int:
        return 0

    def attend(self, layer: int, begin: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
               scale: float | None = None, mask: torch.Tensor | None = None, prefix: tuple | None = None
               ) -> torch.Tensor:
        """q, k, v (B, H, n, hd) of one step -> (B, H, n, hd): the n positions see each other only."""
        return attend(q, k, v, scale, mask, prefix=prefix)

    def select(self, rows: torch.Tensor) -> None:
        self._batch = int(rows.numel())


def rope_2d_table(grid: tuple[int, int], head_dim: int, base: float, num_prefix: int) -> torch.Tensor:
    """LlamaGen's 2-D rotary table: (num_prefix + h*w, head_dim/2, 2) of (cos, sin).

    The first half of the head_dim/2 rotation pairs turns with the row index, the second half with the column
    index.  Prefix (class-token) positions get (0, 0), which zeroes their q and k: a quirk of the released
    models that parity requires.
    """
    half = head_dim // 2
    freqs = 1.0 / (base ** (torch.arange(0, half, 2)[: half // 2].float() / half))
    h, w = grid
    rows = torch.outer(torch.arange(h).float(), freqs)  # (h, hd/4)
    cols = torch.outer(torch.arange(w).float(), freqs)  # (w, hd/4)
    angles = torch.cat([rows[:, None, :].expand(h, w, -1), cols[None, :, :].expand(h, w, -1)], dim=-1)
    table = torch.stack([angles.cos(), angles.sin()], dim=-1).flatten(0, 1)  # (h*w, hd/2, 2)
    return torch.cat([torch.zeros(num_prefix, half, 2), table])


def apply_rope(x: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
    """x (B, n, ..., hd), table (n, hd/2, 2) -> rotated x; adjacent element pairs rotate, in fp32."""
    xs = x.float().reshape(*x.shape[:-1], -1, 2)
    t = table.view(1, xs.shape[1], *([1] * (xs.ndim - 4)), xs.shape[-2], 2)
    out = torch.stack([xs[..., 0] * t[..., 0] - xs[..., 1] * t[..., 1],
                       xs[..., 1] * t[..., 0] + xs[..., 0] * t[..., 1]], dim=-1)
    return out.flatten(-2).type_as(x)


class Attention(nn.Module):
    """Self-attention over (B, n, C).

    qv_bias: learnable q and v biases, none on k (VAR).  l2_norm: unit-normalised q and k with a learnable
    per-head temperature exp(min(scale_mul, ln 100)) and softmax scale 1 (VAR); otherwise ``scale`` (default
    1/sqrt(hd); VAR's blocks without l2 norm use 0.25/sqrt(hd)).
    """

    def __init__(self, width: int, heads: int, qv_bias: bool, l2_norm: bool, proj_bias: bool,
                 dropout: float = 0.0, scale: float | None = None):
        super().__init__()
        self.scale = scale
        self.heads, self.head_dim = heads, width // heads
        self.qkv = nn.Linear(width, 3 * width, bias=False)
        if qv_bias:
            self.q_bias = nn.Parameter(torch.zeros(width))
            self.v_bias = nn.Parameter(torch.zeros(width))
            # VAR's "zero" k bias is a saved buffer, not a constant: a checkpoint may hold other values
            # (the parity vectors do), and the official code adds whatever was loaded.
            self.register_buffer("k_bias", torch.zeros(width))
        else:
            self.q_bias = None
        self.l2_norm = l2_norm
        if l2_norm:
            self.scale_mul = nn.Parameter(torch.full((1, heads, 1, 1), 4.0).log())
            self.max_scale_mul = math.log(100)
        self.proj = nn.Linear(width, width, bias=proj_bias)
        self.dropout = dropout

    def project(self, x: torch.Tensor, rope: torch.Tensor | None = None):
        """x (B, n, C) -> q, k, v (B, H, n, hd) as this layer attends with them (biases, RoPE, VAR's l2 norm and
        temperature on q and k), and the softmax scale."""
        B, n, C = x.shape
        bias = None if self.q_bias is None else torch.cat((self.q_bias, self.k_bias, self.v_bias))
        if isinstance(self.qkv, nn.Linear):
            qkv = F.linear(x, self.qkv.weight, bias)
        else:  # weight-only int8 (arvision.models.quantized)
            qkv = self.qkv(x, bias)
        qkv = qkv.view(B, n, 3, self.heads, self.head_dim)
        if rope is not None:
            qk = apply_rope(qkv[:, :, :2], rope)  # q and k rotated in one call: (B, n, 2, H, hd)
            q, k, v = qk[:, :, 0].transpose(1, 2), qk[:, :, 1].transpose(1, 2), qkv[:, :, 2].transpose(1, 2)
        else:
            q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(dim=0)  # (B, H, n, hd)
        scale = self.scale
        if self.l2_norm:
            q = F.normalize(q, dim=-1).mul(self.scale_mul.clamp_max(self.max_scale_mul).exp())
            k = F.normalize(k, dim=-1)
            scale = 1.0
        return q, k, v, scale

    def forward(self, x: torch.Tensor, rope: torch.Tensor | None = None, attn_bias: torch.Tensor | None = None,
                cache: KVCache | None = None, layer: int = 0, begin: int = 0,
                prefix: tuple | None = None) -> torch.Tensor:
        """x (B, n, C).  Without a cache: attention among the n positions under ``attn_bias`` (n, n).
        With a cache: these n positions sit at [begin, begin+n) and see everything cached before them, and
        each other under ``attn_bias`` (n, begin+n) when given (a causal window of speculative drafts).
        prefix: a text prefix's (k, v (B, H, T, hd), bias (B, 1, 1, T)) from ``prefix_attention``: every position
        also sees its valid words, in the same softmax."""
        B, n, C = x.shape
        q, k, v, scale = self.project(x, rope)
        if cache is not None:
            out = cache.attend(layer, begin, q, k, v, scale, attn_bias, prefix=prefix)
        else:
            out = attend(q, k, v, scale, attn_bias, self.dropout if self.training else 0.0, prefix=prefix)
        return self.proj(out.transpose(1, 2).reshape(B, n, C))

    def prefix_attention(self, x: torch.Tensor, bias: torch.Tensor):
        """A text prefix x (B, T, C) attending to itself only (bidirectional; ``bias`` (B, 1, 1, T) -inf at padding
        words), without RoPE -> (output (B, T, C), (k, v, bias)): its keys and values, which the image positions
        of this layer see as ``prefix`` in ``forward``."""
        B, T, C = x.shape
        q, k, v, scale = self.project(x)
        out = attend(q, k, v, scale, bias, self.dropout if self.training else 0.0)
        return self.proj(out.transpose(1, 2).reshape(B, T, C)), (k, v, bias)
