"""Separation metrics: SI-SDR(i) and BSS Eval v4 SDR/SIR/SAR (whole clip or museval-style frames), their
NaN-aware aggregation, and the provenance ("flavour") that goes into results.json.

Precision: SI-SDR runs in float64 on the input's device (float32 on MPS), with autocast off, so fp16/bf16
inputs give the same number as their float32 upcast. BSS Eval runs on the CPU in float64 numpy.

BSS Eval is the v4 definition used by museval / SiSEC 2018 (``museval.evaluate(mode="v4")``): 512-tap
distortion filters estimated once on the whole clip, metrics from the ``bss_eval_images`` decomposition.
For mono stems that makes SDR = 10·log10(‖s‖² / ‖ŝ − s‖²) (no filter or gain allowance, unlike
``bss_eval_sources`` SDR in mir_eval / fast_bss_eval); SIR and SAR use the filtered projections. We
reimplement it because fast_bss_eval computes the ``bss_eval_sources`` SDR (up to several dB off museval
whenever the estimate has a gain or filter error) and, like museval, spends its time in a dense
(K·512)² solve; the block-Toeplitz systems here are solved by block Levinson recursion in O(K³·512²).
``benchmarks/metrics.py`` checks agreement with museval 0.4.1 and the speed-up.
"""
from __future__ import annotations

import functools
import importlib.metadata
import importlib.util
import math
import os
from dataclasses import asdict, dataclass
from typing import Any, Mapping, Sequence

import numpy as np
import torch
from torch import Tensor

FILTER_LENGTH = 512
_REL_PRED_ERROR_FLOOR = 1e-10  # Levinson is only trusted while references stay this unpredictable (else dense solve)


def _version(package: str) -> str:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


# ----------------------------------------------------------------------------------------------- SI-SDR
def si_sdr(estimate: Tensor, reference: Tensor, eps: float = 1e-8) -> Tensor:
    """Scale-invariant SDR in dB over the last axis, (..., T) → (...) (Le Roux et al. 2019, zero-mean).

    A silent reference (all zeros, or constant: no energy after mean removal, up to rounding) gives NaN:
    the metric is undefined there, and a 0 or ±inf would silently bias averages (``aggregate`` drops and
    counts NaN). ``eps`` only keeps a perfect estimate finite (about 10·log10(‖s‖²/eps)).
    """
    with torch.autocast(device_type=estimate.device.type, enabled=False):
        dtype = torch.float32 if estimate.device.type == "mps" else torch.float64
        est, ref = estimate.to(dtype), reference.to(dtype)
        raw_energy = (ref * ref).sum(-1, keepdim=True)
        est = est - est.mean(-1, keepdim=True)
        ref = ref - ref.mean(-1, keepdim=True)
        ref_energy = (ref * ref).sum(-1, keepdim=True)
        silent = ref_energy <= raw_energy * (64 * torch.finfo(dtype).eps) ** 2  # mean removal leaves ~eps·DC
        target = (est * ref).sum(-1, keepdim=True) / torch.where(silent, 1.0, ref_energy) * ref
        noise = est - target
        value = 10 * torch.log10(((target**2).sum(-1) + eps) / ((noise**2).sum(-1) + eps))
        return value.masked_fill(silent.squeeze(-1), float("nan"))


def si_sdr_improvement(estimate: Tensor, reference: Tensor, mixture: Tensor) -> Tensor:
    """SI-SDRi: SI-SDR of the estimate minus SI-SDR of the unprocessed mixture (same reference)."""
    return si_sdr(estimate, reference) - si_sdr(mixture, reference)


# ------------------------------------------------------------------------------------- BSS Eval v4 core
def _safe_db(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    """10·log10(num/den), +inf where den == 0 (museval's ``_safe_db``)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(den == 0, np.inf, 10 * np.log10(num / np.where(den == 0, 1.0, den)))


def _fft_len(n: int) -> int:
    """Smallest 2^a·3^b·5^c ≥ n: as fast as a power of two for pocketfft, up to ~40% shorter."""
    best, p5 = 1 << (n - 1).bit_length(), 1
    while p5 < best:
        p35 = p5
        while p35 < best:
            size = p35 << max(0, (n - 1) // p35).bit_length()  # p35·2^a ≥ n
            best, p35 = min(best, size), p35 * 3
        p5 *= 5
    return best


def _correlations(ref: np.ndarray, est: np.ndarray, L: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """R[b, t, k, l] = Σ_m r_k[m] r_l[m+t] and g[b, d, k, j] = Σ_m r_k[m] e_j[m+d] for lags 0..L-1.

    These are the Gram matrix of the L delayed (zero-padded) references and their products with the
    estimates: the normal equations of museval's distortion filters. Also returns the references'
    spectra and FFT size for reuse.
    """
    n_fft = _fft_len(ref.shape[-1] + L - 1)  # ≥ N + L − 1: linear, not circular, lags
    rf, ef = np.fft.rfft(ref, n_fft), np.fft.rfft(est, n_fft)
    B, K = ref.shape[:2]
    R, g = np.empty((B, L, K, K)), np.empty((B, L, K, est.shape[1]))
    for k in range(K):  # one row at a time keeps memory at O(K·n_fft) per item for long tracks
        R[:, :, k] = np.fft.irfft(rf[:, k, None].conj() * rf, n_fft)[..., :L].transpose(0, 2, 1)
        g[:, :, k] = np.fft.irfft(rf[:, k, None].conj() * ef, n_fft)[..., :L].transpose(0, 2, 1)
    return R, g, rf, n_fft


def _lag_blocks(R: np.ndarray, s: int) -> np.ndarray:
    """Blocks of the Gram matrix for groups of ``s`` consecutive lags: out[b, p, (a,k), (c,l)] = R(s·p + a − c)[k, l].

    ``R`` holds lags 0..L−1; negative lags come from R(−t) = R(t)ᵀ. With s = 1 this is the K×K block row.
    """
    B, L, K, _ = R.shape
    both = np.concatenate([R[:, :0:-1].transpose(0, 1, 3, 2), R], axis=1)  # index t + L − 1 → R(t)
    lag = s * np.arange(L // s)[:, None, None] + np.arange(s)[:, None] - np.arange(s) + L - 1
    return both[:, lag].transpose(0, 1, 2, 4, 3, 5).reshape(B, L // s, s * K, s * K)


def _dense_solve(R: np.ndarray, g: np.ndarray) -> np.ndarray:
    """Reference solver (what museval does, including its eps·I): assemble the (K·L)² matrix and solve."""
    B, L, K, _ = R.shape
    G = _lag_blocks(R, L)[:, 0] + np.finfo(float).eps * np.eye(L * K)
    return np.linalg.solve(G, g.reshape(B, L * K, -1)).reshape(g.shape)


def _block_levinson(R: np.ndarray, g: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Solve Σ_d' R(d − d') x(d') = g(d), d < P, with R(−t) = R(t)ᵀ (R: (B, P, M, M), g: (B, P, M, J)).

    Block Levinson (Whittle/Wiggins–Robinson) recursion with forward and backward predictors, O(P²M³).
    Returns x and the final forward prediction-error matrix (its diagonal tells how well conditioned it was).
    """
    B, P, M, _ = R.shape
    J = g.shape[-1]
    fwd = np.ascontiguousarray(R[:, ::-1].transpose(0, 2, 1, 3))  # [b, k, i, l] = R(P−1−i)[k, l]
    bwd = np.ascontiguousarray(R.transpose(0, 3, 1, 2))  # [b, k, t, l] = R(t)[l, k]
    A = np.zeros((B, P, M, M))  # forward predictor blocks a_0..a_n (a_0 = I)
    Bk = np.zeros((B, P, M, M))  # backward predictor, right-aligned: b_i at P−1−n+i (b_n = I)
    X = np.zeros((B, P, M, J))
    A[:, 0] = Bk[:, P - 1] = np.eye(M)
    Pa, Pb = R[:, 0].copy(), R[:, 0].copy()
    X[:, 0] = np.linalg.solve(Pa, g[:, 0])
    for n in range(P - 1):
        m = (n + 1) * M
        Rn = fwd[:, :, P - 2 - n : P - 1].reshape(B, M, m)  # R(n+1−i), i = 0..n
        a, b = A[:, : n + 1].reshape(B, m, M), Bk[:, P - 1 - n :].reshape(B, m, M)
        da, pred = Rn @ a, Rn @ X[:, : n + 1].reshape(B, m, J)
        db = bwd[:, :, 1 : n + 2].reshape(B, M, m) @ b
        ka, kb = np.linalg.solve(Pb, da), np.linalg.solve(Pa, db)
        a_kb = a @ kb
        A[:, 1 : n + 2] -= (b @ ka).reshape(B, n + 1, M, M)
        Bk[:, P - 2 - n : P - 1] -= a_kb.reshape(B, n + 1, M, M)
        Pa, Pb = Pa - db @ ka, Pb - da @ kb
        step = np.linalg.solve(Pb, g[:, n + 1] - pred)
        X[:, : n + 2] += (Bk[:, P - 2 - n :].reshape(B, (n + 2) * M, M) @ step).reshape(B, n + 2, M, J)
    return X, Pa


def _solve_filters(R: np.ndarray, g: np.ndarray) -> np.ndarray:
    """Distortion filters x: Σ_d' R(d − d') x(d') = g(d) for lags d < L — museval's normal equations.

    Solved by block Levinson on groups of up to 8 lags (fewer, larger steps: ~3x faster than single lags
    in numpy) in O(L²K³) instead of museval's dense O((LK)³) solve. Items whose references are
    (numerically) perfectly predictable, where the recursion loses accuracy, use the dense solve.
    """
    B, L, K, J = g.shape
    s = math.gcd(L, 8)
    grouped = _lag_blocks(R, s)
    try:
        X, Pa = _block_levinson(grouped, g.reshape(B, L // s, s * K, J))
        X = X.reshape(g.shape)
        diag = np.diagonal(grouped[:, 0], axis1=-2, axis2=-1)
        rel = np.diagonal(Pa, axis1=-2, axis2=-1) / np.where(diag > 0, diag, 1.0)
        bad = ~np.isfinite(X).all(axis=(1, 2, 3)) | (rel.min(-1) < _REL_PRED_ERROR_FLOOR)
    except np.linalg.LinAlgError:
        X, bad = np.zeros(g.shape), np.ones(B, dtype=bool)
    if bad.any():
        X[bad] = _dense_solve(R[bad], g[bad])
    return X


def _bss_eval_v4(ref: np.ndarray, est: np.ndarray, window: int, hop: int, L: int) -> np.ndarray:
    """museval v4 (framewise_filters=False, bss_eval_images) for mono (B, K, N) → (3, B, K, n_frames).

    Frames follow museval's ``Framing``: n = ⌊(N − W + H)/H⌋ full frames (a trailing partial frame is
    dropped); one whole-signal frame when W ≥ N. A frame where any reference or any estimate is all
    zeros is NaN for every source; so is every frame of an item with an all-zero stem (museval raises).
    """
    B, K, N = ref.shape
    W, n_frames = (window, (N - window + hop) // hop) if window < N else (N, 1)
    out = np.full((3, B, K, n_frames), np.nan)
    ok = ~((ref == 0).all(-1).any(-1) | (est == 0).all(-1).any(-1))
    if not ok.any():
        return out
    ref, est = ref[ok], est[ok]
    R, g, ref_spec, _ = _correlations(ref, est, L)
    # filters from the whole clip: est j onto all references (C) and onto its own reference (Cj)
    own_R = R * np.eye(K)  # block-diagonal system = K independent single-reference problems
    X = _solve_filters(np.concatenate([R, own_R]), np.concatenate([g, g]))
    n_fft = _fft_len(W + L - 1)
    C = np.fft.rfft(X[: len(ref)].transpose(0, 3, 2, 1), n_fft)  # [b, j, k, f]
    Cj = np.fft.rfft(np.diagonal(X[len(ref) :], axis1=2, axis2=3).transpose(0, 2, 1), n_fft)  # [b, j, f]
    starts = np.arange(n_frames) * hop
    chunk = max(1, int(2**23 // (len(ref) * K * n_fft)))  # bound the frame spectra to ~128 MB
    res = np.full((3, len(ref), K, n_frames), np.nan)
    for f0 in range(0, n_frames, chunk):
        if W == N:  # the whole clip: its spectrum is already known
            s, e, S = ref[:, :, None], est[:, :, None], ref_spec[:, :, None]
        else:
            idx = starts[f0 : f0 + chunk, None] + np.arange(W)
            s, e = ref[:, :, idx], est[:, :, idx]  # (b, k, frames, W)
            S = np.fft.rfft(s, n_fft)
        live = ~((s == 0).all(-1).any(1) | (e == 0).all(-1).any(1))  # (b, frames)
        # museval's decomposition of each zero-padded frame (length W + L − 1), via its projections
        p_all = np.fft.irfft(np.einsum("bkfn,bjkn->bjfn", S, C), n_fft)[..., : W + L - 1]
        p_own = np.fft.irfft(S * Cj[:, :, None], n_fft)[..., : W + L - 1] if K > 1 else p_all  # K = 1: SIR = inf
        artif = ((e - p_all[..., :W]) ** 2).sum(-1) + (p_all[..., W:] ** 2).sum(-1)
        sdr = _safe_db((s**2).sum(-1), ((e - s) ** 2).sum(-1))
        sir = _safe_db((p_own**2).sum(-1), ((p_all - p_own) ** 2).sum(-1))
        sar = _safe_db((p_all**2).sum(-1), artif)
        res[:, :, :, f0 : f0 + chunk] = np.where(live[:, None], np.stack([sdr, sir, sar]), np.nan)
    out[:, ok] = res
    return out


def _as_numpy(x: Tensor) -> np.ndarray:
    return x.detach().to("cpu", torch.float64).numpy()


def _as_dict(values: np.ndarray) -> dict[str, Tensor]:
    names = ("sdr", "sir", "sar")
    return {name: torch.from_numpy(np.ascontiguousarray(v)) for name, v in zip(names, values, strict=True)}


def bss_eval(estimates: Tensor, references: Tensor, filter_length: int = FILTER_LENGTH) -> dict[str, Tensor]:
    """Whole-signal BSS Eval v4 SDR/SIR/SAR in dB, (..., K, T) → {"sdr","sir","sar"}: (..., K) CPU float64.

    Same numbers as museval.evaluate(mode="v4") with one window spanning the clip, estimate k scored
    against reference k (no permutation). Items with an all-zero stem are NaN (museval raises).
    """
    est, ref = _as_numpy(estimates), _as_numpy(references)
    if est.shape != ref.shape or est.ndim < 2:
        raise ValueError(f"estimates {tuple(est.shape)} and references {tuple(ref.shape)} must both be (..., K, T)")
    lead, (K, N) = est.shape[:-2], est.shape[-2:]
    out = _bss_eval_v4(ref.reshape(-1, K, N), est.reshape(-1, K, N), N, N, filter_length)
    return _as_dict(out[..., 0].reshape((3, *lead, K)))


@functools.cache
def load_museval_metrics():
    """``museval.metrics`` (BSS Eval v4 reference code), loaded without running ``museval/__init__``
    when that fails: it imports musdb → stempeg, which refuses to import without ffmpeg binaries."""
    try:
        from museval import metrics
        return metrics
    except Exception:  # noqa: BLE001 - stempeg raises RuntimeError, missing deps ImportError
        spec = importlib.util.find_spec("museval")
        if spec is None or not spec.submodule_search_locations:
            raise ImportError("museval is not installed") from None
        path = os.path.join(spec.submodule_search_locations[0], "metrics.py")
        mod_spec = importlib.util.spec_from_file_location("_museval_metrics", path)
        module = importlib.util.module_from_spec(mod_spec)
        mod_spec.loader.exec_module(module)
        return module


def bss_eval_framewise(estimates: Tensor, references: Tensor, sample_rate: int, window_s: float, hop_s: float,
                       implementation: str = "fast", filter_length: int = FILTER_LENGTH) -> dict[str, Tensor]:
    """Framewise BSS Eval v4 as museval computes it, (K, T) → {"sdr","sir","sar"}: (K, n_frames).

    Window and hop are converted like museval.eval_mus_track (``int(seconds * rate)``); filters come from
    the whole clip, metrics from each frame; a trailing partial frame is dropped; frames where any
    reference or estimate is all zeros are NaN. ``implementation="museval"`` runs museval itself (for
    paper-style reports and cross-checks) but returns all NaN instead of raising on an all-zero stem.
    """
    est, ref = _as_numpy(estimates), _as_numpy(references)
    if est.shape != ref.shape or est.ndim != 2:
        raise ValueError(f"estimates {tuple(est.shape)} and references {tuple(ref.shape)} must both be (K, T)")
    window, hop = int(window_s * sample_rate), int(hop_s * sample_rate)
    if window <= 0 or hop <= 0:
        raise ValueError(f"window {window_s} s / hop {hop_s} s are under one sample at {sample_rate} Hz")
    if implementation == "fast":
        return _as_dict(_bss_eval_v4(ref[None], est[None], window, hop, filter_length)[:, 0])
    if implementation != "museval":
        raise ValueError(f"implementation must be 'fast' or 'museval', not {implementation!r}")
    K, N = ref.shape
    if (ref == 0).all(-1).any() or (est == 0).all(-1).any():
        n_frames = (N - window + hop) // hop if window < N else 1
        return _as_dict(np.full((3, K, n_frames), np.nan))
    sdr, _isr, sir, sar, _perm = load_museval_metrics().bss_eval(  # the exact call of museval.evaluate, v4
        ref[..., None], est[..., None], window=window, hop=hop, compute_permutation=False,
        filters_len=filter_length, framewise_filters=False, bsseval_sources_version=False)
    return _as_dict(np.stack([sdr, sir, sar]))


# ------------------------------------------------------------------------------------------ aggregation
def aggregate(values: Tensor | np.ndarray | Sequence[float], how: str) -> dict[str, Any]:
    """NaN-aware mean or median: {"value", "n" (non-NaN count), "n_nan", "how", "note"}.

    NaN marks an undefined score (silent reference/frame); it is excluded and counted, never read as 0.
    If nothing is left, value is NaN and ``note`` says why. ±inf counts as a value (as in museval).
    """
    if how not in ("mean", "median"):
        raise ValueError(f"how must be 'mean' or 'median', not {how!r}")
    x = values.detach().to("cpu", torch.float64).numpy() if isinstance(values, Tensor) else values
    x = np.asarray(x, dtype=np.float64).ravel()
    nan = np.isnan(x)
    valid = x[~nan]
    if valid.size:
        value, note = float(np.mean(valid) if how == "mean" else np.median(valid)), ""
    else:
        value = math.nan
        note = f"all {x.size} values are NaN" if x.size else "no values"
    return {"value": value, "n": int(valid.size), "n_nan": int(nan.sum()), "how": how, "note": note}


# ---------------------------------------------------------------------------------------------- flavour
@dataclass(frozen=True)
class MetricFlavour:
    """How one reported number was computed, so results stay comparable across papers and runs."""

    metric: str
    definition: str
    implementation: str
    filter_length: int | None
    window_s: float | None  # None: whole clip
    hop_s: float | None
    frame_aggregation: str | None  # how frames make a clip score (None: whole clip)
    clip_aggregation: str  # how clip scores make the headline number
    nan_policy: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def flavours(framewise: bool, window_s: float | None = None, hop_s: float | None = None,
             frame_aggregation: str = "median", clip_aggregation: str = "mean", *, bss: bool = True,
             bss_implementation: str = "fast") -> dict[str, dict[str, Any]]:
    """The ``flavour`` entry of results.json: one MetricFlavour dict per reported metric."""
    clip_nan = "clips with a silent reference are NaN, excluded from the clip aggregation and counted in n_nan"
    out = {
        "si_sdr": MetricFlavour(
            "si_sdr", "SI-SDR, zero-mean, Le Roux et al. 2019; float64", "lightning_sep.si_sdr",
            None, None, None, None, clip_aggregation,
            "NaN when the reference has no energy after mean removal; " + clip_nan),
        "si_sdri": MetricFlavour(
            "si_sdri", "SI-SDR(estimate) − SI-SDR(mixture), same reference", "lightning_sep.si_sdr_improvement",
            None, None, None, None, clip_aggregation,
            "NaN when the reference has no energy after mean removal; " + clip_nan),
    }
    if bss:
        if bss_implementation == "museval":
            impl = f"museval {_version('museval')} (museval.metrics.bss_eval, v4)"
        else:
            impl = (f"lightning_sep.bss_eval (numpy float64, block-Levinson) — BSS Eval v4 as museval "
                    f"{_version('museval')}, cross-checked within 0.05 dB by benchmarks/metrics.py")
        nan = ("frames with a silent reference or estimate are NaN, excluded from the frame median and counted; "
               if framewise else "") + clip_nan
        definitions = {
            "sdr": "BSS Eval v4 SDR (museval/SiSEC 2018, bss_eval_images): mono → 10·log10(‖s‖²/‖ŝ−s‖²)",
            "sir": "BSS Eval v4 SIR: 512-tap time-invariant distortion filters fitted on the whole clip",
            "sar": "BSS Eval v4 SAR: 512-tap time-invariant distortion filters fitted on the whole clip",
        }
        for name, definition in definitions.items():
            out[name] = MetricFlavour(
                name, definition, impl, FILTER_LENGTH, window_s if framewise else None,
                hop_s if framewise else None, frame_aggregation if framewise else None, clip_aggregation, nan)
    return {name: f.to_dict() for name, f in out.items()}


# -------------------------------------------------------------------------------------------- per clip
def score_clip(estimates: Mapping[str, Tensor], references: Mapping[str, Tensor], mixture: Tensor, *,
               bss: bool = True, framewise: tuple[float, float] | None = None, sample_rate: int | None = None,
               ) -> dict[str, dict[str, float]]:
    """All metrics of one evaluation clip: {stem: {"si_sdr", "si_sdri"[, "sdr", "sir", "sar"]}} as floats.

    Stems are scored in the order of ``references`` (BSS Eval needs all of them at once). With
    ``framewise=(window_s, hop_s)`` SDR/SIR/SAR are the NaN-ignoring median over museval frames (as
    SiSEC reports), which needs ``sample_rate``; otherwise one whole-clip value.
    """
    stems = list(references)
    if set(estimates) != set(stems):
        raise ValueError(f"estimates have stems {sorted(estimates)}, references {sorted(stems)}")
    est = torch.stack([estimates[s] for s in stems])
    ref = torch.stack([references[s].to(est.device) for s in stems])
    scores = {"si_sdr": si_sdr(est, ref), "si_sdri": si_sdr_improvement(est, ref, mixture.to(est.device))}
    out = {s: {m: float(v[k]) for m, v in scores.items()} for k, s in enumerate(stems)}
    if bss:
        if framewise is None:
            for m, v in bss_eval(est, ref).items():
                for k, s in enumerate(stems):
                    out[s][m] = float(v[k])
        else:
            if sample_rate is None:
                raise ValueError("framewise BSS Eval needs sample_rate")
            frames = bss_eval_framewise(est, ref, sample_rate, *framewise)
            for m, v in frames.items():
                for k, s in enumerate(stems):
                    out[s][m] = aggregate(v[k], "median")["value"]
    return out
