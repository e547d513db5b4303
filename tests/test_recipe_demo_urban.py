"""The ``demo-urban`` recipe, built small from the real Debian sound packages (no mocks).

openttd-opensfx, simutrans-pak64 and tuxpaint-stamps-default are installed by ``make install`` (which ``make test``
runs first); without them the build tests fail with the ``apt-get install -y ...`` line to run. The recipe is
imported directly (not through the registry).
"""
from __future__ import annotations

import dataclasses
import io
import itertools
import json
import tarfile
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from lightning_sep.data.recipes import RecipeError, option_docs, options_from, sources
from lightning_sep.data.recipes import demo_urban as du
from lightning_sep.data.shards import DatasetInfo, iter_tar

SMALL = ["mixtures_clips=14", "isolated_clips=10", "valid_clips=10", "test_clips=12", "clips_per_shard=5",
         "speech_per_language=3"]
COUNTS = {"train/mixtures": 14, "train/isolated": 10, "valid/eval": 10, "test/eval": 12}
ALL_POOLS = list(COUNTS)
STEM_POOLS = ["train/isolated", "valid/eval", "test/eval"]
SPLIT_OF = {"train/mixtures": "train", "train/isolated": "train", "valid/eval": "valid", "test/eval": "test"}


def _build(root: Path, seed: int, *extra: str) -> DatasetInfo:
    try:
        return du.build(root, options_from(du, SMALL + list(extra), seed=seed), progress=False)
    except sources.MissingSourceError as e:
        pytest.fail(f"Debian sound packages missing; run: {e.command}")


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("demo-urban")
    roots = {"a": base / "seed3-a", "b": base / "seed3-b", "c": base / "seed4", "quiet": base / "no-background"}
    _build(roots["a"], 3)
    _build(roots["b"], 3)
    _build(roots["c"], 4)
    _build(roots["quiet"], 3, "background_db=None")
    return roots


def _tars(root: Path) -> list[Path]:
    return sorted(p.relative_to(root) for p in root.rglob("*.tar"))


def _clips(root: Path, pool: str) -> list[dict]:
    """Clips of a pool as stored: key, meta and int16 stems."""
    info = DatasetInfo.load(root)
    split, name = pool.split("/")
    out = []
    for url in info.urls(split, name):
        for raw in iter_tar(url):
            clip = {"key": raw["__key__"], "meta": json.loads(raw["json"])}
            for suffix, data in raw.items():
                if suffix.endswith(".flac"):
                    audio, rate = sf.read(io.BytesIO(data), dtype="int16")
                    assert rate == info.sample_rate
                    clip[suffix[: -len(".flac")]] = audio
            out.append(clip)
    return out


def _class_of(root: Path) -> dict[str, tuple[str, str]]:
    """Recording id -> (class, split), from the recipe's class map for the options the build recorded."""
    opts = du.Options(**DatasetInfo.load(root).made_by["options"])
    return {rec: (label, split) for label, splits in du.class_map(opts).items()
            for split, ids in splits.items() for rec in ids}


def test_same_seed_gives_byte_identical_shards(built):
    a, b = built["a"], built["b"]
    assert _tars(a) == _tars(b) and len(_tars(a)) == 3 + 2 + 2 + 3
    for rel in _tars(a):
        assert (a / rel).read_bytes() == (b / rel).read_bytes(), rel
    assert (a / "dataset.json").read_bytes() == (b / "dataset.json").read_bytes()


def test_other_seed_gives_other_data(built):
    a, c = built["a"], built["c"]
    assert _tars(a) == _tars(c)
    assert all((a / rel).read_bytes() != (c / rel).read_bytes() for rel in _tars(a))


def test_pools_hold_only_their_members(built):
    info = DatasetInfo.load(built["a"])
    stems = {f"{s}.flac" for s in [*du.CLASSES, "background"]}
    for pool in ALL_POOLS:
        split, name = pool.split("/")
        names = []
        for url in info.urls(split, name):
            with tarfile.open(url) as tar:
                names += tar.getnames()
        found = {n.split(".", 1)[1] for n in names}
        expected = {"mix.flac", "json"} | (stems if pool in STEM_POOLS else set())
        assert found == expected, (pool, found)
        assert len({n.split(".", 1)[0] for n in names}) == COUNTS[pool]
    for clip in _clips(built["a"], "train/mixtures"):  # the weakly labelled pool: no isolated stem at all
        assert set(clip) == {"key", "meta", "mix"} and clip["meta"]["labels"]


def test_recordings_are_disjoint_across_splits(built):
    class_of = _class_of(built["a"])
    used: dict[str, set[str]] = {"train": set(), "valid": set(), "test": set()}
    for pool in ALL_POOLS:
        for clip in _clips(built["a"], pool):
            for event in clip["meta"]["source"]["events"]:
                label, split = class_of[event["id"]]  # every event comes from the class map...
                assert label == event["label"] and split == SPLIT_OF[pool], (pool, event)  # ...its class and split
                used[SPLIT_OF[pool]].add(event["id"])
    for p, q in itertools.combinations(used, 2):
        assert not used[p] & used[q], (p, q)
    assert all(len(ids) >= 10 for ids in used.values())
    # independently of the map: speech languages never cross splits (the language is the file name's suffix)
    langs = {split: {rec.rsplit("_desc", 1)[1] or "_en" for rec in ids if "_desc" in rec}
             for split, ids in used.items()}
    assert all(langs.values()) and not any(langs[p] & langs[q] for p, q in itertools.combinations(langs, 2))
    # the same recordings by split in the recipe's map and in dataset.json
    stats = DatasetInfo.load(built["a"]).stats["recordings"]
    for label in du.CLASSES:
        for split in du.SPLITS:
            assert set(stats[label][split]) == {r for r, (c, s) in class_of.items() if (c, s) == (label, split)}


def test_labels_match_the_stems(built):
    for pool in STEM_POOLS:
        for clip in _clips(built["a"], pool):
            meta = clip["meta"]
            present = [c for c in du.CLASSES if np.any(clip[c])]
            assert meta["labels"] == present, clip["key"]  # labels = the non-silent class stems, in class order
            assert meta["n_events"] == len(meta["labels"]) == len(meta["events"])
            assert {e[0] for e in meta["events"]} == set(meta["labels"])
            for c in du.CLASSES:
                if c not in present:
                    assert not np.any(clip[c])  # absent classes: all zeros
            assert np.any(clip["background"])


def test_events_lie_inside_the_clip_where_their_stem_sounds(built):
    opts = DatasetInfo.load(built["a"]).made_by["options"]
    rate, n = opts["sample_rate"], int(opts["clip_seconds"] * opts["sample_rate"])
    counts = set()
    for pool in ALL_POOLS:
        for clip in _clips(built["a"], pool):
            meta = clip["meta"]
            counts.add(meta["n_events"])
            assert opts["events_min"] <= meta["n_events"] <= opts["events_max"]
            assert meta["labels"] == [c for c in du.CLASSES if c in {e[0] for e in meta["events"]}]
            assert [e[1] for e in meta["events"]] == sorted(e[1] for e in meta["events"])
            for label, onset, offset in meta["events"]:
                assert 0 <= onset < offset <= opts["clip_seconds"], (clip["key"], label, onset, offset)
            for e in meta["source"]["events"]:
                assert e["at_s"] <= e["onset_s"] < e["offset_s"] <= e["at_s"] + e["to_s"] - e["from_s"] + 1e-4
                assert e["to_s"] - e["from_s"] <= opts["max_event_seconds"] + 1e-4
                assert opts["event_db_min"] <= e["level_db"] <= opts["event_db_max"]
                if pool in STEM_POOLS:
                    x = clip[e["label"]].astype(np.float64)
                    start, stop = round(e["at_s"] * rate), round((e["at_s"] + e["to_s"] - e["from_s"]) * rate)
                    assert not np.any(x[:start]) and not np.any(x[stop:])  # silence outside the placed excerpt
                    inside = np.sum(x[round(e["onset_s"] * rate): round(e["offset_s"] * rate)] ** 2)
                    assert inside >= 0.99 * np.sum(x ** 2), (clip["key"], e["label"])  # the event span holds the sound
            active = np.zeros(n, dtype=int)
            for _, onset, offset in meta["events"]:
                active[round(onset * rate): round(offset * rate)] += 1
            assert abs(np.count_nonzero(active >= 2) / rate - meta["overlap_s"]) < 1e-3
    assert counts == {1, 2, 3}


def test_mix_is_the_exact_sum_of_the_stems(built):
    opts = DatasetInfo.load(built["a"]).made_by["options"]
    peak = 32767 * 10 ** (-1 / 20) + 8
    for root, stems in ((built["a"], [*du.CLASSES, "background"]), (built["quiet"], list(du.CLASSES))):
        for pool in STEM_POOLS:
            for clip in _clips(root, pool):
                total = np.sum([clip[s].astype(np.int32) for s in stems], axis=0)
                assert np.array_equal(clip["mix"].astype(np.int32), total), clip["key"]
                assert len(clip["mix"]) == int(opts["clip_seconds"] * opts["sample_rate"])
                assert np.abs(clip["mix"]).max() <= peak
                level = 10 * np.log10(np.mean((clip["mix"] / 32768.0) ** 2))
                assert abs(level - clip["meta"]["level_db"]) < 0.01
    for clip in _clips(built["a"], "valid/eval"):
        bg = clip["meta"]["source"]["background"]
        assert bg["id"] in du.BACKGROUND_RECORDINGS
        level = 10 * np.log10(np.mean((clip["background"] / 32768.0) ** 2))
        assert abs(level - bg["level_db"] - clip["meta"]["scale_db"]) < 0.05  # stored at the drawn level
        assert -50.0 <= bg["level_db"] <= -40.0
    quiet = DatasetInfo.load(built["quiet"])
    assert quiet.stems == list(du.CLASSES) and quiet.stats["background"] is None
    assert all("background" not in c["meta"]["source"] for c in _clips(built["quiet"], "test/eval"))


def test_dataset_json(built):
    info = DatasetInfo.load(built["a"])
    assert info.name == "demo-urban" and info.sample_rate == 16000
    assert info.classes == list(du.CLASSES) and info.stems == [*du.CLASSES, "background"]
    assert info.observed is None and info.unobserved is None
    assert {f"{s}/{p}" for s, pools in info.splits.items() for p in pools} == set(ALL_POOLS)
    assert [info.pool(*p.split("/")).clips for p in ALL_POOLS] == list(COUNTS.values())
    assert info.pool("train", "mixtures").members == ["mix"]
    assert len(info.pool("train", "mixtures").shards) == 3  # 14 clips, 5 per shard
    made = info.made_by
    assert made["recipe"] == "demo-urban" and made["version"] == du.VERSION and made["seed"] == 3
    assert made["options"]["speech_per_language"] == 3 and made["options"]["mixtures_clips"] == 14
    assert set(made["packages"]) == set(du.DEBIAN_PACKAGES) and all(made["packages"].values())
    by_source: dict[str, list[dict]] = {}
    for entry in info.licences:
        by_source.setdefault(entry["source"], []).append(entry)
    assert by_source["tuxpaint-stamps-default"][0]["licence"] == "GPL-2"
    assert by_source["simutrans-pak64"][0]["licence"] == "Artistic-1.0"
    assert by_source["openttd-opensfx"][0]["licence"] == "CC-BY-SA-3.0"  # the collection; entries follow
    assert {e["licence"] for e in by_source["openttd-opensfx"][1:]} == {"CC-BY-3.0", "CC0-1.0", "CC-BY-SA-3.0"}
    stats = info.stats
    assert stats["recording_counts"]["bird"] == {"train": 10, "valid": 3, "test": 4}
    assert stats["recording_counts"]["speech"] == {"train": 18, "valid": 6, "test": 9}
    assert stats["speech"]["languages"] == {k: list(v) for k, v in du.SPEECH_LANGUAGES.items()}
    assert set(stats["background"]) == set(du.BACKGROUND_RECORDINGS)
    assert stats["left_out"]["opensfx:osfx_57"].startswith("the same recording as opensfx:osfx_52")
    assert stats["left_out"]["tuxpaint:animals/birds/nandou"] == "digital silence"


def test_overlap_statistics_match_the_clips(built):
    info = DatasetInfo.load(built["a"])
    for pool in ALL_POOLS:
        clips = _clips(built["a"], pool)
        s = info.stats["pools"][pool]
        counts = [c["meta"]["n_events"] for c in clips]
        assert s["events_per_clip"] == {str(k): counts.count(k) for k in (1, 2, 3)}
        assert s["clips_per_class"] == {c: sum(c in x["meta"]["labels"] for x in clips) for c in du.CLASSES}
        overlap = sum(c["meta"]["overlap_s"] for c in clips)
        assert abs(s["overlap"]["time_share_2plus"] - overlap / (len(clips) * 4.0)) < 1e-3
        assert s["overlap"]["clips_with_overlap"] == sum(c["meta"]["overlap_s"] > 0 for c in clips)
    assert any(info.stats["pools"][p]["overlap"]["clips_with_overlap"] for p in ALL_POOLS)


def test_a_label_outside_the_classes_is_an_error():
    with pytest.raises(ValueError, match=r"clip test-eval-00007: label 'dog' is not among the dataset's classes"):
        du.check_labels(["bird", "dog"], du.CLASSES, "clip test-eval-00007")
    with pytest.raises(ValueError, match="name a class twice"):
        du.check_labels(["bird", "bird"], du.CLASSES, "clip x")
    assert du.check_labels(["speech", "bird"], du.CLASSES, "clip x") == ["bird", "speech"]
    bad = {**du.CLASS_RECORDINGS, "dog": {"train": ("tuxpaint:animals/mammals/dogs/dog",), "valid": ("a",),
                                          "test": ("b",)}}
    with pytest.raises(ValueError, match="class map: label 'dog' is not among the classes"):
        du.check_class_map(bad, du.CLASSES)
    leak = {k: dict(v) for k, v in du.CLASS_RECORDINGS.items()}
    leak["horn"]["test"] = leak["horn"]["test"] + ("opensfx:osfx_06",)  # a training recording in test
    with pytest.raises(ValueError, match=r"'opensfx:osfx_06' is in horn/train and in horn/test"):
        du.check_class_map(leak, [c for c in du.CLASSES if c != "speech"])
    empty = {k: dict(v) for k, v in du.CLASS_RECORDINGS.items()}
    empty["machinery"]["valid"] = ()
    with pytest.raises(ValueError, match="class 'machinery' has no valid recording"):
        du.check_class_map(empty, [c for c in du.CLASSES if c != "speech"])
    du.check_class_map(du.class_map(du.Options(speech_per_language=2)))  # the recipe's own map passes


def test_bad_options_raise_clear_errors(tmp_path):
    out = tmp_path / "out"
    cases = [
        (["classes=bird,dog"], "classes='bird,dog': unknown class 'dog'; choose from bird, engine"),
        (["classes=bird,horn"], r"events_max=3 exceeds the 2 classes"),
        (["event_db_min=-10", "event_db_max=-20"], "event_db_min=-10.0 exceeds event_db_max=-20.0"),
        (["max_event_seconds=5"], r"max_event_seconds=5.0 must lie in 0.1..clip_seconds \(4.0\)"),
        (["events_min=0"], "events_min=0 must be >= 1"),
        (["test_clips=-1"], "test_clips=-1 must be >= 0"),
        (["background_db=0"], "background_db=0.0 must lie in -90..-10"),
    ]
    for overrides, message in cases:
        with pytest.raises(ValueError, match=message):
            du.build(out, options_from(du, overrides), progress=False)
    assert not out.exists()  # nothing written before the checks
    with pytest.raises(RecipeError, match="valid options: seed, sample_rate"):
        options_from(du, ["no_such_option=1"])
    with pytest.raises(RecipeError, match="not a valid int"):
        options_from(du, ["test_clips=many"])
    assert options_from(du, ["background_db=None"]).background_db is None


def test_missing_package_names_the_apt_get_line(tmp_path):
    options = options_from(du, [f"tuxpaint_dir={tmp_path / 'no-stamps'}", f"opensfx_cat={tmp_path / 'none.cat'}"])
    with pytest.raises(sources.MissingSourceError) as e:
        du.build(tmp_path / "out", options, progress=False)
    assert "apt-get install -y openttd-opensfx tuxpaint-stamps-default" in str(e.value).splitlines()
    assert str(tmp_path / "no-stamps") in str(e.value)
    assert not (tmp_path / "out").exists()


def test_a_subset_of_classes(tmp_path):
    info = _build(tmp_path / "two", 1, "classes=horn,bird", "events_max=2", "valid_clips=0", "isolated_clips=0")
    assert info.classes == ["bird", "horn"] and info.stems == ["bird", "horn", "background"]
    assert info.pool("valid", "eval").clips == 0 and info.stats["speech"] is None
    clips = _clips(tmp_path / "two", "test/eval")
    assert {label for c in clips for label in c["meta"]["labels"]} == {"bird", "horn"}
    assert all(set(c) == {"key", "meta", "mix", "bird", "horn", "background"} for c in clips)
    assert info.stats["left_out"]["opensfx:osfx_33"] == "class machinery not selected (option classes)"


def test_every_sound_effect_is_used_or_left_out_with_a_reason():
    recordings = du.all_recordings(du.Options())
    assert len(recordings) == 71 + 24 + 135  # opensfx (2 placeholders empty), simutrans, tuxpaint stamps
    used = {r for splits in du.CLASS_RECORDINGS.values() for ids in splits.values() for r in ids}
    assert used <= set(recordings) and set(du.BACKGROUND_RECORDINGS) <= set(recordings)
    for rec_id in recordings:
        if rec_id not in used and rec_id not in du.BACKGROUND_RECORDINGS:
            assert du.left_out_reason(rec_id), f"{rec_id} is neither used nor left out with a reason"
    assert du.left_out_reason("opensfx:osfx_33") is None  # a used one has no reason
    for rec_id in ("tuxpaint:animals/birds/nandou", "tuxpaint:animals/mammals/giraffe"):
        assert not np.any(recordings[rec_id].audio)  # the "digital silence" ones really are


def test_tuxpaint_readers():
    dog = {r.id: r for r in sources.tuxpaint_recordings()}["tuxpaint:animals/mammals/dogs/dog"]
    assert dog.title == "A dog." and dog.licence == "GPL-2" and dog.package == "tuxpaint-stamps-default"
    assert dog.sample_rate == 44100 and dog.audio.dtype == np.float32 and 0.8 < dog.seconds < 1.1
    truck = sources.read_tuxpaint_sound(sources.TUXPAINT_STAMPS_DIR / "vehicles/emergency/firetruck.ogg")
    assert truck.id == "tuxpaint:vehicles/emergency/firetruck" and truck.audio.ndim == 1 and truck.seconds > 10
    spoken = sources.tuxpaint_descriptions()
    assert {"fr", "ro", "ru", "ca", "bg", "es", "be", "el", "da", "en", "nl"} <= set(spoken)
    assert len(spoken["fr"]) > 900 and all(p.endswith("_desc_fr.ogg") for p, _ in spoken["fr"])
    assert (str(sources.TUXPAINT_STAMPS_DIR / "animals/mammals/dogs/dog_desc_fr.ogg"), "Un chien.") in spoken["fr"]
    with pytest.raises(ValueError, match="not readable as OGG Vorbis"):
        sources.read_tuxpaint_sound(sources.TUXPAINT_STAMPS_DIR / "animals/mammals/dogs/dog.txt")


def test_quantize_stems_keeps_the_sum_exact():
    rng = np.random.default_rng(0)
    stems = [rng.uniform(-0.5, 0.5, 1000) for _ in range(4)]  # their sum peaks far above -1 dBFS
    out, mix, scale = sources.quantize_stems(stems)
    assert scale < 1 and all(s.dtype == np.int16 for s in out)
    assert np.array_equal(mix.astype(np.int32), np.sum([s.astype(np.int32) for s in out], axis=0))
    assert np.abs(mix).max() <= 32767 * sources.PEAK + 2
    quiet, _, one = sources.quantize_stems([0.01 * s for s in stems])
    assert one == 1.0 and np.array_equal(quiet[0], np.round(0.01 * stems[0] * 32768).astype(np.int16))
    with pytest.raises(ValueError, match="equal length"):
        sources.quantize_stems([np.zeros(3), np.zeros(4)])


def test_every_option_is_documented():
    docs = option_docs(du)
    assert set(docs) == {f.name for f in dataclasses.fields(du.Options)}
    for name, doc in docs.items():
        assert "  " in doc and len(doc.split("  ", 1)[1]) > 5, f"option {name} has no comment"
    assert du.NAME == "demo-urban" and isinstance(du.VERSION, int) and callable(du.build)
    assert du.DEBIAN_PACKAGES == ["openttd-opensfx", "simutrans-pak64", "tuxpaint-stamps-default"]
