"""The epoch loop of a fine-tune run: stages, checkpoints, early stopping, NaN guard.

Under torchrun every rank trains; rank 0 alone evaluates, writes metrics and checkpoints, and
shares its early-stopping decision (`from_main`) so that every rank leaves the loop together.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

from ...checkpoint import save_checkpoint
from ...checkpoint_meta import CheckpointMeta
from ...distributed import from_main
from ...errors import Diverged
from ...runtime import rng_state
from ..interrupt import save_or_explain
from ..optim import trainable
from .loop import NanLoss, StepPlan, evaluate, train_epoch, train_mode
from .session import Session


def meta_of(s: Session, metrics: dict[str, Any] | None = None) -> dict[str, Any]:
    """The checkpoint description (see the checkpoint contract in dlpipe.models)."""
    from ...models.backbones import arch_meta

    c, ds = s.cfg, s.data.ds
    return CheckpointMeta(
        command="finetune", kind="classifier", export_group="model",
        arch=arch_meta(c.backbone, len(ds.class_names), c.head, c.hidden, c.dropout,
                       s.info["in_chans"], c.image_size),
        preprocess=s.preprocess.to_dict(), class_names=list(ds.class_names),
        io={"input": "image", "output": "logits"},
        data={"source": c.data, "data_root": c.data_root, "fingerprint": ds.fingerprint,
              "seed": c.seed, "val_fraction": c.val_fraction, "test_fraction": c.test_fraction,
              "limit": c.limit, "eval_limit": c.eval_limit},
        metrics=metrics or {},
        extra={"weights": s.weights, "backbone_info": s.info},
    ).to_dict()  # fmt: skip


def save(s: Session, name: str, metrics: dict[str, Any] | None = None) -> None:
    """Write checkpoints/<name>.safetensors: weights, description and the exact training state."""
    assert s.optimizer is not None
    state = {
        "epoch": s.epoch,
        "stage": s.stage,
        "global_step": s.global_step,
        "optimizer": s.optimizer.state_dict(),
        "optimizer_name": s.cfg.optimizer,
        "rng": rng_state(),
        "best": s.best,
        "head_fit": s.head_fit,
        "scalers": s.accel.state() if s.accel is not None else {},
    }
    path, weights = s.run.checkpoint(name), {"model": s.model.state_dict()}
    save_or_explain(lambda: save_checkpoint(path, weights, meta_of(s, metrics), state), path)


def train_all(s: Session) -> None:
    """Run the remaining epochs; on Ctrl-C keep the last epoch's checkpoint and say how to resume."""
    try:
        _train_epochs(s)
    except KeyboardInterrupt:
        last = s.run.checkpoint("last")
        if not s.ctx.is_main:
            raise
        if last.exists():
            s.out.warn(
                f"interrupted in epoch {s.epoch + 1}; the checkpoint of epoch {s.epoch} is kept in "
                f"{last}. Continue with: {s.run.resume_command('finetune')}"
            )
        else:
            s.out.warn("interrupted before the first epoch finished; there is nothing to resume.")
        raise


def _train_epochs(s: Session) -> None:
    """Run the remaining epochs; stop early on patience, fail clearly on a non-finite loss. With
    --head-fit auto the frozen stage is one head fit (headfit.py) instead of epochs."""
    c = s.cfg
    steps_per_epoch = math.ceil(len(s.data.train) / c.batch_size)
    ce = nn.CrossEntropyLoss()
    ran = 0
    while s.epoch < c.epochs and s.stopped is None:
        if c.stop_after is not None and ran >= c.stop_after:
            return
        frozen = s.frozen_at(s.epoch)
        if not frozen and s.stage == "frozen" and c.frozen:
            s.unfreeze()
        t0 = time.perf_counter()
        if frozen and c.solves_head():
            row = _fit_head(s, ce)
        else:
            row = _train_one_epoch(s, frozen, steps_per_epoch, ce)
        row["seconds"] = time.perf_counter() - t0
        s.global_step = s.epoch * steps_per_epoch  # the schedule's position after a fit, too
        ran += 1
        _end_epoch(s, row)


def _train_one_epoch(s: Session, frozen: bool, steps_per_epoch: int, ce: nn.Module) -> dict:
    """One epoch of the current stage through its training view; returns its metrics row."""
    c = s.cfg
    src, module = s.source("train", frozen, collective=True)
    view = s.training_module(module)
    smoothing = c.label_smoothing if frozen or not c.staged else c.unfreeze_label_smoothing
    train_loss = nn.CrossEntropyLoss(label_smoothing=smoothing)
    train_mode(s.model, frozen, c.train_bn, keep_bn=s.keeps_bn)
    try:
        row = _one_epoch(s, view, module, src, ce, train_loss, _plan(s, frozen, steps_per_epoch),
                         frozen)  # fmt: skip
    except NanLoss as exc:
        _nan_failure(s, exc)
    s.epoch += 1
    return row


def _plan(s: Session, frozen: bool, steps_per_epoch: int) -> StepPlan:
    """The lr plan of this epoch's stage. A staged run gives each stage its own schedule; after
    the unfreeze the backbone's lr rises from 0 over an epoch (or --warmup-epochs if longer)."""
    c = s.cfg
    end = steps_per_epoch * c.epochs
    warmup = int(round(c.warmup_epochs * steps_per_epoch))
    start, body_warmup = 0, 0
    if c.staged:
        cut = steps_per_epoch * min(int(c.unfreeze_after or 0), c.epochs)
        if frozen:
            end = cut
        else:
            start, body_warmup = cut, max(steps_per_epoch, warmup)
            warmup = 0  # the head is trained already: it continues at its lr
    return StepPlan(s.epoch, s.global_step, end, warmup, c.scheduler, s.base_lrs, c.seed,
                    c.batch_size, c.optimizer == "lbfgs", start, body_warmup)  # fmt: skip


def _fit_head(s: Session, ce: nn.Module) -> dict[str, Any]:
    """The whole frozen stage as one head fit on cached features (rank 0 solves, every rank
    gets the head); the epoch count jumps to the stage's end. Returns its metrics row."""
    from .headfit import broadcast_head, fit_linear_head, fit_mlp_head, seeded

    c = s.cfg
    end = min(int(c.unfreeze_after), c.epochs) if c.staged else c.epochs
    train = s.feature_source("train", collective=True)
    info, row = None, {"train_loss": math.nan, "train_acc": math.nan}
    row |= {"val_loss": math.nan, "val_acc": math.nan}
    if s.ctx.is_main:
        val = s.feature_source("val") if len(s.data.val) else None
        head = s.model.head
        with seeded(c.seed + 7919, s.device):  # leaves the run's random stream as it was
            if c.head == "linear":
                info = fit_linear_head(head, train, val, len(s.data.ds.class_names))
            else:
                with _threads(1):
                    info = fit_mlp_head(head, train, val, c.lr, c.weight_decay, c.batch_size,
                                        c.seed, c.optimizer)  # fmt: skip
        head.eval()
        tr, _ = evaluate(head, train, ce)
        va = evaluate(head, val, ce)[0] if val is not None else tr  # as epochs do without val
        row |= {"train_loss": tr["loss"], "train_acc": tr["acc"]}
        row |= {"val_loss": va["loss"], "val_acc": va["acc"]}
        s.out.print(f"head fit: {info['how']}")
    broadcast_head(s.model.head, s.ctx)
    s.head_fit = from_main(info, s.ctx)
    s.log(f"head fit: {s.head_fit['how']}")
    s.epoch = end
    return {"epoch": end, "stage": "frozen", "path": "head-fit", **row, "lr": 0.0}


def _one_epoch(s: Session, view: nn.Module, module: nn.Module, src: Any, ce: nn.Module,
               loss: nn.Module, plan: StepPlan, frozen: bool) -> dict[str, Any]:  # fmt: skip
    """Train one epoch through `view` (the training view of `module`), then validate on rank 0
    (the other ranks get NaN validation numbers: they neither record nor decide anything)."""
    slow = module is s.model
    params = lambda: trainable(module)  # noqa: E731
    dist = {"ctx": s.ctx, "accel": s.accel}
    if slow:  # a bar with running loss/accuracy; cached-feature epochs take milliseconds
        steps = math.ceil(len(src) / s.cfg.batch_size)
        with s.out.progress(f"epoch {s.epoch + 1}/{s.cfg.epochs}", steps) as advance:
            tr = train_epoch(view, params, src, s.optimizer, loss, plan, advance, **dist)
    else:
        with _threads(1):  # tiny head ops: extra threads only spin (15x slower on a busy box)
            tr = train_epoch(view, params, src, s.optimizer, loss, plan, **dist)
    val = {"loss": math.nan, "acc": math.nan}
    if s.ctx.is_main:
        s.model.eval()
        val_src, val_fwd = s.source("val" if len(s.data.val) else "train", frozen)
        with _threads(1 if not slow else torch.get_num_threads()):
            val, _ = evaluate(val_fwd, val_src, ce, accel=s.accel)
    return {"epoch": s.epoch + 1, "stage": "frozen" if frozen else "unfrozen",
            "path": "slow" if slow else "cached-features", **tr,
            "val_loss": val["loss"], "val_acc": val["acc"],
            "lr": s.optimizer.param_groups[0]["lr"]}  # fmt: skip


@contextmanager
def _threads(n: int) -> Iterator[None]:
    """Run a block with `n` intra-op threads, restoring the setting after."""
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _end_epoch(s: Session, row: dict[str, Any]) -> None:
    """Rank 0 records the epoch; every rank learns whether it decided to stop early."""
    if s.ctx.is_main:
        _record_epoch(s, row)
    s.stopped = from_main(s.stopped, s.ctx)


def _record_epoch(s: Session, row: dict[str, Any]) -> None:
    """Metrics row, best/last checkpoints, early-stopping bookkeeping, one console line."""
    c, best = s.cfg, s.best
    s.run.append_metrics(row)
    improved_acc = row["val_acc"] > best["acc"]
    if row["val_loss"] < best["loss"] - 1e-4:
        best["loss"], best["bad"] = row["val_loss"], 0
    else:
        best["bad"] += 1
    if improved_acc:
        best["acc"], best["epoch"] = row["val_acc"], row["epoch"]
    if c.patience is not None and best["bad"] >= c.patience:
        s.stopped = f"early stop: val loss did not improve for {c.patience} epochs"
    save(s, "last")
    if improved_acc:
        save(s, "best")
    s.out.print(
        f"epoch {row['epoch']}/{c.epochs} ({row['stage']}, {row['path']}) "
        f"loss {row['train_loss']:.4f} acc {row['train_acc']:.4f} | val loss "
        f"{row['val_loss']:.4f} acc {row['val_acc']:.4f} | {row['seconds'] * 1000:.0f} ms"
    )
    s.run.log(f"epoch {row['epoch']}: {row}")
    if s.stopped:
        s.out.print(s.stopped)
        s.run.log(s.stopped)


def _nan_failure(s: Session, exc: NanLoss) -> None:
    last = s.run.checkpoint("last")
    kept = f"the last good checkpoint {last} (epoch {s.epoch}) is kept" if last.exists() else (
        "no epoch had finished, so there is no checkpoint")  # fmt: skip
    s.log(f"non-finite loss at epoch {exc.epoch}, step {exc.step}")
    raise Diverged(
        f"Training diverged: the loss became NaN/inf at epoch {exc.epoch}, step {exc.step}; "
        f"training stopped and {kept}.",
        hint="Lower --lr (or add --warmup-epochs), check the data, or use --optimizer adamw.",
    )
