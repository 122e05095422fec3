"""The one epoch-loop skeleton of every training recipe: classifier, GAN, autoencoder.

It owns what every training run needs and no recipe should repeat: the progress bar, Ctrl-C
(caught at a step boundary and agreed by every process), main-process-only evaluation and
writes, early stopping told to every process, RNG sharing after rank 0's evaluation, the
checkpoint written after every epoch and the resume hint. A recipe provides a `Task`: its step
loop for one epoch (`train_epoch`) and its end-of-epoch evaluation, metrics row and checkpoint
(`end_epoch`, rank 0 only).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Protocol

from ..distributed import DistContext, on_main
from ..runs import RunDir
from .images import agree_stop, share_rng
from .interrupt import Interrupted, StopFlag, catch_sigint, kept_hint, resume_hint


class Task(Protocol):
    """What a recipe gives the loop (GanState, AeState, the classifier's Epochs)."""

    cfg: Any  # epochs
    epoch: int  # epochs completed (the loop sets it from each epoch's row)
    step: int  # optimisation steps completed (the resume hint names it)
    metrics: dict[str, Any]  # the last epoch's row, on every process
    stopped: str | None  # why the run ends before cfg.epochs (early stopping); None: it goes on
    resumes_mid_epoch: bool  # Ctrl-C saves the exact step reached; else the last epoch's stays
    ctx: DistContext
    device: Any

    def begin(self) -> None:
        """Before the run's bar opens: read what the epochs train on (it may show its own bar)."""

    def train_epoch(self, epoch: int, advance: Any, stop: StopFlag) -> dict[str, Any]:
        """Train epoch `epoch` (or the rest of one cut by Ctrl-C): its training figures, with a
        later "epoch" when it did several epochs at once. Raises Interrupted at a step boundary
        once every process agreed to stop."""

    def end_epoch(self, row: dict[str, Any]) -> dict[str, Any]:
        """Rank 0: evaluate, write the metrics row, checkpoints and log, decide `stopped`; the
        final row."""

    def save(self, path: Path) -> Path:
        """Write the whole training state to `path` (the resume point; if resumes_mid_epoch)."""


def run_epochs(
    task: Task,
    command: str,
    steps_per_epoch: int,
    run: RunDir,
    out: Any,
    stop_after: int | None = None,
) -> None:
    """Train `task` from its epoch to cfg.epochs (fewer when it stops early, or after
    `stop_after` epochs of this call), checkpointing after every epoch. On Ctrl-C or SIGTERM:
    keep (or save) a resume point, print how to continue, and raise KeyboardInterrupt."""
    epochs, kept, ran = task.cfg.epochs, task.epoch, 0  # kept: the epoch checkpointed on disk
    try:
        task.begin()
        with (
            out.progress(command, max(0, steps_per_epoch * (epochs - task.epoch))) as advance,
            catch_sigint() as stop,
        ):
            while task.epoch < epochs and task.stopped is None and ran != stop_after:
                if agree_stop(stop.requested, task.device, task.ctx):
                    raise Interrupted  # Ctrl-C between epochs: the last one's checkpoint is out
                _one_epoch(task, advance, stop)
                kept, ran = task.epoch, ran + 1
    except Interrupted:  # every process stopped at the same step
        if task.resumes_mid_epoch:  # the others wait for rank 0's save
            on_main(lambda: task.save(run.checkpoint("last")), task.ctx)
            out.warn(resume_hint(command, run.path, task.epoch, task.step))
        else:
            out.warn(kept_hint(command, run, kept))
        raise KeyboardInterrupt from None
    except KeyboardInterrupt:  # a second Ctrl-C, or one before the first step: no boundary
        out.warn(kept_hint(command, run, kept))
        raise


def _one_epoch(task: Task, advance: Any, stop: StopFlag) -> None:
    """Train one epoch, then rank 0 evaluates and writes while the others wait; every process
    learns whether rank 0 stopped the run early."""
    started = time.perf_counter()
    row = {"epoch": task.epoch + 1, **task.train_epoch(task.epoch + 1, advance, stop)}
    row["train_seconds"] = time.perf_counter() - started
    task.epoch = row["epoch"]  # before the checkpoint is written
    task.metrics, task.stopped = on_main(lambda: (task.end_epoch(row), task.stopped), task.ctx)
    share_rng(task.ctx, task.device)  # rank 0's evaluation may have drawn random numbers
