"""Fitting and testing one experiment: what `lightning-sep fit/test/demo` and the benchmarks call.

``fit(cfg)`` trains (or resumes) the run of a config and returns its folder; ``test(cfg, folder)`` scores the
run's checkpoint on the test split and writes ``results.json``/``results.md``.
"""
from __future__ import annotations

import os
from pathlib import Path

import pytorch_lightning as pl
from omegaconf import DictConfig, OmegaConf

from .config import ConfigError, config_from_dict, identity, load_config, parse_overrides
from .data.datamodule import SeparationDataModule
from .data.shards import DatasetError, DatasetInfo
from .methods import METHODS, SCHEMAS
from .methods.base import read_checkpoint
from .results import write_results
from .runs import (
    RUN_DIR_ENV,
    AtomicCheckpointIO,
    LastCheckpoint,
    ValidationReport,
    finish_loggers,
    is_rank_zero,
    last_checkpoint,
    make_loggers,
    resolve_run_dir,
)


def load(config: str | Path, overrides: list[str]) -> DictConfig:
    """An experiment YAML with overrides, checked against its method's schema, with derived values filled in."""
    cfg = load_config(config, overrides, SCHEMAS)
    o = cfg.optim
    if o.schedule not in ("step", "cosine"):
        raise ConfigError(f"{config}: optim.schedule={o.schedule!r} is not one of 'step', 'cosine'")
    METHODS[cfg.method].resolve_config(cfg)
    if o.schedule == "cosine" and o.schedule_steps is None:
        o.schedule_steps = cfg.trainer.max_steps  # written into the config, so the run's identity includes it
    if cfg.method == "weaksep" and cfg.weaksep.classifier_checkpoint is None:
        run = upstream_run(cfg, cfg.weaksep.classifier_config, "classifier", "weaksep.classifier_config")
        cfg.weaksep.classifier_checkpoint = str(run / "checkpoints" / "last.ckpt")
    if cfg.method == "supervised" and cfg.supervised.assessor_weight and cfg.supervised.classifier_checkpoint is None:
        run = upstream_run(cfg, cfg.supervised.classifier_config, "classifier", "supervised.classifier_config")
        cfg.supervised.classifier_checkpoint = str(run / "checkpoints" / "last.ckpt")
    if cfg.method == "nes" and cfg.nes.init == "glom" and cfg.nes.glom_checkpoint is None:
        run = upstream_run(cfg, cfg.nes.glom_config, "glom", "nes.glom_config")
        cfg.nes.glom_checkpoint = str(run / "checkpoints" / "last.ckpt")
    return cfg


def upstream_run(cfg: DictConfig, config: str, method: str, key: str) -> Path:
    """The run folder of the experiment a config builds on (WeakSep's classifier, NES-FT's GLOM), trained on the
    same data under the same run root: runs are found by their config's identity."""
    upstream = load(config, [f"data.root={cfg.data.root}", f"run.root={cfg.run.root}"])
    if upstream.method != method:
        raise ConfigError(f"{key}={config}: method {upstream.method!r}, not a {method} experiment")
    return Path(cfg.run.root) / upstream.experiment / identity(upstream)


def make_trainer(cfg: DictConfig, folder: Path, loggers, callbacks, for_fit: bool) -> pl.Trainer:
    t = cfg.trainer
    reload = METHODS[cfg.method].reload_train_data_each_epoch
    steps = METHODS[cfg.method].optimizer_steps(cfg)
    strategy = t.strategy
    if METHODS[cfg.method].ddp_find_unused_parameters and strategy in ("ddp", "ddp_spawn"):
        strategy += "_find_unused_parameters_true"
    return pl.Trainer(
        default_root_dir=str(folder), max_steps=steps if for_fit else -1, max_epochs=-1,
        accelerator=t.accelerator, devices=t.devices, strategy=strategy, num_nodes=t.num_nodes,
        precision=t.precision, val_check_interval=t.val_every_n_steps, check_val_every_n_epoch=None,
        log_every_n_steps=t.log_every_n_steps, gradient_clip_val=t.gradient_clip_val,
        deterministic=t.deterministic, enable_progress_bar=t.progress_bar, logger=loggers,
        callbacks=callbacks, enable_checkpointing=False, plugins=[AtomicCheckpointIO()],
        use_distributed_sampler=False, num_sanity_val_steps=0, enable_model_summary=for_fit,
        reload_dataloaders_every_n_epochs=1 if reload else 0,
    )


def optimizer_steps_per_batch(cfg: DictConfig) -> int:
    """How far Lightning's step counter moves per batch: one per optimizer step (2 for a GAN), while
    ``trainer.max_steps`` and ``checkpoint_every_n_steps`` count batches."""
    return METHODS[cfg.method].optimizer_steps_per_batch(cfg)


def fit(cfg: DictConfig, callbacks: list[pl.Callback] | None = None) -> Path:
    """Train (or resume) the run of ``cfg``; returns its folder. ``callbacks`` are added to the run's own."""
    method = METHODS[cfg.method]
    # workers=False: the data streams seed themselves from (seed, pool, step, rank, worker, epoch), and Lightning's
    # worker seeding would only make every loader worker import Lightning before its first batch
    pl.seed_everything(cfg.seed, workers=False, verbose=False)
    info = DatasetInfo.load(cfg.data.root)
    folder = resolve_run_dir(cfg)
    inherited = os.environ.get(RUN_DIR_ENV)
    os.environ[RUN_DIR_ENV] = str(folder)  # DDP ranks started from this process use the same folder
    try:
        return _fit(cfg, method, info, folder, callbacks or [])
    finally:  # a later fit in this process (the demo runs several) resolves its own folder
        if inherited is None:
            os.environ.pop(RUN_DIR_ENV, None)


def _fit(cfg: DictConfig, method, info: DatasetInfo, folder: Path, extra: list[pl.Callback]) -> Path:
    ckpt = last_checkpoint(folder) if cfg.run.resume else None
    if ckpt is not None:
        read_checkpoint(ckpt, cfg.method)
    if is_rank_zero():
        folder.mkdir(parents=True, exist_ok=True)
        OmegaConf.save(cfg, folder / "config.yaml", resolve=True)
        print(f"run folder: {folder}" + (f" (resuming from {ckpt})" if ckpt else ""), flush=True)
    data = SeparationDataModule(cfg.data, method.train_pools(info, cfg), seed=cfg.seed,
                                forbidden=method.forbidden_stems(info))
    model = method(OmegaConf.to_container(cfg, resolve=True), dataset_summary(info))
    loggers = make_loggers(cfg, folder)
    every = cfg.trainer.checkpoint_every_n_steps * optimizer_steps_per_batch(cfg)
    callbacks = [LastCheckpoint(folder, every), ValidationReport(),
                 *model.extra_callbacks(folder), *extra]
    trainer = make_trainer(cfg, folder, loggers, callbacks, for_fit=True)
    failed = True
    try:
        trainer.fit(model, datamodule=data, ckpt_path=str(ckpt) if ckpt else None)
        failed = False
    finally:
        finish_loggers(loggers, failed)
    return folder


def dataset_summary(info: DatasetInfo) -> dict:
    """What a module needs to know of its dataset (stored in its checkpoint)."""
    return {"name": info.name, "sample_rate": info.sample_rate, "stems": list(info.stems),
            "observed": info.observed, "unobserved": info.unobserved, "classes": list(info.classes),
            "modality": info.modality, "image_shape": info.image_shape,
            "clips": {f"{split}/{pool}": p.clips for split, pools in info.splits.items() for pool, p in pools.items()}}


def run_config(folder: Path, overrides: list[str]) -> DictConfig:
    """The config a run folder was trained with, with ``key=value`` overrides on top."""
    if not (folder / "config.yaml").is_file():
        raise ConfigError(f"{folder}: not a run folder (no config.yaml); pass a run folder or an experiment YAML")
    cfg = config_from_dict(OmegaConf.to_container(OmegaConf.load(folder / "config.yaml")), SCHEMAS)
    return OmegaConf.merge(cfg, OmegaConf.from_dotlist(parse_overrides(overrides)))


def test(cfg: DictConfig, folder: Path, ckpt: Path | None = None) -> dict:
    """Score the run's checkpoint on the test split; writes results.json / results.md (rank 0)."""
    method = METHODS[cfg.method]
    ckpt = ckpt or last_checkpoint(folder)
    if ckpt is None:
        raise DatasetError(f"{folder}: no checkpoints/last.ckpt to test; train it first with `lightning-sep fit`")
    step = read_checkpoint(ckpt, cfg.method).get("global_step", -1)
    info = DatasetInfo.load(cfg.data.root)
    model = method.load_from_checkpoint(ckpt, map_location="cpu")
    for key in method.test_time_keys:  # scoring (and inference) settings come from the current config
        OmegaConf.update(model.cfg, key, OmegaConf.select(cfg, key), merge=False)
    data = SeparationDataModule(cfg.data, {}, seed=cfg.seed)
    trainer = make_trainer(cfg, folder, loggers=False, callbacks=[], for_fit=False)
    trainer.test(model, datamodule=data, verbose=False)
    results = {"method": cfg.method, "dataset": info.name, "split": cfg.data.test_split,
               "checkpoint": str(ckpt), "step": step, **(model.test_results or {})}
    results.update(model.extra_results(folder))
    if is_rank_zero():
        write_results(folder, results)
    return results
