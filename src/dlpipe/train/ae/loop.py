"""The autoencoder step, epoch loop, checkpoints and final held-out metrics.

Data-parallel (torchrun): the model is wrapped for training (`parallel.training_view`: DDP);
every process draws the same global batch and noise and trains on its rows; the epoch loss is
reduced over processes. Rank 0 alone validates, tests and writes.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ...checkpoint import load_checkpoint, save_checkpoint
from ...checkpoint_meta import CheckpointMeta
from ...config import AeConfig
from ...distributed import DistContext, all_reduce_sum
from ...errors import Diverged
from ...models.autoencoder import build_autoencoder
from ...models.unet import unet_depth
from ...noise import add_noise
from ...plots import plot_curves
from ...runs import RunDir
from ...runtime import rng_state, set_rng_state
from .. import loop
from ..accel import Accel
from ..images import ImageData, agree_stop, batches, global_batch, rows_of, train_pixels, weighted
from ..interrupt import Interrupted, StopFlag, save_or_explain
from ..parallel import training_view
from .parts import RawOutput, evaluate, save_triplets


@dataclass
class AeState:
    """Model, optimizer and counters of one run (what a checkpoint stores)."""

    cfg: AeConfig
    arch: dict[str, Any]
    device: Any
    noise: tuple[str, float] | None
    model: torch.nn.Module  # AutoEncoder (conv) or UNet
    opt: torch.optim.Optimizer
    epoch: int = 0
    step: int = 0
    metrics: dict[str, Any] = field(default_factory=dict)
    partial: dict[str, Any] | None = None  # a Ctrl-C mid-epoch: perm, steps done, loss sum
    ctx: DistContext = field(default_factory=DistContext)
    accel: Accel | None = None  # None: plain float32 (Accel "off")
    view: torch.nn.Module | None = None  # what training calls: image -> raw output (DDP etc.)
    stopped: str | None = None  # the loop skeleton's early stop (an autoencoder runs all epochs)
    data: ImageData | None = None  # bound by run_epochs: what the loop's callbacks need
    train: np.ndarray | None = None
    pixels: torch.Tensor | None = None  # the training images on the device (uint8)
    val: np.ndarray | None = None
    run: RunDir | None = None
    out: Any = None

    resumes_mid_epoch = True  # a Ctrl-C saves the exact step reached (`partial`)

    @property
    def acc(self) -> Accel:
        """The precision settings (plain float32 when none were given)."""
        if self.accel is None:
            self.accel = Accel(torch.device(str(self.device)))
        return self.accel

    @property
    def raw(self) -> torch.nn.Module:
        """image -> the decoder's linear output, as training calls it."""
        if self.view is None:
            self.view = RawOutput(self.model)
        return self.view

    @classmethod
    def create(
        cls,
        cfg: AeConfig,
        data: ImageData,
        device: Any,
        noise: tuple[str, float] | None,
        ctx: DistContext | None = None,
        accel: Accel | None = None,
        saved: dict[str, Any] | None = None,
    ) -> AeState:
        """A fresh autoencoder sized to the data, with Adam, and its training view; `saved` (the
        arch of the checkpoint a resumed run continues) keeps the U-Net activation it was
        trained with (LeakyReLU for files from before SiLU)."""
        arch = {
            "net": cfg.net, "image_size": data.image_size,
            "channels": data.channels, "width": cfg.width,
            "output": "sigmoid" if cfg.loss == "bce" else "clamp",
        }  # fmt: skip
        if cfg.net == "conv":
            arch["latent"] = cfg.latent
        else:
            arch["depth"] = unet_depth(data.image_size)  # informative; rebuilt from image_size
            old = saved if saved and saved.get("net") == "unet" else None
            arch["act"] = str(old.get("act", "leaky")) if old else "silu"
        model = build_autoencoder(arch).to(device)
        opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
        ctx, accel = ctx or DistContext(), accel or Accel(device)
        view = training_view(RawOutput(model), ctx, device, accel, sync_bn=False)
        return cls(cfg=cfg, arch=arch, device=device, noise=noise, model=model, opt=opt,
                   ctx=ctx, accel=accel, view=view)  # fmt: skip

    def restore(self, path: Path) -> None:
        """Load weights, optimizer, RNG and counters from a checkpoint of the same run."""
        ck = load_checkpoint(path, device=str(self.device))
        self.model.load_state_dict(ck.weights["model"])
        self.opt.load_state_dict(ck.state["opt"])
        self.epoch, self.step = int(ck.state["epoch"]), int(ck.state["step"])
        self.metrics = dict(ck.meta.get("metrics", {}))
        self.partial = ck.state.get("partial")
        self.acc.load_state(ck.state.get("scalers"))
        set_rng_state(ck.state["rng"])

    @property
    def io(self) -> dict[str, str]:
        """Exported names; only the conv AE has a latent (and encoder/decoder parts)."""
        io = {"input": "image", "output": "reconstruction"}
        return io | ({"latent": "latent"} if self.arch.get("net", "conv") == "conv" else {})

    def save(self, path: Path, data: ImageData | None = None) -> Path:
        """Atomically write weights (group "model"), optimizer, RNG and the contract's meta."""
        data = data or self.data
        assert data is not None, "save() needs the run's data"
        meta = CheckpointMeta(
            command="ae", kind="autoencoder", arch=self.arch, export_group="model",
            preprocess=data.preprocess.to_dict(),
            io=self.io,
            data=data.data_meta, metrics=self.metrics, config=asdict(self.cfg),
            extra={"noise": self.cfg.noise},
        ).to_dict()  # fmt: skip
        state = {
            "epoch": self.epoch, "step": self.step, "opt": self.opt.state_dict(),
            "rng": rng_state(),
        }  # fmt: skip
        if self.partial is not None:
            state["partial"] = self.partial
        if self.acc.state():  # fp16 loss scale
            state["scalers"] = self.acc.state()
        weights = {"model": self.model.state_dict()}
        return save_or_explain(lambda: save_checkpoint(path, weights, meta, state), path)

    # ---- the loop skeleton's Task (train/loop.py) ---------------------------------------------
    def begin(self) -> None:
        """The training images onto the device."""
        self.pixels = train_pixels(self.train, self.device)

    def train_epoch(self, epoch: int, advance: Any, stop: StopFlag) -> dict:
        """One epoch of denoising steps at the epoch's learning rate (AeConfig.lr_at: the U-Net's
        last epochs anneal): the global mean training loss."""
        for group in self.opt.param_groups:
            group["lr"] = self.cfg.lr_at(epoch)
        return {"train_loss": run_epoch(self, self.pixels, epoch, advance, stop)}

    def end_epoch(self, row: dict[str, Any]) -> dict[str, Any]:
        """Rank 0: validation PSNR/SSIM and grid, metrics.csv, checkpoint, log."""
        row["images_per_s"] = len(self.pixels) / max(row["train_seconds"], 1e-9)
        return _end_epoch(self, self.val, self.data, self.run, self.out, row)


def _loss(raw: torch.Tensor, clean: torch.Tensor, kind: str) -> torch.Tensor:
    """On the decoder's linear output: BCE on logits, or MSE before the [0, 1] clamp."""
    if kind == "bce":
        return F.binary_cross_entropy_with_logits(raw, clean)
    return F.mse_loss(raw, clean)


def train_step(s: AeState, clean: torch.Tensor) -> torch.Tensor:
    """One update on the GLOBAL batch of clean images (noise drawn for all of it, the same on
    every process; this process trains on its rows); returns this process's share of the
    global batch's mean loss (detached): summed over processes, the global mean."""
    n = clean.shape[0]
    noisy = rows_of(add_noise(clean, s.noise), s.ctx)
    clean = rows_of(clean, s.ctx)
    with s.acc.autocast():
        loss = _loss(s.raw(noisy).float(), clean, s.cfg.loss)
    s.opt.zero_grad(set_to_none=True)
    s.acc.backward(weighted(loss, s.ctx.share(n)), "model")
    s.acc.step(s.opt, "model")
    return weighted(loss.detach(), s.ctx.local_count(n) / n)


def run_epoch(s: AeState, pixels: torch.Tensor, epoch: int, advance: Any, stop: StopFlag) -> float:
    """One pass over the training pixels (or the rest of one cut by Ctrl-C) with fresh noise per
    batch; returns the global mean loss. After Ctrl-C (on any process, agreed by all at the same
    step), records where it stopped and raises Interrupted."""
    s.raw.train()
    cut, s.partial = s.partial, None
    perm = cut["perm"] if cut else torch.randperm(len(pixels))
    total = torch.zeros((), device=s.device)
    if cut and s.ctx.is_main:  # the saved sum is global: count it once
        total = cut["total"].to(s.device)
    done = int(cut["n"]) if cut else 0
    spans = batches(len(pixels), s.cfg.batch_size, s.ctx.world_size)
    for index, (a, b) in enumerate(spans):
        if index < done:  # done before the Ctrl-C
            continue
        if agree_stop(stop.requested, s.device, s.ctx):
            s.partial = {"perm": perm, "total": all_reduce_sum(total, s.ctx), "n": index}
            raise Interrupted
        clean = global_batch(pixels, perm[a:b], s.ctx).float().div_(255.0)
        total += train_step(s, clean)
        s.step += 1
        advance(1)
    mean = float(all_reduce_sum(total, s.ctx)) / max(len(spans), 1)
    if not np.isfinite(mean):
        raise Diverged(
            f"Training diverged: the autoencoder loss is NaN/Inf in epoch {epoch}; the last good "
            "checkpoint was kept in checkpoints/last.safetensors.",
            hint="Lower --lr (Adam: 5e-4 .. 3e-3), then --resume or start again.",
        )
    return mean


def run_epochs(
    s: AeState, train: np.ndarray, val: np.ndarray, data: ImageData, run: RunDir, out: Any
) -> None:
    """Train from the state's epoch to cfg.epochs through the shared loop skeleton."""
    s.data, s.train, s.val, s.run, s.out = data, train, val, run, out
    steps = len(batches(len(train), s.cfg.batch_size, s.ctx.world_size))
    loop.run_epochs(s, "ae train", steps, run, out)


def _end_epoch(
    s: AeState, val: np.ndarray, data: ImageData, run: RunDir, out: Any, row: dict
) -> dict:
    """Rank 0's part of an epoch's end: validate, metrics.csv, checkpoint, log; returns the row."""
    epoch = row["epoch"]
    if len(val):
        ev = evaluate(s.model, val, s.noise, s.device, seed=s.cfg.seed + 1)
        examples = ev.pop("_examples")
        row |= {f"val_{k}": v for k, v in ev.items()}
        grid = save_triplets(examples, run.path / "samples" / f"epoch_{epoch:03d}.png")
        run.log_image("reconstructions", grid, epoch)
    s.metrics = row
    run.append_metrics(row)
    s.save(run.checkpoint("last"), data)
    shown = f", val PSNR {row['val_psnr_db']:.2f} dB" if "val_psnr_db" in row else ""
    run.log(f"epoch {epoch}: train_loss {row['train_loss']:.5f}{shown}")
    out.print(f"epoch {epoch}/{s.cfg.epochs}: loss {row['train_loss']:.5f}{shown}")
    return row


def final_outputs(
    s: AeState, data: ImageData, run: RunDir, out: Any, wall_s: float
) -> dict[str, Any]:
    """Held-out (test) PSNR/SSIM and gain, the triplet grid, curves; the command's result."""
    grid, test = None, {}
    if len(data.heldout):
        test = evaluate(s.model, data.heldout, s.noise, s.device, seed=s.cfg.seed + 2,
                        labels=data.heldout_labels)  # fmt: skip
        grid = save_triplets(test.pop("_examples"), run.path / "reconstructions.png")
        run.log_image("reconstructions_test", grid, s.epoch)
    metrics = {
        **test,
        "heldout_images": len(data.heldout),
        "epochs": s.epoch,
        "wall_seconds": wall_s,
    }
    metrics["train_loss"] = s.metrics.get("train_loss")
    s.metrics = metrics
    ck = s.save(run.checkpoint("last"), data)  # the final metrics go into the checkpoint's meta
    panels = {"loss": ["train_loss", "val_mse"], "PSNR (dB)": ["val_psnr_db", "val_noisy_psnr_db"]}
    curves = plot_curves(run.read_metrics(), panels, run.path / "curves.png")
    artifacts = {
        "checkpoint": ck, "reconstructions": grid, "curves": curves,
        "metrics_csv": run.metrics_path, "grids": run.path / "samples",
    }  # fmt: skip
    return run.write_result(artifacts, metrics)
