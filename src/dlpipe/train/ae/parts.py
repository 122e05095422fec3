"""Autoencoder plumbing: noise specs applied on the fly, held-out evaluation, grids."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from ...data.splits import spread
from ...errors import BadInput
from ...metrics.image import psnr, ssim
from ...plots import image_grid, labeled_rows

NOISE_KINDS = {
    "gaussian": "add N(0, sigma^2) per pixel, clip to [0, 1] (level = sigma, e.g. 0.3)",
    "saltpepper": "set a share of pixels to 0 or 1 at random (level = share, e.g. 0.1)",
    "mask": "set a share of pixels to 0 (level = share, e.g. 0.25)",
}


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


def parse_noise(spec: str | None) -> tuple[str, float] | None:
    """'gaussian:0.3' | 'saltpepper:0.1' | 'mask:0.25' | '0.3' (gaussian) | None/'none' -> (kind, level)."""
    if spec is None or str(spec).strip().lower() in ("", "none", "off", "0"):
        return None
    kind, _, level = str(spec).strip().lower().rpartition(":")
    kind = kind or "gaussian"
    try:
        value = float(level)
    except ValueError:
        value = -1.0
    if kind not in NOISE_KINDS or not 0.0 < value <= (5.0 if kind == "gaussian" else 1.0):
        kinds = "; ".join(f"{k}: {v}" for k, v in NOISE_KINDS.items())
        raise BadInput(
            f"--noise {spec!r} is not understood.",
            hint=f"Use KIND:LEVEL with a positive level (shares at most 1): {kinds}.",
        )
    return kind, value


def add_noise(
    x: torch.Tensor, noise: tuple[str, float] | None, gen: torch.Generator | None = None
) -> torch.Tensor:
    """The corrupted input for clean images `x` in [0, 1] (same tensor when there is no noise)."""
    if noise is None:
        return x
    kind, level = noise

    def rand(fn: Any) -> torch.Tensor:
        return fn(x.shape, generator=gen, device=gen.device if gen else x.device).to(x.device)

    if kind == "gaussian":
        return (x + level * rand(torch.randn)).clamp_(0.0, 1.0)
    hit = rand(torch.rand) < level
    if kind == "mask":
        return x.masked_fill(hit, 0.0)
    salt = rand(torch.rand) < 0.5
    return torch.where(hit, salt.to(x.dtype), x)


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
