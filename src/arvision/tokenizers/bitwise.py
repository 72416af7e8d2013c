"""Infinity's tokenizer: multi-scale binary spherical quantisation (BSQ) around the conv encoder/decoder.

A token is a vector of d bits.  Scale s quantises the residual, area-downsampled to its grid, to the sign of each
channel: the code of bit vector b is (2b - 1) / sqrt(d), a corner of the hypercube on the unit sphere.  The codes
are trilinear-upsampled (on a one-frame video, as the released code does: bilinear in h, w) to the latent grid and
subtracted from the residual; the canvas (what decodes to the image) is their sum.  The transformer's input of step
s+1 is the canvas trilinear-resized to that step's grid (Infinity's sampler and its bitwise self-correction; not
VAR's area-down, nor its phi convs).

Bits travel through the engine packed into one int64 id per token (most significant bit first, the released
code's ``int_label``), so d <= 62; ``unpack_bits`` gives the (..., d) view.  ``TokenizerConfig``: ``kind="bsq"``,
``embed_dim`` = d, ``vocab_size`` = 2^d (no codebook table is stored), ``patch_nums`` the scale list.

Two residual chains, each as the released code has it (they round differently, so a bit near zero can differ):
``encode`` (the VAE's ``MultiScaleBSQ.forward``) subtracts each scale's codes from a running residual;
``self_correct`` (``BitwiseSelfCorrection.flip_requant``, where Infinity's training targets come from) recomputes
the residual as features - canvas at every scale, and may flip bits of the first scales (the paper's bitwise
self-correction) before the later scales are quantised.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from arvision.config import TokenizerConfig
from arvision.errors import ArvisionError
from arvision.tokenizers.models import TOKENIZERS, ConvTokenizer, MultiScaleVQTokenizer, check_scale_list

MAX_BITS = 62  # bits per token that fit in a non-negative int64 id


def pack_bits(bits: torch.Tensor) -> torch.Tensor:
    """Bits (..., d) in {0, 1} -> ids (...) int64, the first bit most significant (the released ``int_label``)."""
    d = bits.shape[-1]
    weights = 2 ** torch.arange(d - 1, -1, -1, device=bits.device, dtype=torch.long)
    return (bits.long() * weights).sum(-1)


def unpack_bits(ids: torch.Tensor, d: int) -> torch.Tensor:
    """Ids (...) int64 -> bits (..., d) int64 in {0, 1}, the first bit most significant."""
    weights = 2 ** torch.arange(d - 1, -1, -1, device=ids.device, dtype=torch.long)
    return (ids[..., None] & weights).ne(0).long()


def bits_to_codes(bits: torch.Tensor) -> torch.Tensor:
    """Bits (..., d) -> codes (..., d) fp32 of norm 1: (2b - 1) / sqrt(d), l2-normalised, computed in the released
    ``indices_to_codes`` order so that the canvas (hence the next scale's input) is the same to the last bit."""
    scale = 1 / math.sqrt(bits.shape[-1])
    return F.normalize(bits.float() * scale * 2 - scale, dim=-1)


def resize(x: torch.Tensor, grid: tuple[int, int], mode: str) -> torch.Tensor:
    """x (B, d, h, w) -> (B, d, *grid), ``mode`` "area" (down) or "trilinear" (up, and the next-input resize), on a
    one-frame video as the released quantiser works (its 5-D kernels)."""
    if tuple(x.shape[-2:]) == tuple(grid):
        return x
    return F.interpolate(x.unsqueeze(2), size=(1, *grid), mode=mode).squeeze(2)


def sign_quantize(z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """One scale's residual z (B, d, h, w) -> (codes (B, d, h, w) with the straight-through gradient of the
    l2-normalised z, bits (B, h*w, d) int64).  The value is z + (zhat - z), the released arithmetic (not zhat
    itself: the two differ in the last bit, and later residuals inherit it); the norm is taken over a contiguous
    (B, h*w, d) copy, as the released code lays it out, so that it is summed in the same order."""
    B, d, h, w = z.shape
    zn = F.normalize(z.flatten(2).transpose(1, 2).contiguous(), dim=-1)
    zhat = torch.where(zn > 0, 1.0, -1.0).to(zn.dtype) * (1.0 / d ** 0.5)
    q = zn + (zhat - zn).detach()
    bits = (q > 0).long()
    return q.transpose(1, 2).reshape(B, d, h, w), bits


class MultiScaleBSQTokenizer(ConvTokenizer):
    """Encoder -> quant_conv (to d channels) -> multi-scale BSQ -> post_quant_conv -> decoder."""

    code_table = False  # the codes are fixed bit vectors: nothing to restart

    @staticmethod
    def usage_size(cfg: TokenizerConfig) -> int:
        """Usage is counted per (bit, value): 2d entries, not 2^d codes."""
        return 2 * cfg.embed_dim

    @staticmethod
    def check_config(cfg: TokenizerConfig) -> None:
        check_scale_list(cfg.patch_nums, minimum=1)
        if cfg.embed_dim > MAX_BITS:
            raise ArvisionError(f"invalid embed_dim: {cfg.embed_dim!r} (bits per token; at most {MAX_BITS} for bsq)")
        if cfg.vocab_size != 2 ** cfg.embed_dim:
            raise ArvisionError(f"invalid vocab_size: {cfg.vocab_size!r} (2^embed_dim = {2 ** cfg.embed_dim} for "
                                "bsq: every bit vector is a code)")

    # the scale list and VAR's VQ-VAE design (z = code dim, here the bits; fused qkv; 3x3 quant convs)
    scale_sides = staticmethod(MultiScaleVQTokenizer.scale_sides)
    design = staticmethod(MultiScaleVQTokenizer.design)

    def __init__(self, cfg: TokenizerConfig):
        super().__init__(cfg)
        self.bits = cfg.embed_dim
        self.grids = tuple((p, p) for p in cfg.patch_nums)

    # -- the canvas: shared by sampling, teacher forcing and self-correction -----------------------------------
    def new_canvas(self, batch: int, device=None, dtype=torch.float32) -> torch.Tensor:
        h, w = self.grids[-1]
        return torch.zeros(batch, self.bits, h, w, device=device, dtype=dtype)

    def code_map(self, bits: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        """Bits (B, h*w, d) -> codes (B, d, h, w)."""
        return bits_to_codes(bits).transpose(1, 2).reshape(bits.shape[0], self.bits, *grid)

    def add_codes(self, canvas: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
        """canvas (B, d, H, W) + codes (B, d, h, w) upsampled to H x W -> the new canvas (out of place)."""
        return canvas + resize(codes, canvas.shape[-2:], "trilinear")

    @staticmethod
    def next_input(canvas: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        """The transformer input of a step on ``grid``: the canvas trilinear-resized to it, (B, h*w, d)."""
        x = resize(canvas, grid, "trilinear")
        return x.flatten(2).transpose(1, 2)

    # -- image <-> bits ----------------------------------------------------------------------------------------
    def residual_quantize(self, f: torch.Tensor, grids=None) -> tuple[list[torch.Tensor], torch.Tensor]:
        """The VAE's quantiser on features f (B, d, H, W): per scale, z = area-down(residual), codes = sign(z),
        residual -= up(codes) (detached), out += up(codes).  Returns (per-scale bits, a list of (B, h*w, d) int64;
        out (B, d, H, W) with the straight-through gradient to f)."""
        grids = self.grids if grids is None else grids
        if tuple(f.shape[-2:]) != tuple(grids[-1]):
            raise ValueError(f"features are {tuple(f.shape[-2:])} but the last scale is {grids[-1]}")
        residual, out, bits = f, torch.zeros_like(f), []
        for grid in grids:
            q, b = sign_quantize(resize(residual, grid, "area"))
            q = resize(q, f.shape[-2:], "trilinear")
            residual = residual - q.detach()
            out = out + q
            bits.append(b)
        return bits, out

    @torch.no_grad()
    def encode(self, img: torch.Tensor) -> list[torch.Tensor]:
        """img (B, 3, H, W) -> per-scale ids, a list of (B, h*w) int64 (packed bits)."""
        return [pack_bits(b) for b in self.residual_quantize(self.features(img).float())[0]]

    def canvas_from_bits(self, bits: list[torch.Tensor]) -> torch.Tensor:
        canvas = self.new_canvas(bits[0].shape[0], bits[0].device)
        for b, grid in zip(bits, self.grids):
            canvas = self.add_codes(canvas, self.code_map(b, grid))
        return canvas

    def decode(self, ids: list[torch.Tensor]) -> torch.Tensor:
        """Per-scale ids (B, h*w) -> image (B, 3, H, W) clamped to [-1, 1]."""
        canvas = self.canvas_from_bits([unpack_bits(i, self.bits) for i in ids])
        return self.decode_features(canvas).clamp(-1, 1)

    def quantize_train(self, f: torch.Tensor, beta: float | None = None
                       ) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor]]:
        """Differentiable quantisation for tokenizer training, f (B, d, H, W) fp32 -> (the quantised canvas with the
        released straight-through gradient, beta * |sg(out) - f|^2 as a commitment term (the released quantiser
        returns no auxiliary loss when its entropy penalty is off), per-scale counts of every bit being 0 and 1,
        (2d,) float each, (bit 0: 0, bit 0: 1, bit 1: 0, ...): the tokenizer trainer's usage statistics)."""
        beta = self.cfg.beta if beta is None else beta
        bits, out = self.residual_quantize(f)
        usage = []
        for b in bits:
            ones = b.flatten(0, 1).sum(0).float()
            usage.append(torch.stack([b.shape[0] * b.shape[1] - ones, ones], dim=-1).flatten())
        return out, beta * F.mse_loss(out.detach(), f), usage

    def self_correct(self, f: torch.Tensor, grids, flip_scales: int = 0, strength: float = 0.0,
                     generator: torch.Generator | None = None) -> tuple[list[torch.Tensor], torch.Tensor]:
        """Bitwise self-correction (Infinity's training inputs and targets), features f (B, d, H, W) fp32.

        Scale s: residual = f - canvas, area-down (not at the last scale), bits = its signs (the target).  For s
        < ``flip_scales`` a strength r is drawn uniformly from {0, 0.01, ..., strength} and each bit is flipped with
        probability r; the flipped bits' codes join the canvas, so later scales learn to correct them.  The input of
        step s+1 is the canvas trilinear-resized to its grid.  Returns (per-scale target bits (B, n_s, d) int64,
        inputs of steps 1..S-1 (B, L - n_0, d))."""
        targets, inputs = [], []
        canvas = torch.zeros_like(f)
        for s, grid in enumerate(grids):
            residual = f - canvas
            if s != len(grids) - 1:
                residual = resize(residual, grid, "area")
            codes, bits = sign_quantize(residual)
            targets.append(bits)
            if s < flip_scales:
                r = torch.randint(0, round(100 * strength) + 1, (), generator=generator).item() * 0.01
                flip = torch.rand(bits.shape, generator=generator) < r
                codes = self.code_map(torch.where(flip.to(bits.device), 1 - bits, bits), grid)
            canvas = self.add_codes(canvas, codes)
            if s < len(grids) - 1:
                inputs.append(self.next_input(canvas, grids[s + 1]))
        return targets, torch.cat(inputs, dim=1)


TOKENIZERS["bsq"] = MultiScaleBSQTokenizer  # registered here: models.py imports this module at its end
