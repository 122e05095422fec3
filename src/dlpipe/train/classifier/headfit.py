"""The head fit to convergence on cached features, while the backbone is frozen (`--head-fit auto`).

Frozen features make the head problem small, and for a linear head convex: instead of guessing an
epoch count (a fixed number of AdamW epochs under-fits small data), solve it.
- linear head: multinomial logistic regression, full batch, L-BFGS to convergence, for each weight
  decay of a grid (4 per decade from 1 to 1e-4, largest first, each warm-started from the last);
  the value with the lowest validation loss (then the best accuracy) is kept, fitted on the
  training split (the linear-probe protocol of CLIP-style evaluations, choosing on the loss: on
  a few hundred validation images neighbouring decays tie or differ by one image in accuracy,
  while the loss is smooth in the decay, so it picks a steadier value). Objective: mean
  cross-entropy + wd/2 * |W|^2 (bias not penalised), which is scikit-learn's LogisticRegression with C = 1 / (wd * n_train); it is solved on
  standardised features (better conditioned) and folded back into the head's Linear layer.
- mlp head: many cheap epochs (constant lr) with early stopping on the validation loss; the
  weights of the best validation loss are kept.
Both run in one process (rank 0 under torchrun, which then broadcasts the head) and consume no
random numbers of the run's stream (a resumed run stays identical).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

# Weight decays tried for the linear head (mean-loss scale: 1e-4 ~ C = 10 / n_train), strongest
# first. 4 per decade: the old 1-per-decade grid (1e-1..1e-6) skipped the values the validation
# loss prefers (0.002-0.06 on mnist5k, fashion-mnist, digits with mobilenet_v2 features), and
# below 1e-4 warm-started fits barely move (they stop within a few iterations).
WD_GRID = tuple(round(10 ** (-k / 4), 10) for k in range(17))  # 1, 0.56, 0.32, ..., 1e-4
NO_VAL_WD = 1e-2  # without a validation split there is nothing to choose on: mid-range of the above
MAX_ITER = 200  # L-BFGS iterations per weight decay
FIT_TOL = 1e-5  # largest gradient element at convergence, on standardised features
MLP_MAX_EPOCHS = 300
MLP_PATIENCE = 15  # epochs without a validation-loss gain before stopping


@contextmanager
def one_thread() -> Iterator[None]:
    """Run a block on one intra-op thread: the head's matmuls are too small for more, and on a
    busy machine extra threads only spin (an L-BFGS fit measured 20x slower on 2 threads)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@dataclass
class LinearFit:
    """One solved linear head: weights (classes x features), bias, and its objective."""

    weight: torch.Tensor
    bias: torch.Tensor
    wd: float
    iterations: int
    loss: float


def fit_logistic(
    x: torch.Tensor,
    y: torch.Tensor,
    classes: int,
    wd: float,
    init: tuple[torch.Tensor, torch.Tensor] | None = None,
    max_iter: int = MAX_ITER,
    tol: float = 1e-9,
    dtype: torch.dtype = torch.float64,
) -> LinearFit:
    """Minimise mean CE(x W^T + b, y) + wd/2 |W|^2 with full-batch L-BFGS (strong Wolfe); stops
    when the largest gradient element is below `tol` or after `max_iter` iterations."""
    x, y = x.to(dtype), y.long()
    w = torch.zeros(classes, x.shape[1], dtype=dtype, device=x.device)
    b = torch.zeros(classes, dtype=dtype, device=x.device)
    if init is not None:
        w.copy_(init[0])
        b.copy_(init[1])
    w.requires_grad_(True)
    b.requires_grad_(True)
    opt = torch.optim.LBFGS([w, b], lr=1.0, max_iter=max_iter, history_size=20,
                            tolerance_grad=tol, tolerance_change=tol * 1e-3,
                            line_search_fn="strong_wolfe")  # fmt: skip

    def closure() -> torch.Tensor:
        opt.zero_grad(set_to_none=True)
        loss = nn.functional.cross_entropy(x @ w.T + b, y) + 0.5 * wd * (w * w).sum()
        loss.backward()
        return loss

    with torch.enable_grad(), one_thread():
        loss = opt.step(closure)
    iters = int(opt.state[opt._params[0]].get("n_iter", 0))
    return LinearFit(w.detach(), b.detach(), wd, iters, float(loss.detach()))


def _scores(fit: LinearFit, x: torch.Tensor, y: torch.Tensor) -> tuple[float, float]:
    """(accuracy, mean cross-entropy) of a linear fit on (x, y)."""
    with torch.no_grad():
        logits = x.to(fit.weight.dtype) @ fit.weight.T + fit.bias
        loss = float(nn.functional.cross_entropy(logits, y.long()))
        acc = float((logits.argmax(1) == y).double().mean())
    return acc, loss


def select_linear(
    xtr: torch.Tensor, ytr: torch.Tensor, xval: torch.Tensor, yval: torch.Tensor, classes: int
) -> tuple[LinearFit, list[dict[str, float]]]:
    """The weight decay of WD_GRID with the lowest validation loss (ties: better validation
    accuracy, then the larger decay), fitted on the training rows; also every candidate's scores."""
    fit_kw = {"tol": FIT_TOL, "dtype": torch.float32}
    if len(yval) == 0:
        return fit_logistic(xtr, ytr, classes, NO_VAL_WD, **fit_kw), []
    best, best_key, tried, init = None, None, [], None
    for wd in WD_GRID:  # strongest first: each solution warm-starts the next, weaker one
        fit = fit_logistic(xtr, ytr, classes, wd, init, **fit_kw)
        init = (fit.weight, fit.bias)
        acc, loss = _scores(fit, xval, yval)
        tried.append({"weight_decay": wd, "val_acc": acc, "val_loss": loss,
                      "iterations": fit.iterations})  # fmt: skip
        key = (-loss, acc)  # the loss: smooth in wd, where accuracy ties or jumps by one image
        if best_key is None or key > best_key:
            best, best_key = fit, key
    assert best is not None
    return best, tried


def last_linear(head: nn.Module) -> nn.Linear:
    """The head's (only, for a linear head) classifying layer."""
    return [m for m in head.modules() if isinstance(m, nn.Linear)][-1]


def fit_linear_head(head: nn.Module, train: Any, val: Any, classes: int) -> dict[str, Any]:
    """Solve a linear head on cached features (Sources with .features/.labels); writes the
    weights into `head`; returns what was chosen (for metrics and the summary)."""
    xtr, ytr = train.features.float(), train.labels.to(train.features.device)
    if val is not None and len(val):
        xval, yval = val.features.float(), val.labels.to(val.features.device)
    else:
        xval, yval = xtr[:0], ytr[:0]
    # standardised features condition the problem (5-10x fewer iterations); folded back below
    mu, sd = xtr.mean(0), xtr.std(0).clamp_min(1e-6)
    fit, tried = select_linear((xtr - mu) / sd, ytr, (xval - mu) / sd, yval, classes)
    weight = fit.weight / sd  # logits = ((x - mu) / sd) W^T + b = x (W / sd)^T + (b - W/sd mu)
    bias = fit.bias - weight @ mu
    layer = last_linear(head)
    with torch.no_grad():
        layer.weight.copy_(weight.to(layer.weight.dtype))
        layer.bias.copy_(bias.to(layer.bias.dtype))
    how = (f"L-BFGS logistic regression, weight decay {fit.wd:g} chosen on validation loss "
           f"from {len(WD_GRID)} values" if tried else
           f"L-BFGS logistic regression, weight decay {fit.wd:g} (no validation split to choose "
           "on)")  # fmt: skip
    return {"method": "lbfgs", "weight_decay": fit.wd, "iterations": fit.iterations,
            "objective": fit.loss, "grid": tried, "how": how}  # fmt: skip


def fit_mlp_head(
    head: nn.Module, train: Any, val: Any, lr: float, weight_decay: float, batch_size: int,
    seed: int, optimizer: str = "adamw",
) -> dict[str, Any]:  # fmt: skip
    """Train an mlp head for up to MLP_MAX_EPOCHS cheap epochs at a constant lr, stop after
    MLP_PATIENCE epochs without a validation-loss gain, keep the best-validation-loss weights."""
    from ..optim import make_optimizer, trainable
    from .loop import StepPlan, evaluate, train_epoch

    name = "adamw" if optimizer == "lbfgs" else optimizer
    params = trainable(head)
    opt = make_optimizer(name, [{"params": params, "lr": lr, "name": "head"}], weight_decay)
    ce = nn.CrossEntropyLoss()
    has_val = val is not None and len(val) > 0
    best = {"loss": math.inf, "epoch": 0, "state": None}
    epochs = MLP_MAX_EPOCHS if has_val else max(1, MLP_PATIENCE)
    ran = 0
    for epoch in range(epochs):
        plan = StepPlan(epoch, 0, 1, 0, "none", [lr], seed, batch_size)
        head.train()
        train_epoch(head, lambda: params, train, opt, ce, plan)
        ran = epoch + 1
        if not has_val:
            continue
        head.eval()
        loss = evaluate(head, val, ce)[0]["loss"]
        if loss < best["loss"] - 1e-4:
            best = {"loss": loss, "epoch": ran,
                    "state": {k: v.clone() for k, v in head.state_dict().items()}}  # fmt: skip
        elif ran - int(best["epoch"]) >= MLP_PATIENCE:
            break
    if best["state"] is not None:
        head.load_state_dict(best["state"])
    how = (f"{name} epochs with early stopping on validation loss: best at epoch "
           f"{best['epoch']} of {ran}" if has_val else
           f"{ran} {name} epochs (no validation split for early stopping)")  # fmt: skip
    return {"method": "early-stopped", "epochs": ran, "best_epoch": int(best["epoch"]),
            "val_loss": best["loss"] if has_val else None, "how": how}  # fmt: skip


def broadcast_head(head: nn.Module, ctx: Any) -> None:
    """Rank 0's fitted head on every rank (tensors only: no pickling)."""
    if not ctx.enabled:
        return
    import torch.distributed as dist

    with torch.no_grad():
        for t in head.state_dict().values():
            dist.broadcast(t, src=0)


@contextmanager
def seeded(seed: int, device: torch.device) -> Iterator[None]:
    """A block whose random numbers come from `seed` and leave the run's streams untouched."""
    devices = [device.index or 0] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        yield
