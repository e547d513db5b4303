"""Images through the methods: the supervised bound and NES on a small real demo-digits build, end to end."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from conftest import cli
from test_runs import ok

from lightning_sep.data.recipes import build
from lightning_sep.data.shards import DatasetInfo


@pytest.fixture(scope="module")
def digits(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("digits")
    counts = ["mixtures_clips=96", "observed_clips=96", "isolated_clips=96", "valid_clips=16", "test_clips=24",
              "clips_per_shard=40"]
    build("demo-digits", root, seed=0, overrides=counts, progress=False)
    return root


def small(root: Path, runs: Path, *extra: str) -> list[str]:
    return [f"data.root={root}", f"run.root={runs}", "data.batch_size=16", "net.depth=2", "net.channels=8",
            "trainer.progress_bar=false", "logging.wandb=false", "eval.examples=1", *extra]


def test_nes_on_images(digits, tmp_path):
    proc = ok(cli("fit", "experiments/nes/demo_digits.yaml",
                  *small(digits, tmp_path, "trainer.max_steps=20", "nes.iterations=2",
                         "nes.estimate_exponent=1")))  # the plain mask: sharpening needs more than 20 steps
    run = Path(proc.stdout.strip().splitlines()[-1])
    history = json.loads((run / "nes" / "iterations.json").read_text())
    assert [h["iteration"] for h in history] == [1, 2] and set(history[0]["valid"]) == {"psnr", "ssim"}
    pool = DatasetInfo.load(run / "nes" / "estimates-1")  # the re-estimated digits are images of the same shape
    assert (pool.modality, pool.shape) == ("image", (28, 28))
    ok(cli("test", str(run)))
    results = json.loads((run / "results.json").read_text())
    assert set(results["summary"]["digit"]) == {"psnr", "psnri", "ssim"}
    assert len(results["clips"]) == 24
    # iteration 0 is X̂₀ = 0.5·Y: its PSNR follows from the data alone, and training must beat it
    base = results["baselines"]["iteration_0"]["summary"]["digit"]["psnr"]["mean"]
    assert results["summary"]["digit"]["psnr"]["mean"] > base
    assert (run / "examples" / "test").is_dir()
    wav = tmp_path / "a.wav"
    sf.write(wav, np.zeros(800, dtype=np.float32), 8000)
    refused = cli("separate", str(run / "checkpoints" / "last.ckpt"), str(wav), "--out", str(tmp_path / "out"))
    assert refused.returncode != 0 and "separates images" in refused.stderr


def test_supervised_on_images_and_audio_only_losses(digits, tmp_path):
    proc = ok(cli("fit", "experiments/supervised/demo_digits.yaml", *small(digits, tmp_path, "trainer.max_steps=10",
                                                                            "trainer.val_every_n_steps=10")))
    run = Path(proc.stdout.strip().splitlines()[-1])
    ok(cli("test", str(run)))
    assert "PSNR" in (run / "results.md").read_text()
    bad = cli("fit", "experiments/supervised/demo_digits.yaml",
              *small(digits, tmp_path, "trainer.max_steps=10", "supervised.loss=si_sdr"))
    assert bad.returncode != 0 and "needs audio" in bad.stderr
