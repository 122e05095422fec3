"""`dlpipe gan train`: the DCGAN recipe, top to bottom. Plumbing is in gan_data.py / gan_eval.py.

Stage function: `train_gan(GanConfig, run_dir) -> {"run_dir", "artifacts", "metrics"}`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import CheckFailed
from ..runs import RunDir
from .gan_data import Quiet, begin_run, load_image_data, share_rng


@dataclass
class GanConfig:
    """Everything `dlpipe gan train` needs; the YAML stage `gan` maps onto the same fields."""

    data: str = "mnist5k"  # built-in set or folder (labels are ignored; a flat folder works)
    data_root: str | None = None  # where a built-in set's files are, if not the default
    strict: bool = False  # fail on unreadable files instead of skipping them
    image_size: int | None = None  # output side; None = the data's side (28 for MNIST); 28|32|64
    nz: int = 100  # latent size; 64-128 is the usual range
    ngf: int | None = None  # G base channels; None = 32 up to 32 px (fast on CPU), 64 above
    ndf: int | None = None  # D base channels; None = same rule as ngf
    epochs: int = 20  # passes over the training images; mnist5k shows digits after ~10
    batch_size: int = 64  # images per step; 64-128 (DCGAN paper: 128)
    lr: float = 2e-4  # Adam learning rate for G and D (DCGAN: 2e-4)
    beta1: float = 0.5  # Adam beta1 (DCGAN: 0.5; 0.9 oscillates)
    label_smoothing: float = 0.9  # one-sided: D's target for real images; 1.0 turns it off
    ema: bool = False  # export an exponential-moving-average generator
    ema_decay: float = 0.999  # EMA decay per step (with warm-up); 0.99-0.9999
    d_steps: int = 1  # discriminator updates per generator update; 1-5
    val_fraction: float = 0.0  # a GAN needs no validation split
    test_fraction: float = 0.1  # held-out share: the real images fd/kid compare against
    limit: int | None = None  # use at most N training images
    fd_every: int = 5  # compute fd/kid every K epochs and at the end; 0 = never
    fd_images: int = 1000  # at most this many generated / held-out images for fd/kid
    fd_image_size: int = 96  # side fed to mobilenet_v2 for features (224 = ImageNet, 5x slower)
    collapse_steps: int = 200  # warn when D wins completely for this many consecutive steps
    seed: int = 0  # split, initialisation, noise and data order
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    deterministic: bool = False  # bit-reproducible kernels
    amp: str = "off"  # off | bf16 | fp16 (autocast; GradScaler for fp16)
    compile: bool = False  # torch.compile G and D for training
    sync_bn: bool = True  # with several processes: BatchNorm statistics of the global batch

    def resolved_channels(self, image_size: int) -> tuple[int, int]:
        """(ngf, ndf) after the size-dependent defaults."""
        auto = 32 if image_size <= 32 else 64
        return self.ngf or auto, self.ndf or self.ngf or auto


class Diverged(CheckFailed):
    """A loss became NaN/Inf: training stops, the last good checkpoint stays."""


def train_gan(
    cfg: GanConfig, run_dir: RunDir | Path, out: Any = None, resume: bool = False
) -> dict[str, Any]:
    """Train a DCGAN into `run_dir`; returns run_dir, artifacts and final metrics.

    Under torchrun every process trains its rows of each global batch; rank 0 alone writes and
    evaluates, and every process returns rank 0's result."""
    from ..distributed import on_main, setup
    from ..runtime import seed_everything
    from .accel import Accel
    from .gan_loop import GanState, final_outputs, run_epochs

    out = out or Quiet()
    run = run_dir if isinstance(run_dir, RunDir) else RunDir(Path(run_dir))
    seed_everything(cfg.seed, cfg.deterministic)
    ctx, device = setup(cfg.device)
    accel = Accel.create(cfg.amp, cfg.compile, device)
    data = load_image_data(
        cfg.data, cfg.data_root, cfg.strict, cfg.image_size, cfg.val_fraction,
        cfg.test_fraction, cfg.seed, cfg.limit, 0.5, 0.5, out,
    )  # fmt: skip
    state = GanState.create(cfg, data, device, ctx, accel)
    if resume:
        state.restore(run.checkpoint("last"))
        share_rng(ctx, device)  # the saved CUDA state is rank 0's device's

    shown = f"training on {len(data.train)}, held out {len(data.heldout)}"
    logged = f"gan train: {data.summary}; arch {state.arch}"
    begin_run(run, data, out, cfg, state, resume, shown, logged, ctx)
    started = time.perf_counter()
    run_epochs(state, data, run, out)
    return on_main(lambda: final_outputs(state, data, run, out, time.perf_counter() - started), ctx)
