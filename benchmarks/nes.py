"""NES re-estimation cost: mixtures re-estimated per second, and that pass's share of an outer iteration.

Runs a real NES fit of the demo experiment (through ``lightning_sep.experiment.fit``, with its data loader,
validation and checkpoints) for two outer iterations of the demo's length, in a temporary run folder, and
reads the timings the ``NESIterations`` callback records for iteration 1: ``train_s`` (its training steps and
the validation that ends it) and ``reestimate_s`` (writing X̂ for every training mixture as shards). The share
is reestimate_s / (train_s + reestimate_s).

usage: python benchmarks/nes.py [--root data/demo-speech-noise] [--config experiments/nes/demo_speech_noise.yaml]
                                [--json PATH] [key=value ...]
"""
from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

from lightning_sep.data.shards import DatasetInfo

REPO = Path(__file__).resolve().parent.parent


def main() -> None:
    # imported here, not at the top: each loader worker re-imports this script (workers start from a fork server)
    from lightning_sep.experiment import fit, load

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--root", default="data/demo-speech-noise", help="prepared dataset (lightning-sep prepare ...)")
    p.add_argument("--config", default=str(REPO / "experiments/nes/demo_speech_noise.yaml"))
    p.add_argument("--json", help="write the figures here")
    p.add_argument("overrides", nargs="*", help="config overrides (key=value)")
    a = p.parse_args()
    demo = load(a.config, [f"data.root={a.root}", *a.overrides])
    per_iteration = demo.trainer.max_steps // demo.nes.iterations
    with tempfile.TemporaryDirectory() as runs:
        cfg = load(a.config, [f"data.root={a.root}", f"run.root={runs}", f"trainer.max_steps={2 * per_iteration}",
                              "nes.iterations=2", "logging.wandb=false", "trainer.progress_bar=false", *a.overrides])
        folder = fit(cfg)
        first = json.loads((folder / "nes" / "iterations.json").read_text())[0]
    mixtures = DatasetInfo.load(a.root).pool("train", "mixtures")
    res = {
        "reestimate_share": first["reestimate_s"] / (first["train_s"] + first["reestimate_s"]),
        "mixtures_per_s": mixtures.clips / first["reestimate_s"],
        "mixture_audio_s_per_s": mixtures.seconds / first["reestimate_s"],
        "train_s": first["train_s"], "reestimate_s": first["reestimate_s"], "steps_per_iteration": per_iteration,
        "mixtures": mixtures.clips, "batch": cfg.nes.reestimate_batch,
    }
    print(f"NES benchmark: {a.root}, one outer iteration of {per_iteration} steps, {mixtures.clips} mixtures")
    print(f"{'part of the iteration':<34}{'seconds':>9}{'share':>8}")
    total = first["train_s"] + first["reestimate_s"]
    print(f"{'training steps + validation':<34}{first['train_s']:>9.1f}{first['train_s'] / total:>8.1%}")
    print(f"{'re-estimation (all mixtures)':<34}{first['reestimate_s']:>9.1f}{res['reestimate_share']:>8.1%}")
    print(f"re-estimation: {res['mixtures_per_s']:.1f} mixtures/s ({res['mixture_audio_s_per_s']:.0f} s of audio/s); "
          "target share <= 15%")
    if a.json:
        Path(a.json).parent.mkdir(parents=True, exist_ok=True)
        Path(a.json).write_text(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
