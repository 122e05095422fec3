"""`dlpipe ae train`: a (denoising) autoencoder, top to bottom.

Stage function: `train_autoencoder(AeConfig, run_dir) -> {"run_dir", "artifacts", "metrics"}`.
With `noise`, each batch is corrupted on the fly and the clean image is the target, and the model
is a U-Net predicting a residual (models/unet.py) unless `arch="conv"` asks for the compressing
autoencoder (models/autoencoder.py), the default without noise.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from ...config import AeConfig
from ...console import quiet
from ...runs import RunDir
from ..images import begin_run, open_image_run, share_rng


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
    if resume and cfg.arch is None:  # a run from before --arch: keep the net it was built with
        cfg.arch = _saved_net(run)
    ctx, device, accel, data = open_image_run(cfg, 0.0, 1.0, out)
    train, val = data.train, data.val
    state = AeState.create(cfg, data, device, noise, ctx, accel)
    if resume:
        state.restore(run.checkpoint("last"))
        share_rng(ctx, device)  # the saved CUDA state is rank 0's device's

    shown = f"train {len(train)}, val {len(val)}, test {len(data.heldout)}"
    logged = f"ae train: {data.summary}; arch {state.arch}; noise {cfg.noise}"
    begin_run(run, data, out, cfg, state, resume, shown, logged, ctx)
    started = time.perf_counter()
    run_epochs(state, train, val, data, run, out)
    return on_main(lambda: final_outputs(state, data, run, out, time.perf_counter() - started), ctx)


def _saved_net(run: RunDir) -> str | None:
    """The autoencoder net of the run's last checkpoint (conv for files older than --arch)."""
    from ...checkpoint import load_checkpoint

    path = run.checkpoint("last")
    if not path.exists():
        return None  # resume explains that there is nothing to resume
    return str(load_checkpoint(path).meta.get("arch", {}).get("net", "conv"))
