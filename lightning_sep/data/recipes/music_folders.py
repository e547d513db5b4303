"""Shared code of the real-music recipes ``musdb18`` and ``dsd100``: read the user's own copy of a multitrack
dataset (nothing is downloaded), turn every track into ``vocals`` and ``accompaniment`` at the dataset's rate,
and write the semi-supervised pools.

Output (stems ``vocals`` and ``accompaniment``; observed ``accompaniment``, unobserved ``vocals``):

* ``train/mixtures``: ``mix`` only, ``clip_seconds`` chunks of one half of the training tracks;
* ``train/observed``: ``accompaniment`` only, chunks of the OTHER half (no track is in both halves; which
  track goes to which half is drawn from ``seed``);
* ``train/isolated``: ``mix``, ``vocals``, ``accompaniment`` chunks of all training tracks (both halves),
  for the supervised upper bound;
* ``valid/eval`` and ``test/eval``: ``mix``, ``vocals``, ``accompaniment`` of the validation and test tracks,
  whole tracks by default (``eval_clip_seconds=0``), else consecutive chunks that cover the whole track.

How a track becomes two stems:

1. the recipe reads ``vocals``, ``drums``, ``bass`` and ``other`` (44.1 kHz; anything else is an error naming
   the file), never the dataset's own mixture file;
2. channels: ``channels=mean`` (default) down-mixes to mono as ``(left + right) / 2``; ``left`` / ``right``
   keep one channel; ``both`` stores each channel as its own mono clip (``channel`` in the clip's metadata),
   since a prepared dataset holds mono stems. The source's channel count is kept as ``source_channels``;
3. ``accompaniment = drums + bass + other`` (summed in float64), then both stems are resampled to
   ``sample_rate`` with torchaudio's sinc resampler (``sources.resample``, the kernel of
   ``torchaudio.functional.resample``);
4. if the track would not fit int16 (a stem or their sum above full scale), the whole track is scaled down
   by one gain (``gain_db`` in the metadata, the scaled tracks listed in ``stats.gain_db``; 0.0 for a track
   that fits): levels are otherwise the original mix levels, so quiet and loud songs stay quiet and loud;
5. each stem is rounded to int16 and ``mix`` is their exact int16 sum: ``mix == vocals + accompaniment``
   holds sample for sample in the stored data. The datasets' mixture files are NOT exactly that sum: they
   were stored on their own (MUSDB18-HQ's and DSD100's ``mixture.wav`` as separately rounded 16-bit audio,
   clipped wherever the sum passes full scale; MUSDB18's stream 0 as its own AAC stream), so after a
   down-mix and resampling they would differ from the sum of the stored stems. The mixture is therefore
   recomputed from the stems, and the dataset's mixture file is never read.

Training chunks start every ``clip_seconds`` from the start of the track; the last piece shorter than a chunk
is dropped. A chunk is used only when its vocals are at least ``vocals_min_db`` dBFS RMS (so training
mixtures hold singing) and its accompaniment at least ``accompaniment_min_db`` (no silent observed clips). The
same rule picks the chunks of all three training pools, so the accompaniment in ``train/observed`` is drawn
like the accompaniment inside ``train/mixtures`` (from sung passages; the vocals of observed tracks are read
for this test only and never stored). The order of a training pool's clips is shuffled (seeded), so every
shard mixes many songs; the chunks of the training tracks are cached as int16 ``.npy`` files in a temporary
folder inside ``out`` while the pools are written, and removed after.

Per-clip metadata (``<key>.json``): ``track`` (the dataset's track name), ``track_folder`` (``train``/``test``
or ``Dev``/``Test``), ``start_s`` (chunk start in seconds from the start of the track), ``channel``,
``source_channels``, ``gain_db``, ``level_db`` (RMS dBFS of each stored stem), ``source`` (dataset, files
relative to ``root``); evaluation clips add ``track_seconds`` and ``whole_track``.
"""
from __future__ import annotations

import hashlib
import shutil
import subprocess
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np
import soundfile as sf

from ..shards import DatasetInfo, DatasetWriter, to_int16
from . import sources as src

SOURCE_RATE = 44100  # MUSDB18, MUSDB18-HQ and DSD100 are all 44.1 kHz
INSTRUMENTS = ("drums", "bass", "other")  # summed into the accompaniment
SOURCE_STEMS = ("vocals",) + INSTRUMENTS  # what is read from every track
STEMS = ["vocals", "accompaniment"]
OBSERVED, UNOBSERVED = "accompaniment", "vocals"
ALL_MEMBERS = ("mix", "vocals", "accompaniment")
CHANNEL_MODES = ("mean", "left", "right", "both")
# The largest stem or stem-sum magnitude stored without a gain: rounding adds at most half a step to each stem,
# so the int16 sum of two stems below this stays within 32767.
INT16_LIMIT = 32766 / 32768
CACHE_PREFIX = ".tracks-"  # temporary folder inside ``out`` holding the training tracks while the pools are written


class MusicFolderError(RuntimeError):
    """The user's copy of a dataset is missing, incomplete or unreadable; the message names the file and the fix."""


@dataclass(frozen=True)
class Pool:
    split: str
    pool: str
    members: tuple[str, ...]

    @property
    def name(self) -> str:
        return f"{self.split}/{self.pool}"


POOLS = (
    Pool("train", "mixtures", ("mix",)),
    Pool("train", "observed", ("accompaniment",)),
    Pool("train", "isolated", ALL_MEMBERS),
    Pool("valid", "eval", ALL_MEMBERS),
    Pool("test", "eval", ALL_MEMBERS),
)


# ----------------------------------------------------------------------------- the user's folder


@dataclass
class Track:
    """One track of the user's copy: its stems as WAV files, or one multi-stream stem file (MUSDB18 ``.mp4``)."""

    name: str  # the dataset's track name (folder or file name), e.g. "Actions - One Minute Smile"
    folder: str  # the dataset's own split folder: "train"/"test" (MUSDB18) or "Dev"/"Test" (DSD100)
    wavs: dict[str, Path] = field(default_factory=dict)  # stem -> WAV file (every stem in SOURCE_STEMS)
    stem_file: Path | None = None  # a Native Instruments stem file instead of WAVs

    @property
    def files(self) -> list[Path]:
        return [self.stem_file] if self.stem_file is not None else [self.wavs[s] for s in SOURCE_STEMS]


def wav_track(folder: Path, split_folder: str, fix: str) -> Track:
    """The track in ``folder`` (``vocals.wav``, ``drums.wav``, ``bass.wav``, ``other.wav``); a missing file is an
    error naming it and ``fix``."""
    wavs = {s: folder / f"{s}.wav" for s in SOURCE_STEMS}
    missing = [p for p in wavs.values() if not p.is_file()]
    if missing:
        names = ", ".join(p.name for p in missing)
        raise MusicFolderError(f"{missing[0]} is missing ({names} missing in {folder}): every track folder must "
                               f"hold {', '.join(s + '.wav' for s in SOURCE_STEMS)}; {fix}")
    return Track(folder.name, split_folder, wavs)


def track_folders(folder: Path) -> list[Path]:
    """The visible sub-folders of ``folder``, sorted by name (hidden ones such as ``.DS_Store`` are skipped)."""
    return sorted((p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")), key=lambda p: p.name)


def listing_sha256(root: Path, tracks: list[Track]) -> str:
    """SHA-256 of the sorted ``relative path<TAB>size`` lines of every file read: tells two copies apart cheaply."""
    lines = sorted(f"{p.relative_to(root).as_posix()}\t{p.stat().st_size}" for t in tracks for p in t.files)
    return hashlib.sha256("\n".join(lines).encode()).hexdigest()


# ----------------------------------------------------------------------------- reading audio


def read_wav(path: Path, fix: str, where: str | None = None) -> np.ndarray:
    """Float32 ``(frames, channels)`` samples of a 44.1 kHz file; other rates and unreadable files raise
    ``MusicFolderError`` naming ``where`` (default: the path) and ``fix``."""
    where = where or str(path)
    try:
        with sf.SoundFile(str(path)) as f:
            rate = f.samplerate
            if rate != SOURCE_RATE:
                raise MusicFolderError(
                    f"{where}: {rate} Hz, but the dataset's files are {SOURCE_RATE} Hz, so this copy was resampled "
                    f"or converted; build from the original files ({fix}); the recipe resamples to sample_rate itself")
            audio = f.read(dtype="float32", always_2d=True)
    except MusicFolderError:
        raise
    except Exception as e:  # soundfile raises several types for broken files
        raise MusicFolderError(f"{where}: not readable as audio ({type(e).__name__}: {e}); the file is damaged or "
                               f"not a WAV file: {fix}") from e
    return audio


def read_wav_stems(track: Track, fix: str) -> dict[str, np.ndarray]:
    return {s: read_wav(track.wavs[s], fix) for s in SOURCE_STEMS}


def find_program(program: str) -> str | None:
    """The full path of ``program`` (a name looked up on PATH, or a path), or None."""
    return shutil.which(program)


def program_version(program: str) -> str | None:
    """First line of ``program -version`` (ffmpeg's version banner), or None."""
    try:
        out = subprocess.run([program, "-version"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.splitlines()[0].strip() if out.returncode == 0 and out.stdout else None


def decode_stem_file(path: Path, ffmpeg: str, streams: Mapping[str, int], fix: str) -> dict[str, np.ndarray]:
    """Decode audio streams of a multi-stream MP4 (``streams``: stem -> audio stream index) with the ffmpeg
    program into float32 ``(frames, channels)`` arrays, at the file's own rate (checked to be 44.1 kHz).

    ffmpeg writes each stream as 32-bit float WAV into a temporary folder (no requantization of the decoded
    AAC; no resampling: that is done later, like for every source).
    """
    with tempfile.TemporaryDirectory(prefix="lightning-sep-stem-") as tmp:
        cmd = [ffmpeg, "-nostdin", "-hide_banner", "-v", "error", "-i", str(path)]
        outputs = {}
        for stem, index in streams.items():
            outputs[stem] = Path(tmp) / f"{stem}.wav"
            cmd += ["-map", f"0:a:{index}", "-c:a", "pcm_f32le", "-f", "wav", str(outputs[stem])]
        try:
            run = subprocess.run(cmd, capture_output=True, text=True, timeout=3600)
        except (OSError, subprocess.SubprocessError) as e:
            raise MusicFolderError(f"{path}: could not run {ffmpeg} ({e}); install ffmpeg (as root: "
                                   "apt-get install -y ffmpeg) or set ffmpeg=/path/to/ffmpeg") from e
        if run.returncode != 0:
            lines = [line for line in run.stderr.strip().splitlines() if line.strip()]
            reason = lines[0] if lines else f"exit status {run.returncode}"
            raise MusicFolderError(
                f"{path}: ffmpeg could not decode it ({reason}); a MUSDB18 stem file holds 5 audio streams "
                f"(0 mixture, 1 drums, 2 bass, 3 other, 4 vocals): {fix}")
        return {stem: read_wav(file, fix, where=f"{path} (audio stream {streams[stem]}, {stem})")
                for stem, file in outputs.items()}


# ----------------------------------------------------------------------------- one track -> two int16 stems


@dataclass
class PreparedTrack:
    """A track at the dataset rate: int16 vocals and accompaniment for each stored channel variant."""

    labels: list[str]  # channel variant per entry: "mean", "left" or "right"
    vocals: list[np.ndarray]  # int16
    accompaniment: list[np.ndarray]  # int16
    gain_db: float  # applied to the whole track so that nothing exceeds int16 (0.0: unchanged)
    source_channels: int
    trimmed: int  # source samples cut so that the stems are equally long (compressed stems only)

    @property
    def samples(self) -> int:
        return len(self.vocals[0])


def _channel_variants(audio: np.ndarray, mode: str) -> list[np.ndarray]:
    if mode == "mean":  # (left + right) / 2, computed in float64 (exact for float32 samples)
        return [np.sum([audio[:, c].astype(np.float64) for c in range(audio.shape[1])], axis=0) / audio.shape[1]]
    if mode == "left":
        return [audio[:, 0].astype(np.float64)]
    if mode == "right":
        return [audio[:, 1].astype(np.float64)]
    return [audio[:, c].astype(np.float64) for c in range(audio.shape[1])]


def prepare_track(track: Track, stems: Mapping[str, np.ndarray], channels: str, rate: int,
                  length_tolerance: int = 0) -> PreparedTrack:
    """Vocals and accompaniment (drums + bass + other) of one track: channel variant(s), resampled to ``rate``,
    scaled down only if needed to fit int16, rounded to int16 (see the module docstring).

    Stems must have one channel count and one length; up to ``length_tolerance`` samples of difference are cut
    from the end of the longer ones (counted in ``trimmed``), more is an error naming the files.
    """
    where = {s: (str(track.wavs[s]) if track.stem_file is None else f"{track.stem_file} ({s})") for s in stems}
    counts = {s: a.shape[1] for s, a in stems.items()}
    if len(set(counts.values())) != 1:
        detail = ", ".join(f"{where[s]}: {c}" for s, c in counts.items())
        raise MusicFolderError(f"track {track.name!r}: the stems differ in channel count ({detail}); every stem of a "
                               "track must have the same channels: replace the odd file with the original")
    n_channels = next(iter(counts.values()))
    if channels in ("left", "right", "both") and n_channels < 2:
        raise MusicFolderError(f"channels={channels} needs stereo sources, but {where['vocals']} has {n_channels} "
                               "channel; use channels=mean")
    lengths = {s: len(a) for s, a in stems.items()}
    n = min(lengths.values())
    if max(lengths.values()) - n > length_tolerance:
        detail = ", ".join(f"{where[s]}: {k} samples" for s, k in lengths.items())
        raise MusicFolderError(f"track {track.name!r}: the stems differ in length ({detail}); the stems of a track "
                               "must be equally long: replace the odd file with the original")
    if n == 0:
        raise MusicFolderError(f"{where['vocals']}: the track holds no samples; replace it with the original")
    trimmed = max(lengths.values()) - n
    # one source stem at a time, each released once used: a 10-minute stereo track is 200 MB per stem
    stems = dict(stems)
    vocals = [src.resample(x, SOURCE_RATE, rate) for x in _channel_variants(stems.pop("vocals")[:n], channels)]
    accompaniment: list[np.ndarray] = []
    for s in INSTRUMENTS:  # (drums + bass) + other, in float64
        parts = _channel_variants(stems.pop(s)[:n], channels)
        accompaniment = [a + b for a, b in zip(accompaniment, parts, strict=True)] if accompaniment else parts
    accompaniment = [src.resample(x, SOURCE_RATE, rate) for x in accompaniment]
    peak = max(max(np.max(np.abs(v)), np.max(np.abs(a)), np.max(np.abs(v.astype(np.float64) + a)))
               for v, a in zip(vocals, accompaniment, strict=True))
    gain = INT16_LIMIT / float(peak) if peak > INT16_LIMIT else 1.0
    labels = ["left", "right"] if channels == "both" else [channels]
    if channels == "both" and n_channels > 2:
        labels = [f"channel{c}" for c in range(n_channels)]
    return PreparedTrack(labels, [to_int16(v.astype(np.float64) * gain) for v in vocals],
                         [to_int16(a.astype(np.float64) * gain) for a in accompaniment],
                         round(float(20 * np.log10(gain)), 4), n_channels, trimmed)


def mix_of(vocals: np.ndarray, accompaniment: np.ndarray) -> np.ndarray:
    """The exact int16 sum of two int16 stems (the gain in ``prepare_track`` guarantees it fits)."""
    total = vocals.astype(np.int32) + accompaniment.astype(np.int32)
    if total.size and np.abs(total).max() > 32767:
        raise AssertionError("int16 headroom guard failed")  # cannot happen after prepare_track's gain
    return total.astype(np.int16)


def level_db(x16: np.ndarray) -> float:
    """RMS level of int16 samples in dBFS (-200 for digital silence)."""
    if len(x16) == 0:
        return -200.0
    power = float(np.mean(np.square(x16.astype(np.float64) / 32768.0)))
    return round(10 * np.log10(power), 2) if power > 0 else -200.0


def train_starts(samples: int, size: int) -> list[int]:
    """Starts of the whole ``size``-sample chunks of a track (the last, shorter piece is dropped)."""
    return list(range(0, samples - size + 1, size))


def eval_spans(samples: int, size: int) -> list[tuple[int, int]]:
    """``(start, stop)`` of evaluation clips covering every sample: the whole track when ``size <= 0`` or the track
    is not longer than ``size``; else ``size``-sample chunks, a last piece shorter than half a chunk joining the
    chunk before it."""
    if size <= 0 or samples <= size:
        return [(0, samples)]
    spans = [(s, min(s + size, samples)) for s in range(0, samples, size)]
    if spans[-1][1] - spans[-1][0] < size / 2:
        spans[-2:] = [(spans[-2][0], samples)]
    return spans


# ----------------------------------------------------------------------------- options and planning


def common_problems(o: Any, example_root: str) -> list[str]:
    """What is wrong with the options both music recipes share (empty when all are usable)."""
    problems = []
    if not str(o.root or "").strip():
        problems.append(f"root is required: the folder of your own copy of the dataset, e.g. root={example_root} "
                        "(nothing is downloaded)")
    if not isinstance(o.seed, int) or o.seed < 0:
        problems.append(f"seed={o.seed!r} must be a non-negative integer")
    if not 8000 <= o.sample_rate <= SOURCE_RATE:
        problems.append(f"sample_rate={o.sample_rate} must lie in 8000..{SOURCE_RATE} (the sources are 44.1 kHz)")
    if o.channels not in CHANNEL_MODES:
        problems.append(f"channels={o.channels!r} must be one of {', '.join(CHANNEL_MODES)}")
    if not 0.5 <= o.clip_seconds <= 120:
        problems.append(f"clip_seconds={o.clip_seconds} must lie in 0.5..120")
    if o.eval_clip_seconds != 0 and not 0.5 <= o.eval_clip_seconds <= 3600:
        problems.append(f"eval_clip_seconds={o.eval_clip_seconds} must be 0 (whole tracks) or lie in 0.5..3600")
    for name in ("vocals_min_db", "accompaniment_min_db"):
        value = getattr(o, name)
        if value is not None and not -200 <= value <= 0:
            problems.append(f"{name}={value} must lie in -200..0 dBFS (or be none to keep every chunk)")
    for name in ("clips_per_shard", "eval_clips_per_shard"):
        if getattr(o, name) < 1:
            problems.append(f"{name}={getattr(o, name)} must be >= 1")
    return problems


def rng(seed: int, *purpose: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([seed, *purpose]))


def split_halves(tracks: list[Track], generator: np.random.Generator) -> tuple[list[Track], list[Track]]:
    """Two track-disjoint halves (each sorted by name) of ``tracks``, drawn with ``generator``; the first half gets
    the odd track."""
    ordered = sorted(tracks, key=lambda t: t.name)
    order = generator.permutation(len(ordered))
    half = (len(ordered) + 1) // 2
    first = sorted((ordered[i] for i in order[:half]), key=lambda t: t.name)
    second = sorted((ordered[i] for i in order[half:]), key=lambda t: t.name)
    return first, second


@dataclass
class Source:
    """What a recipe found in the user's folder and how to read it."""

    dataset: str  # "MUSDB18-HQ", "MUSDB18" or "DSD100"
    root: Path
    layout: str  # "wav" or "stem.mp4"
    mixtures: list[Track]  # training tracks whose mixtures are stored (train/mixtures)
    observed: list[Track]  # training tracks whose accompaniment is stored (train/observed)
    valid: list[Track]
    test: list[Track]
    read: Callable[[Track], dict[str, np.ndarray]]  # stem -> float32 (frames, channels) at 44.1 kHz
    info: dict[str, Any]  # recorded under made_by["source"]
    length_tolerance: int = 0

    def tracks(self, pool: str) -> list[Track]:
        return {"train/mixtures": self.mixtures, "train/observed": self.observed,
                "train/isolated": sorted(self.mixtures + self.observed, key=lambda t: t.name),
                "valid/eval": self.valid, "test/eval": self.test}[pool]


def check_pools(source: Source, recipe: str) -> None:
    """Every pool needs at least one track; the halves and splits must be track-disjoint."""
    for pool in ("train/mixtures", "train/observed", "valid/eval", "test/eval"):
        if not source.tracks(pool):
            raise MusicFolderError(f"{recipe}: {source.root} gives no track to {pool} (training tracks: "
                                   f"{len(source.mixtures) + len(source.observed)}, validation: {len(source.valid)}, "
                                   f"test: {len(source.test)}); it needs at least two training tracks, one validation "
                                   "and one test track")
    names = [t.name for p in ("train/isolated", "valid/eval", "test/eval") for t in source.tracks(p)]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise MusicFolderError(f"{recipe}: tracks {twice} appear in more than one split of {source.root}; a track "
                               "must be in one split only")


# ----------------------------------------------------------------------------- build


@dataclass
class _Chunk:
    track: int  # index into the training tracks
    variant: int
    start: int


def _software(extra: Mapping[str, str | None]) -> dict[str, str | None]:
    import torch
    import torchaudio

    return {"numpy": np.__version__, "torch": torch.__version__, "torchaudio": torchaudio.__version__,
            "soundfile": sf.__version__, "libsndfile": sf.__libsndfile_version__, **extra}


def _clear_previous_build(out: Path) -> None:
    """Remove tar shards a previous build left in the pool folders, and chunk caches (``.tracks-*``) of a build
    that was killed; nothing else is touched."""
    for p in POOLS:
        folder = out / p.split / p.pool
        if folder.is_dir():
            for tar in folder.glob("*.tar"):
                tar.unlink()
    for stale in out.glob(f"{CACHE_PREFIX}*"):
        if stale.is_dir():
            shutil.rmtree(stale)


def _meta(track: Track, root: Path, dataset: str, prepared: PreparedTrack, variant: int, start: int, rate: int,
          audio: Mapping[str, np.ndarray]) -> dict[str, Any]:
    return {
        "labels": [], "track": track.name, "track_folder": track.folder, "start_s": round(start / rate, 6),
        "channel": prepared.labels[variant], "source_channels": prepared.source_channels,
        "gain_db": prepared.gain_db, "level_db": {s: level_db(x) for s, x in sorted(audio.items())},
        "source": {"dataset": dataset, "files": [p.relative_to(root).as_posix() for p in track.files]},
    }


def build_music(out: str | Path, o: Any, *, name: str, version: int, source: Source,
                licences: list[dict[str, str]], software: Mapping[str, str | None] | None = None,
                progress: bool = True) -> DatasetInfo:
    """Write the five pools of ``source`` into ``out`` with options ``o`` (see the module docstring)."""
    from tqdm import tqdm

    out = Path(out)
    rate = o.sample_rate
    clip = int(round(o.clip_seconds * rate))
    eval_clip = int(round(o.eval_clip_seconds * rate))
    check_pools(source, name)
    info = DatasetInfo(name=name, sample_rate=rate, stems=list(STEMS), observed=OBSERVED, unobserved=UNOBSERVED)
    out.mkdir(parents=True, exist_ok=True)
    _clear_previous_build(out)
    writer = DatasetWriter(out, info, clips_per_shard=o.clips_per_shard)
    train = source.tracks("train/isolated")
    index = {t.name: i for i, t in enumerate(train)}
    n_tracks = len(train) + len(source.valid) + len(source.test)
    chunk_stats = {"candidates": 0, "kept": 0, "skipped_quiet_vocals": 0, "skipped_quiet_accompaniment": 0}
    gains: dict[str, float] = {}
    trimmed: dict[str, int] = {}
    short_tracks: list[str] = []
    channel_counts: dict[str, int] = {}
    clips: dict[str, int] = {}

    def prepare(track: Track) -> PreparedTrack:
        p = prepare_track(track, source.read(track), o.channels, rate, source.length_tolerance)
        if p.gain_db != 0:
            gains[track.name] = p.gain_db
        if p.trimmed:
            trimmed[track.name] = p.trimmed
        channel_counts[str(p.source_channels)] = channel_counts.get(str(p.source_channels), 0) + 1
        return p

    with tqdm(total=n_tracks, desc=f"{name} tracks", unit="track", disable=not progress) as bar, \
            tempfile.TemporaryDirectory(prefix=CACHE_PREFIX, dir=out) as tmp:
        # training tracks: prepared once, cached as int16, chunks chosen; the pools are written after
        cache: list[PreparedTrack] = []
        kept: list[list[_Chunk]] = []
        for i, track in enumerate(train):
            p = prepare(track)
            for j in range(len(p.labels)):
                np.save(Path(tmp) / f"{i:05d}-{j}-vocals.npy", p.vocals[j])
                np.save(Path(tmp) / f"{i:05d}-{j}-accompaniment.npy", p.accompaniment[j])
            chunks = []
            starts = train_starts(p.samples, clip)
            if not starts:
                short_tracks.append(track.name)
            for j in range(len(p.labels)):
                for s in starts:
                    chunk_stats["candidates"] += 1
                    if o.vocals_min_db is not None and level_db(p.vocals[j][s: s + clip]) < o.vocals_min_db:
                        chunk_stats["skipped_quiet_vocals"] += 1
                    elif (o.accompaniment_min_db is not None
                          and level_db(p.accompaniment[j][s: s + clip]) < o.accompaniment_min_db):
                        chunk_stats["skipped_quiet_accompaniment"] += 1
                    else:
                        chunks.append(_Chunk(i, j, s))
            chunk_stats["kept"] += len(chunks)
            kept.append(chunks)
            cache.append(PreparedTrack(p.labels, [], [], p.gain_db, p.source_channels, p.trimmed))  # audio on disk
            bar.update()

        def cached(chunk: _Chunk, stem: str) -> np.ndarray:
            data = np.load(Path(tmp) / f"{chunk.track:05d}-{chunk.variant}-{stem}.npy", mmap_mode="r")
            return np.array(data[chunk.start: chunk.start + clip])

        training_clips = sum(len(kept[index[t.name]]) for p in POOLS[:3] for t in source.tracks(p.name))
        clip_bar = tqdm(total=training_clips, desc=f"{name} training clips", unit="clip", disable=not progress)
        for k, pool in enumerate(POOLS[:3]):
            chunks = [c for t in source.tracks(pool.name) for c in kept[index[t.name]]]
            order = rng(o.seed, 10 + k).permutation(len(chunks))
            with writer.pool(pool.split, pool.pool, pool.members) as w:
                for n, c in enumerate(chunks[i] for i in order):
                    clip_bar.update()
                    v16, a16 = cached(c, "vocals"), cached(c, "accompaniment")
                    audio = {"mix": mix_of(v16, a16), "vocals": v16, "accompaniment": a16}
                    audio = {s: audio[s] for s in pool.members}
                    track = train[c.track]
                    meta = _meta(track, source.root, source.dataset, cache[c.track], c.variant, c.start, rate, audio)
                    w.add(f"{pool.split}-{pool.pool}-{n:05d}", audio, meta)
            clips[pool.name] = len(chunks)
        clip_bar.close()

        # evaluation tracks: whole tracks (or chunks covering them), in track order
        writer.clips_per_shard = o.eval_clips_per_shard
        for pool in POOLS[3:]:
            n = 0
            with writer.pool(pool.split, pool.pool, pool.members) as w:
                for track in source.tracks(pool.name):
                    p = prepare(track)
                    spans = eval_spans(p.samples, eval_clip)
                    for j in range(len(p.labels)):
                        for a, b in spans:
                            v16, a16 = p.vocals[j][a:b], p.accompaniment[j][a:b]
                            audio = {"mix": mix_of(v16, a16), "vocals": v16, "accompaniment": a16}
                            meta = _meta(track, source.root, source.dataset, p, j, a, rate, audio)
                            meta.update(track_seconds=round(p.samples / rate, 6), whole_track=len(spans) == 1)
                            w.add(f"{pool.split}-{pool.pool}-{n:05d}", audio, meta)
                            n += 1
                    bar.update()
            clips[pool.name] = n

    info.made_by = {
        "recipe": name, "version": version, "seed": o.seed, "options": asdict(o),
        "source": {**source.info, "dataset": source.dataset, "layout": source.layout,
                   "listing_sha256": listing_sha256(source.root, train + source.valid + source.test)},
        "software": _software(software or {}),
    }
    info.licences = licences
    info.stats = {
        "tracks": {p.name: [t.name for t in source.tracks(p.name)] for p in POOLS},
        "clips": clips,
        "training_chunks": {"clip_seconds": o.clip_seconds, **chunk_stats, "tracks_shorter_than_a_chunk": short_tracks},
        "eval_clips": "whole tracks" if eval_clip <= 0 else f"{o.eval_clip_seconds} s chunks covering each track",
        "source_channels": channel_counts,
        "gain_db": dict(sorted(gains.items())),
        "trimmed_samples": dict(sorted(trimmed.items())),
    }
    return writer.close()  # no build time or output path in dataset.json: it stays identical across builds
