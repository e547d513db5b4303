"""GLO masking (GLOM) and NES-FT (NES started from GLOM's estimates) on the toy speech + noise dataset."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import REPO, cli
from omegaconf import OmegaConf
from test_runs import ok

from lightning_sep import experiment
from lightning_sep.config import ConfigError
from lightning_sep.data.datamodule import SeparationDataModule
from lightning_sep.data.shards import DatasetInfo, pool_keys
from lightning_sep.data.streams import DataConfig, PoolSpec
from lightning_sep.methods.glom import GLOM

GLOM_CONFIG, FT_CONFIG = "experiments/glom/demo_speech_noise.yaml", "experiments/nes/demo_speech_noise_ft.yaml"


def small(root: Path, runs: Path, *extra: str) -> list[str]:
    return [f"data.root={root}", f"run.root={runs}", "data.batch_size=4", "data.num_workers=1",
            "trainer.progress_bar=false", "trainer.precision=32-true", "eval.examples=1", "logging.wandb=false",
            *extra]


def glom_small(root: Path, runs: Path, *extra: str) -> list[str]:
    return small(root, runs, "data.segment_seconds=1.0", "glom.glo.channels=8", "glom.glo.levels=3",
                 "glom.glo.latent_dim=8", "trainer.max_steps=40", "trainer.val_every_n_steps=20",
                 "glom.search_steps=5", *extra)


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("glom-runs")


@pytest.fixture(scope="module")
def glom_run(toy_dataset, runs) -> Path:
    proc = ok(cli("fit", GLOM_CONFIG, *glom_small(toy_dataset, runs)))
    return Path(proc.stdout.strip().splitlines()[-1])


def test_indexed_pool_gives_each_example_its_clips_position(toy_dataset):
    data = SeparationDataModule(DataConfig(root=str(toy_dataset), segment_seconds=1.0, batch_size=4, num_workers=0,
                                           gain_db=[0.0, 0.0]),
                                {"observed": PoolSpec("train", "observed", ["noise"], indexed=True)},
                                forbidden=("speech",))
    data.setup("fit")
    info = DatasetInfo.load(toy_dataset)
    keys = pool_keys(info.urls("train", "observed"))
    assert len(keys) == 23 == len(set(keys))
    clips = {key: raw for url in info.urls("train", "observed") for raw in _raws(url) for key in [raw["__key__"]]}
    from lightning_sep.data.shards import decode_sample

    batch = next(iter(data.train_dataloader()))["observed"]
    for noise, index in zip(batch["noise"], batch["index"], strict=True):
        stored = decode_sample(clips[keys[int(index)]], info.sample_rate, ["noise"])["noise"]
        torch.testing.assert_close(noise, torch.from_numpy(stored))  # the row names the very clip it came with


def _raws(url):
    from lightning_sep.data.shards import iter_tar

    return iter_tar(url)


def test_glom_trains_codes_and_generator_and_tests_with_masks_that_sum_to_one(toy_dataset, glom_run):
    history = next((glom_run / "csv").rglob("metrics.csv")).read_text().splitlines()
    assert "train/l1_glo" in history[0]
    ok(cli("test", str(glom_run)))
    results = json.loads((glom_run / "results.json").read_text())
    assert results["method"] == "glom" and len(results["clips"]) == 9
    assert set(results["summary"]) == {"speech", "noise"}
    cfg = OmegaConf.load(glom_run / "config.yaml")
    model = GLOM(OmegaConf.to_container(cfg, resolve=True),
                 experiment.dataset_summary(DatasetInfo.load(toy_dataset))).eval()
    torch.manual_seed(0)
    mix = 0.1 * torch.randn(2, 20000)  # longer than the generator's second: explained window by window
    estimates = model.separate(mix)
    assert estimates.shape == (2, 2, 20000)
    assert ((estimates.sum(1) - mix).norm() / mix.norm()).item() < 1e-4


def test_search_moves_the_code_towards_a_clip_the_generator_can_draw(toy_dataset, glom_run):
    state = torch.load(glom_run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    model = GLOM(state["hyper_parameters"]["config"], state["hyper_parameters"]["dataset"])
    model.load_state_dict(state["state_dict"])
    model.eval()
    with torch.no_grad():
        drawn = model.generator(torch.nn.functional.normalize(model.codes.weight[:3], dim=-1))
        start = model.generator(torch.nn.functional.normalize(model.codes.weight.mean(0, keepdim=True), dim=-1))
    before = (start - drawn).abs().mean().item()
    model.cfg.glom.search_steps = 60
    found = model.search(drawn)
    after = (found - drawn).abs().mean().item()
    assert after < 0.7 * before, (before, after)  # the search finds codes that fit, not the mean code


def test_gain_augmentation_is_refused(toy_dataset, tmp_path):
    with pytest.raises(ConfigError, match=r"data.gain_db=\[-6.0, 0.0\]"):
        experiment.load(REPO / GLOM_CONFIG, [f"data.root={toy_dataset}", "data.gain_db=[-6.0,0.0]"])


def test_nes_ft_starts_from_the_glom_estimates(toy_dataset, runs, glom_run):
    ft = small(toy_dataset, runs, "data.segment_seconds=0.5", "net.depth=2", "net.channels=8", "trainer.max_steps=20",
               "nes.iterations=2", f"nes.glom_checkpoint={glom_run / 'checkpoints' / 'last.ckpt'}")
    proc = ok(cli("fit", FT_CONFIG, *ft))
    folder = Path(proc.stdout.strip().splitlines()[-1])
    made_by = json.loads((folder / "nes" / "estimates-0" / "dataset.json").read_text())["made_by"]
    assert made_by["estimate"].startswith("GLO masking")
    # X̂₀ is GLOM's estimate of the speech, not a constant share of the mixture
    from lightning_sep.data.shards import decode_sample, iter_tar

    info = DatasetInfo.load(toy_dataset)
    mixtures = {raw["__key__"]: decode_sample(raw, info.sample_rate, ["mix"])["mix"]
                for url in info.urls("train", "mixtures") for raw in iter_tar(url)}
    estimates_root = folder / "nes" / "estimates-0"
    estimate_info = DatasetInfo.load(estimates_root)
    ratios = []
    for url in estimate_info.urls("train", "estimates"):
        for raw in iter_tar(url):
            x0 = decode_sample(raw, info.sample_rate, ["estimate"])["estimate"]
            mix = mixtures[raw["__key__"]]
            ratios.append(float((x0 * mix).sum() / (mix * mix).sum()))
    assert len(ratios) == len(mixtures)
    assert max(ratios) - min(ratios) > 0.01  # a constant X̂₀ = c·Y would give c for every clip
    ok(cli("test", str(folder)))
    assert "iteration_0" in json.loads((folder / "results.json").read_text())["baselines"]


def test_nes_ft_without_a_glom_run_names_the_fix(toy_dataset, tmp_path):
    with pytest.raises(ConfigError, match="no such file; train the glom run first"):
        from lightning_sep.methods.glom import load_glom

        load_glom(tmp_path / "missing.ckpt", {"observed": "noise", "unobserved": "speech"})
