"""Separate a user's own recordings with a trained checkpoint: any length, rate and channel count.

Each channel is resampled to the model's rate and separated in overlapping chunks whose estimates are
cross-faded (the fade weights of overlapping chunks add to one, so the chunk-wise mixture consistency
carries over to the whole file). Stems are resampled back to the input's rate. What the model cannot see,
the band above its Nyquist frequency, is shared equally among the stems, so the stems written add up to
the input exactly (up to float rounding).
"""
from __future__ import annotations

from pathlib import Path
from typing import Iterator

import numpy as np
import soundfile as sf
import torch
import torchaudio

from .methods import METHODS
from .methods.base import read_checkpoint


def load_model(checkpoint: Path, device: str = "cpu"):
    from .config import ConfigError

    method = read_checkpoint(checkpoint, None)["hyper_parameters"]["config"]["method"]
    if method not in METHODS:
        raise FileNotFoundError(f"{checkpoint}: trained by method {method!r}, which this version does not have")
    model = METHODS[method].load_from_checkpoint(checkpoint, map_location=device).eval()
    if model.is_image:
        raise ConfigError(f"{checkpoint}: this model separates images, `lightning-sep separate` takes audio files")
    return model


def crossfade_weights(n_chunk: int, n_overlap: int) -> torch.Tensor:
    """Linear fade-in/out over the overlap: overlapping chunks' weights sum to one."""
    w = torch.ones(n_chunk, dtype=torch.float64)
    if n_overlap > 0:
        ramp = (torch.arange(n_overlap, dtype=torch.float64) + 0.5) / n_overlap
        w[:n_overlap], w[-n_overlap:] = ramp, ramp.flip(0)
    return w


@torch.no_grad()
def separate_wave(model, wave: torch.Tensor, chunk: int, overlap: int, device: str = "cpu") -> torch.Tensor:
    """(T,) at the model's rate → (K, T) stems, in overlapping chunks."""
    n = wave.shape[-1]
    if n <= chunk:
        return model.separate(wave[None].to(device))[0].cpu().double()
    hop = chunk - overlap
    starts = list(range(0, n - overlap, hop))
    out = torch.zeros(len(model.stems), n, dtype=torch.float64)
    norm = torch.zeros(n, dtype=torch.float64)
    for i, start in enumerate(starts):
        piece = wave[start : start + chunk]
        w = crossfade_weights(len(piece), overlap)
        if i == 0:
            w[:overlap] = 1.0  # nothing to fade with at the file's start
        if start + chunk >= n:
            w[-min(overlap, len(piece)):] = 1.0  # nor at its end
        est = model.separate(piece[None].to(device))[0].cpu().double()
        out[:, start : start + len(piece)] += est * w
        norm[start : start + len(piece)] += w
    return out / norm


def separate_files(checkpoint: Path, files: list[Path], out: Path, chunk_seconds: float = 10.0,
                   overlap_seconds: float = 1.0, device: str = "cpu") -> Iterator[Path]:
    """Write ``out/<file stem>/<stem>.wav`` (float WAV, input rate and length) for every input file."""
    model = load_model(checkpoint, device)
    rate = model.sample_rate
    chunk, overlap = round(chunk_seconds * rate), round(overlap_seconds * rate)
    if not 0 <= overlap < chunk:
        raise ValueError(f"overlap ({overlap_seconds} s) must be shorter than a chunk ({chunk_seconds} s)")
    for path in files:
        try:
            audio, in_rate = sf.read(path, dtype="float64", always_2d=True)  # (T, C)
        except Exception as e:
            raise FileNotFoundError(f"{path}: cannot read audio ({e}); give WAV, FLAC or OGG files") from e
        x = torch.from_numpy(audio.T.copy())  # (C, T)
        stems = torch.zeros(len(model.stems), *x.shape, dtype=torch.float64)
        for c in range(x.shape[0]):
            low = torchaudio.functional.resample(x[c], in_rate, rate).float() if in_rate != rate else x[c].float()
            est = separate_wave(model, low, chunk, overlap, device)
            if in_rate != rate:
                est = torchaudio.functional.resample(est, rate, in_rate)
            est = est[:, : x.shape[1]]
            est = torch.nn.functional.pad(est, (0, x.shape[1] - est.shape[1]))
            stems[:, c] = est + (x[c] - est.sum(0)) / len(model.stems)  # the unseen band, shared equally
        folder = out / path.stem
        folder.mkdir(parents=True, exist_ok=True)
        for k, stem in enumerate(model.stems):
            target = folder / f"{stem}.wav"
            sf.write(target, np.ascontiguousarray(stems[k].T.numpy()), in_rate, subtype="FLOAT")
            yield target
