"""The ``musdb18`` recipe, run for real on tiny fake copies of MUSDB18-HQ and MUSDB18 with the real layouts.

The fake tracks (``music_fakes.py``) are a few seconds of synthetic stereo 44.1 kHz WAV written by the test;
the compressed copy is made from them with the ffmpeg program (installed by ``make install`` as a Debian
package; without it those tests fail with the ``apt-get install -y ffmpeg`` line).
"""
from __future__ import annotations

import itertools
import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from music_fakes import (
    RATE,
    SILENT_VOCALS_S,
    clips,
    expected_stems,
    make_musdb_hq,
    make_musdb_stems,
    tars,
    write_wav_track,
)

from lightning_sep.data.recipes import RecipeError, musdb18, option_docs, options_from
from lightning_sep.data.recipes.music_folders import MusicFolderError
from lightning_sep.data.shards import DatasetInfo

VALID = ("Actions - One Minute Smile", "Johnny Lokke - Promises & Lies")  # two of the official 14
TRAIN = {"Alpha - First": 4.3, "Bravo - Second": 3.6, "Charlie - Loud": 5.2, "Delta - Fourth": 3.1,
         "Echo - Fifth": 2.6, "Foxtrot - Short": 0.8, VALID[0]: 3.4, VALID[1]: 3.5}
TEST = {"Test - One": 3.3, "Test - Two": 4.0}
TRAIN_POOLS = ["train/mixtures", "train/observed", "train/isolated"]
ALL_POOLS = TRAIN_POOLS + ["valid/eval", "test/eval"]


def _options(root: Path, seed: int = 3, *extra: str) -> musdb18.Options:
    return options_from(musdb18, [f"root={root}", "allow_incomplete=true", "clip_seconds=1", *extra], seed=seed)


def _build(root: Path, out: Path, seed: int = 3, *extra: str) -> DatasetInfo:
    return musdb18.build(out, _options(root, seed, *extra), progress=False)


def _require_ffmpeg() -> None:
    if shutil.which("ffmpeg") is None:
        pytest.fail("the ffmpeg program is missing; run: apt-get install -y ffmpeg")


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("musdb18")
    hq = make_musdb_hq(base / "musdb18hq", TRAIN, TEST, loud=("Charlie - Loud",))
    roots = {"hq": hq, "a": base / "seed3-a", "b": base / "seed3-b", "c": base / "seed4"}
    _build(hq, roots["a"], 3)
    _build(hq, roots["b"], 3)
    _build(hq, roots["c"], 4, "sample_rate=8000")  # only its halves are compared
    return roots


def test_same_seed_gives_byte_identical_shards_other_seed_other_halves(built):
    a, b = built["a"], built["b"]
    assert tars(a) == tars(b) and len(tars(a)) == 5
    for rel in tars(a):
        assert (a / rel).read_bytes() == (b / rel).read_bytes(), rel
    assert (a / "dataset.json").read_bytes() == (b / "dataset.json").read_bytes()
    halves = {k: DatasetInfo.load(built[k]).stats["tracks"]["train/mixtures"] for k in "ac"}
    assert halves["a"] != halves["c"]  # the seed draws the halves
    assert not list(a.glob(".tracks-*"))  # the temporary chunk cache is gone


def test_pools_hold_only_their_members(built):
    info = DatasetInfo.load(built["a"])
    assert info.name == "musdb18" and info.sample_rate == 20480
    assert info.stems == ["vocals", "accompaniment"]
    assert (info.observed, info.unobserved) == ("accompaniment", "vocals")
    expected = {"train/mixtures": ["json", "mix.flac"], "train/observed": ["accompaniment.flac", "json"]}
    for pool in ALL_POOLS:
        members = expected.get(pool, ["accompaniment.flac", "json", "mix.flac", "vocals.flac"])
        found = clips(built["a"], pool)
        assert found, pool
        assert all([m for m in c["members"] if not m.startswith("__")] == members for c in found), pool
        assert info.pool(*pool.split("/")).members == [m[: -len(".flac")] for m in ["mix.flac", "vocals.flac",
                                                       "accompaniment.flac"] if m in members]
    for pool in ["train/mixtures", "train/observed"]:  # nothing about the vocals, not even their level
        for c in clips(built["a"], pool):
            assert "vocals" not in c["meta"]["level_db"] and "vocals" not in c
    assert info.licences[0]["source"] == "MUSDB18-HQ" and "academic" in info.licences[0]["licence"]
    made = info.made_by
    assert made["recipe"] == "musdb18" and made["version"] == musdb18.VERSION and made["seed"] == 3
    assert made["options"]["root"] == str(built["hq"]) and made["source"]["layout"] == "wav"
    assert made["source"]["complete"] is False and made["source"]["tracks_found"] == {"train": 8, "test": 2}
    assert len(made["source"]["missing_validation_tracks"]) == 12


def test_splits_are_track_disjoint(built):
    info = DatasetInfo.load(built["a"])
    tracks = {pool: set(names) for pool, names in info.stats["tracks"].items()}
    regular = set(TRAIN) - set(VALID)
    assert tracks["train/mixtures"] | tracks["train/observed"] == regular
    assert not tracks["train/mixtures"] & tracks["train/observed"]
    assert abs(len(tracks["train/mixtures"]) - len(tracks["train/observed"])) <= 1
    assert tracks["train/isolated"] == regular
    assert tracks["valid/eval"] == set(VALID) and tracks["test/eval"] == set(TEST)
    for pool in ALL_POOLS:  # what the clips say agrees with the stats
        in_clips = {c["meta"]["track"] for c in clips(built["a"], pool)}
        assert in_clips <= tracks[pool], pool
        assert in_clips == tracks[pool] - {"Foxtrot - Short"}, pool  # 0.8 s: no whole 1 s training chunk
    assert info.stats["training_chunks"]["tracks_shorter_than_a_chunk"] == ["Foxtrot - Short"]
    for p, q in itertools.combinations(["train/isolated", "valid/eval", "test/eval"], 2):
        assert not tracks[p] & tracks[q]


def test_mix_is_the_exact_sum_and_stems_match_the_sources(built):
    hq, rate = built["hq"], 20480
    checked = {"Alpha - First", "Charlie - Loud", VALID[1], "Test - Two"}  # references cost 0.3 s per track
    seen_gain, compared = False, set()
    for pool in ["train/isolated", "valid/eval", "test/eval"]:
        for c in clips(built["a"], pool):
            v, a, m = (c[k].astype(np.int32) for k in ("vocals", "accompaniment", "mix"))
            assert np.array_equal(m, v + a), c["key"]
            meta = c["meta"]
            if meta["track"] not in checked:
                continue
            compared.add(meta["track"])
            folder = "test" if pool == "test/eval" else "train"
            want = expected_stems(hq / folder / meta["track"], rate, "mean", meta["gain_db"])
            start = round(meta["start_s"] * rate)
            for stem in ("vocals", "accompaniment"):
                ref = want[stem][start: start + len(c[stem])].astype(np.int32)
                assert len(ref) == len(c[stem]) and np.abs(ref - c[stem]).max() <= 1, (c["key"], stem)
            if pool != "train/isolated":
                assert meta["whole_track"] and len(m) == len(want["vocals"]) == int(np.ceil(
                    sf.info(hq / folder / meta["track"] / "vocals.wav").frames * rate / RATE))
            if meta["track"] == "Charlie - Loud":  # its stems sum above full scale: scaled down as a whole
                assert meta["gain_db"] < -1 and np.abs(m).max() > 30000
                seen_gain = True
            else:
                assert meta["gain_db"] == 0.0
            assert meta["source_channels"] == 2 and meta["channel"] == "mean"
    assert seen_gain and compared == checked


def test_silent_vocal_chunks_are_skipped_in_every_training_pool(built, tmp_path):
    info = DatasetInfo.load(built["a"])
    chunks = info.stats["training_chunks"]
    assert chunks["skipped_quiet_vocals"] == 5  # the 1-2 s chunk of the five tracks longer than 2 s
    assert chunks["kept"] == chunks["candidates"] - 5 == info.pool("train", "isolated").clips
    for pool in TRAIN_POOLS:
        starts = [c["meta"]["start_s"] for c in clips(built["a"], pool)]
        assert starts and SILENT_VOCALS_S[0] not in starts, pool
    for c in clips(built["a"], "train/isolated"):
        assert c["meta"]["level_db"]["vocals"] >= -40 and len(c["mix"]) == 20480
    # with the threshold off, the silent chunks are kept
    _build(built["hq"], tmp_path / "all", 3, "vocals_min_db=none", "sample_rate=8000")
    starts = [c["meta"]["start_s"] for c in clips(tmp_path / "all", "train/isolated")]
    assert starts.count(SILENT_VOCALS_S[0]) == 5


def test_resampling_channels_and_eval_chunks(built, tmp_path):
    hq = built["hq"]
    _build(hq, tmp_path / "left", 3, "sample_rate=16000", "channels=left", "eval_clip_seconds=1.5")
    info = DatasetInfo.load(tmp_path / "left")
    assert info.sample_rate == 16000
    by_track: dict[str, list[dict]] = {}
    for c in clips(tmp_path / "left", "valid/eval"):
        assert c["meta"]["channel"] == "left" and not c["meta"]["whole_track"]
        by_track.setdefault(c["meta"]["track"], []).append(c)
    assert set(by_track) == set(VALID)
    for track, parts in by_track.items():
        want = expected_stems(hq / "train" / track, 16000, "left", 0.0)
        assert [round(p["meta"]["start_s"] * 16000) for p in parts] == [0, 24000]  # 3.4-3.5 s: 1.5 s + the rest
        vocals = np.concatenate([p["vocals"] for p in parts]).astype(np.int32)  # the chunks cover the track
        assert len(vocals) == len(want["vocals"]) == int(np.ceil(TRAIN[track] * RATE * 16000 / RATE))
        assert np.abs(vocals - want["vocals"]).max() <= 1
    _build(hq, tmp_path / "both", 3, "sample_rate=8000", "channels=both")
    iso = clips(tmp_path / "both", "train/isolated")
    seen: dict[tuple, set] = {}
    for c in iso:
        seen.setdefault((c["meta"]["track"], c["meta"]["start_s"]), set()).add(c["meta"]["channel"])
    assert seen and all(v == {"left", "right"} for v in seen.values())  # each channel its own clip
    left = next(c for c in iso if c["meta"]["channel"] == "left")
    right = next(c for c in iso if c["meta"]["channel"] == "right" and c["meta"]["track"] == left["meta"]["track"]
                 and c["meta"]["start_s"] == left["meta"]["start_s"])
    assert not np.array_equal(left["vocals"], right["vocals"])  # panned differently
    assert len(left["vocals"]) == 8000


def test_compressed_stem_files_give_the_same_audio(built, tmp_path):
    _require_ffmpeg()
    stems = make_musdb_stems(built["hq"], tmp_path / "musdb18")
    info = _build(stems, tmp_path / "out", 3)
    assert info.made_by["source"]["layout"] == "stem.mp4" and info.licences[0]["source"] == "MUSDB18"
    assert info.made_by["software"]["ffmpeg"].startswith("ffmpeg version")
    for pool in ALL_POOLS:  # lossless streams decode to exactly the HQ copy's samples
        got, want = clips(tmp_path / "out", pool), clips(built["a"], pool)
        assert [c["key"] for c in got] == [c["key"] for c in want]
        for g, w in zip(got, want, strict=True):
            assert g["meta"]["track"] == w["meta"]["track"] and g["meta"]["start_s"] == w["meta"]["start_s"]
            assert g["meta"]["source"]["files"] == [f"{g['meta']['track_folder']}/{g['meta']['track']}.stem.mp4"]
            for stem in ("mix", "vocals", "accompaniment"):
                assert np.array_equal(g.get(stem), w.get(stem)) if stem in w else stem not in g


def test_aac_stem_files_like_the_real_musdb18(tmp_path):
    _require_ffmpeg()
    hq = make_musdb_hq(tmp_path / "hq", {"A - One": 2.5, "B - Two": 2.5, VALID[0]: 2.5}, {"T - One": 2.5})
    stems = make_musdb_stems(hq, tmp_path / "musdb18", codec="aac")
    info = _build(stems, tmp_path / "out", 0, "sample_rate=8000", "vocals_min_db=none")
    assert info.made_by["source"]["dataset"] == "MUSDB18"
    for c in clips(tmp_path / "out", "test/eval") + clips(tmp_path / "out", "train/isolated"):
        v, a, m = (c[k].astype(np.int32) for k in ("vocals", "accompaniment", "mix"))
        assert np.array_equal(m, v + a)
    whole = clips(tmp_path / "out", "test/eval")[0]
    want = expected_stems(hq / "test" / "T - One", 8000, "mean", 0.0)["vocals"].astype(float)
    got = whole["vocals"][: len(want)].astype(float)
    assert len(whole["vocals"]) >= len(want)  # AAC decodes whole 1024-sample frames: a little longer
    snr = 10 * np.log10(np.sum(want**2) / np.sum((got - want) ** 2))
    assert snr > 20, snr  # lossy, but the same audio in the same place


# ----------------------------------------------------------------------------- errors


@pytest.fixture()
def small(tmp_path) -> Path:
    """A minimal fake MUSDB18-HQ copy: 3 training tracks (one an official validation track) and 1 test track."""
    return make_musdb_hq(tmp_path / "hq", {"A - One": 1.2, "B - Two": 1.2, VALID[0]: 1.2}, {"T - One": 1.2})


def _fails(root: Path, out: Path, *extra: str, seed: int = 0) -> str:
    with pytest.raises(MusicFolderError) as e:
        _build(root, out, seed, *extra)
    return str(e.value)


def test_missing_root_and_folders(tmp_path, small):
    with pytest.raises(ValueError, match="root is required"):
        musdb18.build(tmp_path / "out", musdb18.Options(), progress=False)
    msg = _fails(tmp_path / "nowhere", tmp_path / "out")
    assert f"root={tmp_path / 'nowhere'}: no such folder" in msg
    assert f"did you mean root={small}" in _fails(tmp_path, tmp_path / "out")  # pointed one folder too high
    shutil.rmtree(small / "test")
    assert f"{small / 'test'} is missing" in _fails(small, tmp_path / "out")
    assert not (tmp_path / "out").exists()  # nothing written before the checks


def test_missing_stem_file_is_named(tmp_path, small):
    (small / "train" / "B - Two" / "vocals.wav").unlink()
    msg = _fails(small, tmp_path / "out")
    assert str(small / "train" / "B - Two" / "vocals.wav") in msg and "musdb18hq.zip" in msg
    assert not (tmp_path / "out").exists()


def test_wrong_rate_unreadable_and_unequal_files_are_named(tmp_path, small):
    drums = small / "train" / "A - One" / "drums.wav"
    sf.write(drums, np.zeros((48000, 2), dtype=np.int16), 48000, subtype="PCM_16")
    msg = _fails(small, tmp_path / "out")
    assert f"{drums}: 48000 Hz" in msg and "44100 Hz" in msg and "original files" in msg
    assert not (tmp_path / "out" / "dataset.json").exists()  # a failed build never leaves a valid dataset
    drums.write_bytes(b"RIFF\x00\x00\x00\x00WAVEnot really audio")
    msg = _fails(small, tmp_path / "out")
    assert f"{drums}: not readable as audio" in msg and "damaged" in msg
    write_wav_track(small / "train" / "A - One", "A - One", 1.2)
    sf.write(drums, np.zeros((1000, 2), dtype=np.int16), RATE, subtype="PCM_16")
    msg = _fails(small, tmp_path / "out")
    assert "differ in length" in msg and f"{drums}: 1000 samples" in msg


def test_incomplete_copy_needs_allow_incomplete(tmp_path, small):
    with pytest.raises(MusicFolderError) as e:
        musdb18.build(tmp_path / "out", options_from(musdb18, [f"root={small}"]), progress=False)
    msg = str(e.value)
    assert "train/ has 3 tracks (expected 100)" in msg and "test/ has 1 (expected 50)" in msg
    assert "Triviul - Angelsaint" in msg and "allow_incomplete=true" in msg


def test_stem_files_without_ffmpeg_or_streams(tmp_path, small):
    _require_ffmpeg()
    stems = make_musdb_stems(small, tmp_path / "musdb18")
    msg = _fails(stems, tmp_path / "out", "ffmpeg=/no/such/ffmpeg")
    assert "apt-get install -y ffmpeg" in msg and "musdbconvert" in msg and str(stems / "train") in msg
    assert not (tmp_path / "out").exists()
    four = make_musdb_stems(small, tmp_path / "four", streams=4)
    msg = _fails(four, tmp_path / "out")
    assert str(four / "train" / "A - One.stem.mp4") in msg and "5 audio streams" in msg
    (tmp_path / "mixed" / "train").mkdir(parents=True)
    shutil.copytree(small / "train" / "A - One", tmp_path / "mixed" / "train" / "A - One")
    shutil.copy(stems / "train" / "B - Two.stem.mp4", tmp_path / "mixed" / "train")
    assert "both track folders" in _fails(tmp_path / "mixed", tmp_path / "out")


def test_rebuild_replaces_a_previous_build(tmp_path, small):
    out = tmp_path / "out"
    (out / "train" / "mixtures").mkdir(parents=True)
    (out / "train" / "mixtures" / "000009.tar").write_bytes(b"stale")
    (out / ".tracks-killed").mkdir()  # the chunk cache of a build that was killed
    (out / "notes.txt").write_text("mine")
    info = _build(small, out, 0, "sample_rate=8000")
    assert info.splits["train"]["mixtures"].shards == ["train/mixtures/000000.tar"]
    assert not (out / "train" / "mixtures" / "000009.tar").exists() and not (out / ".tracks-killed").exists()
    assert (out / "notes.txt").read_text() == "mine"  # nothing else is touched
    assert DatasetInfo.load(out).made_by["options"]["sample_rate"] == 8000


def test_options_contract(small):
    docs = option_docs(musdb18)
    assert all("  " in doc and doc.split("  ", 1)[1] for doc in docs.values()), docs  # every option documented
    assert musdb18.NAME == "musdb18" and isinstance(musdb18.VERSION, int) and musdb18.DEBIAN_PACKAGES == ["ffmpeg"]
    assert len(musdb18.VALIDATION_TRACKS) == 14 == len(set(musdb18.VALIDATION_TRACKS))
    o = options_from(musdb18, [f"root={small}", "vocals_min_db=none", "sample_rate=16000"], seed=2)
    assert (o.vocals_min_db, o.sample_rate, o.seed, o.channels) == (None, 16000, 2, "mean")
    assert musdb18.Options().sample_rate == 20480 and musdb18.Options().eval_clip_seconds == 0
    with pytest.raises(RecipeError, match="valid options: root, seed"):
        options_from(musdb18, ["roots=/x"])
    for bad, name in (("channels=stereo", "channels"), ("sample_rate=48000", "sample_rate"),
                      ("clip_seconds=0", "clip_seconds"), ("eval_clip_seconds=0.1", "eval_clip_seconds"),
                      ("vocals_min_db=3", "vocals_min_db"), ("clips_per_shard=0", "clips_per_shard")):
        with pytest.raises(ValueError, match=name):
            musdb18.validate(options_from(musdb18, [f"root={small}", bad]))
