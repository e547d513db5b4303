"""Multi-scale least-squares GAN discriminator over (compressed) magnitude spectrograms.

Each scale is a stack of 4×4 stride-2 convolutions with LeakyReLU(0.2) and no normalisation, ending in a 1×1
convolution to one score per patch; the next scale sees the input average-pooled by two. MaskNet's authors use
3 scales, 4 layers and 64 base channels (the MUNIT discriminator).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn


@dataclass
class DiscriminatorConfig:
    """Size of a multi-scale patch discriminator (authors: 3 scales, 4 layers, 64 channels)."""

    scales: int = 3  # input resolutions, each half the previous one
    layers: int = 4  # 4×4 stride-2 convolutions per scale
    channels: int = 64  # channels of the first layer; doubled at each layer after it
    max_channels: int = 512  # cap on channels per layer
    frequency_input: bool = False  # a second input channel holding each bin's frequency (0 to 1), so a patch
    #                                knows its register (convolutions alone see every band alike)


class MultiScaleDiscriminator(nn.Module):
    """(B, F, N) spectrogram → a list of (B, 1, F', N') patch scores, one per scale."""

    def __init__(self, cfg: DiscriminatorConfig):
        super().__init__()
        self.cfg = cfg
        self.scales = nn.ModuleList(self._scale(cfg) for _ in range(cfg.scales))

    @staticmethod
    def _scale(cfg: DiscriminatorConfig) -> nn.Sequential:
        layers: list[nn.Module] = []
        cin = 2 if cfg.frequency_input else 1
        for i in range(cfg.layers):
            cout = min(cfg.channels * 2**i, cfg.max_channels)
            layers += [nn.Conv2d(cin, cout, 4, stride=2, padding=1), nn.LeakyReLU(0.2)]
            cin = cout
        layers.append(nn.Conv2d(cin, 1, 1))
        return nn.Sequential(*layers)

    def forward(self, spec: Tensor) -> list[Tensor]:
        x = spec.unsqueeze(1)
        if self.cfg.frequency_input:
            b, n_freq, n_frames = spec.shape
            height = torch.linspace(0, 1, n_freq, device=spec.device, dtype=spec.dtype)
            x = torch.cat([x, height.view(1, 1, n_freq, 1).expand(b, 1, n_freq, n_frames)], dim=1)
        scores = []
        for i, scale in enumerate(self.scales):
            if i:
                x = F.avg_pool2d(x, 3, stride=2, padding=1, count_include_pad=False)
            scores.append(scale(x))
        return scores


def lsgan_discriminator_loss(d: MultiScaleDiscriminator, real: Tensor, fake: Tensor) -> Tensor:
    """Least-squares loss of the discriminator: real patches towards 1, fake ones towards 0, mean over scales."""
    real_scores, fake_scores = d(real), d(fake)
    terms = [((r - 1) ** 2).mean() + (f**2).mean() for r, f in zip(real_scores, fake_scores, strict=True)]
    return torch.stack(terms).mean()


def lsgan_generator_loss(d: MultiScaleDiscriminator, fake: Tensor) -> Tensor:
    """Least-squares loss of the generator: its fakes' patches towards 1, mean over scales."""
    return torch.stack([((f - 1) ** 2).mean() for f in d(fake)]).mean()
