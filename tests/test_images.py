"""Image datasets: 16-bit PNG stems in the shard format, their errors, and the real DataModule over real shards.

The DataModule tests read a small ``demo-digits`` build (real MNIST digits on scikit-image pictures); the
format tests write small images with the real ``DatasetWriter`` and then damage copies of the shards.
"""
from __future__ import annotations

import io
import json
import shutil
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from lightning_sep.data.datamodule import SeparationDataModule
from lightning_sep.data.recipes import demo_digits as dd
from lightning_sep.data.recipes import options_from
from lightning_sep.data.shards import (
    IMAGE_SCALE,
    DatasetError,
    DatasetInfo,
    DatasetWriter,
    decode_sample,
    encode_png,
    iter_tar,
    read_pool,
)
from lightning_sep.data.streams import DataConfig, PoolSpec

COUNTS = {"train/mixtures": 13, "train/observed": 11, "train/isolated": 12, "valid/eval": 7, "test/eval": 9}


@pytest.fixture(scope="module")
def digits(tmp_path_factory) -> Path:
    """A small real demo-digits build: pools of 13/11/12/7/9 images, 4 per shard (odd counts on purpose)."""
    root = tmp_path_factory.mktemp("images") / "demo-digits"
    counts = ["mixtures_clips=13", "observed_clips=11", "isolated_clips=12", "valid_clips=7", "test_clips=9",
              "clips_per_shard=4"]
    dd.build(root, options_from(dd, counts, seed=5), progress=False)
    return root


def _write_images(root: Path, shape=(6, 5), clips: int = 3, seed: int = 0) -> DatasetInfo:
    """A tiny image dataset written by the real writer: test/eval with mix, a, b (mix = a + b exactly)."""
    rng = np.random.default_rng(seed)
    info = DatasetInfo(name="toy-images", sample_rate=0, stems=["a", "b"], modality="image", image_shape=list(shape))
    writer = DatasetWriter(root, info, clips_per_shard=2)
    with writer.pool("test", "eval", ["mix", "a", "b"]) as pool:
        for i in range(clips):
            a = rng.integers(0, IMAGE_SCALE + 1, shape).astype(np.uint16)
            b = rng.uniform(0, 1, shape)  # float intensities are quantized by the writer
            b16 = np.round(b * IMAGE_SCALE).astype(np.uint16)
            pool.add(f"clip{i}", {"mix": (a.astype(np.uint32) + b16).astype(np.uint16), "a": a, "b": b},
                     {"labels": []})
    return writer.close()


def _rewrite_member(shard: Path, suffix: str, data: bytes) -> str:
    with tarfile.open(shard) as tar:
        members = [(m, tar.extractfile(m).read()) for m in tar.getmembers()]
    target = next(m.name for m, _ in members if m.name.endswith(suffix))
    with tarfile.open(shard, "w") as tar:
        for m, payload in members:
            payload = data if m.name == target else payload
            m.size = len(payload)
            tar.addfile(m, io.BytesIO(payload))
    return target


def _png(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    return buf.getvalue()


# ----------------------------------------------------------------------------- format


def test_png_stems_round_trip_exactly(tmp_path):
    info = _write_images(tmp_path)
    raw = next(iter_tar(info.urls("test")[0]))
    assert set(raw) - {"__key__", "__url__"} == {"json", "mix.png", "a.png", "b.png"}
    with Image.open(io.BytesIO(raw["mix.png"])) as img:
        assert (img.format, img.mode, img.size) == ("PNG", "I;16", (5, 6))  # size is (W, H)
    ints = decode_sample(raw, 0, ["mix", "a", "b"], dtype="uint16", image_shape=(6, 5))
    assert np.array_equal(ints["mix"].astype(np.int64), ints["a"].astype(np.int64) + ints["b"])
    floats = next(read_pool(DatasetInfo.load(tmp_path), "test"))
    assert floats["mix"].dtype == np.float32 and floats["mix"].shape == (6, 5)
    np.testing.assert_allclose(floats["a"], ints["a"] / IMAGE_SCALE, rtol=1e-6)
    np.testing.assert_allclose(floats["mix"], floats["a"] + floats["b"], atol=1e-6)
    assert "duration_s" not in floats["meta"]
    _write_images(tmp_path / "again")
    for shard in info.pool("test").shards:
        assert (tmp_path / shard).read_bytes() == (tmp_path / "again" / shard).read_bytes()


def test_writer_refuses_bad_images(tmp_path):
    writer = DatasetWriter(tmp_path, DatasetInfo(name="x", sample_rate=0, stems=["a"], modality="image",
                                                 image_shape=[4, 4]))
    with writer.pool("test", "eval", ["a"]) as pool:
        with pytest.raises(ValueError, match=r"clip 'c0': stem 'a' has shape \(4, 5\), .* are \(4, 4\)"):
            pool.add("c0", {"a": np.zeros((4, 5), np.uint16)})
        with pytest.raises(ValueError, match=r"must lie in \[0, 2.0000\]"):
            pool.add("c1", {"a": np.full((4, 4), 2.5)})
        with pytest.raises(ValueError, match="NaN or inf"):
            pool.add("c2", {"a": np.full((4, 4), np.nan)})
        with pytest.raises(ValueError, match="uint16 .* or float intensities, got uint8"):
            pool.add("c3", {"a": np.zeros((4, 4), np.uint8)})
        pool.add("c0", {"a": np.zeros((4, 4), np.float32)})  # the refused clips left no trace
    assert writer.close().pool("test").clips == 1
    with pytest.raises(ValueError, match="image_shape"):
        DatasetWriter(tmp_path / "y", DatasetInfo(name="y", sample_rate=0, stems=["a"], modality="image"))
    with pytest.raises(ValueError, match="sample_rate must be 0"):
        DatasetWriter(tmp_path / "z", DatasetInfo(name="z", sample_rate=8000, stems=["a"], modality="image",
                                                  image_shape=[4, 4]))
    with pytest.raises(ValueError, match=r"expected a grayscale image of shape \(H, W\)"):
        encode_png(np.zeros((2, 2, 3), np.uint16))


def test_old_dataset_json_without_modality_loads_as_audio(toy_dataset, tmp_path):
    copy = tmp_path / "old"
    shutil.copytree(toy_dataset, copy)
    meta = json.loads((copy / "dataset.json").read_text())
    meta.pop("modality", None)
    meta.pop("image_shape", None)
    (copy / "dataset.json").write_text(json.dumps(meta))
    info = DatasetInfo.load(copy)
    assert info.modality == "audio" and info.image_shape is None and info.shape is None and not info.is_image
    clip = next(read_pool(info, "test"))
    assert clip["mix"].ndim == 1 and len(clip["mix"]) == 8000


def test_bad_modality_fields_in_dataset_json(tmp_path):
    _write_images(tmp_path)
    meta = json.loads((tmp_path / "dataset.json").read_text())
    for change, message in (({"modality": "video"}, "modality 'video' is unknown"),
                            ({"image_shape": None}, r"an image dataset needs image_shape \[H, W\] .*, got None"),
                            ({"image_shape": [6, 0]}, r"an image dataset needs image_shape \[H, W\] of positive"),
                            ({"modality": "audio"}, "image_shape .* given for an audio dataset")):
        (tmp_path / "dataset.json").write_text(json.dumps({**meta, **change}))
        with pytest.raises(DatasetError, match=rf"dataset\.json: {message}"):
            DatasetInfo.load(tmp_path)


def test_corrupt_png_member_names_shard_and_member(tmp_path):
    _write_images(tmp_path)
    name = _rewrite_member(tmp_path / "test/eval/000001.tar", ".a.png", b"\x89PNG\r\n\x1a\n" + b"\x00" * 50)
    with pytest.raises(DatasetError, match=rf"000001\.tar: member {name} is not a decodable PNG"):
        list(read_pool(DatasetInfo.load(tmp_path), "test"))


def test_truncated_png_member_is_an_error(tmp_path):
    _write_images(tmp_path)
    shard = tmp_path / "test/eval/000000.tar"
    with tarfile.open(shard) as tar:
        good = tar.extractfile(next(m for m in tar.getmembers() if m.name.endswith(".b.png"))).read()
    name = _rewrite_member(shard, ".b.png", good[: len(good) // 2])
    with pytest.raises(DatasetError, match=rf"member {name} is not a decodable PNG"):
        list(read_pool(DatasetInfo.load(tmp_path), "test"))


def test_wrong_shape_and_bit_depth_name_the_member(tmp_path):
    _write_images(tmp_path)
    shard = tmp_path / "test/eval/000000.tar"
    name = _rewrite_member(shard, ".mix.png", _png(np.zeros((5, 6), np.uint16)))
    with pytest.raises(DatasetError, match=rf"member {name} is 5x6 \(HxW\) but dataset.json says image_shape \[6, 5\]"):
        list(read_pool(DatasetInfo.load(tmp_path), "test"))
    name = _rewrite_member(shard, ".mix.png", _png(np.zeros((6, 5), np.uint8)))
    with pytest.raises(DatasetError, match=rf"member {name} is a PNG image of mode L; image stems are 16-bit"):
        list(read_pool(DatasetInfo.load(tmp_path), "test"))


def test_modality_mismatch_between_dataset_json_and_shards(tmp_path, toy_dataset):
    _write_images(tmp_path / "img")
    meta = json.loads((tmp_path / "img/dataset.json").read_text())
    meta.update(modality="audio", image_shape=None, sample_rate=8000)
    (tmp_path / "img/dataset.json").write_text(json.dumps(meta))
    mismatch = r"clip clip0 holds image members \[.*'clip0\.mix\.png'\] but dataset.json says modality 'audio'"
    with pytest.raises(DatasetError, match=mismatch):
        list(read_pool(DatasetInfo.load(tmp_path / "img"), "test"))
    shutil.copytree(toy_dataset, tmp_path / "snd")
    meta = json.loads((tmp_path / "snd/dataset.json").read_text())
    meta.update(modality="image", image_shape=[8, 8], sample_rate=0)
    (tmp_path / "snd/dataset.json").write_text(json.dumps(meta))
    with pytest.raises(DatasetError, match=r"holds audio members .*\.flac.* says modality 'image'"):
        list(read_pool(DatasetInfo.load(tmp_path / "snd"), "test"))
    raw = next(iter_tar(DatasetInfo.load(tmp_path / "img").urls("test")[0]))
    with pytest.raises(ValueError, match="no crop"):
        decode_sample(raw, 0, ["mix"], crop=lambda n: (0, n), image_shape=(6, 5))


# ----------------------------------------------------------------------------- the DataModule


def test_training_batches_are_image_stacks_per_pool(digits):
    cfg = DataConfig(root=str(digits), batch_size=4, batches_per_epoch=5, num_workers=2, shuffle_buffer=8)
    pools = {"mixtures": PoolSpec("train", "mixtures", ["mix"]), "observed": PoolSpec("train", "observed", ["texture"]),
             "isolated": PoolSpec("train", "isolated", ["mix", "digit", "texture"])}
    data = SeparationDataModule(cfg, pools)
    assert data.modality == "image" and data.image_shape == (28, 28)
    batches = list(data.train_dataloader())
    assert len(batches) == 5
    for b in batches:
        assert set(b) == {"mixtures", "observed", "isolated"}
        assert b["mixtures"]["mix"].shape == (4, 28, 28) and b["observed"]["texture"].shape == (4, 28, 28)
        iso = b["isolated"]
        assert all(iso[s].dtype == torch.float32 and iso[s].shape == (4, 28, 28) for s in ("mix", "digit", "texture"))
        torch.testing.assert_close(iso["mix"], iso["digit"] + iso["texture"], atol=1e-5, rtol=0)  # gain kept the sum
        assert 0 <= float(iso["mix"].min()) and float(iso["mix"].max()) <= 2.0
        assert float(iso["digit"].amax(dim=(1, 2)).min()) > 0.25  # every image holds a digit (MNIST peaks at 1)


def test_training_images_keep_stored_intensities_without_gain(digits):
    cfg = DataConfig(root=str(digits), batch_size=8, batches_per_epoch=2, num_workers=0, gain_db=[0.0, 0.0])
    data = SeparationDataModule(cfg, {"observed": PoolSpec("train", "observed", ["texture"])})
    batch = torch.cat([b["observed"]["texture"] for b in data.train_dataloader()])
    stored = {tuple(np.round(c["texture"] * IMAGE_SCALE).astype(np.int64).ravel())
              for c in read_pool(DatasetInfo.load(digits), "train", "observed")}
    drawn = {tuple(np.round(x.numpy() * IMAGE_SCALE).astype(np.int64).ravel()) for x in batch}
    assert len(drawn) > 1 and drawn <= stored  # stored images, unchanged (shards are drawn with replacement)


def test_unobserved_digit_cannot_reach_training(digits):
    cfg = DataConfig(root=str(digits), num_workers=0)
    with pytest.raises(DatasetError, match="must never see in training"):
        SeparationDataModule(cfg, {"iso": PoolSpec("train", "isolated", ["mix"])}, forbidden=("digit",))
    SeparationDataModule(cfg, {"mix": PoolSpec("train", "mixtures", ["mix"]),
                               "obs": PoolSpec("train", "observed", ["texture"])}, forbidden=("digit",))


def test_evaluation_is_exact_and_ordered(digits):
    data = SeparationDataModule(DataConfig(root=str(digits), num_workers=2), {})
    batches = list(data.test_dataloader())
    keys = [b["key"][0] for b in batches]
    assert sorted(keys) == [f"test-eval-{i:05d}" for i in range(9)]  # every clip once
    assert keys == [b["key"][0] for b in data.test_dataloader()]  # same order every time
    stored = {c["key"]: c for c in read_pool(DatasetInfo.load(digits), "test")}
    for b in batches:
        assert set(b) == {"key", "meta", "mix", "digit", "texture"}
        assert b["meta"][0] == stored[b["key"][0]]["meta"]
        for stem in ("mix", "digit", "texture"):
            assert b[stem].shape == (1, 28, 28) and b[stem].dtype == torch.float32
            assert np.array_equal(b[stem][0].numpy(), stored[b["key"][0]][stem])
    valid = [b["key"][0] for b in SeparationDataModule(DataConfig(root=str(digits), num_workers=0, valid_clips=5),
                                                       {}).val_dataloader()]
    assert valid == [f"valid-eval-{i:05d}" for i in range(5)]


def test_pool_from_another_folder_must_match_modality_and_shape(digits, toy_dataset, tmp_path):
    data = SeparationDataModule(DataConfig(root=str(digits), num_workers=0), {})
    with pytest.raises(DatasetError, match=r"pool 'noise' is audio data but the dataset .* is image \[28, 28\]"):
        data.set_pool("noise", PoolSpec("train", "observed", ["noise"], root=str(toy_dataset)))
    _write_images(tmp_path / "small", shape=(6, 5))
    with pytest.raises(DatasetError, match=r"pool 'est' is image \[6, 5\] data but the dataset .* is image \[28, 28\]"):
        data.set_pool("est", PoolSpec("test", "eval", ["a"], root=str(tmp_path / "small")))
    # an estimate pool as NES writes one (another folder, same modality and shape) is accepted and read
    index = DatasetInfo(name="estimates", sample_rate=0, stems=["estimate"], modality="image", image_shape=[28, 28])
    writer = DatasetWriter(tmp_path / "est", index, clips_per_shard=3)
    with writer.pool("train", "estimates", ["estimate"]) as pool:
        for c in read_pool(DatasetInfo.load(digits), "train", "mixtures"):
            pool.add(c["key"], {"estimate": c["mix"] * 0.5})
    writer.close()
    data.cfg.batch_size, data.cfg.batches_per_epoch = 3, 2
    data.set_pool("estimates", PoolSpec("train", "estimates", ["estimate"], root=str(tmp_path / "est")))
    batches = list(data.train_dataloader())
    assert len(batches) == 2 and batches[0]["estimates"]["estimate"].shape == (3, 28, 28)
