"""Image <-> token tokenizers: VAR's multi-scale residual VQ-VAE, LlamaGen's single-scale VQ and FlexVAR's
multi-scale VQ without residuals.

All are the same conv encoder/decoder around a codebook; they differ in how features become tokens.
Images are (B, 3, H, W) in [-1, 1].  ``TokenizerConfig.kind`` names a class of ``TOKENIZERS``; each class checks
the config fields it reads (``check_config``) and says which scale sides it tokenises (``scale_sides``).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from arvision.config import TokenizerConfig
from arvision.errors import ArvisionError
from arvision.tokenizers.convnet import Decoder, Encoder
from arvision.tokenizers.quantizers import Codebook, PhiBank


class ConvTokenizer(nn.Module):
    """Encoder -> quant_conv -> codebook -> post_quant_conv -> decoder."""

    code_table = True  # its codes are rows of ``quantize.embedding`` (the tokenizer trainer restarts dead ones)

    @staticmethod
    def usage_size(cfg: TokenizerConfig) -> int:
        """The length of each scale's usage counts that ``quantize_train`` returns (one per code)."""
        return cfg.vocab_size

    @staticmethod
    def check_config(cfg: TokenizerConfig) -> None:
        """Raise ArvisionError for config fields this kind of tokenizer cannot use."""

    @staticmethod
    def scale_sides(cfg: TokenizerConfig, image_size: int) -> tuple[int, ...]:
        """The sides of the token maps it makes of an image (one per scale)."""
        return (image_size // cfg.downsample,)

    @staticmethod
    def design(code_dim: int) -> dict:
        """The TokenizerConfig fields its paper fixes, for training from scratch with codes of ``code_dim``:
        LlamaGen's VQ design (z = 4 code dims, split q/k/v convs, 1x1 quant convs, l2-normalised codes)."""
        return {"z_channels": 4 * code_dim, "attn_style": "split", "quant_conv_ks": 1, "l2_norm": True}

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

    def quantize_train(self, f: torch.Tensor, beta: float | None = None
                       ) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor]]:
        """Differentiable quantisation: (straight-through quantised features, vq loss, per-scale hit counts)."""
        raise NotImplementedError

    def forward(self, img: torch.Tensor, beta: float | None = None, return_features: bool = False):
        """Training pass: img (B, 3, H, W) -> (recon (B, 3, H, W) not clamped, vq_loss, per-scale usage counts),
        plus the pre-quantisation features (B, D, h, w) when ``return_features``.

        Quantisation runs in float32 even under autocast (as VAR's quantizer does)."""
        f = self.features(img)
        with torch.autocast(device_type=f.device.type, enabled=False):
            f = f.float()
            f_q, vq_loss, usage = self.quantize_train(f, beta)
        recon = self.decode_features(f_q)
        return (recon, vq_loss, usage, f) if return_features else (recon, vq_loss, usage)


class MultiScaleVQTokenizer(ConvTokenizer):
    """VAR's tokenizer: scale si quantises the area-downsampled residual at side ``patch_nums[si]``.

    The canvas f_hat (B, D, p, p) with p = patch_nums[-1] accumulates phi(bicubic-up(codes of each scale)).
    """

    @staticmethod
    def check_config(cfg: TokenizerConfig) -> None:
        check_scale_list(cfg.patch_nums, minimum=2)
        if cfg.share_quant_resi < 0:
            raise ArvisionError(f"invalid share_quant_resi: {cfg.share_quant_resi!r} (>= 0)")
        if cfg.embed_dim != cfg.z_channels:
            raise ArvisionError(f"invalid embed_dim: {cfg.embed_dim!r} (equal to z_channels={cfg.z_channels} for "
                                "multiscale VQ)")

    @staticmethod
    def scale_sides(cfg: TokenizerConfig, image_size: int) -> tuple[int, ...]:
        return cfg.patch_nums

    @staticmethod
    def design(code_dim: int) -> dict:
        """VAR's VQ-VAE design: z = code dim, fused qkv convs, 3x3 quant convs, Euclidean codes."""
        return {"z_channels": code_dim, "attn_style": "fused", "quant_conv_ks": 3, "l2_norm": False}

    def __init__(self, cfg: TokenizerConfig):
        super().__init__(cfg)
        self.patch_nums = cfg.patch_nums
        self.quantize = Codebook(cfg.vocab_size, cfg.embed_dim, cfg.l2_norm)
        self.quantize.quant_resi = PhiBank(cfg.embed_dim, len(cfg.patch_nums), cfg.share_quant_resi, cfg.quant_resi)

    # -- the canvas update, shared by encoding, teacher forcing and sampling -------------------------
    def scale_term(self, si: int, h: torch.Tensor) -> torch.Tensor:
        """Scale ``si``'s contribution to the canvas: phi(bicubic-up(h)), h (B, D, pn, pn) -> (B, D, p, p)."""
        p = self.patch_nums[-1]
        if si != len(self.patch_nums) - 1:
            h = F.interpolate(h, size=(p, p), mode="bicubic")
        return self.quantize.quant_resi(si, h)

    def add_scale(self, si: int, f_hat: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        """Add scale ``si``'s code map h (B, D, pn, pn) to the canvas f_hat (B, D, p, p) in place; returns the
        added term phi(up(h)) (B, D, p, p)."""
        h = self.scale_term(si, h)
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

    def nearest_ids(self, si: int, z: torch.Tensor) -> torch.Tensor:
        """The nearest code of every position of scale si's residual z (B, D, pn, pn) -> ids (B, pn^2); the
        default ``choose`` of :meth:`residual_quantize` (si unused)."""
        B, D, pn, _ = z.shape
        return self.quantize.quantize(z.permute(0, 2, 3, 1).reshape(-1, D)).view(B, pn * pn)

    def residual_quantize(self, f: torch.Tensor, choose: Callable[[int, torch.Tensor], torch.Tensor] | None = None,
                          on_scale: Callable[[int, torch.Tensor, torch.Tensor], None] | None = None
                          ) -> tuple[list[torch.Tensor], torch.Tensor]:
        """VAR's multi-scale residual quantisation of features f (B, D, p, p): the one loop behind
        ``quantize_features``, ``quantize_train`` and the watermark's ``residual_code_logits``.

        Scale si: z = area-down of the residual to (B, D, pn, pn) (the residual itself at the last scale),
        ids = ``choose(si, z)`` (B, pn^2) (default: the nearest codes), term = phi_si(bicubic-up(codes(ids)))
        (B, D, p, p), f_hat += term, residual -= term; then ``on_scale(si, ids, f_hat)``.

        Gradients: the residual starts as ``f`` itself (pass ``f.detach()`` for none) and the subtracted term is
        detached, so gradients reach f through every scale's residual (hence z) and nothing else; f_hat is the
        sum of the terms with their graph (to the codebook and phi).  Out-of-place updates throughout: the
        caller's f and the f_hat an ``on_scale`` saw are never modified afterwards.

        Returns (per-scale ids, a list of (B, pn^2) int64; the final canvas f_hat (B, D, p, p)).
        """
        B, D, H, W = f.shape
        if (H, W) != (self.patch_nums[-1],) * 2:
            raise ValueError(f"features are {H}x{W} but the last scale is {self.patch_nums[-1]}")
        choose = self.nearest_ids if choose is None else choose
        rest, f_hat, ids = f, torch.zeros_like(f), []
        last = len(self.patch_nums) - 1
        for si, pn in enumerate(self.patch_nums):
            z = rest if si == last else F.interpolate(rest, size=(pn, pn), mode="area")
            idx = choose(si, z)
            term = self.scale_term(si, self.quantize.lookup(idx.view(B, pn, pn)).permute(0, 3, 1, 2))
            f_hat = f_hat + term
            rest = rest - term.detach()  # the codes are a constant of the residual: f's gradient passes through
            ids.append(idx.view(B, pn * pn))
            if on_scale is not None:
                on_scale(si, ids[-1], f_hat)
        return ids, f_hat

    def quantize_features(self, f: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
        """Residual quantisation of features f (B, D, p, p) -> (per-scale ids (B, pn^2), final canvas f_hat)."""
        return self.residual_quantize(f.detach())

    def quantize_train(self, f: torch.Tensor, beta: float | None = None
                       ) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor]]:
        """Differentiable residual quantisation (VAR's ``VectorQuantizer2.forward``), f (B, D, p, p) float32.

        Returns (f_hat_st, vq_loss, usage): the canvas with the value of ``quantize_features(f)[1]`` and the
        straight-through gradient to f; the mean over scales of beta * |sg(f_hat) - f|^2 (commitment, to the
        encoder) + |f_hat - sg(f)|^2 (to the codes and phi), f_hat the canvas after that scale; per-scale code
        hit counts, (V,) float each.  The same ``residual_quantize`` as ``quantize_features``: bit-identical ids
        and canvas.
        """
        beta = self.cfg.beta if beta is None else beta
        f_no_grad = f.detach()
        vq_loss = f.new_zeros(())
        usage = []

        def on_scale(si, ids, f_hat):
            nonlocal vq_loss
            usage.append(ids.flatten().bincount(minlength=self.cfg.vocab_size).float())
            vq_loss = vq_loss + F.mse_loss(f_hat.detach(), f).mul(beta) + F.mse_loss(f_hat, f_no_grad)

        _, f_hat = self.residual_quantize(f_no_grad, on_scale=on_scale)
        vq_loss = vq_loss / len(self.patch_nums)
        # straight-through: the value of f_hat exactly (f - sg(f) is exactly 0), the gradient of f
        return f_hat.detach() + (f - f_no_grad), vq_loss, usage

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

    def quantize_train(self, f: torch.Tensor, beta: float | None = None
                       ) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor]]:
        """Differentiable quantisation (LlamaGen's ``VectorQuantizer.forward``), f (B, D, h, w) float32.

        With ``l2_norm`` the features are unit-normalised per position (z) and so are the codes.  Returns
        (z_q_st, vq_loss, usage): the code map with the value of the looked-up codes and the straight-through
        gradient to z; |z_q - sg(z)|^2 + beta * |sg(z_q) - z|^2; [hit counts (V,) float].
        """
        beta = self.cfg.beta if beta is None else beta
        B, D, h, w = f.shape
        z = f.permute(0, 2, 3, 1)
        idx = self.quantize.quantize(z.detach().reshape(-1, D))  # as encode(): the codebook normalises itself
        if self.cfg.l2_norm:
            z = F.normalize(z, dim=-1)
        z_q = self.quantize.lookup(idx).view(B, h, w, D)
        vq_loss = F.mse_loss(z_q, z.detach()) + beta * F.mse_loss(z_q.detach(), z)
        z_st = z_q.detach() + (z - z.detach())  # value of z_q exactly, gradient of z
        usage = [idx.bincount(minlength=self.cfg.vocab_size).float()]
        return z_st.permute(0, 3, 1, 2), vq_loss, usage

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


class MultiScaleIndependentTokenizer(VQTokenizer):
    """FlexVAR's tokenizer: LlamaGen's VQ, with every scale quantised on its own.

    Scale (h, w) quantises the encoder features area-resized to h x w (no residual: every scale sees the same
    features), and any scale's codes decode to an image of 16 x its side (h*f, w*f).  ``patch_nums`` is the list
    it was trained on; encoding takes any list (FlexVAR samples and trains on others).  Training reconstructs
    every scale of ``patch_nums`` (``forward`` returns the reconstructions coarse to fine)."""

    @staticmethod
    def check_config(cfg: TokenizerConfig) -> None:
        check_scale_list(cfg.patch_nums, minimum=1)

    @staticmethod
    def scale_sides(cfg: TokenizerConfig, image_size: int) -> tuple[int, ...]:
        return cfg.patch_nums

    def quantize_scales(self, f: torch.Tensor, grids) -> list[torch.Tensor]:
        """Features (B, D, h, w) -> ids (B, h_s * w_s) of every scale grid (h_s, w_s), raster order each."""
        B, D = f.shape[:2]
        out = []
        for h, w in grids:
            z = F.interpolate(f, size=(h, w), mode="area")
            out.append(self.quantize.quantize(z.permute(0, 2, 3, 1).reshape(-1, D)).view(B, h * w))
        return out

    @torch.no_grad()
    def encode(self, img: torch.Tensor, sides=None) -> list[torch.Tensor]:
        """img (B, 3, H, W) -> per-scale ids, a list of (B, p^2) int64 (``sides``: default ``patch_nums``)."""
        sides = self.cfg.patch_nums if sides is None else sides
        return self.quantize_scales(self.features(img), [(p, p) for p in sides])

    def decode(self, ids: torch.Tensor, grid: tuple[int, int] | None = None) -> torch.Tensor:
        """One scale's ids (B, h*w) -> image (B, 3, h*f, w*f), not clamped (the official ``decode_code``)."""
        return super().decode(ids, grid)

    def forward(self, img: torch.Tensor, beta: float | None = None, return_features: bool = False):
        """Training pass: every scale of ``patch_nums`` quantised from the area-resized features and decoded.

        Returns (reconstructions coarse to fine, a list of (B, 3, p*f, p*f) not clamped; the vq loss averaged over
        scales; per-scale usage counts), plus the features (B, D, h, w) when ``return_features``."""
        f = self.features(img)
        recons, losses, usage = [], [], []
        with torch.autocast(device_type=f.device.type, enabled=False):
            f32 = f.float()
            for p in self.cfg.patch_nums:
                z = F.interpolate(f32, size=(p, p), mode="area")
                z_q, loss, hits = self.quantize_train(z, beta)
                recons.append(z_q)
                losses.append(loss)
                usage += hits
        recons = [self.decode_features(z_q) for z_q in recons]
        vq_loss = torch.stack(losses).mean()
        return (recons, vq_loss, usage, f) if return_features else (recons, vq_loss, usage)


def check_scale_list(sides, minimum: int) -> None:
    """Scale sides must be >= 1 and strictly increasing, at least ``minimum`` of them."""
    sides = tuple(sides)
    if len(sides) < minimum or any(b <= a for a, b in zip(sides, sides[1:])) or (sides and sides[0] < 1):
        raise ArvisionError(f"invalid patch_nums: {sides!r} (at least {minimum} strictly increasing scale "
                            "side(s), each >= 1)")


TOKENIZERS = {"multiscale": MultiScaleVQTokenizer, "vq": VQTokenizer,  # + "bsq": tokenizers/bitwise.py
              "multiscale-independent": MultiScaleIndependentTokenizer}


def build_tokenizer(cfg: TokenizerConfig) -> ConvTokenizer:
    return TOKENIZERS[cfg.kind](cfg)


import arvision.tokenizers.bitwise  # noqa: E402,F401  (registers "bsq" in TOKENIZERS; it subclasses ConvTokenizer)
