"""The base LightningModule every method extends: one override point, ``training_losses``.

The base owns what all methods share: the STFT front end, mask-based separation of whole clips,
validation and test scoring (per-clip metrics reduced across ranks), example audio and spectrogram
images, and the check that stops a run the moment a loss term is not finite.

A method subclass sets ``name`` and ``Config``, says which training pools it reads (``train_pools``) and
which stems it must never see in training (``forbidden_stems``), builds its networks, and returns its named
losses from ``training_losses(batch)`` with the total under ``"loss"``.
"""
from __future__ import annotations

import math
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
from omegaconf import DictConfig
from pytorch_lightning.loggers import WandbLogger
from torch import Tensor
from torchmetrics import MeanMetric

from .. import metrics
from ..audio import STFT, Pixels
from ..config import ConfigError, ExperimentConfig, config_from_dict
from ..data.shards import DatasetInfo
from ..data.streams import PoolSpec


def read_checkpoint(path: str | Path, method: str | None = None) -> dict:
    """The loaded checkpoint; an error if it is not ours or (``method`` given) was trained by another method."""
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:
        raise ConfigError(f"{path}: not a readable checkpoint ({e})") from e
    hparams = ckpt.get("hyper_parameters", {})
    stored = hparams.get("config", {}).get("method")
    if stored is None:
        raise ConfigError(f"{path}: not a lightning_sep checkpoint (no stored config)")
    if method is not None and stored != method:
        raise ConfigError(f"{path}: checkpoint of method {stored!r}, but a {method!r} checkpoint is needed here")
    return ckpt


def read_upstream_checkpoint(path: str | Path, method: str, key: str, example_config: str) -> tuple[dict, dict, dict]:
    """(checkpoint, its config, its dataset summary) of the run a method builds on (WeakSep's classifier, NES-FT's
    GLOM), named by config key ``key``; a missing file's error says how to train it."""
    if not Path(path).is_file():
        raise ConfigError(f"{key}={str(path)!r}: no such file; train the {method} run first (lightning-sep fit "
                          f"{example_config} with the same data.root and run.root), or give its "
                          f"checkpoints/last.ckpt as {key}")
    ckpt = read_checkpoint(path, method)
    return ckpt, ckpt["hyper_parameters"]["config"], ckpt["hyper_parameters"].get("dataset", {})


class NonFiniteLossError(RuntimeError):
    """A loss term became NaN or infinite; training stops rather than continue on garbage."""


class SeparationModule(pl.LightningModule):
    name = "base"
    Config: type = ExperimentConfig
    reload_train_data_each_epoch = False  # True when the training pools change between epochs (NES)
    ddp_find_unused_parameters = False  # True when a backward pass leaves some weights out (a GAN's two steps)
    test_time_keys: tuple[str, ...] = ("eval",)  # config sections `lightning-sep test` takes from the current config

    def __init__(self, config: dict, dataset: dict):
        """``config``: the resolved experiment config as a plain dict (stored in every checkpoint);
        ``dataset``: sample_rate, stems, observed, unobserved and classes of the dataset it trains on."""
        super().__init__()
        self.save_hyperparameters()
        self.cfg: DictConfig = config_from_dict(config, {self.name: self.Config})
        self.sample_rate: int = dataset["sample_rate"]
        self.stems: list[str] = list(dataset["stems"])
        self.is_image = dataset.get("modality", "audio") == "image"
        # images: masks act on the intensities; audio: on the STFT (the stft config is then unused)
        self.front_end = Pixels() if self.is_image else STFT(self.cfg.stft)
        self._val_scores: dict[str, MeanMetric] = torch.nn.ModuleDict()
        for stem in self.stems:
            for metric in self.validation_metrics:
                self._val_scores[f"{stem}/{metric}"] = MeanMetric(nan_strategy="ignore")
        self.test_rows: list[dict[str, Any]] = []
        self.test_results: dict[str, Any] | None = None
        self.net_average: torch.optim.swa_utils.AveragedModel | None = None

    @property
    def validation_metrics(self) -> tuple[str, ...]:
        return ("psnr", "ssim") if self.is_image else ("si_sdr", "si_sdri")

    @property
    def headline_metric(self) -> str:
        """The validation metric a run is judged by (plots, NES iterations)."""
        return "psnr" if self.is_image else "si_sdri"

    # ------------------------------------------------------------------ what a method provides
    @classmethod
    def train_pools(cls, info: DatasetInfo, cfg: DictConfig) -> dict[str, PoolSpec]:
        raise NotImplementedError

    @classmethod
    def optimizer_steps_per_batch(cls, cfg: DictConfig) -> int:
        """Optimizer steps per training batch (a GAN steps its discriminator and its generator)."""
        return 1

    @classmethod
    def optimizer_steps(cls, cfg: DictConfig) -> int:
        """Lightning's step count at the end of a run of ``trainer.max_steps`` batches."""
        return cfg.trainer.max_steps * cls.optimizer_steps_per_batch(cfg)

    @classmethod
    def forbidden_stems(cls, info: DatasetInfo) -> tuple[str, ...]:
        return ()

    @classmethod
    def resolve_config(cls, cfg: DictConfig) -> None:
        """Fill in values that follow from others (called once when the experiment is loaded)."""

    def training_losses(self, batch: dict[str, dict[str, Tensor]]) -> dict[str, Tensor]:
        raise NotImplementedError

    def extra_callbacks(self, folder: Path) -> list[pl.Callback]:
        """Callbacks the method needs (e.g. NES's outer iterations)."""
        return []

    def extra_results(self, folder: Path) -> dict[str, Any]:
        """Method-specific entries for results.json."""
        return {}

    def baseline_estimates(self, mix: Tensor) -> dict[str, Tensor]:
        """Estimates of trivial baselines scored beside the method at test time, (B, K, T) by name (e.g.
        NES's iteration 0); their summaries go to results.json under ``baselines``."""
        return {}

    def masks(self, mix: Tensor, spec: Tensor | None = None) -> Tensor:
        """(B, T) mixture → (B, K, F, N) masks, one per stem in ``self.stems`` order.

        Outside training the weight average (``optim.ema_decay``) separates, when there is one.
        """
        return self.evaluated_net(self.front_end.features(mix, spec))

    @property
    def evaluated_net(self) -> torch.nn.Module:
        """``self.net``, or outside training its weight average (``optim.ema_decay``) when there is one."""
        return self.net_average.module if self.net_average is not None and not self.training else self.net

    def average_weights(self) -> None:
        """Keep an exponential moving average of ``self.net`` (``optim.ema_decay``) for validation, test and
        separation; methods call this right after building ``self.net``. It smooths the step-to-step noise of
        the last weights (validation scores of the plain weights wander by about 0.2 dB between checks)."""
        decay = self.cfg.optim.ema_decay
        if decay is None:
            return
        self.net_average = torch.optim.swa_utils.AveragedModel(
            self.net, multi_avg_fn=torch.optim.swa_utils.get_ema_multi_avg_fn(decay), use_buffers=True
        )
        self.net_average.requires_grad_(False)

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        if self.net_average is not None:
            self.net_average.update_parameters(self.net)

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # checkpoints written before the front end had its modality-neutral name
        state = checkpoint["state_dict"]
        for key in [k for k in state if k.startswith("stft.")]:
            state["front_end." + key[len("stft."):]] = state.pop(key)

    # ------------------------------------------------------------------ training
    def training_step(self, batch: dict[str, dict[str, Tensor]], batch_idx: int) -> Tensor:
        losses = self.training_losses(batch)
        self.check_finite(losses)
        self.log_dict({f"train/{k}": v.detach() for k, v in losses.items()}, prog_bar=False)
        self.log("loss", losses["loss"].detach(), prog_bar=True, logger=False)
        return losses["loss"]

    def check_finite(self, losses: dict[str, Tensor]) -> None:
        bad = [k for k, v in losses.items() if not torch.isfinite(v).all()]
        # every rank must take the same decision, or the healthy ranks would wait forever in the next all-reduce
        if self.trainer.strategy.reduce_boolean_decision(bool(bad), all=False):
            where = f"step {self.global_step}"
            raise NonFiniteLossError(
                f"loss term(s) {bad or '(on another rank)'} became NaN/inf at {where}; "
                "the last checkpoint holds the weights before it. Lower optim.lr, set trainer.gradient_clip_val, "
                "or check the data"
            )

    def parameter_groups(self) -> list:
        """What Adam trains: the trainable weights, or parameter groups with their own settings (GLOM's codes)."""
        return [p for p in self.parameters() if p.requires_grad]

    def configure_optimizers(self):
        opt, sched = self.adam_with_schedule(self.parameter_groups())
        if sched is None:
            return opt
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    def adam_with_schedule(self, params, lr_scale: float = 1.0, extra_steps: int = 0
                           ) -> tuple[torch.optim.Optimizer, Any]:
        """Adam over ``params`` with the ``optim`` section's settings (its lr times ``lr_scale``), and its lr
        schedule (None: constant; a cosine one ``extra_steps`` longer than optim.schedule_steps)."""
        o = self.cfg.optim
        opt = torch.optim.Adam(params, lr=o.lr * lr_scale, betas=tuple(o.betas), weight_decay=o.weight_decay)
        if o.schedule == "cosine":
            total = o.schedule_steps + extra_steps
            return opt, torch.optim.lr_scheduler.LambdaLR(
                opt, partial(cosine_factor, warmup=o.warmup_steps, total=total, final=o.final_lr_ratio)
            )
        if o.schedule == "step" and o.decay_every_steps:
            return opt, torch.optim.lr_scheduler.StepLR(opt, step_size=o.decay_every_steps, gamma=o.decay_factor)
        return opt, None

    # ------------------------------------------------------------------ separation
    @torch.no_grad()
    def separate(self, mix: Tensor) -> Tensor:
        """(B, T) mixtures → (B, K, T) estimates of ``self.stems`` (they sum to the mixture); images (B, H, W) →
        (B, K, H, W)."""
        rep = self.front_end(mix)
        return self.front_end.apply_masks(self.masks(mix, rep), mix, rep)

    # ------------------------------------------------------------------ validation
    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        est = self.separate(batch["mix"])
        for k, stem in enumerate(self.stems):
            ref = batch[stem]
            if self.is_image:
                self._val_scores[f"{stem}/psnr"].update(metrics.psnr(est[:, k], ref))
                self._val_scores[f"{stem}/ssim"].update(metrics.ssim(est[:, k], ref))
                continue
            self._val_scores[f"{stem}/si_sdr"].update(metrics.si_sdr(est[:, k], ref))
            self._val_scores[f"{stem}/si_sdri"].update(metrics.si_sdr_improvement(est[:, k], ref, batch["mix"]))
        if batch_idx < self.cfg.eval.examples:
            self.write_example(f"valid/step{self.global_step:07d}", batch, est)

    def on_validation_epoch_end(self) -> None:
        # MeanMetric reduces across ranks in compute(), so every rank logs the same number
        for name, metric in self._val_scores.items():
            self.log(f"val/{name}", metric.compute(), sync_dist=False)
            metric.reset()

    # ------------------------------------------------------------------ test
    def on_test_epoch_start(self) -> None:
        self.test_rows = []
        self.baseline_rows: dict[str, list[dict[str, Any]]] = {}
        if self.device.type == "cpu":
            # float32 convolutions sum in an order that depends on the thread count: one thread per process
            # makes a clip's scores identical whether 1 or N processes evaluate (set here, after Lightning's
            # own per-process thread setting)
            torch.set_num_threads(1)

    def test_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        est = self.separate(batch["mix"])
        self.test_rows.append({"id": batch["key"][0], **self.score(est, batch)})
        for name, baseline in self.baseline_estimates(batch["mix"]).items():
            self.baseline_rows.setdefault(name, []).append({"id": batch["key"][0], **self.score(baseline, batch)})
        if batch_idx < self.cfg.eval.examples:
            self.write_example("test", batch, est)

    def score(self, est: Tensor, batch: dict[str, Any]) -> dict[str, dict[str, float]]:
        """Every metric of every stem of one clip's (1, K, T) estimates (or one image's (1, K, H, W))."""
        if self.is_image:
            return metrics.score_image({s: est[0, k] for k, s in enumerate(self.stems)},
                                       {s: batch[s][0] for s in self.stems}, batch["mix"][0])
        e = self.cfg.eval
        framewise = (e.window_s, e.hop_s) if e.framewise else None
        return metrics.score_clip(
            {s: est[0, k] for k, s in enumerate(self.stems)}, {s: batch[s][0] for s in self.stems},
            batch["mix"][0], bss=e.bss, framewise=framewise, sample_rate=self.sample_rate,
        )

    def on_test_epoch_end(self) -> None:
        rows = self.gather_rows(self.test_rows)
        e = self.cfg.eval
        self.test_results = {
            "flavour": metrics.image_flavours(e.clip_aggregation) if self.is_image else
            metrics.flavours(framewise=e.framewise, window_s=e.window_s, hop_s=e.hop_s,
                             clip_aggregation=e.clip_aggregation, bss=e.bss),
            "summary": summarize(rows, self.stems),
            "clips": rows,
        }
        if self.baseline_rows:
            self.test_results["baselines"] = {
                name: {"summary": summarize(self.gather_rows(r), self.stems)} for name, r in self.baseline_rows.items()
            }

    def gather_rows(self, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Every rank's per-clip rows, sorted by clip id (the same on every rank)."""
        if self.trainer.world_size > 1:
            gathered: list[list] = [None] * self.trainer.world_size  # type: ignore[list-item]
            torch.distributed.all_gather_object(gathered, rows)
            rows = [r for part in gathered for r in part]
        return sorted(rows, key=lambda r: r["id"])

    # ------------------------------------------------------------------ examples
    def write_example(self, tag: str, batch: dict[str, Any], est: Tensor) -> None:
        """Audio and a spectrogram PNG of the mixture, estimates and references (rank 0 only); for images one PNG
        of them side by side."""
        if not self.trainer.is_global_zero or self.trainer.sanity_checking:
            return
        from ..plots import write_example, write_image_example  # matplotlib is only loaded when examples are written

        key = batch["key"][0]
        waves = {"mix": batch["mix"][0]}
        for k, stem in enumerate(self.stems):
            waves[f"{stem}_estimate"] = est[0, k]
            waves[f"{stem}_reference"] = batch[stem][0]
        folder = Path(self.trainer.default_root_dir) / "examples" / tag
        arrays = {k: v.float().cpu().numpy() for k, v in waves.items()}
        if self.is_image:
            png = write_image_example(folder, key, arrays)
        else:
            png = write_example(folder, key, arrays, self.sample_rate, self.front_end)
        for logger in self.loggers:
            if isinstance(logger, WandbLogger):
                logger.log_image(key=f"examples/{tag.split('/')[0]}/{key}", images=[str(png)], step=self.global_step)


def cosine_factor(step: int, warmup: int, total: int, final: float) -> float:
    """Learning-rate factor: linear warm-up to 1, then a half cosine down to ``final`` at ``total`` steps."""
    if step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return final + (1 - final) * 0.5 * (1 + math.cos(math.pi * progress))


def summarize(rows: list[dict[str, Any]], stems: list[str]) -> dict[str, dict[str, dict[str, float]]]:
    """Mean and median of every metric of every stem over clips (NaN clips excluded and counted)."""
    out: dict[str, dict[str, dict[str, float]]] = {}
    for stem in stems:
        out[stem] = {}
        for metric in rows[0][stem] if rows else []:
            values = np.array([r[stem][metric] for r in rows], dtype=np.float64)
            mean, median = metrics.aggregate(values, "mean"), metrics.aggregate(values, "median")
            out[stem][metric] = {"mean": mean["value"], "median": median["value"], "n": mean["n"],
                                 "n_nan": mean["n_nan"]}
    return out

