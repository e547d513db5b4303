"""Tiny fake copies of UrbanSound8K and URBAN-SED with the real folder layouts, for the urban recipe tests.

UrbanSound8K: ``ROOT/audio/foldN/<fsID>-<classID>-<occurrenceID>-<sliceID>.wav`` and
``ROOT/metadata/UrbanSound8K.csv``. Each fake slice is a short synthetic sound typical of its class (a two-tone
horn, harmonic barks, a noise burst with a fast decay, hammering noise pulses, a pitch sweep, a hum), written at
one of the rates, bit depths and channel counts the real files come in (44.1/48/22.05/8 kHz; 16-bit, 24-bit,
8-bit unsigned, 32-bit float; mono or stereo), each with a little DC offset.

URBAN-SED: ``ROOT/audio/{train,validate,test}/soundscape_<split>_<name><N>.wav`` (10 s, 44.1 kHz mono 16-bit)
and ``ROOT/annotations/<split>/soundscape_*.txt`` (tab-separated onset, offset, label), plus an empty ``.jams``
beside each annotation (the real copy has them; the recipe must not need them). Each soundscape is quiet
Brownian noise with tones at the annotated times.
"""
from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import soundfile as sf

US8K_CLASSES = ("air_conditioner", "car_horn", "children_playing", "dog_bark", "drilling", "engine_idling",
                "gun_shot", "jackhammer", "siren", "street_music")
# (rate, subtype, channels) cycled through the slices
FORMATS = ((44100, "PCM_16", 1), (48000, "PCM_24", 2), (22050, "PCM_U8", 1), (44100, "FLOAT", 2),
           (8000, "PCM_16", 1), (48000, "PCM_16", 1))


def class_sound(label: str, seconds: float, rate: int, rng: np.random.Generator) -> np.ndarray:
    """A mono float sound in [-0.5, 0.5] typical of ``label``."""
    n = int(seconds * rate)
    t = np.arange(n) / rate
    if label == "car_horn":
        x = np.sign(np.sin(2 * np.pi * 420 * t)) * 0.2 + np.sin(2 * np.pi * 530 * t) * 0.2
    elif label == "dog_bark":
        env = np.exp(-((t * 3) % 1.0) * 10)
        x = sum(np.sin(2 * np.pi * k * rng.uniform(400, 600) * t) / k for k in range(1, 4)) * env * 0.25
    elif label == "gun_shot":
        x = rng.standard_normal(n) * np.exp(-t * 12) * 0.4
    elif label == "jackhammer":
        x = rng.standard_normal(n) * (((t * 15) % 1.0) < 0.3) * 0.3
    elif label == "siren":
        f = 700 + 300 * np.sin(2 * np.pi * 0.8 * t)
        x = np.sin(2 * np.pi * np.cumsum(f) / rate) * 0.3
    else:
        x = np.sin(2 * np.pi * rng.uniform(60, 120) * t) * 0.2 + rng.standard_normal(n) * 0.02
    return np.clip(x, -0.5, 0.5)


def write_slice(path: Path, label: str, seconds: float, fmt: tuple[int, str, int], seed: int,
                silent: bool = False) -> None:
    rate, subtype, channels = fmt
    rng = np.random.default_rng(seed)
    x = np.zeros(int(seconds * rate)) if silent else class_sound(label, seconds, rate, rng) + 0.01  # DC offset
    audio = np.stack([x * (0.6 + 0.4 * c) for c in range(channels)], axis=1)
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(str(path), audio, rate, subtype=subtype)


def make_urbansound8k(root: Path, classes: tuple[str, ...], folds: tuple[int, ...] = tuple(range(1, 9)),
                      per_fold: int = 1, seconds: tuple[float, ...] = (0.7, 1.1, 1.5)) -> Path:
    """A fake UrbanSound8K: ``per_fold`` slices of every class in every fold, plus one air_conditioner slice per
    fold (a class the tests do not select); every slice of one fold comes from that fold's own recordings
    (fsID = 1000 * fold + k, two slices per recording where ``per_fold`` allows). Slice 0 of every recording
    is foreground (salience 1), the others background. Returns ``root``."""
    rows = []
    k = 0
    for fold in folds:
        for label in tuple(classes) + ("air_conditioner",):
            class_id = US8K_CLASSES.index(label)
            for j in range(per_fold if label in classes else 1):
                fs_id = 1000 * fold + 10 * class_id + j // 2
                slice_id = j % 2
                name = f"{fs_id}-{class_id}-0-{slice_id}.wav"
                dur = seconds[k % len(seconds)]
                write_slice(root / "audio" / f"fold{fold}" / name, label, dur, FORMATS[k % len(FORMATS)], seed=k)
                rows.append([name, fs_id, f"{slice_id * 4.0:.1f}", f"{slice_id * 4.0 + dur:.6f}", 1 + slice_id, fold,
                             class_id, label])
                k += 1
    write_metadata(root, rows)
    return root


def write_metadata(root: Path, rows: list[list]) -> Path:
    path = root / "metadata" / "UrbanSound8K.csv"
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(["slice_file_name", "fsID", "start", "end", "salience", "fold", "classID", "class"])
        w.writerows(rows)
    return path


def read_metadata_rows(root: Path) -> list[list[str]]:
    with open(root / "metadata" / "UrbanSound8K.csv", newline="") as f:
        return list(csv.reader(f))[1:]


# ----------------------------------------------------------------------------- URBAN-SED

SED_RATE = 44100
SED_SECONDS = 10.0


def soundscape_audio(events: list[tuple[float, float, str]], seed: int) -> np.ndarray:
    """10 s of quiet Brownian noise with a tone per event at its annotated time (mono float)."""
    rng = np.random.default_rng(seed)
    n = int(SED_SECONDS * SED_RATE)
    brown = np.cumsum(rng.standard_normal(n))
    brown = (brown - np.linspace(brown[0], brown[-1], n)) / (np.max(np.abs(brown)) + 1e-9) * 0.02
    t = np.arange(n) / SED_RATE
    x = brown
    for onset, offset, label in events:
        f = 200 + 90 * US8K_CLASSES.index(label)
        span = (t >= onset) & (t < offset)
        x = x + span * 0.2 * np.sin(2 * np.pi * f * t)
    return x


def write_soundscape(root: Path, folder: str, name: str, events: list[tuple[float, float, str]], seed: int,
                     rate: int = SED_RATE) -> None:
    audio = soundscape_audio(events, seed)
    if rate != SED_RATE:
        audio = audio[:: SED_RATE // rate] if SED_RATE % rate == 0 else audio[: int(SED_SECONDS * rate)]
    wav = root / "audio" / folder / f"{name}.wav"
    wav.parent.mkdir(parents=True, exist_ok=True)
    sf.write(str(wav), audio, rate, subtype="PCM_16")
    ann = root / "annotations" / folder / f"{name}.txt"
    ann.parent.mkdir(parents=True, exist_ok=True)
    ann.write_text("".join(f"{on:.9f}\t{off:.9f}\t{label}\n" for on, off, label in events))
    (root / "annotations" / folder / f"{name}.jams").write_text("{}")


def make_urban_sed(root: Path, soundscapes: dict[str, dict[str, list[tuple[float, float, str]]]]) -> Path:
    """``soundscapes``: folder (train/validate/test) -> soundscape name -> events ``(onset, offset, label)``."""
    seed = 0
    for folder in ("train", "validate", "test"):
        (root / "audio" / folder).mkdir(parents=True, exist_ok=True)
        (root / "annotations" / folder).mkdir(parents=True, exist_ok=True)
        for name, events in soundscapes.get(folder, {}).items():
            write_soundscape(root, folder, name, events, seed)
            seed += 1
    return root
