"""WeakSep: learning to separate sound events from weak labels (Pishdadian, Wichern & Le Roux, TASLP 2020).

No isolated source is ever seen in training, only which classes a mixture holds (clip-level labels) or when each is
active (frame-level labels). The separator gives one mask per class; a sound-event classifier, trained first on the
same weak labels (``lightning-sep fit experiments/weaksep/classifier_*.yaml``) and then frozen, assesses each output:

- **classification loss**: output k of a mixture that holds class k must be classified as class k and as none of
  the other classes (binary cross-entropy against the one-hot target of k). With clip-level labels this is asked of
  the clip probability; with frame-level labels of the frame probabilities pooled over the frames where class k is
  active (``weaksep.frame_verdict: pooled``), or of each of those frames (``frames``);
- **silence loss**: an output whose class is absent (from the clip, or from the frame with frame-level labels)
  must be silent: the masked magnitude sent to absent classes, as a share of the mixture's;
- **mixture consistency**: the outputs sum to the mixture. With ``weaksep.mask: softmax`` the masks sum to one in
  every bin, so the outputs add up to the mixture by construction; with ``sigmoid`` masks it is a loss term instead.

A stem that is no class (demo-urban's unlabelled background) either gets an output of its own
(``weaksep.separate_unlabelled``), which the classifier must hear as none of the classes (**unlabelled loss**), or
is shared among the class outputs.

The authors published no code: every choice (assessing magnitudes rather than re-analysed waveforms, the silence
term's form, the weights) is ours and is a config key. The classifier's weights are loaded from its checkpoint,
kept frozen and in eval mode (its batch-norm statistics do not move), and stored in this run's checkpoints too.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from omegaconf import DictConfig
from torch import Tensor

from ..config import ConfigError, ExperimentConfig
from ..data.shards import DatasetInfo
from ..data.streams import PoolSpec
from ..nets.classifier import bce, pool
from ..nets.unet import MaskUNet
from .assessor import classification_loss, frame_verdicts, load_classifier
from .base import SeparationModule
from .classifier import activity_at


@dataclass
class WeakSepWeights:
    """Weight of each loss term."""

    classification: float = 1.0  # the frozen classifier's verdict on each output of a present class
    silence: float = 1.0  # outputs of absent classes must be silent
    consistency: float = 1.0  # with sigmoid masks only: L1 between the sum of the outputs and the mixture (magnitudes)
    unlabelled: float = 1.0  # with separate_unlabelled only: the outputs of unlabelled stems must hold no class


@dataclass
class WeakSepParams:
    """WeakSep options."""

    classifier_config: str = "experiments/weaksep/classifier_demo_urban.yaml"  # the frozen assessor: the `classifier`
    #   experiment whose run (under this run.root, on this data.root) provides the checkpoint
    classifier_checkpoint: str | None = None  # or that checkpoint given directly (None: found from classifier_config)
    labels: str = "clip"  # clip: clip-level labels; frame: frame-level activity (from the clips' events)
    frame_verdict: str = "pooled"  # labels: frame only. pooled: output k's frame probabilities pooled (as the
    #   classifier pools) over the frames where class k is active; frames: each of those frames on its own
    mask: str = "softmax"  # softmax: masks sum to one (mixture consistency exact); sigmoid: free masks + loss term
    separate_unlabelled: bool = False  # one more output per stem that is no class (e.g. background), which the
    #   classifier must hear as none of the classes; false: that stem is shared among the class outputs. On
    #   demo-urban, clip labels, it hurt every class: class mean SI-SDRi -2.26 dB with it, 1.14 dB without
    weights: WeakSepWeights = field(default_factory=WeakSepWeights)


@dataclass
class WeakSepConfig(ExperimentConfig):
    weaksep: WeakSepParams = field(default_factory=WeakSepParams)


class WeakSep(SeparationModule):
    name = "weaksep"
    Config = WeakSepConfig

    def __init__(self, config: dict, dataset: dict):
        classes = list(dataset.get("classes") or [])
        if not classes or not set(classes) <= set(dataset["stems"]):
            raise ConfigError(f"weaksep needs a dataset with one stem per class; dataset.json has stems "
                              f"{dataset['stems']}, classes {classes}")
        # one output per class, and with separate_unlabelled one per stem that is no class (demo-urban's background);
        # without it such a stem is shared among the class outputs, which still sum to the mixture
        separate = config.get("weaksep", {}).get("separate_unlabelled", False)
        unlabelled = [s for s in dataset["stems"] if s not in classes] if separate else []
        super().__init__(config, {**dataset, "stems": classes + unlabelled})
        self.classes: list[str] = classes
        w = self.cfg.weaksep
        self.net = MaskUNet(len(self.stems), self.cfg.net, activation=w.mask)
        self.average_weights()
        self.assessor = load_classifier(w.classifier_checkpoint, self.classes, self.sample_rate, self.cfg.stft.n_fft,
                                        w.classifier_config)

    @classmethod
    def resolve_config(cls, cfg) -> None:
        w = cfg.weaksep
        if w.labels not in ("clip", "frame"):
            raise ConfigError(f"weaksep.labels={w.labels!r} is not one of 'clip', 'frame'")
        if w.frame_verdict not in ("pooled", "frames"):
            raise ConfigError(f"weaksep.frame_verdict={w.frame_verdict!r} is not one of 'pooled', 'frames'")
        if w.mask not in ("softmax", "sigmoid"):
            raise ConfigError(f"weaksep.mask={w.mask!r} is not one of 'softmax', 'sigmoid'")

    @classmethod
    def train_pools(cls, info: DatasetInfo, cfg: DictConfig) -> dict[str, PoolSpec]:
        return {"mixtures": PoolSpec("train", "mixtures", ["mix"])}

    @classmethod
    def forbidden_stems(cls, info: DatasetInfo) -> tuple[str, ...]:
        return tuple(info.stems)  # no isolated source, ever

    # ------------------------------------------------------------------ the losses
    def training_losses(self, batch: dict[str, dict[str, Tensor]]) -> dict[str, Tensor]:
        clips, w = batch["mixtures"], self.cfg.weaksep
        spec = self.front_end(clips["mix"])
        mixture = spec.abs()
        masks = self.masks(clips["mix"], spec)  # (B, K + U, F, N): one per class, then one per unlabelled stem
        everything = masks * mixture.unsqueeze(1)
        k = len(self.classes)
        outputs = everything[:, :k]
        n_frames = outputs.shape[-1]
        all_p = frame_verdicts(self.assessor, everything)  # (mixture, output, class, frame)
        frame_p = all_p[:, :k]
        pooling = self.assessor.cfg.pooling
        if w.labels == "clip":
            present = clips["labels"]  # (B, K)
            classification = classification_loss(frame_p, present, pooling)
            silent = (1 - present)[..., None, None]  # (B, K, 1, 1): the whole output
        else:
            active = activity_at(clips["activity"], n_frames, self.cfg.stft.hop_length, self.sample_rate)  # (B,K,N)
            if w.frame_verdict == "pooled":  # output k is judged where class k sounds
                classification = classification_loss(frame_p, active.amax(-1), pooling, active[:, :, None, :])
            else:
                one_hot = torch.eye(len(self.classes), device=outputs.device)[None, :, :, None]
                wrong = bce(frame_p, one_hot.expand_as(frame_p), reduction="none").mean(2)  # (B, K, N)
                classification = (wrong * active).sum() / active.sum().clamp_min(1)
            silent = (1 - active)[:, :, None, :]  # (B, K, 1, N): the frames where the class is inactive
        # the share of the mixture sent to absent classes: summed over them, so a lone event cannot leak a fifth of
        # itself into each of five absent outputs at the price of one fifth
        silence = (outputs * silent).sum() / (mixture.unsqueeze(1) * silent.amax(1, keepdim=True)).sum().clamp_min(1e-8)
        losses = {"classification": classification, "silence": silence}
        if len(self.stems) > k:  # an unlabelled output must be heard as none of the classes, over the whole clip
            losses["unlabelled"] = bce(pool(all_p[:, k:], pooling), torch.zeros_like(all_p[:, k:, :, 0]))
        if w.mask == "sigmoid":
            losses["consistency"] = F.l1_loss(everything.sum(1), mixture) / mixture.mean().clamp_min(1e-8)
        losses["loss"] = sum(w.weights[name] * value for name, value in losses.items())
        return losses

    def test_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        super().test_step(batch, batch_idx)
        meta = batch["meta"][0]
        present = [c for c in self.classes if c in meta.get("labels", [])]
        self.test_rows[-1].update(present=present, n_events=meta.get("n_events", len(present)))

    def extra_results(self, folder) -> dict[str, Any]:
        return {"labels": self.cfg.weaksep.labels, "classifier_checkpoint": self.cfg.weaksep.classifier_checkpoint,
                "by_events": by_events(self.test_results["clips"])}


def by_events(rows: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """Mean SI-SDRi of the present classes' outputs, by the number of events in the clip (the overlap)."""
    out: dict[str, list[float]] = {}
    for row in rows:
        for c in row.get("present", []):
            value = row[c].get("si_sdri")
            if value is not None and value == value:  # NaN: silent reference
                out.setdefault(str(row["n_events"]), []).append(value)
    return {n: {"si_sdri": sum(v) / len(v), "outputs": len(v)} for n, v in sorted(out.items())}
