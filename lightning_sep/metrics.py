"""Separation metrics: SI-SDR(i) and BSS Eval v4 SDR/SIR/SAR (whole clip or museval-style frames), their
NaN-aware aggregation, and the provenance ("flavour") that goes into results.json.

Precision: SI-SDR runs in float64 on the input's device (float32 on MPS), with autocast off, so fp16/bf16
inputs give the same number as their float32 upcast. BSS Eval runs on the CPU in float64 numpy/scipy.

BSS Eval is the v4 definition used by museval / SiSEC 2018 (``museval.evaluate(mode="v4")``): 512-tap
distortion filters estimated once on the whole clip, metrics from the ``bss_eval_images`` decomposition.
For mono stems that makes SDR = 10·log10(‖s‖² / ‖ŝ − s‖²) (no filter or gain allowance, unlike
``bss_eval_sources`` SDR in mir_eval / fast_bss_eval); SIR and SAR use the filtered projections. We
reimplement it because fast_bss_eval computes the ``bss_eval_sources`` SDR (up to several dB off museval
whenever the estimate has a gain or filter error) and, like museval, spends its time in a dense
(K·512)² solve. Here the same normal equations (float64, the same correlations) are solved by block
Levinson recursion in O(K³·512²) (the all-references filters) and scipy's Levinson–Durbin (each estimate
on its own reference), with museval's dense solve as the fallback for (numerically) perfectly predictable
references; the projection energies are quadratic forms in the Gram matrix, evaluated on FFTs of ~2·512
points rather than of the clip (exactly as museval's time-domain sums where that would lose precision).
Leading batch dims share one recursion. ``benchmarks/metrics.py`` checks agreement with museval 0.4.1 and
the speed-up.
"""
from __future__ import annotations

import functools
import importlib.metadata
import importlib.util
import math
import os
import threading
from dataclasses import asdict, dataclass
from typing import Any, Mapping, Sequence

import numpy as np
import scipy.fft
import scipy.linalg
import torch
from scipy.linalg import lapack
from torch import Tensor

FILTER_LENGTH = 512
_REL_PRED_ERROR_FLOOR = 1e-10  # Levinson is only trusted while references stay this unpredictable (else dense solve)
_CANCELLATION_FLOOR = 1e-8  # lag-domain energies are kept while under ~1e-15/1e-8 of them is rounding (else exact)
_SCRATCH_BYTES = 2**26  # work arrays (spectra, correlations) per chunk of items; kept per thread up to this size


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


_SCRATCH = threading.local()


def _scratch(name: str, shape: tuple[int, ...], dtype: type) -> np.ndarray:
    """An uninitialised work array, kept per thread for the next call while all of them fit ``_SCRATCH_BYTES``.

    Fresh multi-MB arrays are mapped from and returned to the OS on every call, and the page faults of
    touching them again cost as much as the FFTs that fill them on small VMs. Callers overwrite what they
    use and return nothing that aliases it.
    """
    cache = _SCRATCH.__dict__
    arr = cache.get(name)
    if arr is not None and arr.shape == shape and arr.dtype == dtype:
        return arr
    cache.pop(name, None)
    arr = np.empty(shape, dtype)
    if arr.nbytes + sum(a.nbytes for a in cache.values()) <= _SCRATCH_BYTES:
        cache[name] = arr
    return arr


def _scratch_bytes_per_item(K: int, J: int, n_fft: int) -> int:
    """Work memory of one item in ``_correlations``: spectra, cross-spectra and correlations."""
    rows = K * (K + 1) // 2 + K * J
    return 16 * (n_fft // 2 + 1) * (2 * K + J + rows) + 8 * n_fft * rows


def _energy(spec: np.ndarray, n_fft: int) -> np.ndarray:
    """Σ x² over the n_fft samples of real signals from their rfft spectra (Parseval), (..., F) → (...)."""
    weights = np.full(spec.shape[-1], 2.0)
    weights[0] = 1.0
    if n_fft % 2 == 0:
        weights[-1] = 1.0  # Nyquist bin
    return (spec.real**2 + spec.imag**2) @ weights / n_fft


def _correlations(ref: np.ndarray, est: np.ndarray, L: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """R[b, t, k, l] = Σ_m r_k[m] r_l[m+t] and g[b, d, k, j] = Σ_m r_k[m] e_j[m+d] for lags 0..L-1.

    These are the Gram matrix of the L delayed (zero-padded) references and their products with the
    estimates: the normal equations of museval's distortion filters. One rfft of all signals and one irfft
    of the K(K+1)/2 reference pairs (R_lk(t) = R_kl(−t) comes from the same circular correlation, so the
    Gram matrix is exactly symmetric, as museval's) and the K·J reference-estimate pairs. Also returns the
    spectra [references, estimates] (B, K + J, F), reused for the projections — a per-thread work array,
    valid until the next call — and the FFT size.
    """
    B, K, N = ref.shape
    J = est.shape[1]
    n_fft = _fft_len(N + L - 1)  # ≥ N + L − 1: linear, not circular, lags
    n_freq = n_fft // 2 + 1
    k1, k2 = np.triu_indices(K)
    rows = list(zip(k1, k2, strict=True)) + [(k, K + j) for k in range(K) for j in range(J)]  # (ref, signal)
    spec = _scratch("spec", (B, K + J, n_freq), complex)
    np.fft.rfft(ref, n_fft, out=spec[:, :K])
    np.fft.rfft(est, n_fft, out=spec[:, K:])
    ref_conj = np.conj(spec[:, :K], out=_scratch("ref_conj", (B, K, n_freq), complex))
    cross = _scratch("cross", (B, len(rows), n_freq), complex)
    for i, (k, other) in enumerate(rows):
        np.multiply(ref_conj[:, k], spec[:, other], out=cross[:, i])
    corr = np.fft.irfft(cross, n_fft, out=_scratch("corr", (B, len(rows), n_fft), float))
    n_pair = len(k1)
    R = np.empty((B, L, K, K))
    R[:, :, k1, k2] = corr[:, :n_pair, :L].transpose(0, 2, 1)
    upper = k1 < k2  # R_lk(t) = R_kl(−t): circular lag n_fft − t
    R[:, :, k2[upper], k1[upper]] = corr[:, :n_pair][:, upper][..., -np.arange(L) % n_fft].transpose(0, 2, 1)
    g = np.ascontiguousarray(corr[:, n_pair:, :L].reshape(B, K, J, L).transpose(0, 3, 1, 2))
    return R, g, spec, n_fft


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


def _levinson_one(R: np.ndarray, g: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``_block_levinson`` for a single system (R: (P, M, M), g: (P, M, J)), the per-clip hot path.

    Same recursion, same results, with less overhead per step: LAPACK Cholesky solves (the prediction-error
    matrices are symmetric positive definite; a failure raises LinAlgError), products into reused buffers,
    and the solution update of step n deferred to step n + 1, where one solve with Pb serves it and the
    next forward reflection.
    """
    P, M, _ = R.shape
    posv = lapack.dposv
    fwd = np.ascontiguousarray(np.swapaxes(R[::-1], 0, 1)).reshape(M, P * M)  # [k, i·M + l] = R(P−1−i)[k, l]
    A, Bk, X = np.zeros((P * M, M)), np.zeros((P * M, M)), np.zeros((P * M, g.shape[-1]))
    A[:M] = Bk[(P - 1) * M :] = np.eye(M)  # a_0..a_n stacked; b_0..b_n right-aligned (b_n = I)
    buf_a, buf_b, buf_x = np.empty_like(A), np.empty_like(A), np.empty_like(X)
    rhs, pred = np.empty((M, M + X.shape[1])), np.zeros((M, X.shape[1]))
    Pa = Pb = R[0].copy()
    for n in range(P - 1):
        m, top = (n + 1) * M, (P - 2 - n) * M
        Rn, a, b = fwd[:, top : (P - 1) * M], A[:m], Bk[top + M :]  # R(n+1−i), a_i, b_i for i = 0..n
        np.matmul(Rn, a, out=rhs[:, :M])  # da
        np.subtract(g[n], pred, out=rhs[:, M:])  # residual of the order-(n−1) solution at lag n
        _, sol, info = posv(Pb, rhs)
        if info:
            raise np.linalg.LinAlgError("prediction-error matrix is not positive definite")
        da, ka, step = rhs[:, :M], sol[:, :M], sol[:, M:]
        np.matmul(b, step, out=buf_x[:m])  # order-n solution: x += b·Pb⁻¹(g_n − pred)
        X[:m] += buf_x[:m]
        np.matmul(Rn, X[:m], out=pred)
        db = da.T  # Σ_i R(i+1)ᵀ b_i = daᵀ for a symmetric block-Toeplitz matrix
        _, kb, info = posv(Pa, db)
        if info:
            raise np.linalg.LinAlgError("prediction-error matrix is not positive definite")
        np.matmul(b, ka, out=buf_a[:m])
        np.matmul(a, kb, out=buf_b[:m])
        A[M : m + M] -= buf_a[:m]
        Bk[top : top + m] -= buf_b[:m]
        Pa, Pb = Pa - db @ ka, Pb - da @ kb
    _, step, info = posv(Pb, g[P - 1] - pred)
    if info:
        raise np.linalg.LinAlgError("prediction-error matrix is not positive definite")
    X += Bk @ step
    return X.reshape(P, M, -1), Pa


def _block_levinson(R: np.ndarray, g: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Solve Σ_d' R(d − d') x(d') = g(d), d < P, with R(−t) = R(t)ᵀ (R: (..., P, M, M), g: (..., P, M, J)).

    Block Levinson (Whittle/Wiggins–Robinson) recursion with forward and backward predictors, O(P²M³),
    over any leading batch dims (one Python loop for all systems; ``_levinson_one`` is the single-system
    version). The symmetry makes the backward residual the transpose of the forward one (one product
    fewer per step); products go to reused buffers. Returns x and the final forward prediction-error
    matrix (its diagonal tells how well conditioned the system was).
    """
    *lead, P, M, _ = R.shape
    lead = tuple(lead)
    J = g.shape[-1]
    solve = np.linalg.solve
    # fwd[..., k, i·M + l] = R(P−1−i)[k, l]: the block row R(n+1), ..., R(1) is a contiguous column range
    fwd = np.ascontiguousarray(np.swapaxes(R[..., ::-1, :, :], -3, -2)).reshape(lead + (M, P * M))
    A = np.zeros(lead + (P * M, M))  # forward predictor blocks a_0..a_n stacked (a_0 = I)
    Bk = np.zeros(lead + (P * M, M))  # backward predictor, right-aligned: b_i at block P−1−n+i (b_n = I)
    X = np.zeros(lead + (P * M, J))
    A[..., :M, :] = Bk[..., (P - 1) * M :, :] = np.eye(M)
    buf_a, buf_b, buf_x = np.empty_like(A), np.empty_like(A), np.empty_like(X)
    Pa = Pb = R[..., 0, :, :].copy()
    X[..., :M, :] = solve(Pa, g[..., 0, :, :])
    for n in range(P - 1):
        m, top = (n + 1) * M, (P - 2 - n) * M
        Rn = fwd[..., top : (P - 1) * M]  # R(n+1−i), i = 0..n
        a, b = A[..., :m, :], Bk[..., top + M :, :]
        da, pred = Rn @ a, Rn @ X[..., :m, :]
        db = np.swapaxes(da, -1, -2)  # Σ_i R(i+1)ᵀ b_i = daᵀ for a symmetric block-Toeplitz matrix
        ka, kb = solve(Pb, da), solve(Pa, db)
        np.matmul(b, ka, out=buf_a[..., :m, :])
        np.matmul(a, kb, out=buf_b[..., :m, :])
        A[..., M : m + M, :] -= buf_a[..., :m, :]
        Bk[..., top : top + m, :] -= buf_b[..., :m, :]
        Pa, Pb = Pa - db @ ka, Pb - da @ kb
        step = solve(Pb, g[..., n + 1, :, :] - pred)
        np.matmul(Bk[..., top:, :], step, out=buf_x[..., : m + M, :])
        X[..., : m + M, :] += buf_x[..., : m + M, :]
    return X.reshape(lead + (P, M, J)), Pa


def _levinson_checked(R: np.ndarray, g: np.ndarray, s: int) -> tuple[np.ndarray, np.ndarray]:
    """Block Levinson on groups of ``s`` lags for a batch (B, L, K, K) → (x (B, L, K, J), ok (B,)).

    Not ok: an item whose references are (numerically) perfectly predictable, where the recursion
    loses accuracy (relative prediction error under the floor, non-finite output, or a prediction-error
    matrix that is not positive definite).
    """
    B, L, K, J = g.shape
    grouped = _lag_blocks(R, s)
    gg = g.reshape(B, L // s, s * K, J)
    if B == 1:
        X, Pa = _levinson_one(grouped[0], gg[0])
        X, Pa = X[None], Pa[None]
    else:
        X, Pa = _block_levinson(grouped, gg)
    X = X.reshape(g.shape)
    diag = np.diagonal(grouped[:, 0], axis1=-2, axis2=-1)
    rel = np.diagonal(Pa, axis1=-2, axis2=-1) / np.where(diag > 0, diag, 1.0)
    ok = np.isfinite(X).all(axis=(1, 2, 3)) & (rel.min(-1) >= _REL_PRED_ERROR_FLOOR)
    return X, ok


def _solve_filters(R: np.ndarray, g: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Distortion filters x: Σ_d' R(d − d') x(d') = g(d) for lags d < L — museval's normal equations.

    Solved by block Levinson on groups of lags in O(L²K³) instead of museval's dense O((LK)³) solve:
    groups of 8 lags for one item (fewer, larger steps: Python overhead), of 4 for a batch (which shares
    the steps, so arithmetic dominates). Items whose references are (numerically) perfectly predictable,
    where the recursion loses accuracy, use the dense solve; if one item breaks a batched recursion, each
    item is retried on its own. Returns x (B, L, K, J) and that fallback mask.
    """
    B, L, K, J = g.shape
    s = math.gcd(L, 8 if B == 1 else 4)
    try:
        X, ok = _levinson_checked(R, g, s)
    except np.linalg.LinAlgError:  # one item broke the batched recursion: retry each on its own
        if B == 1:
            X, ok = np.zeros(g.shape), np.zeros(1, dtype=bool)
        else:
            parts = [_solve_filters(R[b : b + 1], g[b : b + 1]) for b in range(B)]
            return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])
    bad = ~ok
    if bad.any():
        X[bad] = _dense_solve(R[bad], g[bad])
    return X, bad


def _own_filters(R: np.ndarray, g: np.ndarray, bad: np.ndarray) -> np.ndarray:
    """Filters of estimate j on delays of its own reference j only (museval's ``Cj``): (B, L, K).

    Each is a symmetric Toeplitz system (Levinson–Durbin in scipy, O(L²)). It is a principal submatrix of
    the item's full Gram matrix, so at least as well conditioned (eigenvalue interlacing): items whose
    full system needed the dense solve use it here too, as does any system Levinson fails on.
    """
    B, L, K, _ = R.shape
    out = np.empty((B, L, K))
    for b in range(B):
        for j in range(K):
            x = None
            if not bad[b]:
                try:
                    x = scipy.linalg.solve_toeplitz(R[b, :, j, j], g[b, :, j, j], check_finite=False)
                except np.linalg.LinAlgError:
                    x = None
            if x is None or not np.isfinite(x).all():
                x = _dense_solve(R[b : b + 1, :, j : j + 1, j : j + 1], g[b : b + 1, :, j : j + 1, j : j + 1]).ravel()
            out[b, :, j] = x
    return out


def _quadratic_form(H: np.ndarray, V: np.ndarray, weights: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Σ_kl v_kᵀ T_kl v_l for filters v (spectra V (B, J, K, F)) and Toeplitz blocks T_kl given by the spectra H
    (B, K, K, F) of their circulant embedding (size n ≥ 2L − 1, so the embedding is exact on L-tap filters).
    Returns (B, J) values and the sum of the magnitudes of the terms (the scale of their rounding error).
    """
    value = np.einsum("bklf,bjlf->bjkf", H, V)
    value = (V.real * value.real + V.imag * value.imag).sum(2) @ weights / n
    absV = np.abs(V)
    scale = (np.einsum("bklf,bjlf->bjkf", np.abs(H), absV) * absV).sum(2) @ weights / n
    return value, scale


def _whole_clip(ref: np.ndarray, est: np.ndarray, spec: np.ndarray, n_fft: int, R: np.ndarray, g: np.ndarray,
                X: np.ndarray, own: np.ndarray) -> np.ndarray:
    """museval's decomposition of the whole (zero-padded) clip: (3, B, K) SDR, SIR, SAR.

    p_all = Σ_k r_k ∗ x_jk and p_own = r_j ∗ own_j are projections onto delayed references, so their
    energies are quadratic forms in the Gram matrix: ‖p_all‖² = xᵀGx, ‖p_own‖² = ownᵀG_jj own,
    ‖p_all − p_own‖² = dᵀGd (d = x − own on source j), evaluated with FFTs of size ~2L instead of the
    clip length; the artifact energy ‖e − p_all‖² = ‖e‖² − 2xᵀg + xᵀGx. Where one of these would lose
    more than 8 digits to cancellation (SAR ≳ 80 dB, or a tiny interference or projection against large
    terms; short of that, rounding stays ≲ 1e-6 relative, ≲ 1e-5 dB), that item's energies come from the
    projections' spectra on the clip's FFT grid instead (Parseval: museval's time-domain sums, exactly).
    SDR (mono v4) = ‖s‖²/‖e − s‖² in the time domain.
    """
    B, K, N = ref.shape
    L, J = X.shape[1], X.shape[-1]
    n_small = _fft_len(2 * L - 1)
    h = np.zeros((B, K, K, n_small))  # circulant embedding of R(t), |t| < L
    h[..., :L] = R.transpose(0, 2, 3, 1)
    h[..., n_small - L + 1 :] = R[:, :0:-1].transpose(0, 3, 2, 1)  # h_kl(−t) = R_kl(−t) = R_lk(t)
    H = scipy.fft.rfft(h, n_small)
    V = scipy.fft.rfft(np.concatenate([X.transpose(0, 3, 2, 1), own.transpose(0, 2, 1)[:, :, None]], axis=2), n_small)
    V_all, V_own = V[:, :, :K], V[:, :, K]  # [b, j, k, f], [b, j, f]
    weights = np.full(H.shape[-1], 2.0)
    weights[0] = 1.0
    if n_small % 2 == 0:
        weights[-1] = 1.0
    jj = np.arange(J)
    e_all, s_all = _quadratic_form(H, V_all, weights, n_small)
    H_own, power_own = H[:, jj, jj], V_own.real**2 + V_own.imag**2  # [b, j, f]: T_jj, own_j
    e_own, s_own = (power_own * H_own.real) @ weights / n_small, (power_own * np.abs(H_own)) @ weights / n_small
    if K > 1:
        D = V_all.copy()
        D[:, jj, jj] -= V_own
        e_int, s_int = _quadratic_form(H, D, weights, n_small)
    else:  # K = 1: p_all = p_own, SIR = inf (museval's convention)
        e_int = s_int = np.zeros((B, J))
    e_est = (est**2).sum(-1)
    xg = np.einsum("bdkj,bdkj->bj", X, g)
    artif = e_est - 2 * xg + e_all
    s_art = e_est + 2 * np.abs(xg) + s_all
    floor = _CANCELLATION_FLOOR
    lossy = (e_all < floor * s_all) | (e_own < floor * s_own) | (e_int < floor * s_int) | (artif < floor * s_art)
    redo = np.flatnonzero(lossy.any(-1))
    if redo.size:
        S, E = spec[redo, :K], spec[redo, K:]
        C = scipy.fft.rfft(np.concatenate([X[redo].transpose(0, 3, 2, 1), own[redo].transpose(0, 2, 1)[:, :, None]],
                                          axis=2), n_fft)
        p_all = (S[:, None] * C[:, :, :K]).sum(2)  # [b, j, f] = Σ_k S_k C_jk
        p_own = S * C[:, :, K]
        e_all[redo], e_own[redo], artif[redo] = (_energy(x, n_fft) for x in (p_all, p_own, E - p_all))
        if K > 1:
            e_int[redo] = _energy(p_all - p_own, n_fft)
    sdr = _safe_db((ref**2).sum(-1), ((est - ref) ** 2).sum(-1))
    return np.stack([sdr, _safe_db(e_own, e_int), _safe_db(e_all, artif)])


def _framewise(ref: np.ndarray, est: np.ndarray, X: np.ndarray, own: np.ndarray, W: int, hop: int,
               n_frames: int) -> np.ndarray:
    """museval's decomposition of each zero-padded frame (length W + L − 1), whole-clip filters: (3, B, K, frames)."""
    B, K, _ = ref.shape
    L = X.shape[1]
    n_fft = _fft_len(W + L - 1)
    C = scipy.fft.rfft(X.transpose(0, 3, 2, 1), n_fft)  # [b, j, k, f]
    Cj = scipy.fft.rfft(own.transpose(0, 2, 1), n_fft)  # [b, j, f]
    starts = np.arange(n_frames) * hop
    chunk = max(1, int(2**23 // (B * K * n_fft)))  # bound the frame spectra to ~128 MB
    res = np.full((3, B, K, n_frames), np.nan)
    for f0 in range(0, n_frames, chunk):
        idx = starts[f0 : f0 + chunk, None] + np.arange(W)
        s, e = ref[:, :, idx], est[:, :, idx]  # (b, k, frames, W)
        S = scipy.fft.rfft(s, n_fft)
        live = ~((s == 0).all(-1).any(1) | (e == 0).all(-1).any(1))  # (b, frames)
        p_all = scipy.fft.irfft(np.einsum("bkfn,bjkn->bjfn", S, C), n_fft)[..., : W + L - 1]
        p_own = scipy.fft.irfft(S * Cj[:, :, None], n_fft)[..., : W + L - 1] if K > 1 else p_all  # K = 1: SIR = inf
        artif = ((e - p_all[..., :W]) ** 2).sum(-1) + (p_all[..., W:] ** 2).sum(-1)
        sdr = _safe_db((s**2).sum(-1), ((e - s) ** 2).sum(-1))
        sir = _safe_db((p_own**2).sum(-1), ((p_all - p_own) ** 2).sum(-1))
        sar = _safe_db((p_all**2).sum(-1), artif)
        res[:, :, :, f0 : f0 + chunk] = np.where(live[:, None], np.stack([sdr, sir, sar]), np.nan)
    return res


def _bss_eval_v4(ref: np.ndarray, est: np.ndarray, window: int, hop: int, L: int) -> np.ndarray:
    """museval v4 (framewise_filters=False, bss_eval_images) for mono (B, K, N) → (3, B, K, n_frames).

    Frames follow museval's ``Framing``: n = ⌊(N − W + H)/H⌋ full frames (a trailing partial frame is
    dropped); one whole-signal frame when W ≥ N. A frame where any reference or any estimate is all
    zeros is NaN for every source; so is every frame of an item with an all-zero stem (museval raises).
    Items go through in equal chunks whose work arrays fit ``_SCRATCH_BYTES`` (about 10 five-second
    8 kHz pairs); within a chunk they share one block-Levinson recursion (one Python loop for all).
    """
    B, K, N = ref.shape
    W, n_frames = (window, (N - window + hop) // hop) if window < N else (N, 1)
    out = np.full((3, B, K, n_frames), np.nan)
    items = np.flatnonzero(~((ref == 0).all(-1).any(-1) | (est == 0).all(-1).any(-1)))
    chunk = max(1, _SCRATCH_BYTES // _scratch_bytes_per_item(K, K, _fft_len(N + L - 1)))
    n_chunks = -(-len(items) // chunk)
    for idx in np.array_split(items, n_chunks) if n_chunks else []:  # equal chunks reuse the work arrays
        r, e = ref[idx], est[idx]
        R, g, spec, n_fft = _correlations(r, e, L)
        X, bad = _solve_filters(R, g)  # est j onto all references (museval's C)
        own = _own_filters(R, g, bad) if K > 1 else X[:, :, 0]  # est j onto its own reference (Cj)
        if W == N:
            out[:, idx] = _whole_clip(r, e, spec, n_fft, R, g, X, own)[..., None]
        else:
            del spec
            out[:, idx] = _framewise(r, e, X, own, W, hop, n_frames)
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
            impl = (f"lightning_sep.bss_eval (numpy/scipy float64: block-Levinson filters, Gram-matrix energies) — "
                    f"BSS Eval v4 as museval {_version('museval')}, cross-checked within 0.05 dB by "
                    f"benchmarks/metrics.py")
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


# -------------------------------------------------------------------------------------------- images
IMAGE_DATA_RANGE = 1.0  # PSNR/SSIM peak: the image recipes store each source's intensities in [0, 1]


def psnr(estimate: Tensor, reference: Tensor, data_range: float = IMAGE_DATA_RANGE) -> Tensor:
    """Peak signal-to-noise ratio per image, dB: (..., H, W) → (...); +inf for an exact estimate."""
    mse = (estimate.double() - reference.double()).pow(2).mean(dim=(-2, -1))
    return 10 * torch.log10(data_range**2 / mse)


def ssim(estimate: Tensor, reference: Tensor, data_range: float = IMAGE_DATA_RANGE) -> Tensor:
    """Structural similarity per image (torchmetrics: 11×11 Gaussian window, σ 1.5): (..., H, W) → (...)."""
    from torchmetrics.functional.image import structural_similarity_index_measure

    lead = estimate.shape[:-2]
    est = estimate.reshape(-1, 1, *estimate.shape[-2:]).float()
    ref = reference.reshape(-1, 1, *reference.shape[-2:]).to(est)
    values = structural_similarity_index_measure(est, ref, data_range=data_range, reduction="none")
    return values.reshape(lead)


def score_image(estimates: Mapping[str, Tensor], references: Mapping[str, Tensor], mixture: Tensor,
                ) -> dict[str, dict[str, float]]:
    """All metrics of one image: {stem: {"psnr", "psnri", "ssim"}} (psnri: PSNR gain over the mixture)."""
    out = {}
    for stem, ref in references.items():
        est, ref = estimates[stem], ref.to(estimates[stem].device)
        value = psnr(est, ref)
        out[stem] = {"psnr": float(value), "psnri": float(value - psnr(mixture.to(est.device), ref)),
                     "ssim": float(ssim(est, ref))}
    return out


def image_flavours(clip_aggregation: str = "mean") -> dict[str, dict[str, Any]]:
    """The ``flavour`` entry of results.json for image metrics."""
    def flavour(name: str, definition: str, impl: str) -> dict[str, Any]:
        return MetricFlavour(name, definition, impl, None, None, None, None, clip_aggregation,
                             "an exact estimate has PSNR +inf (kept; it dominates a mean)").to_dict()

    return {
        "psnr": flavour("psnr", f"10·log10(peak²/MSE) per image, peak {IMAGE_DATA_RANGE}", "lightning_sep.psnr"),
        "psnri": flavour("psnri", "PSNR(estimate) − PSNR(mixture), same reference", "lightning_sep.score_image"),
        "ssim": flavour("ssim", f"SSIM, 11×11 Gaussian window σ 1.5, data range {IMAGE_DATA_RANGE}",
                        "torchmetrics.functional.image.structural_similarity_index_measure"),
    }


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
