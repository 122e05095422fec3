"""The one epoch-loop skeleton of the GAN and autoencoder recipes.

It owns what every training run needs and no recipe should repeat: the progress bar, Ctrl-C
(caught at a step boundary and agreed by every process), main-process-only evaluation and
writes, RNG sharing after rank 0's evaluation, the resume hint, and the checkpoint written after
every epoch. A recipe provides a `Task`: its step loop for one epoch (`train_epoch`) and its
end-of-epoch evaluation, metrics row and checkpoint (`end_epoch`, rank 0 only).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Protocol

from ..distributed import DistContext, on_main
from ..runs import RunDir
from .images import agree_stop, share_rng
from .interrupt import Interrupted, StopFlag, catch_sigint, resume_hint


class Task(Protocol):
    """What a recipe gives the loop (GanState, AeState)."""

    cfg: Any  # epochs, batch_size
    epoch: int  # epochs completed (the loop advances it)
    step: int  # optimisation steps completed
    metrics: dict[str, Any]  # the last epoch's row
    ctx: DistContext
    device: Any

    def train_epoch(self, pixels: Any, epoch: int, advance: Any, stop: StopFlag) -> dict:
        """One pass (or the rest of one cut by Ctrl-C): the epoch's training figures.
        Raises Interrupted at a step boundary once every process agreed to stop."""

    def end_epoch(self, row: dict[str, Any]) -> dict[str, Any]:
        """Rank 0: evaluate, write the metrics row, the checkpoint and the log; the final row."""

    def save(self, path: Path) -> Path:
        """Write the whole training state to `path` (the resume point)."""


def run_epochs(
    task: Task, command: str, pixels: Any, steps_per_epoch: int, run: RunDir, out: Any
) -> None:
    """Train `task` from its epoch to cfg.epochs, checkpointing after every epoch; on Ctrl-C save
    the exact point reached, print how to continue, and raise KeyboardInterrupt."""
    epochs = task.cfg.epochs
    with (
        out.progress(command, max(0, steps_per_epoch * (epochs - task.epoch))) as advance,
        catch_sigint() as stop,
    ):
        try:
            for epoch in range(task.epoch + 1, epochs + 1):
                _one_epoch(task, pixels, epoch, advance, stop)
                if epoch < epochs and agree_stop(stop.requested, task.device, task.ctx):
                    raise Interrupted  # Ctrl-C during evaluation: the epoch's checkpoint is out
        except Interrupted:
            # every process stopped at the same step; the others wait for rank 0's save
            on_main(lambda: task.save(run.checkpoint("last")), task.ctx)
            out.warn(resume_hint(command, run.path, task.epoch, task.step))
            raise KeyboardInterrupt from None


def _one_epoch(task: Task, pixels: Any, epoch: int, advance: Any, stop: StopFlag) -> None:
    """Train one epoch, then rank 0 evaluates and writes while the others wait."""
    started = time.perf_counter()
    row = {"epoch": epoch, **task.train_epoch(pixels, epoch, advance, stop)}
    seconds = time.perf_counter() - started
    row |= {"train_seconds": seconds, "images_per_s": len(pixels) / max(seconds, 1e-9)}
    task.epoch = epoch  # before the checkpoint is written
    task.metrics = on_main(lambda: task.end_epoch(row), task.ctx)
    share_rng(task.ctx, task.device)  # rank 0's evaluation may have drawn random numbers
