"""What the sound-event recipes (demo-urban, urbansound8k, urban-sed) share: their pools, seeded generators and
the overlap measure of their clips."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass(frozen=True)
class EventPool:
    split: str
    pool: str
    count_option: str  # the Options field with its clip count
    stems: bool  # True: mix + one stem per class (+ background); False: mix only

    @property
    def name(self) -> str:
        return f"{self.split}/{self.pool}"


EVENT_POOLS = (
    EventPool("train", "mixtures", "mixtures_clips", False),
    EventPool("train", "isolated", "isolated_clips", True),
    EventPool("valid", "eval", "valid_clips", True),
    EventPool("test", "eval", "test_clips", True),
)


def seeded_rng(seed: int, *purpose: int) -> np.random.Generator:
    """An independent generator per (seed, purpose...): a clip's draws do not depend on the clips before it."""
    return np.random.default_rng(np.random.SeedSequence([seed, *purpose]))


def overlap_samples(events: list[dict[str, Any]], n: int, rate: int) -> int:
    """Samples of the clip where two or more events sound (between their onsets and offsets)."""
    count = np.zeros(n, dtype=np.int16)
    for e in events:
        count[int(round(e["onset_s"] * rate)): int(round(e["offset_s"] * rate))] += 1
    return int(np.count_nonzero(count >= 2))
