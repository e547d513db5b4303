"""Which ``masknet.inference`` settings suit a trained MaskNet run? Score its checkpoint on a split (by default the
validation split, so that the choice is not made on the test clips) once per setting and print one table.

The authors raised their instrumental mask to the power 9 and blurred it at test time, without saying so; here each
setting is a config key, and this sweep measures what each does to the unobserved stem. Every setting's
results.json is kept under ``--out`` (default RUN/inference-sweep/).

    python benchmarks/masknet_inference.py runs/masknet-demo-chorales/<run-id> --exponents 1 1.5 2 \\
        --instrumental-exponents 1 2.7 \\
        --post-filters none bilateral [--split valid]
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from lightning_sep.config import ConfigError  # noqa: E402
from lightning_sep.data.shards import DatasetInfo  # noqa: E402
from lightning_sep.experiment import run_config, test  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("run", type=Path, help="a MaskNet run folder (runs/<experiment>/<id>)")
    p.add_argument("--split", default="valid", help="split to score (default: valid)")
    p.add_argument("--instrumental-exponents", type=float, nargs="+", default=[1.0],
                   help="masknet.inference.instrumental_exponent values")
    p.add_argument("--exponents", type=float, nargs="+", default=[1.0, 1.5, 2.0],
                   help="masknet.inference.mask_exponent values (the vocal mask's)")
    p.add_argument("--post-filters", nargs="+", default=["none"], help="masknet.inference.post_filter values")
    p.add_argument("--out", type=Path, default=None, help="where each setting's results go (RUN/inference-sweep)")
    args = p.parse_args(argv)

    cfg = run_config(args.run, [])
    if cfg.method != "masknet":
        raise ConfigError(f"{args.run}: a {cfg.method} run; this sweep is for masknet runs")
    cfg.data.test_split = args.split
    out = args.out or args.run / "inference-sweep"
    ckpt = args.run / "checkpoints" / "last.ckpt"
    unobserved = DatasetInfo.load(cfg.data.root).unobserved
    rows = []
    settings = [(f, i, e) for f in args.post_filters for i in args.instrumental_exponents for e in args.exponents]
    for post_filter, instrumental, exponent in settings:
        cfg.masknet.inference.post_filter = post_filter
        cfg.masknet.inference.instrumental_exponent = instrumental
        cfg.masknet.inference.mask_exponent = exponent
        name = f"{post_filter}-inst{instrumental:g}-voc{exponent:g}"
        results = test(cfg, out / name, ckpt)
        s = results["summary"][unobserved]
        cells = [s[m][agg] for m, agg in (("si_sdri", "mean"), ("si_sdri", "median"), ("sdr", "median"),
                                          ("sir", "median"), ("sar", "median")) if m in s]
        rows.append((post_filter, instrumental, exponent, cells))
        print(f"{name}: {' '.join(f'{c:.2f}' for c in cells)}", flush=True)
    header = ["post_filter", "instr. exp", "vocal exp", "SI-SDRi mean", "SI-SDRi med", "SDR med", "SIR med",
              "SAR med"]
    print(f"\n{args.run} on {args.split}, {unobserved} (dB):")
    print(" | ".join(f"{h:>12}" for h in header))
    for post_filter, instrumental, exponent, cells in rows:
        print(" | ".join([f"{post_filter:>12}", f"{instrumental:>12g}", f"{exponent:>12g}",
                          *(f"{c:>12.2f}" for c in cells)]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
