"""The demo's summary table: one row per method and baseline, the share of the upper bound, file pointers."""
from __future__ import annotations

from pathlib import Path

from conftest import REPO

from lightning_sep.demo import class_table, summary_table


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


def _class_results(values: dict[str, float], **extra) -> dict:
    return {"summary": {c: {"si_sdr": {"mean": v, "median": v}, "si_sdri": {"mean": v, "median": v}}
                        for c, v in values.items()}, **extra}


def test_class_table_columns_per_class_mean_share_and_classifier_line(tmp_path: Path):
    classifier = {"summary": {}, "classifier": {"map": 0.86, "f1": 0.77, "per_class": {}}}
    bound = _class_results({"bird": 4.0, "horn": 6.0, "background": 10.0})  # the bound also separates background
    weak = _class_results({"bird": 2.0, "horn": 4.0, "background": 9.0},  # WeakSep may separate it as well
                          by_events={"1": {"si_sdri": -1.0, "outputs": 3}})
    rows = [("classifier (frozen assessor)", tmp_path / "cls", classifier, 60.0),
            ("supervised (upper bound)", tmp_path / "sup", bound, 120.0),
            ("WeakSep, clip-level labels", tmp_path / "weak", weak, 120.0)]
    text = class_table(rows, ["bird", "horn"])
    header = next(line for line in text.splitlines() if line.startswith("method"))
    assert "bird" in header and "horn" in header and "background" not in header  # classes only
    lines = {line.split("  ")[0]: line for line in text.splitlines()}
    assert "5.00" in lines["supervised (upper bound)"] and "100%" in lines["supervised (upper bound)"]
    assert "3.00" in lines["WeakSep, clip-level labels"] and "60%" in lines["WeakSep, clip-level labels"]
    assert "clip-level mAP 0.86" in text and "1: -1.00" in text


def test_ablation_table_reports_medians_against_the_full_loss(tmp_path: Path):
    from lightning_sep.demo import SUITES, ablation_table

    def masknet(sdr_median: float) -> dict:
        metrics = {"sdr": (3.0, sdr_median), "sir": (10.0, 11.5), "sar": (7.0, 8.0), "si_sdri": (-1.5, 0.1)}
        return {"summary": {"vocals": {k: {"mean": m, "median": md} for k, (m, md) in metrics.items()}}}

    rows = [("MaskNet (full loss)", tmp_path / "full", masknet(2.76), 1500.0),
            ("w/o R4", tmp_path / "no_r4", masknet(3.62), 1400.0)]
    lines = {line[:24].strip(): line.split() for line in ablation_table(rows, "vocals").splitlines()}
    assert lines["MaskNet (full loss)"][-6:] == ["2.76", "+0.00", "11.50", "8.00", "-1.50", "25.0"]
    assert lines["w/o R4"][-6:] == ["3.62", "+0.86", "11.50", "8.00", "-1.50", "23.3"]
    suite = SUITES["masknet-ablations"]
    assert suite.ablations and len(suite.experiments) == 8  # the full loss and the seven rows of the paper's table
    assert all((REPO / "experiments" / yaml).is_file() for _, yaml in suite.experiments)
