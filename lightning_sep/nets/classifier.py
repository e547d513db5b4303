"""Frame-level sound-event classifier on log-mel features, with pooling to clip level.

It reads STFT magnitudes (the front end's), not waveforms, so a separator's masked magnitudes can be assessed
directly and differentiably (WeakSep). Convolution blocks halve the mel axis and keep every frame; the mel axis
is then averaged away, a 1-D convolution over time gives per-frame class logits, and a pooling operator turns
frame probabilities into clip probabilities, which is what clip-level (weak) labels can train.
"""
from __future__ import annotations

import math
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
    shift_bands: int = 0  # training only: each example's log-mel moved up or down by up to this many mel bands (a
    #                       coarse pitch shift: a new recording of the kind, where a class has only a few)
    tilt_db: float = 0.0  # training only: each example's spectrum tilted by a random slope, from -x dB at the
    #                       lowest mel band to +x dB at the highest or the other way (another microphone, distance)


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
            if self.training:
                x = self.shift_and_tilt(x)
        x = self.norm(x.unsqueeze(1))
        if self.training:
            x = self.spec_augment(x)
        x = self.blocks(x)
        return self.head(self.drop(x.mean(dim=2)))

    def shift_and_tilt(self, x: Tensor) -> Tensor:
        """(B, M, N) log-mel energies, each example shifted by up to ``shift_bands`` bands (the edge band repeated)
        and tilted by up to ±``tilt_db`` across the bands."""
        b, n_mels, _ = x.shape
        bands = torch.arange(n_mels, device=x.device)
        if self.cfg.shift_bands:
            shift = torch.randint(-self.cfg.shift_bands, self.cfg.shift_bands + 1, (b, 1), device=x.device)
            source = (bands - shift).clamp(0, n_mels - 1)  # (B, M)
            x = x.gather(1, source.unsqueeze(-1).expand_as(x))
        if self.cfg.tilt_db:
            slope = (2 * torch.rand(b, 1, device=x.device) - 1) * self.cfg.tilt_db  # dB at the top band
            ramp = 2 * bands / max(n_mels - 1, 1) - 1  # -1 .. 1
            x = x + (slope * ramp).unsqueeze(-1) * (math.log(10) / 10)  # dB of power → natural log
        return x

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


def pool(frames: Tensor, how: str, where: Tensor | None = None) -> Tensor:
    """(..., N) frame probabilities → (...) clip probabilities; only over the frames where ``where`` (0 or 1,
    broadcast to ``frames``) is 1 when it is given (a row without such frames pools to 0)."""
    if where is None:  # the classifier's own forward pass: no mask to build
        if how == "max":
            return frames.amax(dim=-1)
        if how == "mean":
            return frames.mean(dim=-1)
        return (frames**2).sum(-1) / frames.sum(-1).clamp_min(1e-7)
    where = where.expand_as(frames).to(frames.dtype)
    if how == "max":
        return (frames * where).amax(dim=-1)
    if how == "mean":
        return (frames * where).sum(-1) / where.sum(-1).clamp_min(1)
    return (frames**2 * where).sum(-1) / (frames * where).sum(-1).clamp_min(1e-7)
