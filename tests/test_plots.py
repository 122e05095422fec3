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


def test_confusion_png_size_is_bounded_for_many_classes(tmp_path):
    """Issue: a 1,000-class folder sized the figure per class (~2.5 Gpx, OOM). Now at most
    MAX_DRAWN_CLASSES are drawn; beyond that a fixed-size table of the top confusions."""
    from dlpipe.plots import MAX_DRAWN_CLASSES, top_confusions

    rng = np.random.default_rng(0)
    for k in (MAX_DRAWN_CLASSES, 300):
        m = rng.integers(0, 3, (k, k))
        np.fill_diagonal(m, 9)
        m[5, 7] = 40  # the largest confusion
        names = [f"class {i}" for i in range(k)]
        out = plot_confusion(m, names, tmp_path / f"m{k}.png", title="held-out", accuracy=0.5)
        w, h = Image.open(out).size
        assert w * h < 6_000_000, (k, w, h)  # a few Mpx at most, whatever the class count
    top = top_confusions(m, names, k=3)
    assert top[0] == {"true": "class 5", "predicted": "class 7", "count": 40,
                      "share_of_true": 40 / m[5].sum()}  # fmt: skip
    assert len(top) == 3 and all(r["true"] != r["predicted"] for r in top)


def test_curves_mark_a_stage_change_and_rows_get_labels(tmp_path):
    from dlpipe.plots import _stage_changes, labeled_rows

    rows = [{"epoch": e, "stage": "frozen" if e < 4 else "unfrozen", "loss": 1 / e}
            for e in range(1, 7)]  # fmt: skip
    assert _stage_changes(rows, "epoch") == [(4.0, "frozen -> unfrozen")]
    assert _stage_changes([{"epoch": 1, "loss": 1}], "epoch") == []
    assert Image.open(plot_curves(rows, {"loss": ["loss"]}, tmp_path / "c.png")).width > 200
    grid = image_grid(np.full((8, 1, 28, 28), 128, np.uint8), nrow=8)  # 242 x 32 px
    out = labeled_rows([grid, grid, grid], ["noisy", "reconstructed", "clean"], tmp_path / "r.png")
    img = np.asarray(Image.open(out))
    assert img.shape[0] == 3 * 32 * 3 and img.shape[1] > 3 * 242  # upscaled x3 plus a label column
    label_column = img[:, : img.shape[1] - 3 * 242]
    assert label_column.min() < 100 and label_column.max() == 255  # dark text on white
