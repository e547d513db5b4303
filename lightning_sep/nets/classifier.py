"""Frame-level sound-event classifier on log-mel features, with pooling to clip level.

It reads STFT magnitudes (the front end's), not waveforms, so a separator's masked magnitudes can be assessed
directly and differentiably (WeakSep). Convolution blocks halve the mel axis and keep every frame; the mel axis
is then averaged away, a 1-D convolution over time gives per-frame class logits, and a pooling operator turns
frame probabilities into clip probabilities, which is what clip-level (weak) labels can train.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
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
    dropout: float = 0.0  # dropout before the per-frame output layer
    freq_masks: int = 0  # training only (SpecAugment): this many random bands of up to mask_bands mel bands set to
    #                      the mean, so the classifier cannot lean on one narrow band of a few training recordings
    mask_bands: int = 8  # widest masked band, in mel bands
    time_masks: int = 0  # training only: this many random spans of up to mask_frames frames set to the mean
    mask_frames: int = 20  # longest masked span, in frames


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
        self.drop = nn.Dropout(cfg.dropout)
        self.head = nn.Conv1d(cin, n_classes, cfg.temporal_kernel, padding=cfg.temporal_kernel // 2)

    def frame_logits(self, magnitude: Tensor) -> Tensor:
        """(B, F, N) magnitudes → (B, C, N) logits of each class in each frame."""
        with torch.autocast(device_type=magnitude.device.type, enabled=False):
            mel = self.mel(magnitude.float() ** 2)
            x = torch.log(mel / self.full_scale + self.cfg.log_eps)  # levels that do not depend on n_fft
        x = self.norm(x.unsqueeze(1))
        if self.training:
            x = self.spec_augment(x)
        x = self.blocks(x)
        return self.head(self.drop(x.mean(dim=2)))

    def spec_augment(self, x: Tensor) -> Tensor:
        """Random mel bands and frame spans of each (B, 1, M, N) example set to 0, the normalised mean."""
        b, _, n_mels, n_frames = x.shape
        keep = torch.ones_like(x)
        for count, widest, size, dim in ((self.cfg.freq_masks, self.cfg.mask_bands, n_mels, 2),
                                         (self.cfg.time_masks, self.cfg.mask_frames, n_frames, 3)):
            positions = torch.arange(size, device=x.device)
            for _ in range(count):
                width = torch.randint(0, widest + 1, (b,), device=x.device)
                start = (torch.rand(b, device=x.device) * (size - width + 1)).long()
                inside = (positions >= start[:, None]) & (positions < (start + width)[:, None])  # (B, size)
                shape = (b, 1, size, 1) if dim == 2 else (b, 1, 1, size)
                keep = keep * (~inside).view(shape).to(x.dtype)
        return x * keep

    def forward(self, magnitude: Tensor) -> tuple[Tensor, Tensor]:
        frames = torch.sigmoid(self.frame_logits(magnitude).float())
        return pool(frames, self.cfg.pooling), frames


def bce(probabilities: Tensor, targets: Tensor, reduction: str = "mean") -> Tensor:
    """Binary cross-entropy of probabilities, in fp32 and outside autocast (CUDA's autocast refuses it on
    probabilities, and bf16 probabilities near 0 or 1 lose the precision it needs)."""
    with torch.autocast(device_type=probabilities.device.type, enabled=False):
        return F.binary_cross_entropy(probabilities.float(), targets.float(), reduction=reduction)


def pool(frames: Tensor, how: str) -> Tensor:
    """(B, C, N) frame probabilities → (B, C) clip probabilities."""
    if how == "max":
        return frames.amax(dim=-1)
    if how == "mean":
        return frames.mean(dim=-1)
    return (frames**2).sum(-1) / frames.sum(-1).clamp_min(1e-7)
