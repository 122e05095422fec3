"""`dlpipe finetune` as a stage: (FinetuneConfig, run_dir) -> result dict.

The recipe: open the data and its split, build the backbone with its pretrained weights and a new
head, freeze it (BatchNorm statistics included), train the head on cached features while frozen,
optionally unfreeze with a discriminative learning rate, keep best/last checkpoints, and evaluate
the best weights on the held-out split.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ...config import FinetuneConfig
from ...runs import RunDir


def run_finetune(
    cfg: FinetuneConfig, run_dir: RunDir | str | Path, out: Any = None, resume: bool = False
) -> dict[str, Any]:
    """Train (or resume) a classifier in `run_dir`; returns {run_dir, artifacts, metrics, ...}."""
    from ...console import quiet
    from ...distributed import on_main
    from .report import finish
    from .session import Session
    from .stages import train_all

    run = run_dir if isinstance(run_dir, RunDir) else RunDir(Path(run_dir))
    session = Session.start(cfg, run, out or quiet(), resume)
    ctx = session.ctx  # under torchrun: every rank trains, rank 0 alone writes
    if ctx.is_main:
        run.checkpoints.mkdir(parents=True, exist_ok=True)
        if not resume:
            run.write_config(cfg.to_dict())
    train_all(session)
    if cfg.stop_after is not None and session.epoch < cfg.epochs and session.stopped is None:
        return {"run_dir": str(run.path), "artifacts": {"last": str(run.checkpoint("last"))},
                "metrics": {"epochs_run": session.epoch, "interrupted": True}}  # fmt: skip
    return on_main(lambda: finish(session), ctx)
