"""The classification recipe's defaults (issue #12): how the solved head picks its weight decay."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from dlpipe.train.classifier.headfit import NO_VAL_WD, WD_GRID, select_linear


def test_grid_is_fine_and_the_lowest_validation_loss_wins() -> None:
    from sklearn.datasets import load_digits

    decades = np.log10(WD_GRID)
    assert list(WD_GRID) == sorted(WD_GRID, reverse=True)  # strongest first (warm starts)
    assert decades[0] == pytest.approx(0) and decades[-1] == pytest.approx(-4)
    assert np.allclose(np.diff(decades), -0.25)  # 4 values per decade
    x, y = load_digits(return_X_y=True)
    x = torch.from_numpy((x - x.mean(0)) / (x.std(0) + 1e-6)).float()
    y = torch.from_numpy(y)
    y[:150:7] = (y[:150:7] + 3) % 10  # some label noise: the weakest decay is not the best
    fit, tried = select_linear(x[:150], y[:150], x[300:500], y[300:500], 10)
    losses = [t["val_loss"] for t in tried]
    assert fit.wd == tried[int(np.argmin(losses))]["weight_decay"]
    assert WD_GRID[0] > fit.wd > WD_GRID[-1]  # an interior minimum, not an end of the grid
    none, _ = select_linear(x[:150], y[:150], x[:0], y[:0], 10)
    assert none.wd == NO_VAL_WD
