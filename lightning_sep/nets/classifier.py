"""Frame-level sound-event classifier on log-mel features, with pooling to clip level.

It reads STFT magnitudes (the front end's), not waveforms, so a separator's masked magnitudes can be assessed
directly and differentiably (WeakSep). Convolution blocks halve the mel axis and keep every frame; the mel axis
is then averaged away, a 1-D convolution over time gives per-frame class logits, and a pooling operator turns
frame probabilities into clip probabilities, which is what clip-level (weak) labels can train.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torchaudio
from torch import Tensor, nn


@dataclass
class ClassifierConfig:
    """Size and pooling of the sound-event classifier."""

    n_mels: int = 64  # mel bands of the log-mel input
    channels: int = 32  # channels of the first block; doubled in each block after it
    blocks: int = 4  # convolution blocks (two 3×3 convs each), each halving the mel axis
    max_channels: int = 256  # cap on channels per block
    temporal_kernel: int = 5  # frames seen by the last (1-D, over time) convolution
    pooling: str = "linear_softmax"  # frame → clip probabilities: max, mean, or linear_softmax (Σp²/Σp: leans to the
    #                                  frames where the class is likely, and gives every frame a gradient)
    log_eps: float = 1e-4  # floor before the log of the mel energies (relative to a full-scale sinusoid's)


POOLINGS = ("max", "mean", "linear_softmax")


class SoundEventClassifier(nn.Module):
    """(B, F, N) STFT magnitudes → clip probabilities (B, C) and frame probabilities (B, C, N)."""

    def __init__(self, n_classes: int, cfg: ClassifierConfig, sample_rate: int, n_fft: int):
        super().__init__()
        if cfg.pooling not in POOLINGS:
            raise ValueError(f"classifier pooling {cfg.pooling!r} is not one of {POOLINGS}")
        self.cfg = cfg
        self.mel = torchaudio.transforms.MelScale(cfg.n_mels, sample_rate, n_stft=n_fft // 2 + 1)
        self.full_scale = (n_fft / 4) ** 2  # power of a full-scale sinusoid's peak bin (Hann window of n_fft)
        self.norm = nn.BatchNorm2d(1)
        layers: list[nn.Module] = []
        cin = 1
        for i in range(cfg.blocks):
            cout = min(cfg.channels * 2**i, cfg.max_channels)
            layers += [nn.Conv2d(cin, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU(),
                       nn.Conv2d(cout, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU(),
                       nn.AvgPool2d((2, 1), ceil_mode=True)]
            cin = cout
        self.blocks = nn.Sequential(*layers)
        self.head = nn.Conv1d(cin, n_classes, cfg.temporal_kernel, padding=cfg.temporal_kernel // 2)

    def frame_logits(self, magnitude: Tensor) -> Tensor:
        """(B, F, N) magnitudes → (B, C, N) logits of each class in each frame."""
        with torch.autocast(device_type=magnitude.device.type, enabled=False):
            mel = self.mel(magnitude.float() ** 2)
            x = torch.log(mel / self.full_scale + self.cfg.log_eps)  # levels that do not depend on n_fft
        x = self.blocks(self.norm(x.unsqueeze(1)))
        return self.head(x.mean(dim=2))

    def forward(self, magnitude: Tensor) -> tuple[Tensor, Tensor]:
        frames = torch.sigmoid(self.frame_logits(magnitude).float())
        return pool(frames, self.cfg.pooling), frames


def pool(frames: Tensor, how: str) -> Tensor:
    """(B, C, N) frame probabilities → (B, C) clip probabilities."""
    if how == "max":
        return frames.amax(dim=-1)
    if how == "mean":
        return frames.mean(dim=-1)
    return (frames**2).sum(-1) / frames.sum(-1).clamp_min(1e-7)
