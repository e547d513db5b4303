"""Experiment configs: schema checks with helpful errors, overrides, and the run identity."""
from __future__ import annotations

import pytest
from conftest import REPO

from lightning_sep.config import ConfigError, identity, load_config, parse_overrides
from lightning_sep.methods import SCHEMAS
from lightning_sep.runs import resolve_run_dir, run_id

CONFIG = REPO / "experiments/supervised/demo_speech_noise.yaml"


def load(*overrides: str):
    return load_config(CONFIG, list(overrides), SCHEMAS)


def test_overrides_in_both_forms():
    assert parse_overrides(["a.b=1", "--c.d=x"]) == ["a.b=1", "c.d=x"]
    cfg = load("--optim.lr=0.01", "net.depth=3", "data.gain_db=[-3,0]")
    assert cfg.optim.lr == 0.01 and cfg.net.depth == 3 and list(cfg.data.gain_db) == [-3, 0]
    with pytest.raises(ConfigError, match="not of the form key=value"):
        parse_overrides(["optim.lr"])


def test_unknown_nested_key_lists_the_valid_ones():
    with pytest.raises(ConfigError) as e:
        load("net.chanels=3")
    assert "unknown config key 'net.chanels'" in str(e.value) and "did you mean 'net.channels'" in str(e.value)
    assert "depth" in str(e.value) and "max_channels" in str(e.value)


def test_unknown_key_in_the_yaml_names_the_file(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(CONFIG.read_text().replace("  batch_size: 16", "  batch_sise: 16"))
    with pytest.raises(ConfigError, match=rf"unknown config key 'data.batch_sise' in {bad}"):
        load_config(bad, [], SCHEMAS)


def test_wrong_type_is_an_error():
    with pytest.raises(ConfigError, match="batch_size"):
        load("data.batch_size=many")


def test_unknown_worker_start_is_an_error():
    with pytest.raises(ConfigError, match=r"data.worker_start is 'spawn'; use one of \['forkserver', 'fork'\]"):
        load("data.worker_start=spawn")


def test_unknown_method_and_missing_file():
    with pytest.raises(ConfigError, match="method 'nope' is not one of"):
        load("method=nope")
    with pytest.raises(ConfigError, match="no such config file"):
        load_config(REPO / "experiments/none.yaml", [], SCHEMAS)


def test_identity_ignores_operational_keys_only():
    base = identity(load())
    assert identity(load("trainer.devices=2", "trainer.strategy=ddp", "data.root=/elsewhere", "data.num_workers=8",
                         "data.worker_start=fork", "logging.wandb=false", "trainer.max_steps=99")) == base
    assert identity(load("optim.lr=0.002")) != base
    assert identity(load("seed=1")) != base


def test_run_folder_from_slurm_job_id(monkeypatch, tmp_path):
    monkeypatch.delenv("LIGHTNING_SEP_RUN_DIR", raising=False)
    monkeypatch.delenv("SLURM_ARRAY_JOB_ID", raising=False)
    monkeypatch.setenv("SLURM_JOB_ID", "4242")
    cfg = load(f"run.root={tmp_path}")
    assert run_id(cfg) == "slurm4242"
    assert resolve_run_dir(cfg) == tmp_path / "supervised-demo-speech-noise" / "slurm4242"
    monkeypatch.delenv("SLURM_JOB_ID")
    assert resolve_run_dir(cfg).name == identity(cfg)


def test_every_schema_key_is_documented():
    """Each field of the shared schema carries a comment in its dataclass source (the user interface)."""
    import dataclasses
    import inspect

    from lightning_sep.config import ExperimentConfig

    for f in dataclasses.fields(ExperimentConfig):
        sub = f.default_factory() if f.default_factory is not dataclasses.MISSING else None
        if not dataclasses.is_dataclass(sub):
            continue
        source = inspect.getsource(type(sub))
        for field in dataclasses.fields(sub):
            line = next(ln for ln in source.splitlines() if ln.strip().startswith(f"{field.name}:"))
            assert "#" in line, f"{type(sub).__name__}.{field.name} has no comment saying what it does"


EXPERIMENTS = sorted(p for p in (REPO / "experiments").rglob("*.yaml") if "sweeps" not in p.parts)


@pytest.mark.parametrize("path", EXPERIMENTS, ids=lambda p: str(p.relative_to(REPO / "experiments")))
def test_every_experiment_yaml_loads_against_its_schema(path):
    from lightning_sep.experiment import load

    cfg = load(path, ["data.root=unused"])
    folder = path.relative_to(REPO / "experiments").parts[0]
    # experiments/<method>/...; WeakSep's folder also holds the classifier it needs
    assert cfg.method == folder or (folder, cfg.method) == ("weaksep", "classifier")
    assert cfg.experiment
