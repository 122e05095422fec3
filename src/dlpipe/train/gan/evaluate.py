"""What the GAN loop needs besides the step: EMA, BatchNorm recalibration, quality metrics, grids."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ...metrics.distances import frechet_distance, kernel_distance
from ...plots import image_grid, labeled_rows, save_png

FD_KEY = "fd_mobilenet_v2"
KID_KEY = "kid_mobilenet_v2"


@torch.no_grad()
def ema_update(ema: nn.Module, model: nn.Module, decay: float, step: int) -> None:
    """ema <- decay * ema + (1 - decay) * model, with warm-up decay min(decay, (1+t)/(10+t));
    buffers (BatchNorm statistics) are copied, and recalibrated before export."""
    d = min(decay, (1.0 + step) / (10.0 + step))
    e_params = list(ema.parameters())
    m_params = list(model.parameters())
    torch._foreach_lerp_(e_params, m_params, 1.0 - d)
    for eb, mb in zip(ema.buffers(), model.buffers(), strict=True):
        eb.copy_(mb)


def _bns(model: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    return [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


@torch.no_grad()
def bn_gap(g: nn.Module, nz: int, device: Any, n: int = 256, seed: int = 1234) -> float:
    """Mean |train-mode output - eval-mode output| on the same noise (images in [-1, 1]).

    Train mode normalises with the batch statistics; running statistics are left untouched."""
    z = torch.randn(n, nz, generator=torch.Generator().manual_seed(seed)).to(device)
    was = g.training
    bns = _bns(g)
    momenta = [bn.momentum for bn in bns]
    for bn in bns:
        bn.momentum = 0.0  # train-mode forward without moving the running statistics
    g.train()
    train_out = g(z)
    for bn, m in zip(bns, momenta, strict=True):
        bn.momentum = m
    g.eval()
    gap = float((train_out - g(z)).abs().mean())
    g.train(was)
    return gap


@torch.no_grad()
def recalibrate_bn(
    g: nn.Module, nz: int, device: Any, batches: int = 40, batch_size: int = 128, seed: int = 99
) -> None:
    """Replace BatchNorm running statistics by cumulative averages over fresh noise batches."""
    gen = torch.Generator().manual_seed(seed)
    bns = _bns(g)
    momenta = [bn.momentum for bn in bns]
    for bn in bns:
        bn.reset_running_stats()
        bn.momentum = None  # cumulative moving average: every batch weighs the same
    g.train()
    for _ in range(batches):
        g(torch.randn(batch_size, nz, generator=gen).to(device))
    for bn, m in zip(bns, momenta, strict=True):
        bn.momentum = m
    g.eval()


def export_generator(
    g: nn.Module, nz: int, device: Any, tol: float = 0.02
) -> tuple[nn.Module, dict[str, Any]]:
    """An eval-mode copy of `g` whose samples match train mode; recalibrated when they differ.

    The copy runs in train mode on rank 0 alone, so BatchNorm synced across processes is made
    plain again on it (a synced layer would wait for the other processes forever)."""
    from ..parallel import plain_batchnorm

    out = plain_batchnorm(copy.deepcopy(g)).eval()
    before = bn_gap(out, nz, device)
    report: dict[str, Any] = {"bn_gap_before": before, "bn_recalibrated": False}
    if before > tol:
        recalibrate_bn(out, nz, device)
        report["bn_recalibrated"] = True
    report["bn_gap_after"] = bn_gap(out, nz, device) if report["bn_recalibrated"] else before
    for p in out.parameters():
        p.requires_grad_(False)
    return out, report


def to_unit(images: torch.Tensor) -> torch.Tensor:
    """Generator output in [-1, 1] -> [0, 1]."""
    return (images.float().clamp(-1, 1) + 1) / 2


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """Generator output in [-1, 1] -> uint8 NCHW pixels."""
    return (to_unit(images) * 255).round().to(torch.uint8).cpu().numpy()


class QualityMeter:
    """fd/kid on mobilenet_v2 features of generated vs held-out images, with the real-vs-real floor
    (training vs held-out images, same count) computed once. The real images' features are cached
    on disk by a fingerprint of their pixels, with the floor (its Frechet distance costs as much as
    the features), so a later run on the same data pays only for the generated side (`cached`
    says whether this one did)."""

    def __init__(self, train: np.ndarray, heldout: np.ndarray, max_images: int, size: int):
        from ...metrics.features import extract

        self.size = size
        self.n = min(len(heldout), len(train), max_images)
        rng = np.random.default_rng(0)
        held = heldout[np.sort(rng.choice(len(heldout), self.n, replace=False))]
        picked = train[np.sort(rng.choice(len(train), self.n, replace=False))]
        self.cache_file = real_features_file(held, picked, size)
        cached = _load_features(self.cache_file, self.n)
        self.cached = cached is not None
        if cached is None:
            self.real = extract(held.astype(np.float32) / 255.0, size=size)
            self.floor = self._distances(
                extract(picked.astype(np.float32) / 255.0, size=size), suffix="_floor"
            )
            _save_features(self.cache_file, self.real, self.floor)
        else:
            self.real, self.floor = cached

    def _distances(self, feats: np.ndarray, suffix: str = "") -> dict[str, float]:
        kid, _ = kernel_distance(feats, self.real, subset_size=min(500, self.n))
        return {FD_KEY + suffix: frechet_distance(feats, self.real), KID_KEY + suffix: kid}

    @torch.no_grad()
    def measure(self, g: nn.Module, nz: int, device: Any, seed: int = 2024) -> dict[str, float]:
        """Distances of `self.n` samples of the (eval-mode) generator `g` to the held-out images."""
        from ...metrics.features import extract

        gen = torch.Generator().manual_seed(seed)

        def sample(start: int, stop: int) -> torch.Tensor:
            return to_unit(g(torch.randn(stop - start, nz, generator=gen).to(device))).cpu()

        return {**self._distances(extract(sample, count=self.n, size=self.size)), **self.floor}


def real_features_file(heldout: np.ndarray, train: np.ndarray, size: int) -> Path:
    """Cache file of the real images' features: a sha256 of the feature network, its input side
    and the exact pixels (shape and bytes) of both image sets."""
    import hashlib

    from ...metrics.features import WEIGHTS_FILE
    from ..classifier.features import cache_dir

    digest = hashlib.sha256(f"dlpipe-gan-real/2|{WEIGHTS_FILE}|{size}".encode())
    for a in (heldout, train):
        digest.update(f"|{a.dtype}|{a.shape}|".encode())
        digest.update(np.ascontiguousarray(a).tobytes())
    return cache_dir() / f"gan-real-{digest.hexdigest()[:40]}.npz"


def _load_features(path: Path, n: int) -> tuple[np.ndarray, dict[str, float]] | None:
    """(held-out features, floor distances) from the cache, or None when absent or unusable."""
    import zipfile

    keys = (FD_KEY + "_floor", KID_KEY + "_floor")
    try:
        with np.load(path) as f:
            real, floor = f["heldout"], f["floor"]
    except (OSError, KeyError, ValueError, EOFError, zipfile.BadZipFile):
        return None
    if real.shape[0] != n or floor.shape != (2,) or not np.isfinite(real).all():
        return None  # rebuilt
    return real, {k: float(v) for k, v in zip(keys, floor, strict=True)}


def _save_features(path: Path, real: np.ndarray, floor: dict[str, float]) -> None:
    from ...atomic import atomic_path

    values = np.array([floor[FD_KEY + "_floor"], floor[KID_KEY + "_floor"]])
    try:
        with atomic_path(path, suffix=".npz") as tmp, open(tmp, "wb") as fh:
            np.savez(fh, heldout=real, floor=values)
    except OSError:
        pass  # an unwritable cache only costs the next run the same time again


def progress_sheet(sample_dir: Path, out: Path, image_side: int, per_row: int = 8) -> Path | None:
    """Stack the first row of each saved epoch grid (up to 12 epochs, evenly spaced) in one PNG,
    each row labelled with its epoch."""
    from PIL import Image

    files = sorted(sample_dir.glob("epoch_*.png"))
    if not files:
        return None
    keep = np.unique(np.linspace(0, len(files) - 1, min(12, len(files))).round().astype(int))
    rows, labels = [], []
    for i in keep:
        arr = np.asarray(Image.open(files[i]))
        rows.append(arr[: image_side + 4])  # pad 2 + one row of images + pad 2
        labels.append(f"epoch {int(files[i].stem.split('_')[-1])}")
    return labeled_rows(rows, labels, out)


def save_grid(images: np.ndarray, out: Path, nrow: int = 8) -> Path:
    """uint8 NCHW -> PNG grid."""
    return save_png(image_grid(images, nrow=nrow), out)
