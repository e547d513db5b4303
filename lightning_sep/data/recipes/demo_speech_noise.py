"""Recipe ``demo-speech-noise``: real and synthetic speech in environmental noise, built offline from Debian packages.

The setting is semi-supervised separation in the NES sense: the **noise** is observed (a pool of noise-only
clips), the **speech** is not (training mixtures come without their speech), plus a fully supervised pool
for an upper bound and evaluation splits that hold every stem.

Sources (see ``sources.py``; nothing is downloaded, missing packages raise an error naming the
``apt-get install -y ...`` line):

* speech: the Asterisk prompts of one real female speaker (``asterisk:allison``), 14 pocketsphinx test
  recordings of real male speakers, and espeak-ng voices (``espeak-ng:<voice>``) reading sentences made
  up from a fixed grammar (every sentence is used once in a build);
* noise: the OpenSFX sound catalogue of OpenTTD and Simutrans' pak64 sounds (vehicles, machines, horns,
  animals, crowds, wind, water, crashes).

Sample rate: 8 kHz by default. The Asterisk prompts, the only large real-speech source, are 8 kHz
telephone recordings with no content above 4 kHz; at a higher rate the real speech would have an empty
upper band that the synthetic voices, the pocketsphinx speech and the noise do not have, and a model
could tell the sources apart by bandwidth. 8 kHz also keeps the demo fast. Every source is resampled to
``sample_rate`` with ``torchaudio.functional.resample``.

Pools (clip counts are options; defaults in brackets) and their stems:

* ``train/mixtures`` [600] ``mix`` only: speech + noise, speech never stored;
* ``train/observed`` [600] ``noise`` only, drawn exactly as the noise inside the mixtures;
* ``train/isolated`` [600] ``mix``, ``speech``, ``noise``: the supervised upper bound's pool;
* ``valid/eval`` [100] and ``test/eval`` [200]: ``mix``, ``speech``, ``noise``.

Each stem is quantized to int16 first and ``mix`` is their exact int16 sum (clips are scaled down to peak
at -1 dBFS at most, so nothing clips); ``mix == speech + noise`` holds in the stored data.

No audio is shared between splits, nor between the three training pools:

* Speech is split by recording: every prompt / utterance goes to exactly one pool (two Asterisk prompts
  that are copies of others are left out, ``SPEECH_SHARED_AUDIO``). A clip holds one voice:
  the voice's recordings of that pool, silence-trimmed (inner pauses shortened to
  ``max_silence_seconds``) and strung together with ``pause_seconds_min..max`` pauses, cut into clips
  (long prompts span several consecutive clips of the same pool; a last piece less than half full is
  dropped). An espeak-ng clip is one synthesized passage of one or two sentences (random speed 140-185
  words/min and pitch 25-75 per passage), trimmed like the real speech, then cropped or padded to the clip.
* Voices: ``asterisk:allison`` and the ``SEEN_ESPEAK_VOICES`` appear in training and in valid/test (new
  recordings); the ``HELDOUT_ESPEAK_VOICES`` and all pocketsphinx speakers appear only in valid/test
  (``heldout_fraction`` of their clips), so test scores can be split into seen and new voices
  (``voice_seen_in_train`` in each clip's metadata). At least ``min_synthetic_fraction`` of the speech
  clips of each pool (of each seen/held-out half in valid/test) are synthetic; real speech fills the rest
  as far as it goes (unused real speech is left out, never repeated).
* Noise: the semi-supervised assumption needs the observed pool to follow the distribution of the noise
  inside the mixtures, so EACH noise recording (silence-trimmed) is cut into five disjoint spans, one per
  pool, in the proportions ``NOISE_FRACTIONS``, in an order drawn per recording (so no pool always gets the
  onsets). The sources are short (most are 1-5 s; about 190 s of noise in all), so spans are short too,
  about 0.2-1 s. A clip's noise comes from one recording's span in that pool (recording drawn uniformly):
  a random crop when the span is at least a clip long, otherwise the span is looped as a chain of random
  excerpts of it (each half to all of the span) joined by ``crossfade_seconds`` equal-power crossfades, so
  the loop has no fixed period. Recordings shorter than ``short_noise_seconds`` are single events (a
  splat, a horn toot) that cannot be meaningfully cut: each goes whole to one pool (dealt out in the
  same proportions, so ``mixtures`` and ``observed`` get as many) and a clip repeats it at random
  intervals (0.1-1 s gaps, +-3 dB). Skipped: placeholder entries without audio, recordings shorter than
  ``min_noise_seconds`` or quieter than ``min_noise_level_db`` after trimming, and recordings that share
  audio with another one (``NOISE_SHARED_AUDIO``, dropped id -> kept id; found once by normalized
  cross-correlation of 0.25 s windows >= 0.89 across all pairs, too slow to run in every build).

Levels: per clip the SNR (speech to noise energy over the whole clip) is uniform in
``[snr_db_min, snr_db_max]`` and the mixture level uniform in ``[level_db_min, level_db_max]`` dBFS RMS.
Observed clips draw SNR and level the same way and keep the noise level the noise would have had in such
a mixture, so noise levels match between ``mixtures`` and ``observed``.

Determinism: everything random comes from numpy Generators seeded by ``(seed, purpose)``; files are read
in sorted order; two builds with one seed (same package and library versions) give byte-identical shards.

Per-clip metadata (``<key>.json``): ``source.speech`` (recording ids, voice, which part of the recording
in seconds of the silence-trimmed recording, and where in the clip), ``source.noise`` (recording id,
title, licence, ``span_s``: the pool's span of the recording in seconds from its start, and how it was
used: ``crop`` with ``used_s``, ``excerpts`` or ``events``), ``voice``, ``voice_seen_in_train``,
``snr_db`` (as stored, after int16 rounding), ``snr_db_target``, ``level_db``. Observed clips have only
``source.noise`` and ``level_db``.
"""
from __future__ import annotations

import dataclasses
import functools
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..shards import DatasetInfo, DatasetWriter, to_int16
from . import sources as src

NAME = "demo-speech-noise"
VERSION = 2  # 2: 186 seen espeak-ng voices (accents x variants) instead of 8, pitch 25-75
DEBIAN_PACKAGES = [src.ASTERISK_PACKAGE, src.OPENSFX_PACKAGE, src.SIMUTRANS_PACKAGE, src.POCKETSPHINX_PACKAGE,
                   src.ESPEAK_PACKAGE]
# Packages whose versions are recorded because they shape the audio (espeak-ng's voices live in -data).
RECORDED_PACKAGES = DEBIAN_PACKAGES + ["espeak-ng-data", "libespeak-ng1"]

# Training speech needs many voices: with 8 espeak-ng voices the supervised separator scored 1.0 dB lower on
# new voices (2.7 dB on the real male ones). Seen voices are every pairing of these accents and variants (the
# variants that change the sound: "+andy" is the default voice; robot, whisper and croak voices are left out);
# the held-out voices use accents and variants that appear nowhere here.
SEEN_ESPEAK_ACCENTS = ("en", "en-us", "en-gb-x-rp", "en-gb-scotland", "en-029", "en-gb-x-gbclan")
SEEN_ESPEAK_VARIANTS = ("m1", "m2", "m3", "m5", "m7", "m8", "Alex", "adam", "benjamin", "caleb", "david", "ed",
                        "edward", "Gene", "grandpa", "john", "max", "Michael", "Mike", "paul", "rob", "robert",
                        "travis", "victor", "zac", "norbert", "quincy", "f1", "f2", "f3", "f4")
SEEN_ESPEAK_VOICES = tuple(f"{a}+{v}" for a in SEEN_ESPEAK_ACCENTS for v in SEEN_ESPEAK_VARIANTS)
HELDOUT_ESPEAK_VOICES = ("en-us-nyc+m4", "en-gb-x-gbcwmd+m6", "en-us+f5", "en-gb-x-rp+anika")
ASTERISK_VOICE = "asterisk:allison"

# Speech recordings that are copies of another one (dropped id -> kept id): the same take, re-exported.
# Found by normalized cross-correlation of 0.3 s windows at 8 kHz over all prompt pairs (1.0 in every
# window; no other pair reached 0.97 in more than 3 windows).
SPEECH_SHARED_AUDIO = {
    "asterisk:privacy-thankyou": "asterisk:auth-thankyou",
    "asterisk:queue-seconds": "asterisk:seconds",
}

# Noise recordings that share audio with another one (dropped id -> kept id).
NOISE_SHARED_AUDIO = {
    "opensfx:osfx_04": "opensfx:osfx_05",  # both from "steam train horn 01.wav"
    "opensfx:osfx_70": "opensfx:osfx_09",  # Toyland jet = "Passenger jet departs 2.wav" + effects
    "opensfx:osfx_53": "opensfx:osfx_15",  # Toyland road vehicle breakdown contains the breakdown
    "opensfx:osfx_58": "opensfx:osfx_16",  # Toyland train breakdown contains the breakdown
    "opensfx:osfx_26": "opensfx:osfx_25",  # truck start, + horn
    "opensfx:osfx_60": "opensfx:osfx_25",  # truck start, + boing
    "opensfx:osfx_62": "opensfx:osfx_25",  # truck start, + bike horn
    "opensfx:osfx_64": "opensfx:osfx_27",  # modern bus start, + boink
    "opensfx:osfx_63": "opensfx:osfx_28",  # old bus start, + squeaky toy
    "opensfx:osfx_57": "opensfx:osfx_52",  # "Heavy wind" is "Wind"
    "opensfx:osfx_55": "simutrans:tree-cutting",  # both from the same tree-cutting recording
}


@dataclass(frozen=True)
class PoolSpec:
    split: str
    pool: str
    members: tuple[str, ...]
    count_option: str  # the Options field with its clip count
    noise_fraction: float  # share of every noise recording's time span
    seen_real_fraction: float  # share of the seen real voice's recordings (by duration)
    heldout_real_fraction: float  # share of the held-out real voices' recordings (by duration)

    @property
    def name(self) -> str:
        return f"{self.split}/{self.pool}"

    @property
    def has_speech(self) -> bool:
        return "mix" in self.members

    @property
    def is_eval(self) -> bool:
        return self.split != "train"


ALL_STEMS = ("mix", "speech", "noise")
POOLS = (
    PoolSpec("train", "mixtures", ("mix",), "mixtures_clips", 0.22, 0.35, 0.0),
    PoolSpec("train", "observed", ("noise",), "observed_clips", 0.22, 0.0, 0.0),
    PoolSpec("train", "isolated", ALL_STEMS, "isolated_clips", 0.22, 0.35, 0.0),
    PoolSpec("valid", "eval", ALL_STEMS, "valid_clips", 0.14, 0.10, 0.35),
    PoolSpec("test", "eval", ALL_STEMS, "test_clips", 0.20, 0.20, 0.65),
)
NOISE_FRACTIONS = {p.name: p.noise_fraction for p in POOLS}
PEAK = src.PEAK  # stored clips peak at -1 dBFS at most


@dataclass
class Options:
    """Settings of ``demo-speech-noise`` (``key=value`` on the command line; all recorded in dataset.json).

    The source paths default to where the Debian packages install the files; change them only to read a
    copy elsewhere (tests point one at a missing folder to check the error message).
    """

    seed: int = 0  # seeds every random choice (non-negative)
    sample_rate: int = 8000  # Hz; 8 kHz because the Asterisk speech is 8 kHz telephone audio
    clip_seconds: float = 3.0  # length of every clip
    snr_db_min: float = -5.0  # speech-to-noise ratio per clip, uniform in [min, max] dB
    snr_db_max: float = 5.0  # upper end of the per-clip SNR range, dB
    level_db_min: float = -30.0  # mixture RMS level per clip, uniform in [min, max] dBFS
    level_db_max: float = -18.0  # upper end of the mixture level range, dBFS RMS
    mixtures_clips: int = 600  # train/mixtures: mix only
    observed_clips: int = 600  # train/observed: noise only
    isolated_clips: int = 600  # train/isolated: mix, speech, noise
    valid_clips: int = 100  # valid/eval
    test_clips: int = 200  # test/eval
    heldout_fraction: float = 0.5  # share of valid/test clips spoken by voices never heard in training
    min_synthetic_fraction: float = 0.5  # at least this share of a pool's speech clips is espeak-ng speech
    pause_seconds_min: float = 0.15  # pause between utterances strung into one clip
    pause_seconds_max: float = 0.6  # longest such pause
    max_silence_seconds: float = 0.4  # silences inside a speech recording are shortened to this
    min_noise_seconds: float = 0.25  # noise recordings shorter than this (after trimming) are skipped
    min_noise_level_db: float = -45.0  # noise recordings quieter than this (dBFS RMS) are skipped
    short_noise_seconds: float = 1.0  # shorter noise recordings are single events, kept whole in one pool
    crossfade_seconds: float = 0.05  # crossfade between the excerpts that fill a clip from a short span
    clips_per_shard: int = 100  # clips per tar shard
    asterisk_dir: str = str(src.ASTERISK_DIR)  # asterisk-core-sounds-en-wav prompts
    pocketsphinx_dir: str = str(src.POCKETSPHINX_DIR)  # pocketsphinx-testdata recordings
    opensfx_cat: str = str(src.OPENSFX_CAT)  # openttd-opensfx sound catalogue
    simutrans_dir: str = str(src.SIMUTRANS_SOUND_DIR)  # simutrans-pak64 sounds
    espeak_ng: str = str(src.ESPEAK_NG)  # the espeak-ng program


def validate(o: Options) -> None:
    """Raise ``ValueError`` naming the option when a setting cannot work."""
    problems = []
    if not isinstance(o.seed, int) or o.seed < 0:
        problems.append(f"seed={o.seed!r} must be a non-negative integer")
    if not 4000 <= o.sample_rate <= 48000:
        problems.append(f"sample_rate={o.sample_rate} must lie in 4000..48000")
    if not 0.25 <= o.clip_seconds <= 60:
        problems.append(f"clip_seconds={o.clip_seconds} must lie in 0.25..60")
    for lo, hi in (("snr_db_min", "snr_db_max"), ("level_db_min", "level_db_max"),
                   ("pause_seconds_min", "pause_seconds_max")):
        if getattr(o, lo) > getattr(o, hi):
            problems.append(f"{lo}={getattr(o, lo)} exceeds {hi}={getattr(o, hi)}")
    if o.level_db_max > -6:
        problems.append(f"level_db_max={o.level_db_max} leaves no headroom; use -6 dBFS or less")
    for p in POOLS:
        if getattr(o, p.count_option) < 0:
            problems.append(f"{p.count_option}={getattr(o, p.count_option)} must be >= 0")
    for name in ("heldout_fraction", "min_synthetic_fraction"):
        if not 0 <= getattr(o, name) <= 1:
            problems.append(f"{name}={getattr(o, name)} must lie in 0..1")
    if o.pause_seconds_min < 0 or o.max_silence_seconds < 0 or o.crossfade_seconds < 0:
        problems.append("pauses, silences and crossfades must be >= 0 seconds")
    if o.clips_per_shard < 1:
        problems.append(f"clips_per_shard={o.clips_per_shard} must be >= 1")
    if problems:
        raise ValueError(f"{NAME}: " + "; ".join(problems))


def source_paths(o: Options) -> dict[str, list[str]]:
    """What the recipe reads from each Debian package (for ``require_debian``)."""
    return {
        src.ASTERISK_PACKAGE: [o.asterisk_dir],
        src.OPENSFX_PACKAGE: [o.opensfx_cat],
        src.SIMUTRANS_PACKAGE: [o.simutrans_dir],
        src.POCKETSPHINX_PACKAGE: [o.pocketsphinx_dir],
        src.ESPEAK_PACKAGE: [o.espeak_ng],
    }


# ----------------------------------------------------------------------------- sources at the dataset rate


@dataclass(eq=False)
class Utterance:
    id: str
    voice: str
    audio: np.ndarray  # silence-trimmed, at the dataset rate


@dataclass(eq=False)
class NoiseRecording:
    id: str
    title: str
    licence: str
    credit: str
    package: str
    audio: np.ndarray  # at the dataset rate, leading/trailing silence trimmed
    offset: int  # samples trimmed from the start (span times are given in the untrimmed recording)
    rms_db: float


def _rms_db(x: np.ndarray) -> float:
    return float(10 * np.log10(np.mean(np.square(x, dtype=np.float64)) + 1e-20)) if len(x) else -200.0


def load_speech(o: Options) -> dict[str, list[Utterance]]:
    """Real speech by voice id (recordings sorted by id), trimmed and at the dataset rate."""
    return {v: list(us) for v, us in _load_speech(o.asterisk_dir, o.pocketsphinx_dir, o.sample_rate,
                                                   o.max_silence_seconds)}


@functools.lru_cache(maxsize=2)  # sources are read-only: reuse them across builds in one process
def _load_speech(asterisk_dir: str, pocketsphinx_dir: str, rate: int, max_gap: float):
    voices: dict[str, list[Utterance]] = {}
    recordings = list(src.asterisk_recordings(asterisk_dir)) + list(src.pocketsphinx_recordings(pocketsphinx_dir))
    for rec in recordings:
        if rec.id in SPEECH_SHARED_AUDIO:
            continue
        voice = ASTERISK_VOICE if rec.package == src.ASTERISK_PACKAGE else f"pocketsphinx:{rec.speaker}"
        audio = src.trim_silence(src.resample(rec.audio, rec.sample_rate, rate), rate, max_gap_s=max_gap)
        audio.setflags(write=False)
        if len(audio) >= 0.2 * rate:
            voices.setdefault(voice, []).append(Utterance(rec.id, voice, audio))
    return tuple((v, tuple(sorted(us, key=lambda u: u.id))) for v, us in sorted(voices.items()))


def load_noise(o: Options) -> tuple[list[NoiseRecording], dict[str, str]]:
    """Usable noise recordings (sorted by id) and the skipped ones with the reason."""
    kept, skipped = [], {}
    for rec in _noise_at_rate(o.opensfx_cat, o.simutrans_dir, o.sample_rate):
        if rec.id in NOISE_SHARED_AUDIO:
            skipped[rec.id] = f"shares audio with {NOISE_SHARED_AUDIO[rec.id]}"
            continue
        x = rec.audio
        start, stop = _active_range(x, o.sample_rate)
        x = x[start:stop]
        if len(x) < o.min_noise_seconds * o.sample_rate:
            skipped[rec.id] = f"shorter than {o.min_noise_seconds} s after trimming silence"
            continue
        level = _rms_db(x)
        if level < o.min_noise_level_db:
            skipped[rec.id] = f"quieter than {o.min_noise_level_db} dBFS"
            continue
        kept.append(NoiseRecording(rec.id, rec.title, rec.licence, rec.credit, rec.package, x, start, level))
    return kept, skipped


@functools.lru_cache(maxsize=2)
def _noise_at_rate(opensfx_cat: str, simutrans_dir: str, rate: int) -> tuple[src.Recording, ...]:
    """Every noise recording (sorted by id) at ``rate``, DC removed."""
    out = []
    recordings = list(src.opensfx_recordings(opensfx_cat)) + list(src.simutrans_recordings(simutrans_dir))
    for rec in sorted(recordings, key=lambda r: r.id):
        x = src.resample(rec.audio, rec.sample_rate, rate).astype(np.float64)
        x = (x - x.mean()).astype(np.float32) if len(x) else x.astype(np.float32)
        x.setflags(write=False)
        out.append(dataclasses.replace(rec, audio=x, sample_rate=rate))
    return tuple(out)


def _active_range(x: np.ndarray, rate: int, relative_db: float = -50.0, frame_s: float = 0.01) -> tuple[int, int]:
    if len(x) == 0:
        return 0, 0
    levels = src.frame_levels_db(x, rate, frame_s)
    active = np.flatnonzero(levels > max(levels.max() + relative_db, -80.0))
    if active.size == 0:  # digital silence
        return 0, 0
    n = max(1, int(round(frame_s * rate)))
    return int(active[0] * n), int(min(len(x), (active[-1] + 1) * n))


# ----------------------------------------------------------------------------- planning


@dataclass
class NoiseSpan:
    rec: int  # index into the noise recordings
    start: int  # samples, in the trimmed recording
    stop: int
    event: bool  # a short recording kept whole: repeated as events


@dataclass
class SpeechPart:
    utt: Utterance
    start: int  # samples within the utterance
    stop: int
    at: int  # position in the clip


@dataclass
class EspeakJob:
    index: int
    voice: str
    text: str
    speed: int
    pitch: int
    audio: np.ndarray | None = None


@dataclass
class ClipPlan:
    voice: str | None = None
    seen: bool | None = None
    parts: list[SpeechPart] = field(default_factory=list)
    job: EspeakJob | None = None


def _rng(seed: int, *purpose: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([seed, *purpose]))


def noise_layout(noise: list[NoiseRecording], o: Options, rng: np.random.Generator) -> dict[str, list[NoiseSpan]]:
    """Cut every recording into disjoint spans, one per pool (order drawn per recording); short ones whole.

    Short recordings (single events) are dealt out to the pools in numbers proportional to the pools'
    shares (largest remainders), so ``mixtures`` and ``observed`` get as many events each.
    """
    names = [p.name for p in POOLS]
    weights = np.array([p.noise_fraction for p in POOLS])
    weights = weights / weights.sum()
    layout: dict[str, list[NoiseSpan]] = {name: [] for name in names}
    short = [i for i, rec in enumerate(noise) if len(rec.audio) < o.short_noise_seconds * o.sample_rate]
    quota = np.floor(weights * len(short)).astype(int)
    for j in np.argsort(-(weights * len(short) - quota), kind="stable")[: len(short) - quota.sum()]:
        quota[j] += 1
    slots = [names[j] for j in range(len(names)) for _ in range(quota[j])]
    for slot, k in zip(slots, rng.permutation(len(short)), strict=True):
        layout[slot].append(NoiseSpan(short[k], 0, len(noise[short[k]].audio), True))
    for i, rec in enumerate(noise):
        if i in short:
            continue
        n = len(rec.audio)
        order = rng.permutation(len(names))
        bounds = np.round(np.concatenate([[0], np.cumsum(weights[order])]) * n).astype(int)
        bounds[-1] = n
        for k, j in enumerate(order):
            layout[names[j]].append(NoiseSpan(i, int(bounds[k]), int(bounds[k + 1]), False))
    for spans in layout.values():
        spans.sort(key=lambda s: s.rec)
    return layout


def allocate_speech(speech: dict[str, list[Utterance]],
                    rng: np.random.Generator) -> dict[str, dict[str, list[Utterance]]]:
    """Give every real recording to one pool: shuffled, then cut by cumulative duration in the pools' shares."""
    out: dict[str, dict[str, list[Utterance]]] = {p.name: {} for p in POOLS}
    for voice, utts in speech.items():
        seen = voice == ASTERISK_VOICE
        pools = [p for p in POOLS if (p.seen_real_fraction if seen else p.heldout_real_fraction) > 0]
        shares = np.array([p.seen_real_fraction if seen else p.heldout_real_fraction for p in pools])
        edges = np.cumsum(shares / shares.sum())
        order = rng.permutation(len(utts))
        durations = np.array([len(utts[k].audio) for k in order], dtype=np.float64)
        mid = (np.cumsum(durations) - durations / 2) / durations.sum()
        for k, m in zip(order, mid, strict=True):
            pool = pools[min(int(np.searchsorted(edges, m, side="right")), len(pools) - 1)]
            out[pool.name].setdefault(voice, []).append(utts[k])
    for per_voice in out.values():
        for utts in per_voice.values():
            utts.sort(key=lambda u: u.id)
    return out


def pack_clips(utts: list[Utterance], n: int, o: Options, rng: np.random.Generator) -> list[list[SpeechPart]]:
    """String one voice's recordings (in a random order) into clips of ``n`` samples."""
    rate = o.sample_rate
    clips: list[list[SpeechPart]] = []
    parts: list[SpeechPart] = []
    pos = int(rng.uniform(0, 0.25) * rate)
    for k in rng.permutation(len(utts)):
        u = utts[k]
        start = 0
        while start < len(u.audio):
            take = min(n - pos, len(u.audio) - start)
            parts.append(SpeechPart(u, start, start + take, pos))
            start, pos = start + take, pos + take
            if pos >= n:
                clips.append(parts)
                parts, pos = [], 0
        pause = int(rng.uniform(o.pause_seconds_min, o.pause_seconds_max) * rate)
        if parts and pos + pause >= n:
            clips.append(parts)
            parts, pos = [], int(rng.uniform(0, 0.25) * rate)
        elif parts:
            pos += pause
    if parts and sum(p.stop - p.start for p in parts) >= n / 2:
        clips.append(parts)
    return clips


# A small grammar for the synthetic voices' sentences; a build never uses a sentence twice.
_SUBJECTS = ("the old farmer", "my neighbour", "a young pilot", "the station master", "our teacher", "the tall woman",
             "a tired driver", "the little boy", "her brother", "the new doctor", "a quiet student", "the baker",
             "his grandmother", "the captain", "a clever girl", "the night porter", "my uncle", "the shopkeeper",
             "a friendly nurse", "the postman", "our guide", "the young couple", "the referee", "a painter")
_VERBS = (("painted", "paint"), ("carried", "carry"), ("found", "find"), ("repaired", "repair"), ("opened", "open"),
          ("washed", "wash"), ("sold", "sell"), ("counted", "count"), ("moved", "move"), ("cleaned", "clean"),
          ("ordered", "order"), ("borrowed", "borrow"), ("lifted", "lift"), ("dropped", "drop"),
          ("checked", "check"), ("wrapped", "wrap"), ("described", "describe"), ("noticed", "notice"),
          ("packed", "pack"), ("returned", "return"))
_OBJECTS = ("the blue fence", "a heavy box", "the kitchen window", "two wooden chairs", "the broken clock",
            "a basket of apples", "the garden gate", "an old map", "the red bicycle", "a stack of letters",
            "the brass lamp", "three glass bottles", "the front door", "a warm blanket", "the silver key",
            "the long ladder", "a bag of flour", "the green umbrella", "a paper kite", "the school bell",
            "a pair of boots", "the coffee pot", "a small boat", "the fishing net")
_TAILS = ("before lunch", "near the harbour", "after the storm", "on Sunday morning", "without a word",
          "at half past seven", "in the garden", "by the river", "late last night", "during the holidays",
          "behind the station", "for the third time", "in the pouring rain", "with great care",
          "next to the bakery", "under the bridge", "at the market", "before the train left",
          "on the top shelf", "as the sun went down")
_ADJECTIVES = ("cold", "bright", "narrow", "noisy", "empty", "crowded", "warm", "dusty", "quiet", "muddy", "steep",
               "windy", "green", "golden", "wet", "smoky")
_PLACES = ("road to the village", "morning train", "old market hall", "harbour wall", "mountain path",
           "waiting room", "back garden", "river bank", "town square", "railway bridge", "school yard",
           "farm kitchen")
_WEEKDAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")


class SentenceMaker:
    """Deterministic, never-repeating sentences from the grammar above."""

    def __init__(self, rng: np.random.Generator):
        self.rng, self.used = rng, set()

    def _pick(self, options):
        return options[int(self.rng.integers(len(options)))]

    def _draw(self) -> str:
        kind = int(self.rng.integers(6))
        if kind == 0:
            s = f"{self._pick(_SUBJECTS)} {self._pick(_VERBS)[0]} {self._pick(_OBJECTS)} {self._pick(_TAILS)}."
        elif kind == 1:
            s = f"please {self._pick(_VERBS)[1]} {self._pick(_OBJECTS)} {self._pick(_TAILS)}."
        elif kind == 2:
            s = f"did {self._pick(_SUBJECTS)} {self._pick(_VERBS)[1]} {self._pick(_OBJECTS)} {self._pick(_TAILS)}?"
        elif kind == 3:
            a, b = self._pick(_ADJECTIVES), self._pick(_ADJECTIVES)
            s = f"the {self._pick(_PLACES)} was {a} and {b} {self._pick(_TAILS)}."
        elif kind == 4:
            digits = " ".join(str(int(d)) for d in self.rng.integers(0, 10, size=int(self.rng.integers(4, 8))))
            s = f"the number for {self._pick(_SUBJECTS)} is {digits}."
        else:
            s = (f"{self._pick(_SUBJECTS)} will arrive on {self._pick(_WEEKDAYS)} at "
                 f"{int(self.rng.integers(1, 13))} {self._pick(('fifteen', 'thirty', 'forty five', 'o clock'))}.")
        return s[0].upper() + s[1:]

    def sentence(self) -> str:
        while True:
            s = self._draw()
            if s not in self.used:
                self.used.add(s)
                return s

    def passage(self, words: int) -> str:
        out: list[str] = []
        while sum(len(s.split()) for s in out) < words:
            out.append(self.sentence())
        return " ".join(out)


def plan_speech(spec: PoolSpec, count: int, real: dict[str, list[Utterance]], o: Options, n: int,
                rng: np.random.Generator, texts: SentenceMaker, jobs: list[EspeakJob]) -> list[ClipPlan]:
    """The speech of each clip of a pool: real clips as far as they go, espeak-ng for the rest, shuffled."""
    groups = []  # (clips wanted, real voices, espeak voices, seen)
    if spec.is_eval:
        held = int(round(count * o.heldout_fraction))
        groups.append((count - held, [v for v in real if v == ASTERISK_VOICE], SEEN_ESPEAK_VOICES, True))
        groups.append((held, [v for v in real if v != ASTERISK_VOICE], HELDOUT_ESPEAK_VOICES, False))
    else:
        groups.append((count, [v for v in real if v == ASTERISK_VOICE], SEEN_ESPEAK_VOICES, True))
    plans: list[ClipPlan] = []
    for wanted, real_voices, espeak_voices, seen in groups:
        candidates = [ClipPlan(voice, seen, parts) for voice in sorted(real_voices)
                      for parts in pack_clips(real[voice], n, o, rng)]
        room = wanted - int(np.ceil(wanted * o.min_synthetic_fraction))
        if len(candidates) > room:
            pick = np.sort(rng.choice(len(candidates), size=room, replace=False))
            candidates = [candidates[k] for k in pick]
        plans += candidates
        voices = list(espeak_voices)
        for k in range(wanted - len(candidates)):
            if k % len(voices) == 0:
                rng.shuffle(voices)
            voice = voices[k % len(voices)]
            speed = int(rng.integers(140, 186))
            job = EspeakJob(len(jobs), voice, texts.passage(int(np.ceil(o.clip_seconds * speed / 60 * 1.15))),
                            speed, int(rng.integers(25, 76)))
            jobs.append(job)
            plans.append(ClipPlan(f"espeak-ng:{voice}", seen, job=job))
    order = rng.permutation(len(plans))
    return [plans[k] for k in order]


def synthesize(jobs: list[EspeakJob], o: Options, progress: bool, workers: int | None = None) -> None:
    """Run espeak-ng for every job (in parallel processes), resampled and silence-trimmed into ``job.audio``."""
    from tqdm import tqdm

    def run(job: EspeakJob) -> None:
        audio, rate = src.espeak_ng(job.text, job.voice, job.speed, job.pitch, binary=o.espeak_ng)
        audio = src.resample(audio, rate, o.sample_rate)
        job.audio = src.trim_silence(audio, o.sample_rate, max_gap_s=o.max_silence_seconds)
        if len(job.audio) == 0:
            raise RuntimeError(f"espeak-ng -v {job.voice} produced silence for {job.text!r}")

    workers = workers or max(1, min(8, os.cpu_count() or 1))
    with ThreadPoolExecutor(max_workers=workers) as pool:
        for _ in tqdm(pool.map(run, jobs), total=len(jobs), desc="espeak-ng", unit="utt", disable=not progress,
                      leave=False):
            pass


# ----------------------------------------------------------------------------- rendering


def excerpt_fill(segment: np.ndarray, n: int, fade: int, rng: np.random.Generator) -> tuple[np.ndarray, int]:
    """``n`` samples made of random excerpts of ``segment`` (each half to all of it) joined by equal-power
    crossfades of ``fade`` samples: a loop without a fixed period. Returns the audio and the excerpt count."""
    length = len(segment)
    fade = min(fade, length // 4)
    t = (np.arange(fade) + 0.5) / max(fade, 1)
    fade_in, fade_out = np.sin(0.5 * np.pi * t), np.cos(0.5 * np.pi * t)
    out = np.zeros(n + 2 * length + fade, dtype=np.float64)
    pos, pieces = 0, 0
    while pos < n + fade:
        m = int(rng.integers(max(length // 2, 2 * fade + 1, 1), length + 1))
        off = int(rng.integers(0, length - m + 1))
        piece = segment[off: off + m].copy()
        if fade > 0:
            piece[:fade] *= fade_in
            piece[-fade:] *= fade_out
        out[pos: pos + m] += piece
        pos += m - fade
        pieces += 1
    return out[fade: fade + n], pieces


def event_train(event: np.ndarray, n: int, rate: int, rng: np.random.Generator) -> tuple[np.ndarray, list[float]]:
    """Repeat a short event at random 0.1-1 s gaps with +-3 dB gain changes; returns audio and onsets (s)."""
    out = np.zeros(n, dtype=np.float64)
    length = len(event)
    pos = int(rng.integers(-length + 1, int(rate * 1.0)))
    pos = min(pos, max(0, n - length))
    onsets = []
    while pos < n:
        gain = 10 ** (rng.uniform(-3, 3) / 20)
        a, b = max(pos, 0), min(pos + length, n)
        out[a:b] += gain * event[a - pos: b - pos]
        onsets.append(round(pos / rate, 4))
        pos += length + int(rng.uniform(0.1, 1.0) * rate)
    return out, onsets


def render_noise(spans: list[NoiseSpan], noise: list[NoiseRecording], n: int, o: Options,
                 rng: np.random.Generator) -> tuple[np.ndarray, dict[str, Any]]:
    """One clip of noise from a random recording's span in this pool (see the module docstring)."""
    rate = o.sample_rate
    for _attempt in range(20):  # a crop can fall into a recording's quiet stretch: draw again
        span = spans[int(rng.integers(len(spans)))]
        rec = noise[span.rec]
        seg = rec.audio[span.start: span.stop].astype(np.float64)
        info: dict[str, Any] = {
            "id": rec.id, "title": rec.title, "licence": rec.licence,
            "span_s": [round((rec.offset + span.start) / rate, 4), round((rec.offset + span.stop) / rate, 4)],
        }
        if span.event:
            audio, onsets = event_train(seg, n, rate, rng)
            info.update(mode="events", onsets_s=onsets)
        elif len(seg) >= n:
            off = int(rng.integers(0, len(seg) - n + 1))
            audio = seg[off: off + n]
            info.update(mode="crop", used_s=[round((rec.offset + span.start + off) / rate, 4),
                                             round((rec.offset + span.start + off + n) / rate, 4)])
        else:
            audio, pieces = excerpt_fill(seg, n, int(round(o.crossfade_seconds * rate)), rng)
            info.update(mode="excerpts", excerpts=pieces)
        if _rms_db(audio) >= rec.rms_db - 25:
            return audio, info
    return audio, info


def render_speech(plan: ClipPlan, n: int, rate: int, rng: np.random.Generator) -> tuple[np.ndarray, list[dict]]:
    out = np.zeros(n, dtype=np.float64)
    parts = []
    if plan.job is not None:
        audio = plan.job.audio
        if len(audio) <= n:
            at, take = int(rng.integers(0, n - len(audio) + 1)), len(audio)
        else:
            at = int(rng.uniform(0, 0.25) * rate)
            take = n - at
        out[at: at + take] = audio[:take]
        parts.append({"id": f"espeak-ng:{plan.job.index:06d}", "voice": plan.voice, "from_s": 0.0,
                      "to_s": round(take / rate, 4), "at_s": round(at / rate, 4)})
    for p in plan.parts:
        out[p.at: p.at + p.stop - p.start] = p.utt.audio[p.start: p.stop]
        parts.append({"id": p.utt.id, "voice": p.utt.voice, "from_s": round(p.start / rate, 4),
                      "to_s": round(p.stop / rate, 4), "at_s": round(p.at / rate, 4)})
    return out, parts


def _scale_to(x: np.ndarray, target_db: float) -> np.ndarray:
    return x * 10 ** ((target_db - _rms_db(x)) / 20)


def _noise_level_db(level_db: float, snr_db: float) -> float:
    """Noise RMS level of a mixture at ``level_db`` with speech-to-noise ratio ``snr_db``."""
    return level_db - 10 * np.log10(1 + 10 ** (snr_db / 10))


def mix_clip(speech: np.ndarray, noise: np.ndarray, snr_db: float, level_db: float) -> tuple[np.ndarray, ...]:
    """int16 speech, noise and their exact sum, at the given SNR and mixture level (peak <= -1 dBFS)."""
    noise_db = _noise_level_db(level_db, snr_db)
    return src.quantize_pair(_scale_to(speech, noise_db + snr_db), _scale_to(noise, noise_db))


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


def _licences(used_noise: list[NoiseRecording], voices: set[str]) -> list[dict[str, str]]:
    out = []

    def package(pkg: str, used_for: str, path: str, files: str) -> None:
        stanzas = src.copyright_licences(pkg)
        holders = next((s.copyright for s in stanzas if files in s.files), "")
        out.append({"source": pkg, "licence": src.licence_of(pkg, path), "copyright": holders,
                    "used_for": used_for, "terms": f"/usr/share/doc/{pkg}/copyright"})

    if ASTERISK_VOICE in voices:
        package(src.ASTERISK_PACKAGE, f"speech, voice {ASTERISK_VOICE}", "x.wav", "*")
    if any(v.startswith("pocketsphinx:") for v in voices):
        package(src.POCKETSPHINX_PACKAGE, "speech, voices pocketsphinx:*", "test/data/x.wav", "*")
    if any(v.startswith("espeak-ng:") for v in voices):
        out.append({"source": src.ESPEAK_PACKAGE, "licence": src.licence_of(src.ESPEAK_PACKAGE),
                    "copyright": "", "used_for": "speech, voices espeak-ng:* (synthesized from sentences made "
                    "up by this recipe; the licence is the synthesizer's)",
                    "terms": f"/usr/share/doc/{src.ESPEAK_PACKAGE}/copyright"})
    if any(r.package == src.SIMUTRANS_PACKAGE for r in used_noise):
        package(src.SIMUTRANS_PACKAGE, "noise, recordings simutrans:*", "pak64/sound/x.wav", "*")
    if any(r.package == src.OPENSFX_PACKAGE for r in used_noise):
        package(src.OPENSFX_PACKAGE, "noise, recordings opensfx:* (the collection; each entry's own licence "
                "and credit follow)", "src/wav/x.wav", "src/wav/*")
        for r in used_noise:
            if r.package == src.OPENSFX_PACKAGE:
                out.append({"source": src.OPENSFX_PACKAGE, "recording": r.id, "title": r.title,
                            "licence": r.licence, "credit": r.credit})
    return out


def build(out: str | os.PathLike, options: Options | None = None, progress: bool = True,
          workers: int | None = None) -> DatasetInfo:
    """Build the dataset into ``out`` (``dataset.json`` + tar shards) and return its ``DatasetInfo``.

    ``workers`` is the number of parallel espeak-ng processes (default: CPU count, at most 8); it does not
    change the result. Tar shards a previous build left in this recipe's pool folders are removed first.
    Raises ``sources.MissingSourceError`` (with the ``apt-get install -y ...`` line) before writing
    anything when a source package is missing, ``ValueError`` for impossible options.
    """
    from tqdm import tqdm

    o = options if options is not None else Options()
    validate(o)
    src.require_debian(source_paths(o))
    out = Path(out)
    rate, n = o.sample_rate, int(round(o.clip_seconds * o.sample_rate))

    speech = load_speech(o)
    noise, skipped = load_noise(o)
    if not noise:
        raise RuntimeError(f"{NAME}: no usable noise recordings in {o.opensfx_cat} or {o.simutrans_dir}")
    layout = noise_layout(noise, o, _rng(o.seed, 1))
    for p in POOLS:
        if getattr(o, p.count_option) > 0 and not layout[p.name]:
            raise RuntimeError(f"{NAME}: no noise recording has a span in {p.name}")
    real = allocate_speech(speech, _rng(o.seed, 2))
    texts = SentenceMaker(_rng(o.seed, 3))
    jobs: list[EspeakJob] = []
    plans: dict[str, list[ClipPlan]] = {}
    for i, p in enumerate(POOLS):
        count = getattr(o, p.count_option)
        if p.has_speech:
            plans[p.name] = plan_speech(p, count, real[p.name], o, n, _rng(o.seed, 10, i), texts, jobs)
        else:
            plans[p.name] = [ClipPlan() for _ in range(count)]
    synthesize(jobs, o, progress, workers)

    info = DatasetInfo(name=NAME, sample_rate=rate, stems=["speech", "noise"], observed="noise",
                       unobserved="speech")
    out.mkdir(parents=True, exist_ok=True)
    _clear_pool_shards(out)
    writer = DatasetWriter(out, info, clips_per_shard=o.clips_per_shard)
    snrs: list[float] = []
    voice_clips: dict[str, dict[str, int]] = {}
    noise_used: dict[str, set[str]] = {}
    real_ids: dict[str, set[str]] = {}
    total = sum(len(v) for v in plans.values())
    with tqdm(total=total, desc=NAME, unit="clip", disable=not progress) as bar:
        for i, p in enumerate(POOLS):
            voice_clips[p.name], noise_used[p.name], real_ids[p.name] = {}, set(), set()
            with writer.pool(p.split, p.pool, list(p.members)) as w:
                for k, plan in enumerate(plans[p.name]):
                    rng = _rng(o.seed, 20, i, k)
                    snr = float(rng.uniform(o.snr_db_min, o.snr_db_max))
                    level = float(rng.uniform(o.level_db_min, o.level_db_max))
                    noise_audio, noise_info = render_noise(layout[p.name], noise, n, o, rng)
                    noise_used[p.name].add(noise_info["id"])
                    meta: dict[str, Any] = {"labels": [], "source": {"noise": noise_info}}
                    if p.has_speech:
                        speech_audio, parts = render_speech(plan, n, rate, rng)
                        s16, v16, m16 = mix_clip(speech_audio, noise_audio, snr, level)
                        audio = {"mix": m16, "speech": s16, "noise": v16}
                        meta["source"]["speech"] = parts
                        meta.update(voice=plan.voice, voice_seen_in_train=plan.seen,
                                    snr_db=round(src.ratio_db(s16, v16), 3),
                                    snr_db_target=round(snr, 3), level_db=round(src.level_db(m16), 2))
                        snrs.append(meta["snr_db"])
                        voice_clips[p.name][plan.voice] = voice_clips[p.name].get(plan.voice, 0) + 1
                        real_ids[p.name].update(part["id"] for part in parts if not part["id"].startswith("espeak"))
                    else:
                        v = _scale_to(noise_audio, _noise_level_db(level, snr))
                        peak = float(np.max(np.abs(v)))
                        v16 = to_int16(v * (PEAK / peak) if peak > PEAK else v)
                        audio = {"noise": v16}
                        meta["level_db"] = round(src.level_db(v16), 2)
                    w.add(f"{p.split}-{p.pool}-{k:05d}", {s: audio[s] for s in p.members}, meta)
                    bar.update()

    voices = {v for counts in voice_clips.values() for v in counts}
    used_noise = [noise[i] for i in sorted({s.rec for spans in layout.values() for s in spans})]
    seen_voices = sorted({ASTERISK_VOICE} | {f"espeak-ng:{v}" for v in SEEN_ESPEAK_VOICES})
    heldout_voices = sorted({v for v in speech if v != ASTERISK_VOICE}
                            | {f"espeak-ng:{v}" for v in HELDOUT_ESPEAK_VOICES})
    by_split: dict[str, set[str]] = {}
    for p in POOLS:
        by_split.setdefault(p.split, set()).update(voice_clips[p.name])
    events = sorted(noise[s.rec].id for spans in layout.values() for s in spans if s.event)
    info.made_by = {
        "recipe": NAME, "version": VERSION, "seed": o.seed, "options": asdict(o),
        "packages": {pkg: src.package_version(pkg) for pkg in RECORDED_PACKAGES},
        "software": _software(),
    }
    info.licences = _licences(used_noise, voices)
    info.stats = {
        "clips": {p.name: len(plans[p.name]) for p in POOLS},
        "voices": {split: sorted(v) for split, v in by_split.items()},
        "seen_voices": seen_voices,
        "heldout_voices": heldout_voices,
        "voice_clips": {name: dict(sorted(c.items())) for name, c in voice_clips.items() if c},
        "real_speech_recordings": {name: len(ids) for name, ids in real_ids.items() if ids},
        "real_speech_skipped": {k: f"copy of {v}" for k, v in SPEECH_SHARED_AUDIO.items()},
        "real_speech_available": {v: {"recordings": len(us), "seconds": round(sum(len(u.audio) for u in us) / rate, 1)}
                                  for v, us in speech.items()},
        "synthetic_utterances": len(jobs),
        "noise_recordings": {
            "used": len(used_noise),
            "by_package": {pkg: sum(r.package == pkg for r in used_noise)
                           for pkg in (src.OPENSFX_PACKAGE, src.SIMUTRANS_PACKAGE)},
            "seconds": round(sum(len(r.audio) for r in used_noise) / rate, 1),
            "short_events": events,
            "skipped": skipped,
            "per_pool": {name: len(ids) for name, ids in noise_used.items() if ids},
        },
        "noise_fractions": NOISE_FRACTIONS,
        "snr_db": {"range": [o.snr_db_min, o.snr_db_max],
                   "min": min(snrs) if snrs else None, "max": max(snrs) if snrs else None,
                   "mean": round(float(np.mean(snrs)), 3) if snrs else None},
    }
    return writer.close()  # no build time or output path in dataset.json: it stays identical across builds
