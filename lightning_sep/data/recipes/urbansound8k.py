"""Recipe ``urbansound8k``: synthetic mixtures of overlapping urban sound events from the user's own copy of
UrbanSound8K, with clip-level and frame-level labels (the WeakSep setting).

Nothing is downloaded: ``root=`` names the folder of your copy, laid out as the dataset ships::

    ROOT/audio/fold1 .. fold10/<fsID>-<classID>-<occurrenceID>-<sliceID>.wav
    ROOT/metadata/UrbanSound8K.csv

The CSV (columns ``slice_file_name,fsID,start,end,salience,fold,classID,class``) lists the 8732 slices (at most
4 s each) of 10 classes (``CLASSES``, in classID order 0..9); a slice's ``fsID`` is the Freesound recording it
was cut from. The WAV files keep their Freesound originals' rates, bit depths and channel counts (mono or
stereo); every slice is read with soundfile (anything libsndfile decodes), averaged to mono, resampled to
``sample_rate`` with torchaudio's sinc resampler (``sources.resample``; slices recorded below ``sample_rate`` are
upsampled and keep their narrower band, counted in ``stats.source_rates``) and its DC offset removed.

Mixtures are made as in the WeakSep paper (Pishdadian, Wichern, Le Roux, TASLP 2020): each clip of
``clip_seconds`` holds ``events_min..events_max`` events (uniform count, default 1-3) of distinct classes
(drawn uniformly without replacement from ``classes``), each a slice of its class drawn uniformly from the
clip's split, at a uniformly random onset such that it ends inside the clip (a slice longer than the clip
gives a random excerpt that long which holds sound), at a level (RMS over its sounding part) uniform in
``[event_db_min, event_db_max]`` dBFS. Events overlap wherever their random spans do; the overlap is measured,
not forced (``overlap_s`` per clip, ``stats.pools.*.overlap``).

Classes: the default ``classes`` are the five of the public WeakSep re-implementation (car_horn, dog_bark,
gun_shot, jackhammer, siren); any subset of the 10 works (``classes=all`` takes all 10).

Splits are whole folds (``train_folds``, ``valid_folds``, ``test_folds``; default 1-6 / 7 / 8, the
re-implementation's "folds 1-6 train, 7-8 eval", with fold 7 for validation and fold 8 for the test; folds 9
and 10 are then unused). UrbanSound8K puts all slices of one Freesound recording (``fsID``) into one fold, so
no recording is in two splits; the build checks this and refuses a copy whose CSV breaks it.

Pools (clip counts are options) and their members:

* ``train/mixtures`` [10000]: ``mix`` only (the weakly labelled training set);
* ``train/isolated`` [10000]: ``mix`` and one stem per class, from the same training slices as other random
  clips (the supervised upper bound's pool);
* ``valid/eval`` [1000] and ``test/eval`` [1000]: ``mix`` and one stem per class.

A clip with stems stores one stem per class: the class's event where the class is present, all zeros where it
is absent. If the float stems or their sum would peak above -1 dBFS, the whole clip is scaled down by one gain
(``scale_db``, 0 when none); each stem is then rounded to int16 and ``mix`` is their exact int16 sum, so
``mix == sum(stems)`` holds sample for sample in the stored data.

Per-clip metadata (``<key>.json``): ``labels`` (classes present, in ``classes`` order; what the data module
turns into the multi-hot ``labels``), ``events`` (``[label, onset_s, offset_s]`` sorted by onset: the first
and last 10 ms frame of the placed excerpt at or above its slice's activity threshold, 40 dB under the slice's
loudest frame), ``n_events``, ``overlap_s`` (seconds with two or more events sounding), ``level_db`` (the mix,
dBFS RMS), ``scale_db``, and ``source``: per event the ``slice`` (``foldN/<file>.wav``), ``fsID``, ``fold``,
``salience``, ``source_rate``, ``source_channels``, the excerpt ``from_s``/``to_s`` within the slice, ``at_s``
(where it starts in the clip), ``onset_s``/``offset_s`` and ``level_db``.

A slice that holds no sound (every 10 ms frame below -90 dBFS) cannot make an event; it is left out and listed
in ``stats.left_out_slices``. A copy whose CSV does not list 8732 slices is refused unless
``allow_incomplete=true``; files the CSV lists for the chosen folds and classes must all be there.

Determinism: everything random comes from numpy Generators seeded by ``(seed, purpose, pool, clip)``, so a
clip does not depend on the other pools' counts; slices are read in CSV order. Two builds with one seed from one
copy give byte-identical shards and ``dataset.json``. The resampled slices of the split being written are kept
in a temporary float32 file inside ``out`` (``.slices-*``, removed after) rather than in memory.
"""
from __future__ import annotations

import csv
import hashlib
import os
import re
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import soundfile as sf

from ..shards import DatasetInfo, DatasetWriter
from . import sources as src
from .events import EVENT_POOLS as POOLS
from .events import EventPool, overlap_samples, seeded_rng

NAME = "urbansound8k"
VERSION = 1
DEBIAN_PACKAGES: list[str] = []  # WAV files only: nothing to install

# The 10 classes in classID order (the CSV's classID column is the index here).
CLASSES = ("air_conditioner", "car_horn", "children_playing", "dog_bark", "drilling", "engine_idling", "gun_shot",
           "jackhammer", "siren", "street_music")
DEFAULT_CLASSES = ("car_horn", "dog_bark", "gun_shot", "jackhammer", "siren")
CSV_COLUMNS = ("slice_file_name", "fsID", "start", "end", "salience", "fold", "classID", "class")
METADATA_CSV = Path("metadata") / "UrbanSound8K.csv"
FOLDS = tuple(range(1, 11))
EXPECTED_SLICES = 8732
SPLITS = ("train", "valid", "test")
FRAME_SECONDS = 0.01  # frames of the activity measure
ACTIVE_BELOW_PEAK_DB = 40.0  # a frame sounds when it is at most this far under the slice's loudest frame
SILENT_DB = -90.0  # a slice whose loudest frame is quieter than this holds no sound
PEAK = src.PEAK  # stored clips peak at -1 dBFS at most
CACHE_PREFIX = ".slices-"  # temporary folder inside ``out`` holding the resampled slices of one split
FIX = "extract UrbanSound8K.tar.gz again"
LAYOUT = ("ROOT/audio/fold1..fold10/<fsID>-<classID>-<occurrenceID>-<sliceID>.wav and "
          "ROOT/metadata/UrbanSound8K.csv")
_SLICE_NAME = re.compile(r"^(\d+)-(\d+)-(\d+)-(\d+)\.wav$")

LICENCE_NOTE = (
    "UrbanSound8K (J. Salamon, C. Jacoby, J. P. Bello, 'A Dataset and Taxonomy for Urban Sound Research', ACM "
    "Multimedia 2014) is offered free of charge for non-commercial use only under the Creative Commons "
    "Attribution-NonCommercial 3.0 licence; all slices are excerpts of recordings uploaded to freesound.org, "
    "credited in the dataset's FREESOUNDCREDITS.txt")


class UrbanDatasetError(RuntimeError):
    """The user's copy of UrbanSound8K or URBAN-SED is missing, incomplete or unreadable; the message names the
    file and the fix."""


@dataclass
class Options:
    """Settings of ``urbansound8k`` (``key=value`` on the command line; all recorded in dataset.json)."""

    root: str = ""  # your UrbanSound8K folder (holds audio/fold1..fold10 and metadata/UrbanSound8K.csv); required
    seed: int = 0  # seeds every random choice of the mixtures (>= 0)
    classes: str = ",".join(DEFAULT_CLASSES)  # comma-separated subset of the 10 classes; all: every class
    train_folds: str = "1-6"  # folds of train/mixtures and train/isolated, e.g. 1-6 or 1,2,3
    valid_folds: str = "7"  # folds of valid/eval
    test_folds: str = "8"  # folds of test/eval (with the defaults folds 9 and 10 are unused)
    salience: str = "all"  # all: every slice; foreground: only slices annotated as foreground (salience 1)
    sample_rate: int = 16000  # Hz of the stored clips; every slice is resampled to it
    clip_seconds: float = 4.0  # length of every clip (UrbanSound8K slices are at most 4 s)
    events_min: int = 1  # fewest events per clip (each of another class)
    events_max: int = 3  # most events per clip; the count is uniform in [min, max]
    event_db_min: float = -32.0  # level of each event (RMS over its sounding part), uniform in [min, max] dBFS
    event_db_max: float = -20.0  # upper end of the event level range, dBFS
    mixtures_clips: int = 10000  # train/mixtures: mix only, with labels and events (the weakly labelled set)
    isolated_clips: int = 10000  # train/isolated: mix and every class stem, from the training folds
    valid_clips: int = 1000  # valid/eval: mix and every class stem
    test_clips: int = 1000  # test/eval: mix and every class stem
    clips_per_shard: int = 100  # clips per tar shard
    allow_incomplete: bool = False  # build from a copy whose CSV does not list all 8732 slices


# ----------------------------------------------------------------------------- options


def parse_classes(value: str, valid: Iterable[str], option: str = "classes", recipe: str = NAME) -> tuple[str, ...]:
    """The classes a comma-separated option names, in the order of ``valid``; ``all`` (or empty) is every class.
    An unknown or repeated name raises ``ValueError`` naming the option and listing the valid classes."""
    valid = tuple(valid)
    text = str(value or "").strip()
    if text.lower() in ("", "all"):
        return valid
    names = [c.strip() for c in text.split(",") if c.strip()]
    unknown = [c for c in names if c not in valid]
    if unknown:
        raise ValueError(f"{recipe}: {option}={value!r}: unknown class {unknown[0]!r}; valid classes: "
                         f"{', '.join(valid)} (or {option}=all)")
    if len(set(names)) != len(names):
        raise ValueError(f"{recipe}: {option}={value!r} names a class twice")
    return tuple(c for c in valid if c in names)


def parse_folds(value: str, option: str) -> tuple[int, ...]:
    """Fold numbers from ``1-6``, ``7`` or ``1,3,5-6``; ``ValueError`` naming the option otherwise."""
    folds: list[int] = []
    for part in str(value).replace(" ", "").split(","):
        m = re.fullmatch(r"(\d+)(?:-(\d+))?", part)
        if m is None:
            raise ValueError(f"{NAME}: {option}={value!r} is not a fold list; write e.g. {option}=1-6 or "
                             f"{option}=1,2,3")
        lo, hi = int(m.group(1)), int(m.group(2) or m.group(1))
        if lo > hi:
            raise ValueError(f"{NAME}: {option}={value!r}: the range {part} runs backwards; write {hi}-{lo}")
        folds += range(lo, hi + 1)
    bad = [f for f in folds if f not in FOLDS]
    if bad:
        raise ValueError(f"{NAME}: {option}={value!r}: fold {bad[0]} does not exist; UrbanSound8K has folds 1..10")
    if len(set(folds)) != len(folds):
        raise ValueError(f"{NAME}: {option}={value!r} names a fold twice")
    return tuple(sorted(folds))


def split_folds(o: Options) -> dict[str, tuple[int, ...]]:
    """The folds of each split; ``ValueError`` when a fold list is malformed or two splits share a fold."""
    folds = {split: parse_folds(getattr(o, f"{split}_folds"), f"{split}_folds") for split in SPLITS}
    for a, b in (("train", "valid"), ("train", "test"), ("valid", "test")):
        shared = sorted(set(folds[a]) & set(folds[b]))
        if shared:
            raise ValueError(f"{NAME}: fold {shared[0]} is in both {a}_folds={getattr(o, f'{a}_folds')!r} and "
                             f"{b}_folds={getattr(o, f'{b}_folds')!r}; every fold may belong to one split only")
    return folds


def validate(o: Options) -> None:
    """Raise ``ValueError`` naming the option when a setting cannot work."""
    problems = []
    if not str(o.root or "").strip():
        problems.append("root is required: the folder of your own copy of UrbanSound8K, e.g. "
                        "root=/data/UrbanSound8K (nothing is downloaded)")
    if not isinstance(o.seed, int) or o.seed < 0:
        problems.append(f"seed={o.seed!r} must be a non-negative integer")
    n_classes = len(CLASSES)
    try:
        n_classes = len(parse_classes(o.classes, CLASSES))
    except ValueError as e:
        problems.append(str(e).removeprefix(f"{NAME}: "))
    try:
        split_folds(o)
    except ValueError as e:
        problems.append(str(e).removeprefix(f"{NAME}: "))
    if o.salience not in ("all", "foreground"):
        problems.append(f"salience={o.salience!r} must be all or foreground")
    if not 8000 <= o.sample_rate <= 48000:
        problems.append(f"sample_rate={o.sample_rate} must lie in 8000..48000")
    if not 0.5 <= o.clip_seconds <= 60:
        problems.append(f"clip_seconds={o.clip_seconds} must lie in 0.5..60")
    if o.events_min < 1:
        problems.append(f"events_min={o.events_min} must be >= 1")
    if o.events_max < o.events_min:
        problems.append(f"events_min={o.events_min} exceeds events_max={o.events_max}")
    if o.events_max > n_classes:
        problems.append(f"events_max={o.events_max} exceeds the {n_classes} classes (events in a clip are of "
                        "distinct classes); lower events_max or select more classes")
    if o.event_db_min > o.event_db_max:
        problems.append(f"event_db_min={o.event_db_min} exceeds event_db_max={o.event_db_max}")
    if o.event_db_max > -6:
        problems.append(f"event_db_max={o.event_db_max} leaves no headroom; use -6 dBFS or less")
    for p in POOLS:
        if getattr(o, p.count_option) < 1:
            problems.append(f"{p.count_option}={getattr(o, p.count_option)} must be >= 1")
    if o.clips_per_shard < 1:
        problems.append(f"clips_per_shard={o.clips_per_shard} must be >= 1")
    if problems:
        raise ValueError(f"{NAME}: " + "; ".join(problems))


# ----------------------------------------------------------------------------- the user's folder


@dataclass(frozen=True)
class Slice:
    """One row of UrbanSound8K.csv."""

    name: str  # slice_file_name, e.g. "100032-3-0-0.wav"
    fs_id: int
    start: float  # where the slice starts in the Freesound recording, s
    end: float
    salience: int  # 1 foreground, 2 background
    fold: int
    class_id: int
    label: str
    line: int  # line of the CSV (the header is line 1)

    @property
    def rel(self) -> str:
        """Path relative to ``audio/``: ``foldN/<name>``."""
        return f"fold{self.fold}/{self.name}"


def read_metadata(path: Path) -> list[Slice]:
    """Every row of UrbanSound8K.csv, checked: a bad row raises ``UrbanDatasetError`` naming the file and line."""
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as e:
        raise UrbanDatasetError(f"{path}: not readable as a CSV text file ({e}); {FIX}") from e
    rows = list(csv.reader(text.splitlines()))
    if not rows or tuple(c.strip() for c in rows[0]) != CSV_COLUMNS:
        found = ",".join(rows[0]) if rows else "nothing"
        raise UrbanDatasetError(f"{path}: line 1 must be the header {','.join(CSV_COLUMNS)}, found {found!r}; "
                                f"this is not UrbanSound8K's metadata file ({FIX})")
    out, seen = [], {}
    for line, row in enumerate(rows[1:], start=2):
        if not row or all(not c.strip() for c in row):
            continue
        where = f"{path}, line {line}"
        if len(row) != len(CSV_COLUMNS):
            raise UrbanDatasetError(f"{where}: {len(row)} fields, expected {len(CSV_COLUMNS)} "
                                    f"({','.join(CSV_COLUMNS)}); {FIX}")
        name, fs_id, start, end, salience, fold, class_id, label = (c.strip() for c in row)
        if label not in CLASSES:
            raise UrbanDatasetError(f"{where}: class {label!r} is not one of UrbanSound8K's 10 classes "
                                    f"({', '.join(CLASSES)}); fix or remove the row ({FIX})")
        try:
            s = Slice(name, int(fs_id), float(start), float(end), int(salience), int(fold), int(class_id), label,
                      line)
        except ValueError:
            raise UrbanDatasetError(f"{where}: fsID, start, end, salience, fold and classID must be numbers, got "
                                    f"{row!r}; {FIX}") from None
        if s.fold not in FOLDS:
            raise UrbanDatasetError(f"{where}: fold {s.fold} does not exist (folds are 1..10); {FIX}")
        if CLASSES.index(label) != s.class_id:
            raise UrbanDatasetError(f"{where}: classID {s.class_id} does not belong to class {label!r} (its classID "
                                    f"is {CLASSES.index(label)}); {FIX}")
        if s.salience not in (1, 2):
            raise UrbanDatasetError(f"{where}: salience {s.salience} must be 1 (foreground) or 2 (background); {FIX}")
        m = _SLICE_NAME.match(name)
        if m is None or int(m.group(1)) != s.fs_id or int(m.group(2)) != s.class_id:
            raise UrbanDatasetError(f"{where}: slice_file_name {name!r} does not read <fsID>-<classID>-<occurrenceID>-"
                                    f"<sliceID>.wav with fsID {s.fs_id} and classID {s.class_id}; {FIX}")
        if name in seen:
            raise UrbanDatasetError(f"{where}: {name} is listed twice (first on line {seen[name]}); {FIX}")
        seen[name] = line
        out.append(s)
    return out


def find_slices(o: Options) -> tuple[Path, list[Slice], dict[str, list[Slice]]]:
    """The CSV rows and, per split, the slices the build uses (chosen folds, classes and salience), in CSV order.

    Checks the layout and every file the build will read before anything is written.
    """
    root = Path(o.root).expanduser()
    if not root.is_dir():
        raise UrbanDatasetError(f"root={o.root}: no such folder; point root at your copy of UrbanSound8K, the folder "
                                f"that holds audio/ and metadata/ ({LAYOUT}; the recipe downloads nothing)")
    csv_path = root / METADATA_CSV
    if not csv_path.is_file():
        inner = [p for p in sorted(root.iterdir()) if (p / METADATA_CSV).is_file()] if root.is_dir() else []
        hint = f" (did you mean root={inner[0]}?)" if len(inner) == 1 else ""
        raise UrbanDatasetError(f"{csv_path} is missing: root must be the UrbanSound8K folder laid out as "
                                f"{LAYOUT}{hint}")
    rows = read_metadata(csv_path)
    folds = split_folds(o)
    classes = parse_classes(o.classes, CLASSES)
    by_split: dict[str, list[Slice]] = {}
    for split in SPLITS:
        for fold in folds[split]:
            d = root / "audio" / f"fold{fold}"
            if not d.is_dir():
                raise UrbanDatasetError(f"{d} is missing ({split}_folds uses fold {fold}): the copy must be laid out "
                                        f"as {LAYOUT}; {FIX}")
        by_split[split] = [s for s in rows if s.fold in folds[split] and s.label in classes
                           and (o.salience == "all" or s.salience == 1)]
    missing = [root / "audio" / s.rel for split in SPLITS for s in by_split[split]
               if not (root / "audio" / s.rel).is_file()]
    if missing:
        raise UrbanDatasetError(f"{missing[0]} is missing ({len(missing)} of the slices {METADATA_CSV} lists for the "
                                f"chosen folds and classes are missing); {FIX}")
    owner: dict[int, str] = {}
    for split in SPLITS:
        for s in by_split[split]:
            if owner.setdefault(s.fs_id, split) != split:
                raise UrbanDatasetError(
                    f"{csv_path}, line {s.line}: slices of Freesound recording fsID {s.fs_id} are in the "
                    f"{owner[s.fs_id]} and the {split} folds; UrbanSound8K keeps each recording in one fold, so this "
                    f"CSV was changed ({FIX}); a recording must never be in two splits")
    for split in SPLITS:
        have = {s.label for s in by_split[split]}
        lacking = [c for c in classes if c not in have]
        if lacking:
            kind = "foreground slice" if o.salience == "foreground" else "slice"
            raise UrbanDatasetError(
                f"{csv_path}: no {kind} of class {lacking[0]!r} in {split}_folds={getattr(o, f'{split}_folds')!r}; "
                "every class needs slices in every split: choose other folds or classes")
    return root, rows, by_split


def listing_sha256(root: Path, slices: Iterable[Slice]) -> str:
    """SHA-256 of the sorted ``relative path<TAB>size`` lines of every slice read: tells two copies apart cheaply."""
    lines = sorted(f"audio/{s.rel}\t{(root / 'audio' / s.rel).stat().st_size}" for s in slices)
    return hashlib.sha256("\n".join(lines).encode()).hexdigest()


# ----------------------------------------------------------------------------- reading slices


def read_audio(path: Path, fix: str) -> tuple[np.ndarray, int, int]:
    """Float64 mono samples (channels averaged), the file's rate and channel count; an unreadable or empty file
    raises ``UrbanDatasetError`` naming it and ``fix``."""
    try:
        audio, rate = sf.read(str(path), dtype="float64", always_2d=True)
    except Exception as e:  # soundfile raises several types for broken files
        raise UrbanDatasetError(f"{path}: not readable as audio ({type(e).__name__}: {e}); the file is damaged or "
                                f"not a WAV file: {fix}") from e
    if len(audio) == 0:
        raise UrbanDatasetError(f"{path}: holds no samples; {fix}")
    return audio.mean(axis=1), int(rate), int(audio.shape[1])


def activity(audio: np.ndarray, rate: int) -> tuple[np.ndarray, float]:
    """Per-frame activity (a 10 ms frame sounds when it is at most 40 dB under the loudest frame) and the loudest
    frame's level in dBFS."""
    levels = src.frame_levels_db(audio, rate, FRAME_SECONDS)
    loudest = float(levels.max())
    return levels >= loudest - ACTIVE_BELOW_PEAK_DB, loudest


def sample_mask(frames: np.ndarray, samples: int, rate: int) -> np.ndarray:
    """Per-sample activity from per-frame activity."""
    return np.repeat(frames, max(1, int(round(FRAME_SECONDS * rate))))[:samples]


@dataclass
class SliceAudio:
    """Where a resampled slice lies in the split's cache file, and its sounding samples."""

    slice: Slice
    offset: int
    samples: int
    first_active: int
    last_active: int  # inclusive
    source_rate: int
    source_channels: int


class SliceBank:
    """The resampled slices of one split, written once to a float32 file and read back memory-mapped."""

    def __init__(self, root: Path, slices: list[Slice], rate: int, path: Path, bar: Any):
        self.items: list[SliceAudio] = []
        self.left_out: list[dict[str, Any]] = []
        self.frames: list[np.ndarray] = []  # per-frame activity of each slice
        self.rate = rate
        pos = 0
        with open(path, "wb") as f:
            for s in slices:
                audio, source_rate, channels = read_audio(root / "audio" / s.rel, FIX)
                audio = src.resample(audio, source_rate, rate).astype(np.float64)
                audio = audio - audio.mean()  # DC offset removed (it would count as level and click at the edges)
                frames, loudest = activity(audio, rate)
                bar.update()
                if loudest < SILENT_DB:
                    self.left_out.append({"slice": s.rel, "reason": f"no sound (loudest 10 ms frame "
                                                                    f"{loudest:.1f} dBFS)"})
                    continue
                active = np.flatnonzero(sample_mask(frames, len(audio), rate))
                self.items.append(SliceAudio(s, pos, len(audio), int(active[0]), int(active[-1]), source_rate,
                                             channels))
                self.frames.append(frames)
                f.write(audio.astype(np.float32).tobytes())
                pos += len(audio)
        self.data = np.memmap(path, dtype=np.float32, mode="r", shape=(pos,)) if pos else np.zeros(0, np.float32)
        self.by_class: dict[str, list[int]] = {}
        for i, item in enumerate(self.items):
            self.by_class.setdefault(item.slice.label, []).append(i)

    def audio(self, i: int) -> np.ndarray:
        item = self.items[i]
        return np.asarray(self.data[item.offset: item.offset + item.samples], dtype=np.float64)


# ----------------------------------------------------------------------------- rendering


def _rms_db(x: np.ndarray) -> float:
    return float(10 * np.log10(np.mean(np.square(x)) + 1e-20))


def place_event(bank: SliceBank, i: int, n: int, level_db: float, rate: int,
                generator: np.random.Generator) -> tuple[np.ndarray, dict[str, Any]]:
    """Slice ``i`` of ``bank`` as an event in a clip of ``n`` samples: the whole slice (or, when longer than the
    clip, a random clip-long excerpt that holds sound) at a random start such that it ends inside the clip,
    scaled so its sounding part has RMS ``level_db`` dBFS. Returns the clip-long stem and its description."""
    item, audio = bank.items[i], bank.audio(i)
    mask = sample_mask(bank.frames[i], item.samples, rate)
    length = min(item.samples, n)
    if item.samples > n:  # an excerpt that holds at least one sounding sample
        lo, hi = max(0, item.first_active - n + 1), min(item.samples - n, item.last_active)
        off = int(generator.integers(lo, hi + 1))
    else:
        off = 0
    sounding = np.flatnonzero(mask[off: off + length])
    a, b = int(sounding[0]), int(sounding[-1]) + 1
    excerpt = audio[off: off + length] * 10 ** ((level_db - _rms_db(audio[off + a: off + b])) / 20)
    at = int(generator.integers(0, n - length + 1))
    stem = np.zeros(n, dtype=np.float64)
    stem[at: at + length] = excerpt
    s = item.slice
    info = {"label": s.label, "slice": s.rel, "fsID": s.fs_id, "fold": s.fold, "salience": s.salience,
            "source_rate": item.source_rate, "source_channels": item.source_channels,
            "from_s": round(off / rate, 6), "to_s": round((off + length) / rate, 6), "at_s": round(at / rate, 6),
            "onset_s": round((at + a) / rate, 6), "offset_s": round((at + b) / rate, 6),
            "level_db": round(level_db, 2)}
    return stem, info


def quantize_clip(stems: list[np.ndarray]) -> tuple[list[np.ndarray], np.ndarray, float]:
    """int16 stems and their exact int16 sum; all stems scaled down together when a stem or their sum would peak
    above -1 dBFS. Returns the stems, the mix and the scale applied (1.0: none)."""
    peak = max(float(np.max(np.abs(np.sum(stems, axis=0)))), max(float(np.max(np.abs(s))) for s in stems))
    scale = PEAK / peak if peak > PEAK else 1.0
    out, mix, inner = src.quantize_stems([s * scale for s in stems])
    return out, mix, scale * inner


def render_clip(pool: EventPool, index: int, o: Options, classes: tuple[str, ...],
                bank: SliceBank) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """One clip of a pool: int16 ``mix`` and one stem per class, and its metadata."""
    rate, n = o.sample_rate, int(round(o.clip_seconds * o.sample_rate))
    generator = seeded_rng(o.seed, 20, POOLS.index(pool), index)
    k = int(generator.integers(o.events_min, o.events_max + 1))
    chosen = generator.choice(len(classes), size=k, replace=False)
    stems = {c: np.zeros(n, dtype=np.float64) for c in classes}
    events = []
    for c in sorted(int(x) for x in chosen):
        label = classes[c]
        candidates = bank.by_class[label]
        i = candidates[int(generator.integers(len(candidates)))]
        level = float(generator.uniform(o.event_db_min, o.event_db_max))
        stems[label], info = place_event(bank, i, n, level, rate, generator)
        events.append(info)
    events.sort(key=lambda e: (e["onset_s"], e["label"]))
    quantized, mix, scale = quantize_clip([stems[c] for c in classes])
    audio = {"mix": mix, **dict(zip(classes, quantized, strict=True))}
    meta = {
        "labels": [c for c in classes if any(e["label"] == c for e in events)],
        "events": [[e["label"], e["onset_s"], e["offset_s"]] for e in events],
        "n_events": len(events),
        "overlap_s": round(overlap_samples(events, n, rate) / rate, 4),
        "level_db": round(src.level_db(mix), 2),
        "scale_db": round(float(20 * np.log10(scale)), 3),
        "source": {"dataset": "UrbanSound8K", "events": events},
    }
    return audio, meta


# ----------------------------------------------------------------------------- build


def _clear_previous_build(out: Path) -> None:
    """Remove tar shards a previous build left in this recipe's pool folders and slice caches of a killed build;
    nothing else is touched."""
    import shutil

    for p in POOLS:
        folder = out / p.split / p.pool
        if folder.is_dir():
            for tar in folder.glob("*.tar"):
                tar.unlink()
    for stale in out.glob(f"{CACHE_PREFIX}*"):
        if stale.is_dir():
            shutil.rmtree(stale)


def software() -> dict[str, str]:
    import torch
    import torchaudio

    return {"numpy": np.__version__, "torch": torch.__version__, "torchaudio": torchaudio.__version__,
            "soundfile": sf.__version__, "libsndfile": sf.__libsndfile_version__}


def _pool_stats(metas: list[dict[str, Any]], classes: tuple[str, ...], n: int, rate: int,
                events_max: int) -> dict[str, Any]:
    counts = [m["n_events"] for m in metas]
    overlap = [m["overlap_s"] for m in metas]
    return {
        "clips": len(metas),
        "events_per_clip": {str(k): counts.count(k) for k in range(1, events_max + 1)},
        "clips_per_class": {c: sum(c in m["labels"] for m in metas) for c in classes},
        "overlap": {"time_share_2plus": round(sum(overlap) / (len(metas) * n / rate), 4),
                    "clips_with_overlap": sum(s > 0 for s in overlap),
                    "mean_overlap_s": round(float(np.mean(overlap)), 4)},
        "event_seconds_mean": round(float(np.mean([e[2] - e[1] for m in metas for e in m["events"]])), 3),
        "peak_scaled_clips": int(sum(m["scale_db"] < 0 for m in metas)),
        "slices_used": len({e["slice"] for m in metas for e in m["source"]["events"]}),
    }


def build(out: str | os.PathLike, options: Options | None = None, progress: bool = True) -> DatasetInfo:
    """Build the dataset into ``out`` (``dataset.json`` + tar shards) and return its ``DatasetInfo``.

    Raises ``ValueError`` for impossible options and ``UrbanDatasetError`` (a ``RuntimeError``) naming the file
    and the fix for a missing, incomplete or unreadable copy; folder and option problems are found before
    anything is written. Tar shards a previous build left in the pool folders are removed first.
    """
    from tqdm import tqdm

    o = options if options is not None else Options()
    validate(o)
    root, rows, by_split = find_slices(o)
    complete = len(rows) == EXPECTED_SLICES
    if not complete and not o.allow_incomplete:
        raise UrbanDatasetError(
            f"{root / METADATA_CSV}: not a complete UrbanSound8K copy: it lists {len(rows)} slices (expected "
            f"{EXPECTED_SLICES}). Point root at a complete copy, or set allow_incomplete=true to build from these "
            "slices anyway (results are then not comparable with published UrbanSound8K numbers)")
    classes = parse_classes(o.classes, CLASSES)
    folds = split_folds(o)
    rate, n = o.sample_rate, int(round(o.clip_seconds * o.sample_rate))
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    _clear_previous_build(out)
    info = DatasetInfo(name=NAME, sample_rate=rate, stems=list(classes), classes=list(classes))
    writer = DatasetWriter(out, info, clips_per_shard=o.clips_per_shard)
    metas: dict[str, list[dict[str, Any]]] = {}
    left_out: list[dict[str, Any]] = []
    rates: dict[str, int] = {}
    channels: dict[str, int] = {}
    slice_bar = tqdm(total=sum(len(v) for v in by_split.values()), desc=f"{NAME} slices", unit="slice",
                     disable=not progress)
    clip_bar = tqdm(total=sum(getattr(o, p.count_option) for p in POOLS), desc=f"{NAME} clips", unit="clip",
                    disable=not progress)
    with tempfile.TemporaryDirectory(prefix=CACHE_PREFIX, dir=out) as tmp:
        for split in SPLITS:
            cache = Path(tmp) / f"{split}.f32"
            bank = SliceBank(root, by_split[split], rate, cache, slice_bar)
            left_out += bank.left_out
            for item in bank.items:
                rates[str(item.source_rate)] = rates.get(str(item.source_rate), 0) + 1
                channels[str(item.source_channels)] = channels.get(str(item.source_channels), 0) + 1
            silent = [c for c in classes if c not in bank.by_class]
            if silent:
                raise UrbanDatasetError(f"{root}: every slice of class {silent[0]!r} in {split}_folds="
                                        f"{getattr(o, f'{split}_folds')!r} holds no sound (see the files named in "
                                        f"{[x['slice'] for x in bank.left_out][:5]}); choose other folds or classes")
            for p in (p for p in POOLS if p.split == split):
                members = ["mix", *classes] if p.stems else ["mix"]
                metas[p.name] = []
                with writer.pool(p.split, p.pool, members) as w:
                    for k in range(getattr(o, p.count_option)):
                        audio, meta = render_clip(p, k, o, classes, bank)
                        w.add(f"{p.split}-{p.pool}-{k:05d}", {s: audio[s] for s in members}, meta)
                        metas[p.name].append(meta)
                        clip_bar.update()
            del bank  # releases the memory map, so the split's cache file can go now
            cache.unlink()
    slice_bar.close()
    clip_bar.close()
    used = [s for split in SPLITS for s in by_split[split]]
    info.made_by = {
        "recipe": NAME, "version": VERSION, "seed": o.seed, "options": asdict(o),
        "source": {"dataset": "UrbanSound8K", "slices_found": len(rows), "slices_expected": EXPECTED_SLICES,
                   "complete": complete, "folds": {s: list(f) for s, f in folds.items()},
                   "metadata_sha256": hashlib.sha256((root / METADATA_CSV).read_bytes()).hexdigest(),
                   "listing_sha256": listing_sha256(root, used)},
        "software": software(),
    }
    info.licences = [{"source": "UrbanSound8K", "licence": "CC-BY-NC-3.0",
                      "copyright": "Justin Salamon, Christopher Jacoby, Juan Pablo Bello (dataset); the Freesound "
                                   "uploaders credited in FREESOUNDCREDITS.txt (recordings)",
                      "used_for": "every event", "terms": LICENCE_NOTE}]
    info.stats = {
        "folds": {s: list(f) for s, f in folds.items()},
        "slices": {split: {c: sum(s.label == c for s in by_split[split]) for c in classes} for split in SPLITS},
        "recordings": {split: len({s.fs_id for s in by_split[split]}) for split in SPLITS},
        "slices_per_fold_found": {str(f): sum(s.fold == f for s in rows) for f in FOLDS},
        "left_out_slices": left_out,
        "source_rates": dict(sorted(rates.items(), key=lambda kv: int(kv[0]))),
        "source_channels": dict(sorted(channels.items())),
        "pools": {p.name: _pool_stats(metas[p.name], classes, n, rate, o.events_max) for p in POOLS},
    }
    return writer.close()  # no build time or output path in dataset.json: it stays identical across builds
