"""End to end through the CLI, as users and launchers run it: fit, test, resume, DDP, errors, separate."""
from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from conftest import REPO, cli

CONFIG = "experiments/supervised/demo_speech_noise.yaml"


def small(root: Path, runs: Path, *extra: str) -> list[str]:
    """Overrides that make the demo experiment a few-second run on the toy dataset."""
    return [f"data.root={root}", f"run.root={runs}", "data.segment_seconds=0.5", "data.batch_size=4",
            "data.batches_per_epoch=20", "data.num_workers=1", "net.depth=2", "net.channels=8",
            "trainer.max_steps=30", "trainer.val_every_n_steps=20", "trainer.checkpoint_every_n_steps=10",
            "trainer.progress_bar=false", "eval.examples=1", "logging.wandb=false", *extra]


def ok(proc: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert proc.returncode == 0, f"exit {proc.returncode}\nSTDOUT\n{proc.stdout[-3000:]}\nSTDERR\n{proc.stderr[-5000:]}"
    return proc


@pytest.fixture(scope="module")
def trained(toy_dataset, tmp_path_factory) -> Path:
    runs = tmp_path_factory.mktemp("runs")
    proc = ok(cli("fit", CONFIG, *small(toy_dataset, runs, "logging.wandb=true")))
    return Path(proc.stdout.strip().splitlines()[-1])


def test_fit_prints_run_folder_last_and_fills_it(trained):
    assert trained.parent.name == "supervised-demo-speech-noise" and re.fullmatch(r"[0-9a-f]{10}", trained.name)
    assert (trained / "config.yaml").is_file() and (trained / "csv/metrics.csv").is_file()
    ckpt = torch.load(trained / "checkpoints/last.ckpt", map_location="cpu", weights_only=False)
    assert ckpt["global_step"] == 30
    assert ckpt["hyper_parameters"]["config"]["method"] == "supervised"  # config stored in the checkpoint
    assert ckpt["hyper_parameters"]["config"]["trainer"]["max_steps"] == 30
    assert list((trained / "examples").rglob("*.png")) and list((trained / "examples").rglob("*_mix.flac"))
    assert not list((trained / "checkpoints").glob("*.tmp"))  # atomic writes leave nothing behind
    runs = list((trained / "wandb").glob("offline-run-*"))  # every W&B file inside the run folder
    assert runs and list(runs[0].rglob("*.wandb"))
    assert "val/speech/si_sdri" in (trained / "csv/metrics.csv").read_text()


def test_test_writes_results_json_and_md(trained):
    proc = ok(cli("test", str(trained)))
    results = json.loads((trained / "results.json").read_text())
    assert results["method"] == "supervised" and results["dataset"] == "toy-speech-noise"
    assert results["split"] == "test" and len(results["clips"]) == 9
    for stem in ("speech", "noise"):
        for metric in ("si_sdr", "si_sdri", "sdr", "sir", "sar"):
            entry = results["summary"][stem][metric]
            assert isinstance(entry["mean"], float) and isinstance(entry["median"], float)
            assert metric in results["flavour"]
        values = [c[stem]["si_sdri"] for c in results["clips"]]
        assert results["summary"][stem]["si_sdri"]["mean"] == pytest.approx(np.mean(values))
    assert {c["id"] for c in results["clips"]} == {f"test-eval-{i:04d}" for i in range(9)}
    assert "SI-SDRi" in proc.stdout and "| speech | mean |" in (trained / "results.md").read_text()


def test_same_config_same_folder_and_resume_false_starts_a_new_one(toy_dataset, trained):
    runs = trained.parent.parent
    # the demo's cosine schedule spans trainer.max_steps, so a larger budget is another run; with the step
    # schedule the budget is operational: raising it continues the run where it stopped
    stepped = ["optim.schedule=step", "trainer.max_steps=30"]
    first = ok(cli("fit", CONFIG, *small(toy_dataset, runs, *stepped)))
    more = ok(cli("fit", CONFIG, *small(toy_dataset, runs, *stepped, "trainer.max_steps=40")))
    assert "resumed training at step 30" in more.stdout
    assert more.stdout.strip().splitlines()[-1] == first.stdout.strip().splitlines()[-1]
    # operational keys (here the device count) do not change the run either
    again = ok(cli("fit", CONFIG, *small(toy_dataset, runs, *stepped, "trainer.max_steps=40", "trainer.devices=1")))
    assert again.stdout.strip().splitlines()[-1] == first.stdout.strip().splitlines()[-1]
    assert "resuming from" in again.stdout  # already at its budget: nothing left to train
    fresh = ok(cli("fit", CONFIG, *small(toy_dataset, runs, *stepped, "run.resume=false")))
    new_folder = Path(fresh.stdout.strip().splitlines()[-1])
    assert new_folder.name.endswith("-2") and "resumed" not in fresh.stdout


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM])
def test_killed_run_resumes_in_the_same_folder(toy_dataset, tmp_path, sig):
    runs = tmp_path / "runs"
    args = small(toy_dataset, runs, "trainer.max_steps=200", "data.batches_per_epoch=200",
                 "trainer.val_every_n_steps=1000", "trainer.checkpoint_every_n_steps=5")
    env = {"WANDB_MODE": "offline", "PYTHONUNBUFFERED": "1"}
    import os

    proc = subprocess.Popen([sys.executable, "-m", "lightning_sep", "fit", CONFIG, *args], cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, **env})
    deadline = time.time() + 240
    ckpts: list[Path] = []
    while time.time() < deadline and proc.poll() is None:
        ckpts = list(runs.rglob("last.ckpt"))
        if ckpts and torch.load(ckpts[0], map_location="cpu", weights_only=False)["global_step"] >= 15:
            break
        time.sleep(0.5)
    assert proc.poll() is None, "training ended before it could be killed"
    proc.send_signal(sig)
    proc.wait(timeout=60)
    killed_at = torch.load(ckpts[0], map_location="cpu", weights_only=False)["global_step"]
    assert 15 <= killed_at < 200
    again = ok(cli("fit", CONFIG, *args))
    assert f"resumed training at step {killed_at}" in again.stdout
    assert [p.name for p in (runs / "supervised-demo-speech-noise").iterdir()] == [ckpts[0].parent.parent.name]
    assert torch.load(ckpts[0], map_location="cpu", weights_only=False)["global_step"] == 200


def test_print_config_resolves_overrides_in_both_forms(toy_dataset, tmp_path):
    proc = ok(cli("fit", CONFIG, "--print-config", "--data.batch_size=7", "optim.lr=0.005", f"data.root={toy_dataset}"))
    assert "batch_size: 7" in proc.stdout and "lr: 0.005" in proc.stdout and "remix: true" in proc.stdout


def test_mistyped_key_names_it_and_lists_valid_keys(toy_dataset):
    proc = cli("fit", CONFIG, "data.batchsize=8")
    assert proc.returncode == 2
    assert "unknown config key 'data.batchsize'" in proc.stderr and "did you mean 'data.batch_size'" in proc.stderr
    assert "segment_seconds" in proc.stderr  # the valid keys are listed
    assert "Traceback" not in proc.stderr


def test_missing_dataset_is_a_clear_error(tmp_path):
    proc = cli("fit", CONFIG, f"data.root={tmp_path / 'nothing'}", f"run.root={tmp_path}")
    assert proc.returncode == 2 and "no prepared dataset here" in proc.stderr and "lightning-sep prepare" in proc.stderr


def test_checkpoint_of_another_method_is_refused(trained, tmp_path):
    ckpt = torch.load(trained / "checkpoints/last.ckpt", map_location="cpu", weights_only=False)
    ckpt["hyper_parameters"]["config"]["method"] = "nes"  # what a NES run's checkpoint records
    other = tmp_path / "other.ckpt"
    torch.save(ckpt, other)
    proc = cli("test", str(trained), "--ckpt", str(other))
    assert proc.returncode == 2
    assert "checkpoint of method 'nes', but a 'supervised' checkpoint is needed here" in proc.stderr


def test_nan_loss_stops_with_the_term_named(toy_dataset, tmp_path):
    proc = cli("fit", CONFIG, *small(toy_dataset, tmp_path, "optim.lr=1e30", "trainer.max_steps=200",
                                     "supervised.loss=magnitude_l1"))
    assert proc.returncode == 3, proc.stderr[-2000:]
    assert re.search(r"training stopped: loss term\(s\) \['l1_magnitude', 'loss'\] became NaN/inf at step \d+",
                     proc.stderr)


@pytest.mark.slow
def test_ddp_two_processes_fit_and_test_match_one_process(toy_dataset, tmp_path):
    runs = tmp_path / "runs"
    ddp = ["trainer.accelerator=cpu", "trainer.devices=2", "trainer.strategy=ddp"]
    proc = ok(cli("fit", CONFIG, *small(toy_dataset, runs, *ddp)))
    folder = Path(proc.stdout.strip().splitlines()[-1])
    assert [p.name for p in (runs / "supervised-demo-speech-noise").iterdir()] == [folder.name]
    ok(cli("test", str(folder), *ddp))
    two = json.loads((folder / "results.json").read_text())
    ok(cli("test", str(folder), "trainer.devices=1"))
    one = json.loads((folder / "results.json").read_text())
    assert len(two["clips"]) == len(one["clips"]) == 9
    assert two["clips"] == one["clips"] and two["summary"] == one["summary"]


def test_separate_long_stereo_file_sums_back(trained, tmp_path):
    rate, seconds = 44100, 180
    rng = np.random.default_rng(0)
    t = np.arange(rate * seconds) / rate
    swell = (1 + np.sin(2 * np.pi * 0.5 * t)) / 2
    left = 0.3 * np.sin(2 * np.pi * 220 * t) * swell + 0.05 * rng.standard_normal(len(t))
    right = 0.2 * np.sin(2 * np.pi * 330 * t) + 0.05 * rng.standard_normal(len(t))
    audio = np.stack([left, right], axis=1).astype(np.float32)
    path = tmp_path / "song.wav"
    sf.write(path, audio, rate, subtype="FLOAT")
    ok(cli("separate", str(trained / "checkpoints/last.ckpt"), str(path), "--out", str(tmp_path / "out")))
    stems = {}
    for stem in ("speech", "noise"):
        data, r = sf.read(tmp_path / "out/song" / f"{stem}.wav", always_2d=True)
        assert r == rate and data.shape == audio.shape
        stems[stem] = data
    total = stems["speech"] + stems["noise"]
    assert np.linalg.norm(total - audio) / np.linalg.norm(audio) < 1e-4
    assert np.linalg.norm(stems["speech"]) > 0.01 * np.linalg.norm(audio)  # not a trivial all-in-one split


def test_bf16_mixed_precision_trains_with_the_front_end_in_float32(toy_dataset, tmp_path):
    proc = ok(cli("fit", CONFIG, *small(toy_dataset, tmp_path, "trainer.precision=bf16-mixed", "trainer.max_steps=6",
                                         "trainer.val_every_n_steps=6", "supervised.loss=si_sdr")))
    folder = Path(proc.stdout.strip().splitlines()[-1])
    assert torch.load(folder / "checkpoints/last.ckpt", map_location="cpu", weights_only=False)["global_step"] == 6
