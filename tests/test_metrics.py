"""lightning_sep.metrics: hand-computed SI-SDR/BSS Eval cases, NaN policy, museval agreement, provenance."""
from __future__ import annotations

import json
import math

import fast_bss_eval
import numpy as np
import pytest
import torch

from lightning_sep import metrics

RATE = 8000


def _noise(n: int, seed: int) -> torch.Tensor:
    return torch.randn(n, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def _harmonic(n: int, f0: float) -> torch.Tensor:
    t = torch.arange(n, dtype=torch.float64) / RATE
    return sum(torch.sin(2 * math.pi * f0 * k * t + k) / k for k in range(1, 6)) * (1 + 0.3 * torch.sin(3 * t))


def _orthogonal_pair(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Zero-mean r and i with <r, i> = 0 (so SI-SDR of r + i is exactly 10·log10(‖r‖²/‖i‖²))."""
    r, i = _noise(n, seed), _noise(n, seed + 1)
    r, i = r - r.mean(), i - i.mean()
    return r, i - (i @ r) / (r @ r) * r


def _db(num: torch.Tensor, den: torch.Tensor) -> float:
    return 10 * math.log10(float((num**2).sum() / (den**2).sum()))


# ------------------------------------------------------------------------------------------------ SI-SDR
def test_si_sdr_of_scaled_copy_is_huge_and_scale_invariant():
    ref = _noise(4000, 0)
    assert metrics.si_sdr(3.0 * ref, ref) > 100
    est = ref + 0.3 * _noise(4000, 1)
    base = metrics.si_sdr(est, ref)
    assert 5 < base < 15
    torch.testing.assert_close(metrics.si_sdr(7.5 * est, ref), base, rtol=0, atol=1e-9)
    torch.testing.assert_close(metrics.si_sdr(est, 0.01 * ref), base, rtol=0, atol=1e-9)
    torch.testing.assert_close(metrics.si_sdr(est + 2.0, ref - 1.0), base, rtol=0, atol=1e-9)  # zero-mean


@pytest.mark.parametrize("ratio_db", [20.0, 7.3, -4.0])
def test_si_sdr_with_orthogonal_interferer_equals_energy_ratio(ratio_db):
    r, i = _orthogonal_pair(8000, 2)
    i = i * math.sqrt((r @ r) / (i @ i) / 10 ** (ratio_db / 10))
    assert abs(_db(r, i) - ratio_db) < 1e-9
    assert abs(float(metrics.si_sdr(r + i, r)) - ratio_db) < 1e-3


def test_si_sdr_improvement_arithmetic():
    r, i = _orthogonal_pair(8000, 3)
    i = i * torch.sqrt((r @ r) / (i @ i))  # mixture at 0 dB
    assert abs(float(metrics.si_sdr_improvement(r + 0.1 * i, r, r + i)) - 20.0) < 1e-3
    est, mix = r + 0.5 * _noise(8000, 9), r + i
    expected = metrics.si_sdr(est, r) - metrics.si_sdr(mix, r)
    torch.testing.assert_close(metrics.si_sdr_improvement(est, r, mix), expected, rtol=0, atol=1e-12)


def test_silent_reference_gives_nan_only_where_silent():
    est = torch.stack([_noise(2000, 4), _noise(2000, 5), _noise(2000, 6)])
    ref = torch.stack([torch.zeros(2000, dtype=torch.float64), torch.full((2000,), 0.37, dtype=torch.float64),
                       _noise(2000, 7)])
    out = metrics.si_sdr(est, ref)
    assert out.shape == (3,)
    assert torch.isnan(out[0]) and torch.isnan(out[1])  # all-zero, and constant (silent after mean removal)
    assert torch.isfinite(out[2])


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_inputs_are_scored_in_full_precision(dtype):
    ref = (0.5 * _noise(4000, 8)).to(dtype)
    est = (ref.double() + 0.05 * _noise(4000, 9)).to(dtype)
    full = metrics.si_sdr(est.float(), ref.float())
    assert metrics.si_sdr(est, ref).dtype == torch.float64
    assert torch.equal(metrics.si_sdr(est, ref), full)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert torch.equal(metrics.si_sdr(est.float(), ref.float()), full)
        improvement = metrics.si_sdr(est, ref) - metrics.si_sdr(ref, ref)
        assert torch.equal(metrics.si_sdr_improvement(est, ref, ref), improvement)


# ------------------------------------------------------------------------------------------- aggregate
def test_aggregate_ignores_and_counts_nan():
    values = [1.0, math.nan, 3.0, math.nan, 8.0]
    mean, median = metrics.aggregate(values, "mean"), metrics.aggregate(torch.tensor(values), "median")
    assert (mean["value"], mean["n"], mean["n_nan"]) == (4.0, 3, 2)
    assert (median["value"], median["n"], median["n_nan"]) == (3.0, 3, 2)
    assert mean["note"] == ""
    empty = metrics.aggregate(np.full(4, np.nan), "median")
    assert math.isnan(empty["value"]) and (empty["n"], empty["n_nan"]) == (0, 4)
    assert "NaN" in empty["note"]
    with pytest.raises(ValueError):
        metrics.aggregate(values, "max")


# -------------------------------------------------------------------------------------------- BSS Eval
def test_bss_eval_additive_interferer():
    """est_j = ref_j + a·ref_other: SDR (v4) is exactly the energy ratio, SIR ≈ it, no artifacts."""
    ref = torch.stack([_noise(32000, 10), _noise(32000, 11)])
    interferer = 0.3 * ref.flip(0)
    out = metrics.bss_eval(ref + interferer, ref)
    for k in range(2):
        ratio = _db(ref[k], interferer[k])
        assert abs(float(out["sdr"][k]) - ratio) < 1e-9
        assert abs(float(out["sir"][k]) - ratio) < 0.2  # 512 filter taps absorb ~512/T of the interferer
        assert out["sar"][k] > 100


def test_bss_eval_sir_sar_match_fast_bss_eval_and_sdr_is_v4():
    """Same projections as fast_bss_eval's bss_eval_sources; SDR follows museval v4 (images), not sources."""
    ref = torch.stack([_noise(16000, 12), _harmonic(16000, 180.0)])
    est = 0.7 * ref + 0.2 * ref.flip(0) + 0.05 * _noise(16000, 13)
    ours = metrics.bss_eval(est, ref)
    _sdr, sir, sar = fast_bss_eval.bss_eval_sources(ref, est, compute_permutation=False)
    torch.testing.assert_close(ours["sir"], sir, rtol=0, atol=1e-6)
    torch.testing.assert_close(ours["sar"], sar, rtol=0, atol=1e-6)
    for k in range(2):  # gain error 0.7 is penalised by v4 SDR (bss_eval_sources would forgive it)
        assert abs(float(ours["sdr"][k]) - _db(ref[k], est[k] - ref[k])) < 1e-9


def test_bss_eval_batched_and_silent_stem():
    ref = torch.stack([torch.stack([_noise(8000, 20 + b), _harmonic(8000, 150.0 + 40 * b)]) for b in range(3)])
    est = ref + 0.1 * ref.flip(1) + 0.02 * _noise(8000, 30)
    ref[2, 1] = 0.0
    out = metrics.bss_eval(est, ref)
    assert out["sdr"].shape == (3, 2)
    for b in range(2):
        single = metrics.bss_eval(est[b], ref[b])
        for name in ("sdr", "sir", "sar"):
            torch.testing.assert_close(out[name][b], single[name], rtol=0, atol=1e-9)
    assert torch.isnan(out["sdr"][2]).all() and torch.isfinite(out["sdr"][:2]).all()


def test_fast_matches_museval_framewise_with_silent_frame():
    n = int(3.5 * RATE)  # a trailing half frame, which museval drops
    ref = torch.stack([_harmonic(n, 210.0), 0.5 * _noise(n, 14)])
    ref[1, RATE : 2 * RATE] = 0.0  # frame 1 of the second reference is silent
    est = 0.9 * ref + 0.15 * ref.flip(0) + 0.02 * _noise(n, 15)
    fast = metrics.bss_eval_framewise(est, ref, RATE, 1.0, 1.0)
    ref_impl = metrics.bss_eval_framewise(est, ref, RATE, 1.0, 1.0, implementation="museval")
    for name in ("sdr", "sir", "sar"):
        assert fast[name].shape == ref_impl[name].shape == (2, 3)
        assert torch.isnan(fast[name][:, 1]).all() and torch.isnan(ref_impl[name][:, 1]).all()
        assert torch.equal(torch.isnan(fast[name]), torch.isnan(ref_impl[name]))
        valid = ~torch.isnan(fast[name])
        assert (fast[name][valid] - ref_impl[name][valid]).abs().max() < 0.05
    # whole signal (one window over the clip) against museval too
    whole = metrics.bss_eval(est, ref)
    mus = metrics.load_museval_metrics().bss_eval(
        ref.numpy()[..., None], est.numpy()[..., None], window=n, hop=n, compute_permutation=False,
        framewise_filters=False, bsseval_sources_version=False)
    for name, value in zip(("sdr", "sir", "sar"), (mus[0], mus[2], mus[3]), strict=True):
        assert np.abs(whole[name].numpy() - value[:, 0]).max() < 0.05


# --------------------------------------------------------------------------------- flavour / score_clip
def test_flavours_record_definition_and_versions():
    whole = metrics.flavours(framewise=False, window_s=1.0, hop_s=1.0, clip_aggregation="median")
    assert list(whole) == ["si_sdr", "si_sdri", "sdr", "sir", "sar"]
    assert whole["si_sdr"]["implementation"] == "lightning_sep.si_sdr"
    assert whole["sdr"]["filter_length"] == 512
    assert whole["sdr"]["window_s"] is None and whole["sdr"]["frame_aggregation"] is None
    assert all(f["clip_aggregation"] == "median" and "NaN" in f["nan_policy"] for f in whole.values())
    assert f"museval {metrics._version('museval')}" in whole["sir"]["implementation"]
    frames = metrics.flavours(framewise=True, window_s=1.0, hop_s=0.5, bss_implementation="museval")
    sar = frames["sar"]
    assert (sar["window_s"], sar["hop_s"], sar["frame_aggregation"]) == (1.0, 0.5, "median")
    assert frames["sar"]["implementation"].startswith(f"museval {metrics._version('museval')} ")
    assert frames["si_sdr"]["window_s"] is None
    assert list(metrics.flavours(framewise=False, bss=False)) == ["si_sdr", "si_sdri"]
    json.dumps(frames)  # goes verbatim into results.json
    assert metrics.MetricFlavour("m", "d", "i", None, None, None, None, "mean", "p").to_dict()["metric"] == "m"


def test_score_clip_structure_and_values():
    n = 2 * RATE
    refs = {"speech": _harmonic(n, 190.0).float(), "noise": (0.3 * _noise(n, 16)).float()}
    mix = refs["speech"] + refs["noise"]
    ests = {"noise": refs["noise"] + 0.05 * refs["speech"], "speech": refs["speech"] + 0.1 * refs["noise"]}
    out = metrics.score_clip(ests, refs, mix)
    assert list(out) == ["speech", "noise"]
    assert all(list(v) == ["si_sdr", "si_sdri", "sdr", "sir", "sar"] for v in out.values())
    assert all(isinstance(x, float) for v in out.values() for x in v.values())
    assert out["speech"]["si_sdr"] == pytest.approx(float(metrics.si_sdr(ests["speech"], refs["speech"])))
    assert out["noise"]["si_sdri"] == pytest.approx(
        float(metrics.si_sdr(ests["noise"], refs["noise"]) - metrics.si_sdr(mix, refs["noise"])))
    assert out["speech"]["sdr"] == pytest.approx(_db(refs["speech"].double(), 0.1 * refs["noise"].double()), abs=1e-4)
    assert list(metrics.score_clip(ests, refs, mix, bss=False)["noise"]) == ["si_sdr", "si_sdri"]
    framed = metrics.score_clip(ests, refs, mix, framewise=(0.5, 0.5), sample_rate=RATE)
    per_frame = metrics.bss_eval_framewise(torch.stack([ests["speech"], ests["noise"]]),
                                           torch.stack([refs["speech"], refs["noise"]]), RATE, 0.5, 0.5)
    assert per_frame["sir"].shape == (2, 4)
    assert framed["noise"]["sir"] == pytest.approx(float(np.median(per_frame["sir"][1].numpy())))
    with pytest.raises(ValueError):
        metrics.score_clip(ests, refs, mix, framewise=(1.0, 1.0))  # no sample_rate
    with pytest.raises(ValueError):
        metrics.score_clip({"speech": ests["speech"]}, refs, mix)


def test_block_levinson_matches_dense_solve_and_falls_back(monkeypatch):
    ref = torch.stack([_harmonic(8000, 230.0), _noise(8000, 17)]).numpy()[None]
    est = ref + 0.1 * ref[:, ::-1]
    R, g, _, _ = metrics._correlations(ref, est, 512)
    dense = metrics._dense_solve(R, g)
    X, bad = metrics._solve_filters(R, g)  # one item: Cholesky-based single-system recursion
    np.testing.assert_allclose(X, dense, rtol=0, atol=1e-8 * np.abs(dense).max())
    assert not bad.any()
    Xb, bad = metrics._solve_filters(np.concatenate([R, R]), np.concatenate([g, g]))  # batched recursion
    np.testing.assert_allclose(Xb, np.concatenate([dense, dense]), rtol=0, atol=1e-8 * np.abs(dense).max())
    own = metrics._own_filters(R, g, bad[:1])
    for j in range(2):
        own_dense = metrics._dense_solve(R[:, :, j : j + 1, j : j + 1], g[:, :, j : j + 1, j : j + 1])
        np.testing.assert_allclose(own[0, :, j], own_dense.ravel(), rtol=0, atol=1e-8 * np.abs(own_dense).max())

    calls = []
    monkeypatch.setattr(metrics, "_dense_solve", lambda R, g: calls.append(R.shape) or np.zeros(g.shape))
    first = ref[0, 0].copy()
    first[-3:] = 0.0
    dependent = np.stack([first, np.concatenate([np.zeros(3), first[:-3]])])[None]  # 2nd = 1st delayed: singular
    R2, g2 = metrics._correlations(dependent, est, 512)[:2]
    _, bad = metrics._solve_filters(R2, g2)
    assert bad.tolist() == [True] and calls == [(1, 512, 2, 2)]
    calls.clear()  # in a batch only the singular item falls back (to the dense solve, also for its own filters)
    _, bad = metrics._solve_filters(np.concatenate([R, R2, R]), np.concatenate([g, g2, g]))
    assert bad.tolist() == [False, True, False] and calls == [(1, 512, 2, 2)]
    calls.clear()
    metrics._own_filters(np.concatenate([R, R2]), np.concatenate([g, g2]), bad[:2])
    assert calls == [(1, 512, 1, 1)] * 2


def test_batched_call_equals_per_pair_calls():
    """Leading batch dims go through one recursion (and chunks of items), with the per-pair numbers."""
    n = 6000
    ref = torch.stack([torch.stack([_harmonic(n, 140.0 + 30 * b), 0.3 * _noise(n, 40 + b)]) for b in range(6)])
    est = 0.9 * ref + (0.05 + 0.02 * torch.arange(6.0)[:, None, None]) * ref.flip(1) + 0.01 * _noise(n, 50)
    ref[4, 0] = 0.0  # a silent stem: that item is NaN, the others are unaffected
    batched = metrics.bss_eval(est.reshape(2, 3, 2, n), ref.reshape(2, 3, 2, n))
    for name, value in batched.items():
        assert value.shape == (2, 3, 2)
        single = torch.stack([metrics.bss_eval(e, r)[name] for e, r in zip(est, ref, strict=True)]).reshape(2, 3, 2)
        assert torch.equal(torch.isnan(value), torch.isnan(single))
        assert torch.isnan(value[1, 1]).all() and torch.isfinite(value[[0, 0, 0, 1, 1], [0, 1, 2, 0, 2]]).all()
        valid = ~torch.isnan(single)
        torch.testing.assert_close(value[valid], single[valid], rtol=0, atol=1e-6)


def test_lag_domain_energies_match_projection_spectra(monkeypatch):
    """Energies as Gram quadratic forms equal those of the projections on the clip's FFT grid (the exact path)."""
    n = 12000
    ref = torch.stack([torch.stack([_harmonic(n, 170.0 + 50 * b), 0.4 * _noise(n, 60 + b)]) for b in range(3)])
    est = 1.1 * ref + 0.2 * ref.flip(1) + 10.0 ** -torch.arange(1.0, 4.0)[:, None, None] * _noise(n, 70)
    fast = metrics.bss_eval(est, ref)
    monkeypatch.setattr(metrics, "_CANCELLATION_FLOOR", math.inf)  # every item through the exact path
    exact = metrics.bss_eval(est, ref)
    for name in ("sdr", "sir", "sar"):
        torch.testing.assert_close(fast[name], exact[name], rtol=0, atol=1e-7)
    assert float(exact["sar"].min()) > 10 and float(exact["sar"].max()) > 50  # SAR from ~14 to ~60 dB


def test_single_source_has_no_interference():
    ref = _harmonic(8000, 170.0)[None]
    out = metrics.bss_eval(ref + 0.05 * _noise(8000, 18), ref)
    assert out["sir"].item() == math.inf  # museval's convention for zero interference energy
    assert 20 < out["sar"].item() < 40
