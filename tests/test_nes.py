"""NES end to end on the toy dataset: the outer loop, its estimate pools, resume inside an iteration, DDP."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import REPO, cli
from test_runs import ok

from lightning_sep.data.datamodule import SeparationDataModule
from lightning_sep.data.shards import DatasetInfo, iter_tar
from lightning_sep.data.streams import DataConfig, PoolSpec
from lightning_sep.methods.nes import ESTIMATE, NES

CONFIG = "experiments/nes/demo_speech_noise.yaml"


def small(root: Path, runs: Path, *extra: str) -> list[str]:
    """Three outer iterations of 10 steps on the toy dataset."""
    return [f"data.root={root}", f"run.root={runs}", "data.segment_seconds=0.5", "data.batch_size=4",
            "data.num_workers=1", "net.depth=2", "net.channels=8", "trainer.max_steps=30", "nes.iterations=3",
            "trainer.checkpoint_every_n_steps=5", "trainer.progress_bar=false", "eval.examples=1",
            "logging.wandb=false", *extra]


def keys_of(root: Path, split: str, pool: str) -> list[str]:
    info = DatasetInfo.load(root)
    return [raw["__key__"] for url in info.urls(split, pool) for raw in iter_tar(url)]


def members_of(root: Path, split: str, pool: str) -> set[str]:
    info = DatasetInfo.load(root)
    raws = [raw for url in info.urls(split, pool) for raw in iter_tar(url)]
    return {name for raw in raws for name in raw if not name.startswith("__")}


@pytest.fixture(scope="module")
def nes_run(toy_dataset, tmp_path_factory) -> Path:
    runs = tmp_path_factory.mktemp("nes-runs")
    proc = ok(cli("fit", CONFIG, *small(toy_dataset, runs)))
    return Path(proc.stdout.strip().splitlines()[-1])


def test_outer_iterations_write_estimate_pools_and_history(toy_dataset, nes_run):
    history = json.loads((nes_run / "nes" / "iterations.json").read_text())
    assert [(h["iteration"], h["step"]) for h in history] == [(1, 10), (2, 20), (3, 30)]
    assert all(set(h["valid"]) == {"si_sdr", "si_sdri"} for h in history)
    assert (nes_run / "nes" / "iterations.png").stat().st_size > 0
    # the same validation clip's Y, X̂_K and true X at every iteration (K = 0: c·Y)
    shown = [sorted(p.name for p in (nes_run / "nes" / "estimates" / f"iteration-{k}").iterdir()) for k in range(4)]
    assert shown[0] == shown[3] and len([n for n in shown[0] if n.endswith(".png")]) == 1
    assert {n.split("_", 1)[1] for n in shown[0] if n.endswith(".flac")} == {"mix.flac", "estimate.flac",
                                                                              "reference.flac"}
    mixtures = sorted(keys_of(toy_dataset, "train", "mixtures"))
    for k in range(3):  # X̂_0 (= c·Y), X̂_1, X̂_2: every training mixture once; the last iteration's is never needed
        assert sorted(keys_of(nes_run / "nes" / f"estimates-{k}", "train", "estimates")) == mixtures
    assert not (nes_run / "nes" / "estimates-3").exists()


def test_first_estimate_pool_is_the_scaled_mixture(toy_dataset, nes_run):
    from lightning_sep.data.shards import decode_sample

    info = DatasetInfo.load(toy_dataset)
    mixes = {raw["__key__"]: decode_sample(raw, info.sample_rate)["mix"]
             for url in info.urls("train", "mixtures") for raw in iter_tar(url)}
    est = DatasetInfo.load(nes_run / "nes" / "estimates-0")
    for url in est.urls("train", "estimates"):
        for raw in iter_tar(url):
            x = decode_sample(raw, est.sample_rate)[ESTIMATE]
            torch.testing.assert_close(torch.from_numpy(x), torch.from_numpy(0.5 * mixes[raw["__key__"]]),
                                       atol=1.5 / 32768, rtol=0)


def test_unobserved_stem_never_reaches_training(toy_dataset, nes_run):
    info = DatasetInfo.load(toy_dataset)
    pools = NES.train_pools(info, None)
    pools["estimates"] = PoolSpec("train", "estimates", [ESTIMATE], root=str(nes_run / "nes" / "estimates-1"))
    # the shards themselves: no member of any pool NES trains on holds the unobserved stem
    assert members_of(toy_dataset, "train", "observed") == {"json", "noise.flac"}
    assert members_of(toy_dataset, "train", "mixtures") == {"json", "mix.flac"}
    assert members_of(nes_run / "nes" / "estimates-1", "train", "estimates") == {"json", f"{ESTIMATE}.flac"}
    # the batches
    cfg = DataConfig(root=str(toy_dataset), segment_seconds=0.5, batch_size=4, batches_per_epoch=3, num_workers=0)
    data = SeparationDataModule(cfg, pools, forbidden=NES.forbidden_stems(info))
    for batch in data.train_dataloader():
        assert {name: set(pool) for name, pool in batch.items()} == {"observed": {"noise"}, "estimates": {ESTIMATE}}
    # and asking for it is refused
    with pytest.raises(Exception, match="must never see"):
        data.set_pool("leak", PoolSpec("train", "isolated", ["noise"]))


def test_results_carry_the_iterations(nes_run):
    ok(cli("test", str(nes_run)))
    results = json.loads((nes_run / "results.json").read_text())
    assert results["method"] == "nes"
    assert [it["iteration"] for it in results["iterations"]] == [1, 2, 3]
    assert "si_sdri" in results["summary"]["speech"]
    # iteration 0 scored on the same clips: X̂₀ = c·Y is the mixture rescaled, so its SI-SDR is the mixture's
    iteration0 = results["baselines"]["iteration_0"]["summary"]
    assert abs(iteration0["speech"]["si_sdri"]["mean"]) < 1e-3
    assert iteration0["speech"]["sdr"]["mean"] is not None
    assert "Baseline `iteration_0`" in (nes_run / "results.md").read_text()
    assert "| 3 |" in (nes_run / "results.md").read_text()  # the per-iteration validation table


def test_step_budget_must_split_into_equal_iterations(toy_dataset, tmp_path):
    proc = cli("fit", CONFIG, *small(toy_dataset, tmp_path, "nes.iterations=7"))
    assert proc.returncode == 2
    assert "trainer.max_steps=30 must be a positive multiple of nes.iterations=7" in proc.stderr


@pytest.mark.slow
def test_run_killed_inside_an_iteration_resumes_there(toy_dataset, tmp_path):
    runs = tmp_path / "runs"
    args = small(toy_dataset, runs, "trainer.max_steps=120", "data.segment_seconds=1.0")  # 3 iterations of 40 steps
    proc = subprocess.Popen([sys.executable, "-m", "lightning_sep", "fit", CONFIG, *args], cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "WANDB_MODE": "offline"})
    deadline, ckpt, state = time.time() + 600, None, None  # generous: a loaded machine starts slowly
    while time.time() < deadline and proc.poll() is None:
        found = list(runs.rglob("last.ckpt"))
        if found:
            ckpt = found[0]
            try:
                state = torch.load(ckpt, map_location="cpu", weights_only=False)
            except Exception:  # caught mid-rename on a slow disk: look again
                state = None
            if state and 45 <= state["global_step"] < 80:
                break
        time.sleep(0.3)
    running = proc.poll() is None
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    assert running, "training ended before it could be killed:\n" + proc.stdout.read()[-3000:]
    assert state and 45 <= state["global_step"] < 80, (
        f"no checkpoint between steps 45 and 80 within 600 s (last seen: "
        f"{state and state['global_step']}); output:\n" + proc.stdout.read()[-3000:])
    killed_at = state["global_step"]
    nes_state = next(v for k, v in state["callbacks"].items() if "NESIterations" in k)
    assert nes_state["iteration"] == 2  # killed inside the second outer iteration
    again = ok(cli("fit", CONFIG, *args))
    assert f"resumed training at step {killed_at}" in again.stdout
    folder = Path(again.stdout.strip().splitlines()[-1])
    assert [p.name for p in folder.parent.iterdir()] == [folder.name]
    history = json.loads((folder / "nes" / "iterations.json").read_text())
    assert [(h["iteration"], h["step"]) for h in history] == [(1, 40), (2, 80), (3, 120)]


@pytest.mark.slow
def test_ddp_two_processes_reestimate_every_mixture_once(toy_dataset, tmp_path):
    ddp = ["trainer.accelerator=cpu", "trainer.devices=2", "trainer.strategy=ddp"]
    proc = ok(cli("fit", CONFIG, *small(toy_dataset, tmp_path / "runs", *ddp)))
    folder = Path(proc.stdout.strip().splitlines()[-1])
    mixtures = sorted(keys_of(toy_dataset, "train", "mixtures"))  # 23 mixtures: the ranks' shares differ in size
    for k in range(3):
        pool = folder / "nes" / f"estimates-{k}"
        assert sorted(keys_of(pool, "train", "estimates")) == mixtures
        assert {p.name for p in pool.iterdir() if p.is_dir()} == {"rank0", "rank1"}
    history = json.loads((folder / "nes" / "iterations.json").read_text())
    assert [(h["iteration"], h["step"]) for h in history] == [(1, 10), (2, 20), (3, 30)]


def test_read_ahead_keeps_order_raises_the_producers_error_and_lets_the_consumer_leave_early():
    from lightning_sep.methods.nes import _read_ahead

    assert list(_read_ahead(iter(range(50)))) == list(range(50))

    def broken():
        yield 1
        raise OSError("shard 3 is truncated")

    with pytest.raises(OSError, match="shard 3 is truncated"):
        list(_read_ahead(broken()))
    produced = []

    def endless():
        while True:
            produced.append(len(produced))
            yield produced[-1]

    for item in _read_ahead(endless(), depth=2):
        if item == 3:
            break  # the helper thread stops instead of blocking on the full queue forever
    assert len(produced) <= 3 + 2 + 2
