"""PNG plots people would rather look at than read: training curves, confusion matrices, grids."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from .atomic import atomic_path


def _pyplot():  # noqa: ANN202 - the matplotlib module
    import matplotlib

    matplotlib.use("Agg")  # files only, never a window
    import matplotlib.pyplot as plt

    return plt


def plot_curves(
    rows: Sequence[dict[str, object]],
    panels: dict[str, Sequence[str]],
    out: str | Path,
    x: str = "epoch",
) -> Path:
    """One panel per title, each plotting the named metrics.csv columns against `x`."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(panels), figsize=(4.5 * len(panels), 3.4), squeeze=False)
    for ax, (title, columns) in zip(axes[0], panels.items(), strict=True):
        for col in columns:
            pts = [(float(r[x]), float(r[col])) for r in rows if r.get(col) not in (None, "")]
            if pts:
                xs, ys = zip(*pts, strict=True)
                ax.plot(xs, ys, marker="o", markersize=3, label=col)
        ax.set_title(title)
        ax.set_xlabel(x)
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend(fontsize=8)
    fig.tight_layout()
    return _save(fig, out)


def plot_confusion(matrix: np.ndarray, class_names: Sequence[str], out: str | Path) -> Path:
    """Confusion matrix (rows: true class, columns: predicted), counts written in the cells."""
    plt = _pyplot()
    n = len(class_names)
    size = max(4.0, 0.45 * n + 2)
    fig, ax = plt.subplots(figsize=(size, size))
    ax.imshow(matrix, cmap="Blues")
    ax.set_xticks(range(n), class_names, rotation=60, ha="right", fontsize=8)
    ax.set_yticks(range(n), class_names, fontsize=8)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    if n <= 30:
        peak = matrix.max() or 1
        for i in range(n):
            for j in range(n):
                color = "white" if matrix[i, j] > peak / 2 else "black"
                ax.text(j, i, int(matrix[i, j]), ha="center", va="center", fontsize=7, color=color)
    fig.tight_layout()
    return _save(fig, out)


def image_grid(images: np.ndarray, nrow: int = 8, pad: int = 2) -> np.ndarray:
    """uint8 (N, C, H, W) or (N, H, W) -> one uint8 (H', W', C) grid image."""
    if images.ndim == 3:
        images = images[:, None]
    n, c, h, w = images.shape
    ncol = min(nrow, n) or 1
    nrows = -(-n // ncol)
    grid = np.zeros((nrows * (h + pad) + pad, ncol * (w + pad) + pad, c), dtype=np.uint8)
    for k in range(n):
        r, q = divmod(k, ncol)
        top, left = pad + r * (h + pad), pad + q * (w + pad)
        grid[top : top + h, left : left + w] = images[k].transpose(1, 2, 0)
    return grid


def save_png(array: np.ndarray, out: str | Path) -> Path:
    """Atomically save a uint8 (H, W) or (H, W, C) array as PNG."""
    from PIL import Image

    if array.ndim == 3 and array.shape[2] == 1:
        array = array[:, :, 0]
    with atomic_path(out, suffix=".png") as tmp:
        Image.fromarray(array).save(tmp, format="PNG")
    return Path(out)


def _save(fig: object, out: str | Path) -> Path:
    plt = _pyplot()
    with atomic_path(out, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=110, format="png")  # type: ignore[attr-defined]
    plt.close(fig)
    return Path(out)
