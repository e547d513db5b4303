"""The generator of a GLO model (Bojanowski et al. 2018, "Optimizing the latent space of generative networks").

GLO has no encoder: every training example owns a latent code, and codes and generator are learnt together to
reproduce the examples. Here an example is a log-magnitude spectrogram (or an image) of fixed size.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from torch import Tensor, nn


@dataclass
class GLOConfig:
    """Size of the GLO generator and its codes."""

    latent_dim: int = 64  # size of each example's code (codes live on the unit sphere, as in GLO)
    channels: int = 32  # channels of the full-resolution layer; doubled at each level below, up to max_channels
    max_channels: int = 256
    levels: int = 5  # upsamplings by 2 from a seed of (H / 2^levels, W / 2^levels) cells


class GLOGenerator(nn.Module):
    """(B, latent_dim) codes → (B, H, W) maps: a linear layer to a coarse grid, then transposed convolutions that
    double both axes at each level (batch norm, ReLU), a 3×3 head, cropped to (H, W)."""

    def __init__(self, cfg: GLOConfig, shape: tuple[int, int]):
        super().__init__()
        self.cfg, self.shape = cfg, shape
        scale = 2**cfg.levels
        self.seed_shape = (math.ceil(shape[0] / scale), math.ceil(shape[1] / scale))
        widths = [min(cfg.channels * 2**i, cfg.max_channels) for i in range(cfg.levels + 1)]
        self.project = nn.Linear(cfg.latent_dim, widths[-1] * self.seed_shape[0] * self.seed_shape[1])
        layers: list[nn.Module] = []
        for i in reversed(range(cfg.levels)):
            layers += [nn.ConvTranspose2d(widths[i + 1], widths[i], 4, stride=2, padding=1), nn.BatchNorm2d(widths[i]),
                       nn.ReLU()]
        self.up = nn.Sequential(*layers)
        self.head = nn.Conv2d(widths[0], 1, 3, padding=1)

    def forward(self, z: Tensor) -> Tensor:
        x = self.project(z).view(z.shape[0], -1, *self.seed_shape)
        return self.head(self.up(x))[:, 0, : self.shape[0], : self.shape[1]]
