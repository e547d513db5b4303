"""One LightningDataModule for every method: named training pools in, batches of tensors out.

Training batches (``train_dataloader``) are nested dicts, one entry per pool the method asked for::

    {"isolated": {"mix": (B, T), "speech": (B, T), "noise": (B, T), "labels": (B, C)}, ...}

Every pool is drawn independently (its own shuffled stream), so ``observed`` and ``mixtures`` batches are
unpaired, as the semi-supervised methods require. ``T`` is ``segment_seconds`` at the dataset's rate: a
random crop (only that span is decoded; clips shorter than that are zero-padded at the end), with one
random gain per clip applied to all its stems, so ``mix == sum(stems)`` still holds. ``labels`` (multi-hot
over ``dataset.json``'s classes) is present when the dataset has classes, and so is ``activity`` (B, C, L): which
class sounds in each ``1 / LABEL_RATE`` s frame of the crop, from the clip's ``events`` (all zeros without them).
Workers decode the crops straight to float32 and apply the gain there, so the training process receives finished
waveforms and spends no time on them (converting int16 in the training process cost more than the transfer it
saved: it competes with the model for the same cores on CPU, and the bytes are negligible next to a GPU step).

Evaluation batches (``val_dataloader``/``test_dataloader``) hold one whole clip each, flat::

    {"key": [clip_id], "meta": [clip json], "mix": (1, T), <each stem>: (1, T), "labels": (1, C),
     "activity": (1, C, L)}

Image datasets (``dataset.json`` ``modality: "image"``, stems of ``image_shape`` ``(H, W)``) go through the
same loaders: every stem is a float32 ``(H, W)`` intensity image, batched to ``(B, H, W)`` for training and
``(1, H, W)`` for evaluation. There is no crop (``segment_seconds`` does not apply: training examples are the
whole stored images); the random gain (``gain_db``, one factor per image for all its stems, so ``mix == sum``
still holds) applies as for audio: set ``gain_db=[0, 0]`` to train on the stored intensities. A training pool
read from another folder (``PoolSpec.root``) must have the dataset's modality and image shape.

Under DDP the training streams are resampled (``ResampledShards``-style: each rank and worker draws shards at
random with its own seed), so shard counts never need to divide by ranks × workers, and every rank takes exactly
``batches_per_epoch`` batches per epoch (the count is split across the workers exactly), which keeps the
collective ops of all ranks in step. Evaluation is exact: every clip is scored once overall, clip ``i`` of the
fixed shard order going to rank ``i % world`` (and within a rank to one worker).

Loader workers start from a fork server (``data.worker_start``), never as forks of a rank that already runs threads,
and they end when the process they load for is gone; what they run lives in ``streams.py``, which needs no Lightning.
"""
from __future__ import annotations

import multiprocessing
import os
from functools import partial

import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, IterableDataset

from .shards import DatasetError, DatasetInfo
from .streams import WORKER_STARTS, DataConfig, EvalClips, PoolSpec, TrainStream, ZipPools, follow_trainer


def _worker_context(start: str) -> multiprocessing.context.BaseContext:
    if start not in WORKER_STARTS:
        raise ValueError(f"data.worker_start: {start!r} is not one of {', '.join(WORKER_STARTS)}")
    context = multiprocessing.get_context(start)
    if start == "forkserver":
        # the server imports these once, so each worker forked from it starts in milliseconds, not an import of torch
        context.set_forkserver_preload(["lightning_sep.data.streams"])
    return context


def _distributed() -> tuple[int, int]:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


class SeparationDataModule(pl.LightningDataModule):
    """Training pools named by the method (``pools``), validation and test splits scored whole.

    ``forbidden`` lists stems that must never reach training (a semi-supervised method's unobserved
    source); asking a pool for one is an error, and so is a pool whose shards hold one.
    """

    def __init__(self, cfg: DataConfig, pools: dict[str, PoolSpec], seed: int = 0, forbidden: tuple[str, ...] = ()):
        super().__init__()
        self.cfg, self.pools, self.seed, self.forbidden = cfg, {}, seed, tuple(forbidden)
        _worker_context(cfg.worker_start)  # a mistyped start method fails here, before any data is read
        self.info = DatasetInfo.load(cfg.root)
        for name, spec in pools.items():
            self.set_pool(name, spec)

    def set_pool(self, name: str, spec: PoolSpec) -> None:
        """Add or replace a training pool; it is read from the next ``train_dataloader()`` on."""
        info = self._info(spec)
        held = set(info.pool(spec.split, spec.pool).members)
        where = f"{info.root}/{spec.split}/{spec.pool}"
        if (info.modality, info.shape) != (self.info.modality, self.info.shape):
            def kind(i: DatasetInfo) -> str:
                return f"{i.modality} {list(i.shape)}" if i.shape else i.modality

            raise DatasetError(
                f"{info.root / 'dataset.json'}: pool {name!r} is {kind(info)} data but the dataset "
                f"{self.info.root} is {kind(self.info)}; a training pool must have the dataset's modality and shape"
            )
        missing = set(spec.stems) - held
        if missing:
            raise DatasetError(f"{where}: pool {name!r} needs stems {sorted(missing)}, its shards hold {sorted(held)}")
        leaked = (set(spec.stems) | held) & set(self.forbidden)
        if leaked:
            raise DatasetError(
                f"{where}: training pool {name!r} holds {sorted(leaked)}, which this method must never see in training"
            )
        self.pools[name] = spec

    def _info(self, spec: PoolSpec) -> DatasetInfo:
        return self.info if spec.root is None else DatasetInfo.load(spec.root)

    @property
    def sample_rate(self) -> int:
        return self.info.sample_rate

    @property
    def modality(self) -> str:
        """``"audio"`` or ``"image"`` (``dataset.json``'s ``modality``)."""
        return self.info.modality

    @property
    def image_shape(self) -> tuple[int, int] | None:
        """``(H, W)`` of an image dataset's stems; None for audio."""
        return self.info.shape

    def _rank(self) -> tuple[int, int]:
        if self.trainer is not None:
            return self.trainer.global_rank, self.trainer.world_size
        return _distributed()

    def _loader(self, dataset: IterableDataset) -> DataLoader:
        # batch_size=None: batches are made in the workers
        workers = self.cfg.num_workers
        if workers == 0:
            return DataLoader(dataset, batch_size=None, num_workers=0, pin_memory=torch.cuda.is_available())
        return DataLoader(dataset, batch_size=None, num_workers=workers, persistent_workers=True,
                          multiprocessing_context=_worker_context(self.cfg.worker_start),
                          worker_init_fn=partial(follow_trainer, os.getpid()), pin_memory=torch.cuda.is_available())

    def train_dataloader(self) -> DataLoader:
        rank, _ = self._rank()
        # the restored step enters the seed, so a resumed run draws new examples instead of replaying old ones
        step = self.trainer.global_step if self.trainer is not None else 0
        streams = {
            name: TrainStream(self._info(spec), spec, self.cfg, seed=f"{self.seed}/{name}/{step}", rank=rank)
            for name, spec in self.pools.items()
        }
        return self._loader(ZipPools(streams, self.cfg.batches_per_epoch))

    def eval_dataloader(self, split: str, limit: int | None = None) -> DataLoader:
        rank, world = self._rank()
        return self._loader(EvalClips(self.info, split, limit, rank, world))

    def val_dataloader(self) -> DataLoader:
        return self.eval_dataloader(self.cfg.valid_split, self.cfg.valid_clips)

    def test_dataloader(self) -> DataLoader:
        return self.eval_dataloader(self.cfg.test_split)

