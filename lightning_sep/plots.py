"""Example audio and spectrogram figures written into run folders (matplotlib, no display needed)."""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import soundfile as sf  # noqa: E402
import torch  # noqa: E402


def write_example(folder: Path, key: str, waves: dict[str, np.ndarray], sample_rate: int, stft) -> Path:
    """Write ``<key>_<name>.flac`` for each waveform and ``<key>.png`` with their log spectrograms stacked."""
    folder.mkdir(parents=True, exist_ok=True)
    peak = max(float(np.abs(w).max()) for w in waves.values()) or 1.0
    scale = min(1.0, 0.99 / peak)  # one common scale keeps the stems' relative levels audible
    for name, wave in waves.items():
        sf.write(folder / f"{key}_{name}.flac", wave * scale, sample_rate, subtype="PCM_16")
    fig, axes = plt.subplots(len(waves), 1, figsize=(8, 1.6 * len(waves)), sharex=True, squeeze=False)
    duration = len(next(iter(waves.values()))) / sample_rate
    for ax, (name, wave) in zip(axes[:, 0], waves.items(), strict=True):
        device = next(stft.buffers()).device  # the front end may live on a GPU
        with torch.no_grad():
            db = 20 * torch.log10(stft(torch.from_numpy(wave)[None].to(device)).abs()[0] + 1e-5).cpu().numpy()
        ax.imshow(db, origin="lower", aspect="auto", cmap="magma", vmin=db.max() - 80, vmax=db.max(),
                  extent=(0, duration, 0, sample_rate / 2000))
        ax.set_ylabel("kHz")
        ax.set_title(name, fontsize=9, loc="left")
    axes[-1, 0].set_xlabel("seconds")
    fig.tight_layout()
    png = folder / f"{key}.png"
    fig.savefig(png, dpi=80)
    plt.close(fig)
    return png


def write_image_example(folder: Path, key: str, images: dict[str, np.ndarray]) -> Path:
    """``<key>.png``: the mixture, estimates and references side by side on one intensity scale."""
    folder.mkdir(parents=True, exist_ok=True)
    top = max(float(np.max(i)) for i in images.values()) or 1.0
    fig, axes = plt.subplots(1, len(images), figsize=(1.6 * len(images), 1.9), squeeze=False)
    for ax, (name, image) in zip(axes[0], images.items(), strict=True):
        ax.imshow(image, cmap="gray", vmin=0, vmax=top)
        ax.set_title(name.replace("_", "\n"), fontsize=7)
        ax.axis("off")
    fig.tight_layout()
    png = folder / f"{key}.png"
    fig.savefig(png, dpi=80)
    plt.close(fig)
    return png


def plot_curve(path: Path, points: list[tuple[float, float | None]], xlabel: str, ylabel: str, title: str,
               baselines: dict[str, float] | None = None) -> Path:
    """A line plot of (x, y) points (``None`` values are left out), with optional horizontal baselines."""
    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=100)
    shown = [(x, y) for x, y in points if y is not None]
    if shown:
        ax.plot(*zip(*shown, strict=True), marker="o")
    for i, (name, value) in enumerate((baselines or {}).items()):
        ax.axhline(value, linestyle="--", color=f"C{i + 1}", label=name)
    if baselines:
        ax.legend(loc="lower right")
    ax.set(xlabel=xlabel, ylabel=ylabel, title=title)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path
