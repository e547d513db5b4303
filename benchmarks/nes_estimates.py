"""How good are NES's estimates of the unobserved source on the training mixtures, outer iteration by iteration?

NES never sees the unobserved source, but a diagnostic run can: train NES with ``nes.mixtures_pool=isolated``
(the supervised pool, which stores every stem; NES still reads only its ``mix``), then score each estimate pool
``nes/estimates-K`` of the run against the true stems. Each estimate x̂ is decomposed by least squares onto the
true unobserved stem x and the true observed stem b of its mixture, x̂ = α·x + β·b + r:

* ``si_sdr``: SI-SDR of x̂ against x (dB);
* ``leak_db``: energy of β·b relative to α·x (dB): how much of the observed source stays in the estimate;
* ``artifacts_db``: energy of r relative to α·x (dB): what is neither source.

    python benchmarks/nes_estimates.py runs/nes-demo-speech-noise/<run-id> [--json PATH]
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch
from omegaconf import OmegaConf

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from lightning_sep.data.shards import DatasetInfo, decode_sample, iter_tar  # noqa: E402
from lightning_sep.methods.nes import ESTIMATE  # noqa: E402
from lightning_sep.metrics import si_sdr  # noqa: E402


def clips(info: DatasetInfo, split: str, pool: str, stems: list[str]) -> dict[str, dict[str, np.ndarray]]:
    out = {}
    for url in info.urls(split, pool):
        for raw in iter_tar(url):
            clip = decode_sample(raw, info.sample_rate, stems)
            out[clip["key"]] = {s: clip[s] for s in stems}
    return out


def decompose(x_hat: np.ndarray, x: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    """(leak_db, artifacts_db) of x̂ = α·x + β·b + r (least squares)."""
    basis = np.stack([x, b], axis=1).astype(np.float64)
    coef, *_ = np.linalg.lstsq(basis, x_hat.astype(np.float64), rcond=None)
    target, leak = coef[0] * x, coef[1] * b
    rest = x_hat - target - leak
    energy = max(float(np.sum(target**2)), 1e-20)
    return (10 * np.log10(max(float(np.sum(leak**2)), 1e-20) / energy),
            10 * np.log10(max(float(np.sum(rest**2)), 1e-20) / energy))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run", type=Path, help="NES run folder (trained with nes.mixtures_pool=isolated)")
    parser.add_argument("--json", type=Path, help="also write the table as JSON here")
    args = parser.parse_args()
    cfg = OmegaConf.load(args.run / "config.yaml")
    info = DatasetInfo.load(cfg.data.root)
    pool = cfg.nes.mixtures_pool
    held = info.pool("train", pool).members
    if info.unobserved not in held or info.observed not in held:
        raise SystemExit(f"{args.run}: NES explained train/{pool}, which holds {held}; the diagnosis needs the "
                         f"references: train with nes.mixtures_pool=isolated")
    truth = clips(info, "train", pool, [info.unobserved, info.observed])
    rows = []
    k = 0
    while (args.run / "nes" / f"estimates-{k}" / "dataset.json").exists():
        est_info = DatasetInfo.load(args.run / "nes" / f"estimates-{k}")
        estimates = clips(est_info, "train", "estimates", [ESTIMATE])
        scores, leaks, rests = [], [], []
        for key, est in estimates.items():
            x, b = truth[key][info.unobserved], truth[key][info.observed]
            scores.append(float(si_sdr(torch.from_numpy(est[ESTIMATE]), torch.from_numpy(x))))
            leak, rest = decompose(est[ESTIMATE], x, b)
            leaks.append(leak)
            rests.append(rest)
        rows.append({"estimates": k, "clips": len(scores), "si_sdr": float(np.nanmean(scores)),
                     "leak_db": float(np.mean(leaks)), "artifacts_db": float(np.mean(rests))})
        k += 1
    print(f"NES estimates of {info.unobserved} on train/{pool} ({args.run})")
    print(f"{'pool':<14}{'clips':>6}{'SI-SDR':>9}{'leak dB':>9}{'artifacts dB':>14}")
    for r in rows:
        print(f"estimates-{r['estimates']:<4}{r['clips']:>6}{r['si_sdr']:>9.2f}{r['leak_db']:>9.2f}{r['artifacts_db']:>14.2f}")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
