"""The prepared-dataset format: a folder with ``dataset.json`` and WebDataset tar shards.

Layout of a prepared dataset ``DIR``::

    DIR/dataset.json                 what is in it, how it was made (see ``DatasetInfo``)
    DIR/<split>/<pool>/000000.tar    shards of one pool of clips (e.g. train/mixtures, test/eval)

One sample is one clip; its tar members share the clip id as key:

* ``<key>.json``          metadata: ``duration_s`` (audio only), ``labels`` (clip-level classes), ``events``
                           (frame-level ``[label, onset_s, offset_s]``), ``source`` (where it came from),
                           and for video ``frames`` (count, fps) and ``boxes`` (per-frame object boxes).
* ``<key>.<stem>.flac``   mono 16-bit FLAC, one per stem the pool is allowed to hold (``mix`` and/or sources).
* ``<key>.<stem>.png``    image datasets instead: one 16-bit grayscale PNG per stem (see below).
* ``<key>.<name>.<ext>``  any other member (video frames ``frame0003.jpg``, detection arrays ``.npy``):
                           carried through to the reader untouched, so video fits without a format change.

``dataset.json``'s ``modality`` says which: ``"audio"`` (the default; files written before the field existed
load as audio) or ``"image"``. An image dataset has ``image_shape`` ``[H, W]`` (every stem of every clip has
that shape), ``sample_rate`` 0, pools with ``seconds`` 0 and no ``duration_s`` in the metadata. Its stems are
16-bit grayscale PNGs whose stored integer ``v`` stands for the intensity ``v / IMAGE_SCALE`` (``IMAGE_SCALE``
is 32767): intensities lie in ``[0, 65535 / 32767]``, about ``[0, 2]``, so two stems in ``[0, 1]`` and their
sum fit. As with audio, a recipe quantizes each source first and stores ``mix`` as the integer sum, so
``mix == sum(stems)`` holds exactly in the stored values (and to float32 rounding after decoding). Readers
return float32 arrays of shape ``(H, W)`` per stem (``decode_sample(..., image_shape=(H, W))``); an image
member in an audio dataset, an audio member in an image dataset, a corrupt PNG or one of another shape or
bit depth is a ``DatasetError`` naming the shard and member.

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
AUDIO, IMAGE = "audio", "image"
MODALITIES = (AUDIO, IMAGE)
IMAGE_SCALE = 32767  # a stored 16-bit image value v stands for the intensity v / IMAGE_SCALE
IMAGE_MAX = 65535 / IMAGE_SCALE  # the largest storable intensity (about 2.0)


class DatasetError(RuntimeError):
    """Anything wrong with a prepared dataset; the message names the file and the fix."""


# ----------------------------------------------------------------------------- dataset.json


@dataclass
class PoolInfo:
    """One pool of clips: its shards (relative to the dataset root) and what they hold."""

    shards: list[str]
    members: list[str]  # stems (audio or image) present in every clip of this pool
    clips: int = 0
    seconds: float = 0.0  # audio only; 0 for images


@dataclass
class DatasetInfo:
    """The contents of ``dataset.json``.

    ``stems`` are the source names (``mix`` is implied); ``observed``/``unobserved`` name the stems of
    the semi-supervised setting (the unobserved one never appears in a training pool); ``splits`` maps
    split → pool → ``PoolInfo``; ``made_by`` records recipe, version, seed, settings and source packages;
    ``licences`` the licence of each source. ``modality`` is ``"audio"`` (FLAC stems at ``sample_rate``) or
    ``"image"`` (16-bit PNG stems of ``image_shape`` ``[H, W]``; ``sample_rate`` is 0).
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
    modality: str = AUDIO
    image_shape: list[int] | None = None  # [H, W] of every image stem; None for audio
    version: int = FORMAT_VERSION
    root: Path | None = None  # where it was loaded from; not stored

    def check(self, where: str | os.PathLike = "dataset.json") -> None:
        """Raise ``DatasetError`` (naming ``where``) when ``modality`` and ``image_shape`` do not fit together."""
        if self.modality not in MODALITIES:
            raise DatasetError(f"{where}: modality {self.modality!r} is unknown; it is one of {list(MODALITIES)}")
        if self.modality == IMAGE:
            shape = self.image_shape
            if (not isinstance(shape, (list, tuple)) or len(shape) != 2
                    or not all(isinstance(n, int) and not isinstance(n, bool) and n > 0 for n in shape)):
                raise DatasetError(f"{where}: an image dataset needs image_shape [H, W] of positive integers, "
                                   f"got {shape!r}; rebuild the dataset or fix its recipe")
        elif self.image_shape is not None:
            raise DatasetError(f"{where}: image_shape {self.image_shape!r} given for an audio dataset; "
                               "set modality to 'image' or drop image_shape")

    @property
    def is_image(self) -> bool:
        return self.modality == IMAGE

    @property
    def shape(self) -> tuple[int, int] | None:
        """``(H, W)`` of an image dataset's stems; None for audio (what ``decode_sample`` takes as ``image_shape``)."""
        return tuple(self.image_shape) if self.modality == IMAGE else None

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
        info.check(path)
        if info.image_shape is not None:
            info.image_shape = list(info.image_shape)
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


def to_uint16_image(image: np.ndarray) -> np.ndarray:
    """Float intensities in ``[0, IMAGE_MAX]`` to stored 16-bit values ``round(x * IMAGE_SCALE)``.

    NaN, inf or values outside the range are an error (never clipped or written as black).
    """
    x = np.asarray(image, dtype=np.float64)
    if not np.isfinite(x).all():
        raise ValueError("image holds NaN or inf pixels; refusing to write them")
    if x.size and (x.min() < 0 or x.max() > IMAGE_MAX):
        raise ValueError(f"image intensities must lie in [0, {IMAGE_MAX:.4f}] (stored as v / {IMAGE_SCALE}), "
                         f"got [{x.min():.4f}, {x.max():.4f}]: scale them before writing")
    return np.round(x * IMAGE_SCALE).astype(np.uint16)


def encode_png(image: np.ndarray) -> bytes:
    """One image stem as a 16-bit grayscale PNG. ``uint16`` input is stored as is (``v / IMAGE_SCALE``
    intensity); float input must lie in ``[0, IMAGE_MAX]``; other integer types are refused (their scale is
    ambiguous: convert them to float intensities first)."""
    from PIL import Image

    image = np.asarray(image)
    if image.ndim != 2:
        raise ValueError(f"expected a grayscale image of shape (H, W), got {image.shape}")
    if image.dtype != np.uint16:
        if not np.issubdtype(image.dtype, np.floating):
            raise ValueError(f"image stems are uint16 (stored values) or float intensities, got {image.dtype}")
        image = to_uint16_image(image)
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(image, dtype=np.uint16)).save(buf, format="PNG")
    return buf.getvalue()


def _add_member(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mtime = 0
    info.mode = 0o644
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    tar.addfile(info, io.BytesIO(data))


class PoolWriter:
    """Writes the clips of one pool into numbered shards of at most ``clips_per_shard`` clips.

    ``image_shape`` ``(H, W)`` makes it an image pool: every stem is an ``(H, W)`` array stored as 16-bit PNG.
    """

    def __init__(self, root: Path, split: str, pool: str, members: list[str], sample_rate: int, clips_per_shard: int,
                 image_shape: tuple[int, int] | None = None):
        self.root, self.split, self.pool, self.sample_rate = root, split, pool, sample_rate
        self.image_shape = None if image_shape is None else tuple(image_shape)
        self.info = PoolInfo(shards=[], members=list(members))
        self.clips_per_shard = clips_per_shard
        self._tar: tarfile.TarFile | None = None
        self._in_shard = 0
        self._keys: set[str] = set()
        (root / split / pool).mkdir(parents=True, exist_ok=True)

    def add(self, key: str, audio: dict[str, np.ndarray], meta: dict[str, Any] | None = None,
            extra: dict[str, bytes] | None = None) -> None:
        """Add one clip. ``audio`` must hold exactly this pool's stems (so an unobserved stem cannot leak in):
        mono waveforms, or ``(H, W)`` images in an image pool."""
        if "." in key or "/" in key:
            raise ValueError(f"clip id {key!r} must not contain '.' or '/'")
        if key in self._keys:
            raise ValueError(f"clip id {key!r} written twice to {self.split}/{self.pool}")
        if sorted(audio) != sorted(self.info.members):
            raise ValueError(
                f"{self.split}/{self.pool} holds stems {self.info.members}, clip {key!r} has {sorted(audio)}"
            )
        if self.image_shape is not None:
            self._add_image(key, audio, meta, extra)
            return
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

    def _add_image(self, key: str, images: dict[str, np.ndarray], meta: dict[str, Any] | None,
                   extra: dict[str, bytes] | None) -> None:
        for stem in sorted(images):
            shape = tuple(np.shape(images[stem]))
            if shape != self.image_shape:
                raise ValueError(f"clip {key!r}: stem {stem!r} has shape {shape}, "
                                 f"this image dataset's stems are {self.image_shape}")
        encoded = {stem: encode_png(images[stem]) for stem in sorted(images)}  # errors before anything is written
        self._keys.add(key)
        if self._tar is None or self._in_shard >= self.clips_per_shard:
            self._next_shard()
        _add_member(self._tar, f"{key}.json", json.dumps(meta or {}, sort_keys=True).encode())
        for stem, data in encoded.items():
            _add_member(self._tar, f"{key}.{stem}.png", data)
        for suffix, data in sorted((extra or {}).items()):
            _add_member(self._tar, f"{key}.{suffix}", data)
        self._in_shard += 1
        self.info.clips += 1

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
        try:
            info.check("dataset.json")
        except DatasetError as e:
            raise ValueError(str(e)) from None
        if info.is_image and info.sample_rate != 0:
            raise ValueError(f"image dataset {info.name!r}: sample_rate must be 0, got {info.sample_rate}")
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
        writer = PoolWriter(self.root, split, pool, members, self.info.sample_rate, self.clips_per_shard,
                            image_shape=self.info.shape)
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


def pool_keys(urls: list[str]) -> list[str]:
    """The clip keys of a pool's shards, in stored order (tar headers only: no member is read)."""
    keys: list[str] = []
    for url in urls:
        try:
            with tarfile.open(url, "r") as tar:
                for name in tar.getnames():
                    key = name.rpartition("/")[2].partition(".")[0]
                    if not keys or keys[-1] != key:
                        keys.append(key)
        except (tarfile.TarError, OSError, EOFError) as e:
            raise DatasetError(f"{url}: shard is truncated or corrupt ({type(e).__name__}: {e}); rebuild the "
                               "dataset") from e
    return keys


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


_PNG_16BIT_MODES = ("I;16", "I;16B", "I;16L", "I")  # how Pillow opens a 16-bit grayscale PNG


def decode_image(data: bytes, *, url: str, name: str, shape: tuple[int, int], dtype: str = "float32") -> np.ndarray:
    """Decode one 16-bit grayscale PNG member to an ``(H, W)`` array, checking format, bit depth and shape.

    ``dtype="float32"`` gives intensities ``v / IMAGE_SCALE``; ``dtype="uint16"`` the stored values.
    """
    from PIL import Image

    if dtype not in ("float32", "uint16"):
        raise ValueError(f"image stems decode to float32 or uint16, not {dtype!r}")
    try:
        with Image.open(io.BytesIO(data)) as img:
            img.load()
            fmt, mode = img.format, img.mode
            pixels = np.asarray(img) if fmt == "PNG" and mode in _PNG_16BIT_MODES else None
    except Exception as e:  # Pillow raises several types for broken data
        raise DatasetError(f"{url}: member {name} is not a decodable PNG ({e}); rebuild the dataset") from e
    if pixels is None:
        raise DatasetError(f"{url}: member {name} is a {fmt} image of mode {mode}; image stems are 16-bit "
                           "grayscale PNGs (rebuild the dataset or fix its recipe)")
    if pixels.min(initial=0) < 0 or pixels.max(initial=0) > 65535:
        raise DatasetError(f"{url}: member {name} holds values outside 0..65535; image stems are 16-bit PNGs")
    if tuple(pixels.shape) != tuple(shape):
        raise DatasetError(f"{url}: member {name} is {pixels.shape[0]}x{pixels.shape[1]} (HxW) but dataset.json "
                           f"says image_shape {list(shape)}; rebuild the dataset or fix its recipe")
    stored = pixels.astype(np.uint16)
    if dtype == "uint16":
        return stored
    return stored.astype(np.float32) * np.float32(1.0 / IMAGE_SCALE)


def decode_sample(raw: dict[str, Any], sample_rate: int, stems: Iterable[str] | None = None,
                  dtype: str = "float32", crop: Callable[[int], tuple[int, int]] | None = None,
                  image_shape: tuple[int, int] | None = None) -> dict[str, Any]:
    """Turn a raw sample into ``{"key", "meta", <stem>: array, <other suffix>: bytes}``.

    ``stems`` limits which audio members are decoded (the others are not decoded and dropped).
    ``crop(n_samples) -> (start, frames)`` decodes only that span of every stem (the same span for all).
    ``image_shape=(H, W)`` (``DatasetInfo.shape``) reads an image dataset: the ``<stem>.png`` members are
    decoded to ``(H, W)`` arrays (``dtype`` float32 or uint16) and there is no crop; an audio member there, or
    an image stem in an audio dataset, is a modality mismatch (``DatasetError``).
    """
    url, key = raw["__url__"], raw["__key__"]
    if "json" not in raw:
        raise DatasetError(f"{url}: clip {key} has no {key}.json metadata member; rebuild the dataset")
    meta = json.loads(raw["json"])
    out: dict[str, Any] = {"key": key, "meta": meta}
    if image_shape is not None:
        return _decode_image_sample(raw, out, stems, dtype, crop, tuple(image_shape))
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
            images = sorted(f"{key}.{stem}.png" for stem in missing if f"{stem}.png" in raw)
            if images:
                raise DatasetError(f"{url}: clip {key} holds image members {images} but dataset.json says "
                                   "modality 'audio'; the shards belong to an image dataset: rebuild the dataset")
            raise DatasetError(f"{url}: clip {key} lacks stems {sorted(missing)}")
    return out


def _decode_image_sample(raw: dict[str, Any], out: dict[str, Any], stems: Iterable[str] | None, dtype: str,
                         crop: Callable[[int], tuple[int, int]] | None, shape: tuple[int, int]) -> dict[str, Any]:
    url, key = raw["__url__"], raw["__key__"]
    if crop is not None:
        raise ValueError("image datasets are read whole: decode_sample takes no crop with image_shape")
    audio = sorted(f"{key}.{suffix}" for suffix in raw if suffix.endswith(".flac"))
    if audio:
        raise DatasetError(f"{url}: clip {key} holds audio members {audio} but dataset.json says modality "
                           "'image'; the shards belong to an audio dataset: rebuild the dataset")
    wanted = None if stems is None else set(stems)
    for suffix, data in raw.items():
        if suffix.startswith("__") or suffix == "json":
            continue
        if suffix.endswith(".png") and "." not in suffix[: -len(".png")]:
            stem = suffix[: -len(".png")]
            if wanted is None or stem in wanted:
                out[stem] = decode_image(data, url=url, name=f"{key}.{suffix}", shape=shape, dtype=dtype)
        else:
            out[suffix] = data
    if wanted is not None:
        missing = wanted - set(out)
        if missing:
            raise DatasetError(f"{url}: clip {key} lacks stems {sorted(missing)}")
    return out


def read_pool(info: DatasetInfo, split: str, pool: str | None = None,
              stems: Iterable[str] | None = None) -> Iterator[dict[str, Any]]:
    """All clips of a pool in stored order, decoded (for recipes, tests and tools; training uses the DataModule).

    Audio stems are 1-D float32 waveforms; an image dataset's stems are float32 ``(H, W)`` intensities.
    """
    if stems is None:
        stems = info.pool(split, pool).members  # every stem must be there, of the dataset's modality
    for url in info.urls(split, pool):
        for raw in iter_tar(url):
            yield decode_sample(raw, info.sample_rate, stems, image_shape=info.shape)
