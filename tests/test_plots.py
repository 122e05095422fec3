"""Plots are real PNGs with the expected content."""

from __future__ import annotations

import numpy as np
from PIL import Image

from dlpipe.plots import image_grid, plot_confusion, plot_curves, save_png


def test_curves_and_confusion_are_pngs(tmp_path):
    rows = [{"epoch": e, "loss": 1 / (e + 1), "val_loss": 1.2 / (e + 1)} for e in range(4)]
    p = plot_curves(rows, {"loss": ["loss", "val_loss"]}, tmp_path / "c.png")
    q = plot_confusion(np.array([[5, 1], [0, 7]]), ["a", "b"], tmp_path / "m.png")
    for path in (p, q):
        img = Image.open(path)
        assert img.format == "PNG" and img.width > 200


def test_grid_places_images_in_rows(tmp_path):
    imgs = np.stack([np.full((1, 4, 4), v, np.uint8) for v in (10, 20, 30)])
    grid = image_grid(imgs, nrow=2, pad=1)
    assert grid.shape == (11, 11, 1)
    assert grid[1, 1, 0] == 10 and grid[1, 6, 0] == 20 and grid[6, 1, 0] == 30
    out = save_png(grid, tmp_path / "g.png")
    assert Image.open(out).size == (11, 11)
