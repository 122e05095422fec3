"""Autoencoder plumbing: the training view of the model, held-out evaluation, grids (the noise
kinds are in dlpipe.noise)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from ...data.splits import spread
from ...metrics.image import psnr, ssim
from ...noise import add_noise
from ...plots import image_grid, labeled_rows


class RawOutput(torch.nn.Module):
    """The autoencoder as training calls it: image -> the output before the [0, 1] map (the loss
    is computed on it). A module of its own so that DDP's forward hooks see the training call; it
    holds no parameters of its own, so `model` stays the plain module checkpoints store."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """model.raw(x): the conv AE's decoder.raw(encoder(x)), or the U-Net's input + residual."""
        return self.model.raw(x)


@torch.no_grad()
def evaluate(
    model: torch.nn.Module,
    pixels: np.ndarray,
    noise: tuple[str, float] | None,
    device: Any,
    seed: int,
    batch: int = 256,
    labels: np.ndarray | None = None,
) -> dict[str, Any]:
    """PSNR/SSIM of reconstructions (and of the noisy input) against clean held-out images.

    The noise is drawn from a seeded generator, so every epoch and every run sees the same corruption.
    The 8 example columns are spread over the classes (`labels`), else over the whole set.
    """
    model.eval()
    gen = torch.Generator().manual_seed(seed)
    clean, noisy, recon = [], [], []
    for s in range(0, len(pixels), batch):
        x = torch.from_numpy(pixels[s : s + batch]).float().div_(255.0)
        xn = add_noise(x, noise, gen)
        recon.append(model(xn.to(device)).float().cpu().numpy())
        clean.append(x.numpy())
        noisy.append(xn.numpy())
    c, n, r = (np.concatenate(a) for a in (clean, noisy, recon))
    out: dict[str, Any] = {
        "mse": float(((r - c) ** 2).mean()),
        "psnr_db": float(np.mean(psnr(r, c))),
        "ssim": float(np.mean(ssim(r, c))),
    }
    if noise is not None:
        out["noisy_psnr_db"] = float(np.mean(psnr(n, c)))
        out["noisy_ssim"] = float(np.mean(ssim(n, c)))
        out["psnr_gain_db"] = out["psnr_db"] - out["noisy_psnr_db"]
    show = spread(labels if labels is not None else np.full(len(c), -1), 8)
    out["_examples"] = (n[show], r[show], c[show])
    return out


def save_triplets(examples: tuple[np.ndarray, ...], out: Path) -> Path:
    """Rows noisy | reconstructed | clean (one column per image) as one labelled PNG."""
    rows = [np.rint(np.clip(a, 0, 1) * 255).astype(np.uint8) for a in examples]
    grids = [image_grid(r, nrow=len(r)) for r in rows]
    return labeled_rows(grids, ["noisy", "reconstructed", "clean"][-len(grids) :], out)
