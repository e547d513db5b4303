"""Neural Egg Separation (Halperin, Ephrat & Hoshen, ICML 2019).

Given clean samples of an observed source B and mixtures Y = B + X of it with a source X that is never seen
alone, NES alternates two steps (the *outer iterations*, driven by ``NESIterations``):

1. **Train** the separator on synthetic mixtures b + x̂, where b comes from the observed pool and x̂ from the
   current estimates of X, drawn independently. The mask estimates the observed source: B̂ = m·Y, X̂ = (1 − m)·Y.
   The loss is L1 between the masked and the true magnitude of b (the authors'), or the negative SI-SDR of
   the rebuilt waveform b̂.
2. **Re-estimate** X̂ = (1 − m(Y))·Y on ALL training mixtures with the separator as it now is.

X̂₀ = c·Y (``nes.init_scale``) starts the loop, or with ``nes.init: glom`` the estimates of GLO masking (``glom.py``;
the paper's NES-FT); that initial estimate alone is "iteration 0". The separator's
weights carry over from one iteration to the next; the optimizer (and its schedule) is re-created at each
iteration when ``nes.reset_optimizer`` is set, as the authors do. One outer iteration is one epoch of
``trainer.max_steps / nes.iterations`` steps, so NES and the supervised bound share a step budget.

Each estimate pool is written as shards in the run folder (``nes/estimates-K``), so re-estimation scales
past memory and a run killed in iteration K resumes in iteration K with the pool it was training on.
"""
from __future__ import annotations

import json
import os
import queue
import shutil
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from omegaconf import DictConfig
from torch import Tensor

from ..config import ConfigError, ExperimentConfig
from ..data.shards import IMAGE_MAX, DatasetInfo, DatasetWriter, PoolInfo
from ..data.streams import EvalClips, PoolSpec
from ..metrics import si_sdr
from ..nets.unet import MaskUNet
from .base import SeparationModule

T = TypeVar("T")

ESTIMATE = "estimate"  # the stem name of X̂ in the estimate pools (never the unobserved stem's own name)


@dataclass
class NESParams:
    """Neural Egg Separation options (defaults: the authors' values where they state them)."""

    iterations: int = 10  # outer iterations; each is trainer.max_steps / iterations training steps (authors: 10)
    init: str = "constant"  # X̂₀: constant (init_scale · Y, the authors') or glom (GLO masking's estimates: NES-FT)
    init_scale: float = 0.5  # X̂₀ = init_scale · Y (authors: 0.5 for speech and images, 0.1 for music)
    glom_config: str = "experiments/glom/demo_speech_noise.yaml"  # init=glom: the `glom` experiment whose run
    #   (under this run.root, on this data.root) provides the GLO model
    glom_checkpoint: str | None = None  # or that checkpoint given directly (None: found from glom_config)
    reset_optimizer: bool = True  # re-create the optimizer and its lr schedule at each iteration (authors: yes)
    loss: str = "magnitude_l1"  # magnitude_l1: L1 of masked vs true observed magnitude (authors); si_sdr: −SI-SDR of b̂
    observed_gain_db: list[float] = field(default_factory=lambda: [0.0, 0.0])  # extra random gain of b in each
    #   synthetic mixture, uniform in [lo, hi] dB (authors: none). Residues of B left in X̂ are weaker than any b
    #   the separator is shown, so it learns to keep them as X and they persist from iteration to iteration;
    #   showing b down to those levels (e.g. [-20, 0]) teaches it to remove them too
    estimate_exponent: float = 1.0  # re-estimate X̂ = (1 − m)^γ·Y with this γ (authors: 1). γ > 1 suppresses the
    #   weak residues of B that a soft mask leaves in X̂ and that the next iteration would learn to keep as X
    reestimate_batch: int = 16  # mixtures per forward pass when re-estimating X̂
    mixtures_pool: str = "mixtures"  # the train pool whose mixtures NES explains (only their `mix` is read; e.g.
    #                                  `isolated`, whose references then let benchmarks/nes_estimates.py score X̂)
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
        self._glom: list | None = None  # nes.init=glom: the GLO model X̂₀ comes from, loaded when first needed
        if self.is_image and self.cfg.nes.loss != "magnitude_l1":
            raise ConfigError(f"nes.loss={self.cfg.nes.loss!r} needs audio; on images use magnitude_l1 (L1 of pixels)")

    # ------------------------------------------------------------------ data
    @classmethod
    def resolve_config(cls, cfg) -> None:
        """One outer iteration is one epoch: its length follows from the step budget."""
        if cfg.nes.init not in ("constant", "glom"):
            raise ConfigError(f"nes.init={cfg.nes.init!r} is not one of 'constant', 'glom'")
        if cfg.nes.loss not in ("magnitude_l1", "si_sdr"):
            raise ConfigError(f"nes.loss={cfg.nes.loss!r} is not one of 'magnitude_l1', 'si_sdr'")
        if cfg.nes.estimate_exponent < 1:
            raise ConfigError(f"nes.estimate_exponent={cfg.nes.estimate_exponent} must be >= 1")
        gain = list(cfg.nes.observed_gain_db)
        if len(gain) != 2 or gain[0] > gain[1]:
            raise ConfigError(f"nes.observed_gain_db={gain} must be [lo, hi] dB with lo <= hi")
        steps, iterations = cfg.trainer.max_steps, cfg.nes.iterations
        if iterations < 1 or steps % iterations:
            raise ConfigError(
                f"trainer.max_steps={steps} must be a positive multiple of nes.iterations={iterations} "
                "(every outer iteration trains the same number of steps)"
            )
        cfg.data.batches_per_epoch = steps // iterations
        cfg.trainer.val_every_n_steps = steps // iterations  # validate at the end of every outer iteration
        if cfg.nes.reset_optimizer and cfg.optim.schedule_steps is None:
            cfg.optim.schedule_steps = steps // iterations  # a re-created schedule runs its course per iteration

    @classmethod
    def train_pools(cls, info: DatasetInfo, cfg: DictConfig) -> dict[str, PoolSpec]:
        # the estimate pool is added by NESIterations once X̂₀ exists
        return {"observed": PoolSpec("train", "observed", [info.observed])}

    @classmethod
    def forbidden_stems(cls, info: DatasetInfo) -> tuple[str, ...]:
        return (info.unobserved,)

    # ------------------------------------------------------------------ step 1: train on synthetic mixtures
    def synthetic_mixture(self, b: Tensor, x_hat: Tensor) -> tuple[Tensor, Tensor]:
        """(b, y = b + x̂), summed as waveforms (or images), b first scaled by ``nes.observed_gain_db``."""
        lo, hi = self.cfg.nes.observed_gain_db
        if (lo, hi) != (0.0, 0.0):
            gain_db = torch.empty(b.shape[0], *[1] * (b.dim() - 1), device=b.device).uniform_(lo, hi)
            b = b * 10 ** (gain_db / 20)
        return b, b + x_hat

    def training_losses(self, batch: dict[str, dict[str, Tensor]]) -> dict[str, Tensor]:
        # x̂ is drawn independently of b
        b, y = self.synthetic_mixture(batch["observed"][self.observed], batch["estimates"][ESTIMATE])
        spec = self.front_end(y)
        mask_b = self.masks(y, spec)[:, self.observed_index]
        if self.cfg.nes.loss == "si_sdr":
            b_hat = self.front_end.inverse(mask_b * spec, y.shape[-1])
            loss = -si_sdr(b_hat, b).nanmean()
            return {"loss": loss, "neg_si_sdr_observed": loss.detach()}
        loss = F.l1_loss(mask_b * spec.abs(), self.front_end(b).abs())
        return {"loss": loss, "l1_magnitude_observed": loss.detach()}

    # ------------------------------------------------------------------ step 2: re-estimate X̂ on real mixtures
    @torch.inference_mode()
    def estimate_unobserved(self, mix: Tensor) -> Tensor:
        """X̂ = (1 − m(Y))^γ·Y (γ = ``nes.estimate_exponent``; 1: the separated unobserved stem)."""
        rep = self.front_end(mix)
        mask = self.masks(mix, rep)[:, self.stems.index(self.unobserved)]
        return self.front_end.apply_masks(mask.unsqueeze(1) ** self.cfg.nes.estimate_exponent, mix, rep)[:, 0]

    def initial_estimate(self, mix: Tensor) -> Tensor:
        """X̂₀: c·Y, or with ``nes.init: glom`` GLO masking's estimate of X (NES-FT)."""
        if self.cfg.nes.init == "constant":
            return self.cfg.nes.init_scale * mix
        if self._glom is None:  # kept out of the module's state: the GLOM run's checkpoint holds it
            from .glom import load_glom

            self._glom = [load_glom(self.cfg.nes.glom_checkpoint, self.hparams["dataset"], self.cfg.nes.glom_config)]
        with torch.inference_mode(False):
            glom = self._glom[0].to(mix.device)
        return glom.estimate_unobserved(mix)

    def baseline_estimates(self, mix: Tensor) -> dict[str, Tensor]:
        """Iteration 0: the initial estimate X̂₀ and B̂₀ = Y − X̂₀, scored like the separator."""
        x0 = self.initial_estimate(mix)
        est = torch.stack([x0 if stem == self.unobserved else mix - x0 for stem in self.stems], dim=1)
        return {"iteration_0": est}

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
            if trainer.is_global_zero:
                self.show_estimates(trainer, module, 0)
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
            self.show_estimates(trainer, module, k)
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
        pool_name = module.cfg.nes.mixtures_pool
        made_by = {"method": "nes", "iteration": k, "from": f"{info.root}/train/{pool_name}",
                   "estimate": f"separated {module.unobserved}" if k else
                   f"{module.cfg.nes.init_scale} * mix" if module.cfg.nes.init == "constant" else
                   f"GLO masking ({module.cfg.nes.glom_checkpoint})"}
        index = DatasetInfo(name=f"{info.name}:nes-estimates-{k}", sample_rate=info.sample_rate, stems=[ESTIMATE],
                            made_by=made_by, modality=info.modality, image_shape=info.image_shape)
        writer = DatasetWriter(part / f"rank{rank}", index, clips_per_shard=module.cfg.nes.clips_per_shard)
        clips = EvalClips(info, "train", None, rank, world, pool=pool_name, stems=["mix"])
        was_training = module.training
        module.eval()
        # in the run's precision (bf16-mixed: about 1.4x faster on CPUs with AVX512-BF16, same test scores); a helper
        # thread decodes the next mixtures and another encodes the last estimates while the network runs
        with writer.pool("train", "estimates", [ESTIMATE]) as pool, trainer.precision_plugin.forward_context(), \
                ThreadPoolExecutor(1, thread_name_prefix="nes-write") as encoder:
            written = None
            for keys, mix in _read_ahead(_batches(clips, module.cfg.nes.reestimate_batch)):
                mix = mix.to(module.device)
                x_hat = module.initial_estimate(mix) if k == 0 else module.estimate_unobserved(mix)
                if module.is_image:  # masked intensities stay within the mixture's, which are storable
                    x_hat = x_hat.clamp(0, IMAGE_MAX)
                else:  # an estimate may overshoot full scale
                    x_hat = x_hat / x_hat.abs().amax(dim=-1, keepdim=True).clamp(min=1.0)
                if written is not None:
                    written.result()  # one batch in flight: memory stays bounded, a write error surfaces here
                written = encoder.submit(_add_all, pool, keys, x_hat.float().cpu().numpy())
            if written is not None:
                written.result()
        writer.close()
        module.train(was_training)
        trainer.strategy.barrier("nes-reestimate-written")
        if trainer.is_global_zero:
            index.splits = {"train": {"estimates": _merge(part, world)}}
            (part / "dataset.json").write_text(json.dumps(index.to_json(), indent=2) + "\n")
            os.replace(part, out)
        trainer.strategy.barrier("nes-reestimate-done")

    @torch.no_grad()
    def show_estimates(self, trainer: pl.Trainer, module: NES, k: int) -> None:
        """``estimates/iteration-K/<clip>.png`` (and audio): mixture Y, the estimate X̂_K the re-estimation rule
        gives (X̂₀ = c·Y for K = 0) and the true X, for the first ``eval.examples`` validation clips, the same
        clips at every iteration: how the estimates evolve, side by side (rank 0)."""
        from ..plots import write_example, write_image_example

        info = trainer.datamodule.info
        clips = EvalClips(info, module.cfg.data.valid_split, module.cfg.eval.examples, 0, 1,
                          stems=["mix", module.unobserved])
        folder = self.folder / "estimates" / f"iteration-{k}"
        was_training = module.training
        module.eval()
        for clip in clips:
            mix = clip["mix"].to(module.device)
            x_hat = module.initial_estimate(mix) if k == 0 else module.estimate_unobserved(mix)
            arrays = {"mix": mix[0], "estimate": x_hat[0], "reference": clip[module.unobserved][0]}
            arrays = {name: a.float().cpu().numpy() for name, a in arrays.items()}
            key = clip["key"][0]
            if module.is_image:
                write_image_example(folder, key, arrays)
            else:
                write_example(folder, key, arrays, module.sample_rate, module.front_end)
        module.train(was_training)

    def plot(self, module: NES) -> None:
        from ..plots import plot_curve

        metric = module.headline_metric
        points = [(h["iteration"], h["valid"].get(metric)) for h in self.history]
        label = {"si_sdri": "SI-SDRi (dB)", "psnr": "PSNR (dB)"}[metric]
        plot_curve(self.folder / "iterations.png", points, xlabel="outer iteration",
                   ylabel=f"validation {module.unobserved} {label}", title="NES")


def _batches(clips: EvalClips, size: int):
    """Equal-length mixtures stacked into batches of up to ``size`` (keys, (B, T))."""
    keys, waves = [], []
    for clip in clips:
        if waves and (len(waves) == size or waves[0].shape != clip["mix"].shape):
            yield keys, torch.cat(waves)
            keys, waves = [], []
        keys.append(clip["key"][0])
        waves.append(clip["mix"])
    if waves:
        yield keys, torch.cat(waves)


def _read_ahead(items: Iterator[T], depth: int = 2) -> Iterator[T]:
    """``items`` produced by a helper thread up to ``depth`` ahead of the consumer; its exception is raised here."""
    ready: queue.Queue = queue.Queue(maxsize=depth)
    done = object()
    stop = threading.Event()

    def offer(entry: tuple) -> bool:
        while not stop.is_set():  # the consumer may have left: never block on a full queue for good
            try:
                ready.put(entry, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        try:
            for item in items:
                if not offer((item, None)):
                    return
            offer((done, None))
        except BaseException as e:  # handed to the consumer, which raises it
            offer((done, e))

    thread = threading.Thread(target=produce, name="nes-read", daemon=True)
    thread.start()
    try:
        while True:
            item, error = ready.get()
            if error is not None:
                raise error
            if item is done:
                return
            yield item
    finally:
        stop.set()
        thread.join()


def _add_all(pool, keys: list[str], estimates) -> None:
    for key, x in zip(keys, estimates, strict=True):
        pool.add(key, {ESTIMATE: x})


def _merge(part: Path, world: int):
    """One pool index over the shards every rank wrote under ``part/rank*``."""
    merged = PoolInfo(shards=[], members=[ESTIMATE])
    for r in range(world):
        pool = DatasetInfo.load(part / f"rank{r}").pool("train", "estimates")
        merged.shards += [f"rank{r}/{s}" for s in pool.shards]
        merged.clips += pool.clips
        merged.seconds = round(merged.seconds + pool.seconds, 3)
    return merged
