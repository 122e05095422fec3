"""The fine-tune recipe on the loop skeleton (train/loop.py): stages, checkpoints, early
stopping, NaN guard.

The skeleton owns the progress bar, Ctrl-C, rank-0 writes and the loop over epochs. Here an epoch
enters its stage, trains one pass (`train_one_epoch`) or fits the head (`fit_head`), and rank 0
validates (`validate`) and records it (`record_epoch`). Under torchrun every rank trains; the
skeleton tells every rank rank 0's early-stopping decision, so that they leave the loop together.
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
from ..interrupt import StopFlag, save_or_explain
from ..loop import run_epochs
from ..optim import trainable
from .loop import NanLoss, StepPlan, evaluate, train_epoch, train_mode
from .session import Session


def train_all(s: Session) -> None:
    """Run the remaining epochs through the loop skeleton (which says how to resume on Ctrl-C)."""
    task = Epochs(s)
    run_epochs(task, "finetune", task.steps, s.run, s.out, stop_after=s.cfg.stop_after)


class Epochs:
    """The fine-tune recipe as the loop skeleton's Task: each epoch enters its stage and trains
    one pass (or fits the head for the whole frozen stage at once); rank 0 then validates and
    records it. A resume restarts at an epoch boundary: Ctrl-C keeps the last epoch's checkpoint."""

    resumes_mid_epoch = False

    def __init__(self, s: Session) -> None:
        self.s, self.cfg, self.ctx, self.device = s, s.cfg, s.ctx, s.device
        self.steps = math.ceil(len(s.data.train) / s.cfg.batch_size)  # per epoch
        self.metrics: dict[str, Any] = {}

    @property
    def epoch(self) -> int:
        """Epochs completed (the session's count, which its checkpoints store)."""
        return self.s.epoch

    @epoch.setter
    def epoch(self, value: int) -> None:
        self.s.epoch = value

    @property
    def stopped(self) -> str | None:
        """Why the run stopped early (patience), as the session reports it."""
        return self.s.stopped

    @stopped.setter
    def stopped(self, value: str | None) -> None:
        self.s.stopped = value

    @property
    def step(self) -> int:
        """Optimisation steps of the schedule completed."""
        return self.s.global_step

    def begin(self) -> None:
        """Decode (or cache the features of) what the remaining stages read, before the bar."""
        s = self.s
        stages = dict.fromkeys(s.frozen_at(e) for e in range(s.epoch, s.cfg.epochs))  # in order
        for frozen in stages:
            s.source("train", frozen, collective=True)
            if s.ctx.is_main:  # rank 0 validates
                s.source("val" if len(s.data.val) else "train", frozen)

    def train_epoch(self, epoch: int, advance: Any, stop: StopFlag) -> dict[str, Any]:
        """Enter the epoch's stage and train one pass, or fit the head for the frozen stage."""
        s = self.s
        frozen = s.frozen_at(s.epoch)
        if not frozen and s.stage == "frozen" and s.cfg.frozen:
            s.unfreeze()
        if frozen and s.cfg.solves_head():
            row = fit_head(s, self.steps, advance)
        else:
            row = train_one_epoch(s, frozen, self.steps, advance, stop)
        s.global_step = row["epoch"] * self.steps  # the schedule's position after a fit, too
        return row

    def end_epoch(self, row: dict[str, Any]) -> dict[str, Any]:
        """Rank 0: validate (a head fit was validated as it was fitted), then record the epoch."""
        started = time.perf_counter()
        if row["path"] != "head-fit":
            row |= validate(self.s, row["stage"] == "frozen")
        row["seconds"] = row.pop("train_seconds") + time.perf_counter() - started
        record_epoch(self.s, row)
        return row


def train_one_epoch(
    s: Session, frozen: bool, steps_per_epoch: int, advance: Any, stop: StopFlag
) -> dict[str, Any]:
    """One pass of the current stage through its training view (the head on cached features,
    or the whole model on pixels); its metrics row, validation still to come."""
    c = s.cfg
    src, module = s.source("train", frozen, collective=True)
    view, cached = s.training_module(module), module is not s.model
    smoothing = c.label_smoothing if frozen or not c.staged else c.unfreeze_label_smoothing
    train_loss = nn.CrossEntropyLoss(label_smoothing=smoothing)
    train_mode(s.model, frozen, c.train_bn, keep_bn=s.keeps_bn)
    plan = _plan(s, frozen, steps_per_epoch)
    try:
        with _threads(1 if cached else None):  # tiny head ops: extra threads only spin
            tr = train_epoch(view, lambda: trainable(module), src, s.optimizer, train_loss, plan,
                             None if cached else advance, stop=stop, ctx=s.ctx,
                             accel=s.accel)  # fmt: skip
    except NanLoss as exc:
        _nan_failure(s, exc)
    if cached:  # milliseconds an epoch: the bar moves once per epoch
        advance(steps_per_epoch, info=f"epoch {s.epoch + 1} loss {tr['train_loss']:.4f} "
                                      f"acc {tr['train_acc']:.3f}")  # fmt: skip
    return {"epoch": s.epoch + 1, "stage": "frozen" if frozen else "unfrozen",
            "path": "cached-features" if cached else "slow", **tr,
            "val_loss": math.nan, "val_acc": math.nan,  # rank 0 validates at the epoch's end
            "lr": s.optimizer.param_groups[0]["lr"]}  # fmt: skip


def validate(s: Session, frozen: bool) -> dict[str, float]:
    """Loss and accuracy on the validation split (the training split when there is none)."""
    s.model.eval()
    src, forward = s.source("val" if len(s.data.val) else "train", frozen)
    with _threads(1 if forward is not s.model else None):
        val, _ = evaluate(forward, src, nn.CrossEntropyLoss(), accel=s.accel)
    return {"val_loss": val["loss"], "val_acc": val["acc"]}


def fit_head(s: Session, steps_per_epoch: int, advance: Any) -> dict[str, Any]:
    """The whole frozen stage as one head fit on cached features (rank 0 solves, every rank
    gets the head); its metrics row carries the stage's last epoch."""
    from .headfit import broadcast_head, fit_linear_head, fit_mlp_head, seeded

    c, ce = s.cfg, nn.CrossEntropyLoss()
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
    advance(steps_per_epoch * (end - s.epoch), info="head fit")
    return {"epoch": end, "stage": "frozen", "path": "head-fit", **row, "lr": 0.0}


def record_epoch(s: Session, row: dict[str, Any]) -> None:
    """Rank 0: metrics row, best/last checkpoints, early-stopping bookkeeping, one console line."""
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


@contextmanager
def _threads(n: int | None) -> Iterator[None]:
    """Run a block with `n` intra-op threads (None: as set), restoring the setting after."""
    before = torch.get_num_threads()
    torch.set_num_threads(n or before)
    try:
        yield
    finally:
        torch.set_num_threads(before)


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
