"""Front ends: what a separator sees and how its masks become estimates.

``STFT`` for audio (STFT / iSTFT, log magnitudes in, masks on the complex spectrum, the mixture's phase out) and
``Pixels`` for images (intensities in, masks on the intensities out). Both offer the same calls, so a method
does not care which one it has: ``front_end(x)`` (the representation masks act on), ``features(x, rep)``
(the network input), ``apply_masks(masks, x, rep)`` and ``inverse(rep, length)``.

Everything here runs in float32 even inside a bf16/fp16 autocast region (spectra and phases lose
too much in half precision) and on whatever device its input lives on.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torchaudio
from torch import Tensor, nn


@dataclass
class STFTConfig:
    """Short-time Fourier transform settings (sample counts at the dataset's sample rate)."""

    n_fft: int = 512  # FFT size; n_fft // 2 + 1 frequency bins
    win_length: int = 400  # Hann window length, <= n_fft
    hop_length: int = 160  # hop between frames
    log_eps: float = 1e-6  # floor added before taking log magnitude for network inputs


def fp32(fn):
    """Run ``fn`` with autocast off and float32 tensors in, whatever precision the caller uses."""

    def wrapper(self, *args, **kwargs):
        device_type = next((a.device.type for a in args if isinstance(a, Tensor)), "cpu")
        with torch.autocast(device_type=device_type, enabled=False):
            args = tuple(a.float() if isinstance(a, Tensor) and not a.is_complex() else a for a in args)
            return fn(self, *args, **kwargs)

    wrapper.__name__, wrapper.__doc__ = fn.__name__, fn.__doc__
    return wrapper


class STFT(nn.Module):
    """Complex STFT and its inverse with one set of parameters (torchaudio transforms, centred frames)."""

    def __init__(self, cfg: STFTConfig):
        super().__init__()
        self.cfg = cfg
        self.spec = torchaudio.transforms.Spectrogram(
            n_fft=cfg.n_fft, win_length=cfg.win_length, hop_length=cfg.hop_length, power=None
        )
        self.ispec = torchaudio.transforms.InverseSpectrogram(
            n_fft=cfg.n_fft, win_length=cfg.win_length, hop_length=cfg.hop_length
        )

    def _apply(self, fn, *args, **kwargs):
        # a module cast to half precision ("bf16-true", .half()) must not take the window with it
        super()._apply(fn, *args, **kwargs)
        for transform in (self.spec, self.ispec):
            if transform.window.dtype in (torch.float16, torch.bfloat16):
                transform.window = torch.hann_window(self.cfg.win_length, device=transform.window.device)
        return self

    @property
    def n_bins(self) -> int:
        return self.cfg.n_fft // 2 + 1

    def n_frames(self, n_samples: int) -> int:
        return n_samples // self.cfg.hop_length + 1

    @fp32
    def forward(self, wave: Tensor) -> Tensor:
        """(..., T) waveform → (..., F, N) complex spectrum."""
        return self.spec(wave)

    @fp32
    def inverse(self, spec: Tensor, length: int) -> Tensor:
        """(..., F, N) complex spectrum → (..., length) waveform."""
        return self.ispec(spec.to(torch.complex64), length)

    @fp32
    def magphase(self, wave: Tensor) -> tuple[Tensor, Tensor]:
        """Magnitude and phase (radians) of the STFT of a waveform."""
        spec = self(wave)
        return spec.abs(), torch.angle(spec)

    @fp32
    def log_magnitude(self, wave: Tensor, spec: Tensor | None = None) -> Tensor:
        """Log-compressed magnitude, the networks' input: (..., T) → (..., F, N) (``spec``: its STFT, if known)."""
        return torch.log((self(wave) if spec is None else spec).abs() + self.cfg.log_eps)

    def features(self, wave: Tensor, spec: Tensor | None = None) -> Tensor:
        """The network input: the log magnitude."""
        return self.log_magnitude(wave, spec)

    @fp32
    def apply_masks(self, masks: Tensor, mixture: Tensor, spec: Tensor | None = None) -> Tensor:
        """Masked magnitudes with the mixture's phase, back to waveforms.

        masks (B, K, F, N) real, mixture (B, T) → (B, K, T). Masks that sum to one over K give
        estimates that sum to the mixture (up to float rounding): mixture consistency for free.
        """
        spec = (self(mixture) if spec is None else spec).unsqueeze(1)  # (B, 1, F, N); pass it to skip a 2nd STFT
        return self.inverse(masks * spec, mixture.shape[-1])

    @fp32
    def griffin_lim(self, magnitude: Tensor, spec: Tensor, length: int, iterations: int) -> Tensor:
        """Waveforms whose STFT magnitudes approach ``magnitude`` (..., F, N), starting from ``spec``'s phase
        (Griffin & Lim 1984: alternate the inverse STFT and re-imposing the target magnitude)."""
        phase = spec / spec.abs().clamp_min(1e-12)
        for _ in range(iterations):
            rebuilt = self(self.inverse(magnitude * phase, length))
            phase = rebuilt / rebuilt.abs().clamp_min(1e-12)
        return self.inverse(magnitude * phase, length)



class Pixels(nn.Module):
    """The image front end: an image (B, H, W) of non-negative intensities is its own representation.

    Mixtures of images are additive (NES's image setting), so a soft mask on the mixture's intensities splits
    it into estimates that add up to it, as a spectral mask does for audio. The network sees the intensities
    themselves (the mask U-Net normalises its input).
    """

    @fp32
    def forward(self, image: Tensor) -> Tensor:
        return image

    @fp32
    def inverse(self, image: Tensor, length: int | None = None) -> Tensor:
        return image

    @fp32
    def features(self, image: Tensor, rep: Tensor | None = None) -> Tensor:
        return image

    @fp32
    def apply_masks(self, masks: Tensor, mixture: Tensor, rep: Tensor | None = None) -> Tensor:
        """masks (B, K, H, W), mixture (B, H, W) → (B, K, H, W) estimates that sum to the mixture."""
        return masks * mixture.unsqueeze(1)
