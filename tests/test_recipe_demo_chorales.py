"""The ``demo-chorales`` recipe, built small from the real music21 corpus and the real fluidsynth library.

music21 comes with ``pip install`` (setup.cfg); libfluidsynth3 and timgm6mb-soundfont are Debian packages
that ``make install`` adds. Without them the build tests fail with the ``pip install`` or ``apt-get
install -y ...`` line to run. The recipe is imported directly (not through the registry).
"""
from __future__ import annotations

import dataclasses
import io
import itertools
import json
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from lightning_sep.data.recipes import RecipeError, music, option_docs, options_from, sources
from lightning_sep.data.recipes import demo_chorales as dc
from lightning_sep.data.shards import DatasetInfo, iter_tar

SMALL = ["max_pieces=30", "mixtures_clips=6", "observed_clips=6", "isolated_clips=6", "valid_clips=3",
         "test_clips=3", "clips_per_shard=4"]
COUNTS = {"train/mixtures": 6, "train/observed": 6, "train/isolated": 6, "valid/eval": 3, "test/eval": 3}
ALL_POOLS = list(COUNTS)
VOCAL_POOLS = ["train/mixtures", "train/isolated", "valid/eval", "test/eval"]
FULL_POOLS = ["train/isolated", "valid/eval", "test/eval"]


def _build(root: Path, seed: int, *extra: str) -> DatasetInfo:
    try:
        return dc.build(root, options_from(dc, SMALL + list(extra), seed=seed), progress=False)
    except sources.MissingSourceError as e:
        pytest.fail(f"Debian packages missing; run: {e.command}")
    except music.MissingPythonPackageError as e:
        pytest.fail(f"music21 missing; run: {e.command}")


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("demo-chorales")
    roots = {"a": base / "seed3-a", "b": base / "seed3-b", "c": base / "seed4"}
    _build(roots["a"], 3, "workers=1")
    _build(roots["b"], 3, "workers=2")  # other processes render: the data must not change
    _build(roots["c"], 4, "workers=1")
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


def test_same_seed_gives_byte_identical_shards_whatever_the_workers(built):
    a, b = built["a"], built["b"]
    assert _tars(a) == _tars(b) and len(_tars(a)) >= 7
    for rel in _tars(a):
        assert (a / rel).read_bytes() == (b / rel).read_bytes(), rel
    assert (a / "dataset.json").read_bytes() == (b / "dataset.json").read_bytes()


def test_other_seed_gives_other_data(built):
    a, c = built["a"], built["c"]
    common = [rel for rel in _tars(a) if (c / rel).is_file()]
    assert common and all((a / rel).read_bytes() != (c / rel).read_bytes() for rel in common)
    pieces_a = DatasetInfo.load(a).stats["pieces"]
    pieces_c = DatasetInfo.load(c).stats["pieces"]
    assert pieces_a != pieces_c  # tunes are dealt to pools by the seed


def test_pools_hold_only_their_members(built):
    info = DatasetInfo.load(built["a"])
    allowed = {"train/mixtures": {"mix.flac", "json"}, "train/observed": {"accompaniment.flac", "json"}}
    for pool in ALL_POOLS:
        split, name = pool.split("/")
        names = []
        for url in info.urls(split, name):
            with tarfile.open(url) as tar:
                names += tar.getnames()
        found = {n.split(".", 1)[1] for n in names}
        expected = allowed.get(pool, {"mix.flac", "vocals.flac", "accompaniment.flac", "json"})
        assert found == expected, (pool, found)
        assert len({n.split(".", 1)[0] for n in names}) == COUNTS[pool]
    for clip in _clips(built["a"], "train/mixtures"):  # the vocals are never stored in the mixtures pool
        assert set(clip) == {"key", "meta", "mix"}
    for clip in _clips(built["a"], "train/observed"):
        assert set(clip) == {"key", "meta", "accompaniment"}
        assert "soprano" not in clip["meta"]["source"]["instruments"] and "vocals_db" not in clip["meta"]


def test_pieces_and_melodies_never_cross_pools(built):
    info = DatasetInfo.load(built["a"])
    pieces: dict[str, set[str]] = {}
    tunes: dict[str, set[str]] = {}
    for pool in ALL_POOLS:
        clips = _clips(built["a"], pool)
        pieces[pool] = {c["meta"]["source"]["piece"] for c in clips}
        tunes[pool] = {c["meta"]["source"]["tune"] for c in clips}
        assert pieces[pool] == set(info.stats["pieces"][pool])  # the recorded piece ids are the ones used
        assert len(pieces[pool]) >= 2 or COUNTS[pool] < 2
    for p, q in itertools.combinations(ALL_POOLS, 2):
        assert not pieces[p] & pieces[q], (p, q)
        assert not tunes[p] & tunes[q], (p, q)
    # Independently of the recipe's grouping: no two pieces in different pools share a BWV number, a catalogue
    # title or a soprano melody (checked on the real scores).
    by_id = {c.id: c for c in dc.scan_corpus(str(music.music21_corpus_dir()), 30)[0]}
    signature = {i: music.melody_signature(by_id[i].voices["soprano"]) for ids in pieces.values() for i in ids}
    for p, q in itertools.combinations(ALL_POOLS, 2):
        for i, j in itertools.product(pieces[p], pieces[q]):
            assert by_id[i].bwv != by_id[j].bwv
            ti, tj = dc.title_of(by_id[i]), dc.title_of(by_id[j])
            assert ti is None or tj is None or dc._title_key(ti) != dc._title_key(tj), (i, j, ti)
            assert music.melody_similarity(signature[i], signature[j]) < 0.8, (i, j)
    skipped = info.stats["corpus"]["skipped"]
    assert skipped["bwv112.5-sc.mxl"].startswith("another version of BWV 112.5")  # a duplicate, left out
    assert not any("bwv112.5-sc" in ids for ids in info.stats["pieces"].values())


def test_mix_is_exact_sum_and_levels_in_range(built):
    opts = DatasetInfo.load(built["a"]).made_by["options"]
    n = int(opts["clip_seconds"] * opts["sample_rate"])
    peak = 32767 * 10 ** (-1 / 20) + 2
    for pool in FULL_POOLS:
        for c in _clips(built["a"], pool):
            v, a, m = (c[k].astype(np.int32) for k in ("vocals", "accompaniment", "mix"))
            assert len(m) == n and np.array_equal(m, v + a), c["key"]
            ratio = 10 * np.log10(np.sum(v.astype(float) ** 2) / np.sum(a.astype(float) ** 2))
            meta = c["meta"]
            assert abs(ratio - meta["vocals_db"]) < 1e-3
            assert opts["vocals_db_min"] <= meta["vocals_db_target"] <= opts["vocals_db_max"]
            assert abs(meta["vocals_db"] - meta["vocals_db_target"]) < 0.05
            level = 10 * np.log10(np.mean((m / 32768.0) ** 2))
            assert abs(level - meta["level_db"]) < 0.01
            guarded = np.abs(m).max() > 29000  # scaled down to peak at -1 dBFS: quieter than drawn
            assert opts["level_db_min"] - 0.1 <= meta["level_db"] <= opts["level_db_max"] + 0.1 or guarded
            assert np.abs(m).max() <= peak
            assert np.sqrt(np.mean(v.astype(float) ** 2)) > 30  # both stems really sound
    for c in _clips(built["a"], "train/observed"):
        a = c["accompaniment"].astype(float)
        assert len(a) == n and np.abs(a).max() <= peak
        level = 10 * np.log10(np.mean((a / 32768.0) ** 2))
        assert abs(level - c["meta"]["level_db"]) < 0.01
        # the accompaniment alone is quieter than a mixture at the lowest level with the loudest vocals
        assert opts["level_db_min"] - 10 * np.log10(1 + 10 ** (opts["vocals_db_max"] / 10)) - 0.1 <= level
        assert level <= opts["level_db_max"] - 10 * np.log10(1 + 10 ** (opts["vocals_db_min"] / 10)) + 0.1
    for c in _clips(built["a"], "train/mixtures"):
        meta, m = c["meta"], c["mix"].astype(float)
        assert opts["vocals_db_min"] - 0.05 <= meta["vocals_db"] <= opts["vocals_db_max"] + 0.05
        assert abs(10 * np.log10(np.mean((m / 32768.0) ** 2)) - meta["level_db"]) < 0.01
        guarded = np.abs(m).max() > 29000
        assert opts["level_db_min"] - 0.1 <= meta["level_db"] <= opts["level_db_max"] + 0.1 or guarded


def test_clip_metadata_describes_the_performance(built):
    opts = DatasetInfo.load(built["a"]).made_by["options"]
    accompaniment_programs = {p for e in dc.ENSEMBLES.values() for part in dc.ACCOMPANIMENT for p in e[part]}
    windows: dict[str, list[tuple[float, float]]] = {}
    for pool in ALL_POOLS:
        for c in _clips(built["a"], pool):
            s = c["meta"]["source"]
            assert s["file"] == f"{s['piece']}.mxl" and s["piece"].startswith(f"bwv{s['bwv']}")
            w0, w1 = s["window_s"]
            assert w0 >= 0 and abs(w1 - w0 - opts["clip_seconds"]) < 1e-3
            assert s["window_beats"][0] < s["window_beats"][1]
            assert opts["tempo_bpm_min"] <= s["tempo_bpm"] <= opts["tempo_bpm_max"]
            assert abs(s["transpose"]) <= opts["transpose_max"]
            assert opts["fermata_hold_min"] <= s["fermata_hold"] <= opts["fermata_hold_max"]
            assert s["ensemble"] in dc.ENSEMBLE_NAMES
            parts = s["instruments"]
            assert {parts[p]["program"] for p in dc.ACCOMPANIMENT} <= accompaniment_programs
            if s["ensemble"] in ("organ", "keyboard"):  # one player: one instrument for the three parts
                assert len({parts[p]["program"] for p in dc.ACCOMPANIMENT}) == 1
            if pool != "train/observed":
                assert parts["soprano"]["program"] in dc.VOCAL_PROGRAMS
                assert parts["soprano"]["name"] in ("Choir Aahs", "Voice Oohs", "Synth Voice")
            windows.setdefault(s["piece"], []).append((w0, w1))
    for piece, spans in windows.items():  # clips of one piece never overlap
        spans.sort()
        assert all(b[0] >= a[1] - 1e-6 for a, b in zip(spans[:-1], spans[1:], strict=True)), piece


def test_dataset_json(built):
    info = DatasetInfo.load(built["a"])
    assert info.name == "demo-chorales" and info.sample_rate == 16000
    assert info.stems == ["vocals", "accompaniment"]
    assert info.observed == "accompaniment" and info.unobserved == "vocals"
    assert {f"{s}/{p}" for s, pools in info.splits.items() for p in pools} == set(ALL_POOLS)
    assert info.pool("train", "mixtures").members == ["mix"]
    assert info.pool("train", "observed").members == ["accompaniment"]
    for pool in FULL_POOLS:
        assert sorted(info.pool(*pool.split("/")).members) == ["accompaniment", "mix", "vocals"]
    assert [info.pool(*p.split("/")).clips for p in ALL_POOLS] == list(COUNTS.values())
    assert len(info.pool("train", "mixtures").shards) == 2  # 6 clips, 4 per shard
    assert info.stats["clips"] == COUNTS
    made = info.made_by
    assert made["recipe"] == "demo-chorales" and made["version"] == dc.VERSION and made["seed"] == 3
    assert made["options"]["max_pieces"] == 30 and "workers" not in made["options"]  # workers never matter
    assert set(made["packages"]) == set(dc.DEBIAN_PACKAGES) and all(made["packages"].values())
    assert made["software"]["music21"]
    by_source = {e["source"]: e for e in info.licences}
    assert by_source["timgm6mb-soundfont"]["licence"] == "GPL-2"
    assert by_source["libfluidsynth3"]["licence"] == "LGPL-2.1+"
    assert any(s.startswith("music21 ") and "public domain" in e["licence"] for s, e in by_source.items())
    assert info.stats["corpus"]["files"] == 30 and info.stats["corpus"]["tunes"] < info.stats["corpus"]["chorales"]
    assert info.stats["vocals_db"]["range"] == [-5.0, 5.0]
    assert -5.05 <= info.stats["vocals_db"]["min"] <= info.stats["vocals_db"]["max"] <= 5.05
    loudness = info.stats["instrument_loudness_db"]
    assert set(loudness) == set(dc.ACCOMPANIMENT) and all(-60 < db < 0 for d in loudness.values() for db in d.values())


def test_bad_options_raise_clear_errors(tmp_path):
    with pytest.raises(ValueError, match="vocals_db_min=6.0 exceeds vocals_db_max=5.0"):
        dc.validate(options_from(dc, ["vocals_db_min=6"]))
    with pytest.raises(ValueError, match="min_active_fraction"):
        dc.validate(options_from(dc, ["min_active_fraction=0"]))
    with pytest.raises(RecipeError, match="valid options: seed, sample_rate"):
        options_from(dc, ["no_such_option=1"])
    with pytest.raises(RecipeError, match="not a valid int"):
        options_from(dc, ["test_clips=many"])
    out = tmp_path / "out"
    with pytest.raises(ValueError, match="corpus_dir=.*no-such-dir.*is not a folder"):
        dc.build(out, options_from(dc, [f"corpus_dir={tmp_path / 'no-such-dir'}"]), progress=False)
    # more clips than 30 scores hold: the message names the pool, the option and what to do
    many = ["mixtures_clips=600", "observed_clips=600", "isolated_clips=600", "valid_clips=300", "test_clips=300"]
    with pytest.raises(ValueError, match=r"train/mixtures needs 600 clips but its pieces hold only \d+ usable "
                                         r"windows of 3.0 s in \d+ pieces; lower mixtures_clips"):
        dc.build(out, options_from(dc, SMALL + many), progress=False)
    with pytest.raises(ValueError, match=r"train/mixtures got no tune: \d+ tunes are too few .*max_pieces=30"):
        dc.build(out, options_from(dc, SMALL + ["valid_clips=5000"]), progress=False)
    assert not out.exists()  # nothing written before the checks


def test_missing_debian_packages_name_the_apt_get_line(tmp_path):
    options = options_from(dc, [f"soundfont={tmp_path / 'none.sf2'}", f"fluidsynth={tmp_path / 'libnone.so'}"])
    with pytest.raises(sources.MissingSourceError) as e:
        dc.build(tmp_path / "out", options, progress=False)
    assert "apt-get install -y libfluidsynth3 timgm6mb-soundfont" in str(e.value).splitlines()
    assert str(tmp_path / "none.sf2") in str(e.value)
    assert not (tmp_path / "out").exists()


def test_missing_music21_names_the_pip_line(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "music21", None)  # what `import music21` sees when it is not installed
    with pytest.raises(music.MissingPythonPackageError) as e:
        dc.build(tmp_path / "out", options_from(dc, SMALL), progress=False)
    assert e.value.command == "pip install music21==10.5.1" and e.value.command in str(e.value)
    assert not (tmp_path / "out").exists()


def test_every_option_is_documented():
    docs = option_docs(dc)
    assert set(docs) == {f.name for f in dataclasses.fields(dc.Options)}
    for name, doc in docs.items():
        assert "  " in doc and len(doc.split("  ", 1)[1]) > 5, f"option {name} has no comment"
    assert dc.NAME == "demo-chorales" and isinstance(dc.VERSION, int) and callable(dc.build)
    assert dc.DEBIAN_PACKAGES == ["libfluidsynth3", "timgm6mb-soundfont"]


def test_chorales_are_read_by_part_name():
    assert music.voice_of("Soprano\rOboe 1,2\rViolin1") == "soprano"
    assert music.voice_of("Bass Continuo") == "bass" and music.voice_of("Soprano 2") == "soprano"
    assert music.voice_of("Horn 2") is None and music.voice_of(None) is None
    c = music.read_chorale(music.music21_corpus_dir() / "bwv1.6.mxl")  # a horn part comes before the soprano
    assert c.part_names[0] == "Horn 2" and c.id == "bwv1.6" and c.bwv == "1.6"
    soprano, bass = c.voices["soprano"], c.voices["bass"]
    assert 60 <= min(n.pitch for n in soprano) and max(n.pitch for n in bass) < 67
    assert np.mean([n.pitch for n in soprano]) > np.mean([n.pitch for n in c.voices["alto"]])
    assert c.length == 80.0 and all(len(c.voices[v]) > 30 for v in music.VOICES)
    with pytest.raises(music.ScoreError, match="bwv846.mxl: no part named Soprano, Alto, Tenor, Bass"):
        music.read_chorale(music.music21_corpus_dir() / "bwv846.mxl")  # a prelude, not a chorale


def test_melody_similarity_tells_tunes_apart():
    folder = music.music21_corpus_dir()
    sig = {i: music.melody_signature(music.read_chorale(folder / f"{i}.mxl").voices["soprano"])
           for i in ("bwv270", "bwv271", "bwv272", "bwv244.54")}
    # BWV 270, 271 and 244.54 harmonise one tune ("Herzlich tut mich verlangen"); BWV 272 has the same text
    # ("Befiehl du deine Wege") on another tune
    assert music.melody_similarity(sig["bwv270"], sig["bwv271"]) >= 0.8
    assert music.melody_similarity(sig["bwv270"], sig["bwv244.54"]) >= 0.8
    assert music.melody_similarity(sig["bwv270"], sig["bwv272"]) < 0.5


def test_render_is_repeatable_and_independent_of_earlier_renders():
    notes = tuple(music.TimedNote(0.25 * i, 0.25 * i + 0.2, 60 + (i % 7), 90) for i in range(8))
    track = music.Track(52, notes, reverb=60)
    first = music.render([track], 16000, 2.5)
    music.render([music.Track(19, notes, reverb=127, volume=127)], 16000, 2.5)  # leaves nothing behind
    again = music.render([track], 16000, 2.5)
    assert first.dtype == np.float32 and len(first) == 40000
    assert np.array_equal(first, again)
    assert 10 * np.log10(np.mean(first.astype(float) ** 2)) > -50
    quiet = music.render([dataclasses.replace(track, volume=64)], 16000, 2.5)  # CC 7: 40 log10(64/127) dB
    gain = 10 * np.log10(np.mean(quiet.astype(float) ** 2) / np.mean(first.astype(float) ** 2))
    assert abs(gain - (40 * np.log10(64 / 127) - 40 * np.log10(100 / 127))) < 0.2


def test_fermatas_stretch_time_smoothly():
    c = music.read_chorale(music.music21_corpus_dir() / "bwv10.7.mxl")
    perf = dc.perform(c, options_from(dc, ["fermata_hold_min=2", "fermata_hold_max=2"], seed=1))
    assert perf.fermatas and perf.fermata_hold == 2
    beats = np.linspace(0, c.length, 400)
    t = perf.seconds(beats)
    assert np.all(np.diff(t) > 0)
    held = sum(b - a for a, b in perf.fermatas)
    assert abs(perf.duration - (c.length + held) * 60 / perf.tempo_bpm) < 1e-9
    for x in (0.0, 3.7, c.length / 2, c.length - 0.1):
        assert abs(perf.beats(float(perf.seconds(x))) - x) < 1e-6
