"""Recipe ``demo-chorales``: Bach chorales rendered through a soundfont, as vocals over an accompaniment.

A music separation demo built offline. The scores are the four-voice Bach chorales of the music21
package's corpus (PyPI ``music21``); the fluidsynth synthesizer (Debian ``libfluidsynth3``, called
in-process) plays them through a General MIDI soundfont (Debian ``timgm6mb-soundfont``). Two stems:

* ``vocals``: the soprano line (the chorale's melody) on a voice-like patch, drawn per piece from
  ``VOCAL_PROGRAMS`` (Choir Aahs, Voice Oohs, Synth Voice);
* ``accompaniment``: the alto, tenor and bass lines on instruments drawn per piece: one of the
  ``ENSEMBLES`` (strings, organ, keyboard, brass, woodwinds) or a mixed ensemble with each part's
  instrument drawn from every family's choices for that part.

The setting is semi-supervised separation in the NES sense: the **accompaniment** is observed (a pool of
instrumental clips), the **vocals** are not (training mixtures come without them), plus a fully supervised
pool for an upper bound and evaluation splits that hold every stem. MaskNet's unmatched instrumentals are
the observed pool: its pieces are never the mixtures' pieces.

Pools (clip counts are options; defaults in brackets) and their stems:

* ``train/mixtures`` [600] ``mix`` only; ``train/observed`` [600] ``accompaniment`` only;
* ``train/isolated`` [600] ``mix``, ``vocals``, ``accompaniment``;
* ``valid/eval`` [100] and ``test/eval`` [200]: ``mix``, ``vocals``, ``accompaniment``.

**Pieces are disjoint across the five pools, and so are melodies.** Many corpus files share a melody:
Bach harmonised the same hymn tune several times (e.g. "O Haupt voll Blut und Wunden" also appears as
"Herzlich tut mich verlangen" and "Befiehl du deine Wege"), and some files are variants of one movement
(``bwv248.23-2`` and ``bwv248.23-s``). So:

1. files with one BWV number are one chorale: the plain name is kept (``bwv69.6`` over ``bwv69.6-a``), else
   the first by name; the others are skipped (listed in ``stats.corpus.skipped``);
2. chorales are grouped into tunes (``music.melody_groups``): two chorales are one tune when their soprano
   melodies match (``difflib`` ratio >= ``melody_similarity`` of the melody sampled on quarter-note beats,
   repeats merged, pitches relative to the final note), or when music21's chorale catalogue
   (``corpus.chorales.ChoraleListRKBWV``) gives them the same title; groups are closed transitively;
3. tunes (whole groups) are dealt to the pools in proportion to the pools' clip counts (weighted by
   score length; shuffled by the seed, each to the pool furthest below its share).

The piece ids and tune ids of each pool are in ``dataset.json`` (``stats.pieces``, ``stats.tunes``).

Rendering, per piece (all drawn from the seed and the piece id, so a piece sounds the same whichever
pool or worker renders it): a tempo uniform in ``[tempo_bpm_min, tempo_bpm_max]`` quarter notes per
minute, a transposition uniform in ``-transpose_max..transpose_max`` semitones, fermatas held
``fermata_hold_min..max`` times their written length (a smooth stretch of the score's time), one base
velocity in 72..100 with +-6 per note, one reverb send (CC 91) in 10..70 for every part, and instruments.
The accompaniment's three parts are balanced: each instrument's loudness in its part's register is
measured once per build (``calibrate``) and its channel volume (CC 7) evens them out, then each part gets
a random +-``balance_db``. fluidsynth renders at twice the sample rate (at most 96 kHz; its sample
interpolation aliases, so the band that reaches the stored rate stays clean), stereo is averaged to mono,
and the audio is resampled to ``sample_rate`` (``downsample``: ``scipy.signal.resample_poly``).

Clips: a piece's performance is cut into a grid of ``clip_seconds`` windows (grid offset drawn per piece);
a window is usable when notes sound in the soprano and in the accompaniment for at least
``min_active_fraction`` of it (from the score, so no near-silent clip is made). Each pool spreads its clips
over its pieces in proportion to their usable windows; a piece's clips are consecutive usable windows at a
random place (one render per piece of just that section, with one second of lead-in so notes and reverb
are already sounding), and a pool's clips are shuffled.

Levels: per clip the vocals-to-accompaniment ratio (energy over the clip) is uniform in
``[vocals_db_min, vocals_db_max]`` dB and the mixture level uniform in ``[level_db_min, level_db_max]``
dBFS RMS (both parts scaled together to it: they share key and rhythm, so their energies do not simply
add); observed clips draw both the same way and keep the accompaniment level it would have had in such a
mixture (``level - 10 log10(1 + 10^(ratio/10))``). Each stem is quantized to int16 first and ``mix`` is
their exact int16 sum (clips are scaled down to peak at -1 dBFS at most, so nothing clips):
``mix == vocals + accompaniment`` holds in the stored data.

Determinism: every random choice comes from numpy Generators seeded by ``(seed, purpose, ...)``; files are
read in sorted order; fluidsynth renders 32-bit float in a fresh synthesizer per section (no dither, no
state carried between renders); ``workers`` only changes which process does the work. Two builds with one
seed (same package and library versions) give byte-identical shards.

Per-clip metadata (``<key>.json``): ``source`` (``piece``, ``file``, ``bwv``, ``title``, ``tune``,
``window_s``: the clip's place in the performance, seconds; ``window_beats``: the same in the score's
quarter notes; ``tempo_bpm``, ``transpose``, ``fermata_hold``, ``reverb``, ``ensemble``, ``instruments``:
per part the GM ``program`` and its ``name``, with the accompaniment parts' ``gain_db``), ``vocals_db``
(the ratio as stored, after int16 rounding), ``vocals_db_target``, ``level_db``. Observed clips have no
vocals entries.
"""
from __future__ import annotations

import collections
import functools
import multiprocessing
import os
import zlib
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator

import numpy as np

from ..shards import DatasetInfo, DatasetWriter, to_int16
from . import music
from . import sources as src

NAME = "demo-chorales"
VERSION = 1
DEBIAN_PACKAGES = [music.FLUIDSYNTH_PACKAGE, music.SOUNDFONT_PACKAGE]
# Packages whose versions are recorded because they shape the audio.
RECORDED_PACKAGES = DEBIAN_PACKAGES
STEMS = ("vocals", "accompaniment")
ACCOMPANIMENT = ("alto", "tenor", "bass")

# General MIDI programs (0-based; names in music.GM_NAMES). The soprano sings on a voice-like patch.
VOCAL_PROGRAMS = (52, 53, 54)  # Choir Aahs, Voice Oohs, Synth Voice
# Accompaniment ensembles: per part the instruments that suit its register. "single" ensembles are one
# player (an organist, a pianist): one program for all three parts.
ENSEMBLES: dict[str, dict[str, Any]] = {
    "strings": {"single": False, "alto": (40, 41, 48, 49), "tenor": (41, 42, 48, 49), "bass": (42, 43, 48)},
    "organ": {"single": True, "alto": (19, 16, 20), "tenor": (19, 16, 20), "bass": (19, 16, 20)},
    "keyboard": {"single": True, "alto": (0, 1, 6), "tenor": (0, 1, 6), "bass": (0, 1, 6)},
    "brass": {"single": False, "alto": (56, 60, 61), "tenor": (60, 57, 61), "bass": (57, 58, 61)},
    "woodwinds": {"single": False, "alto": (68, 69, 71, 73), "tenor": (69, 70, 71), "bass": (70,)},
}
MIXED = "mixed"  # each part's instrument from every ensemble's choices for that part
ENSEMBLE_NAMES = tuple(ENSEMBLES) + (MIXED,)
# A reference line per part register for measuring an instrument's loudness: a diatonic scale up and down.
CALIBRATION_RANGE = {"alto": (55, 74), "tenor": (48, 67), "bass": (40, 60)}
LEAD_IN_SECONDS = 1.0  # rendered before a section so notes and reverb already sound when the first clip starts
TAIL_SECONDS = 0.05  # rendered after a section, so rounding never leaves its last clip a sample short
PEAK = src.PEAK  # stored clips peak at -1 dBFS at most


@dataclass(frozen=True)
class PoolSpec:
    split: str
    pool: str
    members: tuple[str, ...]
    count_option: str  # the Options field with its clip count

    @property
    def name(self) -> str:
        return f"{self.split}/{self.pool}"

    @property
    def has_vocals(self) -> bool:
        return "mix" in self.members


ALL_STEMS = ("mix",) + STEMS
POOLS = (
    PoolSpec("train", "mixtures", ("mix",), "mixtures_clips"),
    PoolSpec("train", "observed", ("accompaniment",), "observed_clips"),
    PoolSpec("train", "isolated", ALL_STEMS, "isolated_clips"),
    PoolSpec("valid", "eval", ALL_STEMS, "valid_clips"),
    PoolSpec("test", "eval", ALL_STEMS, "test_clips"),
)


@dataclass
class Options:
    """Settings of ``demo-chorales`` (``key=value`` on the command line; all but ``workers`` recorded in
    dataset.json).

    ``soundfont`` and ``fluidsynth`` (the library) default to where the Debian packages install them; ``corpus_dir``
    empty means music21's own Bach corpus. Change them only to read files elsewhere (another General MIDI
    soundfont works, e.g. ``/usr/share/sounds/sf2/FluidR3_GM.sf2`` from ``fluid-soundfont-gm``).
    """

    seed: int = 0  # seeds every random choice (non-negative)
    sample_rate: int = 16000  # Hz of the stored clips (fluidsynth renders at twice this, at most 96 kHz)
    clip_seconds: float = 3.0  # length of every clip
    vocals_db_min: float = -5.0  # vocals-to-accompaniment energy ratio per clip, uniform in [min, max] dB
    vocals_db_max: float = 5.0  # upper end of the per-clip vocals-to-accompaniment ratio, dB
    level_db_min: float = -30.0  # mixture RMS level per clip, uniform in [min, max] dBFS
    level_db_max: float = -18.0  # upper end of the mixture level range, dBFS RMS
    mixtures_clips: int = 600  # train/mixtures: mix only
    observed_clips: int = 600  # train/observed: accompaniment only
    isolated_clips: int = 600  # train/isolated: mix, vocals, accompaniment
    valid_clips: int = 100  # valid/eval: mix, vocals, accompaniment
    test_clips: int = 200  # test/eval: mix, vocals, accompaniment
    tempo_bpm_min: float = 60.0  # tempo per piece, uniform in [min, max] quarter notes per minute
    tempo_bpm_max: float = 100.0  # fastest tempo, quarter notes per minute
    transpose_max: int = 3  # each piece is transposed by a whole number of semitones in [-max, max]
    fermata_hold_min: float = 1.5  # a fermata lasts this many times its written length (uniform per piece)
    fermata_hold_max: float = 2.0  # longest fermata, times the written length
    balance_db: float = 2.0  # each accompaniment part's level varies by up to +-this around an even balance
    min_active_fraction: float = 0.6  # a clip needs notes sounding in both stems for this share of its time
    melody_similarity: float = 0.8  # chorales whose soprano melodies match this well (0..1) are one tune
    max_pieces: int = 0  # read only the first N corpus files (sorted by name); 0 reads all of them
    workers: int = 0  # processes that parse and render (0: the CPU count, at most 8); never changes the data
    clips_per_shard: int = 100  # clips per tar shard
    corpus_dir: str = ""  # folder of chorale scores; "" is music21's own corpus (music21/corpus/bach)
    soundfont: str = str(music.SOUNDFONT)  # General MIDI soundfont (.sf2) from timgm6mb-soundfont
    fluidsynth: str = str(music.LIBFLUIDSYNTH)  # the fluidsynth synthesizer library (from libfluidsynth3)


NOT_RECORDED = ("workers",)  # operational options: they do not change the data, so dataset.json leaves them out


def validate(o: Options) -> None:
    """Raise ``ValueError`` naming the option when a setting cannot work."""
    problems = []
    if not isinstance(o.seed, int) or o.seed < 0:
        problems.append(f"seed={o.seed!r} must be a non-negative integer")
    if not 8000 <= o.sample_rate <= 48000:
        problems.append(f"sample_rate={o.sample_rate} must lie in 8000..48000")
    if not 0.25 <= o.clip_seconds <= 30:
        problems.append(f"clip_seconds={o.clip_seconds} must lie in 0.25..30")
    for lo, hi in (("vocals_db_min", "vocals_db_max"), ("level_db_min", "level_db_max"),
                   ("tempo_bpm_min", "tempo_bpm_max"), ("fermata_hold_min", "fermata_hold_max")):
        if getattr(o, lo) > getattr(o, hi):
            problems.append(f"{lo}={getattr(o, lo)} exceeds {hi}={getattr(o, hi)}")
    if o.level_db_max > -6:
        problems.append(f"level_db_max={o.level_db_max} leaves no headroom; use -6 dBFS or less")
    if o.tempo_bpm_min < 20 or o.tempo_bpm_max > 240:
        problems.append(f"tempo_bpm_min..max={o.tempo_bpm_min}..{o.tempo_bpm_max} must lie in 20..240")
    if not 0 <= o.transpose_max <= 12:
        problems.append(f"transpose_max={o.transpose_max} must lie in 0..12 semitones")
    if o.fermata_hold_min < 1:
        problems.append(f"fermata_hold_min={o.fermata_hold_min} must be >= 1 (a fermata never shortens a note)")
    if not 0 <= o.balance_db <= 12:
        problems.append(f"balance_db={o.balance_db} must lie in 0..12")
    for name in ("min_active_fraction", "melody_similarity"):
        if not 0 < getattr(o, name) <= 1:
            problems.append(f"{name}={getattr(o, name)} must lie in (0, 1]")
    for p in POOLS:
        if getattr(o, p.count_option) < 0:
            problems.append(f"{p.count_option}={getattr(o, p.count_option)} must be >= 0")
    if o.max_pieces < 0:
        problems.append(f"max_pieces={o.max_pieces} must be >= 0 (0 reads every corpus file)")
    if o.workers < 0:
        problems.append(f"workers={o.workers} must be >= 0 (0 uses the CPU count)")
    if o.clips_per_shard < 1:
        problems.append(f"clips_per_shard={o.clips_per_shard} must be >= 1")
    if problems:
        raise ValueError(f"{NAME}: " + "; ".join(problems))


def source_paths(o: Options) -> dict[str, list[str]]:
    """What the recipe reads from each Debian package (for ``require_debian``)."""
    return {music.FLUIDSYNTH_PACKAGE: [o.fluidsynth], music.SOUNDFONT_PACKAGE: [o.soundfont]}


def corpus_dir(o: Options) -> Path:
    """The folder of scores: ``o.corpus_dir``, or music21's own Bach corpus (needs music21)."""
    path = Path(o.corpus_dir) if o.corpus_dir else music.music21_corpus_dir()
    if not path.is_dir():
        raise ValueError(f"{NAME}: corpus_dir={str(path)!r} is not a folder; point corpus_dir at a folder of "
                         "chorale scores (.mxl, .xml, .krn) or leave it empty for music21's own corpus")
    return path


def render_rate(sample_rate: int) -> int:
    return min(2 * sample_rate, 96000)


def _rng(seed: int, *purpose: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([seed, *purpose]))


def _key(text: str) -> int:
    """A stable integer for seeding by name (CRC-32 of the UTF-8 text)."""
    return zlib.crc32(text.encode())


# ----------------------------------------------------------------------------- scores


def _read(path: str) -> music.Chorale | str:
    """``music.read_chorale`` for a worker process: a score that is not a four-voice chorale gives its reason."""
    try:
        return music.read_chorale(path)
    except music.ScoreError as e:
        return str(e).split(": ", 1)[-1]


def chorale_key(c: music.Chorale) -> tuple[int, str]:
    """Sort key choosing the file kept among one BWV number's variants: the plain name first, then by name."""
    return (0 if c.id == f"bwv{c.bwv}" else 1, c.id)


_SCANS: dict[tuple[str, int], tuple] = {}  # the corpus is read-only: a scan is reused across builds in one process


def scan_corpus(folder: str, max_pieces: int, runner: "Runner | None" = None,
                progress: bool = False) -> tuple[tuple[music.Chorale, ...], tuple[tuple[str, str], ...]]:
    """Every chorale of ``folder`` (sorted by file name, first ``max_pieces`` files if > 0) and the skipped
    files with the reason, as ``(chorales, ((file, reason), ...))``."""
    key = (str(Path(folder).resolve()), max_pieces)
    if key in _SCANS:
        return _SCANS[key]
    files = music.chorale_files(folder)
    if max_pieces:
        files = files[:max_pieces]
    if not files:
        raise ValueError(f"{NAME}: no score files (.mxl, .xml, .krn) in corpus_dir={folder!r}")
    runner = runner or Runner(1)
    results = runner.map(_read, [str(f) for f in files], progress=progress, desc="music21", unit="score")
    chorales, skipped = [], []
    for f, r in zip(files, results, strict=True):
        if isinstance(r, str):
            skipped.append((f.name, r))
        else:
            chorales.append(r)
    _SCANS[key] = (tuple(chorales), tuple(skipped))
    return _SCANS[key]


def dedupe(chorales: Iterable[music.Chorale]) -> tuple[list[music.Chorale], dict[str, str]]:
    """One chorale per BWV number (``chorale_key`` picks which); the others as ``{file: reason}``."""
    by_bwv: dict[str, list[music.Chorale]] = {}
    for c in chorales:
        by_bwv.setdefault(c.bwv, []).append(c)
    kept, skipped = [], {}
    for variants in by_bwv.values():
        variants.sort(key=chorale_key)
        kept.append(variants[0])
        for c in variants[1:]:
            skipped[c.file] = f"another version of BWV {c.bwv}; {variants[0].file} is used"
    return sorted(kept, key=lambda c: c.id), skipped


@functools.lru_cache(maxsize=1)
def catalogue_titles() -> dict[str, str]:
    """BWV number -> title from music21's chorale catalogue (``ChoraleListRKBWV``)."""
    music.require_music21()
    from music21.corpus import chorales

    return {str(k): str(v["title"]) for k, v in chorales.ChoraleListRKBWV().byBWV.items()}


def title_of(c: music.Chorale) -> str | None:
    titles = catalogue_titles()
    return titles.get(c.id[3:]) or titles.get(c.bwv)


def _title_key(title: str) -> str:
    return "".join(ch for ch in title.lower().replace("\u2019", "'") if ch.isalnum())


def tunes(chorales: list[music.Chorale], threshold: float) -> list[list[str]]:
    """Chorale ids grouped by tune: matching soprano melodies or one catalogue title (see the module doc)."""
    by_title: dict[str, list[str]] = {}
    for c in chorales:
        title = title_of(c)
        if title:
            by_title.setdefault(_title_key(title), []).append(c.id)
    same = [(ids[0], other) for ids in by_title.values() for other in ids[1:]]
    return music.melody_groups(chorales, threshold, same)


def deal_tunes(groups: list[list[str]], weight: dict[str, float], counts: dict[str, int],
               rng: np.random.Generator) -> dict[str, list[list[str]]]:
    """Give every tune to one pool: tunes in a random order, each to the pool furthest below its share
    (shares proportional to the pools' clip counts; a tune weighs its chorales' total score length)."""
    total = sum(counts.values())
    out: dict[str, list[list[str]]] = {name: [] for name in counts}
    if total == 0:
        return out
    grand = sum(weight[i] for g in groups for i in g)
    target = {name: grand * c / total for name, c in counts.items()}
    have = {name: 0.0 for name in counts}
    for k in rng.permutation(len(groups)):
        g = groups[k]
        name = max((n for n in counts if counts[n] > 0), key=lambda n: (target[n] - have[n], -list(counts).index(n)))
        out[name].append(g)
        have[name] += sum(weight[i] for i in g)
    return out


# ----------------------------------------------------------------------------- performances


@dataclass
class Performance:
    """How one chorale is played: everything drawn for it, and its timing."""

    chorale: music.Chorale
    tempo_bpm: float
    transpose: int
    fermata_hold: float
    velocity: int
    reverb: int
    ensemble: str
    programs: dict[str, int]  # voice -> GM program
    balance_db: dict[str, float]  # accompaniment part -> random offset, dB
    grid_offset: float  # seconds; clip windows start at grid_offset + k * clip_seconds
    fermatas: list[tuple[float, float]] = field(default_factory=list)  # soprano fermata notes (start, end), beats

    def seconds(self, beats: float | np.ndarray) -> float | np.ndarray:
        """Performance time of a score position (quarter notes): fermatas stretched, then the tempo."""
        t = np.asarray(beats, dtype=np.float64)
        extra = np.zeros_like(t)
        for a, b in self.fermatas:
            extra += (self.fermata_hold - 1) * np.clip(t - a, 0, b - a)
        out = (t + extra) * 60.0 / self.tempo_bpm
        return float(out) if out.ndim == 0 else out

    def beats(self, seconds: float) -> float:
        """The score position (quarter notes) at a performance time (inverse of ``seconds``)."""
        lo, hi = 0.0, self.chorale.length * self.fermata_hold + 1
        for _ in range(60):
            mid = (lo + hi) / 2
            lo, hi = (mid, hi) if self.seconds(mid) < seconds else (lo, mid)
        return (lo + hi) / 2

    @property
    def duration(self) -> float:
        return float(self.seconds(self.chorale.length))


def perform(c: music.Chorale, o: Options) -> Performance:
    """Draw how ``c`` is played, from the seed and the chorale's id only."""
    rng = _rng(o.seed, 30, _key(c.id))
    tempo = float(rng.uniform(o.tempo_bpm_min, o.tempo_bpm_max))
    transpose = int(rng.integers(-o.transpose_max, o.transpose_max + 1))
    hold = float(rng.uniform(o.fermata_hold_min, o.fermata_hold_max))
    velocity = int(rng.integers(72, 101))
    reverb = int(rng.integers(10, 71))
    ensemble = ENSEMBLE_NAMES[int(rng.integers(len(ENSEMBLE_NAMES)))]
    programs = {"soprano": VOCAL_PROGRAMS[int(rng.integers(len(VOCAL_PROGRAMS)))]}
    if ensemble == MIXED:
        for part in ACCOMPANIMENT:
            choices = sorted({p for e in ENSEMBLES.values() for p in e[part]})
            programs[part] = choices[int(rng.integers(len(choices)))]
    elif ENSEMBLES[ensemble]["single"]:
        choices = ENSEMBLES[ensemble]["alto"]
        program = choices[int(rng.integers(len(choices)))]
        programs.update({part: program for part in ACCOMPANIMENT})
    else:
        for part in ACCOMPANIMENT:
            choices = ENSEMBLES[ensemble][part]
            programs[part] = choices[int(rng.integers(len(choices)))]
    balance = {part: float(rng.uniform(-o.balance_db, o.balance_db)) for part in ACCOMPANIMENT}
    fermatas = [(n.start, n.end) for n in c.voices["soprano"] if n.fermata]
    grid = float(rng.uniform(0, o.clip_seconds))
    return Performance(c, tempo, transpose, hold, velocity, reverb, ensemble, programs, balance, grid, fermatas)


def _sounding(perf: Performance, voices: Iterable[str]) -> np.ndarray:
    """Merged ``[start, end]`` seconds where at least one note of ``voices`` sounds, shape (k, 2)."""
    notes = [n for v in voices for n in perf.chorale.voices[v]]
    starts = perf.seconds(np.array([n.start for n in notes]))
    ends = perf.seconds(np.array([n.end for n in notes]))
    spans = sorted(zip(starts.tolist(), ends.tolist(), strict=True))
    merged: list[list[float]] = []
    for a, b in spans:
        if merged and a <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], b)
        else:
            merged.append([a, b])
    return np.array(merged, dtype=np.float64).reshape(-1, 2)


def _covered(spans: np.ndarray, a: float, b: float) -> float:
    return float(np.sum(np.clip(np.minimum(spans[:, 1], b) - np.maximum(spans[:, 0], a), 0, None)))


def usable_windows(perf: Performance, o: Options) -> list[int]:
    """Indices k of the grid windows ``[grid_offset + k*clip, +clip]`` inside the performance in which notes
    sound in the soprano and in the accompaniment for at least ``min_active_fraction`` of the window."""
    clip = o.clip_seconds
    count = int(np.floor((perf.duration - perf.grid_offset) / clip + 1e-9))
    vocals, accompaniment = _sounding(perf, ["soprano"]), _sounding(perf, ACCOMPANIMENT)
    need = o.min_active_fraction * clip - 1e-9
    out = []
    for k in range(max(count, 0)):
        a = perf.grid_offset + k * clip
        if _covered(vocals, a, a + clip) >= need and _covered(accompaniment, a, a + clip) >= need:
            out.append(k)
    return out


def share_clips(count: int, capacity: list[int]) -> list[int]:
    """``count`` clips spread over pieces in proportion to their usable windows (largest remainders, capped)."""
    total = sum(capacity)
    if count > total:
        raise ValueError(f"needs {count} clips but its pieces hold only {total} usable windows")
    if count == 0:
        return [0] * len(capacity)
    cap = np.array(capacity, dtype=np.float64)
    ideal = cap * count / total
    quota = np.floor(ideal).astype(int)
    for j in np.argsort(-(ideal - quota), kind="stable")[: count - int(quota.sum())]:
        quota[j] += 1
    return [int(q) for q in quota]


def pick_section(windows: list[int], k: int, rng: np.random.Generator) -> list[int]:
    """``k`` usable windows: a random run of consecutive ones if there is one, else a random choice."""
    if k == 0:
        return []
    runs = [i for i in range(len(windows) - k + 1) if windows[i + k - 1] - windows[i] == k - 1]
    if runs:
        i = runs[int(rng.integers(len(runs)))]
        return windows[i: i + k]
    return sorted(windows[j] for j in rng.choice(len(windows), size=k, replace=False))


# ----------------------------------------------------------------------------- calibration and rendering


def _calibration_notes(part: str) -> tuple[music.TimedNote, ...]:
    lo, hi = CALIBRATION_RANGE[part]
    scale = [p for p in range(lo, hi + 1) if p % 12 in (0, 2, 4, 5, 7, 9, 11)]
    line = scale + scale[-2::-1]
    return tuple(music.TimedNote(0.5 * i, 0.5 * i + 0.45, p, 90) for i, p in enumerate(line))


def _calibration_task(args: tuple) -> dict[int, float]:
    part, programs, rate, soundfont, fluidsynth = args
    notes = _calibration_notes(part)
    span = notes[-1].end + 1.0  # each instrument plays the line in its own time slot, 1 s apart
    tracks = [music.Track(p, tuple(music.TimedNote(n.start + k * span, n.end + k * span, n.pitch, n.velocity)
                                   for n in notes), volume=127) for k, p in enumerate(programs)]
    audio = music.render(tracks, rate, span * len(programs), soundfont=soundfont, library=fluidsynth)
    out = {}
    for k, p in enumerate(programs):
        seg = audio[int(k * span * rate): int(((k + 1) * span - 1.0) * rate)].astype(np.float64)
        level = 10 * np.log10(np.mean(seg * seg) + 1e-20)
        if level < -100:
            raise RuntimeError(f"{soundfont}: program {p} ({music.GM_NAMES.get(p, '?')}) plays silence; "
                               "use a complete General MIDI soundfont")
        out[p] = float(level)
    return out


_CALIBRATIONS: dict[tuple, dict[str, dict[int, float]]] = {}


def calibrate(soundfont: str, fluidsynth: str, rate: int,
              runner: "Runner | None" = None) -> dict[str, dict[int, float]]:
    """Loudness (dBFS RMS at channel volume 127) of every accompaniment instrument playing a scale in each
    part's register, measured through fluidsynth: per part, program -> dB (cached per soundfont and rate)."""
    sf2 = Path(soundfont)
    key = (str(sf2.resolve()), sf2.stat().st_size, sf2.stat().st_mtime_ns, str(fluidsynth), rate)
    if key not in _CALIBRATIONS:
        tasks = []
        for part in ACCOMPANIMENT:
            programs = sorted({p for e in ENSEMBLES.values() for p in e[part]})
            for k in range(0, len(programs), 8):  # a render holds up to 8 instruments, one after another
                tasks.append((part, tuple(programs[k: k + 8]), rate, soundfont, fluidsynth))
        results = list((runner or Runner(1)).map(_calibration_task, tasks))
        levels: dict[str, dict[int, float]] = {part: {} for part in ACCOMPANIMENT}
        for task, res in zip(tasks, results, strict=True):
            levels[task[0]].update(res)
        _CALIBRATIONS[key] = {part: dict(sorted(v.items())) for part, v in levels.items()}
    return _CALIBRATIONS[key]


def part_volumes(perf: Performance, loudness: dict[str, dict[int, float]], o: Options) -> dict[str, tuple[int, float]]:
    """MIDI channel volume (CC 7) per accompaniment part and the resulting gain in dB: the part's instrument is
    brought to the level of the quietest instrument of all (minus ``balance_db`` of headroom), plus its
    random offset. fluidsynth's volume curve is 40 log10(v / 127) dB."""
    floor = min(min(levels.values()) for levels in loudness.values()) - o.balance_db
    out = {}
    for part in ACCOMPANIMENT:
        gain = floor - loudness[part][perf.programs[part]] + perf.balance_db[part]
        volume = int(np.clip(round(127 * 10 ** (gain / 40)), 1, 127))
        out[part] = (volume, round(float(40 * np.log10(volume / 127)), 2))
    return out


@dataclass
class RenderTask:
    """A section of one performance to render: tracks in seconds from the start of the lead-in."""

    piece: str
    vocals: music.Track
    accompaniment: tuple[music.Track, ...]
    seconds: float  # length to render, lead-in and tail included
    lead_in: float
    rate: int  # fluidsynth's rate
    sample_rate: int  # the dataset's rate
    soundfont: str
    fluidsynth: str


def section_task(perf: Performance, start: float, stop: float, volumes: dict[str, tuple[int, float]],
                 o: Options) -> RenderTask:
    """The tracks that play ``[start, stop]`` seconds of the performance, with up to ``LEAD_IN_SECONDS`` before:
    notes that began earlier start at the lead-in; note velocities vary per note (seeded by piece and note)."""
    lead = min(LEAD_IN_SECONDS, start)
    t0 = start - lead
    tracks = {}
    for voice in music.VOICES:
        notes = perf.chorale.voices[voice]
        rng = _rng(o.seed, 40, _key(perf.chorale.id), music.VOICES.index(voice))
        jitter = rng.integers(-6, 7, size=len(notes))  # drawn for every note, so sections agree
        starts = perf.seconds(np.array([n.start for n in notes])).tolist()
        ends = perf.seconds(np.array([n.end for n in notes])).tolist()
        timed = []
        for n, dv, a, b in zip(notes, jitter, starts, ends, strict=True):
            if b <= t0 or a >= stop:
                continue
            timed.append(music.TimedNote(max(a, t0) - t0, b - t0, n.pitch + perf.transpose,
                                         int(np.clip(perf.velocity + dv, 1, 127))))
        volume = 100 if voice == "soprano" else volumes[voice][0]
        tracks[voice] = music.Track(perf.programs[voice], tuple(timed), reverb=perf.reverb, volume=volume)
    return RenderTask(perf.chorale.id, tracks["soprano"], tuple(tracks[p] for p in ACCOMPANIMENT),
                      stop - t0 + TAIL_SECONDS, lead, render_rate(o.sample_rate), o.sample_rate, o.soundfont,
                      o.fluidsynth)


def render_section(task: RenderTask) -> tuple[np.ndarray, np.ndarray]:
    """Vocals and accompaniment of a section at the dataset rate (float32, lead-in cut off, equal lengths)."""
    stems = music.render_stems([[task.vocals], list(task.accompaniment)], task.rate, task.seconds,
                               soundfont=task.soundfont, library=task.fluidsynth)
    skip = int(round(task.lead_in * task.sample_rate))
    vocals, accompaniment = (downsample(x, task.rate, task.sample_rate)[skip:] for x in stems)
    return vocals, accompaniment


def downsample(audio: np.ndarray, from_rate: int, to_rate: int) -> np.ndarray:
    """Band-limited rate conversion by a rational factor: ``scipy.signal.resample_poly`` (polyphase FIR,
    Kaiser window, float64 C loops, so the same on every CPU), float32 out. For the 2:1 step from
    fluidsynth's rate it takes a tenth of the time of ``sources.resample`` (torchaudio's kernel in float64:
    measured 6 ms against 63 ms for 19 s of audio), which was half of the build's CPU time."""
    from math import gcd

    from scipy.signal import resample_poly

    if from_rate == to_rate:
        return np.asarray(audio, dtype=np.float32)
    g = gcd(int(from_rate), int(to_rate))
    return resample_poly(np.asarray(audio, dtype=np.float64), to_rate // g, from_rate // g).astype(np.float32)


# ----------------------------------------------------------------------------- parallel map


_END = object()


class Runner:
    """Maps a function over items in this process (``workers`` <= 1) or in that many spawned processes,
    started once per build. Results always come back in item order, so the data never depends on ``workers``."""

    def __init__(self, workers: int):
        self.workers = workers
        self._pool: ProcessPoolExecutor | None = None

    def map(self, fn, items: list, progress: bool = False, desc: str = "", unit: str = "it") -> Iterator:
        from tqdm import tqdm

        results = self._parallel(fn, items) if self.workers > 1 and len(items) > 1 else map(fn, items)
        yield from tqdm(results, total=len(items), desc=desc, unit=unit, disable=not progress, leave=False)

    def _parallel(self, fn, items: list) -> Iterator:
        """Results in item order, with at most ``4 * workers`` items in flight (so finished results waiting
        for the consumer never pile up in memory)."""
        if self._pool is None:
            ctx = multiprocessing.get_context("spawn")  # never fork: the caller may hold threads (torch, tqdm)
            self._pool = ProcessPoolExecutor(max_workers=self.workers, mp_context=ctx)
        ahead = 4 * self.workers
        futures = collections.deque(self._pool.submit(fn, x) for x in items[:ahead])
        following = iter(items[ahead:])
        while futures:
            result = futures.popleft().result()
            nxt = next(following, _END)
            if nxt is not _END:
                futures.append(self._pool.submit(fn, nxt))
            yield result

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(cancel_futures=True)
            self._pool = None

    def __enter__(self) -> "Runner":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _workers(o: Options) -> int:
    return o.workers or max(1, min(8, os.cpu_count() or 1))


# ----------------------------------------------------------------------------- mixing


def _rms_db(x: np.ndarray) -> float:
    return float(10 * np.log10(np.mean(np.square(x, dtype=np.float64)) + 1e-20)) if len(x) else -200.0


def _scale_to(x: np.ndarray, target_db: float) -> np.ndarray:
    return x * 10 ** ((target_db - _rms_db(x)) / 20)


def _accompaniment_db(level_db: float, vocals_db: float) -> float:
    """Accompaniment RMS level of a mixture at ``level_db`` whose vocals are ``vocals_db`` above it (for
    uncorrelated parts; the level an observed clip gets)."""
    return level_db - 10 * np.log10(1 + 10 ** (vocals_db / 10))


def mix_clip(vocals: np.ndarray, accompaniment: np.ndarray, vocals_db: float,
             level_db: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """int16 vocals, accompaniment and their exact sum at the given ratio and mixture level (peak <= -1 dBFS).

    The two parts play in one key and rhythm, so they are not uncorrelated: after setting the ratio, both are
    scaled together to put the mixture itself at ``level_db``."""
    acc_db = _accompaniment_db(level_db, vocals_db)
    v, a = _scale_to(vocals.astype(np.float64), acc_db + vocals_db), _scale_to(accompaniment.astype(np.float64), acc_db)
    gain = 10 ** ((level_db - _rms_db(v + a)) / 20)
    return src.quantize_pair(v * gain, a * gain)


# ----------------------------------------------------------------------------- build


@dataclass
class PiecePlan:
    perf: Performance
    pool: str
    windows: list[int]  # grid windows cut into clips, in time order
    clip_index: list[int]  # the pool position of each window's clip


def _clear_pool_shards(out: Path) -> None:
    """Remove tar shards a previous build left in this recipe's pool folders (nothing else is touched)."""
    for p in POOLS:
        folder = out / p.split / p.pool
        if folder.is_dir():
            for tar in folder.glob("*.tar"):
                tar.unlink()


def _software() -> dict[str, str]:
    import scipy
    import soundfile as sf

    music21 = music.require_music21()
    return {"numpy": np.__version__, "scipy": scipy.__version__, "soundfile": sf.__version__,
            "libsndfile": sf.__libsndfile_version__, "music21": str(music21.__version__)}


def _soundfont_package(path: str) -> str | None:
    """The Debian package that installed ``path`` (``dpkg-query -S``), or None."""
    import shutil
    import subprocess

    if shutil.which("dpkg-query") is None:
        return None
    try:
        run = subprocess.run(["dpkg-query", "-S", str(Path(path).resolve())], capture_output=True, text=True,
                             timeout=30)
    except (OSError, subprocess.SubprocessError):
        return None
    return run.stdout.split(":", 1)[0].strip() or None if run.returncode == 0 else None


def _licences(o: Options, corpus: Path, default_corpus: bool) -> list[dict[str, str]]:
    out = []
    if default_corpus:
        music21 = music.require_music21()
        terms = Path(music21.__file__).resolve().parent / "corpus" / "license.txt"
        out.append({"source": f"music21 {music21.__version__} (PyPI), corpus/bach",
                    "licence": "public domain (J. S. Bach's chorales); the encodings are distributed with music21 "
                               "by permission of their encoders (MusicXML after Margaret Greentree, "
                               "jsbchorales.net; Humdrum from CCARH), see corpus/license.txt",
                    "used_for": "scores of the chorales (every note rendered)",
                    "terms": f"music21/corpus/{terms.name} (in the installed music21 package)"})
    else:
        out.append({"source": str(corpus), "licence": "unknown (scores supplied by the user)",
                    "used_for": "scores of the chorales"})
    package = _soundfont_package(o.soundfont)
    if package:
        stanzas = src.copyright_licences(package)
        name = Path(o.soundfont).name
        holders = next((s.copyright for s in stanzas if name in s.files), "")
        out.append({"source": package, "licence": src.licence_of(package, name), "copyright": holders,
                    "used_for": f"instrument samples ({name}), in every stem",
                    "terms": f"/usr/share/doc/{package}/copyright"})
    else:
        out.append({"source": o.soundfont, "licence": "unknown (soundfont supplied by the user)",
                    "used_for": "instrument samples, in every stem"})
    out.append({"source": music.FLUIDSYNTH_PACKAGE, "licence": src.licence_of(music.FLUIDSYNTH_PACKAGE),
                "used_for": "the synthesizer library that renders the scores (the audio carries none of its code)",
                "terms": f"/usr/share/doc/{music.FLUIDSYNTH_PACKAGE}/copyright"})
    return out


def _check_soundfont(o: Options) -> None:
    try:
        presets = music.soundfont_presets(o.soundfont)
    except (OSError, ValueError) as e:
        raise ValueError(f"{NAME}: soundfont={o.soundfont!r} is not a readable SoundFont 2 file ({e}); "
                         f"install it with: apt-get install -y {music.SOUNDFONT_PACKAGE}") from e
    used = set(VOCAL_PROGRAMS) | {p for e in ENSEMBLES.values() for part in ACCOMPANIMENT for p in e[part]}
    missing = sorted(used - set(presets))
    if missing:
        raise ValueError(f"{NAME}: soundfont={o.soundfont!r} lacks General MIDI programs "
                         f"{[(p, music.GM_NAMES.get(p, '?')) for p in missing]}; use a complete General MIDI "
                         f"soundfont such as {music.SOUNDFONT} (apt-get install -y {music.SOUNDFONT_PACKAGE})")


def plan(o: Options, runner: Runner | None = None,
         progress: bool = False) -> tuple[dict[str, list[PiecePlan]], dict[str, Any]]:
    """Read, dedupe and group the corpus, deal tunes to pools and choose every piece's clips.

    Returns the pieces to render per pool (in pool order, pieces sorted by id) and facts for the statistics.
    """
    folder = corpus_dir(o)
    chorales, scan_skipped = scan_corpus(str(folder), o.max_pieces, runner, progress)
    kept, dup_skipped = dedupe(chorales)
    skipped = dict(scan_skipped) | dup_skipped
    if not kept:
        raise ValueError(f"{NAME}: no four-voice chorale in corpus_dir={str(folder)!r} "
                         f"(skipped: {dict(list(skipped.items())[:5])})")
    groups = tunes(kept, o.melody_similarity)
    tune_of = {i: g[0] for g in groups for i in g}
    by_id = {c.id: c for c in kept}
    counts = {p.name: getattr(o, p.count_option) for p in POOLS}
    dealt = deal_tunes(groups, {c.id: c.length for c in kept}, counts, _rng(o.seed, 1))
    plans: dict[str, list[PiecePlan]] = {}
    for i, p in enumerate(POOLS):
        if counts[p.name] > 0 and not dealt[p.name]:
            raise ValueError(f"{NAME}: {p.name} got no tune: {len(groups)} tunes are too few for five pools; "
                             f"read more scores (max_pieces={o.max_pieces}; 0 reads all) or set "
                             f"{p.count_option}=0")
        ids = sorted(i for g in dealt[p.name] for i in g)
        perfs = [perform(by_id[i], o) for i in ids]
        windows = [usable_windows(perf, o) for perf in perfs]
        try:
            quota = share_clips(counts[p.name], [len(w) for w in windows])
        except ValueError as e:
            raise ValueError(f"{NAME}: {p.name} {e} of {o.clip_seconds} s in {len(ids)} pieces; lower "
                             f"{p.count_option} or clip_seconds, or read more scores (max_pieces)") from None
        order = _rng(o.seed, 11, i).permutation(counts[p.name])
        pieces, k = [], 0
        for perf, wins, q in zip(perfs, windows, quota, strict=True):
            chosen = pick_section(wins, q, _rng(o.seed, 12, _key(perf.chorale.id)))
            pieces.append(PiecePlan(perf, p.name, chosen, [int(order[k + j]) for j in range(q)]))
            k += q
        plans[p.name] = pieces
    facts = {"skipped": dict(sorted(skipped.items())), "tunes": groups, "tune_of": tune_of,
             "files": len(chorales) + len(scan_skipped), "chorales": len(kept)}
    return plans, facts


def build(out: str | os.PathLike, options: Options | None = None, progress: bool = True) -> DatasetInfo:
    """Build the dataset into ``out`` (``dataset.json`` + tar shards) and return its ``DatasetInfo``.

    Tar shards a previous build left in this recipe's pool folders are removed first. Raises
    ``music.MissingPythonPackageError`` (with the ``pip install`` line) or ``sources.MissingSourceError``
    (with the ``apt-get install -y ...`` line) before writing anything when music21, fluidsynth or the
    soundfont is missing, ``ValueError`` for impossible options.
    """
    o = options if options is not None else Options()
    validate(o)
    music.require_music21()
    src.require_debian(source_paths(o))
    _check_soundfont(o)
    with Runner(_workers(o)) as runner:
        return _build(Path(out), o, runner, progress)


def _build(out: Path, o: Options, runner: Runner, progress: bool) -> DatasetInfo:
    from tqdm import tqdm

    rate, n = o.sample_rate, int(round(o.clip_seconds * o.sample_rate))
    plans, facts = plan(o, runner, progress)
    loudness = calibrate(o.soundfont, o.fluidsynth, render_rate(rate), runner)
    tasks, sections = [], []
    for p in POOLS:
        for piece in plans[p.name]:
            if piece.windows:
                perf = piece.perf
                start = perf.grid_offset + piece.windows[0] * o.clip_seconds
                stop = perf.grid_offset + (piece.windows[-1] + 1) * o.clip_seconds
                volumes = part_volumes(perf, loudness, o)
                tasks.append(section_task(perf, start, stop, volumes, o))
                sections.append((piece, start, volumes))

    info = DatasetInfo(name=NAME, sample_rate=rate, stems=list(STEMS), observed="accompaniment", unobserved="vocals")
    out.mkdir(parents=True, exist_ok=True)
    _clear_pool_shards(out)
    writer = DatasetWriter(out, info, clips_per_shard=o.clips_per_shard)
    index = {p.name: i for i, p in enumerate(POOLS)}
    clips: dict[str, dict[int, tuple[dict, dict]]] = {p.name: {} for p in POOLS}
    left = {p.name: sum(1 for piece in plans[p.name] if piece.windows) for p in POOLS}  # sections to come
    written: list[str] = []
    ratios: list[float] = []
    levels: dict[str, list[float]] = {p.name: [] for p in POOLS}

    def write_ready() -> None:
        """Write, in pool order, every pool whose sections have all arrived (pools are shuffled, so a pool is
        written whole once its last clip is there)."""
        for p in POOLS[len(written):]:
            if left[p.name]:
                return
            with writer.pool(p.split, p.pool, list(p.members)) as w:
                for k in range(getattr(o, p.count_option)):
                    audio, meta = clips[p.name].pop(k)
                    w.add(f"{p.split}-{p.pool}-{k:05d}", {s: audio[s] for s in p.members}, meta)
            written.append(p.name)

    write_ready()
    results = runner.map(render_section, tasks, progress=progress, desc="fluidsynth", unit="section")
    with tqdm(total=sum(getattr(o, p.count_option) for p in POOLS), desc=NAME, unit="clip",
              disable=not progress) as bar:
        for (piece, start, volumes), (vocals, accompaniment) in zip(sections, results, strict=True):
            p, perf = POOLS[index[piece.pool]], piece.perf
            for win, k in zip(piece.windows, piece.clip_index, strict=True):
                w0 = perf.grid_offset + win * o.clip_seconds
                a = int(round((w0 - start) * rate))
                v_clip, a_clip = vocals[a: a + n], accompaniment[a: a + n]
                if len(v_clip) != n or len(a_clip) != n:
                    raise RuntimeError(f"{NAME}: the rendered section of {perf.chorale.id} is "
                                       f"{len(vocals)} samples, too short for window {win}")
                if _rms_db(v_clip) < -90 or _rms_db(a_clip) < -90:
                    raise RuntimeError(f"{NAME}: {perf.chorale.id} window {win} rendered silent although its "
                                       f"score has notes there; is {o.soundfont} a General MIDI soundfont?")
                rng = _rng(o.seed, 20, index[p.name], k)
                ratio = float(rng.uniform(o.vocals_db_min, o.vocals_db_max))
                level = float(rng.uniform(o.level_db_min, o.level_db_max))
                meta: dict[str, Any] = {"labels": [],
                                        "source": _clip_source(piece, w0, o, volumes, facts, p.has_vocals)}
                if p.has_vocals:
                    v16, a16, m16 = mix_clip(v_clip, a_clip, ratio, level)
                    audio = {"mix": m16, "vocals": v16, "accompaniment": a16}
                    meta.update(vocals_db=round(src.ratio_db(v16, a16), 3), vocals_db_target=round(ratio, 3),
                                level_db=round(src.level_db(m16), 2))
                    ratios.append(meta["vocals_db"])
                else:  # the accompaniment at the level it would have in a mixture drawn the same way
                    acc = _scale_to(a_clip.astype(np.float64), _accompaniment_db(level, ratio))
                    peak = float(np.max(np.abs(acc)))
                    audio = {"accompaniment": to_int16(acc * (PEAK / peak) if peak > PEAK else acc)}
                    meta["level_db"] = round(src.level_db(audio["accompaniment"]), 2)
                levels[p.name].append(meta["level_db"])
                clips[p.name][k] = (audio, meta)
                bar.update()
            left[p.name] -= 1
            write_ready()
    if len(written) != len(POOLS):
        raise RuntimeError(f"{NAME}: pools {[p.name for p in POOLS if p.name not in written]} were not written")

    info.made_by = {
        "recipe": NAME, "version": VERSION, "seed": o.seed,
        "options": {k: v for k, v in asdict(o).items() if k not in NOT_RECORDED},
        "packages": {pkg: src.package_version(pkg) for pkg in RECORDED_PACKAGES},
        "software": _software(),
    }
    info.licences = _licences(o, corpus_dir(o), not o.corpus_dir)
    info.stats = _stats(plans, facts, loudness, ratios, levels, o)
    return writer.close()  # no build time or output path in dataset.json: it stays identical across builds


def _instrument(program: int) -> dict[str, Any]:
    return {"program": program, "name": music.GM_NAMES.get(program, f"GM program {program}")}


def _clip_source(piece: PiecePlan, w0: float, o: Options, volumes: dict[str, tuple[int, float]],
                 facts: dict[str, Any], with_vocals: bool) -> dict[str, Any]:
    perf = piece.perf
    c = perf.chorale
    w1 = w0 + o.clip_seconds
    instruments = {part: {**_instrument(perf.programs[part]), "gain_db": volumes[part][1]} for part in ACCOMPANIMENT}
    if with_vocals:
        instruments = {"soprano": _instrument(perf.programs["soprano"]), **instruments}
    return {
        "piece": c.id, "file": c.file, "bwv": c.bwv, "title": title_of(c), "tune": facts["tune_of"][c.id],
        "window_s": [round(w0, 4), round(w1, 4)],
        "window_beats": [round(perf.beats(w0), 3), round(perf.beats(w1), 3)],
        "tempo_bpm": round(perf.tempo_bpm, 2), "transpose": perf.transpose,
        "fermata_hold": round(perf.fermata_hold, 3), "reverb": perf.reverb, "ensemble": perf.ensemble,
        "instruments": instruments,
    }


def _summary(values: list[float], lo: float, hi: float) -> dict[str, Any]:
    if not values:
        return {"range": [lo, hi], "min": None, "max": None, "mean": None}
    return {"range": [lo, hi], "min": min(values), "max": max(values), "mean": round(float(np.mean(values)), 3)}


def _stats(plans: dict[str, list[PiecePlan]], facts: dict[str, Any], loudness: dict[str, dict[int, float]],
           ratios: list[float], levels: dict[str, list[float]], o: Options) -> dict[str, Any]:
    used = {name: [pp for pp in pieces if pp.windows] for name, pieces in plans.items()}
    ensembles: dict[str, dict[str, int]] = {}
    vocal_patches: dict[str, dict[str, int]] = {}
    for name, pieces in used.items():
        for pp in pieces:
            e = ensembles.setdefault(name, {})
            e[pp.perf.ensemble] = e.get(pp.perf.ensemble, 0) + len(pp.windows)
            if name != "train/observed":
                v = vocal_patches.setdefault(name, {})
                patch = music.GM_NAMES[pp.perf.programs["soprano"]]
                v[patch] = v.get(patch, 0) + len(pp.windows)
    return {
        "clips": {name: sum(len(pp.windows) for pp in pieces) for name, pieces in plans.items()},
        "corpus": {"files": facts["files"], "chorales": facts["chorales"], "tunes": len(facts["tunes"]),
                   "skipped": facts["skipped"]},
        "pieces": {name: [pp.perf.chorale.id for pp in pieces] for name, pieces in used.items()},
        "pieces_dealt": {name: len(pieces) for name, pieces in plans.items()},
        "tunes": {name: sorted({facts["tune_of"][pp.perf.chorale.id] for pp in pieces})
                  for name, pieces in used.items()},
        "shared_tunes": [g for g in facts["tunes"] if len(g) > 1],
        "seconds_rendered": round(sum((pp.windows[-1] - pp.windows[0] + 1) * o.clip_seconds
                                      for pieces in used.values() for pp in pieces), 1),
        "ensembles": {name: dict(sorted(e.items())) for name, e in ensembles.items()},
        "vocal_patches": {name: dict(sorted(v.items())) for name, v in vocal_patches.items()},
        "instrument_loudness_db": {part: {music.GM_NAMES[p]: round(db, 2) for p, db in sorted(levels_.items())}
                                   for part, levels_ in loudness.items()},
        "vocals_db": _summary(ratios, o.vocals_db_min, o.vocals_db_max),
        "level_db": {name: _summary(v, o.level_db_min, o.level_db_max) for name, v in levels.items() if v},
    }


__all__ = ["DEBIAN_PACKAGES", "NAME", "Options", "POOLS", "VERSION", "build", "plan", "validate"]
