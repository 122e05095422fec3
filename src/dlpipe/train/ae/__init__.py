"""`dlpipe ae train`: a convolutional (denoising) autoencoder, top to bottom.

Stage function: `train_autoencoder(AeConfig, run_dir) -> {"run_dir", "artifacts", "metrics"}`.
With `noise`, each batch is corrupted on the fly and the clean image is the target.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from ...config import AeConfig
from ...console import quiet
from ...errors import BadInput
from ...runs import RunDir
from ..images import begin_run, load_image_data, share_rng


def train_autoencoder(
    cfg: AeConfig, run_dir: RunDir | Path, out: Any = None, resume: bool = False
) -> dict[str, Any]:
    """Train an autoencoder into `run_dir`; returns run_dir, artifacts and final metrics.

    Under torchrun every process trains its rows of each global batch; rank 0 alone writes and
    evaluates, and every process returns rank 0's result."""
    from ...distributed import on_main, setup
    from ...runtime import seed_everything
    from ..accel import Accel
    from .loop import AeState, final_outputs, run_epochs
    from .parts import parse_noise

    if cfg.loss not in ("mse", "bce"):
        raise BadInput(f"--loss {cfg.loss!r} is not known.", hint="Use mse or bce.")
    noise = parse_noise(cfg.noise)
    out = out or quiet()
    run = run_dir if isinstance(run_dir, RunDir) else RunDir(Path(run_dir))
    seed_everything(cfg.seed, cfg.deterministic)
    ctx, device = setup(cfg.device)
    accel = Accel.create(cfg.amp, cfg.compile, device)
    data = load_image_data(
        cfg.data, cfg.data_root, cfg.strict, cfg.image_size, cfg.val_fraction,
        cfg.test_fraction, cfg.seed, cfg.limit, 0.0, 1.0, out,
    )  # fmt: skip
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
