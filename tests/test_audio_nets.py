"""The STFT front end and the mask U-Net."""
from __future__ import annotations

import pytest
import torch

from lightning_sep.audio import STFT, STFTConfig
from lightning_sep.nets.unet import MaskUNet, UNetConfig

CFG = STFTConfig(n_fft=256, win_length=256, hop_length=64)


def test_stft_round_trip_is_exact():
    stft = STFT(CFG)
    wave = torch.randn(3, 8001)
    torch.testing.assert_close(stft.inverse(stft(wave), wave.shape[-1]), wave, atol=1e-5, rtol=0)


def test_front_end_stays_float32_inside_bf16_autocast():
    stft = STFT(CFG)
    wave = torch.randn(2, 4000)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        spec = stft(wave.bfloat16())
        mag, phase = stft.magphase(wave)
        logmag = stft.log_magnitude(wave)
    assert spec.dtype == torch.complex64 and mag.dtype == phase.dtype == logmag.dtype == torch.float32
    torch.testing.assert_close(spec, stft(wave.bfloat16().float()))


def test_masks_summing_to_one_give_estimates_summing_to_the_mixture():
    stft, net = STFT(CFG), MaskUNet(3, UNetConfig(depth=3, channels=4)).eval()
    mix = torch.randn(2, 8000)
    with torch.no_grad():
        masks = net(stft.log_magnitude(mix))
        estimates = stft.apply_masks(masks, mix)
    assert masks.shape == (2, 3, 129, 126)
    torch.testing.assert_close(masks.sum(1), torch.ones(2, 129, 126))
    torch.testing.assert_close(estimates.sum(1), mix, atol=1e-5, rtol=0)


def test_mixture_phase_reconstruction_of_a_true_ratio_mask_recovers_the_source():
    stft = STFT(CFG)
    t = torch.arange(8000) / 8000
    speech, noise = torch.sin(2 * torch.pi * 440 * t)[None], 0.01 * torch.randn(1, 8000)
    mix = speech + noise
    mask = stft(speech).abs() / (stft(speech).abs() + stft(noise).abs() + 1e-8)
    estimate = stft.apply_masks(mask[:, None], mix)[:, 0]
    assert (estimate - speech).pow(2).sum() < 0.01 * speech.pow(2).sum()


@pytest.mark.parametrize("n_freq,n_frames", [(129, 126), (257, 64), (100, 33)])
def test_unet_handles_any_spectrogram_size(n_freq, n_frames):
    net = MaskUNet(2, UNetConfig(depth=4, channels=4))
    out = net(torch.randn(2, n_freq, n_frames))
    assert out.shape == (2, 2, n_freq, n_frames) and torch.isfinite(out).all()
    out.sum().backward()
    assert all(p.grad is not None for p in net.parameters() if p.requires_grad)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_stft_stays_float32_when_the_module_is_cast_to_half_precision(dtype):
    stft = STFT(CFG).to(dtype)  # what "bf16-true" precision or .half() does to every module
    wave = torch.randn(1, 1000)
    assert stft(wave.to(dtype)).dtype == torch.complex64
    torch.testing.assert_close(stft(wave), STFT(CFG)(wave))
