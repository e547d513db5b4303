"""The demo's summary table: one row per method and baseline, the share of the upper bound, file pointers."""
from __future__ import annotations

from pathlib import Path

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
    text = summary_table(rows)
    lines = {line.split("  ")[0]: line for line in text.splitlines()}
    assert "100%" in lines["supervised (upper bound)"] and "5.0" in lines["supervised (upper bound)"]
    assert "75%" in lines["NES (final iteration)"]  # 6.3 / 8.4
    assert "0%" in lines["NES iteration 0"] and lines["NES iteration 0"].rstrip().endswith("-")
    assert str(tmp_path / "nes" / "nes" / "iterations.png") in text
    assert str(tmp_path / "sup" / "results.md") in text
