"""The sound-event classifier that WeakSep uses as its frozen assessor, trained here on weak labels alone.

It trains on the weakly labelled mixtures (``train/mixtures``): with clip-level labels through pooling of its frame
probabilities (``weak_labels.level: clip``), or on the frame-level activity directly (``frame``). Validation and
test report clip-level mAP (macro average precision over classes) and F1 at ``weak_labels.threshold``
(torchmetrics); `test` writes them to results.json under ``"classifier"``. A WeakSep config names the checkpoint.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from omegaconf import DictConfig
from torch import Tensor
from torchmetrics.classification import MultilabelAveragePrecision, MultilabelF1Score
from torchmetrics.functional.classification import multilabel_average_precision, multilabel_f1_score

from ..config import ConfigError, ExperimentConfig
from ..data.shards import DatasetInfo
from ..data.streams import LABEL_RATE, PoolSpec
from ..nets.classifier import POOLINGS, ClassifierConfig, SoundEventClassifier, bce
from .base import SeparationModule


@dataclass
class WeakLabelParams:
    """Which labels train the classifier, and how its scores become decisions."""

    level: str = "clip"  # clip: clip-level labels (which classes are present); frame: frame-level activity
    threshold: float = 0.5  # clip probability above which a class counts as present (F1)


@dataclass
class ClassifierExperimentConfig(ExperimentConfig):
    classifier: ClassifierConfig = field(default_factory=ClassifierConfig)
    weak_labels: WeakLabelParams = field(default_factory=WeakLabelParams)


def activity_at(activity: Tensor, n_frames: int, hop_length: int, sample_rate: int) -> Tensor:
    """(B, C, L) activity at ``LABEL_RATE`` → (B, C, n_frames) at the STFT's frame rate (nearest frame)."""
    centres = torch.arange(n_frames, device=activity.device) * (hop_length * LABEL_RATE / sample_rate)
    return activity[..., centres.long().clamp(max=activity.shape[-1] - 1)]


class Classifier(SeparationModule):
    name = "classifier"
    Config = ClassifierExperimentConfig

    def __init__(self, config: dict, dataset: dict):
        super().__init__(config, dataset)
        self.classes: list[str] = list(dataset["classes"])
        if not self.classes or self.is_image:
            raise ConfigError("the classifier needs an audio dataset with classes (dataset.json `classes`), e.g. "
                              "demo-urban")
        self.net = SoundEventClassifier(len(self.classes), self.cfg.classifier, self.sample_rate, self.cfg.stft.n_fft)
        self.average_weights()
        self.val_map = MultilabelAveragePrecision(num_labels=len(self.classes), average="macro")
        self.val_f1 = MultilabelF1Score(num_labels=len(self.classes), threshold=self.cfg.weak_labels.threshold)

    @classmethod
    def resolve_config(cls, cfg) -> None:
        if cfg.weak_labels.level not in ("clip", "frame"):
            raise ConfigError(f"weak_labels.level={cfg.weak_labels.level!r} is not one of 'clip', 'frame'")
        if cfg.classifier.pooling not in POOLINGS:
            raise ConfigError(f"classifier.pooling={cfg.classifier.pooling!r} is not one of {', '.join(POOLINGS)}")

    @classmethod
    def train_pools(cls, info: DatasetInfo, cfg: DictConfig) -> dict[str, PoolSpec]:
        return {"mixtures": PoolSpec("train", "mixtures", ["mix"])}

    @property
    def validation_metrics(self) -> tuple[str, ...]:
        return ()

    @property
    def headline_metric(self) -> str:
        return "map"

    def probabilities(self, mix: Tensor) -> tuple[Tensor, Tensor]:
        """(B, T) audio → clip (B, C) and frame (B, C, N) probabilities (outside training: the weight average, when
        ``optim.ema_decay`` keeps one)."""
        return self.evaluated_net(self.front_end(mix).abs())

    def training_losses(self, batch: dict[str, dict[str, Tensor]]) -> dict[str, Tensor]:
        clips = batch["mixtures"]
        clip_p, frame_p = self.probabilities(clips["mix"])
        if self.cfg.weak_labels.level == "clip":
            loss = bce(clip_p, clips["labels"])
        else:
            target = activity_at(clips["activity"], frame_p.shape[-1], self.cfg.stft.hop_length, self.sample_rate)
            loss = bce(frame_p, target)
        return {"loss": loss, f"bce_{self.cfg.weak_labels.level}": loss.detach()}

    # ------------------------------------------------------------------ validation and test: clip-level tagging
    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        clip_p, _ = self.probabilities(batch["mix"])
        self.val_map.update(clip_p, batch["labels"].long())
        self.val_f1.update(clip_p, batch["labels"].long())

    def on_validation_epoch_end(self) -> None:
        self.log("val/map", self.val_map.compute())
        self.log("val/f1", self.val_f1.compute())
        self.val_map.reset()
        self.val_f1.reset()

    def test_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        clip_p, _ = self.probabilities(batch["mix"])
        self.test_rows.append({"id": batch["key"][0], "labels": batch["labels"][0].tolist(),
                               "probabilities": clip_p[0].float().tolist()})

    def on_test_epoch_end(self) -> None:
        rows = self.gather_rows(self.test_rows)
        probs = torch.tensor([r["probabilities"] for r in rows])
        labels = torch.tensor([r["labels"] for r in rows]).long()
        n, threshold = len(self.classes), self.cfg.weak_labels.threshold
        ap = multilabel_average_precision(probs, labels, num_labels=n, average=None)
        f1 = multilabel_f1_score(probs, labels, num_labels=n, threshold=threshold, average=None)
        self.test_results = {
            "flavour": {"map": {"definition": "macro average precision over classes, clip level (torchmetrics "
                                              "MultilabelAveragePrecision)"},
                        "f1": {"definition": f"macro F1 over classes, clip level, threshold {threshold}"}},
            "summary": {},
            "clips": rows,
            "classifier": {"map": ap.mean().item(), "f1": f1.mean().item(), "classes": self.classes,
                           "per_class": {c: {"ap": ap[i].item(), "f1": f1[i].item(), "clips": int(labels[:, i].sum())}
                                         for i, c in enumerate(self.classes)}},
        }
