"""Distances between two sets of feature vectors: Frechet distance and KID (polynomial-kernel MMD).

These are the formulas of FID and KID; what makes them "FID"/"KID" is the Inception network, which
dlpipe does not use (its weights are not available offline). Callers name the result after the
feature network, e.g. `fd_mobilenet_v2`.
"""

from __future__ import annotations

import numpy as np


def _stats(feats: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    f = np.asarray(feats, dtype=np.float64)
    if f.ndim != 2 or len(f) < 2:
        raise ValueError(f"need a (N >= 2, D) feature matrix, got shape {f.shape}")
    return f.mean(axis=0), np.cov(f, rowvar=False)


def _sqrt_psd(m: np.ndarray) -> np.ndarray:
    w, v = np.linalg.eigh((m + m.T) / 2)
    return (v * np.sqrt(np.clip(w, 0, None))) @ v.T


def frechet_distance(a: np.ndarray, b: np.ndarray) -> float:
    """||mu_a - mu_b||^2 + Tr(S_a + S_b - 2 (S_a S_b)^(1/2)) between two feature sets (N, D).

    The trace of the matrix square root is computed as the sum of square roots of the eigenvalues
    of S_a^(1/2) S_b S_a^(1/2) (symmetric PSD), which avoids complex round-off of `sqrtm`.
    """
    mu_a, s_a = _stats(a)
    mu_b, s_b = _stats(b)
    root_a = _sqrt_psd(s_a)
    middle = root_a @ s_b @ root_a
    eig = np.linalg.eigvalsh((middle + middle.T) / 2)
    tr_covmean = float(np.sqrt(np.clip(eig, 0, None)).sum())
    diff = mu_a - mu_b
    value = float(diff @ diff + np.trace(s_a) + np.trace(s_b) - 2.0 * tr_covmean)
    return max(value, 0.0)


def kernel_distance(
    a: np.ndarray, b: np.ndarray, subsets: int = 20, subset_size: int = 500, seed: int = 0
) -> tuple[float, float]:
    """Unbiased MMD^2 with kernel (x.y / d + 1)^3 averaged over random subsets: (mean, std)."""
    x, y = np.asarray(a, np.float64), np.asarray(b, np.float64)
    d = x.shape[1]
    m = min(subset_size, len(x), len(y))
    if m < 2:
        raise ValueError("KID needs at least 2 vectors in each set")
    rng = np.random.default_rng(seed)
    values = []
    for _ in range(subsets):
        xs = x[rng.choice(len(x), m, replace=False)]
        ys = y[rng.choice(len(y), m, replace=False)]
        kxx = (xs @ xs.T / d + 1) ** 3
        kyy = (ys @ ys.T / d + 1) ** 3
        kxy = (xs @ ys.T / d + 1) ** 3
        off = m * (m - 1)
        mmd = (kxx.sum() - np.trace(kxx)) / off + (kyy.sum() - np.trace(kyy)) / off
        values.append(mmd - 2 * kxy.mean())
    return float(np.mean(values)), float(np.std(values))
