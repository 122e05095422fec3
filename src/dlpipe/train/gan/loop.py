"""The DCGAN training step, epoch loop, checkpoints and final artifacts.

Data-parallel (torchrun): G and D are each wrapped for training (`parallel.training_view`: synced
BatchNorm, DDP); every process draws the same global batch and noise and trains on its rows. D's
gradient is all-reduced once per D step (real pass under `no_sync`, fake pass synced); the G step
calls the PLAIN D with its parameters frozen, so only G's gradient is all-reduced. Optimizers,
EMA, checkpoints and evaluation use the plain modules; rank 0 alone evaluates and writes.
"""

from __future__ import annotations

import contextlib
import copy
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ...checkpoint import load_checkpoint, save_checkpoint
from ...checkpoint_meta import CheckpointMeta
from ...config import GanConfig
from ...distributed import DistContext, all_reduce_sum
from ...errors import Diverged
from ...models.dcgan import build_discriminator, build_generator
from ...plots import plot_curves
from ...runs import RunDir
from ...runtime import rng_state, set_rng_state
from .. import loop
from ..accel import Accel
from ..images import ImageData, agree_stop, batches, global_batch, rows_of, train_pixels, weighted
from ..interrupt import Interrupted, StopFlag, save_or_explain
from ..parallel import training_view
from .evaluate import (
    FD_KEY,
    KID_KEY,
    QualityMeter,
    ema_update,
    export_generator,
    progress_sheet,
    save_grid,
    to_uint8,
)


@dataclass
class GanState:
    """Models, optimizers and counters of one run (what a checkpoint stores)."""

    cfg: GanConfig
    arch: dict[str, Any]
    device: Any
    g: nn.Module
    d: nn.Module
    opt_g: torch.optim.Optimizer
    opt_d: torch.optim.Optimizer
    ema: nn.Module | None
    fixed_noise: torch.Tensor
    epoch: int = 0
    step: int = 0
    streak: int = 0  # consecutive steps where D wins completely
    warned: bool = False
    g_export: nn.Module | None = None
    metrics: dict[str, Any] = field(default_factory=dict)
    quality: QualityMeter | None = None
    partial: dict[str, Any] | None = None  # a Ctrl-C mid-epoch: perm, steps done, loss sums
    ctx: DistContext = field(default_factory=DistContext)
    accel: Accel | None = None  # None: plain float32 (Accel "off")
    g_view: nn.Module | None = None  # what training calls (DDP etc.); None: the plain g
    d_view: nn.Module | None = None
    stopped: str | None = None  # the loop skeleton's early stop (a GAN runs all its epochs)
    data: ImageData | None = None  # bound by run_epochs: what the loop's callbacks need
    pixels: torch.Tensor | None = None  # the training images on the device (uint8)
    run: RunDir | None = None
    out: Any = None

    resumes_mid_epoch = True  # a Ctrl-C saves the exact step reached (`partial`)

    @property
    def gv(self) -> nn.Module:
        """G as training calls it."""
        return self.g if self.g_view is None else self.g_view

    @property
    def dv(self) -> nn.Module:
        """D as the D step calls it."""
        return self.d if self.d_view is None else self.d_view

    @property
    def acc(self) -> Accel:
        """The precision settings (plain float32 when none were given)."""
        if self.accel is None:
            self.accel = Accel(torch.device(str(self.device)))
        return self.accel

    @classmethod
    def create(
        cls,
        cfg: GanConfig,
        data: ImageData,
        device: Any,
        ctx: DistContext | None = None,
        accel: Accel | None = None,
    ) -> GanState:
        """Fresh DCGAN-initialised models, Adam optimizers, the fixed sample noise and the
        training views (the EMA copy is taken before BatchNorm is synced, so it stays plain)."""
        ngf, ndf = cfg.resolved_channels(data.image_size)
        arch = {
            "nz": cfg.nz, "ngf": ngf, "ndf": ndf,
            "image_size": data.image_size, "channels": data.channels,
        }  # fmt: skip
        g, d = build_generator(arch).to(device), build_discriminator(arch).to(device)
        betas = (cfg.beta1, 0.999)
        fixed = torch.randn(64, cfg.nz, generator=torch.Generator().manual_seed(cfg.seed + 1))
        ctx = ctx or DistContext()
        accel = accel or Accel(device)
        s = cls(
            cfg=cfg, arch=arch, device=device, g=g, d=d,
            opt_g=torch.optim.Adam(g.parameters(), lr=cfg.lr, betas=betas),
            opt_d=torch.optim.Adam(d.parameters(), lr=cfg.lr, betas=betas),
            ema=copy.deepcopy(g).requires_grad_(False) if cfg.ema else None,
            fixed_noise=fixed.to(device), ctx=ctx, accel=accel,
        )  # fmt: skip
        s.g_view = training_view(g, ctx, device, accel, cfg.sync_bn)
        s.d_view = training_view(d, ctx, device, accel, cfg.sync_bn)
        return s

    def restore(self, path: Path) -> None:
        """Load models, optimizers, RNG and counters from a checkpoint of the same run."""
        ck = load_checkpoint(path, device=str(self.device))
        self.g.load_state_dict(ck.weights["g_train"])
        self.d.load_state_dict(ck.weights["discriminator"])
        if self.ema is not None:
            self.ema.load_state_dict(ck.weights.get("g_ema", ck.weights["g_train"]))
        self.g_export = build_generator(self.arch).to(self.device).eval()
        self.g_export.load_state_dict(ck.weights["generator"])
        self.opt_g.load_state_dict(ck.state["opt_g"])
        self.opt_d.load_state_dict(ck.state["opt_d"])
        self.fixed_noise = ck.state["fixed_noise"].to(self.device)
        self.epoch, self.step = int(ck.state["epoch"]), int(ck.state["step"])
        self.streak, self.warned = int(ck.state["streak"]), bool(ck.state["warned"])
        self.metrics = dict(ck.meta.get("metrics", {}))
        self.partial = ck.state.get("partial")
        self.acc.load_state(ck.state.get("scalers"))
        set_rng_state(ck.state["rng"])

    def meta(self, data: ImageData) -> dict[str, Any]:
        """The checkpoint description (see the checkpoint contract)."""
        return CheckpointMeta(
            command="gan", kind="generator", arch=self.arch, export_group="generator",
            preprocess=data.preprocess.to_dict(), io={"input": "z", "output": "image"},
            data=data.data_meta, metrics=self.metrics, config=asdict(self.cfg),
            extra={"latent_size": self.cfg.nz},
        ).to_dict()  # fmt: skip

    def save(self, path: Path, data: ImageData | None = None) -> Path:
        """Atomically write the checkpoint: exportable G, raw G, D (and EMA), optimizers, RNG."""
        data = data or self.data
        assert data is not None, "save() needs the run's data"
        export = self.g_export if self.g_export is not None else self.g  # Ctrl-C in epoch 1
        weights = {
            "generator": export.state_dict(),
            "g_train": self.g.state_dict(),
            "discriminator": self.d.state_dict(),
        }
        if self.ema is not None:
            weights["g_ema"] = self.ema.state_dict()
        state = {
            "epoch": self.epoch, "step": self.step, "streak": self.streak, "warned": self.warned,
            "opt_g": self.opt_g.state_dict(), "opt_d": self.opt_d.state_dict(),
            "fixed_noise": self.fixed_noise, "rng": rng_state(),
        }  # fmt: skip
        if self.partial is not None:
            state["partial"] = self.partial
        if self.acc.state():  # fp16 loss scales
            state["scalers"] = self.acc.state()
        return save_or_explain(lambda: save_checkpoint(path, weights, self.meta(data), state), path)

    # ---- the loop skeleton's Task (train/loop.py) ---------------------------------------------
    def begin(self) -> None:
        """The training images onto the device."""
        assert self.data is not None
        self.pixels = train_pixels(self.data.train, self.device)

    def train_epoch(self, epoch: int, advance: Any, stop: StopFlag) -> dict:
        """One epoch of steps: the global step count, mean losses and D outputs, steps done."""
        row = run_epoch(self, self.pixels, epoch, self.out, advance, stop)
        return {"step": self.step, **row}

    def end_epoch(self, row: dict[str, Any]) -> dict[str, Any]:
        """Rank 0: sample grid, fd/kid when due, metrics.csv, checkpoint, log."""
        row["images_per_s"] = len(self.pixels) / max(row["train_seconds"], 1e-9)
        return _end_epoch(self, self.data, self.run, self.out, row)


def _no_sync(view: nn.Module) -> contextlib.AbstractContextManager[Any]:
    """DDP's `no_sync` (accumulate locally, all-reduce later); nothing for a plain module."""
    no_sync = getattr(view, "no_sync", None)
    return no_sync() if no_sync is not None else contextlib.nullcontext()


def train_step(s: GanState, real: torch.Tensor) -> torch.Tensor:
    """One generator update after `d_steps` discriminator updates on the GLOBAL batch `real`
    (this process trains on its rows); returns this process's [loss_d, loss_g, D(x), D(G(z))]
    as one detached tensor (one sync per step for the caller)."""
    b, nz, acc = real.shape[0], s.cfg.nz, s.acc
    share = s.ctx.share(b)
    real = rows_of(real, s.ctx)
    n = real.shape[0]
    real_target = torch.full((n,), s.cfg.label_smoothing, device=real.device)
    fake_target = torch.zeros(n, device=real.device)
    for i in range(s.cfg.d_steps):
        z = rows_of(torch.randn(b, nz, device=real.device), s.ctx)  # every process: same draws
        with torch.set_grad_enabled(i == s.cfg.d_steps - 1), acc.autocast():
            fake = s.gv(z)  # only the last one feeds the G step
        s.opt_d.zero_grad(set_to_none=True)
        with _no_sync(s.dv):  # D's gradient is all-reduced once, after the fake pass
            with acc.autocast():
                out_real = s.dv(real)
                err_real = F.binary_cross_entropy_with_logits(out_real.float(), real_target)
            acc.backward(weighted(err_real, share), "d")
        with acc.autocast():
            out_fake = s.dv(fake.detach())
            err_fake = F.binary_cross_entropy_with_logits(out_fake.float(), fake_target)
        acc.backward(weighted(err_fake, share), "d")
        acc.step(s.opt_d, "d")
    s.opt_g.zero_grad(set_to_none=True)
    s.d.requires_grad_(False)  # D frozen and called plain: no D gradient, no D all-reduce
    try:
        with acc.autocast():
            out = s.d(fake).float()
            loss_g = F.binary_cross_entropy_with_logits(out, torch.ones(n, device=real.device))
        acc.backward(weighted(loss_g, share), "g")
    finally:
        s.d.requires_grad_(True)
    acc.step(s.opt_g, "g")
    if s.ema is not None:
        ema_update(s.ema, s.g, s.cfg.ema_decay, s.step)
    with torch.no_grad():
        return torch.stack(
            [
                err_real + err_fake,
                loss_g,
                torch.sigmoid(out_real.float()).mean(),
                torch.sigmoid(out_fake.float()).mean(),
            ]
        ).detach()


def _global_values(
    values: torch.Tensor, b: int, stop: bool, ctx: DistContext
) -> tuple[list[float], bool]:
    """The step's logged values as global-batch means, and whether any process got Ctrl-C: one
    all-reduce of [values * local rows, local rows, stop], so every process decides alike."""
    if not ctx.enabled:
        return values.tolist(), stop
    rows = float(ctx.local_count(b))
    extra = torch.tensor([rows, float(stop)], dtype=torch.float64, device=values.device)
    t = all_reduce_sum(torch.cat([values.double() * rows, extra]), ctx)
    return (t[:4] / t[4]).tolist(), bool(t[5] > 0)


def _check_step(s: GanState, values: list[float], epoch: int, index: int, out: Any) -> None:
    """Stop on NaN/Inf; warn once when D wins completely for `collapse_steps` steps."""
    names = ("loss_d", "loss_g", "D(x)", "D(G(z))")
    bad = [n for n, v in zip(names, values, strict=True) if v != v or abs(v) == float("inf")]
    if bad:
        raise Diverged(
            f"Training diverged: {', '.join(bad)} became NaN/Inf at epoch {epoch}, step "
            f"{index + 1} of the epoch (global step {s.step + 1}). The last good checkpoint "
            "(end of the previous epoch, if any) was kept in checkpoints/last.safetensors.",
            hint="Lower --lr (e.g. 1e-4), keep --label-smoothing below 1, or check the data for "
            "broken images; then --resume or start again.",
        )
    s.streak = s.streak + 1 if values[2] > 0.99 and values[3] < 0.01 else 0
    if s.streak == s.cfg.collapse_steps and not s.warned:
        s.warned = True
        out.warn(
            f"the discriminator has won completely for {s.streak} steps (D(x) > 0.99, "
            f"D(G(z)) < 0.01, epoch {epoch}): the generator gets almost no gradient and may have "
            "collapsed. Try a smaller --ndf, --label-smoothing 0.8, --d-steps 1, or a lower --lr; "
            "if the sample grids stay noise, start again with another --seed."
        )


def run_epoch(
    s: GanState, pixels: torch.Tensor, epoch: int, out: Any, advance: Any, stop: StopFlag
) -> dict:
    """One pass over the training pixels (or the rest of one cut by Ctrl-C); returns the epoch's
    global mean losses and D outputs. After Ctrl-C (on any process, agreed by all), records where
    it stopped and raises Interrupted."""
    s.gv.train()
    s.dv.train()
    cut, s.partial = s.partial, None
    perm = cut["perm"] if cut else torch.randperm(len(pixels))
    sums, n = (list(cut["sums"]), int(cut["n"])) if cut else ([0.0, 0.0, 0.0, 0.0], 0)
    stopping = agree_stop(stop.requested, s.device, s.ctx)
    for index, (a, b) in enumerate(batches(len(pixels), s.cfg.batch_size, s.ctx.world_size)):
        if index < n:  # done before the Ctrl-C
            continue
        if stopping:
            s.partial = {"perm": perm, "sums": sums, "n": n}
            raise Interrupted
        real = global_batch(pixels, perm[a:b], s.ctx).float().div_(127.5).sub_(1.0)
        values, stopping = _global_values(train_step(s, real), b - a, stop.requested, s.ctx)
        _check_step(s, values, epoch, index, out)
        s.step += 1
        sums = [x + y for x, y in zip(sums, values, strict=True)]
        n += 1
        advance(1, info=f"epoch {epoch} loss_d {values[0]:.3f} loss_g {values[1]:.3f}")
    keys = ("loss_d", "loss_g", "d_x", "d_g_z")
    return {k: v / max(n, 1) for k, v in zip(keys, sums, strict=True)} | {"steps": n}


def _evaluate(s: GanState, data: ImageData, run: RunDir, epoch: int) -> dict[str, Any]:
    """Build the exportable eval-mode G, save the fixed-noise grid, and fd/kid when due
    (rank 0 alone; no collective in here). Evaluation draws no number from the training's random
    streams: the fd/kid feature model is built (random init, then weights) once per process and
    cached, so without the fork a run's noise would depend on whether an earlier run in the same
    process (a pipeline, a test) had built it — and a run resumed in another process or on
    another number of processes would drift from the uninterrupted one."""
    devices = [s.device] if torch.device(str(s.device)).type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        return _evaluate_now(s, data, run, epoch)


def _evaluate_now(s: GanState, data: ImageData, run: RunDir, epoch: int) -> dict[str, Any]:
    s.g_export, report = export_generator(s.ema if s.ema is not None else s.g, s.cfg.nz, s.device)
    with torch.no_grad():
        grid = to_uint8(s.g_export(s.fixed_noise))
    run.log_image(
        "samples", save_grid(grid, run.path / "samples" / f"epoch_{epoch:03d}.png"), epoch
    )
    row: dict[str, Any] = dict(report)
    due = s.cfg.fd_every and (epoch % s.cfg.fd_every == 0 or epoch == s.cfg.epochs)
    if due and len(data.heldout) >= 2:
        if s.quality is None:
            s.quality = QualityMeter(data.train, data.heldout, s.cfg.fd_images, s.cfg.fd_image_size)
            how = "read from the cache" if s.quality.cached else "computed and cached"
            run.log(f"fd/kid: real-image features {how} ({s.quality.cache_file})")
        row |= s.quality.measure(s.g_export, s.cfg.nz, s.device)
    return row


def run_epochs(s: GanState, data: ImageData, run: RunDir, out: Any) -> None:
    """Train from the state's epoch to cfg.epochs through the shared loop skeleton."""
    s.data, s.run, s.out = data, run, out
    steps = len(batches(len(data.train), s.cfg.batch_size, s.ctx.world_size))
    loop.run_epochs(s, "gan train", steps, run, out)


def _end_epoch(s: GanState, data: ImageData, run: RunDir, out: Any, row: dict) -> dict:
    """Rank 0's part of an epoch's end: evaluate, metrics.csv, checkpoint, log; returns the row."""
    epoch = row["epoch"]
    t1 = time.perf_counter()
    row |= _evaluate(s, data, run, epoch)
    row["eval_seconds"] = time.perf_counter() - t1
    s.metrics = {k: v for k, v in row.items() if k != "steps"}
    run.append_metrics(s.metrics)
    s.save(run.checkpoint("last"), data)
    fd = f", {FD_KEY} {row[FD_KEY]:.2f}" if FD_KEY in row else ""
    run.log(f"epoch {epoch}: loss_d {row['loss_d']:.4f} loss_g {row['loss_g']:.4f}{fd}")
    out.print(
        f"epoch {epoch}/{s.cfg.epochs}: loss_d {row['loss_d']:.3f} "
        f"loss_g {row['loss_g']:.3f} D(x) {row['d_x']:.2f} D(G(z)) {row['d_g_z']:.2f}"
        f" ({row['images_per_s']:.0f} img/s){fd}"
    )
    return s.metrics


def final_outputs(
    s: GanState, data: ImageData, run: RunDir, out: Any, wall_s: float
) -> dict[str, Any]:
    """Sample sheet, progress sheet and curves; the command's result dict."""
    ck = run.checkpoint("last")
    g = s.g_export
    with torch.no_grad():
        z = torch.randn(64, s.cfg.nz, generator=torch.Generator().manual_seed(s.cfg.seed))
        samples = save_grid(to_uint8(g(z.to(s.device))), run.path / "samples.png")
    run.log_image("samples_final", samples, s.epoch)
    progress = progress_sheet(run.path / "samples", run.path / "progress.png", s.arch["image_size"])
    rows = run.read_metrics()
    panels = {
        "losses": ["loss_d", "loss_g"],
        "discriminator outputs": ["d_x", "d_g_z"],
        FD_KEY: [FD_KEY, FD_KEY + "_floor"],
        KID_KEY: [KID_KEY, KID_KEY + "_floor"],
    }
    curves = plot_curves(rows, panels, run.path / "curves.png")
    metrics = dict(s.metrics) | {"wall_seconds": wall_s, "epochs": s.epoch}
    artifacts = {
        "checkpoint": ck,
        "samples": samples,
        "progress": progress,
        "curves": curves,
        "metrics_csv": run.metrics_path,
        "grids": run.path / "samples",
    }
    return run.write_result(artifacts, metrics)
