"""The demo's summary table: one row per method and baseline, the share of the upper bound, file pointers."""
from __future__ import annotations

from pathlib import Path

from conftest import REPO

from lightning_sep.demo import summary_table


def _results(si_sdr: float, si_sdri: float, **extra) -> dict:
    metrics = {"si_sdr": si_sdr, "si_sdri": si_sdri, "sdr": si_sdr + 0.5, "sir": 20.0, "sar": si_sdr + 1.0}
    return {"summary": {"speech": {k: {"mean": v, "median": v} for k, v in metrics.items()},
                        "noise": {k: {"mean": 0.0, "median": 0.0} for k in metrics}}, **extra}


def test_rows_share_of_bound_and_pointers(tmp_path: Path):
    nes = _results(6.0, 6.3, iterations=[{"iteration": 1, "valid": {"si_sdri": 5.0}}])
    rows = [("supervised (upper bound)", tmp_path / "sup", _results(8.1, 8.4), 300.0),
            ("NES (final iteration)", tmp_path / "nes", nes, 360.0),
            ("NES iteration 0", None, _results(-0.3, 0.0), None)]
    text = summary_table(rows, "speech")
    lines = {line.split("  ")[0]: line for line in text.splitlines()}
    assert "100%" in lines["supervised (upper bound)"] and "5.0" in lines["supervised (upper bound)"]
    assert "75%" in lines["NES (final iteration)"]  # 6.3 / 8.4
    assert "0%" in lines["NES iteration 0"] and lines["NES iteration 0"].rstrip().endswith("-")
    assert str(tmp_path / "nes" / "nes" / "iterations.png") in text
    assert str(tmp_path / "sup" / "results.md") in text


def test_two_experiments_in_one_process_get_their_own_run_folders(toy_dataset, tmp_path: Path):
    """The demo fits several experiments in one process: each must resolve (and resume) its own folder."""
    from lightning_sep.experiment import fit, load

    common = [f"data.root={toy_dataset}", f"run.root={tmp_path}", "data.segment_seconds=0.5", "data.batch_size=4",
              "net.depth=2", "net.channels=4", "trainer.max_steps=4", "trainer.progress_bar=false",
              "logging.wandb=false", "eval.examples=0"]
    supervised = fit(load(REPO / "experiments/supervised/demo_speech_noise.yaml",
                          [*common, "trainer.val_every_n_steps=4"]))
    nes = fit(load(REPO / "experiments/nes/demo_speech_noise.yaml", [*common, "nes.iterations=2"]))
    assert supervised.parent.name == "supervised-demo-speech-noise" and nes.parent.name == "nes-demo-speech-noise"
    assert (nes / "checkpoints" / "last.ckpt").is_file() and (nes / "nes" / "iterations.json").is_file()
