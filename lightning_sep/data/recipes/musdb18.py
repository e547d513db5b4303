"""Recipe ``musdb18``: singing voice vs accompaniment from the user's own copy of MUSDB18-HQ or MUSDB18.

Nothing is downloaded: ``root=`` names the folder of your copy (the dataset is distributed for academic use
on request; see ``LICENCE_NOTE``). Two layouts are read:

* MUSDB18-HQ (uncompressed): ``ROOT/{train,test}/<track name>/{mixture,drums,bass,other,vocals}.wav``,
  stereo 44.1 kHz WAV;
* MUSDB18 (compressed): ``ROOT/{train,test}/<track name>.stem.mp4``, Native Instruments stem files of five
  stereo AAC streams (0 mixture, 1 drums, 2 bass, 3 other, 4 vocals: ``STEM_STREAMS``). They are decoded with
  the ``ffmpeg`` program (option ``ffmpeg``, looked up on PATH; Debian package ``ffmpeg``); without it the
  build stops before writing anything and says how to get it, or how to convert the copy to WAV instead with
  ``musdbconvert`` from the musdb package.

The mixture (``mixture.wav`` or stream 0) is never read: ``mix`` is recomputed as the exact int16 sum of the
stored ``vocals`` and ``accompaniment`` (= drums + bass + other), because MUSDB's own mixture is not exactly the
sum of its stems (stored on its own: separately rounded to 16 bits in MUSDB18-HQ, separately AAC-encoded in
MUSDB18, whose page notes the small difference).

Splits: MUSDB18 has 100 training and 50 test tracks. The official validation split is the 14 training tracks
of ``VALIDATION_TRACKS`` (the list in the musdb package's ``configs/mus.yaml``, used by open-unmix and
torchaudio's ``MUSDB_HQ`` as well), so the pools are:

* ``train/mixtures`` (``mix``) and ``train/observed`` (``accompaniment``): the other 86 training tracks, split
  into two track-disjoint halves of 43 drawn from ``seed`` (the NES authors' protocol: mixtures from one half,
  clean observed source from the other);
* ``train/isolated`` (``mix``, ``vocals``, ``accompaniment``): all 86, for the supervised upper bound;
* ``valid/eval``: the 14 validation tracks; ``test/eval``: the 50 test tracks; both with every reference.

A copy with other track counts or without the validation tracks is refused unless ``allow_incomplete=true``
(scores from it are not comparable with published MUSDB18 numbers); the found counts are recorded.

Defaults, and why:

* ``sample_rate=20480``, mono: the MaskNet authors' music front end (mono, 20480 Hz, n_fft 512, hop 64;
  METHODS.md). The NES paper's music setting gives no rate in METHODS.md; one rate for both methods lets
  their results be compared on the same data. Any rate in 8000..44100 works (``sample_rate=44100`` keeps the
  source rate). Resampling: ``torchaudio.functional.resample``'s sinc kernel (``sources.resample``).
* ``channels=mean``: down-mix ``(left + right) / 2``; ``left``/``right`` keep one channel, ``both`` stores each
  channel as its own mono clip (the format holds mono stems); ``source_channels`` is kept in the metadata.
* ``clip_seconds=10``: training chunks of 10 s, from which the data module cuts its random crops; chunks with
  (nearly) silent vocals (``vocals_min_db``) or accompaniment (``accompaniment_min_db``) are skipped in all
  training pools alike.
* ``eval_clip_seconds=0``: evaluation clips are whole tracks. Both published protocols score whole tracks
  (MaskNet: BSS Eval v4 with 30 s windows and 15 s hop, mean per track, median over tracks; NES: the track's
  segments concatenated, 1 s windows), so one clip per track lets the evaluator aggregate per track directly,
  with no chunk boundaries inside a track. ``eval_clip_seconds=60`` cuts them into chunks that still cover
  every sample (``track`` and ``start_s`` let scores be regrouped per track) where memory at evaluation is
  tight: a 4-minute track at 20480 Hz is 4.9 M samples per stem.

Everything else (how a track becomes two int16 stems, chunk selection, metadata) is shared with ``dsd100``
in ``music_folders.py``. Determinism: the half split and the clip order come from numpy Generators seeded
by ``(seed, purpose)``, files are read in sorted order; two builds with one seed from one copy give
byte-identical shards and ``dataset.json``.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..shards import DatasetInfo
from . import music_folders as mf
from .music_folders import MusicFolderError

NAME = "musdb18"
VERSION = 1
# Only for the compressed layout (.stem.mp4); MUSDB18-HQ needs no Debian package.
DEBIAN_PACKAGES = ["ffmpeg"]

# The official validation split: 14 of the 100 training tracks (musdb's configs/mus.yaml, ``validation_tracks``).
VALIDATION_TRACKS = (
    "Actions - One Minute Smile",
    "Clara Berry And Wooldog - Waltz For My Victims",
    "Johnny Lokke - Promises & Lies",
    "Patrick Talbot - A Reason To Leave",
    "Triviul - Angelsaint",
    "Alexander Ross - Goodbye Bolero",
    "Fergessen - Nos Palpitants",
    "Leaf - Summerghost",
    "Skelpolu - Human Mistakes",
    "Young Griffo - Pennies",
    "ANiMAL - Rockshow",
    "James May - On The Line",
    "Meaxic - Take A Step",
    "Traffic Experiment - Sirens",
)
EXPECTED_TRACKS = {"train": 100, "test": 50}
# Audio streams of a MUSDB18 stem file that are read (0 is the mixture, not read).
STEM_STREAMS = {"drums": 1, "bass": 2, "other": 3, "vocals": 4}
STEM_SUFFIX = ".stem.mp4"
# Decoded AAC streams of one file may differ by up to this many samples (encoder padding); the longer ones are
# cut to the shortest and the cut is recorded (``stats.trimmed_samples``). WAV stems must match exactly.
STEM_LENGTH_TOLERANCE = 4096

LICENCE_NOTE = (
    "MUSDB18 (Rafii, Liutkus, Stoter, Mimilakis, Bittner, 2017; doi:10.5281/zenodo.1117372, HQ: "
    "doi:10.5281/zenodo.3338373) is distributed for academic use only; its tracks come from the DSD100 / "
    "'Mixing Secrets' multitrack library, MedleyDB (CC BY-NC-SA 4.0), Native Instruments' stems pack and The "
    "Easton Ellises (CC BY-NC-SA 3.0); the dataset's track list gives each track's licence")


@dataclass
class Options:
    """Settings of ``musdb18`` (``key=value`` on the command line; all recorded in dataset.json)."""

    root: str = ""  # your MUSDB18-HQ (train/<track>/*.wav) or MUSDB18 (train/*.stem.mp4) folder; required
    seed: int = 0  # draws the track-disjoint mixtures/observed halves and the training clip order (>= 0)
    sample_rate: int = 20480  # Hz; MaskNet's music rate (the sources are 44.1 kHz, resampled with torchaudio)
    channels: str = "mean"  # mean: (left+right)/2 mono; left or right: one channel; both: each channel a clip
    clip_seconds: float = 10.0  # length of the training chunks (train/mixtures, observed, isolated)
    eval_clip_seconds: float = 0.0  # 0: valid/test clips are whole tracks; N: N-second chunks covering each track
    vocals_min_db: float | None = -40.0  # training chunks with quieter vocals (dBFS RMS) are skipped; none: keep all
    accompaniment_min_db: float | None = -60.0  # same for the accompaniment (silent stretches); none: keep all
    clips_per_shard: int = 64  # training clips per tar shard
    eval_clips_per_shard: int = 4  # valid/test clips per tar shard (whole tracks are large)
    allow_incomplete: bool = False  # build from a copy without 100 train / 50 test tracks and the 14 validation ones
    ffmpeg: str = "ffmpeg"  # the ffmpeg program (name on PATH, or a path); only for the .stem.mp4 layout


def validate(o: Options) -> None:
    """Raise ``ValueError`` naming the option when a setting cannot work."""
    problems = mf.common_problems(o, "/data/musdb18hq")
    if problems:
        raise ValueError(f"{NAME}: " + "; ".join(problems))


def _nested_hint(root: Path) -> str:
    inner = [p for p in mf.track_folders(root) if (p / "train").is_dir()] if root.is_dir() else []
    return f" (did you mean root={inner[0]}?)" if len(inner) == 1 else ""


def find_tracks(o: Options) -> tuple[str, dict[str, list[mf.Track]]]:
    """The layout (``wav`` or ``stem.mp4``) and the tracks of ``train/`` and ``test/``, sorted by name.

    Checks every file a build will read (and the ffmpeg program for stem files) before anything is written.
    """
    root = Path(o.root).expanduser()
    if not root.is_dir():
        raise MusicFolderError(f"root={o.root}: no such folder; point root at your copy of MUSDB18-HQ or MUSDB18, "
                               "the folder that holds train/ and test/ (the recipe downloads nothing)")
    layouts: dict[str, str] = {}
    found: dict[str, list[Path]] = {}
    for folder in ("train", "test"):
        d = root / folder
        if not d.is_dir():
            raise MusicFolderError(f"{d} is missing: root must be the MUSDB18(-HQ) folder that holds train/ and "
                                   f"test/{_nested_hint(root)}")
        dirs = mf.track_folders(d)
        stems = sorted((p for p in d.iterdir() if p.is_file() and p.name.endswith(STEM_SUFFIX)
                        and not p.name.startswith(".")), key=lambda p: p.name)
        if dirs and stems:
            raise MusicFolderError(f"{d} holds both track folders ({dirs[0].name}, ...) and stem files "
                                   f"({stems[0].name}, ...); keep one layout per copy: MUSDB18-HQ's folders of WAV "
                                   "files or MUSDB18's .stem.mp4 files, and point root at it")
        if not dirs and not stems:
            raise MusicFolderError(f"{d} holds no tracks: expected MUSDB18-HQ track folders (<track>/vocals.wav, ...) "
                                   f"or MUSDB18 files (<track>{STEM_SUFFIX})")
        layouts[folder] = "wav" if dirs else "stem.mp4"
        found[folder] = dirs or stems
    if len(set(layouts.values())) != 1:
        raise MusicFolderError(f"{root}: train/ holds the {layouts['train']} layout but test/ the {layouts['test']} "
                               "layout; use one copy of MUSDB18-HQ or of MUSDB18")
    layout = layouts["train"]
    tracks: dict[str, list[mf.Track]] = {}
    if layout == "wav":
        for folder, dirs in found.items():
            tracks[folder] = [mf.wav_track(d, folder, "extract the track again from musdb18hq.zip") for d in dirs]
    else:
        if mf.find_program(o.ffmpeg) is None:
            raise MusicFolderError(
                f"{found['train'][0]}: compressed MUSDB18 stem files are decoded with the ffmpeg program, and "
                f"ffmpeg={o.ffmpeg!r} was not found. Install it (as root: apt-get install -y ffmpeg) or set "
                f"ffmpeg=/path/to/ffmpeg; or convert the copy to WAV once with the musdb package "
                f"(pip install musdb; musdbconvert {root} {root}-wav) and build with root={root}-wav")
        for folder, files in found.items():
            tracks[folder] = [mf.Track(p.name[: -len(STEM_SUFFIX)], folder, stem_file=p) for p in files]
    return layout, tracks


def build(out: str | os.PathLike, options: Options | None = None, progress: bool = True) -> DatasetInfo:
    """Build the dataset into ``out`` (``dataset.json`` + tar shards) and return its ``DatasetInfo``.

    Raises ``ValueError`` for impossible options and ``MusicFolderError`` (a ``RuntimeError``) naming the file
    and the fix for a missing, incomplete or unreadable copy; folder and option problems are found before
    anything is written. Tar shards a previous build left in the pool folders are removed first.
    """
    o = options if options is not None else Options()
    validate(o)
    layout, tracks = find_tracks(o)
    root = Path(o.root).expanduser()
    names = {t.name for t in tracks["train"]}
    missing_valid = [t for t in VALIDATION_TRACKS if t not in names]
    counts = {folder: len(ts) for folder, ts in tracks.items()}
    complete = counts == EXPECTED_TRACKS and not missing_valid
    if not complete and not o.allow_incomplete:
        raise MusicFolderError(
            f"{root}: not a complete MUSDB18 copy: train/ has {counts['train']} tracks (expected 100), test/ has "
            f"{counts['test']} (expected 50)"
            + (f", missing validation tracks: {missing_valid}" if missing_valid else "")
            + ". Point root at a complete copy, or set allow_incomplete=true to build from these tracks anyway "
            "(scores are then not comparable with published MUSDB18 results)")
    valid = [t for t in tracks["train"] if t.name in VALIDATION_TRACKS]
    rest = [t for t in tracks["train"] if t.name not in VALIDATION_TRACKS]
    mixtures, observed = mf.split_halves(rest, mf.rng(o.seed, 1))
    if layout == "wav":
        fix = "extract the track again from musdb18hq.zip"

        def read(track: mf.Track) -> dict[str, np.ndarray]:
            return mf.read_wav_stems(track, fix)

        dataset, tolerance, software = "MUSDB18-HQ", 0, {}
    else:
        fix = "download/extract musdb18.zip again, or convert the copy to WAV with musdbconvert and build from that"
        ffmpeg = mf.find_program(o.ffmpeg)

        def read(track: mf.Track) -> dict[str, np.ndarray]:
            return mf.decode_stem_file(track.stem_file, ffmpeg, STEM_STREAMS, fix)

        dataset, tolerance, software = "MUSDB18", STEM_LENGTH_TOLERANCE, {"ffmpeg": mf.program_version(ffmpeg)}
    source = mf.Source(
        dataset=dataset, root=root, layout=layout, mixtures=mixtures, observed=observed, valid=valid,
        test=tracks["test"], read=read, length_tolerance=tolerance,
        info={"tracks_found": counts, "tracks_expected": EXPECTED_TRACKS, "complete": complete,
              "missing_validation_tracks": missing_valid, "validation_tracks": list(VALIDATION_TRACKS)})
    licences = [{"source": dataset, "licence": "academic use only (per-track licences in the dataset's track list)",
                 "copyright": "the artists of each track", "used_for": "all audio (vocals; drums + bass + other as "
                 "accompaniment)", "terms": LICENCE_NOTE}]
    return mf.build_music(out, o, name=NAME, version=VERSION, source=source, licences=licences,
                          software=software, progress=progress)
