"""The shard format and the DataModule: contents, batches, bad input, and 2-process DDP."""
from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from conftest import REPO, build_toy_dataset

from lightning_sep.data.datamodule import SeparationDataModule
from lightning_sep.data.shards import DatasetError, DatasetInfo, decode_sample, iter_tar, read_pool
from lightning_sep.data.streams import DataConfig, PoolSpec


@pytest.fixture
def toy_copy(toy_dataset, tmp_path) -> Path:
    """A private copy of the toy dataset that a test may damage."""
    dst = tmp_path / "copy"
    shutil.copytree(toy_dataset, dst)
    return dst


def _tar_members(path: Path) -> list[str]:
    with tarfile.open(path) as tar:
        return tar.getnames()


# ----------------------------------------------------------------------------- format


def test_dataset_json_lists_every_pool_with_counts(toy_dataset):
    info = DatasetInfo.load(toy_dataset)
    assert info.sample_rate == 8000 and info.observed == "noise" and info.unobserved == "speech"
    iso = info.pool("train", "isolated")
    assert iso.clips == 23 and iso.seconds == pytest.approx(23.0) and len(iso.shards) == 5
    assert sum(1 for _ in read_pool(info, "test")) == info.pool("test").clips == 9


def test_semi_supervised_pools_hold_only_their_stems(toy_dataset):
    info = DatasetInfo.load(toy_dataset)
    for pool, allowed in (("mixtures", {"mix"}), ("observed", {"noise"})):
        for url in info.urls("train", pool):
            suffixes = {name.split(".", 1)[1] for name in _tar_members(Path(url))}
            assert suffixes == {"json"} | {f"{s}.flac" for s in allowed}, url


def test_mixture_is_the_sum_of_its_stems(toy_dataset):
    clip = next(read_pool(DatasetInfo.load(toy_dataset), "test"))
    np.testing.assert_allclose(clip["mix"], clip["speech"] + clip["noise"], atol=1e-6)


def test_writer_refuses_a_stem_the_pool_must_not_hold(tmp_path):
    from lightning_sep.data.shards import DatasetWriter

    writer = DatasetWriter(tmp_path, DatasetInfo(name="x", sample_rate=8000, stems=["speech", "noise"]))
    with writer.pool("train", "mixtures", ["mix"]) as pool, pytest.raises(ValueError, match="holds stems"):
        pool.add("a", {"mix": np.zeros(10, np.int16), "speech": np.zeros(10, np.int16)})


def test_shards_are_byte_identical_across_builds(tmp_path):
    a = build_toy_dataset(tmp_path / "a", seed=3)
    build_toy_dataset(tmp_path / "b", seed=3)
    for shard in a.pool("train", "isolated").shards:
        assert (tmp_path / "a" / shard).read_bytes() == (tmp_path / "b" / shard).read_bytes()


# ----------------------------------------------------------------------------- bad input


def test_truncated_tar_names_the_shard(toy_copy):
    shard = toy_copy / "test/eval/000000.tar"
    shard.write_bytes(shard.read_bytes()[:3000])
    with pytest.raises(DatasetError, match=r"000000\.tar.*truncated or corrupt"):
        list(read_pool(DatasetInfo.load(toy_copy), "test"))


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


def test_corrupt_flac_member_names_shard_and_member(toy_copy):
    shard = toy_copy / "valid/eval/000000.tar"
    name = _rewrite_member(shard, ".speech.flac", b"fLaC" + b"\x00" * 200)
    with pytest.raises(DatasetError, match=rf"000000\.tar: member {name} is not decodable"):
        list(read_pool(DatasetInfo.load(toy_copy), "valid"))


def test_wrong_sample_rate_names_the_member(toy_copy):
    shard = toy_copy / "test/eval/000001.tar"
    buf = io.BytesIO()
    sf.write(buf, np.zeros(16000, np.int16), 16000, format="FLAC")
    name = _rewrite_member(shard, ".noise.flac", buf.getvalue())
    with pytest.raises(DatasetError, match=rf"{name} is at 16000 Hz but dataset.json says 8000 Hz"):
        list(read_pool(DatasetInfo.load(toy_copy), "test"))


def test_stereo_member_is_refused(toy_copy):
    shard = toy_copy / "test/eval/000001.tar"
    buf = io.BytesIO()
    sf.write(buf, np.zeros((8000, 2), np.int16), 8000, format="FLAC")
    _rewrite_member(shard, ".mix.flac", buf.getvalue())
    with pytest.raises(DatasetError, match="has 2 channels"):
        list(read_pool(DatasetInfo.load(toy_copy), "test"))


def test_missing_shard_listed_in_dataset_json(toy_copy):
    (toy_copy / "train/observed/000002.tar").unlink()
    info = DatasetInfo.load(toy_copy)
    with pytest.raises(DatasetError, match=r"train/observed/000002\.tar: shard listed in .*dataset\.json is missing"):
        info.urls("train", "observed")


def test_unknown_format_version(toy_copy):
    meta = json.loads((toy_copy / "dataset.json").read_text())
    meta["version"] = 99
    (toy_copy / "dataset.json").write_text(json.dumps(meta))
    with pytest.raises(DatasetError, match="format version 99, this lightning_sep reads version 1"):
        DatasetInfo.load(toy_copy)


def test_missing_dataset_says_how_to_build_it(tmp_path):
    with pytest.raises(DatasetError, match="lightning-sep prepare"):
        DatasetInfo.load(tmp_path / "nowhere")


def test_unknown_label_is_an_error(tmp_path):
    from lightning_sep.data.shards import DatasetWriter

    info = DatasetInfo(name="x", sample_rate=8000, stems=["dog", "siren"], classes=["dog", "siren"])
    writer = DatasetWriter(tmp_path, info)
    with writer.pool("test", "eval", ["mix", "dog", "siren"]) as pool:
        z = np.zeros(800, np.int16)
        pool.add("c0", {"mix": z, "dog": z, "siren": z}, {"labels": ["dog", "unicorn"]})
    writer.close()
    data = SeparationDataModule(DataConfig(root=str(tmp_path), num_workers=0), {})
    with pytest.raises(DatasetError, match="label 'unicorn' is not among the dataset's classes"):
        list(data.test_dataloader())


# ----------------------------------------------------------------------------- the DataModule


def test_training_batches_are_fixed_size_dicts_per_pool(toy_dataset):
    cfg = DataConfig(root=str(toy_dataset), segment_seconds=0.5, batch_size=4, batches_per_epoch=5, num_workers=2)
    pools = {"observed": PoolSpec("train", "observed", ["noise"]), "isolated": PoolSpec("train", "isolated",
                                                                                       ["mix", "speech", "noise"])}
    data = SeparationDataModule(cfg, pools)
    batches = list(data.train_dataloader())
    assert len(batches) == 5  # exactly batches_per_epoch, split over the 2 workers
    for b in batches:
        assert set(b) == {"observed", "isolated"}
        assert b["observed"]["noise"].shape == (4, 4000) and b["observed"]["noise"].dtype == torch.float32
        iso = b["isolated"]
        torch.testing.assert_close(iso["mix"], iso["speech"] + iso["noise"], atol=1e-5, rtol=0)  # gain kept mix=sum


def test_training_crops_vary_between_epochs(toy_dataset):
    cfg = DataConfig(root=str(toy_dataset), segment_seconds=0.5, batch_size=2, batches_per_epoch=2, num_workers=1)
    loader = SeparationDataModule(cfg, {"o": PoolSpec("train", "observed", ["noise"])}).train_dataloader()
    first, second = [torch.cat([b["o"]["noise"].float() for b in loader]) for _ in range(2)]
    assert not torch.equal(first, second)


def _parent_pid(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])


def test_workers_start_from_a_forkserver_with_the_same_batches_as_fork(toy_dataset):
    """Workers forked from the training process can deadlock when it has threads; the default starts them from a
    clean server instead, and that must not change what they draw."""
    pools = {"o": PoolSpec("train", "observed", ["noise"])}
    drawn, parents = {}, {}
    for start in ("forkserver", "fork"):
        cfg = DataConfig(root=str(toy_dataset), segment_seconds=0.5, batch_size=2, batches_per_epoch=4,
                         num_workers=2, worker_start=start)
        torch.manual_seed(0)  # the loader's base seed for its workers
        loader = SeparationDataModule(cfg, pools, seed=3).train_dataloader()
        batches = iter(loader)
        drawn[start] = torch.cat([b["o"]["noise"] for b in batches])
        parents[start] = {_parent_pid(w.pid) for w in batches._workers}
        batches._shutdown_workers()
    torch.testing.assert_close(drawn["forkserver"], drawn["fork"], atol=0, rtol=0)
    assert parents["fork"] == {os.getpid()}
    assert len(parents["forkserver"]) == 1 and os.getpid() not in parents["forkserver"]


@pytest.mark.parametrize("start", ["forkserver", "fork"])
def test_workers_end_when_the_training_process_is_killed(toy_dataset, start):
    """SIGKILL (the OOM killer, a preempted job) leaves no loader worker or fork server behind."""
    program = (
        "import sys\n"
        "from lightning_sep.data.datamodule import SeparationDataModule\n"
        "from lightning_sep.data.streams import DataConfig, PoolSpec\n"
        f"cfg = DataConfig(root={str(toy_dataset)!r}, segment_seconds=0.5, batch_size=2, batches_per_epoch=1000, "
        f"num_workers=2, worker_start={start!r})\n"
        "pools = {'o': PoolSpec('train', 'observed', ['noise'])}\n"
        "batches = iter(SeparationDataModule(cfg, pools).train_dataloader())\n"
        "next(batches)\n"
        "print(*[w.pid for w in batches._workers], flush=True)\n"
        "sys.stdin.read()\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", program], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                            cwd=REPO)
    workers = [int(pid) for pid in proc.stdout.readline().split()]
    assert len(workers) == 2
    helpers = {_parent_pid(pid) for pid in workers} - {proc.pid}  # the fork server, if there is one
    proc.kill()
    proc.wait(timeout=30)
    survivors = workers + sorted(helpers)
    deadline = time.time() + 30
    while survivors and time.time() < deadline:
        time.sleep(0.5)
        survivors = [pid for pid in survivors if Path(f"/proc/{pid}").exists() and
                     Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"]
    assert not survivors, f"still running 30 s after the training process was killed: {survivors}"


def test_mistyped_worker_start_is_refused(toy_dataset):
    with pytest.raises(ValueError, match="data.worker_start: 'spwan'"):
        SeparationDataModule(DataConfig(root=str(toy_dataset), worker_start="spwan"), {})


def test_unobserved_stem_cannot_reach_training(toy_dataset):
    cfg = DataConfig(root=str(toy_dataset))
    with pytest.raises(DatasetError, match="must never see in training"):
        SeparationDataModule(cfg, {"iso": PoolSpec("train", "isolated", ["mix"])}, forbidden=("speech",))
    with pytest.raises(DatasetError, match="needs stems"):
        SeparationDataModule(cfg, {"mix": PoolSpec("train", "mixtures", ["speech"])})


def test_evaluation_is_exact_and_ordered(toy_dataset):
    data = SeparationDataModule(DataConfig(root=str(toy_dataset), num_workers=2), {})
    keys = [b["key"][0] for b in data.test_dataloader()]
    assert sorted(keys) == [f"test-eval-{i:04d}" for i in range(9)]
    assert keys == [b["key"][0] for b in data.test_dataloader()]  # same order every time


def test_ddp_two_processes_equal_steps_and_exact_evaluation(toy_dataset, tmp_path):
    """2-process gloo DDP over pools of 5 shards (not divisible by 2 ranks x 2 workers): no hang, exact eval."""
    proc = subprocess.run([sys.executable, str(REPO / "tests/scripts/ddp_data_probe.py"), str(toy_dataset),
                           str(tmp_path)], capture_output=True, text=True, timeout=300, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [r["world"] for r in ranks] == [2, 2]
    assert ranks[0]["train_batches"] == ranks[1]["train_batches"] == 7
    for split, n, field in (("test", 9, "test_keys"), ("valid", 7, "val_keys")):
        keys = ranks[0][field] + ranks[1][field]
        assert sorted(keys) == [f"{split}-eval-{i:04d}" for i in range(n)], field  # each clip once overall


def test_raw_samples_group_members_by_key(toy_dataset):
    info = DatasetInfo.load(toy_dataset)
    raw = next(iter_tar(info.urls("test")[0]))
    assert {"json", "mix.flac", "speech.flac", "noise.flac"} <= set(raw)
    clip = decode_sample(raw, 8000, ["mix"])
    assert set(clip) == {"key", "meta", "mix"} and clip["mix"].dtype == np.float32
