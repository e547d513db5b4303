"""Shared fixtures: a small prepared dataset written with the real shard writer (real FLAC in real tars).

The sources are synthetic so the fixture builds in about a second without any Debian package: a "speech"
stem of harmonic, amplitude-modulated tones with gliding pitch, and a "noise" stem of filtered noise. The
real demo recipe has its own tests.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import pytest

from lightning_sep.data.shards import DatasetInfo, DatasetWriter, to_int16

os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")

RATE = 8000
REPO = Path(__file__).resolve().parent.parent


def _speechlike(rng: np.random.Generator, n: int) -> np.ndarray:
    t = np.arange(n) / RATE
    f0 = rng.uniform(100, 250) * (1 + 0.2 * np.sin(2 * np.pi * rng.uniform(0.3, 1.5) * t))
    phase = 2 * np.pi * np.cumsum(f0) / RATE
    x = sum(np.sin(k * phase) / k for k in range(1, 8))
    envelope = np.clip(np.sin(2 * np.pi * rng.uniform(2, 4) * t + rng.uniform(0, 6)), 0, None)
    return 0.2 * x * envelope


def _noise(rng: np.random.Generator, n: int) -> np.ndarray:
    white = rng.standard_normal(n + 64)
    taps = np.hanning(int(rng.integers(1, 30)) + 2)[1:-1]
    return 0.1 * np.convolve(white, taps / taps.sum(), mode="valid")[:n]


def build_toy_dataset(root: Path, seed: int = 0, clips: dict[str, int] | None = None, clip_seconds: float = 1.0,
                      clips_per_shard: int = 5) -> DatasetInfo:
    """Pools like the demo recipe's; default shard counts are odd so they never divide by ranks x workers."""
    counts = {"train/mixtures": 23, "train/observed": 23, "train/isolated": 23, "valid/eval": 7, "test/eval": 9}
    counts.update(clips or {})
    members = {"train/mixtures": ["mix"], "train/observed": ["noise"]}
    rng = np.random.default_rng(seed)
    info = DatasetInfo(name="toy-speech-noise", sample_rate=RATE, stems=["speech", "noise"], observed="noise",
                       unobserved="speech", made_by={"recipe": "tests.conftest", "seed": seed})
    writer = DatasetWriter(root, info, clips_per_shard=clips_per_shard)
    n = int(clip_seconds * RATE)
    for where, count in counts.items():
        split, pool = where.split("/")
        stems = members.get(where, ["mix", "speech", "noise"])
        with writer.pool(split, pool, stems) as w:
            for i in range(count):
                speech, noise = to_int16(_speechlike(rng, n)), to_int16(_noise(rng, n))
                mix = (speech.astype(np.int32) + noise).astype(np.int16)
                audio = {"mix": mix, "speech": speech, "noise": noise}
                w.add(f"{split}-{pool}-{i:04d}", {s: audio[s] for s in stems}, {"source": "toy"})
    return writer.close()


@pytest.fixture(scope="session")
def toy_dataset(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("toy") / "toy-speech-noise"
    build_toy_dataset(root)
    return root


def cli(*args: str, env: dict | None = None, timeout: float = 400):
    """Run `python -m lightning_sep ARGS` in a subprocess (the way users and DDP launchers run it).

    A run still going after ``timeout`` seconds (below pytest's own limit) counts as hung: every process of it,
    DDP ranks and data workers included, gets SIGABRT, faulthandler prints each one's Python stacks, and the test
    fails showing them, so that a hang says where it waited and leaves no process behind."""
    import signal
    import subprocess

    full_env = {**os.environ, "WANDB_MODE": "offline", "WANDB_SILENT": "true", "PYTHONUNBUFFERED": "1",
                "PYTHONFAULTHANDLER": "1", **(env or {})}
    full_env.pop("LIGHTNING_SEP_RUN_DIR", None)
    command = [sys.executable, "-m", "lightning_sep", *args]
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=full_env,
                            cwd=REPO, start_new_session=True)
    try:
        stdout, stderr = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGABRT)
        try:
            stdout, stderr = proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            stdout, stderr = proc.communicate()
        pytest.fail(f"`lightning-sep {' '.join(args)}` was still running after {timeout:g} s; the stacks of its "
                    f"processes and its last output:\n{stderr[-12000:]}\n{stdout[-2000:]}", pytrace=False)
    return subprocess.CompletedProcess(command, proc.returncode, stdout, stderr)
