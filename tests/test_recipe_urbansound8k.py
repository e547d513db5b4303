"""The ``urbansound8k`` recipe, run for real on a tiny fake UrbanSound8K copy with the real layout
(``urban_fakes.py``: short synthetic slices of each class at the rates, bit depths and channel counts the real
files come in, and a real-format ``metadata/UrbanSound8K.csv``, written by the test)."""
from __future__ import annotations

import functools
import itertools
import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
import torchaudio.functional as AF
from music_fakes import clips, tars
from urban_fakes import make_urbansound8k, read_metadata_rows, write_metadata, write_slice

from lightning_sep.data.recipes import RecipeError, option_docs, options_from, urbansound8k
from lightning_sep.data.recipes.urbansound8k import DEFAULT_CLASSES, UrbanDatasetError
from lightning_sep.data.shards import DatasetInfo
from lightning_sep.data.streams import EvalClips

RATE = 16000
COUNTS = ("mixtures_clips=24", "isolated_clips=16", "valid_clips=8", "test_clips=8", "clips_per_shard=10")
STEM_POOLS = ["train/isolated", "valid/eval", "test/eval"]
ALL_POOLS = ["train/mixtures"] + STEM_POOLS
SPLIT_FOLDS = {"train/mixtures": {1, 2, 3, 4, 5, 6}, "train/isolated": {1, 2, 3, 4, 5, 6}, "valid/eval": {7},
               "test/eval": {8}}


def _options(root: Path, seed: int = 3, *extra: str) -> urbansound8k.Options:
    return options_from(urbansound8k, [f"root={root}", "allow_incomplete=true", "clip_seconds=2", *COUNTS, *extra],
                        seed=seed)


def _build(root: Path, out: Path, seed: int = 3, *extra: str) -> DatasetInfo:
    return urbansound8k.build(out, _options(root, seed, *extra), progress=False)


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("us8k")
    root = make_urbansound8k(base / "UrbanSound8K", DEFAULT_CLASSES, per_fold=2)
    roots = {"root": root, "a": base / "seed3-a", "b": base / "seed3-b", "c": base / "seed4"}
    for key, seed in (("a", 3), ("b", 3), ("c", 4)):
        _build(root, roots[key], seed)
    return roots


def test_same_seed_gives_byte_identical_shards_other_seed_other_clips(built):
    a, b, c = built["a"], built["b"], built["c"]
    assert tars(a) == tars(b) and len(tars(a)) == 3 + 2 + 1 + 1  # 24, 16, 8, 8 clips at 10 per shard
    for rel in tars(a):
        assert (a / rel).read_bytes() == (b / rel).read_bytes(), rel
    assert (a / "dataset.json").read_bytes() == (b / "dataset.json").read_bytes()
    assert (a / "test/eval/000000.tar").read_bytes() != (c / "test/eval/000000.tar").read_bytes()
    assert not list(a.glob(".slices-*"))  # the temporary slice cache is gone


def test_pools_members_and_dataset_json(built):
    info = DatasetInfo.load(built["a"])
    assert info.name == "urbansound8k" and info.sample_rate == RATE
    assert info.stems == info.classes == list(DEFAULT_CLASSES)
    assert info.observed is None and info.unobserved is None
    stems = sorted([f"{c}.flac" for c in DEFAULT_CLASSES] + ["mix.flac", "json"])
    for pool in ALL_POOLS:
        found = clips(built["a"], pool)
        want = ["json", "mix.flac"] if pool == "train/mixtures" else stems
        assert len(found) == info.pool(*pool.split("/")).clips > 0
        assert all([m for m in c["members"] if not m.startswith("__")] == want for c in found), pool
        assert all(len(c["mix"]) == 2 * RATE for c in found)
    made = info.made_by
    assert made["recipe"] == "urbansound8k" and made["version"] == urbansound8k.VERSION and made["seed"] == 3
    assert made["source"]["complete"] is False and made["source"]["slices_found"] == 8 * 11
    assert made["source"]["folds"] == {"train": [1, 2, 3, 4, 5, 6], "valid": [7], "test": [8]}
    assert info.licences[0]["licence"] == "CC-BY-NC-3.0"
    assert info.stats["slices"]["train"] == {c: 12 for c in DEFAULT_CLASSES}
    rates: dict[str, int] = {}
    for r in read_metadata_rows(built["root"]):  # what the files say, read here with soundfile
        if r[7] in DEFAULT_CLASSES:
            rate = str(sf.info(built["root"] / "audio" / f"fold{r[5]}" / r[0]).samplerate)
            rates[rate] = rates.get(rate, 0) + 1
    assert info.stats["source_rates"] == dict(sorted(rates.items(), key=lambda kv: int(kv[0])))
    assert sum(rates.values()) == 80 and len(rates) == 4
    assert info.stats["left_out_slices"] == []


def test_mix_is_the_exact_sum_and_labels_events_and_stems_agree(built):
    n = 2 * RATE
    for pool in ALL_POOLS:
        for c in clips(built["a"], pool):
            meta = c["meta"]
            labels, events = meta["labels"], meta["events"]
            assert 1 <= meta["n_events"] == len(events) == len(labels) <= 3  # distinct classes
            assert labels == [k for k in DEFAULT_CLASSES if k in {e[0] for e in events}]
            assert events == sorted(events, key=lambda e: (e[1], e[0]))
            assert all(0 <= e[1] < e[2] <= 2.0 for e in events)
            assert [e["slice"] for e in meta["source"]["events"]]  # where every event came from
            if pool == "train/mixtures":
                assert set(c) >= {"mix"} and not set(DEFAULT_CLASSES) & set(c)
                continue
            total = sum(c[k].astype(np.int32) for k in DEFAULT_CLASSES)
            assert np.array_equal(c["mix"].astype(np.int32), total), c["key"]
            for k in DEFAULT_CLASSES:
                if k not in labels:
                    assert not c[k].any(), (c["key"], k)  # absent class: a silent stem
                    continue
                src = next(e for e in meta["source"]["events"] if e["label"] == k)
                at, stop = round(src["at_s"] * RATE), round((src["at_s"] + src["to_s"] - src["from_s"]) * RATE)
                assert stop - at == round(src["to_s"] * RATE) - round(src["from_s"] * RATE)  # sample-exact times
                nonzero = np.flatnonzero(c[k])
                assert at <= nonzero[0] and nonzero[-1] < min(stop, n)  # the event lies where the metadata says
                on, off = round(src["onset_s"] * RATE), round(src["offset_s"] * RATE)
                assert at <= on < off <= stop and np.abs(c[k][on: on + 160]).max() > 0


@functools.lru_cache(maxsize=128)
def _reference(root: Path, rel: str) -> np.ndarray:
    """The slice as the recipe should read it, computed here independently: channel mean, torchaudio's resample to
    16 kHz, DC removed."""
    audio, rate = sf.read(root / "audio" / rel, dtype="float64", always_2d=True)
    y = AF.resample(torch.from_numpy(audio.mean(axis=1)), rate, RATE).numpy()
    return y - y.mean()


def test_events_are_the_resampled_slices_at_their_levels(built):
    root, rates = built["root"], set()
    for pool in ("valid/eval", "test/eval"):
        for c in clips(built["a"], pool):
            meta = c["meta"]
            for e in meta["source"]["events"]:
                ref = _reference(root, e["slice"])
                at = round(e["at_s"] * RATE)
                got = c[e["label"]][at: at + len(ref)].astype(np.float64) / 32768
                assert len(got) == len(ref)  # the whole slice: 0.7-1.5 s fit the 2 s clip
                gain = np.dot(got, ref) / np.dot(ref, ref)
                residual = got - gain * ref
                assert 10 * np.log10(np.sum(got**2) / np.sum(residual**2)) > 40, (c["key"], e["slice"])
                on, off = round(e["onset_s"] * RATE), round(e["offset_s"] * RATE)
                level = 10 * np.log10(np.mean((c[e["label"]][on:off] / 32768.0) ** 2))
                assert abs(level - (e["level_db"] + meta["scale_db"])) < 0.1
                assert -32 <= e["level_db"] <= -20
                rates.add(e["source_rate"])
    assert rates == {8000, 22050, 44100, 48000}  # up- and downsampled, mono and stereo sources


def test_clips_shorter_than_a_slice_take_sounding_excerpts(built, tmp_path):
    _build(built["root"], tmp_path / "short", 5, "clip_seconds=0.5", "sample_rate=8000")
    for c in clips(tmp_path / "short", "test/eval"):
        assert len(c["mix"]) == 4000
        for e in c["meta"]["source"]["events"]:
            assert e["at_s"] == 0.0 and round((e["to_s"] - e["from_s"]) * 8000) == 4000  # slices are 0.7-1.5 s
            audio, rate = sf.read(built["root"] / "audio" / e["slice"], dtype="float64", always_2d=True)
            ref = AF.resample(torch.from_numpy(audio.mean(axis=1)), rate, 8000).numpy()
            ref = (ref - ref.mean())[round(e["from_s"] * 8000): round(e["to_s"] * 8000)]
            got = c[e["label"]].astype(np.float64)
            gain = np.dot(got, ref) / np.dot(ref, ref)
            assert 10 * np.log10(np.sum(got**2) / np.sum((got - gain * ref) ** 2)) > 40, e["slice"]


def test_splits_are_whole_folds_and_recording_disjoint(built):
    rows = read_metadata_rows(built["root"])
    fs_of = {r[0]: int(r[1]) for r in rows}
    recordings = {}
    for pool in ALL_POOLS:
        found = clips(built["a"], pool)
        events = [e for c in found for e in c["meta"]["source"]["events"]]
        assert {e["fold"] for e in events} <= SPLIT_FOLDS[pool], pool
        assert all(e["slice"] == f"fold{e['fold']}/{e['slice'].split('/')[1]}" for e in events)
        assert all(fs_of[e["slice"].split("/")[1]] == e["fsID"] for e in events)
        recordings[pool] = {e["fsID"] for e in events}
    for p, q in itertools.combinations(["train/mixtures", "valid/eval", "test/eval"], 2):
        assert not recordings[p] & recordings[q], (p, q)
    assert not (recordings["train/isolated"] & (recordings["valid/eval"] | recordings["test/eval"]))


def test_labels_reach_the_data_module_as_multi_hot(built):
    info = DatasetInfo.load(built["a"])
    metas = {c["key"]: c["meta"]["labels"] for c in clips(built["a"], "test/eval")}
    seen = 0
    for batch in EvalClips(info, "test", None, 0, 1):
        want = [float(k in metas[batch["key"][0]]) for k in DEFAULT_CLASSES]
        assert batch["labels"].tolist() == [want] and batch["mix"].shape == (1, 2 * RATE)
        seen += 1
    assert seen == 8


def test_foreground_only_subset_and_all_classes(built, tmp_path):
    _build(built["root"], tmp_path / "fg", 0, "salience=foreground", "classes=siren,car_horn", "events_max=2",
           "sample_rate=8000")
    info = DatasetInfo.load(tmp_path / "fg")
    assert info.classes == info.stems == ["car_horn", "siren"]  # in classID order
    events = [e for p in ALL_POOLS for c in clips(tmp_path / "fg", p) for e in c["meta"]["source"]["events"]]
    assert events and all(e["salience"] == 1 and e["label"] in ("car_horn", "siren") for e in events)
    assert info.stats["slices"]["train"] == {"car_horn": 6, "siren": 6}
    with pytest.raises(UrbanDatasetError, match="no slice of class 'children_playing' in train_folds='1-6'"):
        _build(built["root"], tmp_path / "all", 0, "classes=all")


def test_silent_slice_is_left_out_and_listed(tmp_path):
    root = make_urbansound8k(tmp_path / "UrbanSound8K", ("car_horn", "siren"), per_fold=2)
    rows = read_metadata_rows(root)
    silent = next(r for r in rows if r[5] == "1" and r[7] == "siren")
    write_slice(root / "audio" / "fold1" / silent[0], "siren", 1.0, (44100, "PCM_16", 1), 0, silent=True)
    info = _build(root, tmp_path / "out", 0, "classes=car_horn,siren", "events_max=2", "sample_rate=8000")
    assert [x["slice"] for x in info.stats["left_out_slices"]] == [f"fold1/{silent[0]}"]
    used = {e["slice"] for p in ALL_POOLS for c in clips(tmp_path / "out", p) for e in c["meta"]["source"]["events"]}
    assert f"fold1/{silent[0]}" not in used


# ----------------------------------------------------------------------------- errors


@pytest.fixture()
def small(tmp_path) -> Path:
    return make_urbansound8k(tmp_path / "UrbanSound8K", ("car_horn", "dog_bark"))


def _fails(root: Path, out: Path, *extra: str) -> str:
    with pytest.raises(UrbanDatasetError) as e:
        _build(root, out, 0, "classes=car_horn,dog_bark", "events_max=2", *extra)
    return str(e.value)


def test_missing_root_metadata_folds_and_files_are_named(tmp_path, small):
    with pytest.raises(ValueError, match="root is required"):
        urbansound8k.build(tmp_path / "out", urbansound8k.Options(), progress=False)
    assert f"root={tmp_path / 'nowhere'}: no such folder" in _fails(tmp_path / "nowhere", tmp_path / "out")
    assert f"did you mean root={small}" in _fails(tmp_path, tmp_path / "out")  # one folder too high
    shutil.rmtree(small / "audio" / "fold7")
    msg = _fails(small, tmp_path / "out")
    assert f"{small / 'audio' / 'fold7'} is missing (valid_folds uses fold 7)" in msg and "fold1..fold10" in msg
    gone = small / "audio" / "fold8" / next(r[0] for r in read_metadata_rows(small) if r[5:8] == ["8", "3", "dog_bark"])
    make_urbansound8k(small, ("car_horn", "dog_bark"))
    gone.unlink()
    msg = _fails(small, tmp_path / "out")
    assert f"{gone} is missing (1 of the slices" in msg and "UrbanSound8K.tar.gz" in msg
    (small / "metadata" / "UrbanSound8K.csv").unlink()
    msg = _fails(small, tmp_path / "out")
    assert f"{small / 'metadata' / 'UrbanSound8K.csv'} is missing" in msg and "ROOT/audio/fold1..fold10/" in msg
    assert not (tmp_path / "out").exists()  # nothing written before the checks


def test_bad_metadata_rows_name_the_file_and_line(tmp_path, small):
    csv_path = small / "metadata" / "UrbanSound8K.csv"
    rows = read_metadata_rows(small)
    bad = [list(r) for r in rows]
    bad[4][7] = "helicopter"
    write_metadata(small, bad)
    msg = _fails(small, tmp_path / "out")
    assert f"{csv_path}, line 6: class 'helicopter' is not one of UrbanSound8K's 10 classes" in msg
    assert "air_conditioner, car_horn" in msg
    bad = [list(r) for r in rows]
    bad[2][6] = "9"
    write_metadata(small, bad)
    assert f"{csv_path}, line 4: classID 9 does not belong to class" in _fails(small, tmp_path / "out")
    bad = [list(r) for r in rows]
    moved = next(i for i, r in enumerate(bad) if r[5] == "7")
    bad[moved][1] = bad[0][1]  # a fold-7 slice claims the recording of a fold-1 slice
    bad[moved][0] = f"{bad[0][1]}-{bad[moved][6]}-0-5.wav"
    (small / "audio" / "fold7" / rows[moved][0]).rename(small / "audio" / "fold7" / bad[moved][0])
    write_metadata(small, bad)
    msg = _fails(small, tmp_path / "out")
    assert f"line {moved + 2}: slices of Freesound recording fsID {bad[0][1]} are in the train and the valid" in msg
    csv_path.write_text("name,fold\nx.wav,1\n")
    assert "line 1 must be the header slice_file_name,fsID,start,end" in _fails(small, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_unreadable_slice_and_incomplete_copy(tmp_path, small):
    with pytest.raises(UrbanDatasetError, match=r"lists 24 slices \(expected 8732\).*allow_incomplete=true"):
        urbansound8k.build(tmp_path / "out", options_from(urbansound8k, [f"root={small}", "classes=car_horn,dog_bark",
                                                                         "events_max=2"]), progress=False)
    victim = small / "audio" / "fold3" / read_metadata_rows(small)[7][0]
    victim.write_bytes(b"RIFF\x00\x00\x00\x00WAVEnot really audio")
    msg = _fails(small, tmp_path / "out")
    assert f"{victim}: not readable as audio" in msg and "UrbanSound8K.tar.gz" in msg
    assert not (tmp_path / "out" / "dataset.json").exists()  # a failed build never leaves a valid dataset


def test_option_errors_name_the_option(small):
    def bad(*extra: str) -> str:
        with pytest.raises(ValueError) as e:
            urbansound8k.validate(options_from(urbansound8k, [f"root={small}", *extra]))
        return str(e.value)

    msg = bad("classes=car_horn,helicopter")
    assert "unknown class 'helicopter'" in msg and "valid classes: air_conditioner, car_horn" in msg
    assert "fold 7 is in both train_folds='1-7' and valid_folds='7'" in bad("train_folds=1-7")
    assert "fold 11 does not exist" in bad("test_folds=11")
    assert "test_folds='x' is not a fold list" in bad("test_folds=x")
    assert "events_max=3 exceeds the 2 classes" in bad("classes=siren,car_horn")
    for option, name in (("salience=loud", "salience"), ("sample_rate=96000", "sample_rate"),
                         ("events_min=0", "events_min"), ("event_db_max=0", "event_db_max"),
                         ("valid_clips=0", "valid_clips"), ("clip_seconds=0.1", "clip_seconds")):
        assert name in bad(option)


def test_options_contract():
    docs = option_docs(urbansound8k)
    assert all("  " in doc and doc.split("  ", 1)[1] for doc in docs.values()), docs  # every option documented
    assert urbansound8k.NAME == "urbansound8k" and isinstance(urbansound8k.VERSION, int)
    assert urbansound8k.DEBIAN_PACKAGES == []
    o = urbansound8k.Options()
    assert (o.sample_rate, o.clip_seconds, o.events_min, o.events_max) == (16000, 4.0, 1, 3)
    assert (o.train_folds, o.valid_folds, o.test_folds) == ("1-6", "7", "8")
    assert urbansound8k.parse_classes(o.classes, urbansound8k.CLASSES) == DEFAULT_CLASSES
    assert urbansound8k.parse_folds("1,3,5-6", "train_folds") == (1, 3, 5, 6)
    with pytest.raises(RecipeError, match="valid options: root, seed"):
        options_from(urbansound8k, ["roots=/x"])
