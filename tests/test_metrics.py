"""PSNR/SSIM against hand-computed values; Frechet distance and KID on known cases."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import linalg

from dlpipe.metrics import frechet_distance, kernel_distance, psnr, ssim


def test_psnr_hand_computed():
    clean = np.zeros((2, 1, 4, 4))
    noisy = clean.copy()
    noisy[0] += 0.1  # MSE 0.01 -> 20 dB
    noisy[1, 0, 0, 0] = 1.0  # MSE 1/16 -> 10*log10(16) = 12.041 dB
    np.testing.assert_allclose(psnr(noisy, clean), [20.0, 10 * np.log10(16)], rtol=1e-12)
    assert psnr(clean, clean)[0] == np.inf
    assert psnr(noisy * 255, clean, data_range=255.0)[0] == pytest.approx(20.0)


def test_ssim_hand_computed():
    a = np.full((1, 1, 16, 16), 0.2)
    b = np.full((1, 1, 16, 16), 0.6)
    c1 = 0.01**2
    # constant images: no variance, so SSIM is the luminance term (2ab + C1) / (a^2 + b^2 + C1)
    expected = (2 * 0.2 * 0.6 + c1) / (0.2**2 + 0.6**2 + c1)
    assert ssim(a, b)[0] == pytest.approx(expected, rel=1e-9)
    rng = np.random.default_rng(0)
    x = rng.random((3, 1, 28, 28))
    np.testing.assert_allclose(ssim(x, x), 1.0)
    # more noise, lower SSIM; a negated pattern correlates negatively
    s1 = ssim(np.clip(x + 0.05 * rng.standard_normal(x.shape), 0, 1), x)
    s2 = ssim(np.clip(x + 0.3 * rng.standard_normal(x.shape), 0, 1), x)
    assert np.all(s1 > s2) and ssim(1 - x, x).mean() < 0


def _direct_fd(a, b):
    """The textbook formula with scipy.linalg.sqrtm, as FID implementations write it."""
    mu1, mu2 = a.mean(0), b.mean(0)
    s1, s2 = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    covmean = linalg.sqrtm(s1 @ s2).real
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1 + s2 - 2 * covmean))


def test_frechet_distance_known_cases():
    rng = np.random.default_rng(1)
    a = rng.standard_normal((400, 16))
    assert frechet_distance(a, a) == pytest.approx(0.0, abs=1e-8)
    shifted = a + 2.0  # same covariance, mean moved by 2 in 16 dims: distance 16 * 4
    assert frechet_distance(a, shifted) == pytest.approx(64.0, rel=1e-9)
    b = rng.standard_normal((300, 16)) * 1.5 + 0.3
    assert frechet_distance(a, b) == pytest.approx(_direct_fd(a, b), rel=1e-6)
    # Gaussians with known covariances: N(0, I) vs N(0, 4I) in d dims -> d * (1 + 4 - 2*2) = d
    big = rng.standard_normal((20000, 4))
    assert frechet_distance(big, 2 * big) == pytest.approx(4.0, rel=0.01)


def test_kid_known_cases():
    rng = np.random.default_rng(2)
    a, b = rng.standard_normal((300, 8)), rng.standard_normal((300, 8))
    same, _ = kernel_distance(a, b, subset_size=100)
    far, _ = kernel_distance(a, b + 1.0, subset_size=100)
    assert abs(same) < 0.05 < far


def test_mobilenet_features_end_to_end():
    from dlpipe.metrics.features import extract, weights_path

    assert weights_path().name.startswith("mobilenet_v2-b0353104")
    rng = np.random.default_rng(0)
    dark = rng.random((12, 1, 16, 16)).astype(np.float32) * 0.2
    bright = 0.8 + rng.random((6, 1, 16, 16)).astype(np.float32) * 0.2
    feats = extract(np.concatenate([dark, bright]), size=32, batch=18)  # one pass: warm-up is slow
    f_dark, f_dark2, f_bright = feats[:6], feats[6:12], feats[12:]
    assert feats.shape == (18, 1280) and np.isfinite(feats).all()
    assert frechet_distance(f_dark, f_dark2) < frechet_distance(f_dark, f_bright)
