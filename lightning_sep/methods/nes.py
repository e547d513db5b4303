"""Neural Egg Separation (Halperin, Ephrat & Hoshen, ICML 2019).

Given clean samples of an observed source B and mixtures Y = B + X of it with a source X that is never seen
alone, NES alternates two steps (the *outer iterations*, driven by ``NESIterations``):

1. **Train** the separator on synthetic mixtures b + x̂, where b comes from the observed pool and x̂ from the
   current estimates of X, drawn independently. The mask estimates the observed source: B̂ = m·Y, X̂ = (1 − m)·Y.
   The loss is L1 between the masked and the true magnitude of b (the authors'), or the negative SI-SDR of
   the rebuilt waveform b̂.
2. **Re-estimate** X̂ = (1 − m(Y))·Y on ALL training mixtures with the separator as it now is.

X̂₀ = c·Y (``nes.init_scale``) starts the loop; that initial estimate alone is "iteration 0". The separator's
weights carry over from one iteration to the next; the optimizer (and its schedule) is re-created at each
iteration when ``nes.reset_optimizer`` is set, as the authors do. One outer iteration is one epoch of
``trainer.max_steps / nes.iterations`` steps, so NES and the supervised bound share a step budget.

Each estimate pool is written as shards in the run folder (``nes/estimates-K``), so re-estimation scales
past memory and a run killed in iteration K resumes in iteration K with the pool it was training on.
"""
from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch import Tensor

from ..config import ConfigError, ExperimentConfig
from ..data.datamodule import EvalClips, PoolSpec
from ..data.shards import DatasetInfo, DatasetWriter, PoolInfo
from ..metrics import si_sdr
from ..nets.unet import MaskUNet
from .base import SeparationModule

ESTIMATE = "estimate"  # the stem name of X̂ in the estimate pools (never the unobserved stem's own name)


@dataclass
class NESParams:
    """Neural Egg Separation options (defaults: the authors' values where they state them)."""

    iterations: int = 10  # outer iterations; each is trainer.max_steps / iterations training steps (authors: 10)
    init_scale: float = 0.5  # X̂₀ = init_scale · Y (authors: 0.5 for speech and images, 0.1 for music)
    reset_optimizer: bool = True  # re-create the optimizer and its lr schedule at each iteration (authors: yes)
    loss: str = "magnitude_l1"  # magnitude_l1: L1 of masked vs true observed magnitude (authors); si_sdr: −SI-SDR of b̂
    reestimate_batch: int = 16  # mixtures per forward pass when re-estimating X̂
    clips_per_shard: int = 200  # clips per shard of an estimate pool


@dataclass
class NESConfig(ExperimentConfig):
    nes: NESParams = field(default_factory=NESParams)


class NES(SeparationModule):
    name = "nes"
    Config = NESConfig
    reload_train_data_each_epoch = True  # each outer iteration trains on a new estimate pool

    def __init__(self, config: dict, dataset: dict):
        super().__init__(config, dataset)
        self.observed, self.unobserved = dataset["observed"], dataset["unobserved"]
        if self.observed not in self.stems or self.unobserved not in self.stems:
            raise ConfigError(
                f"NES needs a dataset with an observed and an unobserved stem; dataset.json names "
                f"observed={self.observed!r}, unobserved={self.unobserved!r} among stems {self.stems}"
            )
        self.net = MaskUNet(len(self.stems), self.cfg.net)
        self.average_weights()
        self.observed_index = self.stems.index(self.observed)

    # ------------------------------------------------------------------ data
    @classmethod
    def resolve_config(cls, cfg) -> None:
        """One outer iteration is one epoch: its length follows from the step budget."""
        if cfg.nes.loss not in ("magnitude_l1", "si_sdr"):
            raise ConfigError(f"nes.loss={cfg.nes.loss!r} is not one of 'magnitude_l1', 'si_sdr'")
        steps, iterations = cfg.trainer.max_steps, cfg.nes.iterations
        if iterations < 1 or steps % iterations:
            raise ConfigError(
                f"trainer.max_steps={steps} must be a positive multiple of nes.iterations={iterations} "
                "(every outer iteration trains the same number of steps)"
            )
        cfg.data.batches_per_epoch = steps // iterations
        cfg.trainer.val_every_n_steps = steps // iterations  # validate at the end of every outer iteration

    @classmethod
    def train_pools(cls, info: DatasetInfo) -> dict[str, PoolSpec]:
        # the estimate pool is added by NESIterations once X̂₀ exists
        return {"observed": PoolSpec("train", "observed", [info.observed])}

    @classmethod
    def forbidden_stems(cls, info: DatasetInfo) -> tuple[str, ...]:
        return (info.unobserved,)

    # ------------------------------------------------------------------ step 1: train on synthetic mixtures
    def training_losses(self, batch: dict[str, dict[str, Tensor]]) -> dict[str, Tensor]:
        b = batch["observed"][self.observed]
        x_hat = batch["estimates"][ESTIMATE]  # drawn independently of b
        y = b + x_hat  # synthetic mixture, summed as waveforms
        spec = self.stft(y)
        mask_b = self.masks(y, spec)[:, self.observed_index]
        if self.cfg.nes.loss == "si_sdr":
            b_hat = self.stft.inverse(mask_b * spec, y.shape[-1])
            loss = -si_sdr(b_hat, b).nanmean()
            return {"loss": loss, "neg_si_sdr_observed": loss.detach()}
        loss = F.l1_loss(mask_b * spec.abs(), self.stft(b).abs())
        return {"loss": loss, "l1_magnitude_observed": loss.detach()}

    # ------------------------------------------------------------------ step 2: re-estimate X̂ on real mixtures
    @torch.no_grad()
    def estimate_unobserved(self, mix: Tensor) -> Tensor:
        """X̂ = (1 − m(Y))·Y, i.e. the separated unobserved stem."""
        return self.separate(mix)[:, self.stems.index(self.unobserved)]

    def extra_callbacks(self, folder: Path) -> list[pl.Callback]:
        return [NESIterations(folder / "nes")]

    def extra_results(self, folder: Path) -> dict[str, Any]:
        path = folder / "nes" / "iterations.json"
        return {"iterations": json.loads(path.read_text())} if path.exists() else {}


class NESIterations(pl.Callback):
    """Drives the outer loop inside one ``Trainer.fit``: X̂₀ at the start, re-estimation after every iteration.

    Iteration K (from 1) trains on the estimate pool ``estimates-(K-1)``; at its end the validation
    metrics are recorded (``iterations.json``, ``iterations.png``), X̂ is re-estimated on every training
    mixture into ``estimates-K`` and the DataModule switches to it. Under DDP each rank re-estimates its
    share of the mixtures (clip i on rank i % world) and rank 0 writes the pool's index.
    """

    def __init__(self, folder: Path):
        self.folder = Path(folder)
        self.iteration = 1  # the iteration being trained
        self.history: list[dict[str, Any]] = []
        self._started = time.perf_counter()

    # --------------------------------------------------------------- state (restored before on_fit_start)
    def state_dict(self) -> dict[str, Any]:
        return {"iteration": self.iteration, "history": self.history}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.iteration, self.history = state["iteration"], state["history"]

    def pool_dir(self, k: int) -> Path:
        return self.folder / f"estimates-{k}"

    # --------------------------------------------------------------- hooks
    def on_fit_start(self, trainer: pl.Trainer, module: NES) -> None:
        previous = self.pool_dir(self.iteration - 1)
        if not (previous / "dataset.json").exists():
            if self.iteration != 1:
                raise FileNotFoundError(
                    f"{previous}: the estimate pool iteration {self.iteration} trains on is missing; "
                    "restore it or start the run over with resume=false"
                )
            self.reestimate(trainer, module, 0)
        self.use_pool(trainer, module, self.iteration - 1)

    def on_train_epoch_start(self, trainer: pl.Trainer, module: NES) -> None:
        self._started = time.perf_counter()

    def on_train_epoch_end(self, trainer: pl.Trainer, module: NES) -> None:
        k = self.iteration
        valid = {key.rsplit("/", 1)[1]: float(v) for key, v in trainer.callback_metrics.items()
                 if key.startswith(f"val/{module.unobserved}/")}
        record = {"iteration": k, "step": trainer.global_step, "valid": valid,
                  "train_s": round(time.perf_counter() - self._started, 2), "reestimate_s": None}
        module.log("nes/iteration", float(k), rank_zero_only=True)
        last = k >= module.cfg.nes.iterations or trainer.global_step >= trainer.max_steps
        if not last:  # the last iteration's estimates would never be trained on
            started = time.perf_counter()
            self.reestimate(trainer, module, k)
            record["reestimate_s"] = round(time.perf_counter() - started, 2)
        self.history.append(record)
        if trainer.is_global_zero:
            self.folder.mkdir(parents=True, exist_ok=True)
            (self.folder / "iterations.json").write_text(json.dumps(self.history, indent=1) + "\n")
            self.plot(module)
        if not last:
            self.use_pool(trainer, module, k)
            self.iteration = k + 1
            if module.cfg.nes.reset_optimizer:
                trainer.strategy.setup_optimizers(trainer)

    # --------------------------------------------------------------- the estimate pools
    def use_pool(self, trainer: pl.Trainer, module: NES, k: int) -> None:
        trainer.datamodule.set_pool("estimates", PoolSpec("train", "estimates", [ESTIMATE], root=str(self.pool_dir(k))))

    def reestimate(self, trainer: pl.Trainer, module: NES, k: int) -> None:
        """Write X̂_k for every training mixture: c·Y for k = 0, else (1 − m(Y))·Y with the current separator.

        Each rank writes its share under ``.estimates-K.part/rank<r>``; rank 0 then writes the pool's index and
        renames the folder into place, so a pool folder with a ``dataset.json`` is always complete.
        """
        out, part = self.pool_dir(k), self.folder / f".estimates-{k}.part"
        rank, world = trainer.global_rank, trainer.world_size
        if trainer.is_global_zero:
            for stale in (out, part):  # from a run killed after writing it: recomputed from the restored weights
                if stale.exists():
                    shutil.rmtree(stale)
        trainer.strategy.barrier("nes-reestimate-start")
        info = trainer.datamodule.info
        made_by = {"method": "nes", "iteration": k, "from": f"{info.root}/train/mixtures",
                   "estimate": f"{module.cfg.nes.init_scale} * mix" if k == 0 else f"separated {module.unobserved}"}
        index = DatasetInfo(name=f"{info.name}:nes-estimates-{k}", sample_rate=info.sample_rate, stems=[ESTIMATE],
                            made_by=made_by)
        writer = DatasetWriter(part / f"rank{rank}", index, clips_per_shard=module.cfg.nes.clips_per_shard)
        clips = EvalClips(info, "train", None, rank, world, pool="mixtures", stems=["mix"])
        was_training = module.training
        module.eval()
        with writer.pool("train", "estimates", [ESTIMATE]) as pool:
            for keys, mix in _batches(clips, module.cfg.nes.reestimate_batch):
                mix = mix.to(module.device)
                x_hat = mix * module.cfg.nes.init_scale if k == 0 else module.estimate_unobserved(mix)
                peak = x_hat.abs().amax(dim=-1, keepdim=True).clamp(min=1.0)  # an estimate may overshoot full scale
                for key, x in zip(keys, (x_hat / peak).float().cpu().numpy(), strict=True):
                    pool.add(key, {ESTIMATE: x})
        writer.close()
        module.train(was_training)
        trainer.strategy.barrier("nes-reestimate-written")
        if trainer.is_global_zero:
            index.splits = {"train": {"estimates": _merge(part, world)}}
            (part / "dataset.json").write_text(json.dumps(index.to_json(), indent=2) + "\n")
            os.replace(part, out)
        trainer.strategy.barrier("nes-reestimate-done")

    def plot(self, module: NES) -> None:
        from ..plots import plot_curve

        points = [(h["iteration"], h["valid"].get("si_sdri")) for h in self.history]
        plot_curve(self.folder / "iterations.png", points, xlabel="outer iteration",
                   ylabel=f"validation {module.unobserved} SI-SDRi (dB)", title="NES")


def _batches(clips: EvalClips, size: int):
    """Equal-length mixtures stacked into batches of up to ``size`` (keys, (B, T))."""
    keys, waves = [], []
    for clip in clips:
        if waves and (len(waves) == size or waves[0].shape[-1] != clip["mix"].shape[-1]):
            yield keys, torch.cat(waves)
            keys, waves = [], []
        keys.append(clip["key"][0])
        waves.append(clip["mix"])
    if waves:
        yield keys, torch.cat(waves)


def _merge(part: Path, world: int):
    """One pool index over the shards every rank wrote under ``part/rank*``."""
    merged = PoolInfo(shards=[], members=[ESTIMATE])
    for r in range(world):
        pool = DatasetInfo.load(part / f"rank{r}").pool("train", "estimates")
        merged.shards += [f"rank{r}/{s}" for s in pool.shards]
        merged.clips += pool.clips
        merged.seconds = round(merged.seconds + pool.seconds, 3)
    return merged
