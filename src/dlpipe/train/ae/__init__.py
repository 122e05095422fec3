"""`dlpipe ae train`: a (denoising) autoencoder, top to bottom.

Stage function: `train_autoencoder(AeConfig, run_dir) -> {"run_dir", "artifacts", "metrics"}`.
With `noise`, each batch is corrupted on the fly and the clean image is the target, and the model
is a U-Net predicting a residual (models/unet.py) unless `arch="conv"` asks for the compressing
autoencoder (models/autoencoder.py), the default without noise.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Any

import numpy as np

from ...config import AeConfig
from ...console import quiet
from ...runs import RunDir
from ..images import ImageData, begin_run, open_image_run, share_rng


def train_autoencoder(
    cfg: AeConfig, run_dir: RunDir | Path, out: Any = None, resume: bool = False
) -> dict[str, Any]:
    """Train an autoencoder into `run_dir`; returns run_dir, artifacts and final metrics.

    Under torchrun every process trains its rows of each global batch; rank 0 alone writes and
    evaluates, and every process returns rank 0's result."""
    from ...distributed import on_main
    from ...noise import parse_noise
    from .loop import AeState, final_outputs, run_epochs

    cfg.check()  # loss, arch and every range, also for a config built by hand
    noise = parse_noise(cfg.noise)
    out = out or quiet()
    run = run_dir if isinstance(run_dir, RunDir) else RunDir(Path(run_dir))
    saved = _saved_arch(run) if resume else None
    if saved is not None and cfg.arch is None:  # a run from before --arch: keep its net
        cfg.arch = str(saved.get("net", "conv"))
    if saved is not None and cfg.width is None:  # the width its weights have
        cfg.width = int(saved["width"])
    cfg = cfg.resolved()  # width and batch size of the net's recipe where not given
    ctx, device, accel, data = open_image_run(cfg, 0.0, 1.0, out)
    data = _evaluated_at_most(data, cfg.eval_limit)
    train, val = data.train, data.val
    state = AeState.create(cfg, data, device, noise, ctx, accel, saved)
    if resume:
        state.restore(run.checkpoint("last"))
        share_rng(ctx, device)  # the saved CUDA state is rank 0's device's

    shown = f"train {len(train)}, val {len(val)}, test {len(data.heldout)}"
    logged = f"ae train: {data.summary}; arch {state.arch}; noise {cfg.noise}"
    begin_run(run, data, out, cfg, state, resume, shown, logged, ctx)
    started = time.perf_counter()
    run_epochs(state, train, val, data, run, out)
    return on_main(lambda: final_outputs(state, data, run, out, time.perf_counter() - started), ctx)


def _saved_arch(run: RunDir) -> dict[str, Any] | None:
    """The arch of the run's last checkpoint (no "net": conv, a file older than --arch; no "act":
    a U-Net from before SiLU), or None when there is none (resume then says so)."""
    from ...checkpoint import read_meta

    path = run.checkpoint("last")
    if not path.exists():
        return None
    return dict(read_meta(path).get("arch") or {})


def _evaluated_at_most(data: ImageData, n: int | None) -> ImageData:
    """`data` with at most `n` validation and `n` held-out images (--eval-limit): held-out ones
    spread over the classes, validation ones evenly over the split; only those rows are read."""
    if n is None:
        return data
    from ...data.splits import spread

    val = spread(np.full(len(data.val), -1), n)
    labels = (
        data.heldout_labels if data.heldout_labels is not None else np.full(len(data.heldout), -1)
    )
    test = spread(labels, n)
    return dataclasses.replace(
        data,
        val=data.val[val] if len(val) < len(data.val) else data.val,
        heldout=data.heldout[test] if len(test) < len(data.heldout) else data.heldout,
        heldout_labels=None if data.heldout_labels is None else data.heldout_labels[test],
    )
