"""`dlpipe gan train`: the DCGAN recipe, top to bottom. Plumbing: ../images.py, loop.py, evaluate.py.

Stage function: `train_gan(GanConfig, run_dir) -> {"run_dir", "artifacts", "metrics"}`.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from ...config import GanConfig
from ...console import quiet
from ...runs import RunDir
from ..images import begin_run, open_image_run, share_rng


def train_gan(
    cfg: GanConfig, run_dir: RunDir | Path, out: Any = None, resume: bool = False
) -> dict[str, Any]:
    """Train a DCGAN into `run_dir`; returns run_dir, artifacts and final metrics.

    Under torchrun every process trains its rows of each global batch; rank 0 alone writes and
    evaluates, and every process returns rank 0's result."""
    from ...distributed import on_main
    from .loop import GanState, final_outputs, run_epochs

    cfg.check()  # every range, also for a config built by hand
    out = out or quiet()
    run = run_dir if isinstance(run_dir, RunDir) else RunDir(Path(run_dir))
    if resume:
        cfg = _saved_channels(cfg, run)
    ctx, device, accel, data = open_image_run(cfg, 0.5, 0.5, out)
    state = GanState.create(cfg, data, device, ctx, accel)
    if resume:
        state.restore(run.checkpoint("last"))
        share_rng(ctx, device)  # the saved CUDA state is rank 0's device's

    if ctx.is_main and not resume:
        _warn_if_too_short(cfg, len(data.train), data.image_size, out)
    shown = f"training on {len(data.train)}, held out {len(data.heldout)}"
    logged = f"gan train: {data.summary}; arch {state.arch}"
    begin_run(run, data, out, cfg, state, resume, shown, logged, ctx)
    started = time.perf_counter()
    run_epochs(state, data, run, out)
    return on_main(lambda: final_outputs(state, data, run, out, time.perf_counter() - started), ctx)


def _saved_channels(cfg: GanConfig, run: RunDir) -> GanConfig:
    """On --resume, the checkpoint's ngf/ndf where the config leaves them unset (None): a run begun
    when None meant "32 up to 32 px" keeps the shapes its weights have under today's default."""
    import dataclasses

    from ...checkpoint import read_meta

    if cfg.ngf is not None and cfg.ndf is not None:
        return cfg
    arch = read_meta(run.checkpoint("last")).get("arch") or {}
    ngf, ndf = cfg.ngf or arch.get("ngf"), cfg.ndf or arch.get("ndf")
    return dataclasses.replace(cfg, ngf=ngf and int(ngf), ndf=ndf and int(ndf))


# Generator updates before DCGAN samples stop being grey noise: ~700 on mnist5k at 28 px (digits
# appear after ~10 epochs of 4,500 images); larger images and fewer of them need more.
MIN_STEPS = 1000
MIN_IMAGES = 1000


def _warn_if_too_short(cfg: GanConfig, images: int, side: int, out: Any) -> None:
    """Say up front when a run is too short or its data too small for samples to show anything."""
    steps = -(-images // cfg.batch_size) * cfg.epochs
    if steps >= MIN_STEPS and images >= MIN_IMAGES:
        return
    out.warn(
        f"this DCGAN gets {steps} generator steps on {images} images at {side} px; samples usually "
        f"stay grey noise below ~{MIN_STEPS} steps and ~{MIN_IMAGES} images (more at 64 px). "
        "Train longer (--epochs), add images, or use a smaller --image-size (28 or 32)."
    )
