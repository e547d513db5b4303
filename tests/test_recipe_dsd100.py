"""The ``dsd100`` recipe, run for real on a tiny fake DSD100 copy with the real layout (``music_fakes.py``:
a few seconds of synthetic stereo 44.1 kHz WAV per track, written by the test)."""
from __future__ import annotations

import itertools
import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from music_fakes import SILENT_VOCALS_S, clips, expected_stems, make_dsd100, tars

from lightning_sep.data.recipes import dsd100, option_docs, options_from
from lightning_sep.data.recipes.music_folders import MusicFolderError
from lightning_sep.data.shards import DatasetInfo

DEV = {"001 - Alpha - One": 3.3, "002 - Bravo - Two": 3.1, "003 - Charlie - Three": 2.6, "004 - Delta - Four": 3.4,
       "005 - Echo - Five": 2.2, "006 - Foxtrot - Six": 3.0}
TEST = {"051 - Test - One": 3.2, "052 - Test - Two": 2.8}
ALL_POOLS = ["train/mixtures", "train/observed", "train/isolated", "valid/eval", "test/eval"]


def _build(root: Path, out: Path, seed: int = 3, *extra: str) -> DatasetInfo:
    options = options_from(dsd100, [f"root={root}", "allow_incomplete=true", "clip_seconds=1", "valid_tracks=2",
                                    *extra], seed=seed)
    return dsd100.build(out, options, progress=False)


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("dsd100")
    root = make_dsd100(base / "DSD100", DEV, TEST)
    roots = {"root": root, "a": base / "seed3-a", "b": base / "seed3-b", "c": base / "seed5"}
    _build(root, roots["a"], 3)
    _build(root, roots["b"], 3)
    _build(root, roots["c"], 5, "sample_rate=8000")  # only its track choices are compared
    return roots


def test_same_seed_gives_byte_identical_shards_other_seed_other_split(built):
    a, b = built["a"], built["b"]
    assert tars(a) == tars(b) and len(tars(a)) == 5
    for rel in tars(a):
        assert (a / rel).read_bytes() == (b / rel).read_bytes(), rel
    assert (a / "dataset.json").read_bytes() == (b / "dataset.json").read_bytes()
    stats = {k: DatasetInfo.load(built[k]).stats["tracks"] for k in "ac"}
    assert stats["a"]["valid/eval"] != stats["c"]["valid/eval"]  # the seed draws the held-out Dev tracks


def test_pools_members_and_dataset_json(built):
    info = DatasetInfo.load(built["a"])
    assert info.name == "dsd100" and info.sample_rate == 20480 and info.stems == ["vocals", "accompaniment"]
    assert (info.observed, info.unobserved) == ("accompaniment", "vocals")
    members = {"train/mixtures": ["json", "mix.flac"], "train/observed": ["accompaniment.flac", "json"]}
    for pool in ALL_POOLS:
        found = clips(built["a"], pool)
        want = members.get(pool, ["accompaniment.flac", "json", "mix.flac", "vocals.flac"])
        assert found and all([m for m in c["members"] if not m.startswith("__")] == want for c in found), pool
    made = info.made_by
    assert made["recipe"] == "dsd100" and made["version"] == dsd100.VERSION and made["options"]["valid_tracks"] == 2
    assert made["source"]["dataset"] == "DSD100" and made["source"]["tracks_found"] == {"Dev": 6, "Test": 2}
    assert made["source"]["validation_tracks"] == info.stats["tracks"]["valid/eval"]
    assert info.licences[0]["source"] == "DSD100"


def test_splits_are_track_disjoint_and_valid_is_held_out_of_dev(built):
    tracks = {p: set(v) for p, v in DatasetInfo.load(built["a"]).stats["tracks"].items()}
    assert len(tracks["valid/eval"]) == 2 and tracks["valid/eval"] <= set(DEV)
    training = set(DEV) - tracks["valid/eval"]
    assert tracks["train/mixtures"] | tracks["train/observed"] == training == tracks["train/isolated"]
    assert not tracks["train/mixtures"] & tracks["train/observed"]
    assert len(tracks["train/mixtures"]) == len(tracks["train/observed"]) == 2
    assert tracks["test/eval"] == set(TEST)
    for p, q in itertools.combinations(["train/isolated", "valid/eval", "test/eval"], 2):
        assert not tracks[p] & tracks[q]
    for pool in ALL_POOLS:
        found = clips(built["a"], pool)
        assert {c["meta"]["track"] for c in found} == tracks[pool], pool
        folder = "Test" if pool == "test/eval" else "Dev"
        assert all(c["meta"]["track_folder"] == folder for c in found)


def test_mix_is_the_exact_sum_stems_match_and_metadata(built):
    root, rate = built["root"], 20480
    tracks = DatasetInfo.load(built["a"]).stats["tracks"]
    checked = {tracks["train/isolated"][0], tracks["valid/eval"][0], tracks["test/eval"][0]}
    compared = set()
    for pool in ["train/isolated", "valid/eval", "test/eval"]:
        for c in clips(built["a"], pool):
            v, a, m = (c[k].astype(np.int32) for k in ("vocals", "accompaniment", "mix"))
            assert np.array_equal(m, v + a), c["key"]
            meta = c["meta"]
            assert meta["source"]["files"] == [f"Sources/{meta['track_folder']}/{meta['track']}/{s}.wav"
                                               for s in ("vocals", "drums", "bass", "other")]
            if pool != "train/isolated":
                assert meta["whole_track"] and meta["start_s"] == 0.0
                assert abs(meta["track_seconds"] - len(m) / rate) < 1e-6
            else:
                assert len(m) == rate and meta["start_s"] != SILENT_VOCALS_S[0]  # silent-vocal chunks skipped
            if meta["track"] in checked:
                compared.add(meta["track"])
                want = expected_stems(root / "Sources" / meta["track_folder"] / meta["track"], rate, "mean",
                                      meta["gain_db"])
                start = round(meta["start_s"] * rate)
                for stem in ("vocals", "accompaniment"):
                    ref = want[stem][start: start + len(c[stem])].astype(np.int32)
                    assert len(ref) == len(c[stem]) and np.abs(ref - c[stem]).max() <= 1, (c["key"], stem)
    assert compared == checked


# ----------------------------------------------------------------------------- errors


@pytest.fixture()
def small(tmp_path) -> Path:
    return make_dsd100(tmp_path / "DSD100", {"001 - A - One": 1.2, "002 - B - Two": 1.2, "003 - C - Three": 1.2},
                       {"051 - T - One": 1.2})


def _fails(root: Path, out: Path, *extra: str) -> str:
    with pytest.raises(MusicFolderError) as e:
        _build(root, out, 0, "valid_tracks=1", *extra)
    return str(e.value)


def test_mixtures_folder_is_not_needed(tmp_path, small):
    shutil.rmtree(small / "Mixtures")
    info = _build(small, tmp_path / "out", 0, "valid_tracks=1", "sample_rate=8000")
    assert [info.pool(*p.split("/")).clips > 0 for p in ALL_POOLS] == [True] * 5


def test_missing_folders_and_files_are_named(tmp_path, small):
    with pytest.raises(ValueError, match="root is required"):
        dsd100.build(tmp_path / "out", dsd100.Options(), progress=False)
    assert f"root={tmp_path / 'nowhere'}: no such folder" in _fails(tmp_path / "nowhere", tmp_path / "out")
    assert f"use root={small}" in _fails(small / "Sources", tmp_path / "out")  # pointed one folder too deep
    stem = small / "Sources" / "Test" / "051 - T - One" / "bass.wav"
    stem.unlink()
    msg = _fails(small, tmp_path / "out")
    assert str(stem) in msg and "DSD100.zip" in msg
    shutil.rmtree(small / "Sources" / "Test")
    assert f"{small / 'Sources' / 'Test'} is missing" in _fails(small, tmp_path / "out")
    assert not (tmp_path / "out").exists()  # nothing written before the checks


def test_wrong_rate_and_unreadable_files_are_named(tmp_path, small):
    vocals = small / "Sources" / "Dev" / "001 - A - One" / "vocals.wav"
    sf.write(vocals, np.zeros((22050, 2), dtype=np.int16), 22050, subtype="PCM_16")
    msg = _fails(small, tmp_path / "out")
    assert f"{vocals}: 22050 Hz" in msg and "44100 Hz" in msg
    vocals.write_bytes(b"\x00" * 100)
    assert f"{vocals}: not readable as audio" in _fails(small, tmp_path / "out")
    assert not (tmp_path / "out" / "dataset.json").exists()


def test_incomplete_copy_and_too_many_validation_tracks(tmp_path, small):
    with pytest.raises(MusicFolderError, match="Sources/Dev has 3 tracks, Sources/Test has 1 .*allow_incomplete=true"):
        dsd100.build(tmp_path / "out", options_from(dsd100, [f"root={small}"]), progress=False)
    with pytest.raises(ValueError, match="valid_tracks=2 leaves fewer than two of the 3 Dev tracks.*valid_tracks=1"):
        _build(small, tmp_path / "out", 0, "valid_tracks=2")
    with pytest.raises(ValueError, match="valid_tracks=0 must be >= 1"):
        _build(small, tmp_path / "out", 0, "valid_tracks=0")


def test_options_contract():
    docs = option_docs(dsd100)
    assert all("  " in doc and doc.split("  ", 1)[1] for doc in docs.values()), docs
    assert dsd100.NAME == "dsd100" and isinstance(dsd100.VERSION, int) and dsd100.DEBIAN_PACKAGES == []
    o = dsd100.Options()
    assert (o.sample_rate, o.channels, o.clip_seconds, o.eval_clip_seconds, o.valid_tracks) == (20480, "mean", 10.0,
                                                                                                 0.0, 7)
