"""Frame-quality metrics: PSNR and SSIM on uint8 RGB frames.

Written here because neither torchmetrics nor scikit-image is a dependency of the stack. SSIM is
the formula of Wang et al. (2004): 11x11 Gaussian window with sigma 1.5, K1 = 0.01, K2 = 0.03,
data range 255, population (co)variances, computed per channel over the valid (unpadded) window
positions and averaged (= scikit-image with gaussian_weights=True, use_sample_covariance=False).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

_DATA_RANGE = 255.0


def psnr(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Per-frame PSNR in dB of (..., H, W, C) uint8 frames (capped at 100 dB for identical frames)."""
    a64, b64 = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    mse = ((a64 - b64) ** 2).mean(axis=(-3, -2, -1))
    return np.minimum(10.0 * np.log10(_DATA_RANGE**2 / np.maximum(mse, 1e-10)), 100.0)


def _gaussian_window(size: int = 11, sigma: float = 1.5) -> torch.Tensor:
    coords = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    g = torch.exp(-(coords**2) / (2 * sigma**2))
    g = g / g.sum()
    return g[:, None] * g[None, :]


def ssim(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Per-frame SSIM of (..., H, W, C) uint8 frames (frames must be at least 11x11)."""
    a, b = np.asarray(a), np.asarray(b)
    if a.shape != b.shape:
        raise ValueError(f"frames differ in shape: {a.shape} vs {b.shape}")
    lead, (h, w, c) = a.shape[:-3], a.shape[-3:]
    x = torch.from_numpy(a.reshape(-1, h, w, c)).permute(0, 3, 1, 2).double()
    y = torch.from_numpy(b.reshape(-1, h, w, c)).permute(0, 3, 1, 2).double()
    window = _gaussian_window().expand(c, 1, -1, -1)

    def blur(t: torch.Tensor) -> torch.Tensor:
        return F.conv2d(t, window, groups=c)

    mu_x, mu_y = blur(x), blur(y)
    var_x = blur(x * x) - mu_x**2
    var_y = blur(y * y) - mu_y**2
    cov = blur(x * y) - mu_x * mu_y
    c1, c2 = (0.01 * _DATA_RANGE) ** 2, (0.03 * _DATA_RANGE) ** 2
    s = ((2 * mu_x * mu_y + c1) * (2 * cov + c2)) / ((mu_x**2 + mu_y**2 + c1) * (var_x + var_y + c2))
    return s.mean(dim=(1, 2, 3)).numpy().reshape(lead)
