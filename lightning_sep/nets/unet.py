"""Mask U-Net: log-magnitude spectrogram in, one soft mask per source out (masks sum to one).

The encoder halves frequency and time with strided convolutions and the decoder doubles them back with
transposed convolutions, concatenating the encoder's features at each scale (Jansson et al. 2017 style). Strided
layers keep the work at full resolution to the last layer, which is what makes this trainable on a CPU.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn


@dataclass
class UNetConfig:
    """Size of the mask U-Net."""

    depth: int = 5  # number of down/up-sampling levels (each halves frequency and time)
    channels: int = 16  # channels of the first level; doubled at each level below
    max_channels: int = 256  # cap on channels per level
    kernel_size: int = 3  # encoder kernel (odd)
    dropout: float = 0.0  # dropout after the three deepest decoder levels
    frequency_input: bool = False  # add the row position (frequency bin) as a second input channel: lets the
    #                               convolutions tell low from high frequencies (they are otherwise shift-equivariant)
    top_channels: int = 0  # channels of the full-resolution decoder output (0: same as channels); the
    #                        full-resolution layers cost the most per channel, and a mask needs few


def _down(cin: int, cout: int, k: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, k, stride=2, padding=k // 2), nn.BatchNorm2d(cout), nn.LeakyReLU(0.2))


def _up(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.ConvTranspose2d(cin, cout, 4, stride=2, padding=1), nn.BatchNorm2d(cout), nn.ReLU())


class MaskUNet(nn.Module):
    """U-Net with skip connections over (frequency, time).

    ``forward`` takes (B, F, N) log magnitudes and returns (B, K, F, N) masks that sum to one over K
    (a softmax; with K = 2 this is a sigmoid mask and its complement), so masked estimates always add
    up to the mixture (or, with ``activation="sigmoid"``, K independent masks). Any F and N work: the input is
    padded to a multiple of 2**depth and cropped back; an odd top bin (F = 2**depth * n + 1, e.g. the Nyquist bin
    of n_fft = 256) shares its neighbour's mask instead of padding a whole block of empty bins.
    """

    def __init__(self, n_sources: int, cfg: UNetConfig, activation: str = "softmax"):
        """``activation``: softmax (masks sum to one) or sigmoid (each mask free in [0, 1])."""
        super().__init__()
        if activation not in ("softmax", "sigmoid"):
            raise ValueError(f"mask activation {activation!r} is not one of 'softmax', 'sigmoid'")
        self.n_sources, self.cfg, self.activation = n_sources, cfg, activation
        top = cfg.top_channels or cfg.channels
        widths = [min(cfg.channels * 2**i, cfg.max_channels) for i in range(cfg.depth)]
        self.norm = nn.BatchNorm2d(1)
        pairs = zip([2 if cfg.frequency_input else 1] + widths[:-1], widths, strict=True)
        self.down = nn.ModuleList(_down(cin, cout, cfg.kernel_size) for cin, cout in pairs)
        # decoder level i takes the level below (concatenated with its skip, except at the bottom)
        self.up = nn.ModuleList(
            _up(widths[i] * (1 if i == cfg.depth - 1 else 2), widths[i - 1] if i > 0 else top)
            for i in reversed(range(cfg.depth))
        )
        self.drop = nn.Dropout2d(cfg.dropout)
        self.head = nn.Conv2d(top + 1, n_sources, 3, padding=1)
        # channels-last convolutions run about 1.3x faster on CPU (oneDNN) and suit tensor cores on GPUs
        self.to(memory_format=torch.channels_last)

    def forward(self, log_mag: Tensor) -> Tensor:
        _, n_freq, n_frames = log_mag.shape
        mult = 2**self.cfg.depth
        x = log_mag[:, :-1] if n_freq % mult == 1 else log_mag
        height = x.shape[1]
        x = F.pad(x[:, None], (0, -n_frames % mult, 0, -height % mult), mode="replicate")
        x = x.contiguous(memory_format=torch.channels_last)
        x = inp = self.norm(x)
        if self.cfg.frequency_input:
            rows = torch.arange(x.shape[2], device=x.device, dtype=x.dtype) * (2 / height) - 1  # -1 at bin 0, 1 at top
            x = torch.cat([x, rows.view(1, 1, -1, 1).expand(x.shape[0], 1, -1, x.shape[3])], dim=1)
            x = x.contiguous(memory_format=torch.channels_last)
        skips = []
        for down in self.down:
            x = down(x)
            skips.append(x)
        skips.pop()  # the bottom level feeds the decoder directly
        for i, up in enumerate(self.up):
            x = up(x)
            if i < 3:
                x = self.drop(x)
            if skips:
                x = torch.cat([x, skips.pop()], dim=1)
        # the head sees the decoder's features and the normalised input; convolving them apart and adding
        # equals convolving their concatenation, without copying a full-resolution tensor between memory
        # formats (a one-channel tensor cannot be channels-last, so the concatenation was not either)
        w, c = self.head.weight, x.shape[1]
        logits = F.conv2d(x, w[:, :c], self.head.bias, padding=1) + F.conv2d(inp, w[:, c:], padding=1)
        logits = logits[..., :height, :n_frames]
        if height < n_freq:
            logits = torch.cat([logits, logits[:, :, -1:]], dim=2)
        if self.activation == "sigmoid":
            return torch.sigmoid(logits.float())
        return torch.softmax(logits.float(), dim=1)
