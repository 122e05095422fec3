"""The frozen head solved to convergence: L-BFGS against scikit-learn on a tiny real problem."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from dlpipe.train.classifier.headfit import fit_linear_head, fit_logistic, select_linear
from dlpipe.train.classifier.loop import Source


def _digits(n: int = 300) -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    return x[:n] / 16.0, y[:n]


def test_lbfgs_head_equals_sklearn_logistic_regression() -> None:
    from sklearn.linear_model import LogisticRegression

    x, y, wd = *_digits(200), 1e-2
    fit = fit_logistic(torch.from_numpy(x), torch.from_numpy(y), 10, wd, max_iter=2000)
    # mean CE + wd/2 |W|^2  ==  C * sum CE + 1/2 |W|^2 with C = 1 / (wd n)
    ref = LogisticRegression(C=1.0 / (wd * len(y)), tol=1e-8, max_iter=10_000).fit(x, y)
    np.testing.assert_allclose(fit.weight.numpy(), ref.coef_, atol=2e-4)
    # softmax ignores a constant added to every bias: compare centred intercepts
    b, rb = fit.bias.numpy(), ref.intercept_
    np.testing.assert_allclose(b - b.mean(), rb - rb.mean(), atol=2e-3)
    probs = torch.softmax(torch.from_numpy(x) @ fit.weight.T + fit.bias, 1).numpy()
    np.testing.assert_allclose(probs, ref.predict_proba(x), atol=1e-4)


def test_weight_decay_is_chosen_on_validation_and_folded_into_the_head() -> None:
    x, y = _digits(600)
    rng = np.random.default_rng(0)
    x = x * rng.uniform(0.1, 10, x.shape[1]) + 3.0  # unstandardised features, as a backbone gives
    xt, yt = torch.from_numpy(x).float(), torch.from_numpy(y)
    train, val = Source(yt[:400], features=xt[:400]), Source(yt[400:], features=xt[400:])
    head = nn.Sequential(nn.Dropout(0.1), nn.Linear(64, 10))
    info = fit_linear_head(head, train, val, 10)
    tried = info["grid"]
    best = min(tried, key=lambda r: (r["val_loss"], -r["val_acc"]))  # lowest validation loss
    assert info["weight_decay"] == best["weight_decay"] and len(tried) > 3
    head.eval()
    with torch.no_grad():  # the head's own forward on raw features gives the chosen fit's accuracy
        acc = float((head(xt[400:]).argmax(1) == yt[400:]).float().mean())
    assert acc == pytest.approx(best["val_acc"], abs=1 / 200) and acc > 0.8
    fit, _ = select_linear(xt[:400], yt[:400], xt[:0], yt[:0], 10)  # no validation rows
    assert fit.wd > 0
