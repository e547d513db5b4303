"""GLOM: GLO masking, the non-iterative baseline of the NES paper and the start of NES-FT.

1. **Model the observed source.** A GLO model (``nets/glo.py``): a generator G and one latent code per clip of the
   observed pool, learnt together so that G(z_i) reproduces clip i (its log magnitude, or an image's intensities),
   with an L1 loss. Codes are kept on the unit sphere. No mixture and no unobserved sample is used.
2. **Explain each mixture with it.** For a mixture Y, search the code z whose G(z) fits Y best, with the generator
   frozen (Adam on z, L1). G can only draw the observed source, so it fits the parts of Y that are B and misses
   those that are X: in the log domain the L1 treats the X-dominated bins as outliers.
3. **Mask.** B̂ = m·Y with m = min(|G(z)| / |Y|, 1), X̂ = (1 − m)·Y: the estimates sum to the mixture.

The NES paper states the method in one paragraph and its authors' code holds none of it: the search (its steps,
its rate, the L1 in the log domain) is ours, and every choice is a config key. Clips longer than the generator's
span are explained window by window. ``nes.init: glom`` starts NES from these estimates (NES-FT).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from omegaconf import DictConfig
from torch import Tensor

from ..config import ConfigError, ExperimentConfig
from ..data.shards import DatasetInfo
from ..data.streams import PoolSpec
from ..nets.glo import GLOConfig, GLOGenerator
from .base import SeparationModule, read_upstream_checkpoint


@dataclass
class GLOMParams:
    """GLO masking options."""

    glo: GLOConfig = field(default_factory=GLOConfig)
    latent_lr: float = 0.01  # Adam learning rate of the per-clip codes in training (the generator's: optim.lr)
    search_steps: int = 60  # separation: Adam steps on each mixture's code
    search_lr: float = 0.05  # separation: their learning rate


@dataclass
class GLOMConfig(ExperimentConfig):
    glom: GLOMParams = field(default_factory=GLOMParams)


class GLOM(SeparationModule):
    name = "glom"
    Config = GLOMConfig

    def __init__(self, config: dict, dataset: dict):
        super().__init__(config, dataset)
        self.observed, self.unobserved = dataset["observed"], dataset["unobserved"]
        if sorted(self.stems) != sorted([self.observed, self.unobserved]):
            raise ConfigError(f"GLOM needs a dataset of an observed and an unobserved stem; dataset.json has stems "
                              f"{self.stems}, observed={self.observed!r}, unobserved={self.unobserved!r}")
        clips = dataset.get("clips", {}).get("train/observed")
        if not clips:
            raise ConfigError("GLOM keeps one code per clip of train/observed; the dataset has no such pool")
        if self.is_image:
            shape = tuple(dataset["image_shape"])
        else:
            segment = round(self.cfg.data.segment_seconds * self.sample_rate)
            shape = (self.front_end.n_bins, self.front_end.n_frames(segment))
        g = self.cfg.glom
        self.generator = GLOGenerator(g.glo, shape)
        self.codes = torch.nn.Embedding(clips, g.glo.latent_dim)

    @classmethod
    def resolve_config(cls, cfg) -> None:
        if cfg.glom.search_steps < 1:
            raise ConfigError(f"glom.search_steps={cfg.glom.search_steps} must be at least 1")
        if tuple(cfg.data.gain_db) != (0.0, 0.0):
            raise ConfigError(f"data.gain_db={list(cfg.data.gain_db)}: GLOM's code of a clip describes the clip at "
                              "its own level; set data.gain_db=[0.0,0.0]")

    @classmethod
    def train_pools(cls, info: DatasetInfo, cfg: DictConfig) -> dict[str, PoolSpec]:
        return {"observed": PoolSpec("train", "observed", [info.observed], indexed=True)}

    @classmethod
    def forbidden_stems(cls, info: DatasetInfo) -> tuple[str, ...]:
        return (info.unobserved,)

    # ------------------------------------------------------------------ step 1: the GLO model of B
    def training_losses(self, batch: dict[str, dict[str, Tensor]]) -> dict[str, Tensor]:
        clips = batch["observed"]
        target = self.front_end.features(clips[self.observed])
        drawn = self.generator(F.normalize(self.codes(clips["index"]), dim=-1))
        loss = F.l1_loss(drawn.float(), target[..., : drawn.shape[-2], : drawn.shape[-1]])
        return {"loss": loss, "l1_glo": loss.detach()}

    def parameter_groups(self) -> list:
        return [{"params": self.generator.parameters()},
                {"params": self.codes.parameters(), "lr": self.cfg.glom.latent_lr}]

    # ------------------------------------------------------------------ steps 2 and 3: explain Y, mask it
    def masks(self, mix: Tensor, spec: Tensor | None = None) -> Tensor:
        rep = self.front_end(mix) if spec is None else spec
        # a search is an optimisation: it needs autograd even where separation runs under no_grad/inference_mode
        with torch.inference_mode(False), torch.enable_grad(), torch.autocast(mix.device.type, enabled=False):
            target = self.front_end.features(mix, rep).detach().clone().float()
            drawn = self.explain(target)
        magnitude = drawn.exp() - self.cfg.stft.log_eps if not self.is_image else drawn
        mixture = rep.abs().float().clone()
        mask_b = (magnitude.clamp_min(0) / mixture.clamp_min(1e-8)).clamp(max=1.0)
        mask_b = torch.where(mixture > 0, mask_b, torch.ones_like(mask_b))  # empty bins (images' zeros): all B
        masks = [mask_b if stem == self.observed else 1 - mask_b for stem in self.stems]
        return torch.stack(masks, dim=1)

    def explain(self, target: Tensor) -> Tensor:
        """(B, H, W) features → G(ẑ), the generator's best fit of each, window by window along W."""
        width = self.generator.shape[1]
        n = target.shape[-1]
        windows = -(-n // width)
        floor = target.amin().detach()  # pad with the quietest value: silence the generator need not explain
        padded = F.pad(target, (0, windows * width - n), value=float(floor))
        pieces = padded.unflatten(-1, (windows, width)).movedim(-2, 1).flatten(0, 1)  # (B·windows, H, width)
        drawn = self.search(pieces)
        return drawn.unflatten(0, (target.shape[0], windows)).movedim(1, -2).flatten(-2)[..., :n]

    def search(self, target: Tensor) -> Tensor:
        """(B, H, W) targets of the generator's size → G(ẑ) with ẑ = argmin_z ‖G(z) − target‖₁ (Adam, from the
        mean code), the generator frozen and in eval mode."""
        g = self.cfg.glom
        was_training = self.generator.training
        self.generator.eval()
        start = F.normalize(F.normalize(self.codes.weight.detach(), dim=-1).mean(0), dim=-1)  # mean code
        z = start.expand(target.shape[0], -1).clone().requires_grad_(True)
        opt = torch.optim.Adam([z], lr=g.search_lr)
        for _ in range(g.search_steps):
            # one loss for the batch: each code only moves its own term
            loss = (self.generator(F.normalize(z, dim=-1)) - target).abs().mean(dim=(-2, -1)).sum()
            (z.grad,) = torch.autograd.grad(loss, [z])
            opt.step()
        with torch.no_grad():
            drawn = self.generator(F.normalize(z, dim=-1))
        self.generator.train(was_training)
        return drawn

    @torch.inference_mode()
    def estimate_unobserved(self, mix: Tensor) -> Tensor:
        """X̂ = (1 − m)·Y for (B, T) mixtures (or images): what NES-FT starts from."""
        rep = self.front_end(mix)
        mask = self.masks(mix, rep)[:, self.stems.index(self.unobserved)]
        return self.front_end.apply_masks(mask.unsqueeze(1), mix, rep)[:, 0]


def load_glom(path: str | Path, dataset: dict,
              upstream_config: str = "experiments/glom/demo_speech_noise.yaml") -> GLOM:
    """The GLOM model of a `glom` run's checkpoint, for NES-FT; an error if it is another method's, was trained on
    other stems, or is missing (saying to train ``upstream_config``)."""
    ckpt, config, trained_on = read_upstream_checkpoint(path, "glom", "nes.glom_checkpoint",
                                                        upstream_config)
    if (trained_on["observed"], trained_on["unobserved"]) != (dataset["observed"], dataset["unobserved"]):
        raise ConfigError(f"{path}: GLOM was trained with observed={trained_on['observed']!r}, this dataset has "
                          f"observed={dataset['observed']!r}")
    with torch.inference_mode(False):  # loaded during a test, its weights must still serve the search's autograd
        model = GLOM(config, trained_on)
        model.load_state_dict(ckpt["state_dict"])
    return model.requires_grad_(False).eval()
