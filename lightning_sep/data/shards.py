"""The prepared-dataset format: a folder with ``dataset.json`` and WebDataset tar shards.

Layout of a prepared dataset ``DIR``::

    DIR/dataset.json                 what is in it, how it was made (see ``DatasetInfo``)
    DIR/<split>/<pool>/000000.tar    shards of one pool of clips (e.g. train/mixtures, test/eval)

One sample is one clip; its tar members share the clip id as key:

* ``<key>.json``          metadata: ``duration_s``, ``labels`` (clip-level classes), ``events``
                           (frame-level ``[label, onset_s, offset_s]``), ``source`` (where it came from),
                           and for video ``frames`` (count, fps) and ``boxes`` (per-frame object boxes).
* ``<key>.<stem>.flac``   mono 16-bit FLAC, one per stem the pool is allowed to hold (``mix`` and/or sources).
* ``<key>.<name>.<ext>``  any other member (video frames ``frame0003.jpg``, detection arrays ``.npy``):
                           carried through to the reader untouched, so video fits without a format change.

Shards are written byte-deterministically (fixed member order, zero mtimes and owners) so two builds
with the same seed are identical. Errors while reading name the shard file and say how to fix it.
"""
from __future__ import annotations

import io
import json
import os
import tarfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

import numpy as np
import soundfile as sf

FORMAT = "lightning_sep.dataset"
FORMAT_VERSION = 1
MIX = "mix"


class DatasetError(RuntimeError):
    """Anything wrong with a prepared dataset; the message names the file and the fix."""


# ----------------------------------------------------------------------------- dataset.json


@dataclass
class PoolInfo:
    """One pool of clips: its shards (relative to the dataset root) and what they hold."""

    shards: list[str]
    members: list[str]  # audio stems present in every clip of this pool
    clips: int = 0
    seconds: float = 0.0


@dataclass
class DatasetInfo:
    """The contents of ``dataset.json``.

    ``stems`` are the source names (``mix`` is implied); ``observed``/``unobserved`` name the stems of
    the semi-supervised setting (the unobserved one never appears in a training pool); ``splits`` maps
    split → pool → ``PoolInfo``; ``made_by`` records recipe, version, seed, settings and source packages;
    ``licences`` the licence of each source.
    """

    name: str
    sample_rate: int
    stems: list[str]
    splits: dict[str, dict[str, PoolInfo]] = field(default_factory=dict)
    observed: str | None = None
    unobserved: str | None = None
    classes: list[str] = field(default_factory=list)
    made_by: dict[str, Any] = field(default_factory=dict)
    licences: list[dict[str, str]] = field(default_factory=list)
    stats: dict[str, Any] = field(default_factory=dict)
    version: int = FORMAT_VERSION
    root: Path | None = None  # where it was loaded from; not stored

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("root")
        return {"format": FORMAT, **d}

    @classmethod
    def load(cls, root: str | os.PathLike) -> "DatasetInfo":
        root = Path(root)
        path = root / "dataset.json"
        if not path.is_file():
            hint = "build it with `lightning-sep prepare RECIPE --out DIR` and point data.root at DIR"
            raise DatasetError(f"{path}: no prepared dataset here ({hint})")
        try:
            raw = json.loads(path.read_text())
        except json.JSONDecodeError as e:
            raise DatasetError(f"{path}: not valid JSON ({e}); rebuild the dataset") from e
        if raw.get("format") != FORMAT:
            raise DatasetError(f"{path}: not a lightning_sep dataset (format={raw.get('format')!r})")
        version = raw.get("version")
        if version != FORMAT_VERSION:
            raise DatasetError(
                f"{path}: dataset format version {version!r}, this lightning_sep reads version "
                f"{FORMAT_VERSION}; rebuild it with this version's `lightning-sep prepare`"
            )
        raw.pop("format")
        splits = {
            s: {p: PoolInfo(**info) for p, info in pools.items()} for s, pools in raw.pop("splits").items()
        }
        info = cls(splits=splits, **raw)
        info.root = root
        return info

    def pool(self, split: str, pool: str | None = None) -> PoolInfo:
        """The pool ``split/pool``; ``pool=None`` picks the split's only pool. Shard files must exist."""
        where = self.root / "dataset.json" if self.root else "dataset.json"
        if split not in self.splits:
            raise DatasetError(f"{where}: no split {split!r}; it has {sorted(self.splits)}")
        pools = self.splits[split]
        if pool is None:
            if len(pools) != 1:
                raise DatasetError(f"{where}: split {split!r} has pools {sorted(pools)}; name one")
            pool = next(iter(pools))
        if pool not in pools:
            raise DatasetError(f"{where}: split {split!r} has no pool {pool!r}; it has {sorted(pools)}")
        info = pools[pool]
        for shard in info.shards:
            if not (self.root / shard).is_file():
                raise DatasetError(
                    f"{self.root / shard}: shard listed in {where} is missing; "
                    "the dataset is incomplete, rebuild it with `lightning-sep prepare`"
                )
        return info

    def urls(self, split: str, pool: str | None = None) -> list[str]:
        return [str(self.root / s) for s in self.pool(split, pool).shards]


# ----------------------------------------------------------------------------- writing


def encode_flac(audio: np.ndarray, sample_rate: int) -> bytes:
    """Mono 16-bit FLAC. Float input must lie in [-1, 1); int16 input is stored as is."""
    audio = np.asarray(audio)
    if audio.ndim != 1:
        raise ValueError(f"expected mono audio of shape (samples,), got {audio.shape}")
    if audio.dtype != np.int16:
        peak = float(np.max(np.abs(audio))) if audio.size else 0.0
        if peak > 1.0:
            raise ValueError(f"float audio must lie in [-1, 1], peak is {peak:.3f}: scale it before writing")
        audio = to_int16(audio)
    buf = io.BytesIO()
    sf.write(buf, audio, sample_rate, format="FLAC", subtype="PCM_16")
    return buf.getvalue()


def to_int16(audio: np.ndarray) -> np.ndarray:
    """Float audio in [-1, 1] to 16-bit PCM (NaN or inf is an error, never written as silence)."""
    if not np.isfinite(audio).all():
        raise ValueError("audio holds NaN or inf samples; refusing to write them")
    return np.clip(np.round(np.asarray(audio, dtype=np.float64) * 32768.0), -32768, 32767).astype(np.int16)


def _add_member(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mtime = 0
    info.mode = 0o644
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    tar.addfile(info, io.BytesIO(data))


class PoolWriter:
    """Writes the clips of one pool into numbered shards of at most ``clips_per_shard`` clips."""

    def __init__(self, root: Path, split: str, pool: str, members: list[str], sample_rate: int, clips_per_shard: int):
        self.root, self.split, self.pool, self.sample_rate = root, split, pool, sample_rate
        self.info = PoolInfo(shards=[], members=list(members))
        self.clips_per_shard = clips_per_shard
        self._tar: tarfile.TarFile | None = None
        self._in_shard = 0
        self._keys: set[str] = set()
        (root / split / pool).mkdir(parents=True, exist_ok=True)

    def add(self, key: str, audio: dict[str, np.ndarray], meta: dict[str, Any] | None = None,
            extra: dict[str, bytes] | None = None) -> None:
        """Add one clip. ``audio`` must hold exactly this pool's stems (so an unobserved stem cannot leak in)."""
        if "." in key or "/" in key:
            raise ValueError(f"clip id {key!r} must not contain '.' or '/'")
        if key in self._keys:
            raise ValueError(f"clip id {key!r} written twice to {self.split}/{self.pool}")
        if sorted(audio) != sorted(self.info.members):
            raise ValueError(
                f"{self.split}/{self.pool} holds stems {self.info.members}, clip {key!r} has {sorted(audio)}"
            )
        lengths = {len(a) for a in audio.values()}
        if len(lengths) != 1:
            raise ValueError(f"clip {key!r}: stems differ in length {lengths}")
        self._keys.add(key)
        if self._tar is None or self._in_shard >= self.clips_per_shard:
            self._next_shard()
        n = lengths.pop()
        meta = {"duration_s": n / self.sample_rate, **(meta or {})}
        _add_member(self._tar, f"{key}.json", json.dumps(meta, sort_keys=True).encode())
        for stem in sorted(audio):
            _add_member(self._tar, f"{key}.{stem}.flac", encode_flac(audio[stem], self.sample_rate))
        for suffix, data in sorted((extra or {}).items()):
            _add_member(self._tar, f"{key}.{suffix}", data)
        self._in_shard += 1
        self.info.clips += 1
        self.info.seconds += n / self.sample_rate

    def _next_shard(self) -> None:
        self.close()
        rel = f"{self.split}/{self.pool}/{len(self.info.shards):06d}.tar"
        self._tar = tarfile.open(self.root / rel, "w", format=tarfile.USTAR_FORMAT)
        self.info.shards.append(rel)
        self._in_shard = 0

    def close(self) -> None:
        if self._tar is not None:
            self._tar.close()
            self._tar = None

    def __enter__(self) -> "PoolWriter":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class DatasetWriter:
    """Builds a prepared dataset folder; ``dataset.json`` is written last, so a half-built folder is never valid."""

    def __init__(self, root: str | os.PathLike, info: DatasetInfo, clips_per_shard: int = 64):
        self.root = Path(root)
        self.info = info
        self.clips_per_shard = clips_per_shard
        self.root.mkdir(parents=True, exist_ok=True)
        stale = self.root / "dataset.json"
        if stale.exists():
            stale.unlink()

    def pool(self, split: str, pool: str, members: Iterable[str]) -> PoolWriter:
        members = list(members)
        unknown = set(members) - set(self.info.stems) - {MIX}
        if unknown:
            raise ValueError(f"pool {split}/{pool}: unknown stems {sorted(unknown)}; dataset stems {self.info.stems}")
        if self.info.splits.get(split, {}).get(pool) is not None:
            raise ValueError(f"pool {split}/{pool} written twice")
        writer = PoolWriter(self.root, split, pool, members, self.info.sample_rate, self.clips_per_shard)
        self.info.splits.setdefault(split, {})[pool] = writer.info
        return writer

    def close(self) -> DatasetInfo:
        for pools in self.info.splits.values():
            for p in pools.values():
                p.seconds = round(p.seconds, 3)
        tmp = self.root / "dataset.json.tmp"
        tmp.write_text(json.dumps(self.info.to_json(), indent=2, sort_keys=False) + "\n")
        os.replace(tmp, self.root / "dataset.json")
        self.info.root = self.root
        return self.info


# ----------------------------------------------------------------------------- reading


def iter_tar(url: str) -> Iterator[dict[str, Any]]:
    """Yield raw samples ``{"__key__", "__url__", suffix: bytes}`` of one shard, in stored order.

    A truncated or unreadable tar raises ``DatasetError`` naming the shard.
    """
    sample: dict[str, Any] = {}
    try:
        with tarfile.open(url, "r|") as tar:
            for member in tar:
                if not member.isfile():
                    continue
                key, _, suffix = member.name.rpartition("/")[2].partition(".")
                if sample and sample["__key__"] != key:
                    yield sample
                    sample = {}
                if not sample:
                    sample = {"__key__": key, "__url__": url}
                sample[suffix] = tar.extractfile(member).read()
    except (tarfile.TarError, OSError, EOFError) as e:
        raise DatasetError(
            f"{url}: shard is truncated or corrupt ({type(e).__name__}: {e}); rebuild the dataset"
        ) from e
    if sample:
        yield sample


def decode_audio(data: bytes, *, url: str, name: str, sample_rate: int, dtype: str = "float32",
                 start: int = 0, frames: int = -1) -> np.ndarray:
    """Decode one FLAC member (or ``frames`` samples of it from ``start``) to mono, checking rate and channels.

    ``dtype="int16"`` returns the stored PCM values (half the bytes of float32, no conversion cost).
    """
    try:
        with sf.SoundFile(io.BytesIO(data)) as f:
            rate, channels = f.samplerate, f.channels
            if rate == sample_rate and channels == 1:
                if start:
                    f.seek(start)
                audio = f.read(frames, dtype=dtype, always_2d=True)
    except Exception as e:  # soundfile raises several types for broken data
        raise DatasetError(f"{url}: member {name} is not decodable audio ({e}); rebuild the dataset") from e
    if rate != sample_rate:
        raise DatasetError(
            f"{url}: member {name} is at {rate} Hz but dataset.json says {sample_rate} Hz; "
            "rebuild the dataset or fix its recipe"
        )
    if channels != 1:
        raise DatasetError(f"{url}: member {name} has {channels} channels; datasets hold mono stems")
    return audio[:, 0]


def decode_sample(raw: dict[str, Any], sample_rate: int, stems: Iterable[str] | None = None,
                  dtype: str = "float32", crop: Callable[[int], tuple[int, int]] | None = None) -> dict[str, Any]:
    """Turn a raw sample into ``{"key", "meta", <stem>: array, <other suffix>: bytes}``.

    ``stems`` limits which audio members are decoded (the others are not decoded and dropped).
    ``crop(n_samples) -> (start, frames)`` decodes only that span of every stem (the same span for all).
    """
    url, key = raw["__url__"], raw["__key__"]
    if "json" not in raw:
        raise DatasetError(f"{url}: clip {key} has no {key}.json metadata member; rebuild the dataset")
    meta = json.loads(raw["json"])
    out: dict[str, Any] = {"key": key, "meta": meta}
    start, frames = crop(round(meta["duration_s"] * sample_rate)) if crop else (0, -1)
    wanted = None if stems is None else set(stems)
    for suffix, data in raw.items():
        if suffix.startswith("__") or suffix == "json":
            continue
        if suffix.endswith(".flac"):
            stem = suffix[: -len(".flac")]
            if wanted is None or stem in wanted:
                out[stem] = decode_audio(data, url=url, name=f"{key}.{suffix}", sample_rate=sample_rate,
                                         dtype=dtype, start=start, frames=frames)
        else:
            out[suffix] = data
    if wanted is not None:
        missing = wanted - set(out)
        if missing:
            raise DatasetError(f"{url}: clip {key} lacks stems {sorted(missing)}")
    return out


def read_pool(info: DatasetInfo, split: str, pool: str | None = None,
              stems: Iterable[str] | None = None) -> Iterator[dict[str, Any]]:
    """All clips of a pool in stored order, decoded (for recipes, tests and tools; training uses the DataModule)."""
    for url in info.urls(split, pool):
        for raw in iter_tar(url):
            yield decode_sample(raw, info.sample_rate, stems)
