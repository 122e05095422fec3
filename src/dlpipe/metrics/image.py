"""PSNR and SSIM on float images in [0, data_range], per image, in NumPy/SciPy.

SSIM follows Wang et al. (2004) with the settings scikit-image uses for `gaussian_weights=True`:
an 11-tap Gaussian window (sigma 1.5, truncate 3.5), population covariances, K1 0.01, K2 0.03,
reflect padding, and the mean over the map with a 5-pixel border cropped.
"""

from __future__ import annotations

import numpy as np


def _as_nchw(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    if x.ndim == 2:
        return x[None, None]
    if x.ndim == 3:
        return x[:, None]
    return x


def psnr(pred: np.ndarray, target: np.ndarray, data_range: float = 1.0) -> np.ndarray:
    """Peak signal-to-noise ratio in dB per image (N,); identical images give +inf."""
    p, t = _as_nchw(pred), _as_nchw(target)
    mse = ((p - t) ** 2).reshape(len(p), -1).mean(axis=1)
    with np.errstate(divide="ignore"):
        return 10.0 * np.log10(data_range**2 / mse)


def ssim(
    pred: np.ndarray, target: np.ndarray, data_range: float = 1.0, sigma: float = 1.5
) -> np.ndarray:
    """Structural similarity per image (N,), averaged over channels."""
    from scipy.ndimage import gaussian_filter

    x, y = _as_nchw(pred), _as_nchw(target)
    truncate = 3.5
    pad = int(truncate * sigma + 0.5)  # (win_size - 1) // 2 with win_size = 11 for sigma 1.5

    def blur(a: np.ndarray) -> np.ndarray:
        return gaussian_filter(a, sigma=(0, 0, sigma, sigma), truncate=truncate, mode="reflect")

    ux, uy = blur(x), blur(y)
    vx = blur(x * x) - ux * ux
    vy = blur(y * y) - uy * uy
    vxy = blur(x * y) - ux * uy
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    s = ((2 * ux * uy + c1) * (2 * vxy + c2)) / ((ux**2 + uy**2 + c1) * (vx + vy + c2))
    h, w = s.shape[-2:]
    if h > 2 * pad and w > 2 * pad:
        s = s[..., pad : h - pad, pad : w - pad]
    return s.reshape(len(s), -1).mean(axis=1)
