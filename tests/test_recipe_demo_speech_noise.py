"""The ``demo-speech-noise`` recipe, built small from the real Debian sound packages (no mocks).

The packages are installed by ``make install`` (which ``make test`` runs first); without them the build tests
fail with the ``apt-get install -y ...`` line to run.
"""
from __future__ import annotations

import io
import itertools
import json
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from lightning_sep.data.recipes import RecipeError, get_recipe, options_from, sources
from lightning_sep.data.recipes import demo_speech_noise as dsn
from lightning_sep.data.shards import DatasetInfo, iter_tar

SMALL = ["mixtures_clips=16", "observed_clips=16", "isolated_clips=16", "valid_clips=12", "test_clips=12",
         "clips_per_shard=7"]
SPEECH_POOLS = ["train/mixtures", "train/isolated", "valid/eval", "test/eval"]
ALL_POOLS = ["train/mixtures", "train/observed", "train/isolated", "valid/eval", "test/eval"]


def _build(root: Path, seed: int) -> DatasetInfo:
    recipe = get_recipe("demo-speech-noise")
    try:
        return recipe.build(root, options_from(recipe, SMALL, seed=seed), progress=False)
    except sources.MissingSourceError as e:
        pytest.fail(f"Debian sound packages missing; run: {e.command}")


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("demo-speech-noise")
    roots = {"a": base / "seed3-a", "b": base / "seed3-b", "c": base / "seed4"}
    _build(roots["a"], 3)
    _build(roots["b"], 3)
    _build(roots["c"], 4)
    return roots


def _tars(root: Path) -> list[Path]:
    return sorted(p.relative_to(root) for p in root.rglob("*.tar"))


def _clips(root: Path, pool: str) -> list[dict]:
    """Raw clips of a pool: key, meta and int16 stems exactly as stored."""
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


def test_same_seed_gives_byte_identical_shards(built):
    a, b = built["a"], built["b"]
    assert _tars(a) == _tars(b) and len(_tars(a)) >= 5
    for rel in _tars(a):
        assert (a / rel).read_bytes() == (b / rel).read_bytes(), rel
    assert (a / "dataset.json").read_bytes() == (b / "dataset.json").read_bytes()


def test_other_seed_gives_other_data(built):
    a, c = built["a"], built["c"]
    differing = [rel for rel in _tars(a) if (c / rel).is_file() and (a / rel).read_bytes() != (c / rel).read_bytes()]
    assert len(differing) == len(_tars(a))


def test_training_pools_hold_only_their_members(built):
    info = DatasetInfo.load(built["a"])
    allowed = {"train/mixtures": {"mix.flac", "json"}, "train/observed": {"noise.flac", "json"}}
    for pool, suffixes in allowed.items():
        split, name = pool.split("/")
        names = []
        for url in info.urls(split, name):
            with tarfile.open(url) as tar:
                names += tar.getnames()
        assert names
        found = {n.split(".", 1)[1] for n in names}
        assert found == suffixes, (pool, found)
        keys = [n.split(".", 1)[0] for n in names]
        assert all(keys.count(k) == 2 for k in keys)  # every clip has its audio and its json
    for pool in ["train/mixtures"]:  # no speech audio, not even inside metadata
        for clip in _clips(built["a"], pool):
            assert set(clip) == {"key", "meta", "mix"}


def test_speech_recordings_are_disjoint_between_pools(built):
    ids = {pool: set() for pool in SPEECH_POOLS}
    for pool in SPEECH_POOLS:
        for clip in _clips(built["a"], pool):
            parts = clip["meta"]["source"]["speech"]
            assert parts and all(p["voice"] == clip["meta"]["voice"] for p in parts)  # one voice per clip
            ids[pool].update(p["id"] for p in parts)
    for pool in SPEECH_POOLS:
        assert any(not i.startswith("espeak-ng:") for i in ids[pool]), f"{pool} has no real speech"
        assert any(i.startswith("espeak-ng:") for i in ids[pool]), f"{pool} has no synthetic speech"
    for p, q in itertools.combinations(SPEECH_POOLS, 2):
        assert not ids[p] & ids[q], (p, q, sorted(ids[p] & ids[q])[:5])
    assert not any(c["meta"]["source"].get("speech") for c in _clips(built["a"], "train/observed"))


def test_noise_spans_are_disjoint_between_pools(built):
    spans: dict[str, dict[str, set]] = {}  # recording -> pool -> spans
    for pool in ALL_POOLS:
        for clip in _clips(built["a"], pool):
            noise = clip["meta"]["source"]["noise"]
            spans.setdefault(noise["id"], {}).setdefault(pool, set()).add(tuple(noise["span_s"]))
            if noise["mode"] == "crop":
                assert noise["span_s"][0] <= noise["used_s"][0] < noise["used_s"][1] <= noise["span_s"][1]
    assert len(spans) > 10
    shared = 0
    for rec, by_pool in spans.items():
        assert all(len(s) == 1 for s in by_pool.values()), (rec, by_pool)  # one span per recording and pool
        shared += len(by_pool) > 1
        for (p, (a,)), (q, (b,)) in itertools.combinations(((p, tuple(s)) for p, s in by_pool.items()), 2):
            assert max(a[0], b[0]) >= min(a[1], b[1]) - 1e-6, (rec, p, a, q, b)
    assert shared > 5  # recordings really are split across pools, not given whole to one


def test_heldout_voices_only_in_valid_and_test(built):
    info = DatasetInfo.load(built["a"])
    heldout = set(info.stats["heldout_voices"])
    assert {"espeak-ng:en-us+f5", "pocketsphinx:librivox"} <= heldout
    assert not heldout & set(info.stats["seen_voices"])
    train_voices = {c["meta"]["voice"] for pool in ["train/mixtures", "train/isolated"]
                    for c in _clips(built["a"], pool)}
    assert train_voices and not train_voices & heldout
    assert train_voices == set(info.stats["voices"]["train"])
    for pool in ["valid/eval", "test/eval"]:
        clips = _clips(built["a"], pool)
        for c in clips:
            assert c["meta"]["voice_seen_in_train"] == (c["meta"]["voice"] not in heldout)
        assert any(c["meta"]["voice"] in heldout for c in clips)
        assert any(c["meta"]["voice"] not in heldout for c in clips)


def test_mix_is_exact_sum_and_snr_in_range(built):
    opts = DatasetInfo.load(built["a"]).made_by["options"]
    for pool in ["train/isolated", "valid/eval", "test/eval"]:
        for c in _clips(built["a"], pool):
            s, v, m = (c[k].astype(np.int32) for k in ("speech", "noise", "mix"))
            assert np.array_equal(m, s + v), c["key"]
            assert len(m) == int(opts["clip_seconds"] * opts["sample_rate"])
            snr = 10 * np.log10(np.sum(s.astype(float) ** 2) / np.sum(v.astype(float) ** 2))
            meta = c["meta"]
            assert abs(snr - meta["snr_db"]) < 1e-3
            assert opts["snr_db_min"] <= meta["snr_db_target"] <= opts["snr_db_max"]
            assert abs(meta["snr_db"] - meta["snr_db_target"]) < 0.05
            guarded = np.abs(m).max() > 29000  # scaled down to peak at -1 dBFS: quieter than drawn
            assert opts["level_db_min"] - 0.5 <= meta["level_db"] <= opts["level_db_max"] + 0.5 or guarded
            assert np.abs(m).max() <= 32767 * 10 ** (-1 / 20) + 2


def test_dataset_json(built):
    info = DatasetInfo.load(built["a"])
    assert info.name == "demo-speech-noise" and info.sample_rate == 8000
    assert info.stems == ["speech", "noise"] and info.observed == "noise" and info.unobserved == "speech"
    assert {f"{s}/{p}" for s, pools in info.splits.items() for p in pools} == set(ALL_POOLS)
    assert info.pool("train", "mixtures").members == ["mix"]
    assert info.pool("train", "observed").members == ["noise"]
    for split, pool in [("train", "isolated"), ("valid", "eval"), ("test", "eval")]:
        assert sorted(info.pool(split, pool).members) == ["mix", "noise", "speech"]
    assert [info.pool(*p.split("/")).clips for p in ALL_POOLS] == [16, 16, 16, 12, 12]
    assert len(info.pool("train", "mixtures").shards) == 3  # 16 clips, 7 per shard
    made = info.made_by
    assert made["recipe"] == "demo-speech-noise" and made["version"] == dsn.VERSION and made["seed"] == 3
    assert made["options"]["seed"] == 3 and made["options"]["mixtures_clips"] == 16
    assert set(dsn.DEBIAN_PACKAGES) <= set(made["packages"])
    assert all(made["packages"][p] for p in dsn.DEBIAN_PACKAGES)  # versions from dpkg-query
    by_source = {}
    for entry in info.licences:
        by_source.setdefault(entry["source"], []).append(entry)
    assert by_source["asterisk-core-sounds-en-wav"][0]["licence"] == "CC-BY-SA-3.0"
    assert {e["licence"] for e in by_source["openttd-opensfx"]} >= {"CC-BY-SA-3.0", "CC-BY-3.0", "CC0-1.0"}
    assert by_source["simutrans-pak64"][0]["licence"] == "Artistic-1.0"
    stats = info.stats
    assert stats["noise_recordings"]["used"] >= 60 and stats["noise_recordings"]["skipped"]
    assert stats["snr_db"]["range"] == [-5.0, 5.0]
    assert -5.05 <= stats["snr_db"]["min"] <= stats["snr_db"]["max"] <= 5.05
    assert set(stats["voices"]) == {"train", "valid", "test"}


def test_missing_package_names_the_apt_get_line(tmp_path):
    recipe = get_recipe("demo-speech-noise")
    options = options_from(recipe, [f"asterisk_dir={tmp_path / 'no-such-dir'}",
                                    f"opensfx_cat={tmp_path / 'none.cat'}"])
    with pytest.raises(sources.MissingSourceError) as e:
        recipe.build(tmp_path / "out", options, progress=False)
    lines = str(e.value).splitlines()
    assert "apt-get install -y asterisk-core-sounds-en-wav openttd-opensfx" in lines
    assert str(tmp_path / "no-such-dir") in str(e.value)
    assert not (tmp_path / "out").exists()  # nothing written before the check


def test_registry_and_options():
    with pytest.raises(RecipeError, match="demo-speech-noise"):
        get_recipe("no-such-recipe")
    recipe = get_recipe("demo-speech-noise")
    o = options_from(recipe, ["snr_db_min=-3", "test_clips=7", "clip_seconds=2"], seed=5)
    assert (o.snr_db_min, o.test_clips, o.clip_seconds, o.seed) == (-3.0, 7, 2.0, 5)
    with pytest.raises(RecipeError, match="valid options: seed, sample_rate"):
        options_from(recipe, ["no_such_option=1"])
    with pytest.raises(RecipeError, match="not a valid int"):
        options_from(recipe, ["test_clips=many"])
    with pytest.raises(ValueError, match="snr_db_min"):
        dsn.validate(options_from(recipe, ["snr_db_min=6"]))
    for name, module in __import__("lightning_sep.data.recipes", fromlist=["RECIPES"]).RECIPES.items():
        assert module.NAME == name and isinstance(module.VERSION, int) and isinstance(module.DEBIAN_PACKAGES, list)
        assert callable(module.build)


def test_opensfx_catalogue_parser():
    entries = sources.read_opensfx()
    assert len(entries) == 73
    ferry = entries[7]
    assert ferry.title == "Ferry horn" and ferry.licence == "CC-BY-3.0" and "Leon Milo" in ferry.credit
    assert ferry.filename == "src/wav/osfx_07.wav" and ferry.sample_rate == 44100
    assert 3.0 < len(ferry.audio) / ferry.sample_rate < 3.3 and ferry.audio.dtype == np.float32
    assert {e.licence for e in entries} == {"CC0-1.0", "CC-BY-3.0", "CC-BY-SA-3.0"}
    assert sum(len(e.audio) == 0 for e in entries) == 2  # the two "Unused/Nothing" placeholders
    assert sources.licence_of("openttd-opensfx", ferry.filename) == "CC-BY-SA-3.0"  # the collection


def test_cli_builds(tmp_path):
    out = tmp_path / "cli"
    args = [sys.executable, "-m", "lightning_sep", "prepare", "demo-speech-noise", "--out", str(out), "--seed", "2",
            "--no-progress", "mixtures_clips=2", "observed_clips=2", "isolated_clips=2", "valid_clips=2",
            "test_clips=2"]
    run = subprocess.run(args, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    assert DatasetInfo.load(out).made_by["seed"] == 2
    bad = subprocess.run(args[:5] + ["--out", str(out), "bogus=1"], capture_output=True, text=True, timeout=300)
    assert bad.returncode == 2 and "valid options" in bad.stderr and "Traceback" not in bad.stderr
