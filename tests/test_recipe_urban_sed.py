"""The ``urban-sed`` recipe, run for real on a tiny fake URBAN-SED copy with the real layout (``urban_fakes.py``:
10 s 44.1 kHz soundscapes of Brownian noise and tones with tab-separated annotations, written by the test)."""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
import torchaudio.functional as AF
from music_fakes import clips, tars
from urban_fakes import make_urban_sed, write_soundscape

from lightning_sep.data.recipes import RecipeError, option_docs, options_from, urban_sed
from lightning_sep.data.recipes.urbansound8k import CLASSES, UrbanDatasetError
from lightning_sep.data.shards import DatasetError, DatasetInfo
from lightning_sep.data.streams import EvalClips

RATE = 16000
POOLS = {"train/mixtures": "train", "valid/eval": "validate", "test/eval": "test"}
SOUNDSCAPES = {
    "train": {
        "soundscape_train_bimodal0": [(0.5, 3.2, "dog_bark"), (2.0, 6.5, "siren"), (7.25, 10.0, "car_horn")],
        "soundscape_train_bimodal1": [(1.0, 2.0, "gun_shot")],  # silent after 2 s: chunks without events
        "soundscape_train_uniform0": [(4.0, 9.0, "jackhammer"), (4.5, 5.5, "air_conditioner")],
        "soundscape_train_unimodal0": [(0.0, 10.0, "street_music"), (3.3, 4.4, "dog_bark")],
    },
    "validate": {
        "soundscape_validate_bimodal0": [(0.25, 1.75, "children_playing"), (6.0, 8.0, "drilling")],
        "soundscape_validate_uniform0": [(2.4, 2.6, "engine_idling"), (2.5, 7.6, "siren")],
    },
    "test": {
        "soundscape_test_bimodal0": [(5.0, 7.5, "car_horn"), (9.0, 9.5, "gun_shot")],
        "soundscape_test_unimodal0": [(1.0, 4.0, "air_conditioner"), (3.0, 3.5, "dog_bark")],
    },
}


def _build(root: Path, out: Path, seed: int = 3, *extra: str) -> DatasetInfo:
    options = options_from(urban_sed, [f"root={root}", "allow_incomplete=true", "clips_per_shard=3", *extra],
                           seed=seed)
    return urban_sed.build(out, options, progress=False)


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("urban-sed")
    root = make_urban_sed(base / "URBAN-SED_v2.0.0", SOUNDSCAPES)
    roots = {"root": root, "a": base / "seed3-a", "b": base / "seed3-b", "c": base / "seed1", "chunks": base / "2.5s"}
    _build(root, roots["a"], 3)
    _build(root, roots["b"], 3)
    _build(root, roots["c"], 1, "sample_rate=8000")  # only its training order is compared
    _build(root, roots["chunks"], 3, "clip_seconds=2.5")
    return roots


def _annotated(folder: str, name: str) -> list[list]:
    return sorted([[label, round(on, 4), round(off, 4)] for on, off, label in SOUNDSCAPES[folder][name]],
                  key=lambda e: (e[1], e[0]))


def test_same_seed_gives_byte_identical_shards_other_seed_other_order(built):
    a, b = built["a"], built["b"]
    assert tars(a) == tars(b) and len(tars(a)) == 2 + 1 + 1  # 4, 2, 2 clips at 3 per shard
    for rel in tars(a):
        assert (a / rel).read_bytes() == (b / rel).read_bytes(), rel
    assert (a / "dataset.json").read_bytes() == (b / "dataset.json").read_bytes()
    order = {k: [c["meta"]["source"]["soundscape"] for c in clips(built[k], "train/mixtures")] for k in "ac"}
    assert sorted(order["a"]) == sorted(order["c"]) == sorted(SOUNDSCAPES["train"]) and order["a"] != order["c"]
    assert [c["meta"]["source"]["soundscape"] for c in clips(a, "test/eval")] == sorted(SOUNDSCAPES["test"])


def test_pools_hold_mix_only_and_dataset_json_says_there_are_no_references(built):
    info = DatasetInfo.load(built["a"])
    assert info.name == "urban-sed" and info.sample_rate == RATE
    assert info.stems == info.classes == list(CLASSES) and info.observed is None
    assert sorted(f"{s}/{p}" for s, pools in info.splits.items() for p in pools) == sorted(POOLS)
    for pool in POOLS:
        assert info.pool(*pool.split("/")).members == ["mix"]
        assert all(c["members"] == ["__key__", "__url__", "json", "mix.flac"] for c in clips(built["a"], pool))
    assert info.stats["pools_without_stems"] == list(POOLS)
    assert "no isolated sources" in info.stats["separation_references"]
    assert info.licences[0]["licence"] == "CC-BY-4.0" and info.made_by["source"]["complete"] is False
    assert info.made_by["source"]["soundscapes_found"] == {"train": 4, "validate": 2, "test": 2}
    assert info.stats["source_rates"] == {"44100": 8}
    # scoring separation needs references: asking for the class stems is a clear error, the mix and labels load
    with pytest.raises(DatasetError, match="lacks stems"):
        next(iter(EvalClips(info, "test", None, 0, 1)))
    batch = next(iter(EvalClips(info, "test", None, 0, 1, stems=["mix"])))
    want = [float(c in ("car_horn", "gun_shot")) for c in CLASSES]  # soundscape_test_bimodal0
    assert batch["labels"].tolist() == [want] and batch["mix"].shape == (1, 10 * RATE)


def test_whole_soundscapes_are_the_resampled_files_with_their_annotations(built):
    root = built["root"]
    for pool, folder in POOLS.items():
        found = clips(built["a"], pool)
        assert len(found) == len(SOUNDSCAPES[folder])
        for c in found:
            meta, name = c["meta"], c["meta"]["source"]["soundscape"]
            assert meta["source"]["audio"] == f"audio/{folder}/{name}.wav"
            assert meta["source"]["annotation"] == f"annotations/{folder}/{name}.txt"
            assert meta["whole_soundscape"] and meta["source"]["start_s"] == 0.0 and meta["gain_db"] == 0.0
            assert meta["events"] == _annotated(folder, name) and meta["n_events"] == len(meta["events"])
            assert meta["labels"] == [k for k in CLASSES if k in {e[0] for e in meta["events"]}]
            audio, rate = sf.read(root / meta["source"]["audio"], dtype="float64")
            assert rate == 44100 and meta["source"]["source_rate"] == 44100
            want = np.round(AF.resample(torch.from_numpy(audio), 44100, RATE).numpy() * 32768)
            assert len(c["mix"]) == len(want) == 10 * RATE
            assert np.abs(c["mix"] - want).max() <= 1, name
    overlap = next(c for c in clips(built["a"], "train/mixtures")
                   if c["meta"]["source"]["soundscape"] == "soundscape_train_bimodal0")["meta"]["overlap_s"]
    assert overlap == pytest.approx(1.2, abs=1e-3)  # dog_bark and siren sound together from 2.0 to 3.2 s


def test_chunks_clip_events_and_cover_the_soundscape(built):
    whole = {c["meta"]["source"]["soundscape"]: c for p in POOLS for c in clips(built["a"], p)}
    parts: dict[str, list[dict]] = {}
    for pool in POOLS:
        for c in clips(built["chunks"], pool):
            assert len(c["mix"]) == 2.5 * RATE and not c["meta"]["whole_soundscape"]
            parts.setdefault(c["meta"]["source"]["soundscape"], []).append(c)
    assert set(parts) == set(whole)
    for name, chunks in parts.items():
        assert [c["meta"]["source"]["start_s"] for c in chunks] == [0.0, 2.5, 5.0, 7.5]
        assert np.array_equal(np.concatenate([c["mix"] for c in chunks]), whole[name]["mix"])  # same audio
        for c in chunks:
            start = c["meta"]["source"]["start_s"]
            for label, on, off in c["meta"]["events"]:
                assert 0 <= on < off <= 2.5
                assert any(label == e[0] and e[1] <= start + on + 1e-4 and start + off - 1e-4 <= e[2]
                           for e in whole[name]["meta"]["events"])
            assert c["meta"]["labels"] == [k for k in CLASSES if k in {e[0] for e in c["meta"]["events"]}]
    siren = [(c["meta"]["source"]["start_s"], [e for e in c["meta"]["events"] if e[0] == "siren"])
             for c in parts["soundscape_train_bimodal0"]]
    assert siren == [(0.0, [["siren", 2.0, 2.5]]), (2.5, [["siren", 0.0, 2.5]]), (5.0, [["siren", 0.0, 1.5]]),
                     (7.5, [])]  # 2.0-6.5 s split over three chunks
    gun = [c["meta"]["labels"] for c in parts["soundscape_train_bimodal1"]]
    assert gun == [["gun_shot"], [], [], []]  # chunks with only the background have no labels
    info = DatasetInfo.load(built["chunks"])
    assert info.stats["pools"]["train/mixtures"]["clips_without_events"] == 3 + 1  # and uniform0's first chunk
    assert info.stats["pools"]["train/mixtures"]["dropped_seconds"] == 0.0


def test_chunk_remainder_is_dropped_and_counted(built, tmp_path):
    info = _build(built["root"], tmp_path / "3s", 0, "clip_seconds=3", "sample_rate=8000")
    assert info.stats["pools"]["test/eval"]["dropped_seconds"] == 2.0  # 1 s of each 10 s soundscape
    starts = [c["meta"]["source"]["start_s"] for c in clips(tmp_path / "3s", "test/eval")]
    assert starts == [0.0, 3.0, 6.0] * 2


def test_class_subset_skips_or_keeps_clips_with_other_classes(built, tmp_path):
    info = _build(built["root"], tmp_path / "skip", 0, "classes=siren,dog_bark,car_horn", "sample_rate=8000")
    assert info.classes == info.stems == ["car_horn", "dog_bark", "siren"]
    kept = {c["meta"]["source"]["soundscape"] for p in POOLS for c in clips(tmp_path / "skip", p)}
    assert kept == {"soundscape_train_bimodal0"}  # the only soundscape without another class
    assert sum(s["skipped_clips"] for s in info.stats["pools"].values()) == 7
    _build(built["root"], tmp_path / "keep", 0, "classes=siren,dog_bark,car_horn", "unselected=keep",
           "sample_rate=8000")
    found = {c["meta"]["source"]["soundscape"]: c["meta"] for p in POOLS for c in clips(tmp_path / "keep", p)}
    assert len(found) == 8
    meta = found["soundscape_test_unimodal0"]
    assert meta["labels"] == ["dog_bark"] and meta["events"] == [["dog_bark", 3.0, 3.5]]
    assert meta["unlabelled_events"] == [["air_conditioner", 1.0, 4.0]]


# ----------------------------------------------------------------------------- errors


@pytest.fixture()
def small(tmp_path) -> Path:
    return make_urban_sed(tmp_path / "URBAN-SED_v2.0.0", {
        "train": {"soundscape_train_uniform0": [(1.0, 2.0, "siren")]},
        "validate": {"soundscape_validate_uniform0": [(1.0, 2.0, "dog_bark")]},
        "test": {"soundscape_test_uniform0": [(3.0, 4.0, "car_horn")]}})


def _fails(root: Path, out: Path, *extra: str) -> str:
    with pytest.raises(UrbanDatasetError) as e:
        _build(root, out, 0, "sample_rate=8000", *extra)
    return str(e.value)


def test_wrong_layout_is_named(tmp_path, small):
    with pytest.raises(ValueError, match="root is required"):
        urban_sed.build(tmp_path / "out", urban_sed.Options(), progress=False)
    assert f"root={tmp_path / 'nowhere'}: no such folder" in _fails(tmp_path / "nowhere", tmp_path / "out")
    assert f"did you mean root={small}" in _fails(tmp_path, tmp_path / "out")  # one folder too high
    txt = small / "annotations" / "test" / "soundscape_test_uniform0.txt"
    txt.unlink()
    msg = _fails(small, tmp_path / "out")
    assert f"{txt} is missing" in msg and "ROOT/annotations/{train,validate,test}/soundscape_*.txt" in msg
    (small / "audio" / "test" / "soundscape_test_uniform0.wav").unlink()
    txt.write_text("1.0\t2.0\tsiren\n")
    assert f"{small / 'audio' / 'test' / 'soundscape_test_uniform0.wav'} is missing" in _fails(small, tmp_path / "out")
    shutil.rmtree(small / "annotations" / "validate")
    msg = _fails(small, tmp_path / "out")
    assert f"{small / 'annotations' / 'validate'} is missing" in msg and "ROOT/audio/{train,validate,test}" in msg
    assert not (tmp_path / "out").exists()  # nothing written before the checks


def test_bad_annotation_lines_are_named_with_file_and_line(tmp_path, small):
    txt = small / "annotations" / "train" / "soundscape_train_uniform0.txt"
    for text, want in (("1.0\t2.0\tsiren\n\n3.0\t4.0\thelicopter\n", "line 3: label 'helicopter' is not one of"),
                       ("1.0\t2.0\n", "line 1: '1.0\\t2.0' is not 'onset<TAB>offset<TAB>label'"),
                       ("1.0\tsoon\tsiren\n", "line 1: onset and offset must be numbers"),
                       ("2.0\t2.0\tsiren\n", "line 1: onset 2.0 and offset 2.0 must satisfy 0 <= onset < offset"),
                       ("0.5\t1.0\tsiren\n9.0\t10.5\tsiren\n", "line 2: the event ends at 10.5 s, after the end")):
        txt.write_text(text)
        msg = _fails(small, tmp_path / "out")
        assert f"{txt}, {want}" in msg, msg
    txt.write_text("1.0\t2.0\thelicopter\n")
    assert "air_conditioner, car_horn, children_playing" in _fails(small, tmp_path / "out")  # the valid labels
    assert not (tmp_path / "out").exists()


def test_converted_or_broken_audio_and_incomplete_copy(tmp_path, small):
    with pytest.raises(UrbanDatasetError, match=r"audio/train has 1 soundscapes.*allow_incomplete=true"):
        urban_sed.build(tmp_path / "out", options_from(urban_sed, [f"root={small}"]), progress=False)
    write_soundscape(small, "validate", "soundscape_validate_uniform0", [(1.0, 2.0, "dog_bark")], 0, rate=11025)
    wav = small / "audio" / "validate" / "soundscape_validate_uniform0.wav"
    msg = _fails(small, tmp_path / "out", "sample_rate=16000")
    assert f"{wav}: 11025 Hz, below sample_rate=16000" in msg and "sample_rate=11025 or less" in msg
    _build(small, tmp_path / "low", 0, "sample_rate=11025")  # at or below the file's rate it builds
    wav.write_bytes(b"RIFF\x00\x00\x00\x00WAVEnot really audio")
    assert f"{wav}: not readable as audio" in _fails(small, tmp_path / "out")
    assert not (tmp_path / "out" / "dataset.json").exists()


def test_options_contract(small):
    docs = option_docs(urban_sed)
    assert all("  " in doc and doc.split("  ", 1)[1] for doc in docs.values()), docs  # every option documented
    assert urban_sed.NAME == "urban-sed" and isinstance(urban_sed.VERSION, int) and urban_sed.DEBIAN_PACKAGES == []
    o = urban_sed.Options()
    assert (o.sample_rate, o.clip_seconds, o.classes, o.unselected) == (16000, 10.0, "all", "skip")
    assert urban_sed.EXPECTED == {"train": 6000, "validate": 2000, "test": 2000}
    with pytest.raises(RecipeError, match="valid options: root, seed"):
        options_from(urban_sed, ["roots=/x"])
    for bad, name in (("classes=siren,helicopter", "unknown class 'helicopter'; valid classes: air_conditioner"),
                      ("unselected=drop", "unselected"), ("sample_rate=48000", "sample_rate"),
                      ("clip_seconds=12", "clip_seconds"), ("clips_per_shard=0", "clips_per_shard")):
        with pytest.raises(ValueError, match=name):
            urban_sed.validate(options_from(urban_sed, [f"root={small}", bad]))
