"""Training options shared by the methods: the cosine schedule, the weight average, the scored stems."""
from __future__ import annotations

import math

import pytest
import torch
from conftest import REPO

from lightning_sep.config import ConfigError
from lightning_sep.experiment import load
from lightning_sep.methods.base import cosine_factor
from lightning_sep.methods.supervised import Supervised, remix, thresholded_snr_loss

CONFIG = REPO / "experiments/supervised/demo_speech_noise.yaml"
DATASET = {"name": "toy", "sample_rate": 8000, "stems": ["speech", "noise"], "observed": "noise",
           "unobserved": "speech", "classes": []}


def test_cosine_schedule_warms_up_then_falls_to_the_final_ratio():
    f = [cosine_factor(s, warmup=10, total=110, final=0.01) for s in range(120)]
    assert f[0] == pytest.approx(0.1) and f[9] == pytest.approx(1.0)
    assert f[60] == pytest.approx(0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * 0.5)))
    assert f[110] == pytest.approx(0.01) and f[119] == pytest.approx(0.01)  # stays there past the end
    assert all(a >= b for a, b in zip(f[9:], f[10:], strict=False))


def test_cosine_length_defaults_to_the_step_budget_and_enters_the_run_identity():
    from lightning_sep.config import identity

    a = load(CONFIG, ["optim.schedule=cosine", "trainer.max_steps=100"])
    b = load(CONFIG, ["optim.schedule=cosine", "trainer.max_steps=200"])
    assert a.optim.schedule_steps == 100 and b.optim.schedule_steps == 200
    assert identity(a) != identity(b)  # a different schedule is a different run, not a continuation
    with pytest.raises(ConfigError, match="optim.schedule='linear'"):
        load(CONFIG, ["optim.schedule=linear"])


def test_weight_average_separates_outside_training_and_follows_the_weights():
    cfg = load(CONFIG, ["data.root=unused", "optim.ema_decay=0.5", "net.depth=2", "net.channels=4"])
    from omegaconf import OmegaConf

    model = Supervised(OmegaConf.to_container(cfg, resolve=True), DATASET)
    assert all(not p.requires_grad for p in model.net_average.parameters())
    model.on_train_batch_end(None, None, 0)  # the first update copies the weights
    with torch.no_grad():
        for p in model.net.parameters():
            p.add_(1.0)
    model.on_train_batch_end(None, None, 1)  # halfway towards the new weights with decay 0.5
    for avg, now in zip(model.net_average.module.parameters(), model.net.parameters(), strict=True):
        torch.testing.assert_close(avg, now - 0.5)
    mix = torch.randn(2, 4000)
    model.eval()
    torch.testing.assert_close(model.masks(mix), model.net_average.module(model.front_end.log_magnitude(mix)))
    model.train()
    torch.testing.assert_close(model.masks(mix), model.net(model.front_end.log_magnitude(mix)))


def test_loss_on_an_unknown_stem_is_refused():
    from omegaconf import OmegaConf

    cfg = load(CONFIG, ["data.root=unused", "supervised.loss_stems=[voice]"])
    with pytest.raises(ConfigError, match=r"supervised.loss_stems names \['voice'\]"):
        Supervised(OmegaConf.to_container(cfg, resolve=True), DATASET)


@pytest.mark.parametrize("config, key", [(CONFIG, "supervised.loss"),
                                         (REPO / "experiments/nes/demo_speech_noise.yaml", "nes.loss")])
def test_mistyped_loss_name_is_an_error_not_a_silent_fallback(config, key):
    with pytest.raises(ConfigError, match=rf"{key}='si-sdr' is not one of"):
        load(config, [f"{key}=si-sdr"])


def test_remix_draws_stem_k_from_the_clip_k_places_back_and_keeps_every_stem():
    sources = torch.arange(4 * 3, dtype=torch.float).view(4, 3, 1)  # clip b, stem k holds the value 3b + k
    mixed = remix(sources)
    for b in range(4):
        for k in range(3):
            assert mixed[b, k, 0] == sources[(b - k) % 4, k, 0]
    torch.testing.assert_close(mixed.sum(0), sources.sum(0))  # each clip's stem used once


def test_observed_share_draws_that_share_of_the_observed_stem_from_the_observed_pool():
    from omegaconf import OmegaConf

    cfg = load(CONFIG, ["data.root=unused", "net.depth=2", "net.channels=4", "supervised.observed_share=0.5"])
    model = Supervised(OmegaConf.to_container(cfg, resolve=True), DATASET)
    torch.manual_seed(0)
    sources, observed = torch.randn(200, 2, 50), torch.randn(200, 50)
    out = model.draw_observed(sources, observed)
    torch.testing.assert_close(out[:, 0], sources[:, 0])  # speech stays the isolated pool's
    drawn = torch.tensor([bool(torch.equal(o, b)) for o, b in zip(out[:, 1], observed, strict=True)])
    kept = torch.tensor([bool(torch.equal(o, n)) for o, n in zip(out[:, 1], sources[:, 1], strict=True)])
    assert bool((drawn ^ kept).all()) and 70 < int(drawn.sum()) < 130


def test_observed_share_needs_an_observed_pool(toy_dataset):
    from lightning_sep.data.shards import DatasetInfo

    info = DatasetInfo.load(toy_dataset)
    cfg = load(CONFIG, [f"data.root={toy_dataset}", "supervised.observed_share=0.5"])
    assert set(Supervised.train_pools(info, cfg)) == {"isolated", "observed"}
    assert Supervised.train_pools(info, cfg)["observed"].stems == [info.observed]
    info.observed = None
    with pytest.raises(ConfigError, match="supervised.observed_share=0.5 needs a train/observed pool"):
        Supervised.train_pools(info, cfg)
    with pytest.raises(ConfigError, match=r"supervised.observed_share=1.5 must be in \[0, 1\]"):
        load(CONFIG, ["supervised.observed_share=1.5"])


def test_thresholded_snr_loss_caps_sounding_stems_floors_silent_ones_and_is_scale_free():
    g = torch.Generator().manual_seed(0)
    loud, quiet = torch.randn(2, 1000, generator=g), 0.01 * torch.randn(2, 1000, generator=g)
    silent = torch.zeros(2, 1000)
    sources = torch.stack([loud, quiet, silent], dim=1)
    mixture = sources.sum(1)
    # perfect estimates: each sounding stem at -snr_max, the silent one at the floor
    perfect = thresholded_snr_loss(sources, sources, mixture, snr_max=30.0, leak_floor_db=-20.0)
    assert perfect.item() == pytest.approx((-30 - 30 - 20) / 3, abs=1e-3)
    # the quiet stem's term depends on its SNR only: 10 dB SNR costs it the same as it would the loud stem
    noisy = sources.clone()
    noisy[:, 1] += 0.1 * quiet.roll(1, dims=-1)  # error energy 1% of the stem's: SNR 20 dB
    worse_quiet = thresholded_snr_loss(noisy, sources, mixture, 30.0, -20.0)
    noisy = sources.clone()
    noisy[:, 0] += 0.1 * loud.roll(1, dims=-1)
    worse_loud = thresholded_snr_loss(noisy, sources, mixture, 30.0, -20.0)
    assert worse_quiet.item() == pytest.approx(worse_loud.item(), abs=0.05)
    assert worse_quiet.item() > perfect.item() + 3
    # a silent stem's output costs its energy relative to the mixture's (in dB, above the floor)
    leaking = sources.clone()
    leaking[:, 2] = 0.5 * mixture
    leak = thresholded_snr_loss(leaking, sources, mixture, 30.0, -20.0)
    expected = (-30 - 30 + 10 * math.log10(0.25 + 0.01)) / 3
    assert leak.item() == pytest.approx(expected, abs=1e-3)


NES_CONFIG = REPO / "experiments/nes/demo_speech_noise.yaml"


def test_nes_observed_gain_scales_b_inside_its_range_and_keeps_the_sum():
    from omegaconf import OmegaConf

    from lightning_sep.methods.nes import NES

    cfg = load(NES_CONFIG, ["data.root=unused", "net.depth=2", "net.channels=4", "nes.observed_gain_db=[-20,-6]"])
    model = NES(OmegaConf.to_container(cfg, resolve=True), DATASET)
    b, x_hat = torch.ones(256, 100), torch.randn(256, 100)
    scaled, y = model.synthetic_mixture(b, x_hat)
    gains = scaled[:, 0]
    assert torch.all(scaled == gains[:, None])  # one gain per example
    assert gains.min() >= 10 ** (-20 / 20) - 1e-6 and gains.max() <= 10 ** (-6 / 20) + 1e-6
    assert gains.std() > 0.05  # drawn, not fixed
    torch.testing.assert_close(y, scaled + x_hat)
    plain = load(NES_CONFIG, ["data.root=unused", "net.depth=2", "net.channels=4", "nes.observed_gain_db=[0,0]"])
    same, _ = NES(OmegaConf.to_container(plain, resolve=True), DATASET).synthetic_mixture(b, x_hat)
    assert torch.equal(same, b)  # the authors' setting: b as drawn
    with pytest.raises(ConfigError, match="observed_gain_db"):
        load(NES_CONFIG, ["nes.observed_gain_db=[0,-10]"])


def test_nes_cosine_schedule_runs_its_course_in_each_outer_iteration():
    cfg = load(NES_CONFIG, ["optim.schedule=cosine", "trainer.max_steps=100", "nes.iterations=10"])
    assert cfg.optim.schedule_steps == 10 and cfg.data.batches_per_epoch == 10
    kept = load(NES_CONFIG, ["optim.schedule=cosine", "trainer.max_steps=100", "nes.iterations=10",
                             "nes.reset_optimizer=false"])
    assert kept.optim.schedule_steps == 100  # one schedule over the whole run when the optimizer is kept


def test_bound_assessor_needs_classes_and_a_nonnegative_weight():
    from omegaconf import OmegaConf

    cfg = load(CONFIG, ["data.root=unused", "net.depth=2", "net.channels=4", "supervised.assessor_weight=1.0",
                        "supervised.classifier_checkpoint=unused.ckpt"])
    with pytest.raises(ConfigError, match="supervised.assessor_weight needs a dataset with classes"):
        Supervised(OmegaConf.to_container(cfg), DATASET)
    with pytest.raises(ConfigError, match=r"supervised.assessor_weight=-1.0 must be >= 0"):
        load(CONFIG, ["supervised.assessor_weight=-1.0"])
