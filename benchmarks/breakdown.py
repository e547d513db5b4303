"""Where does a run win or lose? Group the per-clip scores of tested runs by a field of the clips' metadata (the
json each clip carries in its shard, e.g. ``source.ensemble`` on demo-chorales) and print one table: the median of
each metric per group, the runs side by side.

    python benchmarks/breakdown.py runs/masknet-demo-chorales/<id> runs/supervised-demo-chorales/<id> \\
        --by source.ensemble --metrics si_sdri sir sar

Each run must have been tested (``lightning-sep test``): its results.json names the split, and its config the data.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from lightning_sep.config import ConfigError  # noqa: E402
from lightning_sep.data.shards import DatasetInfo, iter_tar  # noqa: E402
from lightning_sep.experiment import run_config  # noqa: E402


def clip_field(root: str, split: str, field: str) -> dict[str, str]:
    """{clip key: the value at ``field`` (dotted path) of its metadata} over every pool of ``split``."""
    values = {}
    for url in DatasetInfo.load(root).urls(split):
        for raw in iter_tar(url):
            meta = json.loads(raw.get("json", b"{}"))
            value = meta
            for part in field.split("."):
                if not isinstance(value, dict) or part not in value:
                    known = ", ".join(sorted(value)) if isinstance(value, dict) else "nothing (not a mapping)"
                    raise ConfigError(f"{url}: clip {raw['__key__']} has no metadata field {field!r} "
                                      f"(at {part!r} it holds {known})")
                value = value[part]
            values[raw["__key__"]] = str(value)
    return values


def load_run(run: Path) -> tuple[str, dict, dict[str, str]]:
    """(label, results, data root and split) of a tested run folder."""
    path = run / "results.json"
    if not path.exists():
        raise ConfigError(f"{path}: missing; run `lightning-sep test {run}` first")
    results = json.loads(path.read_text())
    cfg = run_config(run, [])
    return f"{cfg.experiment} seed {cfg.seed}", results, {"root": cfg.data.root, "split": results["split"]}


def group_values(results: dict, groups: dict[str, str], stem: str, metrics: list[str],
                 label: str = "run") -> dict[str, dict[str, list[float]]]:
    """{metric: {group: per-clip values}} of one results.json, with every clip also in the group "(all)"."""
    out: dict[str, dict[str, list[float]]] = {m: {} for m in metrics}
    for clip in results["clips"]:
        if clip["id"] not in groups:
            raise ConfigError(f"{label}: clip {clip['id']} is not among the data's clips; was the dataset rebuilt?")
        scores = clip.get(stem, {})
        for metric in metrics:
            value = scores.get(metric)
            if value is None:
                raise ConfigError(f"{label}: no {stem}/{metric} per clip in results.json (there: "
                                  f"{', '.join(sorted(scores)) or 'nothing'})")
            if value == value:  # NaN (a silent reference) counts in no median, as in the summary
                out[metric].setdefault(groups[clip["id"]], []).append(value)
                out[metric].setdefault("(all)", []).append(value)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("runs", type=Path, nargs="+", help="tested run folders (runs/<experiment>/<id>)")
    p.add_argument("--by", required=True, help="metadata field to group clips by, dotted (e.g. source.ensemble)")
    p.add_argument("--stem", default=None, help="stem whose scores to compare (default: the dataset's unobserved)")
    p.add_argument("--metrics", nargs="+", default=["si_sdri", "sir", "sar"], help="per-clip metrics to show")
    args = p.parse_args(argv)

    runs = [load_run(run) for run in args.runs]
    sources = {(d["root"], d["split"]) for _, _, d in runs}
    if len(sources) != 1:
        raise ConfigError(f"the runs were tested on different data: {sorted(sources)}; compare runs of one split")
    root, split = sources.pop()
    stem = args.stem or DatasetInfo.load(root).unobserved
    groups = clip_field(root, split, args.by)

    columns = [group_values(results, groups, stem, args.metrics, label) for label, results, _ in runs]
    names = sorted({g for run in columns for col in run.values() for g in col} - {"(all)"}) + ["(all)"]
    print(f"{stem}: median per {args.by} on {root} / {split} (dB)")
    for i, (label, _, _) in enumerate(runs, 1):
        print(f"  R{i}: {label} ({args.runs[i - 1]})")
    width = max(len(args.by), *(len(n) for n in names))
    tags = [f"R{i} {m}" for i in range(1, len(runs) + 1) for m in args.metrics]
    print(" | ".join([f"{args.by:<{width}}", "   n", *(f"{t:>11}" for t in tags)]))
    for name in names:
        n = len(columns[0][args.metrics[0]].get(name, []))  # clips with a score, first run
        cells = [f"{name:<{width}}", f"{n:>4}"]
        for run in columns:
            for metric in args.metrics:
                values = run[metric].get(name)
                cells.append(f"{statistics.median(values):>11.2f}" if values else f"{'-':>11}")
        print(" | ".join(cells))
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except ConfigError as e:
        sys.exit(f"error: {e}")
