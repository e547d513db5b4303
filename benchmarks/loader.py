"""Loader throughput: the DataModule's training loader against a bare decode loop over the same FLAC members.

Both sides are measured in this one run, side by side, so the ratio is meaningful on a noisy shared machine.
The unit is audio delivered: seconds of audio per wall-clock second. The bare loop delivers every FLAC member
it decodes, whole; the DataModule delivers float32 training crops (it decodes only the crop, applies the gain,
batches, and passes batches from its worker processes to this one), timed from its first batch on; the time to
that first batch (starting the workers, once per run) is shown apart, for each way of starting them.

usage: python benchmarks/loader.py [--root data/demo-speech-noise] [--batches 150] [--workers 2] [--json PATH]
"""
from __future__ import annotations

import argparse
import io
import json
import time
from pathlib import Path

import soundfile as sf

from lightning_sep.data.shards import DatasetInfo, iter_tar
from lightning_sep.data.streams import DataConfig, PoolSpec


def bare_loop(urls: list[str], n_clips: int, stems: list[str]) -> tuple[float, float]:
    """Read tars and decode the FLAC members with soundfile; nothing else. Returns (seconds, audio seconds)."""
    decoded, clips, start = 0.0, 0, time.perf_counter()
    while clips < n_clips:
        for url in urls:
            for raw in iter_tar(url):
                for stem in stems:
                    audio, rate = sf.read(io.BytesIO(raw[f"{stem}.flac"]), dtype="float32")
                    decoded += len(audio) / rate
                clips += 1
                if clips >= n_clips:
                    break
            if clips >= n_clips:
                break
    return time.perf_counter() - start, decoded


def loader_loop(root: str, pool: str, stems: list[str], batches: int, batch_size: int, workers: int,
                worker_start: str) -> tuple[float, float, int]:
    """Returns (seconds to the first batch, seconds for all batches, batches)."""
    # imported here, not at the top: each loader worker re-imports this script (workers start from a fork server)
    from lightning_sep.data.datamodule import SeparationDataModule

    cfg = DataConfig(root=root, batch_size=batch_size, batches_per_epoch=batches, num_workers=workers,
                     worker_start=worker_start)
    data = SeparationDataModule(cfg, {pool: PoolSpec("train", pool, stems)})
    start = time.perf_counter()
    first, n = None, 0
    for _ in data.train_dataloader():
        first = first or time.perf_counter() - start
        n += 1
    return first, time.perf_counter() - start, n


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--root", default="data/demo-speech-noise", help="prepared dataset (lightning-sep prepare ...)")
    p.add_argument("--pool", default="isolated", help="training pool of the train split")
    p.add_argument("--batches", type=int, default=150)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--json", help="write the figures here")
    a = p.parse_args()
    info = DatasetInfo.load(a.root)
    pool = info.pool("train", a.pool)
    stems = [s for s in pool.members if s != "mix"] or ["mix"]
    clip_seconds = pool.seconds / pool.clips
    n_clips = a.batches * a.batch_size

    # the fork server's first batch includes starting the server, as at the start of every run
    runs = {start: loader_loop(a.root, a.pool, stems, a.batches, a.batch_size, a.workers, start)
            for start in ("forkserver", "fork")}
    # throughput after the first batch: the workers are persistent, so their start-up is paid once per run (the
    # table below shows it)
    t_first, t_all, n_all = runs[DataConfig().worker_start]
    t_loader, n = t_all - t_first, n_all - 1
    t_bare, decoded_bare = bare_loop(info.urls("train", a.pool), n_clips, stems)
    decoded_loader = n * a.batch_size * DataConfig().segment_seconds * len(stems)
    res = {
        "ratio": (decoded_loader / t_loader) / (decoded_bare / t_bare),
        "loader_audio_s_per_s": decoded_loader / t_loader,
        "bare_audio_s_per_s": decoded_bare / t_bare,
        "loader_batches_per_s": n / t_loader,
        "bare_batches_per_s": (n_clips / a.batch_size) / t_bare,
        "workers": a.workers, "batch_size": a.batch_size, "batches": n, "stems": stems,
        "clip_seconds": clip_seconds, "crop_seconds": DataConfig().segment_seconds,
        "worker_start": DataConfig().worker_start,
        "first_batch_s": {start: r[0] for start, r in runs.items()},
        "loader_s": {start: r[1] for start, r in runs.items()},
    }
    print(f"loader benchmark: {a.root} train/{a.pool}, stems {stems}, batch {a.batch_size}, {n} batches")
    print(f"{'path':<34}{'seconds':>9}{'batches/s':>11}{'audio s/s':>11}")
    print(f"{'DataModule (' + str(a.workers) + ' workers, crop+gain)':<34}{t_loader:>9.2f}"
          f"{res['loader_batches_per_s']:>11.1f}{res['loader_audio_s_per_s']:>11.0f}")
    print(f"{'bare tar read + soundfile decode':<34}{t_bare:>9.2f}{res['bare_batches_per_s']:>11.1f}"
          f"{res['bare_audio_s_per_s']:>11.0f}")
    print(f"ratio (DataModule / bare): {res['ratio']:.2f}  (target >= 0.5)")
    print(f"\nworker start ({a.workers} workers){'first batch s':>16}{'all batches s':>15}")
    for start, (first, total, _) in runs.items():
        default = "  (default)" if start == DataConfig().worker_start else ""
        print(f"{start:<26}{first:>16.2f}{total:>15.2f}{default}")
    if a.json:
        Path(a.json).parent.mkdir(parents=True, exist_ok=True)
        Path(a.json).write_text(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
