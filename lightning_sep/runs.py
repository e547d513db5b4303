"""Run folders, loggers and checkpoints: what makes a run reproducible, resumable and inspectable.

``runs/<experiment>/<run-id>/`` holds ``config.yaml`` (resolved), ``checkpoints/last.ckpt`` (rewritten
atomically), ``csv/metrics.csv``, ``wandb/`` (every W&B file of the run), ``examples/`` (audio + PNGs) and,
after ``lightning-sep test``, ``results.json`` / ``results.md``. The run id is the config's identity hash (or
the SLURM job id), never a timestamp, so a killed, requeued or repeated job lands in the same folder.
"""
from __future__ import annotations

import netrc
import os
import time
import warnings
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from omegaconf import DictConfig, OmegaConf
from pytorch_lightning.loggers import CSVLogger, Logger, WandbLogger
from pytorch_lightning.plugins.io import TorchCheckpointIO
from pytorch_lightning.utilities.exceptions import SIGTERMException
from pytorch_lightning.utilities.rank_zero import rank_zero_only

from .config import identity

RUN_DIR_ENV = "LIGHTNING_SEP_RUN_DIR"  # set by the launching rank so DDP children use the same folder


def run_id(cfg: DictConfig) -> str:
    if cfg.run.id:
        return str(cfg.run.id)
    job = os.environ.get("SLURM_ARRAY_JOB_ID") and os.environ.get("SLURM_ARRAY_TASK_ID")
    if job:
        return f"slurm{os.environ['SLURM_ARRAY_JOB_ID']}_{os.environ['SLURM_ARRAY_TASK_ID']}"
    if os.environ.get("SLURM_JOB_ID"):
        return f"slurm{os.environ['SLURM_JOB_ID']}"
    return identity(cfg)


def resolve_run_dir(cfg: DictConfig) -> Path:
    """The run's folder. With ``run.resume=false`` an existing folder is left alone and a new id chosen."""
    inherited = os.environ.get(RUN_DIR_ENV)
    if inherited:
        return Path(inherited)
    base = Path(cfg.run.root) / cfg.experiment
    rid = run_id(cfg)
    folder = base / rid
    n = 2
    while not cfg.run.resume and folder.exists():
        folder, n = base / f"{rid}-{n}", n + 1
    return folder


def is_rank_zero() -> bool:
    return rank_zero_only.rank == 0


def last_checkpoint(folder: Path) -> Path | None:
    """The newest of ``checkpoints/last.ckpt`` and the ``hpc_ckpt_*.ckpt`` Lightning saves on SLURM's SIGUSR1."""
    candidates = [p for p in [folder / "checkpoints" / "last.ckpt", *folder.glob("hpc_ckpt_*.ckpt")] if p.is_file()]
    return max(candidates, key=lambda p: p.stat().st_mtime) if candidates else None


class AtomicCheckpointIO(TorchCheckpointIO):
    """Write to a temporary file and rename: a job killed while saving never leaves a half-written checkpoint."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options=None) -> None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        torch.save(checkpoint, tmp)
        os.replace(tmp, path)


class LastCheckpoint(pl.Callback):
    """Rewrites ``checkpoints/last.ckpt`` every N steps and when training ends or is stopped by SIGTERM."""

    def __init__(self, folder: Path, every_n_steps: int):
        self.path, self.every = folder / "checkpoints" / "last.ckpt", every_n_steps
        self._saved_at = -1

    def _save(self, trainer: pl.Trainer) -> None:
        if trainer.global_step != self._saved_at:
            trainer.save_checkpoint(self.path)
            self._saved_at = trainer.global_step

    def on_train_start(self, trainer, pl_module) -> None:
        if trainer.global_step > 0 and trainer.is_global_zero:
            print(f"resumed training at step {trainer.global_step} of {trainer.max_steps}", flush=True)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step % self.every == 0:
            self._save(trainer)

    def on_train_end(self, trainer, pl_module) -> None:
        self._save(trainer)

    def on_exception(self, trainer, pl_module, exception: BaseException) -> None:
        # a SIGTERM (scheduler preemption, `kill`) arrives as an exception; saving is safe only when no other
        # rank has to join the collective save, i.e. in a single-process run
        if trainer.world_size == 1 and isinstance(exception, (SIGTERMException, KeyboardInterrupt)):
            self._save(trainer)


class ValidationReport(pl.Callback):
    """One line per validation on rank 0 (step, elapsed time, validation metrics): a log readable without
    the progress bar, in CI output and SLURM files."""

    def __init__(self):
        self.start = time.time()

    def on_validation_end(self, trainer, pl_module) -> None:
        if not trainer.is_global_zero or trainer.sanity_checking:
            return
        values = {k[4:]: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("val/")}
        shown = ", ".join(f"{k} {v:.2f}" for k, v in sorted(values.items()))
        minutes = (time.time() - self.start) / 60
        print(f"step {trainer.global_step}/{trainer.max_steps} ({minutes:.1f} min): {shown}", flush=True)


def wandb_mode(cfg: DictConfig) -> str:
    """online/offline/disabled: the config's choice, else WANDB_MODE, else online only with credentials."""
    if cfg.logging.mode:
        return cfg.logging.mode
    if os.environ.get("WANDB_MODE"):
        return os.environ["WANDB_MODE"]
    if os.environ.get("WANDB_API_KEY"):
        return "online"
    try:
        logged_in = netrc.netrc().authenticators("api.wandb.ai") is not None
    except FileNotFoundError:
        logged_in = False  # no ~/.netrc: no stored credentials
    except netrc.NetrcParseError as e:
        warnings.warn(f"W&B: cannot read ~/.netrc ({e}); logging offline", stacklevel=2)
        logged_in = False
    return "online" if logged_in else "offline"


def make_loggers(cfg: DictConfig, folder: Path) -> list[Logger]:
    loggers: list[Logger] = [CSVLogger(folder, name="", version="csv")]
    if cfg.logging.wandb:
        mode = wandb_mode(cfg)
        if mode != "disabled":
            wandb_dir = folder / "wandb"
            wandb_dir.mkdir(parents=True, exist_ok=True)
            for var in ("WANDB_CACHE_DIR", "WANDB_DATA_DIR", "WANDB_ARTIFACT_DIR"):
                os.environ.setdefault(var, str(wandb_dir / var.split("_")[1].lower()))
            loggers.append(
                WandbLogger(
                    name=f"{cfg.experiment}/{folder.name}", id=f"{cfg.experiment}-{folder.name}".replace("/", "-"),
                    save_dir=str(folder), project=cfg.logging.project, entity=cfg.logging.entity,
                    offline=mode == "offline", resume="allow", tags=list(cfg.logging.tags),
                    config=OmegaConf.to_container(cfg, resolve=True),
                )
            )
    return loggers


def finish_loggers(loggers: list[Logger], failed: bool) -> None:
    """Close W&B even when the run crashed, so its files are complete and syncable."""
    for logger in loggers:
        if isinstance(logger, WandbLogger) and is_rank_zero() and logger._experiment is not None:
            logger._experiment.finish(exit_code=1 if failed else 0)
