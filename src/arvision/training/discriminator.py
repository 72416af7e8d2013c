"""A small PatchGAN discriminator and the hinge losses, for adversarial tokenizer training.

Layout (pix2pix / taming style, GroupNorm instead of BatchNorm so the output of one image never depends on the
rest of the batch): conv 4x4 stride 2 + LeakyReLU(0.2), then ``n_layers - 1`` x [conv 4x4 stride 2 + GroupNorm +
LeakyReLU(0.2)] doubling the width (capped at 8x), then a 3x3 conv to one logit per patch.  An S-pixel image gives
an (S / 2**n_layers)-sided logit map.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from arvision.errors import ArvisionError


def _norm(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(math.gcd(32, channels), channels, eps=1e-6)


class PatchDiscriminator(nn.Module):
    """Image (B, 3, S, S) in [-1, 1] -> patch logits (B, 1, S / 2**n_layers, S / 2**n_layers)."""

    def __init__(self, in_channels: int = 3, ch: int = 64, n_layers: int = 3, seed: int = 0):
        super().__init__()
        if n_layers < 1 or ch < 1:
            raise ArvisionError(f"discriminator needs n_layers >= 1 and ch >= 1, got {n_layers}, {ch}")
        self.n_layers = n_layers
        layers: list[nn.Module] = [nn.Conv2d(in_channels, ch, 4, 2, 1), nn.LeakyReLU(0.2)]
        c = ch
        for i in range(1, n_layers):
            c_out = ch * min(2**i, 8)
            layers += [nn.Conv2d(c, c_out, 4, 2, 1), _norm(c_out), nn.LeakyReLU(0.2)]
            c = c_out
        layers.append(nn.Conv2d(c, 1, 3, 1, 1))
        self.main = nn.Sequential(*layers)
        self.reset_parameters(seed)

    @torch.no_grad()
    def reset_parameters(self, seed: int = 0) -> None:
        """N(0, 0.02) conv weights, zero biases, unit norm gains; drawn from a private generator (reproducible)."""
        g = torch.Generator().manual_seed(seed)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                m.weight.copy_(torch.randn(m.weight.shape, generator=g) * 0.02)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.GroupNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def check_image_size(self, size: int) -> None:
        if size % (2**self.n_layers):
            raise ArvisionError(f"a {self.n_layers}-layer discriminator needs images whose side is a multiple of "
                                f"{2**self.n_layers}, got {size}; use fewer disc_layers")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.main(x)


def hinge_d_loss(logits_real: torch.Tensor, logits_fake: torch.Tensor) -> torch.Tensor:
    """Discriminator hinge loss: (mean relu(1 - D(x)) + mean relu(1 + D(G(x)))) / 2."""
    return 0.5 * (F.relu(1.0 - logits_real).mean() + F.relu(1.0 + logits_fake).mean())


def hinge_g_loss(logits_fake: torch.Tensor) -> torch.Tensor:
    """Generator (tokenizer) side of the hinge game: -mean D(G(x))."""
    return -logits_fake.mean()


class Adversary:
    """The discriminator side of tokenizer training: the PatchGAN, its own AdamW and (with several processes) its
    DistributedDataParallel wrapper.  ``generator_loss`` gives the tokenizer's loss term, ``step`` trains the
    discriminator on real images and detached reconstructions."""

    def __init__(self, image_size: int, ch: int, n_layers: int, lr: float, weight_decay: float, grad_clip: float,
                 seed: int, dist_info):
        from arvision.training.optim import make_adamw

        self.disc = PatchDiscriminator(3, ch, n_layers, seed=seed).to(dist_info.device)
        self.disc.check_image_size(image_size)
        self.wrapped = self.disc
        if dist_info.world > 1:
            from torch.nn.parallel import DistributedDataParallel

            ids = [dist_info.device.index] if dist_info.device.type == "cuda" else None
            self.wrapped = DistributedDataParallel(self.disc, device_ids=ids)
        self.optimizer = make_adamw(self.disc, lr, weight_decay)
        self.grad_clip = grad_clip

    def generator_loss(self, fake: torch.Tensor, autocast) -> torch.Tensor:
        """Hinge generator loss of ``fake``; its gradient reaches the generator only, not the discriminator."""
        self.disc.requires_grad_(False)
        try:
            with autocast:
                return hinge_g_loss(self.disc(fake).float())
        finally:
            self.disc.requires_grad_(True)

    def step(self, real: torch.Tensor, fake: torch.Tensor, lr: float, autocast) -> dict:
        """One AdamW step on the hinge loss; real and fake go through one call (one DDP forward per backward)."""
        from arvision.training.optim import set_lr

        with autocast:
            logits = self.wrapped(torch.cat([real, fake.detach()])).float()
        logits_real, logits_fake = logits.chunk(2)
        loss = hinge_d_loss(logits_real, logits_fake)
        set_lr(self.optimizer, lr)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.disc.parameters(), self.grad_clip or math.inf)
        self.optimizer.step()
        return {"d_loss": loss.item(), "logits_real": logits_real.mean().item(),
                "logits_fake": logits_fake.mean().item()}
