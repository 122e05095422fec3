"""`dlpipe ae train`: a convolutional (denoising) autoencoder, top to bottom.

Stage function: `train_autoencoder(AeConfig, run_dir) -> {"run_dir", "artifacts", "metrics"}`.
With `noise`, each batch is corrupted on the fly and the clean image is the target.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import BadInput
from ..runs import RunDir
from .gan_data import Quiet, begin_run, load_image_data, share_rng


@dataclass
class AeConfig:
    """Everything `dlpipe ae train` needs; the YAML stage `ae` maps onto the same fields."""

    data: str = "mnist5k"  # built-in set or folder (labels are ignored)
    data_root: str | None = None  # where a built-in set's files are, if not the default
    strict: bool = False  # fail on unreadable files instead of skipping them
    image_size: int | None = None  # side; None = the data's side (28 for MNIST)
    latent: int = 32  # bottleneck size; 16-128 (smaller compresses more, blurs more)
    width: int = 32  # channels of the first conv stage, doubled per stage; 16-64
    noise: str | None = None  # gaussian:0.3 | saltpepper:0.1 | mask:0.25; None = plain AE
    loss: str = "mse"  # mse | bce (per-pixel binary cross-entropy, for near-binary images)
    epochs: int = 10  # passes over the training images
    batch_size: int = 64  # images per step; 32-256
    lr: float = 2e-3  # Adam learning rate; 5e-4 - 3e-3
    val_fraction: float = 0.1  # share held out for per-epoch validation
    test_fraction: float = 0.1  # share held out for the final PSNR/SSIM (official test if any)
    limit: int | None = None  # use at most N training images
    seed: int = 0  # split, initialisation, noise and data order
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    deterministic: bool = False  # bit-reproducible kernels
    amp: str = "off"  # off | bf16 | fp16 (autocast; GradScaler for fp16)
    compile: bool = False  # torch.compile the training model


def train_autoencoder(
    cfg: AeConfig, run_dir: RunDir | Path, out: Any = None, resume: bool = False
) -> dict[str, Any]:
    """Train an autoencoder into `run_dir`; returns run_dir, artifacts and final metrics.

    Under torchrun every process trains its rows of each global batch; rank 0 alone writes and
    evaluates, and every process returns rank 0's result."""
    from ..distributed import on_main, setup
    from ..runtime import seed_everything
    from .accel import Accel
    from .ae_loop import AeState, final_outputs, run_epochs
    from .ae_parts import parse_noise

    if cfg.loss not in ("mse", "bce"):
        raise BadInput(f"--loss {cfg.loss!r} is not known.", hint="Use mse or bce.")
    noise = parse_noise(cfg.noise)
    out = out or Quiet()
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
