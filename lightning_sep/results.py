"""results.json and results.md of a tested run, and the plain-text table printed for people."""
from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

METRIC_ORDER = ["si_sdr", "si_sdri", "sdr", "sir", "sar", "psnr", "psnri", "ssim"]
LABELS = {"si_sdr": "SI-SDR", "si_sdri": "SI-SDRi", "sdr": "SDR", "sir": "SIR", "sar": "SAR",
          "psnr": "PSNR", "psnri": "PSNRi", "ssim": "SSIM"}


def _json_safe(x: Any) -> Any:
    """JSON has no NaN or infinity: NaN becomes null (the summary's n_nan counts them), ±inf the string "inf"/"-inf"
    (BSS Eval's SIR of a lone source, no interference at all)."""
    if isinstance(x, float) and math.isnan(x):
        return None
    if isinstance(x, float) and math.isinf(x):
        return "inf" if x > 0 else "-inf"
    if isinstance(x, dict):
        return {k: _json_safe(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_json_safe(v) for v in x]
    return x


def write_results(folder: Path, results: dict[str, Any]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / "results.json.tmp"
    tmp.write_text(json.dumps(_json_safe(results), indent=1) + "\n")
    os.replace(tmp, folder / "results.json")
    (folder / "results.md").write_text(markdown(results))


def _fmt(x: Any) -> str:
    return "nan" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.2f}"


def rows(results: dict[str, Any]) -> list[tuple[str, str, list[str]]]:
    """(stem, aggregation, values in METRIC_ORDER) rows of the summary."""
    summary = results["summary"]
    metrics = [m for m in METRIC_ORDER if any(m in s for s in summary.values())]
    out = []
    for stem, by_metric in summary.items():
        for how in ("mean", "median"):
            out.append((stem, how, [_fmt(by_metric[m][how]) if m in by_metric else "" for m in metrics]))
    return out


def table(results: dict[str, Any]) -> str:
    """A fixed-width table for the terminal."""
    metrics = [m for m in METRIC_ORDER if any(m in s for s in results["summary"].values())]
    head = f"{'stem':<14}{'agg':<8}" + "".join(f"{LABELS[m]:>9}" for m in metrics)
    title = f"{results['method']} on {results['dataset']} / {results['split']} ({len(results['clips'])} clips, dB)"
    lines = [title]
    if results["summary"]:  # a classifier run separates nothing
        lines += [head, "-" * len(head)]
        for stem, how, values in rows(results):
            lines.append(f"{stem:<14}{how:<8}" + "".join(f"{v:>9}" for v in values))
    if results.get("classifier"):
        c = results["classifier"]
        lines.append(f"clip-level tagging: mAP {_fmt(c['map'])}, F1 {_fmt(c['f1'])}")
        lines += [f"  {name:<12}AP {_fmt(v['ap'])}  F1 {_fmt(v['f1'])}  ({v['clips']} clips)"
                  for name, v in c["per_class"].items()]
    if results.get("by_events"):
        lines.append("SI-SDRi of the present classes' outputs by events in the clip: " + ", ".join(
            f"{n}: {_fmt(v['si_sdri'])}" for n, v in results["by_events"].items()))
    return "\n".join(lines)


def markdown(results: dict[str, Any]) -> str:
    metrics = [m for m in METRIC_ORDER if any(m in s for s in results["summary"].values())]
    lines = [f"# {results['method']} on {results['dataset']} ({results['split']}, {len(results['clips'])} clips)", "",
             "| stem | aggregation | " + " | ".join(LABELS[m] for m in metrics) + " |",
             "|---|---|" + "---:|" * len(metrics)]
    for stem, how, values in rows(results):
        lines.append(f"| {stem} | {how} | " + " | ".join(values) + " |")
    for name, baseline in results.get("baselines", {}).items():
        lines += ["", f"Baseline `{name}` on the same clips:", "",
                  "| stem | aggregation | " + " | ".join(LABELS[m] for m in metrics) + " |",
                  "|---|---|" + "---:|" * len(metrics)]
        for stem, how, values in rows(baseline):
            lines.append(f"| {stem} | {how} | " + " | ".join(values) + " |")
    if results.get("classifier"):
        c = results["classifier"]
        lines += ["", f"Clip-level tagging: mAP {_fmt(c['map'])}, F1 {_fmt(c['f1'])}", "",
                  "| class | AP | F1 | clips |", "|---|---:|---:|---:|"]
        for name, v in c["per_class"].items():
            lines.append(f"| {name} | {_fmt(v['ap'])} | {_fmt(v['f1'])} | {v['clips']} |")
    if results.get("by_events"):
        lines += ["", "SI-SDRi of the present classes' outputs by the number of events in the clip:", "",
                  "| events | SI-SDRi | outputs |", "|---:|---:|---:|"]
        for n, v in results["by_events"].items():
            lines.append(f"| {n} | {_fmt(v['si_sdri'])} | {v['outputs']} |")
    if results.get("paper_table"):
        paper = results["paper_table"]
        lines += ["", paper["title"], "", "| " + " | ".join(paper["columns"]) + " |",
                  "|---|" + "---:|" * (len(paper["columns"]) - 1)]
        for row in paper["rows"]:
            lines.append("| " + " | ".join(str(v) if isinstance(v, str) else _fmt(v) for v in row) + " |")
    if results.get("iterations"):
        keys = sorted({k for it in results["iterations"] for k in it["valid"]})
        lines += ["", "Validation after each outer iteration (unobserved stem, mean):", "",
                  "| iteration | " + " | ".join(LABELS.get(k, k) for k in keys) + " |",
                  "|---:|" + "---:|" * len(keys)]
        for it in results["iterations"]:
            lines.append(f"| {it['iteration']} | " + " | ".join(_fmt(it["valid"].get(k)) for k in keys) + " |")
    lines += ["", "How each metric was computed:", ""]
    for name, flavour in results.get("flavour", {}).items():
        lines.append(f"- **{name}**: " + ", ".join(f"{k}={v}" for k, v in flavour.items()))
    return "\n".join(lines) + "\n"
