"""Tiny fake copies of MUSDB18-HQ, MUSDB18 and DSD100 with the real folder layouts, for the music recipe tests.

Every track is a few seconds of synthetic stereo 16-bit 44.1 kHz audio written with soundfile: vocals (a
harmonic tone with vibrato, silent from 1.0 s to 2.0 s), drums (decaying noise bursts), bass (a low sine)
and other (a chord); left and right are panned differently so channel choices are told apart. The shipped
mixture file is deliberately NOT the sum of the stems (it is half of it): the recipes must not read it.
"""
from __future__ import annotations

import functools
import io
import json
import subprocess
from pathlib import Path

import numpy as np
import soundfile as sf
import torch
import torchaudio.functional as AF

from lightning_sep.data.shards import DatasetInfo, iter_tar

RATE = 44100
SOURCE_STEMS = ("vocals", "drums", "bass", "other")
SILENT_VOCALS_S = (1.0, 2.0)  # the vocals of every fake track are exactly zero in this span


def _seed(name: str) -> int:
    return int.from_bytes(name.encode()[:8].ljust(8, b"\0"), "little") % (2**32)


def track_audio(name: str, seconds: float, loud: bool = False) -> dict[str, np.ndarray]:
    """int16 ``(frames, 2)`` stems of one fake track, deterministic in ``name``."""
    rng = np.random.default_rng(_seed(name))
    n = int(seconds * RATE)
    t = np.arange(n) / RATE
    f0 = rng.uniform(180, 330) * (1 + 0.02 * np.sin(2 * np.pi * 5 * t))
    phase = 2 * np.pi * np.cumsum(f0) / RATE
    vocals = sum(np.sin(k * phase) / k for k in range(1, 6)) * 0.25
    vocals[(t >= SILENT_VOCALS_S[0]) & (t < SILENT_VOCALS_S[1])] = 0.0
    bursts = np.exp(-((t * 4) % 1.0) * 12) * rng.standard_normal(n) * 0.2
    bass = 0.3 * np.sin(2 * np.pi * rng.uniform(45, 90) * t)
    other = sum(0.08 * np.sin(2 * np.pi * f * t + rng.uniform(0, 6)) for f in rng.uniform(250, 900, 3))
    out = {}
    for stem, mono in (("vocals", vocals), ("drums", bursts), ("bass", bass), ("other", other)):
        pan = rng.uniform(0.3, 0.9)
        scale = 2.2 if loud else 1.0
        stereo = np.stack([mono * pan, mono * (1.2 - pan)], axis=1) * scale
        out[stem] = np.clip(np.round(stereo * 32767), -32768, 32767).astype(np.int16)
    return out


def write_wav_track(folder: Path, name: str, seconds: float, loud: bool = False, mixture: bool = True) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    stems = track_audio(name, seconds, loud)
    for stem, audio in stems.items():
        sf.write(folder / f"{stem}.wav", audio, RATE, subtype="PCM_16")
    if mixture:
        total = sum(a.astype(np.int32) for a in stems.values()) // 2  # NOT the sum: must never be read
        sf.write(folder / "mixture.wav", np.clip(total, -32768, 32767).astype(np.int16), RATE, subtype="PCM_16")


def make_musdb_hq(root: Path, train: dict[str, float], test: dict[str, float], loud: tuple[str, ...] = ()) -> Path:
    """ROOT/{train,test}/<track>/{mixture,drums,bass,other,vocals}.wav; ``train``/``test``: name -> seconds."""
    for folder, tracks in (("train", train), ("test", test)):
        for name, seconds in tracks.items():
            write_wav_track(root / folder / name, name, seconds, loud=name in loud)
    return root


def make_musdb_stems(hq_root: Path, root: Path, streams: int = 5, codec: str = "alac") -> Path:
    """ROOT/{train,test}/<track>.stem.mp4 from a fake MUSDB18-HQ copy: ``streams`` streams in the stem order
    mixture, drums, bass, other, vocals, written with the ffmpeg program: ALAC (lossless, so the decoded samples
    are the WAV ones) or AAC at 256 kb/s like the real MUSDB18."""
    order = ("mixture", "drums", "bass", "other", "vocals")[:streams]
    for folder in ("train", "test"):
        (root / folder).mkdir(parents=True, exist_ok=True)
        for track in sorted(p for p in (hq_root / folder).iterdir() if p.is_dir()):
            cmd = ["ffmpeg", "-nostdin", "-v", "error", "-y"]
            for stem in order:
                cmd += ["-i", str(track / f"{stem}.wav")]
            for i in range(len(order)):
                cmd += ["-map", f"{i}:a"]
            cmd += ["-c:a", codec, *(["-b:a", "256k"] if codec == "aac" else []),
                    str(root / folder / f"{track.name}.stem.mp4")]
            subprocess.run(cmd, check=True, capture_output=True)
    return root


def make_dsd100(root: Path, dev: dict[str, float], test: dict[str, float]) -> Path:
    """ROOT/Mixtures/{Dev,Test}/<track>/mixture.wav (half the stem sum: never read) and
    ROOT/Sources/{Dev,Test}/<track>/{bass,drums,other,vocals}.wav."""
    for folder, tracks in (("Dev", dev), ("Test", test)):
        for name, seconds in tracks.items():
            write_wav_track(root / "Sources" / folder / name, name, seconds, mixture=False)
            stems = track_audio(name, seconds)
            total = sum(a.astype(np.int32) for a in stems.values()) // 2
            (root / "Mixtures" / folder / name).mkdir(parents=True, exist_ok=True)
            sf.write(root / "Mixtures" / folder / name / "mixture.wav", total.astype(np.int16), RATE,
                     subtype="PCM_16")
    return root


def clips(root: Path, pool: str) -> list[dict]:
    """Raw clips of a pool: key, meta, member names and int16 stems exactly as stored."""
    info = DatasetInfo.load(root)
    split, name = pool.split("/")
    out = []
    for url in info.urls(split, name):
        for raw in iter_tar(url):
            clip = {"key": raw["__key__"], "meta": json.loads(raw["json"]), "members": sorted(raw)}
            for suffix, data in raw.items():
                if suffix.endswith(".flac"):
                    audio, rate = sf.read(io.BytesIO(data), dtype="int16")
                    assert rate == info.sample_rate
                    clip[suffix[: -len(".flac")]] = audio
            out.append(clip)
    return out


def tars(root: Path) -> list[Path]:
    return sorted(p.relative_to(root) for p in root.rglob("*.tar"))


def expected_stems(track_dir: Path, rate: int, channel: str, gain_db: float) -> dict[str, np.ndarray]:
    """What the recipe should store for a whole track, computed independently from the WAV files:
    channel choice, accompaniment = drums + bass + other, ``torchaudio.functional.resample``, gain, int16."""
    return _expected_stems(str(track_dir), rate, channel, gain_db)


@functools.lru_cache(maxsize=64)
def _expected_stems(track_dir: str, rate: int, channel: str, gain_db: float) -> dict[str, np.ndarray]:
    audio = {s: sf.read(Path(track_dir) / f"{s}.wav", dtype="float64", always_2d=True)[0] for s in SOURCE_STEMS}

    def pick(x: np.ndarray) -> np.ndarray:
        return {"mean": x.mean(axis=1), "left": x[:, 0], "right": x[:, 1]}[channel]

    gain = 10 ** (gain_db / 20)
    both = np.stack([pick(audio["vocals"]), sum(pick(audio[s]) for s in ("drums", "bass", "other"))])
    y = AF.resample(torch.from_numpy(both), RATE, rate).numpy()  # one call: the kernel is built once
    y16 = np.clip(np.round(y * gain * 32768), -32768, 32767).astype(np.int16)
    return {"vocals": y16[0], "accompaniment": y16[1]}
