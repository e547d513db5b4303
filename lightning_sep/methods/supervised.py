"""Supervised upper bound: the mask U-Net trained on isolated sources.

Every semi- and weakly-supervised method is measured against this: the same network and step budget,
but trained on mixtures whose every source is known (the ``train/isolated`` pool).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor

from ..config import ConfigError, ExperimentConfig
from ..data.datamodule import PoolSpec
from ..data.shards import DatasetInfo
from ..metrics import si_sdr
from ..nets.unet import MaskUNet
from .base import SeparationModule


@dataclass
class SupervisedParams:
    """Supervised training options."""

    remix: bool = True  # mix each clip's first stem with another clip's other stems (more distinct mixtures)
    loss: str = "magnitude_l1"  # magnitude_l1: L1 between masked and true magnitudes; si_sdr: negative SI-SDR of
    #                             the waveforms rebuilt with the mixture's phase (optimises the reported metric)
    loss_stems: list[str] = field(default_factory=list)  # stems the loss scores (empty: every stem)


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
        if self.is_image and self.cfg.supervised.loss != "magnitude_l1":
            raise ConfigError(f"supervised.loss={self.cfg.supervised.loss!r} needs audio; on images use magnitude_l1")
        unknown = set(self.cfg.supervised.loss_stems) - set(self.stems)
        if unknown:
            raise ConfigError(f"supervised.loss_stems names {sorted(unknown)}; the dataset's stems are {self.stems}")

    @classmethod
    def resolve_config(cls, cfg) -> None:
        if cfg.supervised.loss not in ("magnitude_l1", "si_sdr"):
            raise ConfigError(f"supervised.loss={cfg.supervised.loss!r} is not one of 'magnitude_l1', 'si_sdr'")

    @classmethod
    def train_pools(cls, info: DatasetInfo) -> dict[str, PoolSpec]:
        return {"isolated": PoolSpec("train", "isolated", list(info.stems))}

    def training_losses(self, batch: dict[str, dict[str, Tensor]]) -> dict[str, Tensor]:
        sources = torch.stack([batch["isolated"][s] for s in self.stems], dim=1)  # (B, K, T)
        if self.cfg.supervised.remix:
            # pair the first source of clip b with the other sources of clip b+1: new mixtures, same stems
            sources = torch.cat([sources[:, :1], sources[:, 1:].roll(1, dims=0)], dim=1)
        mix = sources.sum(dim=1)
        spec = self.front_end(mix)  # once, for the network's input and for the masked output
        masks = self.masks(mix, spec)
        scored = [self.stems.index(s) for s in self.cfg.supervised.loss_stems] or list(range(len(self.stems)))
        masks, sources = masks[:, scored], sources[:, scored]
        if self.cfg.supervised.loss == "si_sdr":
            estimates = self.front_end.apply_masks(masks, mix, spec)
            loss = -si_sdr(estimates, sources).nanmean()  # silent crops: NaN, skipped
            return {"loss": loss, "neg_si_sdr": loss.detach()}
        loss = F.l1_loss(masks * spec.abs().unsqueeze(1), self.front_end(sources).abs())
        return {"loss": loss, "l1_magnitude": loss.detach()}
