"""The frozen sound-event classifier as an assessor of separated outputs (WeakSep's loss, and the bound that knows
all WeakSep knows).

The classifier is a `classifier` run's network, loaded from its checkpoint with every weight frozen. It hears
each output on its own and says which classes it holds; output k of a mixture that holds class k is right when the
classifier says class k and none of the others.
"""
from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor

from ..config import ConfigError
from ..nets.classifier import ClassifierConfig, SoundEventClassifier, bce, pool
from .base import read_upstream_checkpoint

EXAMPLE_CONFIG = "experiments/weaksep/classifier_demo_urban.yaml"


def load_classifier(path: str | Path, classes: list[str], sample_rate: int, n_fft: int,
                    upstream_config: str = EXAMPLE_CONFIG, key: str = "weaksep.classifier_checkpoint"
                    ) -> SoundEventClassifier:
    """The classifier of a `classifier` run's checkpoint (config key ``key``), frozen; an error if it was trained
    on other classes or with another STFT, or if it is missing (saying to train ``upstream_config``)."""
    ckpt, config, dataset = read_upstream_checkpoint(path, "classifier", key, upstream_config)
    if list(dataset.get("classes", [])) != classes:
        raise ConfigError(f"{path}: the classifier knows classes {dataset.get('classes')}, this dataset {classes}")
    if config["stft"]["n_fft"] != n_fft or dataset.get("sample_rate") != sample_rate:
        raise ConfigError(f"{path}: the classifier was trained at {dataset.get('sample_rate')} Hz with n_fft "
                          f"{config['stft']['n_fft']}; this run uses {sample_rate} Hz and n_fft {n_fft}: "
                          "use the same stft section and dataset")
    net = FrozenClassifier(len(classes), ClassifierConfig(**config["classifier"]), sample_rate, n_fft)
    net.load_state_dict(classifier_weights(ckpt["state_dict"]))
    return net.requires_grad_(False).eval()


class FrozenClassifier(SoundEventClassifier):
    """A classifier that stays in eval mode when the module holding it trains: its batch-norm statistics must not
    follow the separator's outputs."""

    def train(self, mode: bool = True):
        return super().train(False)


def classifier_weights(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """The classifier's weights in a `classifier` run's state dict: its weight average when it kept one."""
    prefix = "net_average.module." if any(k.startswith("net_average.module.") for k in state) else "net."
    return {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}


def frame_verdicts(assessor: SoundEventClassifier, outputs: Tensor) -> Tensor:
    """(B, O, F, N) magnitudes (output k < K meant for class k) → (B, O, K, N) frame probabilities of the K classes:
    (mixture, output, class, frame)."""
    b, o, n_freq, n_frames = outputs.shape
    _, frame_p = assessor(outputs.reshape(b * o, n_freq, n_frames))
    return frame_p.view(b, o, frame_p.shape[1], -1)


def classification_loss(frame_p: Tensor, present: Tensor, pooling: str, where: Tensor | None = None) -> Tensor:
    """Binary cross-entropy of each present class's output against "class k and no other", on the frame
    probabilities pooled (as the classifier pools) over the whole clip, or over ``where`` (B, K, 1, N): the frames
    output k is judged on. Mean over the present outputs; ``present`` (B, K) is 0 or 1."""
    b, k = present.shape
    verdict = pool(frame_p, pooling, where)  # (B, K, K)
    one_hot = torch.eye(k, device=frame_p.device).expand(b, k, k)
    wrong = bce(verdict, one_hot, reduction="none").mean(-1)  # (B, K)
    return (wrong * present).sum() / present.sum().clamp_min(1)
