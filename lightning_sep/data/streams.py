"""What loader workers run: the training streams and the evaluation clips, and the config that shapes them.

Kept apart from the LightningDataModule so a worker process needs torch, numpy and webdataset, never Lightning:
workers start from a fork server (``DataConfig.worker_start``), and every module they import is start-up time.
"""
from __future__ import annotations

import os
import random
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Iterator

import numpy as np
import torch
import webdataset as wds
from torch.utils.data import IterableDataset, get_worker_info

from .shards import DatasetError, DatasetInfo, decode_sample, iter_tar, pool_keys

WORKER_STARTS = ("forkserver", "fork")  # the values of DataConfig.worker_start


@dataclass
class DataConfig:
    """Where the data is and how training examples are drawn from it."""

    root: str = "???"  # folder of a prepared dataset (holds dataset.json); `lightning-sep prepare` builds one
    segment_seconds: float = 2.0  # length of the random training crops (audio; images are used whole)
    gain_db: list[float] = field(default_factory=lambda: [-6.0, 0.0])  # random gain range per training clip or image
    batch_size: int = 16  # training batch size per device
    batches_per_epoch: int = 200  # training batches each rank takes per epoch
    shuffle_buffer: int = 256  # clips held for shuffling in each worker (per pool)
    num_workers: int = 2  # loader worker processes per device (0: load in the main process)
    # "fork" copies the training process, threads' locks included (DDP's gloo, OpenMP, the other loader's feeder):
    # a worker forked while one is held can hang for good. A fork server is a clean single-threaded process that
    # imports torch once; each worker re-imports the main script, so keep a script's top-level imports light.
    worker_start: str = "forkserver"  # how loader workers start: "forkserver" (safe, ~2 s once per run) or "fork"
    valid_split: str = "valid"  # split scored during training
    test_split: str = "test"  # split scored by `lightning-sep test`
    valid_clips: int | None = None  # score only the first N validation clips (None: all)


@dataclass
class PoolSpec:
    """A training pool a method draws from: ``split/pool`` of the dataset, and which stems it decodes.

    ``root`` reads the pool from another prepared folder instead (e.g. the estimates NES writes into its run).
    """

    split: str
    pool: str
    stems: list[str]
    root: str | None = None
    indexed: bool = False  # each example also carries ``index``: its clip's position in the pool (a per-clip code)


def follow_trainer(trainer_pid: int, worker_id: int) -> None:
    """A loader's ``worker_init_fn``: end this worker once the process it loads for is gone.

    A worker started by a fork server is the server's child, and torch's own check watches the parent; the server in
    turn lives as long as its workers do. After a SIGKILL of the training process (the OOM killer, a preempted
    job) both would stay alive for good without this."""

    def watch() -> None:
        while True:
            time.sleep(1.0)
            try:
                os.kill(trainer_pid, 0)
            except ProcessLookupError:
                os._exit(0)

    threading.Thread(target=watch, name="follow-trainer", daemon=True).start()


def _worker() -> tuple[int, int]:
    info = get_worker_info()
    return (info.id, info.num_workers) if info is not None else (0, 1)


LABEL_RATE = 100  # frames per second of the ``activity`` targets (10 ms frames)


def label_frames(n_samples: int, sample_rate: int) -> int:
    """Activity frames covering ``n_samples``."""
    return -(-n_samples * LABEL_RATE // sample_rate)


def _activity(meta: dict[str, Any], classes: list[str], start_s: float, n_frames: int, where: str) -> np.ndarray:
    """(C, n_frames) 0/1: class c sounds in frame n of the span starting at ``start_s``, from ``events``
    ([[label, onset_s, offset_s], ...]); a frame counts as active when an event overlaps it at all."""
    out = np.zeros((len(classes), n_frames), dtype=np.float32)
    for label, onset, offset in meta.get("events", []):
        if label not in classes:
            raise DatasetError(f"{where}: event label {label!r} is not among the dataset's classes {classes}")
        first = max(0, int(np.floor((onset - start_s) * LABEL_RATE)))
        last = min(n_frames, int(np.ceil((offset - start_s) * LABEL_RATE)))
        out[classes.index(label), first:last] = 1.0
    return out


def _labels(meta: dict[str, Any], classes: list[str], where: str) -> np.ndarray:
    out = np.zeros(len(classes), dtype=np.float32)
    for label in meta.get("labels", []):
        if label not in classes:
            raise DatasetError(f"{where}: label {label!r} is not among the dataset's classes {classes}")
        out[classes.index(label)] = 1.0
    return out


class TrainStream(IterableDataset):
    """An endless stream of random fixed-length crops from one pool, cut into batches of ``batches`` per rank."""

    def __init__(self, info: DatasetInfo, spec: PoolSpec, cfg: DataConfig, seed: str, rank: int):
        super().__init__()
        self.urls = info.urls(spec.split, spec.pool)
        self.where = f"{info.root}/{spec.split}/{spec.pool}"
        self.stems, self.classes, self.rate = list(spec.stems), list(info.classes), info.sample_rate
        self.segment = round(cfg.segment_seconds * info.sample_rate)
        self.image_shape = info.shape  # (H, W) for an image dataset: whole images, no crop
        # plain values, not the config's nodes: a node pickles its whole experiment config along to each worker,
        # and unpickling that imports every method module it names
        self.gain_db = [float(g) for g in cfg.gain_db]
        self.batch_size, self.buffer = int(cfg.batch_size), int(cfg.shuffle_buffer)
        self.seed, self.rank = seed, rank
        self._epoch = 0  # counts passes inside a (persistent) worker so epochs differ
        self.rows = {key: i for i, key in enumerate(pool_keys(self.urls))} if spec.indexed else None

    def _rng(self) -> random.Random:
        worker, _ = _worker()
        self._epoch += 1
        return random.Random(f"{self.seed}/{self.rank}/{worker}/{self._epoch}")

    def clips(self, rng: random.Random) -> Iterator[dict[str, Any]]:
        while True:
            yield from iter_tar(rng.choice(self.urls))

    def example(self, raw: dict[str, Any], rng: random.Random) -> dict[str, torch.Tensor]:
        out = self._image_example(raw, rng) if self.image_shape is not None else self._audio_example(raw, rng)
        if self.rows is not None:
            out["index"] = torch.tensor(self.rows[raw["__key__"]])
        return out

    def _audio_example(self, raw: dict[str, Any], rng: random.Random) -> dict[str, torch.Tensor]:
        """Decode only a random crop and scale it by the clip's random gain; zero-padded if the clip is short.

        An image is decoded whole and scaled by its random gain."""

        starts = []

        def crop(n: int) -> tuple[int, int]:
            starts.append(rng.randint(0, max(0, n - self.segment)))
            return starts[0], self.segment

        clip = decode_sample(raw, self.rate, self.stems, crop=crop)
        gain = np.float32(10 ** (rng.uniform(*self.gain_db) / 20))
        out = {}
        for stem in self.stems:
            piece = clip[stem]
            piece *= gain
            if len(piece) < self.segment:
                piece = np.pad(piece, (0, self.segment - len(piece)))
            out[stem] = torch.from_numpy(piece)
        if self.classes:
            out["labels"] = torch.from_numpy(_labels(clip["meta"], self.classes, self.where))
            out["activity"] = torch.from_numpy(_activity(clip["meta"], self.classes, starts[0] / self.rate,
                                                         label_frames(self.segment, self.rate), self.where))
        return out

    def _image_example(self, raw: dict[str, Any], rng: random.Random) -> dict[str, torch.Tensor]:
        clip = decode_sample(raw, self.rate, self.stems, image_shape=self.image_shape)
        gain = np.float32(10 ** (rng.uniform(*self.gain_db) / 20))
        out = {}
        for stem in self.stems:
            image = clip[stem]
            image *= gain
            out[stem] = torch.from_numpy(image)
        if self.classes:
            out["labels"] = torch.from_numpy(_labels(clip["meta"], self.classes, self.where))
        return out

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        rng = self._rng()
        raw = wds.shuffle(self.buffer, initial=self.buffer // 2, rng=rng)(self.clips(rng))
        examples = (self.example(r, rng) for r in raw)
        yield from wds.batched(self.batch_size, collation_fn=_stack, partial=False)(examples)


def _stack(samples: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    out = {}
    for k in samples[0]:
        first = samples[0][k]
        buffer = None
        if get_worker_info() is not None:
            # stack straight into shared memory: the batch then crosses to the main process without a copy
            storage = first.untyped_storage()._new_shared(len(samples) * first.numel() * first.element_size())
            buffer = first.new(storage).view(len(samples), *first.shape)
        out[k] = torch.stack([s[k] for s in samples], out=buffer)
    return out


class ZipPools(IterableDataset):
    """Draws one batch from each pool's stream per step; stops after this worker's share of the epoch."""

    def __init__(self, streams: dict[str, TrainStream], batches_per_epoch: int):
        super().__init__()
        self.streams, self.batches_per_epoch = streams, batches_per_epoch

    def __len__(self) -> int:  # per rank: lets Lightning show progress and count epochs
        return self.batches_per_epoch

    def __iter__(self) -> Iterator[dict[str, dict[str, torch.Tensor]]]:
        worker, workers = _worker()
        share = self.batches_per_epoch // workers + (worker < self.batches_per_epoch % workers)
        iters = {name: iter(s) for name, s in self.streams.items()}
        for _ in range(share):
            yield {name: next(it) for name, it in iters.items()}


class EvalClips(IterableDataset):
    """Every clip of an evaluation pool exactly once across ranks and workers, whole, in a fixed order."""

    def __init__(self, info: DatasetInfo, split: str, limit: int | None, rank: int, world: int,
                 pool: str | None = None, stems: list[str] | None = None):
        """``pool``: one pool of the split (default: the split's only pool); ``stems``: those decoded
        (default: the mixture and every stem)."""
        super().__init__()
        self.urls = info.urls(split, pool)
        self.where = f"{info.root}/{split}"
        self.stems = ["mix", *info.stems] if stems is None else list(stems)
        self.rate, self.classes = info.sample_rate, list(info.classes)
        self.image_shape = info.shape
        clips = info.pool(split, pool).clips
        self.limit = clips if limit is None else min(limit, clips)
        self.rank, self.world = rank, world

    def __len__(self) -> int:  # clips this rank scores
        return len(range(self.rank, self.limit, self.world))

    def __iter__(self) -> Iterator[dict[str, Any]]:
        worker, workers = _worker()
        index = 0
        for url in self.urls:
            for raw in iter_tar(url):
                if index >= self.limit:
                    return
                mine = index % self.world == self.rank and (index // self.world) % workers == worker
                index += 1
                if not mine:
                    continue  # skipped before decoding: other ranks and workers own it
                clip = decode_sample(raw, self.rate, self.stems, image_shape=self.image_shape)
                out: dict[str, Any] = {"key": [clip["key"]], "meta": [clip["meta"]]}
                out.update({s: torch.from_numpy(clip[s])[None] for s in self.stems})
                if self.classes:
                    out["labels"] = torch.from_numpy(_labels(clip["meta"], self.classes, url))[None]
                    if self.image_shape is None:
                        frames = label_frames(out["mix"].shape[-1], self.rate) if "mix" in out else 0
                        activity = _activity(clip["meta"], self.classes, 0.0, frames, url)
                        out["activity"] = torch.from_numpy(activity)[None]
                yield out
