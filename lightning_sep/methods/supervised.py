"""Supervised upper bound: the mask U-Net trained on isolated sources.

Every semi- and weakly-supervised method is measured against this: the same network and step budget,
but trained on mixtures whose every source is known (the ``train/isolated`` pool).

A bound must know at least what the method it bounds knows. WeakSep knows a frozen sound-event classifier, so the
bound can take that classifier's verdict on its class outputs as a second term (``supervised.assessor_weight``,
WeakSep's clip-level classification loss, with presence read from the references).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from omegaconf import DictConfig
from torch import Tensor

from ..config import ConfigError, ExperimentConfig
from ..data.shards import DatasetInfo
from ..data.streams import PoolSpec
from ..metrics import si_sdr
from ..nets.unet import MaskUNet
from .assessor import EXAMPLE_CONFIG, classification_loss, frame_verdicts, load_classifier
from .base import SeparationModule

LOSSES = ("magnitude_l1", "si_sdr", "snr")


def thresholded_snr_loss(estimates: Tensor, sources: Tensor, mixture: Tensor, snr_max: float,
                         leak_floor_db: float) -> Tensor:
    """Negative SNR capped at ``snr_max`` for sounding stems, and for silent ones the output's energy relative to
    the mixture's, floored at ``leak_floor_db`` (after the thresholded SNR of Wisdom et al. 2020, "Unsupervised sound
    separation using mixture invariant training", for references that may be silent). In dB, mean over stems, clips.

    Each stem's term is scale-free, so a quiet class weighs as much as a loud one; an L1 on magnitudes lets
    the loud classes decide and can starve a quiet class's softmax output to a mask of zero everywhere. The floor
    keeps the silent stems (most of them, in a clip of 1-3 events out of 6 classes) from outweighing the sounding
    ones: without it, muting every output but one is the fastest way down, and training takes it.
    estimates, sources (B, K, T); mixture (B, T).
    """
    estimates, sources, mixture = estimates.float(), sources.float(), mixture.float()
    tau, floor = 10 ** (-snr_max / 10), 10 ** (leak_floor_db / 10)
    source_energy = sources.pow(2).sum(-1)
    mixture_energy = mixture.pow(2).sum(-1, keepdim=True).clamp_min(1e-8)
    error_energy = (sources - estimates).pow(2).sum(-1)
    sounding = source_energy > 1e-5 * mixture_energy  # quieter than -50 dB under the mixture: silent
    neg_snr = 10 * torch.log10((error_energy + tau * source_energy + 1e-8) / (source_energy + 1e-8))
    leak = 10 * torch.log10((estimates.pow(2).sum(-1) + floor * mixture_energy) / mixture_energy)
    return torch.where(sounding, neg_snr, leak).mean()


def remix(sources: Tensor) -> Tensor:
    """(B, K, T) stems → new mixtures' stems: stem k of mixture b comes from clip b − k (mod B). Every clip's stems
    still appear once, in K different mixtures; the share of silent stems stays the data's."""
    return torch.stack([sources[:, k].roll(k, dims=0) for k in range(sources.shape[1])], dim=1)


@dataclass
class SupervisedParams:
    """Supervised training options."""

    remix: bool = True  # mixture b takes stem k from clip b − k, for every stem k (more distinct mixtures)
    loss: str = "magnitude_l1"  # magnitude_l1: L1 between masked and true magnitudes; si_sdr: negative SI-SDR of
    #                             the waveforms rebuilt with the mixture's phase (optimises the reported metric);
    #                             snr: thresholded SNR of those waveforms, which also scores silent stems (see below)
    snr_max: float = 30.0  # loss=snr: the SNR (dB) past which a sounding stem earns nothing more
    leak_floor_db: float = -20.0  # loss=snr: a silent stem's output energy (dB re the mixture) below which it earns
    #                               nothing more
    loss_stems: list[str] = field(default_factory=list)  # stems the loss scores (empty: every stem)
    assessor_weight: float = 0.0  # weight of the frozen classifier's verdict on each sounding class's output
    #                               (WeakSep's classification loss; 0: no classifier). Datasets with classes only
    classifier_config: str = EXAMPLE_CONFIG  # assessor_weight > 0: the `classifier` experiment whose run (same
    #                                          run.root and data.root) provides the frozen classifier
    classifier_checkpoint: str | None = None  # or that checkpoint given directly (None: found from classifier_config)
    observed_share: float = 0.0  # share of training examples whose observed stem (e.g. noise) comes from the
    #                              train/observed pool, the clips semi-supervised methods see alone: the bound then
    #                              knows all that NES knows (datasets with an observed stem)


@dataclass
class SupervisedConfig(ExperimentConfig):
    supervised: SupervisedParams = field(default_factory=SupervisedParams)


class Supervised(SeparationModule):
    name = "supervised"
    Config = SupervisedConfig

    def __init__(self, config: dict, dataset: dict):
        super().__init__(config, dataset)
        self.net = MaskUNet(len(self.stems), self.cfg.net)
        self.average_weights()
        self.observed = dataset.get("observed")
        self.classes = list(dataset.get("classes") or [])
        if self.cfg.supervised.assessor_weight:
            if not self.classes:
                raise ConfigError("supervised.assessor_weight needs a dataset with classes (dataset.json has none); "
                                  "set it to 0")
            self.assessor = load_classifier(self.cfg.supervised.classifier_checkpoint, self.classes, self.sample_rate,
                                            self.cfg.stft.n_fft, self.cfg.supervised.classifier_config,
                                            "supervised.classifier_checkpoint")
        if self.is_image and self.cfg.supervised.loss != "magnitude_l1":
            raise ConfigError(f"supervised.loss={self.cfg.supervised.loss!r} needs audio; on images use magnitude_l1")
        unknown = set(self.cfg.supervised.loss_stems) - set(self.stems)
        if unknown:
            raise ConfigError(f"supervised.loss_stems names {sorted(unknown)}; the dataset's stems are {self.stems}")

    @classmethod
    def resolve_config(cls, cfg) -> None:
        if cfg.supervised.loss not in LOSSES:
            raise ConfigError(f"supervised.loss={cfg.supervised.loss!r} is not one of {', '.join(map(repr, LOSSES))}")
        if cfg.supervised.assessor_weight < 0:
            raise ConfigError(f"supervised.assessor_weight={cfg.supervised.assessor_weight} must be >= 0")
        if not 0 <= cfg.supervised.observed_share <= 1:
            raise ConfigError(f"supervised.observed_share={cfg.supervised.observed_share} must be in [0, 1]")

    @classmethod
    def train_pools(cls, info: DatasetInfo, cfg: DictConfig) -> dict[str, PoolSpec]:
        pools = {"isolated": PoolSpec("train", "isolated", list(info.stems))}
        if cfg.supervised.observed_share:
            if info.observed is None or "observed" not in info.splits.get("train", {}):
                raise ConfigError(f"supervised.observed_share={cfg.supervised.observed_share} needs a train/observed "
                                  f"pool; {info.root} has none (set it to 0)")
            pools["observed"] = PoolSpec("train", "observed", [info.observed])
        return pools

    def training_losses(self, batch: dict[str, dict[str, Tensor]]) -> dict[str, Tensor]:
        sources = torch.stack([batch["isolated"][s] for s in self.stems], dim=1)  # (B, K, T)
        if self.cfg.supervised.observed_share:
            sources = self.draw_observed(sources, batch["observed"][self.observed])
        if self.cfg.supervised.remix:
            sources = remix(sources)
        mix = sources.sum(dim=1)
        spec = self.front_end(mix)  # once, for the network's input and for the masked output
        masks = self.masks(mix, spec)
        losses = self.reference_loss(masks, sources, mix, spec)
        total = sum(losses.values())
        if self.cfg.supervised.assessor_weight:
            losses["classification"] = self.assessor_loss(masks, sources, mix, spec)
            total = total + self.cfg.supervised.assessor_weight * losses["classification"]
        losses["loss"] = total
        return losses

    def reference_loss(self, masks: Tensor, sources: Tensor, mix: Tensor, spec: Tensor) -> dict[str, Tensor]:
        """The outputs against the references, by ``supervised.loss``, on the stems of ``supervised.loss_stems``."""
        scored = [self.stems.index(s) for s in self.cfg.supervised.loss_stems] or list(range(len(self.stems)))
        masks, sources = masks[:, scored], sources[:, scored]
        if self.cfg.supervised.loss == "si_sdr":
            estimates = self.front_end.apply_masks(masks, mix, spec)
            return {"neg_si_sdr": -si_sdr(estimates, sources).nanmean()}  # silent crops: NaN, skipped
        if self.cfg.supervised.loss == "snr":
            estimates = self.front_end.apply_masks(masks, mix, spec)
            return {"neg_snr": thresholded_snr_loss(estimates, sources, mix, self.cfg.supervised.snr_max,
                                                    self.cfg.supervised.leak_floor_db)}
        return {"l1_magnitude": F.l1_loss(masks * spec.abs().unsqueeze(1), self.front_end(sources).abs())}

    def assessor_loss(self, masks: Tensor, sources: Tensor, mix: Tensor, spec: Tensor) -> Tensor:
        """WeakSep's classification loss on the class outputs (as masked magnitudes, as WeakSep's), for the classes
        whose reference sounds in the crop (the thresholded SNR's test: above -50 dB under the mixture)."""
        at = [self.stems.index(c) for c in self.classes]
        outputs = masks[:, at] * spec.abs().unsqueeze(1)
        energy = sources[:, at].float().pow(2).sum(-1)
        present = (energy > 1e-5 * mix.float().pow(2).sum(-1, keepdim=True)).float()
        return classification_loss(frame_verdicts(self.assessor, outputs), present, self.assessor.cfg.pooling)

    def draw_observed(self, sources: Tensor, observed: Tensor) -> Tensor:
        """Replace the observed stem of a random ``observed_share`` of the examples with clips of train/observed."""
        k = self.stems.index(self.observed)
        drawn = torch.rand(sources.shape[0], 1, device=sources.device) < self.cfg.supervised.observed_share
        sources = sources.clone()
        sources[:, k] = torch.where(drawn, observed, sources[:, k])
        return sources
