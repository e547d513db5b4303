"""Scores to audio, offline: the Bach chorales of music21's corpus, rendered through a soundfont by fluidsynth.

* ``read_chorale`` parses one corpus file with music21 (PyPI ``music21``) into plain note lists of the four
  voices, found by part name (``Soprano``, ``Alto``, ``Tenor``, ``Bass``; a name may run on with the
  instruments that double the voice, e.g. ``"Soprano\\rOboe 1,2\\rViolin1"``), never by position: some
  chorales start with horn, trumpet or string parts. Ties are merged into one note; grace notes dropped.
* ``melody_groups`` finds the chorales that share a melody (the same hymn tune harmonised twice, or one
  chorale in two files), so a dataset can keep every tune inside one split.
* ``render_stems`` (and ``render``, for one stem) plays timed notes through the fluidsynth synthesizer
  library (Debian ``libfluidsynth3``, called in-process through ctypes) with a General MIDI soundfont
  (Debian ``timgm6mb-soundfont``) into 32-bit float audio, several stems in one pass, each on its own
  outputs and effects: a fresh synthesizer per render and no dither, so a render is a pure function of its
  inputs, repeatable bit for bit with one fluidsynth version.

Nothing here downloads anything: a missing ``music21`` raises ``MissingPythonPackageError`` with the
``pip install`` line, missing Debian files ``sources.MissingSourceError`` with the ``apt-get`` line.
"""
from __future__ import annotations

import ctypes
import difflib
import functools
import os
import re
import struct
import sysconfig
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

LIBFLUIDSYNTH = Path("/usr/lib") / (sysconfig.get_config_var("MULTIARCH") or "") / "libfluidsynth.so.3"
FLUIDSYNTH_PACKAGE = "libfluidsynth3"  # the synthesizer library (the fluidsynth program is not needed)
SOUNDFONT = Path("/usr/share/sounds/sf2/TimGM6mb.sf2")
SOUNDFONT_PACKAGE = "timgm6mb-soundfont"
MUSIC21_REQUIREMENT = "music21==10.5.1"  # the version lightning_sep pins (setup.cfg)

VOICES = ("soprano", "alto", "tenor", "bass")

# General MIDI programs (0-based) of the patches the chorale recipe plays, with their GM names.
GM_NAMES = {
    0: "Acoustic Grand Piano", 1: "Bright Acoustic Piano", 6: "Harpsichord",
    16: "Drawbar Organ", 19: "Church Organ", 20: "Reed Organ",
    40: "Violin", 41: "Viola", 42: "Cello", 43: "Contrabass", 48: "String Ensemble 1",
    49: "String Ensemble 2", 52: "Choir Aahs", 53: "Voice Oohs", 54: "Synth Voice",
    56: "Trumpet", 57: "Trombone", 58: "Tuba", 60: "French Horn", 61: "Brass Section",
    68: "Oboe", 69: "English Horn", 70: "Bassoon", 71: "Clarinet", 73: "Flute",
}


class MissingPythonPackageError(RuntimeError):
    """A Python package a recipe needs is not installed; ``command`` is the ``pip install`` line."""

    def __init__(self, package: str, requirement: str, why: str):
        self.package = package
        self.command = f"pip install {requirement}"
        super().__init__(f"the Python package {package} is not installed ({why}); install it with:\n{self.command}")


def require_music21():
    """The ``music21`` module, or ``MissingPythonPackageError`` naming the ``pip install`` line."""
    try:
        import music21
    except ImportError as e:
        raise MissingPythonPackageError("music21", MUSIC21_REQUIREMENT,
                                        f"its corpus holds the Bach chorales; import failed: {e}") from None
    return music21


def music21_corpus_dir() -> Path:
    """The folder of music21's own Bach corpus (``music21/corpus/bach``)."""
    music21 = require_music21()
    return Path(music21.__file__).resolve().parent / "corpus" / "bach"


# ----------------------------------------------------------------------------- scores


@dataclass(frozen=True)
class Note:
    start: float  # quarter notes from the beginning of the score
    end: float
    pitch: int  # MIDI note number
    fermata: bool = False


@dataclass(frozen=True)
class Chorale:
    """One corpus file: its four voices as notes (sorted by start, then pitch) and where it came from."""

    id: str  # the file name without extension, e.g. "bwv1.6", "bwv248.23-2"
    file: str  # the file name, e.g. "bwv1.6.mxl"
    voices: dict[str, tuple[Note, ...]]  # soprano, alto, tenor, bass
    part_names: tuple[str, ...]  # every part's name as written, in score order
    length: float  # quarter notes, end of the last note of the four voices

    @property
    def bwv(self) -> str:
        """The BWV number as catalogued, e.g. "1.6" for bwv1.6, "248.23" for bwv248.23-2 (no variant suffix)."""
        m = re.match(r"bwv(\d+(?:\.\d+)?)", self.id)
        return m.group(1) if m else self.id


class ScoreError(ValueError):
    """A corpus file that is not a four-voice chorale (the message names the file and what is missing)."""


CHORALE_SUFFIXES = (".mxl", ".xml", ".musicxml", ".krn")


def chorale_files(corpus_dir: str | os.PathLike) -> list[Path]:
    """Score files directly in ``corpus_dir`` (sorted by name; sub-folders such as ``choraleAnalyses`` left out)."""
    root = Path(corpus_dir)
    return sorted(p for p in root.iterdir() if p.is_file() and p.suffix.lower() in CHORALE_SUFFIXES)


def voice_of(part_name: str | None) -> str | None:
    """Which chorale voice a part name names (its first word: "Soprano", "Soprano 1", "Bass\\rContinuo"), or None."""
    if not part_name:
        return None
    first = re.split(r"[\s,]+", part_name.strip(), maxsplit=1)[0].lower()
    return first if first in VOICES else None


def read_chorale(path: str | os.PathLike) -> Chorale:
    """Parse a chorale file into notes per voice; ``ScoreError`` when it lacks a part for one of the voices.

    With two parts for one voice (``Soprano 1``, ``Soprano 2``) the first in score order is taken.
    """
    music21 = require_music21()
    from music21 import expressions

    path = Path(path)
    try:
        score = music21.converter.parse(str(path), forceSource=True, storePickle=False)  # no cache files
    except Exception as e:  # music21 raises many types for unreadable files
        raise ScoreError(f"{path}: music21 cannot parse it ({type(e).__name__}: {e})") from e
    parts = list(score.parts)
    names = tuple(str(p.partName or "") for p in parts)
    chosen = {}
    for part, name in zip(parts, names, strict=True):
        voice = voice_of(name)
        if voice is not None and voice not in chosen:
            chosen[voice] = part
    missing = [v for v in VOICES if v not in chosen]
    if missing:
        raise ScoreError(f"{path}: no part named {', '.join(m.title() for m in missing)} "
                         f"(part names: {list(names)})")
    voices = {}
    for voice in VOICES:
        notes = _part_notes(chosen[voice], expressions.Fermata)
        if not notes:
            raise ScoreError(f"{path}: the {voice} part has no notes")
        voices[voice] = notes
    length = max(n.end for notes in voices.values() for n in notes)
    return Chorale(path.stem, path.name, voices, names, length)


def _part_notes(part, fermata_class) -> tuple[Note, ...]:
    """A part's notes with ties merged (a tied pitch is one note; a fermata on any tied piece counts)."""
    notes: list[list] = []  # [start, end, pitch, fermata]
    open_ties: dict[int, int] = {}  # pitch -> index of the note a tie continues
    for n in part.flatten().notes:
        q = float(n.quarterLength)
        if q <= 0:  # grace notes
            continue
        start = float(n.offset)
        fermata = any(isinstance(e, fermata_class) for e in n.expressions)
        for p in n.pitches:  # a chord in a voice (rare divisi) sounds every pitch
            tie = n.getTie(p) if n.isChord else n.tie
            kind = tie.type if tie is not None else None
            k = open_ties.get(p.midi)
            if kind in ("stop", "continue") and k is not None and abs(notes[k][1] - start) < 1e-6:
                notes[k][1] = start + q
                notes[k][3] = notes[k][3] or fermata
            else:
                k = len(notes)
                notes.append([start, start + q, int(p.midi), fermata])
            if kind in ("start", "continue"):
                open_ties[p.midi] = k
            else:
                open_ties.pop(p.midi, None)
    return tuple(sorted((Note(*x) for x in notes), key=lambda x: (x.start, x.pitch)))


# ----------------------------------------------------------------------------- shared melodies


def melody_contour(notes: Sequence[Note], step: float = 1.0) -> list[int]:
    """The melody sampled on a grid of ``step`` quarter notes (the pitch sounding at each grid point),
    repeated pitches and rests merged away: passing notes and ornaments, which differ between two
    harmonisations of one tune, mostly fall between grid points and vanish."""
    if not notes:
        return []
    out: list[int] = []
    k = 0
    grid = np.arange(0.0, max(n.end for n in notes), step)
    for t in grid:
        while k < len(notes) and notes[k].end <= t:
            k += 1
        if k < len(notes) and notes[k].start <= t:
            p = notes[k].pitch
            if not out or out[-1] != p:
                out.append(p)
    return out


def melody_signature(notes: Sequence[Note]) -> tuple[int, ...]:
    """``melody_contour`` in semitones relative to its last note (chorales end on the tonic, so two
    harmonisations of one tune in different keys get one signature)."""
    contour = melody_contour(notes)
    return tuple(p - contour[-1] for p in contour) if contour else ()


def melody_similarity(a: Sequence[int], b: Sequence[int]) -> float:
    """How well two melody signatures match: ``difflib.SequenceMatcher`` ratio, 2 * matched / total length."""
    return difflib.SequenceMatcher(None, a, b, autojunk=False).ratio()


def melody_groups(chorales: Sequence[Chorale], threshold: float,
                  same: Iterable[tuple[str, str]] = ()) -> list[list[str]]:
    """Chorale ids grouped so that chorales sharing a melody (``melody_similarity`` of their sopranos'
    ``melody_signature`` >= ``threshold``), one BWV number, or a pair listed in ``same`` end up in one group
    (transitively). Groups are sorted lists, in order of their first id.

    All pairs are compared (409 chorales: about 1 s), with difflib's cheap upper bounds first.
    """
    ids = [c.id for c in chorales]
    parent = {i: i for i in ids}

    def find(i: str) -> str:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    def union(a: str, b: str) -> None:
        ra, rb = find(a), find(b)
        if ra != rb:
            parent[max(ra, rb)] = min(ra, rb)

    signatures = [melody_signature(c.voices["soprano"]) for c in chorales]
    matcher = difflib.SequenceMatcher(None, autojunk=False)
    for i in range(len(chorales)):
        matcher.set_seq2(signatures[i])
        for j in range(i + 1, len(chorales)):
            if chorales[i].bwv == chorales[j].bwv:
                union(ids[i], ids[j])
                continue
            matcher.set_seq1(signatures[j])
            if (matcher.real_quick_ratio() >= threshold and matcher.quick_ratio() >= threshold
                    and matcher.ratio() >= threshold):
                union(ids[i], ids[j])
    for a, b in same:
        if a in parent and b in parent:
            union(a, b)
    groups: dict[str, list[str]] = {}
    for i in ids:
        groups.setdefault(find(i), []).append(i)
    return sorted((sorted(g) for g in groups.values()), key=lambda g: g[0])


# ----------------------------------------------------------------------------- rendering


@dataclass(frozen=True)
class TimedNote:
    start: float  # seconds
    end: float
    pitch: int  # MIDI note number
    velocity: int  # 1..127


@dataclass(frozen=True)
class Track:
    """One instrument: a General MIDI program on its own MIDI channel, with its channel volume and sends."""

    program: int
    notes: tuple[TimedNote, ...]
    reverb: int = 0  # CC 91 (reverb send), 0..127
    chorus: int = 0  # CC 93 (chorus send), 0..127
    volume: int = 100  # CC 7; fluidsynth's gain is 40 log10(volume / 127) dB


DYNAMIC_SAMPLE_LOADING = 1
_BUFFERS = ctypes.POINTER(ctypes.POINTER(ctypes.c_float))  # float *buffers[]
_FUNCTIONS = {  # name: (argument types, result type) of the libfluidsynth calls used here
    "new_fluid_settings": ([], ctypes.c_void_p),
    "delete_fluid_settings": ([ctypes.c_void_p], None),
    "fluid_settings_setnum": ([ctypes.c_void_p, ctypes.c_char_p, ctypes.c_double], ctypes.c_int),
    "fluid_settings_setint": ([ctypes.c_void_p, ctypes.c_char_p, ctypes.c_int], ctypes.c_int),
    "new_fluid_synth": ([ctypes.c_void_p], ctypes.c_void_p),
    "delete_fluid_synth": ([ctypes.c_void_p], None),
    "fluid_synth_sfload": ([ctypes.c_void_p, ctypes.c_char_p, ctypes.c_int], ctypes.c_int),
    "fluid_synth_program_change": ([ctypes.c_void_p, ctypes.c_int, ctypes.c_int], ctypes.c_int),
    "fluid_synth_cc": ([ctypes.c_void_p, ctypes.c_int, ctypes.c_int, ctypes.c_int], ctypes.c_int),
    "fluid_synth_noteon": ([ctypes.c_void_p, ctypes.c_int, ctypes.c_int, ctypes.c_int], ctypes.c_int),
    "fluid_synth_noteoff": ([ctypes.c_void_p, ctypes.c_int, ctypes.c_int], ctypes.c_int),
    "fluid_synth_process": ([ctypes.c_void_p, ctypes.c_int, ctypes.c_int, _BUFFERS, ctypes.c_int, _BUFFERS],
                            ctypes.c_int),
    "fluid_set_log_function": ([ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p], ctypes.c_void_p),
}


@functools.lru_cache(maxsize=4)
def _library(path: str) -> ctypes.CDLL:
    try:
        lib = ctypes.CDLL(path)
    except OSError as e:
        raise RuntimeError(f"cannot load the fluidsynth library {path} ({e}); install it with: "
                           f"apt-get install -y {FLUIDSYNTH_PACKAGE}") from e
    for name, (args, result) in _FUNCTIONS.items():
        fn = getattr(lib, name)
        fn.argtypes, fn.restype = args, result
    for level in range(5):  # panic .. debug: fluidsynth's own messages are replaced by our errors
        lib.fluid_set_log_function(level, None, None)
    return lib


class _Synth:
    """A fresh fluidsynth synthesizer with the soundfont loaded and ``groups`` stereo outputs, each with its
    own effects (MIDI channel c plays into group c % groups); deleted on ``close``."""

    def __init__(self, lib: ctypes.CDLL, soundfont: str, sample_rate: int, gain: float, groups: int = 1):
        self.lib = lib
        self.settings = lib.new_fluid_settings()
        lib.fluid_settings_setnum(self.settings, b"synth.sample-rate", float(sample_rate))
        lib.fluid_settings_setnum(self.settings, b"synth.gain", float(gain))
        lib.fluid_settings_setint(self.settings, b"synth.cpu-cores", 1)
        for name in (b"synth.audio-channels", b"synth.audio-groups", b"synth.effects-groups"):
            lib.fluid_settings_setint(self.settings, name, groups)
        # load only the samples of the presets a render plays (a third of the start-up time; same audio)
        lib.fluid_settings_setint(self.settings, b"synth.dynamic-sample-loading", DYNAMIC_SAMPLE_LOADING)
        self.synth = lib.new_fluid_synth(self.settings)
        if not self.synth:
            lib.delete_fluid_settings(self.settings)
            self.settings = None
            raise RuntimeError(f"fluidsynth could not start a synthesizer at {sample_rate} Hz")
        if lib.fluid_synth_sfload(self.synth, os.fsencode(soundfont), 1) < 0:
            self.close()
            raise ValueError(f"{soundfont}: fluidsynth cannot load it as a SoundFont; install a General MIDI "
                             f"soundfont with: apt-get install -y {SOUNDFONT_PACKAGE}")

    def close(self) -> None:
        if self.synth:
            self.lib.delete_fluid_synth(self.synth)
            self.synth = None
        if self.settings:
            self.lib.delete_fluid_settings(self.settings)
            self.settings = None


def render_stems(stems: Sequence[Sequence[Track]], sample_rate: int, seconds: float, *,
                 soundfont: str | os.PathLike = SOUNDFONT, library: str | os.PathLike = LIBFLUIDSYNTH,
                 gain: float = 0.5) -> list[np.ndarray]:
    """Play every stem's tracks through libfluidsynth at ``sample_rate`` in one pass, each stem into its own
    output: float32 mono audio per stem (the mean of its stereo output), exactly
    ``round(seconds * sample_rate)`` samples (notes still sounding at the end are cut).

    Stem ``s`` of ``G`` plays on the MIDI channels ``c`` with ``c % G == s`` (channel 9, the General MIDI drum
    channel, is skipped), which fluidsynth routes to audio group ``s`` and effects group ``s``: each stem has
    its own reverb and chorus, so a stem sounds exactly as if it were rendered alone (to float rounding).
    Every call uses a new synthesizer, so a render depends on its inputs only, never on earlier renders.
    At one sample, note-offs come before note-ons, so a repeated pitch is struck again; fluidsynth applies
    events at the start of its 64-sample blocks.
    """
    groups = len(stems)
    if not 1 <= groups <= 8:
        raise ValueError(f"1 to 8 stems can be rendered at once, got {groups}")
    soundfont, library = str(soundfont), str(library)
    n = int(round(seconds * sample_rate))
    events: list[tuple[int, int, int, str, tuple[int, ...]]] = []  # (sample, order, seq, call, args)
    for s, tracks in enumerate(stems):
        channels = [c for c in range(s, 16, groups) if c != 9]
        if len(tracks) > len(channels):
            raise ValueError(f"stem {s} has {len(tracks)} tracks; {len(channels)} MIDI channels are free for it")
        for track, ch in zip(tracks, channels[: len(tracks)], strict=True):
            if not 0 <= track.program <= 127:
                raise ValueError(f"MIDI program {track.program} is outside 0..127")
            events += [(0, 0, len(events), "fluid_synth_program_change", (ch, track.program)),
                       (0, 0, len(events) + 1, "fluid_synth_cc", (ch, 7, track.volume)),
                       (0, 0, len(events) + 2, "fluid_synth_cc", (ch, 91, track.reverb)),
                       (0, 0, len(events) + 3, "fluid_synth_cc", (ch, 93, track.chorus))]
            for note in track.notes:
                on, off = int(round(note.start * sample_rate)), int(round(note.end * sample_rate))
                if off <= on or on >= n:
                    continue
                events.append((on, 2, 0, "fluid_synth_noteon", (ch, note.pitch, max(1, min(127, note.velocity)))))
                events.append((off, 1, 0, "fluid_synth_noteoff", (ch, note.pitch)))
    events.sort(key=lambda e: (e[0], e[1], e[2], e[4]))
    lib = _library(library)
    synth = _Synth(lib, soundfont, sample_rate, gain, groups)
    out = np.zeros((groups, 2, n), dtype=np.float32)  # per stem: left, right
    ptr = ctypes.POINTER(ctypes.c_float)
    dry = [out[s, side] for s in range(groups) for side in (0, 1)]
    wet = [out[s, side] for s in range(groups) for _effect in ("reverb", "chorus") for side in (0, 1)]
    try:
        pos = 0

        def advance(to: int) -> None:
            nonlocal pos
            while pos < to:
                k = min(to - pos, 4096)
                outs = (ptr * len(dry))(*[ctypes.cast(b.ctypes.data + 4 * pos, ptr) for b in dry])
                fx = (ptr * len(wet))(*[ctypes.cast(b.ctypes.data + 4 * pos, ptr) for b in wet])
                if lib.fluid_synth_process(synth.synth, k, len(wet), fx, len(dry), outs) != 0:
                    raise RuntimeError("fluidsynth failed to render (fluid_synth_process)")
                pos += k

        for at, _, _, call, args in events:
            advance(min(at, n))
            getattr(lib, call)(synth.synth, *args)
        advance(n)
    finally:
        synth.close()
    return [((out[s, 0].astype(np.float64) + out[s, 1]) / 2).astype(np.float32) for s in range(groups)]


def render(tracks: Sequence[Track], sample_rate: int, seconds: float, **kwargs) -> np.ndarray:
    """``render_stems`` of one stem: the tracks (up to 15) mixed, float32 mono."""
    return render_stems([tracks], sample_rate, seconds, **kwargs)[0]


def soundfont_presets(soundfont: str | os.PathLike = SOUNDFONT) -> dict[int, str]:
    """Bank-0 presets of an SF2 file: program -> preset name (read from its ``phdr`` chunk)."""
    data = Path(soundfont).read_bytes()
    if data[:4] != b"RIFF" or data[8:12] != b"sfbk":
        raise ValueError(f"{soundfont}: not a SoundFont 2 file")
    pos = data.find(b"phdr")
    if pos < 0:
        raise ValueError(f"{soundfont}: no preset headers (phdr chunk)")
    size = struct.unpack_from("<I", data, pos + 4)[0]
    out = {}
    for k in range(size // 38 - 1):  # the last record is the terminal "EOP"
        rec = data[pos + 8 + 38 * k: pos + 8 + 38 * (k + 1)]
        name = rec[:20].split(b"\0", 1)[0].decode("latin-1").strip()
        program, bank = struct.unpack_from("<HH", rec, 20)
        if bank == 0:
            out[program] = name
    return out


__all__ = ["Chorale", "FLUIDSYNTH_PACKAGE", "GM_NAMES", "LIBFLUIDSYNTH", "MissingPythonPackageError", "Note",
           "SOUNDFONT", "SOUNDFONT_PACKAGE", "ScoreError", "TimedNote", "Track", "VOICES", "chorale_files",
           "melody_contour", "melody_groups", "melody_signature", "melody_similarity", "render_stems",
           "music21_corpus_dir", "read_chorale", "render", "require_music21", "soundfont_presets", "voice_of"]
