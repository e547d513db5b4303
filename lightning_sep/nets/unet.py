"""Mask U-Net: log-magnitude spectrogram in, one soft mask per source out (masks sum to one)."""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn


@dataclass
class UNetConfig:
    """Size of the mask U-Net."""

    depth: int = 4  # number of down/up-sampling levels (each halves frequency and time)
    channels: int = 16  # channels of the first level; doubled at each level below
    max_channels: int = 256  # cap on channels per level
    dropout: float = 0.0  # dropout in the two deepest decoder levels


def _block(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.LeakyReLU(0.2),
        nn.Conv2d(cout, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.LeakyReLU(0.2),
    )


class MaskUNet(nn.Module):
    """U-Net with skip connections over (frequency, time).

    ``forward`` takes (B, F, N) log magnitudes and returns (B, K, F, N) masks that sum to one over K
    (a softmax; with K = 2 this is a sigmoid mask and its complement), so masked estimates always add
    up to the mixture. Any F and N work: the input is padded to a multiple of 2**depth and cropped back.
    """

    def __init__(self, n_sources: int, cfg: UNetConfig):
        super().__init__()
        self.n_sources, self.cfg = n_sources, cfg
        widths = [min(cfg.channels * 2**i, cfg.max_channels) for i in range(cfg.depth + 1)]
        self.norm = nn.BatchNorm2d(1)
        self.down = nn.ModuleList(_block(cin, cout) for cin, cout in zip([1] + widths[:-2], widths[:-1]))
        self.bottom = _block(widths[-2], widths[-1])
        self.up = nn.ModuleList(
            nn.ConvTranspose2d(widths[i + 1], widths[i], 2, stride=2) for i in reversed(range(cfg.depth))
        )
        self.dec = nn.ModuleList(_block(2 * widths[i], widths[i]) for i in reversed(range(cfg.depth)))
        self.drop = nn.Dropout2d(cfg.dropout)
        self.head = nn.Conv2d(widths[0], n_sources, 1)

    def forward(self, log_mag: Tensor) -> Tensor:
        _, n_freq, n_frames = log_mag.shape
        mult = 2**self.cfg.depth
        x = F.pad(log_mag[:, None], (0, -n_frames % mult, 0, -n_freq % mult), mode="replicate")
        x = self.norm(x)
        skips = []
        for block in self.down:
            x = block(x)
            skips.append(x)
            x = F.max_pool2d(x, 2)
        x = self.bottom(x)
        for i, (up, dec) in enumerate(zip(self.up, self.dec)):
            x = dec(torch.cat([up(x), skips.pop()], dim=1))
            if i < 2:
                x = self.drop(x)
        logits = self.head(x)[..., :n_freq, :n_frames]
        return torch.softmax(logits.float(), dim=1)
