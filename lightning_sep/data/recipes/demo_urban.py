"""Recipe ``demo-urban``: overlapping urban sound events with clip-level labels, built offline from Debian packages.

The setting is weakly supervised sound-event separation (WeakSep): training mixtures come with their labels only,
clip-level (which classes sound in the clip) and frame-level (when each event sounds), never with isolated
sources; a separate fully supervised pool gives the upper bound, and the evaluation splits hold every stem.

Sources (see ``sources.py``; nothing is downloaded, missing packages raise an error naming the
``apt-get install -y ...`` line): OpenTTD's OpenSFX catalogue (``openttd-opensfx``), Simutrans' pak64 sounds
(``simutrans-pak64``) and Tux Paint's stamps (``tuxpaint-stamps-default``: their sound effects and spoken
descriptions, OGG Vorbis).

Classes (``CLASSES``; the stems, in this order). Each sound effect used is mapped to one class in
``CLASS_RECORDINGS``, which also fixes its split, so the splits are the same for every seed:

* ``bird``: songbird, crow, owl, gull, duck, goose and poultry calls (17 recordings: 10 train, 3 valid, 4 test);
* ``engine``: jets and propeller planes taking off, a helicopter, buses and trucks starting and pulling away,
  a breakdown (14: 9, 2, 3);
* ``explosion``: explosions, crashes, thunder, fireworks: broadband bursts with a sharp onset (7: 4, 1, 2);
* ``horn``: tonal warning signals: ship, car and train horns, steam whistles, a fire-truck siren (10: 6, 2, 2);
* ``machinery``: jackhammers, chainsaw, circular saws, mining machinery, household machines (8: 5, 1, 2);
* ``speech``: Tux Paint's spoken stamp descriptions ("A dog.", "Une grenouille."), split by language
  (``SPEECH_LANGUAGES``: be, da, el, es, fr, ru train; nl, ro valid; bg, ca, en test), ``speech_per_language``
  files per language spread evenly over its files (default 40: 240, 80, 120); byte-identical copies are skipped.

A split of a class holds the kinds of sound the class has (jets, propeller planes and buses in every split of
``engine``) and mixes the packages where it can, so no split differs by source (Simutrans' files are 11 kHz: no
content above 5.5 kHz). Every other sound effect of the three packages is left out, with the reason in
``LEFT_OUT`` (copies of other recordings, interface beeps, cartoon effects, ambiences with birds or insects in
them, sounds too few to split three ways, digital silence, ...); ``dataset.json`` lists each with its reason
(``stats.left_out``). Recordings that share audio were found once by normalized cross-correlation of 0.25 s
windows (>= 0.89) over all pairs at 8 kHz (too slow to run in every build). The class list came out of a trial
with a small log-mel CNN trained on the weak labels of the training mixtures and scored on test mixtures (new
recordings): farm animals, music, and aircraft and road vehicles as two classes reached a clip-level AP of only
about 0.4 and were dropped or merged (``engine``).

Clips (``clip_seconds``, default 4 s at 16 kHz): ``events_min..events_max`` events (uniform count, default 1-3)
of distinct classes (drawn uniformly without replacement), each from a recording of its class in the clip's
split (uniform). Recordings are resampled to ``sample_rate`` (``torchaudio``'s sinc resampler), DC removed,
leading and trailing silence trimmed and inner pauses shortened to ``max_silence_seconds``. An event is the
whole recording when it is at most ``max_event_seconds`` long, else a random excerpt that long; it is never
looped, and it starts at a uniformly random sample such that it ends inside the clip (so an event is often
shorter than the clip and clips hold silence between events). Its level (RMS over its sounding part) is
uniform in ``[event_db_min, event_db_max]`` dBFS. Events overlap wherever their random spans do; the overlap
is measured, not forced (``stats.overlap``).

Background (``background_db``; ``None`` disables it): a low-level ambience under every clip, from recordings
that belong to no class (``BACKGROUND_RECORDINGS``: wind, arctic wind, water), at ``background_db +-
background_spread_db`` dBFS RMS, as a chain of random excerpts joined by ``crossfade_seconds`` crossfades (the
recordings are shorter than a clip). It is stored as the extra stem ``background``, which is not a class
(``dataset.json``: ``stems`` = classes + ``background``, ``classes`` = the classes). The background
recordings are few (3) and carry no label, so every split uses all of them.

Pools (clip counts are options; defaults in brackets) and their stems:

* ``train/mixtures`` [2000] ``mix`` only: the weakly labelled training set;
* ``train/isolated`` [400] ``mix``, one stem per class and ``background``: the supervised upper bound's pool,
  drawn from the same training recordings as the mixtures but as other random clips;
* ``valid/eval`` [200] and ``test/eval`` [300]: ``mix`` and every stem.

The defaults keep the build near 300 MB (a mix-only clip takes about 70 KB, a clip with stems about 185 KB).
The supervised pool is the smaller one because the training recordings, not the clip count, bound its variety:
400 clips already use each of the 34 non-speech training recordings about 20 times.

Every clip of a pool with stems stores one stem per class: the class's event where the class is present,
all zeros where it is absent. Each stem is quantized to int16 first and ``mix`` is their exact int16 sum (the
clip is scaled down as a whole to peak at -1 dBFS at most, so nothing clips): ``mix == sum(stems)`` holds in
the stored data, ``background`` included.

Per-clip metadata (``<key>.json``): ``labels`` (the classes present, in ``CLASSES`` order), ``events``
(``[label, onset_s, offset_s]`` per event, sorted by onset: where its sound is, i.e. the first and last 10 ms
frame of the placed excerpt above the recording's activity threshold, -40 dB under its loudest frame),
``n_events``, ``overlap_s`` (seconds with two or more events sounding), ``level_db`` (the mix, dBFS RMS),
``scale_db`` (the peak guard's gain, 0 when none), and ``source``: per event the recording ``id``, ``title``,
``licence``, its excerpt ``from_s``/``to_s`` in the silence-trimmed recording, ``at_s`` (where the excerpt starts
in the clip) and ``level_db``; the ``background`` recording and its ``level_db``.

Determinism: everything random comes from numpy Generators seeded by ``(seed, purpose, pool, clip)``, so a
clip does not depend on the other pools' counts; files are read in sorted order; two builds with one seed
(same package and library versions) give byte-identical shards.
"""
from __future__ import annotations

import fnmatch
import functools
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping

import numpy as np

from ..shards import DatasetInfo, DatasetWriter
from . import sources as src
from .demo_speech_noise import excerpt_fill
from .events import EVENT_POOLS as POOLS
from .events import EventPool, overlap_samples, seeded_rng

NAME = "demo-urban"
VERSION = 1
DEBIAN_PACKAGES = [src.OPENSFX_PACKAGE, src.SIMUTRANS_PACKAGE, src.TUXPAINT_PACKAGE]
RECORDED_PACKAGES = DEBIAN_PACKAGES  # their versions are recorded: they are the audio
BACKGROUND = "background"  # the extra stem holding the ambience (not a class)
SPLITS = ("train", "valid", "test")
PEAK = src.PEAK  # stored clips peak at -1 dBFS at most

CLASSES = ("bird", "engine", "explosion", "horn", "machinery", "speech")

_TUX = "tuxpaint:"
_BIRDS = _TUX + "animals/birds/"
# class -> split -> recording ids (speech: SPEECH_LANGUAGES). Each split of a class holds the kinds of sound the
# class has (e.g. jets, propeller planes and buses in every split of engine) and mixes the packages where it can,
# so that no split differs from the others by source (e.g. by Simutrans' 11 kHz bandwidth).
CLASS_RECORDINGS: dict[str, dict[str, tuple[str, ...]]] = {
    "bird": {
        "train": ("opensfx:osfx_66",  # Tropical: Bird (1)
                  "simutrans:seagulls", _BIRDS + "blackbird", _BIRDS + "crow", _BIRDS + "drake", _BIRDS + "duck",
                  _BIRDS + "hen", _BIRDS + "owl", _BIRDS + "tucan", _BIRDS + "turkey"),
        "valid": ("opensfx:osfx_72",  # Tropical: Bird (2)
                  _BIRDS + "cuckoo", _BIRDS + "gander"),
        "test": (_BIRDS + "lark", _BIRDS + "quetzal", _BIRDS + "rooster", _BIRDS + "seagull"),
    },
    "engine": {
        "train": ("opensfx:osfx_08",  # Propeller plane start
                  "opensfx:osfx_09",  # Early jet take off
                  "opensfx:osfx_24",  # Helicopter
                  "opensfx:osfx_59",  # Mach 1+ Jet take off
                  "simutrans:comet-jet",
                  "opensfx:osfx_15",  # Road vehicle breakdown
                  "opensfx:osfx_25",  # Truck/old bus start, pull away
                  "opensfx:osfx_28",  # Old bus start
                  "simutrans:truck"),
        "valid": ("simutrans:planelow", "simutrans:bus"),
        "test": ("opensfx:osfx_61",  # Modern jet take off
                 "opensfx:osfx_69",  # Toyland: Propeller plane take off
                 "opensfx:osfx_27"),  # Modern bus start
    },
    "explosion": {
        "train": ("opensfx:osfx_18",  # Explosion
                  "opensfx:osfx_19",  # Big crash
                  "opensfx:osfx_54",  # Lumber mill: Crashing tree
                  _TUX + "naturalforces/lightningbolt"),  # thunder
        "valid": ("simutrans:explosion",),
        "test": ("opensfx:osfx_17",  # Crash
                 _TUX + "seasonal/newyears/fireworks"),
    },
    "horn": {
        "train": ("opensfx:osfx_03",  # Factory Whistle
                  "opensfx:osfx_05",  # Steam engine going in tunnel (its whistle)
                  "opensfx:osfx_06",  # Ship horn
                  "opensfx:osfx_35",  # Modern car horn
                  "simutrans:diesel",  # a diesel locomotive's horn
                  _TUX + "vehicles/emergency/firetruck"),  # siren
        "valid": ("opensfx:osfx_07",  # Ferry horn
                  "simutrans:steam"),  # a steam whistle
        "test": ("opensfx:osfx_10",  # Diesel/electric train station departure (its horn)
                 "simutrans:boat-horn"),
    },
    "machinery": {
        "train": ("opensfx:osfx_11",  # Mining machinery
                  "opensfx:osfx_33",  # Jackhammer
                  "opensfx:osfx_56",  # Lumber mill: Chainsaw
                  "simutrans:buzzsaw", _TUX + "household/Washing-machine"),
        "valid": ("simutrans:jackhammer",),
        "test": ("opensfx:osfx_40",  # Sawmill
                 _TUX + "household/vacuum_cleaner"),
    },
}
SPEECH = "speech"
# Speech: Tux Paint's spoken stamp descriptions (read speech), split by language. The package does not name the
# speakers; a language's descriptions sound like one or a few voices, so splitting by language keeps the
# speakers of the splits apart as far as no speaker recorded two languages. Not used: lt (its 88 files say the
# letters of the alphabet, many of them twice under two stamps) and ml (6 files).
SPEECH_LANGUAGES = {"train": ("be", "da", "el", "es", "fr", "ru"), "valid": ("nl", "ro"), "test": ("bg", "ca", "en")}

# Ambiences that belong to no class: the background under the events.
BACKGROUND_RECORDINGS = ("opensfx:osfx_52",  # Wind
                         "simutrans:Water", "simutrans:arctic")  # flowing water; arctic wind

# A trial before the class list was fixed: a small log-mel CNN trained on 1500 training mixtures and scored on
# test mixtures of other recordings reached clip-level AP 0.4-0.45 for these candidate classes, which took the
# other classes down with them: farm animals (confused with speech and horns), music (tonal like the horns),
# aircraft and road vehicles apart (confused with each other: they are one class, engine, here).
_WEAK_CLASS = ("a candidate class a small CNN could not tell apart from the others on new recordings (trial: "
               "clip-level AP about 0.4)")

# Every other sound effect of the three packages, with the reason it is not used: (id patterns, reason), the first
# match wins (fnmatch patterns on the recording id). Spoken descriptions are chosen by SPEECH_LANGUAGES instead.
LEFT_OUT: tuple[tuple[tuple[str, ...], str], ...] = (
    (("opensfx:osfx_04",), "shares audio with opensfx:osfx_05 (both from one steam train horn recording)"),
    (("opensfx:osfx_26", "opensfx:osfx_60", "opensfx:osfx_62"), "truck start of opensfx:osfx_25 with a horn or toy "
     "sound added"),
    (("opensfx:osfx_63",), "old bus start of opensfx:osfx_28 with a squeaky toy added"),
    (("opensfx:osfx_64",), "modern bus start of opensfx:osfx_27 with a boink added"),
    (("opensfx:osfx_53",), "contains opensfx:osfx_15 (road vehicle breakdown)"),
    (("opensfx:osfx_58",), "contains opensfx:osfx_16 (train/ship breakdown)"),
    (("opensfx:osfx_70",), "opensfx:osfx_09 (early jet take off) with effects added"),
    (("opensfx:osfx_57",), "the same recording as opensfx:osfx_52 (wind)"),
    (("opensfx:osfx_55", "simutrans:tree-cutting"), "one tree-cutting recording: a chainsaw (machinery) and the "
     "tree's crash (explosion) in one, so it fits no single class"),
    (("opensfx:osfx_00", "opensfx:osfx_01", "opensfx:osfx_02", "opensfx:osfx_20", "opensfx:osfx_21", "opensfx:osfx_22",
      "opensfx:osfx_31", "opensfx:osfx_32", "simutrans:boing", "simutrans:cash", "simutrans:click", "simutrans:dock",
      "simutrans:gavel"), "game interface sound (jingle, splat, beep, cash till, click, gavel), not an urban event"),
    (("opensfx:osfx_41", "opensfx:osfx_42", "opensfx:osfx_43", "opensfx:osfx_44", "opensfx:osfx_45", "opensfx:osfx_46",
      "opensfx:osfx_47", "opensfx:osfx_48", "opensfx:osfx_49", "opensfx:osfx_51"),
     "Toyland cartoon effect (sugar mine, toy factory, bubbles, toffee quarry, plastic mine)"),
    (("opensfx:osfx_14", "simutrans:crossing"), "level-crossing bell: only two recordings, too few to split a class "
     "three ways"),
    (("opensfx:osfx_16",), "train/ship breakdown: a machine noise of no class, and the only one of its kind"),
    (("opensfx:osfx_12", "opensfx:osfx_13", "opensfx:osfx_23", "opensfx:osfx_39", "opensfx:osfx_65",
      "opensfx:osfx_71"), "the only sound of its kind (electric sparking, steam hiss, plane wheels touching ground, "
     "bridge building, maglev or monorail whoosh)"),
    (("opensfx:osfx_29", "opensfx:osfx_30"), "crowd (applause, oooh): two recordings, too few for a class"),
    (("opensfx:osfx_36", "opensfx:osfx_37", "opensfx:osfx_38", "simutrans:horse", "tuxpaint:animals/mammals/bovines/*",
      "tuxpaint:animals/mammals/equines/*", "tuxpaint:animals/mammals/pig*"), "farm animal call: " + _WEAK_CLASS),
    (("tuxpaint:hobbies/music/*", "tuxpaint:military/final-roll-call"), "musical instrument or bugle: " + _WEAK_CLASS),
    (("opensfx:osfx_67", "opensfx:osfx_68"), "wild animals (lion roar, monkeys): not urban, too few for a class"),
    (("simutrans:forest", "simutrans:tropic", "simutrans:desert"), "ambience with bird or insect calls in it: as a "
     "background it would put unlabelled bird-like sounds into clips"),
    ((_BIRDS + "nandou", _TUX + "animals/lizards/iguana", _TUX + "animals/mammals/giraffe",
      _TUX + "animals/marsupials/wombat"), "digital silence"),
    ((_BIRDS + "penguin", _BIRDS + "vulture", _BIRDS + "heron_greatblue_flying"), "bird sound unlike a bird call "
     "(the penguin brays like a donkey, the vulture hisses, the heron's wing beats): it would blur the bird class"),
    ((_TUX + "animals/mammals/dogs/*",), "one dog bark and one fox bark: too few to split a dog class three ways"),
    ((_TUX + "animals/*",), "wild or exotic animal, insect or frog: not urban, and too varied for one class"),
    ((_TUX + "household/*", _TUX + "hobbies/*"), "household sound or camera shutter: too few of a kind for a class"),
    ((_TUX + "symbols/*",), "spoken letter or digit, or a face's voice: speech of its own kind (the speech class "
     "uses the spoken descriptions)"),
    ((_TUX + "*",), "toy, seasonal or cartoon effect, radio chatter or road-sign jingle: one of a kind"),
)


@dataclass
class Options:
    """Settings of ``demo-urban`` (``key=value`` on the command line; all recorded in dataset.json).

    The source paths default to where the Debian packages install the files; change them only to read a copy
    elsewhere (tests point one at a missing folder to check the error message).
    """

    seed: int = 0  # seeds every random choice (non-negative)
    sample_rate: int = 16000  # Hz of the stored clips; every recording is resampled to it
    clip_seconds: float = 4.0  # length of every clip
    mixtures_clips: int = 2000  # train/mixtures: mix only, with labels and events (the weakly labelled set)
    isolated_clips: int = 400  # train/isolated: mix and every stem, from the training recordings
    valid_clips: int = 200  # valid/eval: mix and every stem
    test_clips: int = 300  # test/eval: mix and every stem
    classes: str = ""  # comma-separated subset of the classes to use ("" uses all six)
    speech_per_language: int = 40  # spoken descriptions used per language (evenly spread over its files)
    events_min: int = 1  # fewest events per clip (each of another class)
    events_max: int = 3  # most events per clip; the count is uniform in [min, max]
    event_db_min: float = -32.0  # level of each event (RMS over its sounding part), uniform in [min, max] dBFS
    event_db_max: float = -20.0  # upper end of the event level range, dBFS
    max_event_seconds: float = 3.0  # longer recordings give a random excerpt this long (at most clip_seconds)
    max_silence_seconds: float = 0.5  # pauses inside a recording longer than this are shortened to it
    background_db: float | None = -45.0  # background ambience level, dBFS RMS; None: no background stem
    background_spread_db: float = 5.0  # the background level is uniform in background_db +- this, dB
    crossfade_seconds: float = 0.05  # crossfade between the excerpts that loop a background recording
    clips_per_shard: int = 100  # clips per tar shard
    opensfx_cat: str = str(src.OPENSFX_CAT)  # openttd-opensfx sound catalogue
    simutrans_dir: str = str(src.SIMUTRANS_SOUND_DIR)  # simutrans-pak64 sounds
    tuxpaint_dir: str = str(src.TUXPAINT_STAMPS_DIR)  # tuxpaint-stamps-default stamps folder


def selected_classes(o: Options) -> tuple[str, ...]:
    """The classes the ``classes`` option selects, in ``CLASSES`` order; ``ValueError`` naming the option."""
    if not o.classes.strip():
        return CLASSES
    names = [c.strip() for c in o.classes.split(",") if c.strip()]
    unknown = [c for c in names if c not in CLASSES]
    if unknown:
        raise ValueError(f"{NAME}: classes={o.classes!r}: unknown class {unknown[0]!r}; "
                         f"choose from {', '.join(CLASSES)}")
    if len(set(names)) != len(names):
        raise ValueError(f"{NAME}: classes={o.classes!r} names a class twice")
    return tuple(c for c in CLASSES if c in names)


def validate(o: Options) -> None:
    """Raise ``ValueError`` naming the option when a setting cannot work."""
    problems = []
    if not isinstance(o.seed, int) or o.seed < 0:
        problems.append(f"seed={o.seed!r} must be a non-negative integer")
    if not 8000 <= o.sample_rate <= 48000:
        problems.append(f"sample_rate={o.sample_rate} must lie in 8000..48000")
    if not 1.0 <= o.clip_seconds <= 30:
        problems.append(f"clip_seconds={o.clip_seconds} must lie in 1..30")
    for p in POOLS:
        if getattr(o, p.count_option) < 0:
            problems.append(f"{p.count_option}={getattr(o, p.count_option)} must be >= 0")
    try:
        n_classes = len(selected_classes(o))
    except ValueError as e:
        problems.append(str(e).removeprefix(f"{NAME}: "))
        n_classes = len(CLASSES)
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
    if not 0.1 <= o.max_event_seconds <= o.clip_seconds:
        problems.append(f"max_event_seconds={o.max_event_seconds} must lie in 0.1..clip_seconds ({o.clip_seconds})")
    if o.max_silence_seconds < 0.05:
        problems.append(f"max_silence_seconds={o.max_silence_seconds} must be >= 0.05")
    if o.background_db is not None and not -90 <= o.background_db <= -10:
        problems.append(f"background_db={o.background_db} must lie in -90..-10 dBFS (or None: no background)")
    if o.background_spread_db < 0:
        problems.append(f"background_spread_db={o.background_spread_db} must be >= 0")
    if o.crossfade_seconds < 0:
        problems.append(f"crossfade_seconds={o.crossfade_seconds} must be >= 0")
    if o.clips_per_shard < 1:
        problems.append(f"clips_per_shard={o.clips_per_shard} must be >= 1")
    if o.speech_per_language < 1:
        problems.append(f"speech_per_language={o.speech_per_language} must be >= 1")
    if problems:
        raise ValueError(f"{NAME}: " + "; ".join(problems))


def source_paths(o: Options) -> dict[str, list[str]]:
    """What the recipe reads from each Debian package (for ``require_debian``)."""
    return {src.OPENSFX_PACKAGE: [o.opensfx_cat], src.SIMUTRANS_PACKAGE: [o.simutrans_dir],
            src.TUXPAINT_PACKAGE: [o.tuxpaint_dir]}


# ----------------------------------------------------------------------------- the class map


def check_class_map(class_map: Mapping[str, Mapping[str, Iterable[str]]], classes: Iterable[str] = CLASSES,
                    background: Iterable[str] = BACKGROUND_RECORDINGS) -> None:
    """Raise ``ValueError`` unless ``class_map`` (class -> split -> recording ids) uses only known classes and
    splits, gives every class recordings in every split, and puts each recording in one class and split only
    (and none in the background)."""
    known = tuple(classes)
    seen: dict[str, str] = {}
    for label, splits in class_map.items():
        if label not in known:
            raise ValueError(f"{NAME}: class map: label {label!r} is not among the classes {list(known)}; add it to "
                             "CLASSES or map its recordings to one of them")
        for split in SPLITS:
            if not tuple(splits.get(split, ())):
                raise ValueError(f"{NAME}: class map: class {label!r} has no {split} recording; every class needs "
                                 "recordings in train, valid and test")
        for split, ids in splits.items():
            if split not in SPLITS:
                raise ValueError(f"{NAME}: class map: class {label!r} has split {split!r}; splits are {SPLITS}")
            for rec in ids:
                where = f"{label}/{split}"
                if rec in seen:
                    raise ValueError(f"{NAME}: class map: recording {rec!r} is in {seen[rec]} and in {where}; a "
                                     "recording belongs to one class and one split")
                seen[rec] = where
    for rec in background:
        if rec in seen:
            raise ValueError(f"{NAME}: class map: background recording {rec!r} is also in {seen[rec]}")
    missing = [c for c in known if c not in class_map]
    if missing:
        raise ValueError(f"{NAME}: class map: no recordings for classes {missing}")


def check_labels(labels: Iterable[str], classes: Iterable[str], where: str) -> list[str]:
    """``labels`` in ``classes`` order; ``ValueError`` naming ``where`` when one is not a class or repeats."""
    known = list(classes)
    labels = list(labels)
    for label in labels:
        if label not in known:
            raise ValueError(f"{where}: label {label!r} is not among the dataset's classes {known}; map its "
                             "recordings to a class in CLASS_RECORDINGS (or add the class to CLASSES)")
    if len(set(labels)) != len(labels):
        raise ValueError(f"{where}: labels {labels} name a class twice")
    return [c for c in known if c in labels]


def left_out_reason(rec_id: str) -> str | None:
    """Why a sound effect is not used (``LEFT_OUT``), or None for the used ones and those ``LEFT_OUT`` misses."""
    used = {r for splits in CLASS_RECORDINGS.values() for ids in splits.values() for r in ids}
    if rec_id in used or rec_id in BACKGROUND_RECORDINGS:
        return None
    for patterns, reason in LEFT_OUT:
        if any(fnmatch.fnmatchcase(rec_id, p) for p in patterns):
            return reason
    return None


@dataclass(frozen=True)
class SpeechFile:
    id: str  # tuxpaint:<path without .ogg>
    path: str
    language: str
    text: str  # the description as written in the stamp's .txt (what is said)


@functools.lru_cache(maxsize=4)
def speech_files(tuxpaint_dir: str, per_language: int) -> tuple[dict[str, tuple[SpeechFile, ...]], dict[str, str]]:
    """The spoken descriptions used, by split: per language of ``SPEECH_LANGUAGES`` ``per_language`` files spread
    evenly over its files in path order (so over all stamp themes). A file whose bytes equal an earlier chosen
    one's (one take filed under two stamps) is skipped; returns the files and the skipped ones with the reason."""
    import hashlib

    available = src.tuxpaint_descriptions(tuxpaint_dir)
    root = Path(tuxpaint_dir)
    out: dict[str, tuple[SpeechFile, ...]] = {}
    skipped: dict[str, str] = {}
    seen: dict[str, str] = {}
    for split in SPLITS:
        chosen = []
        for lang in SPEECH_LANGUAGES[split]:
            files = available.get(lang, ())
            if not files:
                raise RuntimeError(f"{NAME}: no spoken descriptions in language {lang!r} under {root} "
                                   f"({src.TUXPAINT_PACKAGE} {src.package_version(src.TUXPAINT_PACKAGE)}); "
                                   f"reinstall it (apt-get install --reinstall -y {src.TUXPAINT_PACKAGE})")
            picks = np.unique(np.round(np.linspace(0, len(files) - 1, min(per_language, len(files)))).astype(int))
            for k in picks:
                path, text = files[int(k)]
                rec_id = "tuxpaint:" + Path(path).relative_to(root).as_posix()[: -len(".ogg")]
                digest = hashlib.sha1(Path(path).read_bytes()).hexdigest()
                if digest in seen:
                    skipped[rec_id] = f"the same file as {seen[digest]}"
                    continue
                seen[digest] = rec_id
                chosen.append(SpeechFile(rec_id, path, lang, text))
        out[split] = tuple(chosen)
    return out, skipped


def class_map(o: Options) -> dict[str, dict[str, tuple[str, ...]]]:
    """The recording ids of every selected class by split (``CLASS_RECORDINGS`` and the speech files)."""
    out = {}
    for label in selected_classes(o):
        if label == SPEECH:
            files, _ = speech_files(o.tuxpaint_dir, o.speech_per_language)
            out[label] = {split: tuple(f.id for f in files[split]) for split in SPLITS}
        else:
            out[label] = dict(CLASS_RECORDINGS[label])
    return out


# ----------------------------------------------------------------------------- sources at the dataset rate


@dataclass(eq=False)
class Sound:
    id: str
    title: str  # the source's title; for speech, the words said
    licence: str
    credit: str
    package: str
    label: str  # a class, or "background"
    split: str | None  # None for the background
    source_rate: int  # the file's own rate (its bandwidth is at most half of it)
    audio: np.ndarray  # at the dataset rate, DC removed, silence trimmed, pauses shortened
    threshold_db: float  # a 10 ms frame at or above this level is sounding (40 dB under the loudest frame)


ACTIVE_RELATIVE_DB = -40.0  # frames this far under a recording's loudest one are silence (as in trim_silence)
ACTIVE_FLOOR_DB = -65.0  # and frames under this level, dBFS of the source file
FRAME_SECONDS = 0.01


def all_recordings(o: Options) -> dict[str, src.Recording]:
    """Every sound effect of the three packages by id (the files' own rates; no spoken descriptions)."""
    return _all_recordings(o.opensfx_cat, o.simutrans_dir, o.tuxpaint_dir)


def _all_recordings(opensfx_cat: str, simutrans_dir: str, tuxpaint_dir: str) -> dict[str, src.Recording]:
    recs = list(src.opensfx_recordings(opensfx_cat)) + list(src.simutrans_recordings(simutrans_dir))
    recs += list(src.tuxpaint_recordings(tuxpaint_dir))
    return {r.id: r for r in recs}


def load_sounds(o: Options, classes: tuple[str, ...]) -> dict[str, Sound]:
    """The class and background recordings at the dataset rate, by id; a missing or silent one raises an error."""
    speech = speech_files(o.tuxpaint_dir, o.speech_per_language)[0] if SPEECH in classes else {}
    wanted = []
    for label in classes:
        for split in SPLITS:
            if label == SPEECH:
                wanted += [(f.id, label, split, f.path, f.text) for f in speech[split]]
            else:
                wanted += [(rec, label, split, "", "") for rec in CLASS_RECORDINGS[label][split]]
    if o.background_db is not None:
        wanted += [(rec, BACKGROUND, None, "", "") for rec in BACKGROUND_RECORDINGS]
    return {s.id: s for s in _load_sounds(o.opensfx_cat, o.simutrans_dir, o.tuxpaint_dir, o.sample_rate,
                                          o.max_silence_seconds, tuple(wanted))}


@functools.lru_cache(maxsize=2)  # sources are read-only: reuse them across builds in one process
def _load_sounds(opensfx_cat: str, simutrans_dir: str, tuxpaint_dir: str, rate: int, max_gap: float,
                 wanted: tuple[tuple[str, str, str | None, str, str], ...]) -> tuple[Sound, ...]:
    recs = _all_recordings(opensfx_cat, simutrans_dir, tuxpaint_dir)
    out = []
    for rec_id, label, split, path, text in wanted:
        if path:
            rec = src.read_tuxpaint_sound(path, tuxpaint_dir, text)
        elif rec_id in recs:
            rec = recs[rec_id]
        else:
            pkg = {"opensfx": src.OPENSFX_PACKAGE, "simutrans": src.SIMUTRANS_PACKAGE,
                   "tuxpaint": src.TUXPAINT_PACKAGE}.get(rec_id.split(":", 1)[0], "?")
            raise RuntimeError(f"{NAME}: recording {rec_id} ({label}) is not in the installed {pkg} "
                               f"(version {src.package_version(pkg)}); this recipe expects the files of the Debian "
                               f"12 package: reinstall it (apt-get install --reinstall -y {pkg}) or update "
                               "CLASS_RECORDINGS")
        x = src.resample(rec.audio, rec.sample_rate, rate).astype(np.float64)
        x = (x - x.mean()) if len(x) else x
        levels = src.frame_levels_db(x, rate, FRAME_SECONDS)
        threshold = max(float(levels.max()) + ACTIVE_RELATIVE_DB, ACTIVE_FLOOR_DB) if len(x) else 0.0
        trimmed = src.trim_silence(x, rate, relative_db=ACTIVE_RELATIVE_DB, floor_db=ACTIVE_FLOOR_DB,
                                   max_gap_s=max_gap, frame_s=FRAME_SECONDS)
        if len(trimmed) < 0.05 * rate:
            raise RuntimeError(f"{NAME}: recording {rec_id} ({label}) is silent or shorter than 50 ms after "
                               f"trimming silence ({rec.path}); move it to LEFT_OUT")
        trimmed = trimmed.astype(np.float32)
        trimmed.setflags(write=False)
        out.append(Sound(rec.id, rec.title, rec.licence, rec.credit, rec.package, label, split, rec.sample_rate,
                         trimmed, threshold))
    return tuple(out)


def _rms_db(x: np.ndarray) -> float:
    return float(10 * np.log10(np.mean(np.square(x, dtype=np.float64)) + 1e-20)) if len(x) else -200.0


# ----------------------------------------------------------------------------- rendering


def active_span(x: np.ndarray, threshold_db: float, rate: int) -> tuple[int, int] | None:
    """First and last sample (exclusive) of the 10 ms frames of ``x`` at or above ``threshold_db``; None if none."""
    levels = src.frame_levels_db(x, rate, FRAME_SECONDS)
    active = np.flatnonzero(levels >= threshold_db)
    if active.size == 0:
        return None
    frame = max(1, int(round(FRAME_SECONDS * rate)))
    return int(active[0] * frame), int(min(len(x), (active[-1] + 1) * frame))


def place_event(sound: Sound, n: int, max_len: int, level_db: float, rate: int,
                rng: np.random.Generator) -> tuple[np.ndarray, dict[str, Any]]:
    """One event in a clip of ``n`` samples: the recording (or a random excerpt ``max_len`` long) at a random
    start, scaled so its sounding part has RMS ``level_db`` dBFS. Returns the clip-long stem and its description."""
    audio = sound.audio
    length = min(len(audio), max_len)
    for _attempt in range(20):  # an excerpt could fall into a quiet stretch of a long recording: draw again
        off = int(rng.integers(0, len(audio) - length + 1))
        excerpt = audio[off: off + length].astype(np.float64)
        span = active_span(excerpt, sound.threshold_db, rate)
        if span is not None:
            break
    else:
        raise RuntimeError(f"{NAME}: no sounding excerpt of {sound.id} found in 20 draws")
    a, b = span
    excerpt = excerpt * 10 ** ((level_db - _rms_db(excerpt[a:b])) / 20)
    at = int(rng.integers(0, n - length + 1))
    stem = np.zeros(n, dtype=np.float64)
    stem[at: at + length] = excerpt
    info = {"label": sound.label, "id": sound.id, "title": sound.title, "licence": sound.licence,
            "from_s": round(off / rate, 6), "to_s": round((off + length) / rate, 6), "at_s": round(at / rate, 6),
            "onset_s": round((at + a) / rate, 6), "offset_s": round((at + b) / rate, 6),
            "level_db": round(level_db, 2)}
    return stem, info


def render_background(sounds: list[Sound], n: int, o: Options, rng: np.random.Generator) -> tuple[np.ndarray, dict]:
    """A clip of ambience from a random background recording at a random level around ``background_db``."""
    sound = sounds[int(rng.integers(len(sounds)))]
    seg = sound.audio.astype(np.float64)
    if len(seg) >= n:
        off = int(rng.integers(0, len(seg) - n + 1))
        audio, how = seg[off: off + n], {"crop_s": [round(off / o.sample_rate, 4), round((off + n) / o.sample_rate, 4)]}
    else:
        audio, pieces = excerpt_fill(seg, n, int(round(o.crossfade_seconds * o.sample_rate)), rng)
        how = {"excerpts": pieces}
    level = float(rng.uniform(o.background_db - o.background_spread_db, o.background_db + o.background_spread_db))
    audio = audio * 10 ** ((level - _rms_db(audio)) / 20)
    return audio, {"id": sound.id, "title": sound.title, "licence": sound.licence, "level_db": round(level, 2), **how}


def render_clip(pool: EventPool, index: int, o: Options, classes: tuple[str, ...],
                by_class: dict[str, list[Sound]], background: list[Sound]) -> tuple[dict[str, np.ndarray], dict]:
    """One clip of a pool: int16 ``mix`` and stems (every class, + background) and its metadata."""
    rate, n = o.sample_rate, int(round(o.clip_seconds * o.sample_rate))
    rng = seeded_rng(o.seed, 20, POOLS.index(pool), index)
    where = f"{pool.split}-{pool.pool}-{index:05d}"
    k = int(rng.integers(o.events_min, o.events_max + 1))
    chosen = check_labels(rng.choice(np.array(classes), size=k, replace=False).tolist(), classes, where)
    stems = {c: np.zeros(n, dtype=np.float64) for c in classes}
    events = []
    for label in chosen:
        sounds = by_class[label]
        sound = sounds[int(rng.integers(len(sounds)))]
        level = float(rng.uniform(o.event_db_min, o.event_db_max))
        stem, info = place_event(sound, n, int(round(o.max_event_seconds * rate)), level, rate, rng)
        stems[label] = stem  # the classes of a clip are distinct
        events.append(info)
    source: dict[str, Any] = {"events": sorted(events, key=lambda e: (e["onset_s"], e["label"]))}
    names = list(classes)
    if o.background_db is not None:
        stems[BACKGROUND], source["background"] = render_background(background, n, o, rng)
        names.append(BACKGROUND)
    quantized, mix, scale = src.quantize_stems([stems[s] for s in names])
    audio = {"mix": mix, **dict(zip(names, quantized, strict=True))}
    labels = check_labels([e["label"] for e in events], classes, where)
    meta = {
        "labels": labels,
        "events": [[e["label"], e["onset_s"], e["offset_s"]] for e in source["events"]],
        "n_events": len(events),
        "overlap_s": round(overlap_samples(events, n, rate) / rate, 6),
        "level_db": round(src.level_db(mix), 2),
        "scale_db": round(float(20 * np.log10(scale)), 3),
        "source": source,
    }
    return audio, meta


# ----------------------------------------------------------------------------- build


def _clear_pool_shards(out: Path) -> None:
    """Remove tar shards a previous build left in this recipe's pool folders (nothing else is touched)."""
    for p in POOLS:
        folder = out / p.split / p.pool
        if folder.is_dir():
            for tar in folder.glob("*.tar"):
                tar.unlink()


def _software() -> dict[str, str]:
    import soundfile as sf
    import torch
    import torchaudio

    return {"numpy": np.__version__, "torch": torch.__version__, "torchaudio": torchaudio.__version__,
            "soundfile": sf.__version__, "libsndfile": sf.__libsndfile_version__}


def _licences(used: list[Sound]) -> list[dict[str, str]]:
    out = []
    packages = {s.package for s in used}
    for pkg, path, files, what in ((src.OPENSFX_PACKAGE, "src/wav/x.wav", "src/wav/*", "recordings opensfx:* (the "
                                    "collection; each entry's own licence and credit follow)"),
                                   (src.SIMUTRANS_PACKAGE, "pak64/sound/x.wav", "*", "recordings simutrans:*"),
                                   (src.TUXPAINT_PACKAGE, "stamps/x.ogg", "*", "recordings tuxpaint:* (the stamps' "
                                    "sound effects)")):
        if pkg not in packages:
            continue
        stanzas = src.copyright_licences(pkg)
        holders = next((s.copyright for s in stanzas if files in s.files), "")
        out.append({"source": pkg, "licence": src.licence_of(pkg, path), "copyright": holders, "used_for": what,
                    "terms": f"/usr/share/doc/{pkg}/copyright"})
    for s in used:
        if s.package == src.OPENSFX_PACKAGE:
            out.append({"source": s.package, "recording": s.id, "title": s.title, "licence": s.licence,
                        "credit": s.credit})
    return out


def _pool_stats(metas: list[dict[str, Any]], classes: tuple[str, ...], n: int, rate: int,
                events_max: int) -> dict[str, Any]:
    if not metas:
        return {"clips": 0}
    counts = [m["n_events"] for m in metas]
    overlap = [m["overlap_s"] for m in metas]
    sounding = [sum(e[2] - e[1] for e in m["events"]) for m in metas]
    return {
        "clips": len(metas),
        "events_per_clip": {str(k): counts.count(k) for k in range(1, events_max + 1)},
        "clips_per_class": {c: sum(c in m["labels"] for m in metas) for c in classes},
        "overlap": {
            "time_share_2plus": round(sum(overlap) / (len(metas) * n / rate), 4),  # share of all clip time
            "clips_with_overlap": sum(s > 0 for s in overlap),
            "mean_overlap_s": round(float(np.mean(overlap)), 4),
        },
        "event_seconds_mean": round(float(np.mean([e[2] - e[1] for m in metas for e in m["events"]])), 3),
        "sounding_share_mean": round(float(np.mean(sounding)) / (n / rate), 4),  # summed event time / clip time
        "level_db": {"min": min(m["level_db"] for m in metas), "max": max(m["level_db"] for m in metas),
                     "mean": round(float(np.mean([m["level_db"] for m in metas])), 2)},
        "peak_scaled_clips": int(sum(m["scale_db"] < 0 for m in metas)),
    }


def _speech_stats(o: Options) -> dict[str, Any]:
    files, skipped = speech_files(o.tuxpaint_dir, o.speech_per_language)
    available = src.tuxpaint_descriptions(o.tuxpaint_dir)
    return {
        "languages": {split: list(langs) for split, langs in SPEECH_LANGUAGES.items()},
        "files_per_language": {lang: sum(f.language == lang for split in SPLITS for f in files[split])
                               for langs in SPEECH_LANGUAGES.values() for lang in langs},
        "available_per_language": {lang: len(v) for lang, v in available.items()},
        "skipped": skipped,
    }


def build(out: str | os.PathLike, options: Options | None = None, progress: bool = True) -> DatasetInfo:
    """Build the dataset into ``out`` (``dataset.json`` + tar shards) and return its ``DatasetInfo``.

    Tar shards a previous build left in this recipe's pool folders are removed first. Raises
    ``sources.MissingSourceError`` (with the ``apt-get install -y ...`` line) before writing anything when a
    source package is missing, ``ValueError`` for impossible options.
    """
    from tqdm import tqdm

    o = options if options is not None else Options()
    validate(o)
    src.require_debian(source_paths(o))
    classes = selected_classes(o)
    cmap = class_map(o)
    check_class_map(cmap, classes)
    out = Path(out)
    rate, n = o.sample_rate, int(round(o.clip_seconds * o.sample_rate))

    sounds = load_sounds(o, classes)
    background = [s for s in sounds.values() if s.label == BACKGROUND]
    by_split = {split: {c: [sounds[r] for r in cmap[c][split]] for c in classes} for split in SPLITS}

    stems = list(classes) + ([BACKGROUND] if o.background_db is not None else [])
    info = DatasetInfo(name=NAME, sample_rate=rate, stems=stems, classes=list(classes))
    out.mkdir(parents=True, exist_ok=True)
    _clear_pool_shards(out)
    writer = DatasetWriter(out, info, clips_per_shard=o.clips_per_shard)
    metas: dict[str, list[dict[str, Any]]] = {}
    used_ids: dict[str, set[str]] = {}
    total = sum(getattr(o, p.count_option) for p in POOLS)
    with tqdm(total=total, desc=NAME, unit="clip", disable=not progress) as bar:
        for p in POOLS:
            members = ["mix"] + (stems if p.stems else [])
            metas[p.name], used_ids[p.name] = [], set()
            with writer.pool(p.split, p.pool, members) as w:
                for k in range(getattr(o, p.count_option)):
                    audio, meta = render_clip(p, k, o, classes, by_split[p.split], background)
                    w.add(f"{p.split}-{p.pool}-{k:05d}", {s: audio[s] for s in members}, meta)
                    metas[p.name].append(meta)
                    used_ids[p.name].update(e["id"] for e in meta["source"]["events"])
                    bar.update()

    everything = all_recordings(o)
    left_out = {}
    for rec_id in sorted(everything):
        if rec_id in sounds:
            continue
        reason = left_out_reason(rec_id)
        label = next((c for c in CLASS_RECORDINGS if any(rec_id in ids for ids in CLASS_RECORDINGS[c].values())),
                     None)
        left_out[rec_id] = reason or (f"class {label} not selected (option classes)" if label else
                                      "new in this package version: not yet mapped to a class")
    info.made_by = {
        "recipe": NAME, "version": VERSION, "seed": o.seed, "options": asdict(o),
        "packages": {pkg: src.package_version(pkg) for pkg in RECORDED_PACKAGES},
        "software": _software(),
    }
    info.licences = _licences(sorted(sounds.values(), key=lambda s: s.id))
    info.stats = {
        "clips": {p.name: getattr(o, p.count_option) for p in POOLS},
        "recordings": {
            c: {split: {s.id: {"seconds": round(len(s.audio) / rate, 3), "source_rate": s.source_rate,
                               "title": s.title} for s in by_split[split][c]} for split in SPLITS}
            for c in classes},
        "recording_counts": {c: {split: len(by_split[split][c]) for split in SPLITS} for c in classes},
        "recordings_used": {name: len(ids) for name, ids in used_ids.items()},
        "background": ({s.id: {"seconds": round(len(s.audio) / rate, 3), "source_rate": s.source_rate,
                               "title": s.title} for s in background} if o.background_db is not None else None),
        "left_out": left_out,
        "speech": _speech_stats(o) if SPEECH in classes else None,
        "pools": {p.name: _pool_stats(metas[p.name], classes, n, rate, o.events_max) for p in POOLS},
    }
    return writer.close()  # no build time or output path in dataset.json: it stays identical across builds
