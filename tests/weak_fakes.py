"""A small weakly labelled dataset written with the real shard writer: three synthetic event classes (a steady
tone, high-passed noise, a click train), 1-2 events per clip at random onsets, clip labels and events in the
metadata, one stem per class (silent when absent) and an unlabelled low `background` stem (not a class) where
references are allowed. Builds in about a second."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from lightning_sep.data.shards import DatasetInfo, DatasetWriter, to_int16

RATE = 8000
CLASSES = ["tone", "noise", "click"]


def _event(kind: str, rng: np.random.Generator, n: int) -> np.ndarray:
    t = np.arange(n) / RATE
    if kind == "tone":
        return 0.3 * np.sin(2 * np.pi * rng.uniform(300, 700) * t)
    if kind == "noise":
        white = rng.standard_normal(n + 1)
        return 0.15 * (white[1:] - white[:-1])  # high-passed
    out = np.zeros(n)
    out[:: int(rng.integers(150, 300))] = 0.8
    return np.convolve(out, np.hanning(9), mode="same")


def build_weak_dataset(root: Path, seed: int = 0, counts: dict[str, int] | None = None,
                       bad_label: str | None = None) -> DatasetInfo:
    """``bad_label``: write that label into the first training clip (a class the dataset does not know)."""
    sizes = {"train/mixtures": 40, "train/isolated": 20, "valid/eval": 6, "test/eval": 9, **(counts or {})}
    rng = np.random.default_rng(seed)
    info = DatasetInfo(name="toy-events", sample_rate=RATE, stems=[*CLASSES, "background"], classes=list(CLASSES),
                       made_by={"recipe": "tests.weak_fakes", "seed": seed})
    writer = DatasetWriter(root, info, clips_per_shard=10)
    n = RATE
    for where, count in sizes.items():
        split, pool = where.split("/")
        stems = ["mix"] if pool == "mixtures" else ["mix", *CLASSES, "background"]
        with writer.pool(split, pool, stems) as w:
            for i in range(count):
                present = sorted(rng.choice(len(CLASSES), size=int(rng.integers(1, 3)), replace=False))
                audio = {c: np.zeros(n, dtype=np.int16) for c in CLASSES}
                events = []
                for k in present:
                    onset, length = int(rng.integers(0, n // 2)), int(rng.integers(n // 4, n // 2))
                    wave = np.zeros(n)
                    wave[onset:onset + length] = _event(CLASSES[k], rng, length)
                    audio[CLASSES[k]] = to_int16(wave)
                    events.append([CLASSES[k], onset / RATE, (onset + length) / RATE])
                audio["background"] = to_int16(0.003 * rng.standard_normal(n))
                parts = [*CLASSES, "background"]
                audio["mix"] = np.sum([audio[c].astype(np.int32) for c in parts], axis=0).astype(np.int16)
                labels = [CLASSES[k] for k in present]
                if bad_label and where == "train/mixtures" and i == 0:
                    labels = [*labels, bad_label]
                meta = {"labels": labels, "events": events, "n_events": len(events)}
                w.add(f"{split}-{pool}-{i:04d}", {s: audio[s] for s in stems}, meta)
    return writer.close()
