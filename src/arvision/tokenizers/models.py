"""Image <-> token tokenizers: VAR's multi-scale residual VQ-VAE and LlamaGen's single-scale VQ.

Both are the same conv encoder/decoder around a codebook; they differ in how features become tokens.
Images are (B, 3, H, W) in [-1, 1].
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from arvision.config import TokenizerConfig
from arvision.tokenizers.convnet import Decoder, Encoder
from arvision.tokenizers.quantizers import Codebook, PhiBank


class ConvTokenizer(nn.Module):
    """Encoder -> quant_conv -> codebook -> post_quant_conv -> decoder."""

    def __init__(self, cfg: TokenizerConfig):
        super().__init__()
        self.cfg = cfg
        ks = cfg.quant_conv_ks
        self.encoder = Encoder(cfg.ch, cfg.ch_mult, cfg.num_res_blocks, cfg.z_channels, cfg.dropout, cfg.attn_style)
        self.decoder = Decoder(cfg.ch, cfg.dec_ch_mult, cfg.num_res_blocks, cfg.z_channels, cfg.dropout,
                               cfg.attn_style)
        self.quant_conv = nn.Conv2d(cfg.z_channels, cfg.embed_dim, ks, 1, ks // 2)
        self.post_quant_conv = nn.Conv2d(cfg.embed_dim, cfg.z_channels, ks, 1, ks // 2)

    @property
    def codebook(self) -> Codebook:
        return self.quantize

    def features(self, img: torch.Tensor) -> torch.Tensor:
        """img (B, 3, H, W) -> pre-quantisation features (B, D, H/f, W/f)."""
        return self.quant_conv(self.encoder(img))

    def decode_features(self, f: torch.Tensor) -> torch.Tensor:
        """Quantised features (B, D, h, w) -> image (B, 3, h*f, w*f), not clamped."""
        return self.decoder(self.post_quant_conv(f))


class MultiScaleVQTokenizer(ConvTokenizer):
    """VAR's tokenizer: scale si quantises the area-downsampled residual at side ``patch_nums[si]``.

    The canvas f_hat (B, D, p, p) with p = patch_nums[-1] accumulates phi(bicubic-up(codes of each scale)).
    """

    def __init__(self, cfg: TokenizerConfig):
        super().__init__(cfg)
        self.patch_nums = cfg.patch_nums
        self.quantize = Codebook(cfg.vocab_size, cfg.embed_dim, cfg.l2_norm)
        self.quantize.quant_resi = PhiBank(cfg.embed_dim, len(cfg.patch_nums), cfg.share_quant_resi, cfg.quant_resi)

    # -- the canvas update, shared by encoding, teacher forcing and sampling -------------------------
    def add_scale(self, si: int, f_hat: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        """Add scale ``si``'s code map h (B, D, pn, pn) to the canvas f_hat (B, D, p, p) in place; returns the
        added term phi(up(h)) (B, D, p, p)."""
        p = self.patch_nums[-1]
        if si != len(self.patch_nums) - 1:
            h = F.interpolate(h, size=(p, p), mode="bicubic")
        h = self.quantize.quant_resi(si, h)
        f_hat.add_(h)
        return h

    def next_input(self, si: int, f_hat: torch.Tensor) -> torch.Tensor:
        """The transformer input of step si+1: area-down of the canvas, (B, pn_{si+1}^2, D)."""
        pn = self.patch_nums[si + 1]
        B, D = f_hat.shape[:2]
        return F.interpolate(f_hat, size=(pn, pn), mode="area").view(B, D, pn * pn).transpose(1, 2)

    def new_canvas(self, batch: int, device=None, dtype=torch.float32) -> torch.Tensor:
        p = self.patch_nums[-1]
        return torch.zeros(batch, self.cfg.embed_dim, p, p, device=device, dtype=dtype)

    # -- image <-> tokens ------------------------------------------------------------------------------
    @torch.no_grad()
    def encode(self, img: torch.Tensor) -> list[torch.Tensor]:
        """img (B, 3, H, W) -> per-scale token ids, a list of (B, pn^2) int64."""
        return self.quantize_features(self.features(img))[0]

    def quantize_features(self, f: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
        """Residual quantisation of features f (B, D, p, p) -> (per-scale ids, final canvas f_hat)."""
        B, D, H, W = f.shape
        if (H, W) != (self.patch_nums[-1],) * 2:
            raise ValueError(f"features are {H}x{W} but the last scale is {self.patch_nums[-1]}")
        f_rest = f.detach().clone()
        f_hat = torch.zeros_like(f_rest)
        ids = []
        last = len(self.patch_nums) - 1
        for si, pn in enumerate(self.patch_nums):
            z = f_rest if si == last else F.interpolate(f_rest, size=(pn, pn), mode="area")
            idx = self.quantize.quantize(z.permute(0, 2, 3, 1).reshape(-1, D))
            h = self.quantize.lookup(idx.view(B, pn, pn)).permute(0, 3, 1, 2)
            f_rest.sub_(self.add_scale(si, f_hat, h))
            ids.append(idx.view(B, pn * pn))
        return ids, f_hat

    def ids_to_maps(self, ids: list[torch.Tensor]) -> list[torch.Tensor]:
        """Per-scale ids (B, pn^2) -> code maps (B, D, pn, pn)."""
        return [self.quantize.lookup(t).transpose(1, 2).reshape(t.shape[0], -1, pn, pn)
                for t, pn in zip(ids, self.patch_nums)]

    def canvas_from_ids(self, ids: list[torch.Tensor]) -> torch.Tensor:
        """All scales' ids -> the final canvas f_hat (B, D, p, p)."""
        f_hat = self.new_canvas(ids[0].shape[0], ids[0].device)
        for si, h in enumerate(self.ids_to_maps(ids)):
            self.add_scale(si, f_hat, h)
        return f_hat

    def decode(self, ids: list[torch.Tensor]) -> torch.Tensor:
        """Per-scale ids -> image (B, 3, H, W) clamped to [-1, 1]."""
        return self.decode_features(self.canvas_from_ids(ids)).clamp(-1, 1)

    def teacher_inputs(self, ids: list[torch.Tensor]) -> torch.Tensor:
        """Transformer inputs for steps 1..S-1 built from ground-truth ids: (B, L - pn_0^2, D).

        Uses exactly the sampler's canvas update (``add_scale`` then ``next_input``)."""
        maps = self.ids_to_maps(ids)
        f_hat = self.new_canvas(ids[0].shape[0], ids[0].device)
        inputs = []
        for si in range(len(self.patch_nums) - 1):
            self.add_scale(si, f_hat, maps[si])
            inputs.append(self.next_input(si, f_hat))
        return torch.cat(inputs, dim=1)


class VQTokenizer(ConvTokenizer):
    """LlamaGen's tokenizer: one code per latent position, raster order."""

    def __init__(self, cfg: TokenizerConfig):
        super().__init__(cfg)
        self.quantize = Codebook(cfg.vocab_size, cfg.embed_dim, cfg.l2_norm)

    @torch.no_grad()
    def encode(self, img: torch.Tensor) -> torch.Tensor:
        """img (B, 3, H, W) -> ids (B, h*w) int64 in raster order."""
        f = self.features(img)
        B, D, h, w = f.shape
        return self.quantize.quantize(f.permute(0, 2, 3, 1).reshape(-1, D)).view(B, h * w)

    def ids_to_features(self, ids: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        """ids (B, h*w) -> code map (B, D, h, w)."""
        B = ids.shape[0]
        return self.quantize.lookup(ids).view(B, grid[0], grid[1], -1).permute(0, 3, 1, 2).contiguous()

    def decode(self, ids: torch.Tensor, grid: tuple[int, int] | None = None) -> torch.Tensor:
        """ids (B, h*w) -> image (B, 3, H, W), not clamped (the official ``decode_code``)."""
        if grid is None:
            side = round(ids.shape[1] ** 0.5)
            grid = (side, side)
        return self.decode_features(self.ids_to_features(ids, grid))


def build_tokenizer(cfg: TokenizerConfig) -> ConvTokenizer:
    return MultiScaleVQTokenizer(cfg) if cfg.kind == "multiscale" else VQTokenizer(cfg)
