"""BSS Eval speed and agreement: lightning_sep.metrics against museval's BSS Eval v4 on the same signals.

Whole-signal rows: every implementation scores the same deterministic 2-source pairs (a noise-like and a
harmonic source; estimates = gain/filter error + leakage of the other source + artifact noise, amounts
varied per pair). museval runs ``museval.metrics.bss_eval`` with exactly the arguments of
``museval.evaluate(mode="v4")`` and one window spanning the clip (window = hop = clip length), so it
computes the same quantity as ``lightning_sep.metrics.bss_eval``. fast_bss_eval's ``bss_eval_sources``
is shown for reference: same SIR/SAR projections, but the bss_eval_sources SDR, which differs from v4.

Two rows for lightning_sep: "per pair" calls ``bss_eval`` once per (2, T) pair, as ``score_clip`` does for
every test clip, and is the headline ``speed_ratio``; "batched" scores each round's pairs in one (round, 2, T)
call (items share one block-Levinson recursion), the way to call it for many clips at once
(``speed_ratio_batched``); the two agree to solver rounding (their max difference is printed). The
machine is shared and noisy, so the whole-signal implementations are timed interleaved: rounds of
``--round`` pairs, each round timing museval, lightning_sep (per pair, then batched) and fast_bss_eval
back to back on the same pairs, and summing; every implementation gets one untimed warm-up call first.

Framewise rows: fewer, longer pairs with silent gaps, museval-style frames (filters from the whole clip,
metrics per frame, NaN where a frame has a silent stem); the NaN frames must coincide.

Thread count: on small shared VMs multi-threaded BLAS is slow and erratic for these problem sizes, for
museval (LAPACK solves) as much as for us; ``--threads 1`` (default) pins every library (OpenBLAS, MKL,
OpenMP, torch intra-op) to one thread for museval, lightning_sep and fast_bss_eval alike, so all run under
the same conditions. ``--threads 0`` leaves the environment alone. The table header and the JSON say
which.

usage: python benchmarks/metrics.py [--pairs 100] [--seconds 5] [--sample-rate 8000] [--threads 1]
                                    [--round 10] [--frame-pairs 10] [--frame-seconds 30] [--json PATH]
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--pairs", type=int, default=100)
    p.add_argument("--seconds", type=float, default=5.0)
    p.add_argument("--sample-rate", type=int, default=8000)
    p.add_argument("--frame-pairs", type=int, default=10, help="pairs for the framewise rows (0: skip)")
    p.add_argument("--frame-seconds", type=float, default=30.0)
    p.add_argument("--window", type=float, default=1.0, help="framewise window and hop, seconds")
    p.add_argument("--threads", type=int, default=1, help="BLAS/OpenMP threads for all libraries (0: as is)")
    p.add_argument("--round", type=int, default=10, help="pairs per interleaved timing round")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", type=str, default=None)
    return p.parse_args()


ARGS = parse_args()
if ARGS.threads > 0:  # must precede the first numpy/torch import
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = str(ARGS.threads)

import fast_bss_eval  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from lightning_sep import metrics  # noqa: E402

if ARGS.threads > 0:
    torch.set_num_threads(ARGS.threads)


def make_pair(rng: np.random.Generator, n: int, rate: int, gap: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """(references, estimates), each (2, n) float64: a noise-like and a harmonic source."""
    t = np.arange(n) / rate
    taps = np.hanning(int(rng.integers(3, 24)) + 2)[1:-1]
    noise = np.convolve(rng.standard_normal(n + len(taps)), taps / taps.sum(), mode="valid")[:n]
    noise *= 0.3 + np.clip(np.sin(2 * np.pi * rng.uniform(1, 4) * t + rng.uniform(0, 6)), 0, None)
    f0 = rng.uniform(90, 300) * (1 + 0.05 * np.sin(2 * np.pi * rng.uniform(3, 6) * t))  # vibrato
    phase = 2 * np.pi * np.cumsum(f0) / rate
    harmonic = sum(np.sin(k * phase + rng.uniform(0, 6)) / k for k in range(1, 9))
    harmonic *= 0.5 + 0.5 * np.abs(np.sin(2 * np.pi * rng.uniform(0.3, 1.0) * t))
    refs = np.stack([noise, harmonic])
    refs *= (0.1 / refs.std(axis=1, keepdims=True)) * 10 ** (rng.uniform(-6, 6, (2, 1)) / 20)
    if gap:  # a silent stretch in one stem, longer than a frame, so at least one frame is silent
        start = int(rng.uniform(0.2, 0.6) * n)
        refs[int(rng.integers(2)), start : start + int(1.7 * rate)] = 0.0
    ests = np.empty_like(refs)
    for j in range(2):
        alpha = rng.uniform(0, 0.3)  # mild low-pass: a filter error the distortion filters can absorb
        target = rng.uniform(0.8, 1.1) * np.convolve(refs[j], [1 - alpha, alpha])[:n]
        leak = 10 ** rng.uniform(-2, np.log10(0.5)) * refs[1 - j]
        artifact = 10 ** rng.uniform(-3, np.log10(0.05)) * refs[j].std() * rng.standard_normal(n)
        ests[j] = target + leak + artifact
    return refs, ests


def museval_call(mus, refs: np.ndarray, ests: np.ndarray, window: int, hop: int) -> np.ndarray:
    """museval.evaluate(refs, ests, win=window, hop=hop, mode="v4") without its ffmpeg-bound package import."""
    sdr, _isr, sir, sar, _ = mus.bss_eval(refs[..., None], ests[..., None], window=window, hop=hop,
                                          compute_permutation=False, framewise_filters=False,
                                          bsseval_sources_version=False)
    return np.stack([sdr, sir, sar])


def timed(fn, items) -> tuple[float, list]:
    start = time.perf_counter()
    out = [fn(*item) for item in items]
    return time.perf_counter() - start, out


def max_abs(a: np.ndarray, b: np.ndarray) -> float:
    both = ~(np.isnan(a) | np.isnan(b))
    return float(np.abs(a[both] - b[both]).max()) if both.any() else float("nan")


def main() -> int:
    rate, n = ARGS.sample_rate, int(ARGS.seconds * ARGS.sample_rate)
    rng = np.random.default_rng(ARGS.seed)
    pairs = [make_pair(rng, n, rate) for _ in range(ARGS.pairs)]
    torch_pairs = [(torch.from_numpy(r), torch.from_numpy(e)) for r, e in pairs]
    mus = metrics.load_museval_metrics()
    versions = {p: metrics._version(p) for p in ("museval", "fast_bss_eval", "numpy", "torch")}

    def ours_per_pair(r, e):
        return np.stack([v.numpy() for v in metrics.bss_eval(e, r).values()])

    def ours_batched(refs, ests):  # (pairs, K, T) in one call → (pairs, 3, K)
        return np.stack([v.numpy() for v in metrics.bss_eval(ests, refs).values()], axis=1)

    def fbe_call(r, e):
        return np.stack([v.numpy() for v in fast_bss_eval.bss_eval_sources(r, e, compute_permutation=False)])

    def mus_call(r, e):
        return museval_call(mus, r, e, n, n)[..., 0]

    # warm-up (imports, caches, work arrays) outside the clock, then interleaved rounds
    mus_call(*pairs[0]), ours_per_pair(*torch_pairs[0]), fbe_call(*torch_pairs[0])
    stacked = [torch.stack(x) for x in zip(*torch_pairs[: ARGS.round], strict=True)]
    ours_batched(*stacked)
    t_mus = t_ours = t_batch = t_fbe = 0.0
    out_mus, out_ours, out_batch, out_fbe = [], [], [], []
    for i0 in range(0, len(pairs), ARGS.round):
        dt, out = timed(mus_call, pairs[i0 : i0 + ARGS.round])
        t_mus, out_mus = t_mus + dt, out_mus + out
        dt, out = timed(ours_per_pair, torch_pairs[i0 : i0 + ARGS.round])
        t_ours, out_ours = t_ours + dt, out_ours + out
        stacked = [torch.stack(x) for x in zip(*torch_pairs[i0 : i0 + ARGS.round], strict=True)]
        dt, out = timed(ours_batched, [stacked])
        t_batch, out_batch = t_batch + dt, out_batch + list(out[0])
        dt, out = timed(fbe_call, torch_pairs[i0 : i0 + ARGS.round])
        t_fbe, out_fbe = t_fbe + dt, out_fbe + out
    ref_vals = np.stack(out_mus)  # (pairs, 3, K)
    batched_vs_per_pair = float(np.abs(np.stack(out_batch) - np.stack(out_ours)).max())

    rows = []  # (name, pairs, seconds, speed vs museval, deltas)
    for name, seconds, vals in (
        (f"museval {versions['museval']} (reference)", t_mus, ref_vals),
        ("lightning_sep.metrics.bss_eval, per pair", t_ours, np.stack(out_ours)),
        (f"lightning_sep.metrics.bss_eval, batched ({ARGS.round})", t_batch, np.stack(out_batch)),
        (f"fast_bss_eval {versions['fast_bss_eval']} bss_eval_sources", t_fbe, np.stack(out_fbe)),
    ):
        deltas = [max_abs(vals[:, m], ref_vals[:, m]) for m in range(3)]
        rows.append((name, len(pairs), seconds, t_mus / seconds, deltas))

    frame_rows, frame_info = [], {}
    if ARGS.frame_pairs > 0:
        fn = int(ARGS.frame_seconds * rate)
        frng = np.random.default_rng(ARGS.seed + 1)
        fpairs = [tuple(map(torch.from_numpy, make_pair(frng, fn, rate, gap=True))) for _ in range(ARGS.frame_pairs)]

        def framewise(impl):
            return lambda r, e: np.stack([v.numpy() for v in metrics.bss_eval_framewise(
                e, r, rate, ARGS.window, ARGS.window, implementation=impl).values()])

        framewise("museval")(*fpairs[0]), framewise("fast")(*fpairs[0])  # warm-up outside the clock
        tf_mus, fm = timed(framewise("museval"), fpairs)
        tf_ours, fo = timed(framewise("fast"), fpairs)
        fm, fo = np.stack(fm), np.stack(fo)  # (pairs, 3, K, frames)
        same_nan = bool((np.isnan(fm) == np.isnan(fo)).all())
        deltas = [max_abs(fo[:, m], fm[:, m]) for m in range(3)]
        label = f"{ARGS.frame_seconds:g} s, {ARGS.window:g} s frames"
        frame_rows = [(f"museval framewise ({label})", len(fpairs), tf_mus, 1.0, [0.0] * 3),
                      (f"lightning_sep framewise ({label})", len(fpairs), tf_ours, tf_mus / tf_ours, deltas)]
        frame_info = {"pairs": len(fpairs), "seconds_per_pair": ARGS.frame_seconds, "window_s": ARGS.window,
                      "hop_s": ARGS.window, "frames": int(fo.shape[-1]), "speed_ratio": tf_mus / tf_ours,
                      "max_abs_diff_db": {k: d for k, d in zip(("sdr", "sir", "sar"), deltas, strict=True)},
                      "nan_frames": int(np.isnan(fm[:, 0]).sum()), "nan_frames_identical": same_nan}

    threads = (f"{ARGS.threads} (BLAS, OpenMP and torch; the same for every implementation)" if ARGS.threads > 0
               else f"as the environment sets them ({torch.get_num_threads()} torch)")
    print(f"BSS Eval v4, {len(pairs)} pairs of 2 sources x {ARGS.seconds:g} s at {rate} Hz, threads: {threads}")
    head = f"{'implementation':<50}{'pairs':>6}{'seconds':>9}{'pairs/s':>9}{'speed x':>9}" + \
        "".join(f"{h:>11}" for h in ("max|dSDR|", "max|dSIR|", "max|dSAR|"))
    print(head + "\n" + "-" * len(head))
    for name, count, seconds, ratio, deltas in rows + frame_rows:
        print(f"{name:<50}{count:>6}{seconds:>9.2f}{count / seconds:>9.2f}{ratio:>9.1f}"
              + "".join(f"{d:>11.2e}" for d in deltas))
    print("(deltas in dB against museval on the same signals; speed x = museval time / this time; timed in "
          f"interleaved rounds of {ARGS.round} pairs)")
    print(f"batched vs per-pair lightning_sep: max |difference| {batched_vs_per_pair:.2e} dB")
    if frame_info:
        print(f"framewise: {frame_info['nan_frames']} NaN (silent) frames per source in museval, "
              f"identical NaN pattern: {frame_info['nan_frames_identical']}")

    ours, batched = rows[1], rows[2]
    result = {
        "speed_ratio": ours[3],  # per-pair calls: how score_clip scores each test clip
        "max_abs_diff_db": ours[4][0],
        "max_abs_diff_db_sir": ours[4][1],
        "max_abs_diff_db_sar": ours[4][2],
        "speed_ratio_batched": batched[3],
        "max_abs_diff_db_batched": dict(zip(("sdr", "sir", "sar"), batched[4], strict=True)),
        "batched_vs_per_pair_max_abs_diff_db": batched_vs_per_pair,
        "pairs": len(pairs), "seconds": ARGS.seconds, "sample_rate": rate, "batch": ARGS.round,
        "threads": ARGS.threads if ARGS.threads > 0 else "environment",
        "timing": f"interleaved rounds of {ARGS.round} pairs, one warm-up call each outside the clock",
        "museval_s": t_mus, "lightning_sep_s": t_ours, "lightning_sep_batched_s": t_batch,
        "fast_bss_eval": {"seconds": t_fbe, "speed_ratio": rows[3][3],
                          "max_abs_diff_db": dict(zip(("sdr", "sir", "sar"), rows[3][4], strict=True))},
        "framewise": frame_info,
        "versions": versions,
    }
    if ARGS.json:
        with open(ARGS.json, "w") as f:
            json.dump(result, f, indent=1)
            f.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
