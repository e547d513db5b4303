"""Recipe ``dsd100``: singing voice vs accompaniment from the user's own copy of DSD100 (SiSEC 2016 MUS).

Nothing is downloaded: ``root=`` names the folder of your copy, laid out as the dataset ships:

    ROOT/Mixtures/{Dev,Test}/<track>/mixture.wav
    ROOT/Sources/{Dev,Test}/<track>/{bass,drums,other,vocals}.wav     (stereo 44.1 kHz)

Only ``Sources/`` is read: ``mix`` is recomputed as the exact int16 sum of the stored ``vocals`` and
``accompaniment`` (= drums + bass + other), because the shipped ``mixture.wav`` is not exactly that sum (it
is stored on its own, rounded to 16 bits), and ``mix == vocals + accompaniment`` must hold in the stored data.

Splits: DSD100 has 50 ``Dev`` and 50 ``Test`` tracks and no official validation split, so ``valid_tracks``
Dev tracks (default 7, the 14 % share MUSDB18's official validation split has) are drawn from ``seed``
and held out of training. The pools:

* ``train/mixtures`` (``mix``) and ``train/observed`` (``accompaniment``): the remaining Dev tracks, split into
  two track-disjoint halves drawn from ``seed`` (mixtures from one half, clean observed source from the other);
* ``train/isolated`` (``mix``, ``vocals``, ``accompaniment``): all remaining Dev tracks (supervised upper bound);
* ``valid/eval``: the held-out Dev tracks; ``test/eval``: the 50 Test tracks (the MaskNet paper's DSD100
  numbers are on this "evaluation subset"); both with every reference.

The chosen tracks of every pool are listed in ``dataset.json`` (``stats.tracks``), which is the split file of
a build. A copy without 50 Dev and 50 Test tracks (e.g. the 4-track ``DSD100subset``) is refused unless
``allow_incomplete=true``.

Defaults (shared with ``musdb18``, see its docstring for the reasons): 20480 Hz mono (MaskNet's music front
end), 10 s training chunks skipping (nearly) silent vocals or accompaniment, whole tracks for evaluation.
How a track becomes two int16 stems, the chunk rule, the metadata (``track``, ``start_s``, ...) and the
determinism guarantees are in ``music_folders.py``.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..shards import DatasetInfo
from . import music_folders as mf
from .music_folders import MusicFolderError

NAME = "dsd100"
VERSION = 1
DEBIAN_PACKAGES: list[str] = []  # WAV files only: nothing to install

EXPECTED_TRACKS = {"Dev": 50, "Test": 50}
FIX = "extract the track again from DSD100.zip"
LICENCE_NOTE = (
    "DSD100 (Demixing Secrets Dataset 100, SiSEC 2016 MUS task; Liutkus et al., 'The 2016 Signal Separation "
    "Evaluation Campaign', LVA/ICA 2017) holds tracks of 'The Mixing Secrets' free multitrack download library, "
    "for research use; see the terms that came with your copy")


@dataclass
class Options:
    """Settings of ``dsd100`` (``key=value`` on the command line; all recorded in dataset.json)."""

    root: str = ""  # your DSD100 folder (the one holding Sources/Dev and Sources/Test); required
    seed: int = 0  # draws the validation tracks, the mixtures/observed halves and the training clip order (>= 0)
    valid_tracks: int = 7  # Dev tracks held out of training for valid/eval (drawn from seed)
    sample_rate: int = 20480  # Hz; MaskNet's music rate (the sources are 44.1 kHz, resampled with torchaudio)
    channels: str = "mean"  # mean: (left+right)/2 mono; left or right: one channel; both: each channel a clip
    clip_seconds: float = 10.0  # length of the training chunks (train/mixtures, observed, isolated)
    eval_clip_seconds: float = 0.0  # 0: valid/test clips are whole tracks; N: N-second chunks covering each track
    vocals_min_db: float | None = -40.0  # training chunks with quieter vocals (dBFS RMS) are skipped; none: keep all
    accompaniment_min_db: float | None = -60.0  # same for the accompaniment (silent stretches); none: keep all
    clips_per_shard: int = 64  # training clips per tar shard
    eval_clips_per_shard: int = 4  # valid/test clips per tar shard (whole tracks are large)
    allow_incomplete: bool = False  # build from a copy without 50 Dev and 50 Test tracks


def validate(o: Options) -> None:
    """Raise ``ValueError`` naming the option when a setting cannot work."""
    problems = mf.common_problems(o, "/data/DSD100")
    if o.valid_tracks < 1:
        problems.append(f"valid_tracks={o.valid_tracks} must be >= 1")
    if problems:
        raise ValueError(f"{NAME}: " + "; ".join(problems))


def find_tracks(o: Options) -> dict[str, list[mf.Track]]:
    """The tracks of ``Sources/Dev`` and ``Sources/Test``, sorted by name; every stem file is checked."""
    root = Path(o.root).expanduser()
    if not root.is_dir():
        raise MusicFolderError(f"root={o.root}: no such folder; point root at your copy of DSD100, the folder that "
                               "holds Sources/ and Mixtures/ (the recipe downloads nothing)")
    tracks = {}
    for folder in EXPECTED_TRACKS:
        d = root / "Sources" / folder
        if not d.is_dir():
            hint = ""
            if (root / folder).is_dir():
                hint = f" (root looks like the Sources/ or Mixtures/ folder itself: use root={root.parent})"
            raise MusicFolderError(f"{d} is missing: root must be the DSD100 folder that holds Sources/Dev and "
                                   f"Sources/Test{hint}")
        dirs = mf.track_folders(d)
        if not dirs:
            raise MusicFolderError(f"{d} holds no track folders (<track>/vocals.wav, ...); {FIX}")
        tracks[folder] = [mf.wav_track(t, folder, FIX) for t in dirs]
    return tracks


def build(out: str | os.PathLike, options: Options | None = None, progress: bool = True) -> DatasetInfo:
    """Build the dataset into ``out`` (``dataset.json`` + tar shards) and return its ``DatasetInfo``.

    Raises ``ValueError`` for impossible options and ``MusicFolderError`` (a ``RuntimeError``) naming the file
    and the fix for a missing, incomplete or unreadable copy; folder and option problems are found before
    anything is written. Tar shards a previous build left in the pool folders are removed first.
    """
    o = options if options is not None else Options()
    validate(o)
    tracks = find_tracks(o)
    root = Path(o.root).expanduser()
    counts = {folder: len(ts) for folder, ts in tracks.items()}
    complete = counts == EXPECTED_TRACKS
    if not complete and not o.allow_incomplete:
        raise MusicFolderError(
            f"{root}: not a complete DSD100 copy: Sources/Dev has {counts['Dev']} tracks, Sources/Test has "
            f"{counts['Test']} (expected 50 each). Point root at a complete copy, or set allow_incomplete=true to "
            "build from these tracks anyway (scores are then not comparable with published DSD100 results)")
    dev = tracks["Dev"]
    if o.valid_tracks > len(dev) - 2:
        fix = (f"use valid_tracks={len(dev) - 2} or fewer" if len(dev) >= 3
               else "the copy needs at least 3 Dev tracks (one validation track and two training halves)")
        raise ValueError(f"{NAME}: valid_tracks={o.valid_tracks} leaves fewer than two of the {len(dev)} Dev tracks "
                         f"in {root / 'Sources' / 'Dev'} for training; {fix}")
    held_out = set(mf.rng(o.seed, 2).choice(len(dev), size=o.valid_tracks, replace=False).tolist())
    valid = [t for i, t in enumerate(dev) if i in held_out]
    rest = [t for i, t in enumerate(dev) if i not in held_out]
    mixtures, observed = mf.split_halves(rest, mf.rng(o.seed, 1))

    def read(track: mf.Track) -> dict[str, np.ndarray]:
        return mf.read_wav_stems(track, FIX)

    source = mf.Source(
        dataset="DSD100", root=root, layout="wav", mixtures=mixtures, observed=observed, valid=valid,
        test=tracks["Test"], read=read,
        info={"tracks_found": counts, "tracks_expected": EXPECTED_TRACKS, "complete": complete,
              "validation_tracks": [t.name for t in valid]})
    licences = [{"source": "DSD100", "licence": "research use (see the dataset's terms)",
                 "copyright": "the artists of each track", "used_for": "all audio (vocals; drums + bass + other as "
                 "accompaniment)", "terms": LICENCE_NOTE}]
    return mf.build_music(out, o, name=NAME, version=VERSION, source=source, licences=licences, progress=progress)
