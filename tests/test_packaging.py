"""Install, Docker, sweep and SLURM files agree with each other and with the package."""
from __future__ import annotations

import configparser
import re

import pytest
import yaml
from conftest import REPO

from lightning_sep.config import ConfigError, load_config
from lightning_sep.methods import SCHEMAS


def _requirements() -> dict[str, str]:
    cfg = configparser.ConfigParser()
    cfg.read(REPO / "setup.cfg")
    out = {}
    for line in cfg["options"]["install_requires"].strip().splitlines():
        name, version = line.strip().split("==")
        out[name.lower()] = version
    return out


def _constraints() -> dict[str, tuple[str, str]]:
    out = {}
    for line in (REPO / "constraints.txt").read_text().splitlines():
        m = re.fullmatch(r"([A-Za-z0-9_.\-]+)(===|==)(\S+)", line.strip())
        if m:
            out[m[1].lower().replace("_", "-")] = (m[2], m[3])
    return out


def test_every_requirement_is_pinned_identically_in_constraints():
    constraints = _constraints()
    for name, version in _requirements().items():
        assert name in constraints, f"{name} missing from constraints.txt"
        assert constraints[name][1] == version, f"{name}: setup.cfg {version}, constraints {constraints[name][1]}"
    # the registry build of torch (the one torchaudio/torchvision import against), never the local +cpu file
    for name in ("torch", "torchaudio", "torchvision"):
        assert constraints[name][0] == "==="


def test_dockerfile_installs_the_same_pins_and_sound_packages():
    docker = (REPO / "Dockerfile").read_text()
    assert re.search(r"^FROM \S+:\d+\.\d+\.\d+-\S+$", docker, re.M), "base image must be pinned to a version"
    assert "COPY setup.cfg pyproject.toml constraints.txt" in docker
    assert re.search(r"pip install [^\n]*-c constraints\.txt \.", docker)
    make = (REPO / "Makefile").read_text()
    demo = re.search(r"^DEMO_DEB_PACKAGES := (.+)$", make, re.M)[1].split()
    packages = re.search(r"^DEB_PACKAGES := \$\(DEMO_DEB_PACKAGES\) (.+)$", make, re.M)[1].split()
    assert "espeak-ng" in demo and "ffmpeg" in packages
    for package in demo + packages:
        assert package in docker, f"Dockerfile lacks the Debian package {package}"
    assert "-c constraints.txt -e '.[dev]'" in make
    assert re.search(r"^USER (?!root)\w+", docker, re.M) and 'ENTRYPOINT ["lightning-sep"]' in docker
    assert 'VOLUME ["/data", "/runs"]' in docker


def test_sweep_passes_valid_overrides_to_fit(toy_dataset):
    sweep = yaml.safe_load((REPO / "experiments/sweeps/supervised_demo.yaml").read_text())
    command = sweep["command"]
    assert command[1:3] == ["lightning-sep", "fit"] and "${args_no_hyphens}" in command
    config = REPO / command[3]
    fixed = [c for c in command[4:] if "=" in c]
    # one value of each parameter, as the agent would pass them, must load
    picks = [f"{k}={v['values'][0] if 'values' in v else v['min']}" for k, v in sweep["parameters"].items()]
    cfg = load_config(config, [*fixed, *picks, f"data.root={toy_dataset}"], SCHEMAS)
    assert cfg.optim.lr == sweep["parameters"]["optim.lr"]["min"]
    with pytest.raises(ConfigError):
        load_config(config, ["optim.learning_rate=0.1"], SCHEMAS)


def test_sbatch_template_requeues_into_the_same_run():
    sbatch = (REPO / "experiments/slurm/fit.sbatch").read_text()
    assert "#SBATCH --signal=SIGUSR1@90" in sbatch and "#SBATCH --requeue" in sbatch
    assert re.search(r"^srun .*fit \"\$CONFIG\"", sbatch, re.M)
    assert "trainer.num_nodes" in sbatch and "trainer.strategy=ddp" in sbatch


def test_ci_runs_the_readme_test_command():
    readme = (REPO / "README.md").read_text()
    assert "make test" in readme and "make demo" in readme
    assert "make test" in (REPO / ".ci/run").read_text()


def test_every_experiment_yaml_loads(toy_dataset):
    for path in sorted((REPO / "experiments").glob("*/*.yaml")):
        if path.parent.name in ("sweeps",):
            continue
        cfg = load_config(path, [f"data.root={toy_dataset}"], SCHEMAS)
        assert cfg.experiment and cfg.method in SCHEMAS
