"""MaskNet: semi-supervised singing voice separation (Michelashvili, Benaim & Wolf, ICASSP 2019).

Two unmatched training sets: mixtures y and instrumentals c (the observed stem, here ``accompaniment``); the
vocals are never heard alone. One soft-mask network g keeps the instrumental part of a spectrogram,
g(x) = mask(x) ⊙ x, so v̂ = y − g(y) is the vocal estimate. g is trained to be

- an identity on instrumentals:            R1 = ‖g(c) − c‖₁
- idempotent:                              R2 = ‖g(g(y)) − g(y)‖₁
- right on synthetic mixtures ȳ = v̂ + c:   R3 = ‖g(ȳ) − c‖₁,  R4 = ‖(ȳ − g(ȳ)) − v̂‖₁
- and indistinguishable from real data:    GAN_C (d_C: real c vs g(y)),  GAN_A (d_A: real y vs ȳ),

with least-squares GAN losses and gradients flowing through v̂ (but see ``fixed_synthetic_targets`` below). Each
batch takes one discriminator step, then one generator step (the authors' order), each with its own Adam optimizer
and schedule. A term with weight 0 is left out (that is how the ablations run); with both GAN weights 0 there are
no discriminators at all.

Only the discriminators know what vocals are, and at the identity g(y) = y every L1 term is zero: a g that
learns faster than its critics settles there for good. So the discriminators may first be trained alone, for
``masknet.discriminator_warmup`` batches, on the identity's outputs (to d_C a mixture is no instrumental, to d_A
an instrumental is no mixture: both learn to spot vocals); they may learn faster (``discriminator_lr_scale``), see
level-normalized inputs (``discriminator_level``: a mixture is louder than an instrumental, which says nothing
about vocals) and each bin's frequency (``discriminator.frequency_input``).

Our choices where the authors' code is silent or inconsistent:

- the L1 terms and the discriminators see compressed magnitudes |S|^p (``masknet.compression``, authors 0.3);
  the authors' per-chunk rescaling is left out for the L1 terms (the recipes set levels) and is the
  discriminators' ``discriminator_level: normalized``;
- ``masknet.mask_domain: compressed`` multiplies |S|^p by the mask as the authors do, i.e. |S| by mask^(1/p);
- synthetic mixtures are sums of complex spectra (= sums of waveforms), not of compressed magnitudes: NES
  lost most of its quality when magnitudes were summed instead of waveforms. So R3 (instrumental magnitudes) and
  R4 (vocal magnitudes) differ wherever phases cancel. In the authors' code they do not: magnitudes are summed and
  clipped to [0, 1], so R4 = ‖(ȳ − g(ȳ)) − v̂‖₁ = ‖c − g(ȳ)‖₁ = R3 wherever the clip does not bind, and their
  "w/o R4" run halves the weight of one synthetic-mixture term. ``masknet.r4_domain: compressed`` takes R4's
  difference on compressed magnitudes as they do, ‖(|ȳ|^p − |g(ȳ)|^p) − |v̂|^p‖₁: with the compressed mask m that is
  ‖(1 − m)|ȳ|^p − |v̂|^p‖₁, the same split of ȳ as R3's m|ȳ|^p; ``spectrum`` takes it on spectra,
  ‖|ȳ − g(ȳ)|^p − |v̂|^p‖₁, where 1 − m^(1/p) raised to p is steep near m = 1 and R4 weighs nearly silent vocals most;
- ``masknet.fixed_synthetic_targets`` lets R3 and R4 take ȳ and v̂ as fixed data, so that they only teach g to
  take synthetic mixtures apart. With gradients through v̂, as the authors do, both terms are also zero at v̂ = 0
  and pull g back towards the identity; GAN_A's gradients go through ȳ either way;
- how the mask is used at inference (exponent, bilateral post-filter, phase) is the ``masknet.inference``
  section, applied in validation, test and ``separate`` alike.

``trainer.max_steps`` counts batches (generator steps), as for every other method; Lightning's own step counter
counts both optimizers' steps.
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
from ..nets.discriminator import (
    DiscriminatorConfig,
    MultiScaleDiscriminator,
    lsgan_discriminator_loss,
    lsgan_generator_loss,
)
from ..nets.unet import MaskUNet
from .base import SeparationModule


@dataclass
class LossWeights:
    """Weight of each loss term in the generator's loss (authors: 20 for R1–R4, 10 per GAN; 0 leaves it out)."""

    r1: float = 20.0  # identity on instrumentals ‖g(c) − c‖₁
    r2: float = 20.0  # idempotence ‖g(g(y)) − g(y)‖₁
    r3: float = 20.0  # instrumental of a synthetic mixture ‖g(ȳ) − c‖₁
    r4: float = 20.0  # vocals of a synthetic mixture ‖(ȳ − g(ȳ)) − v̂‖₁
    gan_a: float = 10.0  # d_A: real mixtures y vs synthetic mixtures ȳ
    gan_c: float = 10.0  # d_C: real instrumentals c vs g(y)


@dataclass
class InferenceParams:
    """How the trained mask separates (validation, test and `separate`). Authors, undocumented: their instrumental
    mask raised to the power 9 and bilateral-filtered, applied to the linear magnitude with the mixture's phase.
    Their mask was trained on |S|^0.3, so their 9 is ``instrumental_exponent: 2.7`` here (9 × 0.3: g's mask is
    already brought to the linear magnitude by ``mask_domain``)."""

    instrumental_exponent: float = 1.0  # raise g's instrumental mask to this power first (> 1 gives the vocals more)
    mask_exponent: float = 1.0  # raise the vocal mask to this power (> 1 removes weak instrumental residues)
    post_filter: str = "none"  # none | bilateral: smooth the vocal mask, keeping its edges
    bilateral_size: int = 5  # bilateral filter: window (bins × frames), odd
    bilateral_sigma_space: float = 1.5  # bilateral filter: spatial spread, in bins/frames
    bilateral_sigma_range: float = 0.2  # bilateral filter: how different a mask value may be and still count
    phase: str = "mixture"  # mixture: masked magnitude with the mixture's phase; griffin_lim: phase re-estimated
    griffin_lim_iterations: int = 32  # Griffin-Lim iterations (phase: griffin_lim), started from the mixture's phase


@dataclass
class MaskNetParams:
    """MaskNet options (defaults: the authors' values where they state them)."""

    weights: LossWeights = field(default_factory=LossWeights)
    compression: float = 0.3  # the L1 terms and the discriminators see |S|^compression (authors: 0.3)
    mask_domain: str = "compressed"  # compressed: the mask multiplies |S|^compression (authors); linear: |S|
    r4_domain: str = "spectrum"  # where R4 takes g(ȳ) from ȳ: spectrum: |ȳ − g(ȳ)|^p, the vocal part as a sound;
    #   compressed: |ȳ|^p − |g(ȳ)|^p, on compressed magnitudes as the authors' code does
    discriminator: DiscriminatorConfig = field(default_factory=DiscriminatorConfig)
    discriminator_level: str = "absolute"  # absolute: d_A and d_C see |S|^p as it is; normalized: each input
    #   divided by its mean first (the authors rescale every chunk), so a level difference is no evidence
    discriminator_lr_scale: float = 1.0  # the discriminators' lr is optim.lr times this (two time-scale updates)
    discriminator_warmup: int = 0  # batches before the generator's first step that train only the discriminators,
    #   on what the identity g would give (d_C: c vs y; d_A: y vs c), so that their first verdicts on g already
    #   tell vocals from instruments (on top of trainer.max_steps; 0: none)
    clip_norm: float | None = None  # clip each network's gradient norm to this (None: no clipping)
    fixed_synthetic_targets: bool = False  # R3 and R4 take ȳ and v̂ as data, without gradients through v̂ (GAN_A
    #   still sends its gradients through ȳ); the authors let gradients flow, which also rewards v̂ = 0
    synthetic_rampup: int = 0  # generator steps over which R3 and R4's weights rise linearly from 0 to their values:
    #   early vocal estimates are poor, and R3 and R4 teach g to reproduce them (0: full weight from the start)
    inference: InferenceParams = field(default_factory=InferenceParams)


@dataclass
class MaskNetConfig(ExperimentConfig):
    masknet: MaskNetParams = field(default_factory=MaskNetParams)


GAN_TERMS = ("gan_a", "gan_c")


class MaskNet(SeparationModule):
    name = "masknet"
    Config = MaskNetConfig
    ddp_find_unused_parameters = True  # the discriminator step leaves the generator out, and the reverse
    test_time_keys = ("eval", "masknet.inference")  # a trained mask can be tested with other inference settings

    def __init__(self, config: dict, dataset: dict):
        super().__init__(config, dataset)
        if self.is_image:
            raise ConfigError("masknet separates audio; this dataset holds images (use nes or supervised)")
        self.observed, self.unobserved = dataset["observed"], dataset["unobserved"]
        if self.observed not in self.stems or self.unobserved not in self.stems or len(self.stems) != 2:
            raise ConfigError(
                f"masknet needs a two-stem dataset with an observed (instrumental) and an unobserved (vocal) stem; "
                f"dataset.json names observed={self.observed!r}, unobserved={self.unobserved!r}, stems {self.stems}"
            )
        self.automatic_optimization = False
        self.observed_index = self.stems.index(self.observed)
        self.net = MaskUNet(len(self.stems), self.cfg.net)  # g: the same generator as the supervised bound's
        self.average_weights()
        w, d = self.cfg.masknet.weights, self.cfg.masknet.discriminator
        self.d_a = MultiScaleDiscriminator(d) if w.gan_a else None
        self.d_c = MultiScaleDiscriminator(d) if w.gan_c else None
        self.mask_power = 1 / self.cfg.masknet.compression if self.cfg.masknet.mask_domain == "compressed" else 1.0

    @classmethod
    def resolve_config(cls, cfg) -> None:
        m = cfg.masknet
        if not 0 < m.compression <= 1:
            raise ConfigError(f"masknet.compression={m.compression} must be in (0, 1]")
        choices = {"masknet.mask_domain": (m.mask_domain, ("compressed", "linear")),
                   "masknet.r4_domain": (m.r4_domain, ("spectrum", "compressed")),
                   "masknet.inference.post_filter": (m.inference.post_filter, ("none", "bilateral")),
                   "masknet.inference.phase": (m.inference.phase, ("mixture", "griffin_lim")),
                   "masknet.discriminator_level": (m.discriminator_level, ("absolute", "normalized"))}
        for key, (value, allowed) in choices.items():
            if value not in allowed:
                raise ConfigError(f"{key}={value!r} is not one of {', '.join(map(repr, allowed))}")
        negative = [k for k, v in m.weights.items() if v < 0]
        if negative:
            raise ConfigError(f"masknet.weights.{negative[0]} must be >= 0 (0 leaves the term out)")
        if m.discriminator_lr_scale <= 0 or m.discriminator_warmup < 0 or m.synthetic_rampup < 0:
            raise ConfigError("masknet.discriminator_lr_scale must be > 0, masknet.discriminator_warmup and "
                              "masknet.synthetic_rampup >= 0")
        if m.inference.bilateral_size % 2 == 0:
            raise ConfigError(f"masknet.inference.bilateral_size={m.inference.bilateral_size} must be odd")
        if cfg.trainer.gradient_clip_val is not None:
            raise ConfigError("masknet steps its optimizers itself: set masknet.clip_norm instead of "
                              "trainer.gradient_clip_val")

    @classmethod
    def optimizer_steps_per_batch(cls, cfg) -> int:
        return 2 if any(cfg.masknet.weights[t] for t in GAN_TERMS) else 1

    @classmethod
    def optimizer_steps(cls, cfg) -> int:
        warmup = cfg.masknet.discriminator_warmup if cls.optimizer_steps_per_batch(cfg) == 2 else 0
        return super().optimizer_steps(cfg) + warmup  # one discriminator step per warm-up batch

    @classmethod
    def train_pools(cls, info: DatasetInfo, cfg: DictConfig) -> dict[str, PoolSpec]:
        return {"mixtures": PoolSpec("train", "mixtures", ["mix"]),
                "instrumentals": PoolSpec("train", "observed", [info.observed])}

    @classmethod
    def forbidden_stems(cls, info: DatasetInfo) -> tuple[str, ...]:
        return (info.unobserved,)

    # ------------------------------------------------------------------ the generator g and what the losses see
    def g(self, spec: Tensor) -> Tensor:
        """g(x) = mask(x) ⊙ x on complex spectra (B, F, N): the instrumental part of x."""
        mask = self.net(self.front_end.log_magnitude(None, spec))[:, self.observed_index]
        return mask**self.mask_power * spec

    def compressed(self, spec: Tensor) -> Tensor:
        """|S|^p, smooth at 0 (the gradient of |S|^0.3 is infinite there)."""
        return (spec.real**2 + spec.imag**2 + 1e-10) ** (self.cfg.masknet.compression / 2)

    def l1(self, a: Tensor, b: Tensor) -> Tensor:
        return F.l1_loss(self.compressed(a), self.compressed(b))

    def r4(self, y_bar: Tensor, g_y_bar: Tensor, v_hat: Tensor) -> Tensor:
        """R4 = ‖(ȳ − g(ȳ)) − v̂‖₁, the difference taken on spectra or on compressed magnitudes (``r4_domain``)."""
        if self.cfg.masknet.r4_domain == "spectrum":
            return self.l1(y_bar - g_y_bar, v_hat)
        return F.l1_loss(self.compressed(y_bar) - self.compressed(g_y_bar), self.compressed(v_hat))

    # ------------------------------------------------------------------ training: one D step, then one G step
    def training_step(self, batch: dict[str, dict[str, Tensor]], batch_idx: int) -> None:
        y = self.front_end(batch["mixtures"]["mix"])
        c = self.front_end(batch["instrumentals"][self.observed])
        optimizers = self.optimizers()
        opt_g, opt_d = optimizers if isinstance(optimizers, list) else (optimizers, None)
        if opt_d is not None and self.trainer.global_step < self.cfg.masknet.discriminator_warmup:
            # the discriminators first learn what the identity would give: g(y) = y, no instrumental, and
            # ȳ = c, no mixture; that is, to tell mixtures (vocals) from instrumentals
            losses = self.discriminator_step(opt_d, y, c, g_y=y, y_bar=c)
            self.step_schedulers(discriminator_only=True)
            self.log_dict({f"train/{k}": v.detach() for k, v in losses.items()})
            return
        g_y = self.g(y)
        v_hat = y - g_y  # the vocal estimate; gradients flow through it in the generator step (R3 and R4: unless
        #                  masknet.fixed_synthetic_targets)
        y_bar = v_hat + c  # synthetic mixture of our vocals with an unrelated instrumental
        losses = self.discriminator_step(opt_d, y, c, g_y.detach(), y_bar.detach()) if opt_d else {}
        losses |= self.generator_step(opt_g, c, g_y, v_hat, y_bar)
        self.step_schedulers()
        self.log_dict({f"train/{k}": v.detach() for k, v in losses.items()})
        self.log("loss", losses["loss_g"].detach(), prog_bar=True, logger=False)

    def step_schedulers(self, discriminator_only: bool = False) -> None:
        schedulers = self.lr_schedulers()
        schedulers = schedulers if isinstance(schedulers, list) else [schedulers] if schedulers else []
        for scheduler in schedulers[1:] if discriminator_only else schedulers:  # (generator, discriminators)
            scheduler.step()

    def d_input(self, spec: Tensor) -> Tensor:
        """What the discriminators see: |S|^p, divided by its mean per example with discriminator_level: normalized."""
        z = self.compressed(spec)
        return z / z.mean(dim=(-2, -1), keepdim=True) if self.cfg.masknet.discriminator_level == "normalized" else z

    def discriminator_step(self, opt, y: Tensor, c: Tensor, g_y: Tensor, y_bar: Tensor) -> dict[str, Tensor]:
        w = self.cfg.masknet.weights
        losses = {}
        if self.d_c is not None:
            losses["d_c"] = lsgan_discriminator_loss(self.d_c, self.d_input(c), self.d_input(g_y))
        if self.d_a is not None:
            losses["d_a"] = lsgan_discriminator_loss(self.d_a, self.d_input(y), self.d_input(y_bar))
        losses["loss_d"] = w.gan_c * losses.get("d_c", 0) + w.gan_a * losses.get("d_a", 0)
        self.update(opt, losses["loss_d"], losses)
        return losses

    def generator_step(self, opt, c: Tensor, g_y: Tensor, v_hat: Tensor, y_bar: Tensor) -> dict[str, Tensor]:
        losses = self.generator_losses(c, g_y, v_hat, y_bar)
        self.update(opt, losses["loss_g"], losses)
        return losses

    def generator_losses(self, c: Tensor, g_y: Tensor, v_hat: Tensor, y_bar: Tensor) -> dict[str, Tensor]:
        """R1–R4, GAN_A and GAN_C of g, and their weighted sum ``loss_g``."""
        w = self.cfg.masknet.weights
        fixed = self.cfg.masknet.fixed_synthetic_targets
        synthetic, v_hat = (y_bar.detach(), v_hat.detach()) if fixed else (y_bar, v_hat)  # what R3 and R4 see
        # the three further passes of g share one batch
        inputs = {"c": c if w.r1 else None, "g_y": g_y if w.r2 else None, "y_bar": synthetic if w.r3 or w.r4 else None}
        used = [k for k, v in inputs.items() if v is not None]
        passes = self.g(torch.cat([inputs[k] for k in used])).chunk(len(used)) if used else ()
        out = dict(zip(used, passes, strict=True))
        losses: dict[str, Tensor] = {}
        if w.r1:
            losses["r1"] = self.l1(out["c"], c)
        if w.r2:
            losses["r2"] = self.l1(out["g_y"], g_y)
        if w.r3:
            losses["r3"] = self.l1(out["y_bar"], c)
        if w.r4:
            losses["r4"] = self.r4(synthetic, out["y_bar"], v_hat)
        if self.d_c is not None:
            losses["gan_c"] = lsgan_generator_loss(self.d_c, self.d_input(g_y))
        if self.d_a is not None:
            losses["gan_a"] = lsgan_generator_loss(self.d_a, self.d_input(y_bar))
        ramp = self.synthetic_ramp()
        losses["loss_g"] = sum(w[k] * (ramp if k in ("r3", "r4") else 1.0) * v for k, v in losses.items())
        return losses

    def synthetic_ramp(self) -> float:
        """The share of their weights R3 and R4 have at this generator step (``masknet.synthetic_rampup``)."""
        rampup = self.cfg.masknet.synthetic_rampup
        if not rampup:
            return 1.0
        per_batch = self.optimizer_steps_per_batch(self.cfg)  # Lightning's step counts both optimizers' steps
        warmup = self.cfg.masknet.discriminator_warmup if per_batch == 2 else 0
        return min(1.0, max(0, self.trainer.global_step - warmup) // per_batch / rampup)

    def update(self, opt, loss: Tensor, terms: dict[str, Tensor]) -> None:
        """One step of ``opt`` on ``loss``, only its own network's weights taking part."""
        self.check_finite(terms)
        self.toggle_optimizer(opt)
        opt.zero_grad(set_to_none=True)
        self.manual_backward(loss)
        if self.cfg.masknet.clip_norm is not None:
            self.clip_gradients(opt, gradient_clip_val=self.cfg.masknet.clip_norm, gradient_clip_algorithm="norm")
        opt.step()
        self.untoggle_optimizer(opt)

    def configure_optimizers(self):
        # both networks: Adam with the optim section's settings (authors: lr 1e-4, betas 0.5/0.999, decay 1e-4);
        # the discriminators' lr scaled by masknet.discriminator_lr_scale
        discriminators = [d for d in (self.d_a, self.d_c) if d is not None]
        groups = [list(self.net.parameters())]
        if discriminators:
            groups.append([p for d in discriminators for p in d.parameters()])
        pairs = [self.adam_with_schedule(groups[0])]
        if discriminators:  # the discriminators' schedule spans their warm-up too
            m = self.cfg.masknet
            pairs.append(self.adam_with_schedule(groups[1], m.discriminator_lr_scale, m.discriminator_warmup))
        optimizers = [opt for opt, _ in pairs]
        schedulers = [sched for _, sched in pairs if sched is not None]
        return (optimizers, schedulers) if schedulers else optimizers

    # ------------------------------------------------------------------ separation
    def masks(self, mix: Tensor, spec: Tensor | None = None) -> Tensor:
        """The inference masks (``masknet.inference``): vocals and instrumental, summing to one."""
        i = self.cfg.masknet.inference
        keep = self.evaluated_net(self.front_end.features(mix, spec))[:, self.observed_index]
        vocals = 1 - keep ** (self.mask_power * i.instrumental_exponent)
        if i.post_filter == "bilateral":
            vocals = bilateral_filter(vocals, i.bilateral_size, i.bilateral_sigma_space, i.bilateral_sigma_range)
        vocals = vocals**i.mask_exponent
        pair = {self.unobserved: vocals, self.observed: 1 - vocals}
        return torch.stack([pair[s] for s in self.stems], dim=1)

    @torch.no_grad()
    def separate(self, mix: Tensor) -> Tensor:
        spec = self.front_end(mix)
        masks = self.masks(mix, spec)
        i = self.cfg.masknet.inference
        if i.phase == "mixture":
            return self.front_end.apply_masks(masks, mix, spec)
        spec = spec.unsqueeze(1)
        return self.front_end.griffin_lim(masks * spec.abs(), spec, mix.shape[-1], i.griffin_lim_iterations)

    def extra_results(self, folder) -> dict[str, Any]:
        """The inference settings, and the paper's Table 1 layout: median SDR and SIR of the vocals over tracks."""
        out: dict[str, Any] = {"inference": dict(self.cfg.masknet.inference)}
        vocals = (self.test_results or {}).get("summary", {}).get(self.unobserved, {})
        if "sdr" in vocals:
            e = self.cfg.eval
            frames = f"framewise, {e.window_s:g} s windows, {e.hop_s:g} s hop" if e.framewise else "whole clips"
            out["paper_table"] = {
                "title": f"Table 1 layout: median over tracks of the {self.unobserved} (BSS Eval v4, {frames}, dB):",
                "columns": ["Approach", "SDR", "SIR"],
                "rows": [["MaskNet", vocals["sdr"]["median"], vocals["sir"]["median"]]],
            }
        return out


def bilateral_filter(mask: Tensor, size: int, sigma_space: float, sigma_range: float) -> Tensor:
    """Edge-preserving smoothing of (B, F, N) masks: each value becomes a mean of its ``size``×``size``
    neighbours weighted by their distance and by how close their values are to it."""
    b, n_freq, n_frames = mask.shape
    pad = size // 2
    patches = F.unfold(F.pad(mask[:, None].float(), (pad, pad, pad, pad), mode="replicate"), size)
    patches = patches.view(b, size * size, n_freq, n_frames)
    offsets = torch.arange(size, device=mask.device, dtype=torch.float32) - pad
    distance2 = (offsets[:, None] ** 2 + offsets[None, :] ** 2).flatten()
    weights = torch.exp(-distance2 / (2 * sigma_space**2)).view(1, -1, 1, 1)
    weights = weights * torch.exp(-((patches - mask[:, None]) ** 2) / (2 * sigma_range**2))
    return (weights * patches).sum(1) / weights.sum(1)
