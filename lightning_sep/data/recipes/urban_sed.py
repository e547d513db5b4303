"""Recipe ``urban-sed``: URBAN-SED's real soundscapes with their strong labels, from the user's own copy, for
weakly labelled training and for sound-event classifiers (WeakSep's assessor).

Nothing is downloaded: ``root=`` names the folder of your copy (URBAN-SED v2.0.0, Zenodo record 1324404), laid
out as the dataset ships::

    ROOT/audio/{train,validate,test}/soundscape_<split>_<name><N>.wav          (10 s, 44.1 kHz, mono, 16-bit)
    ROOT/annotations/{train,validate,test}/soundscape_<split>_<name><N>.txt    (one event a line: onset TAB
                                                                                offset TAB label, in seconds)

The ``.jams`` files beside the annotations are not read. The 10,000 soundscapes (6000 train, 2000 validate,
2000 test) were made with Scaper from UrbanSound8K slices (train from folds 1-6, validate from folds 7-8, test
from folds 9-10), 1-9 events each of the same 10 classes, over a Brownian-noise background that is not
annotated.

What it holds, and what it does not: a soundscape is already a mixture, and URBAN-SED ships no isolated
sources (its JAMS files hold Scaper's generation specs, not audio; regenerating the audio from them needs the
UrbanSound8K slices and gives similar, not identical, audio). So every pool holds ``mix`` only, with
``labels`` (clip level) and ``events`` (frame level) in each clip's metadata:

* ``train/mixtures``: ``audio/train``;
* ``valid/eval``: ``audio/validate``;
* ``test/eval``: ``audio/test``.

There are no separation references here: SI-SDR cannot be computed on any pool. Use this dataset to train and
evaluate the sound-event classifier (clip- and frame-level labels), and to train a separator with weak labels
on real soundscapes, then score separation on a dataset with references (``urbansound8k``'s ``valid/eval`` and
``test/eval``). ``dataset.json`` says so: ``stats.pools_without_stems`` lists every pool, and
``stats.separation_references`` explains it. ``stems`` and ``classes`` are the class list, so a separator built
from this ``dataset.json`` has one output per class. Note that URBAN-SED's validate and test sets were made from
UrbanSound8K folds 7-10: a separator trained on URBAN-SED ``train`` (folds 1-6) can be scored on
``urbansound8k`` with its default folds (valid 7, test 8) without sharing a recording.

Clips: ``clip_seconds=10`` (default) stores whole soundscapes. ``clip_seconds=N`` below 10 cuts each soundscape
into consecutive N-second chunks from its start (a last piece shorter than N is dropped; ``stats.dropped_seconds``
counts it); each event is clipped to the chunk (an event across a boundary becomes one event in each chunk) and
a chunk's ``labels`` are the classes of the events inside it (a chunk can have none: it holds only the
background).

Classes: ``classes`` (default all 10) may name a subset. A clip with an event of a class outside the subset
still holds that sound, so its labels would be incomplete: ``unselected=skip`` (default) leaves such clips out
(counted in ``stats.skipped_clips``); ``unselected=keep`` keeps them with those events dropped from ``labels`` and
``events`` and listed as ``unlabelled_events``.

Audio: each soundscape is read with soundfile, averaged to mono, resampled to ``sample_rate`` with torchaudio's
sinc resampler (``sources.resample``), scaled down as a whole only if resampling overshoots int16 (``gain_db``;
0.0 otherwise) and rounded to int16. A source rate below ``sample_rate`` is an error naming the file (it would be
upsampled without the missing bandwidth).

Per-clip metadata (``<key>.json``): ``labels``, ``events`` (``[label, onset_s, offset_s]`` relative to the clip,
sorted by onset, rounded to 0.1 ms), ``n_events``, ``overlap_s``, ``level_db`` (dBFS RMS), ``gain_db``,
``whole_soundscape``, ``source`` (``soundscape``, ``split_folder``, ``audio`` and ``annotation`` paths relative to
``root``, ``start_s`` in the soundscape, ``source_rate``, ``source_channels``, ``soundscape_seconds``), and with
``unselected=keep`` ``unlabelled_events``.

Annotation problems (a line that is not onset, offset, label; an unknown label; onset < 0; offset <= onset; an
event ending after the soundscape) raise an error naming the file and line. A copy without 6000/2000/2000
soundscapes is refused unless ``allow_incomplete=true``.

Determinism: the one random choice is the order of the training soundscapes (shuffled with ``seed`` so every
shard mixes the dataset's generation settings); two builds with one seed from one copy give byte-identical shards
and ``dataset.json``.
"""
from __future__ import annotations

import hashlib
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf

from ..shards import DatasetInfo, DatasetWriter, to_int16
from . import sources as src
from .events import overlap_samples, seeded_rng
from .urbansound8k import CLASSES, UrbanDatasetError, parse_classes, read_audio, software

NAME = "urban-sed"
VERSION = 1
DEBIAN_PACKAGES: list[str] = []  # WAV and text files only: nothing to install

# pool -> URBAN-SED folder
FOLDERS = {"train/mixtures": "train", "valid/eval": "validate", "test/eval": "test"}
EXPECTED = {"train": 6000, "validate": 2000, "test": 2000}
SOUNDSCAPE_SECONDS = 10.0
END_TOLERANCE_S = 0.01  # an event may end this much after the soundscape (float rounding); it is clipped
INT16_LIMIT = 32766 / 32768  # largest magnitude stored without a gain
FIX = "extract URBAN-SED_v2.0.0.tar.gz again"
LAYOUT = ("ROOT/audio/{train,validate,test}/soundscape_*.wav and ROOT/annotations/{train,validate,test}/"
          "soundscape_*.txt")
LICENCE_NOTE = (
    "URBAN-SED (J. Salamon, D. MacConnell, M. Cartwright, P. Li, J. P. Bello, 'Scaper: A Library for Soundscape "
    "Synthesis and Augmentation', WASPAA 2017; doi:10.5281/zenodo.1324404) is offered under the Creative Commons "
    "Attribution 4.0 International licence; its events are excerpts of freesound.org recordings taken from "
    "UrbanSound8K, credited in the dataset's FREESOUNDCREDITS.txt")
SEPARATION_REFERENCES = (
    "none: URBAN-SED ships mixtures (soundscapes) and event annotations only, no isolated sources, so no pool "
    "holds a class stem and separation (SI-SDR) cannot be scored on this dataset; use it for classifier training "
    "and evaluation and for weakly labelled separator training, and score separation on a dataset with "
    "references (e.g. urbansound8k's valid/eval and test/eval)")


@dataclass
class Options:
    """Settings of ``urban-sed`` (``key=value`` on the command line; all recorded in dataset.json)."""

    root: str = ""  # your URBAN-SED folder (holds audio/{train,validate,test} and annotations/...); required
    seed: int = 0  # shuffles the order of the training soundscapes, the only random choice (>= 0)
    classes: str = "all"  # comma-separated subset of the 10 classes; all: every class
    unselected: str = "skip"  # clips with an event of an unselected class: skip them, or keep them unlabelled there
    sample_rate: int = 16000  # Hz of the stored clips; the 44.1 kHz soundscapes are resampled to it
    clip_seconds: float = 10.0  # 10: whole soundscapes; N < 10: consecutive N-second chunks, events clipped
    clips_per_shard: int = 100  # clips per tar shard
    allow_incomplete: bool = False  # build from a copy without 6000 train, 2000 validate and 2000 test soundscapes


def validate(o: Options) -> None:
    """Raise ``ValueError`` naming the option when a setting cannot work."""
    problems = []
    if not str(o.root or "").strip():
        problems.append("root is required: the folder of your own copy of URBAN-SED, e.g. "
                        "root=/data/URBAN-SED_v2.0.0 (nothing is downloaded)")
    if not isinstance(o.seed, int) or o.seed < 0:
        problems.append(f"seed={o.seed!r} must be a non-negative integer")
    try:
        parse_classes(o.classes, CLASSES, recipe=NAME)
    except ValueError as e:
        problems.append(str(e).removeprefix(f"{NAME}: "))
    if o.unselected not in ("skip", "keep"):
        problems.append(f"unselected={o.unselected!r} must be skip or keep")
    if not 8000 <= o.sample_rate <= 44100:
        problems.append(f"sample_rate={o.sample_rate} must lie in 8000..44100 (the soundscapes are 44.1 kHz)")
    if not 0.5 <= o.clip_seconds <= SOUNDSCAPE_SECONDS:
        problems.append(f"clip_seconds={o.clip_seconds} must lie in 0.5..10 (10: whole soundscapes)")
    if o.clips_per_shard < 1:
        problems.append(f"clips_per_shard={o.clips_per_shard} must be >= 1")
    if problems:
        raise ValueError(f"{NAME}: " + "; ".join(problems))


# ----------------------------------------------------------------------------- the user's folder


@dataclass
class Soundscape:
    name: str  # file name without extension, e.g. "soundscape_train_bimodal0"
    folder: str  # train, validate or test
    audio: Path
    annotation: Path
    events: list[tuple[float, float, str]]  # (onset_s, offset_s, label) as annotated, in file order
    source_rate: int  # from the WAV header
    seconds: float  # length from the WAV header


def read_annotation(path: Path) -> list[tuple[float, float, str, int]]:
    """``(onset, offset, label, line)`` of every event line; a malformed line or a label outside the 10 classes
    raises ``UrbanDatasetError`` naming the file and line."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise UrbanDatasetError(f"{path}: not readable as a text file ({e}); {FIX}") from e
    events = []
    for line, raw in enumerate(text.splitlines(), start=1):
        if not raw.strip():
            continue
        fields = raw.split("\t") if "\t" in raw else raw.split()
        fields = [f.strip() for f in fields]
        where = f"{path}, line {line}"
        if len(fields) != 3:
            raise UrbanDatasetError(f"{where}: {raw!r} is not 'onset<TAB>offset<TAB>label' (3 fields); {FIX}")
        try:
            onset, offset = float(fields[0]), float(fields[1])
        except ValueError:
            raise UrbanDatasetError(f"{where}: onset and offset must be numbers (seconds), got {raw!r}; "
                                    f"{FIX}") from None
        label = fields[2]
        if label not in CLASSES:
            raise UrbanDatasetError(f"{where}: label {label!r} is not one of URBAN-SED's 10 classes "
                                    f"({', '.join(CLASSES)}); fix the line ({FIX})")
        if not (np.isfinite(onset) and np.isfinite(offset)) or onset < 0 or offset <= onset:
            raise UrbanDatasetError(f"{where}: onset {fields[0]} and offset {fields[1]} must satisfy "
                                    f"0 <= onset < offset; {FIX}")
        events.append((onset, offset, label, line))
    return events


def find_soundscapes(o: Options) -> tuple[Path, dict[str, list[Soundscape]]]:
    """Every soundscape of the three folders with its annotation, sorted by name; checked before anything is
    written (layout, pairing of audio and annotation files, every annotation line)."""
    root = Path(o.root).expanduser()
    if not root.is_dir():
        raise UrbanDatasetError(f"root={o.root}: no such folder; point root at your copy of URBAN-SED, the folder "
                                f"that holds audio/ and annotations/ ({LAYOUT}; the recipe downloads nothing)")
    out: dict[str, list[Soundscape]] = {}
    for folder in EXPECTED:
        for kind in ("audio", "annotations"):
            d = root / kind / folder
            if not d.is_dir():
                inner = [p for p in sorted(root.iterdir()) if (p / kind / folder).is_dir()]
                hint = f" (did you mean root={inner[0]}?)" if len(inner) == 1 else ""
                raise UrbanDatasetError(f"{d} is missing: root must be the URBAN-SED folder laid out as "
                                        f"{LAYOUT}{hint}")
        wavs = {p.stem: p for p in (root / "audio" / folder).glob("*.wav") if not p.name.startswith(".")}
        txts = {p.stem: p for p in (root / "annotations" / folder).glob("*.txt") if not p.name.startswith(".")}
        for name in sorted(wavs):
            if name not in txts:
                raise UrbanDatasetError(f"{root / 'annotations' / folder / (name + '.txt')} is missing: every "
                                        f"soundscape needs its annotation beside it ({LAYOUT}); {FIX}")
        for name in sorted(txts):
            if name not in wavs:
                raise UrbanDatasetError(f"{root / 'audio' / folder / (name + '.wav')} is missing: the annotation "
                                        f"{txts[name]} has no soundscape ({LAYOUT}); {FIX}")
        if not wavs:
            raise UrbanDatasetError(f"{root / 'audio' / folder} holds no soundscape_*.wav files; {FIX}")
        out[folder] = [checked_soundscape(name, folder, wavs[name], txts[name], o.sample_rate)
                       for name in sorted(wavs)]
    return root, out


def checked_soundscape(name: str, folder: str, wav: Path, txt: Path, rate: int) -> Soundscape:
    """A soundscape whose WAV header is readable, at ``rate`` or more, and whose annotated events lie inside it."""
    try:
        header = sf.info(str(wav))
    except Exception as e:  # soundfile raises several types for broken files
        raise UrbanDatasetError(f"{wav}: not readable as audio ({type(e).__name__}: {e}); the file is damaged or "
                                f"not a WAV file: {FIX}") from e
    if header.samplerate < rate:
        raise UrbanDatasetError(f"{wav}: {header.samplerate} Hz, below sample_rate={rate}; URBAN-SED's files are "
                                f"44100 Hz, so this copy was converted: build from the original files ({FIX}) or "
                                f"use sample_rate={header.samplerate} or less")
    seconds = header.frames / header.samplerate
    events = read_annotation(txt)
    for _onset, offset, _label, line in events:
        if offset > seconds + END_TOLERANCE_S:
            raise UrbanDatasetError(f"{txt}, line {line}: the event ends at {offset} s, after the end of the "
                                    f"soundscape {wav} ({seconds:.3f} s); {FIX}")
    return Soundscape(name, folder, wav, txt, [e[:3] for e in events], int(header.samplerate), seconds)


def listing_sha256(root: Path, scapes: list[Soundscape]) -> str:
    """SHA-256 of the sorted ``relative path<TAB>size`` lines of every file read."""
    lines = sorted(f"{p.relative_to(root).as_posix()}\t{p.stat().st_size}" for s in scapes
                   for p in (s.audio, s.annotation))
    return hashlib.sha256("\n".join(lines).encode()).hexdigest()


# ----------------------------------------------------------------------------- clips


def clip_events(events: list[tuple[float, float, str]], start_s: float, end_s: float) -> list[list[Any]]:
    """The events inside ``[start_s, end_s)``, clipped to it, relative to ``start_s``, rounded to 0.1 ms, sorted by
    onset (then label); an event touching the span for less than 0.1 ms is left out."""
    out = []
    for onset, offset, label in events:
        a, b = round(max(onset, start_s) - start_s, 4), round(min(offset, end_s) - start_s, 4)
        if b > a:
            out.append([label, a, b])
    return sorted(out, key=lambda e: (e[1], e[0], e[2]))


def prepare(scape: Soundscape, rate: int) -> tuple[np.ndarray, dict[str, Any]]:
    """The soundscape as int16 at ``rate`` and how it was read (rate, channels, gain)."""
    audio, source_rate, channels = read_audio(scape.audio, FIX)
    seconds = len(audio) / source_rate
    y = src.resample(audio, source_rate, rate).astype(np.float64)
    peak = float(np.max(np.abs(y))) if len(y) else 0.0
    gain = INT16_LIMIT / peak if peak > INT16_LIMIT else 1.0
    return to_int16(y * gain), {"source_rate": source_rate, "source_channels": channels,
                                "soundscape_seconds": round(seconds, 6),
                                "gain_db": round(float(20 * np.log10(gain)), 4)}


def spans(samples: int, size: int) -> list[tuple[int, int]]:
    """The whole soundscape when it is not longer than ``size``; else consecutive ``size``-sample chunks (a last
    piece shorter than ``size`` dropped)."""
    if samples <= size:
        return [(0, samples)]
    return [(s, s + size) for s in range(0, samples - size + 1, size)]


# ----------------------------------------------------------------------------- build


def _clear_previous_build(out: Path) -> None:
    """Remove tar shards a previous build left in this recipe's pool folders (nothing else is touched)."""
    for pool in FOLDERS:
        folder = out / pool
        if folder.is_dir():
            for tar in folder.glob("*.tar"):
                tar.unlink()


def build(out: str | os.PathLike, options: Options | None = None, progress: bool = True) -> DatasetInfo:
    """Build the dataset into ``out`` (``dataset.json`` + tar shards) and return its ``DatasetInfo``.

    Raises ``ValueError`` for impossible options and ``UrbanDatasetError`` (a ``RuntimeError``) naming the file
    and the fix for a missing, incomplete or unreadable copy; folder, annotation and option problems are found
    before anything is written. Tar shards a previous build left in the pool folders are removed first.
    """
    from tqdm import tqdm

    o = options if options is not None else Options()
    validate(o)
    root, scapes = find_soundscapes(o)
    counts = {folder: len(v) for folder, v in scapes.items()}
    complete = counts == EXPECTED
    if not complete and not o.allow_incomplete:
        raise UrbanDatasetError(
            f"{root}: not a complete URBAN-SED copy: audio/train has {counts['train']} soundscapes, audio/validate "
            f"{counts['validate']}, audio/test {counts['test']} (expected 6000, 2000, 2000). Point root at a "
            "complete copy, or set allow_incomplete=true to build from these soundscapes anyway (results are then "
            "not comparable with published URBAN-SED numbers)")
    classes = parse_classes(o.classes, CLASSES, recipe=NAME)
    rate, size = o.sample_rate, int(round(o.clip_seconds * o.sample_rate))
    whole = o.clip_seconds >= SOUNDSCAPE_SECONDS
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    _clear_previous_build(out)
    info = DatasetInfo(name=NAME, sample_rate=rate, stems=list(classes), classes=list(classes))
    writer = DatasetWriter(out, info, clips_per_shard=o.clips_per_shard)
    stats: dict[str, dict[str, Any]] = {}
    gains: dict[str, float] = {}
    rates: dict[str, int] = {}
    bar = tqdm(total=sum(counts.values()), desc=f"{NAME} soundscapes", unit="soundscape", disable=not progress)
    for pool, folder in FOLDERS.items():
        order = list(scapes[folder])
        if pool == "train/mixtures":
            order = [order[i] for i in seeded_rng(o.seed, 1).permutation(len(order))]
        split, name = pool.split("/")
        s = {"soundscapes": len(order), "clips": 0, "skipped_clips": 0, "dropped_seconds": 0.0,
             "clips_without_events": 0, "events_per_class": {c: 0 for c in classes}, "unlabelled_events": 0}
        with writer.pool(split, name, ["mix"]) as w:
            for scape in order:
                audio, how = prepare(scape, rate)
                bar.update()
                rates[str(how["source_rate"])] = rates.get(str(how["source_rate"]), 0) + 1
                if how["gain_db"] != 0:
                    gains[scape.name] = how["gain_db"]
                cuts = [(0, len(audio))] if whole else spans(len(audio), size)
                s["dropped_seconds"] += (len(audio) - cuts[-1][1]) / rate
                for a, b in cuts:
                    events = clip_events(scape.events, a / rate, b / rate)
                    kept = [e for e in events if e[0] in classes]
                    other = [e for e in events if e[0] not in classes]
                    if other and o.unselected == "skip":
                        s["skipped_clips"] += 1
                        continue
                    mix = audio[a:b]
                    meta = {
                        "labels": [c for c in classes if any(e[0] == c for e in kept)],
                        "events": kept,
                        "n_events": len(kept),
                        "overlap_s": round(overlap_samples([{"onset_s": e[1], "offset_s": e[2]} for e in kept],
                                                           b - a, rate) / rate, 4),
                        "level_db": round(src.level_db(mix), 2),
                        "gain_db": how["gain_db"],
                        "whole_soundscape": (a, b) == (0, len(audio)),
                        "source": {"dataset": "URBAN-SED", "soundscape": scape.name, "split_folder": folder,
                                   "audio": scape.audio.relative_to(root).as_posix(),
                                   "annotation": scape.annotation.relative_to(root).as_posix(),
                                   "start_s": round(a / rate, 6), "source_rate": how["source_rate"],
                                   "source_channels": how["source_channels"],
                                   "soundscape_seconds": how["soundscape_seconds"]},
                    }
                    if o.unselected == "keep":
                        meta["unlabelled_events"] = other
                        s["unlabelled_events"] += len(other)
                    w.add(f"{split}-{name}-{s['clips']:05d}", {"mix": mix}, meta)
                    s["clips"] += 1
                    s["clips_without_events"] += not kept
                    for e in kept:
                        s["events_per_class"][e[0]] += 1
        s["dropped_seconds"] = round(s["dropped_seconds"], 4)
        stats[pool] = s
    bar.close()
    everything = [x for v in scapes.values() for x in v]
    info.made_by = {
        "recipe": NAME, "version": VERSION, "seed": o.seed, "options": asdict(o),
        "source": {"dataset": "URBAN-SED", "version": "2.0.0", "soundscapes_found": counts,
                   "soundscapes_expected": EXPECTED, "complete": complete,
                   "folders": dict(FOLDERS), "listing_sha256": listing_sha256(root, everything)},
        "software": software(),
    }
    info.licences = [{"source": "URBAN-SED", "licence": "CC-BY-4.0",
                      "copyright": "Justin Salamon, Duncan MacConnell, Mark Cartwright, Peter Li, Juan Pablo Bello "
                                   "(dataset); the Freesound uploaders credited in FREESOUNDCREDITS.txt (recordings)",
                      "used_for": "every clip (the soundscapes and their annotations)", "terms": LICENCE_NOTE}]
    info.stats = {
        "separation_references": SEPARATION_REFERENCES,
        "pools_without_stems": list(FOLDERS),
        "pools": stats,
        "clips": "whole soundscapes" if whole else f"{o.clip_seconds} s chunks from the start of each soundscape",
        "source_rates": dict(sorted(rates.items(), key=lambda kv: int(kv[0]))),
        "gain_db": dict(sorted(gains.items())),
    }
    return writer.close()  # no build time or output path in dataset.json: it stays identical across builds
