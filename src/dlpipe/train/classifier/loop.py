"""The mechanics under the fine-tune recipe: freezing, batch sources, one epoch, evaluation.

Under DDP every rank walks the same global batches (`epoch_order`), draws the random numbers of the
whole global batch (augmentation crops, dropout masks) and trains on its rows `ctx.part`; its mean
loss is weighted by `ctx.share(n)`, so the averaged gradient is the global batch's. With one process
each of these steps is the plain single-process code path.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from ...data import Preprocess
from ...data.rows import PixelRows
from ...distributed import DistContext, all_reduce_sum
from ..accel import Accel, optimizer_overflow_is_divergence
from ..interrupt import Interrupted, StopFlag
from ..optim import apply_lr, lr_factor

_BN = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm)


class NanLoss(Exception):
    """The loss stopped being finite at (epoch, step)."""

    def __init__(self, epoch: int, step: int) -> None:
        super().__init__(f"epoch {epoch}, step {step}")
        self.epoch, self.step = epoch, step


def set_frozen(model: nn.Module, frozen: bool, train_bn: bool = False) -> None:
    """Freeze (or unfreeze) the backbone; with train_bn its BatchNorm affine params stay trainable."""
    for p in model.body.parameters():
        p.requires_grad = not frozen
    if frozen and train_bn:
        for m in model.body.modules():
            if isinstance(m, _BN):
                for p in m.parameters():
                    p.requires_grad = True


def train_mode(
    model: nn.Module, frozen: bool, train_bn: bool = False, keep_bn: bool = False
) -> None:
    """model.train(), except a frozen backbone stays in eval mode so BatchNorm statistics hold still;
    with `keep_bn` (an unfrozen pretrained backbone) its BatchNorm layers alone stay in inference
    mode: they normalise with the pretrained statistics and never update them (requires_grad does
    not stop a BatchNorm in train mode from moving its running statistics)."""
    model.train()
    if frozen and not train_bn:
        model.body.eval()
    elif keep_bn and not train_bn:
        for m in model.body.modules():
            if isinstance(m, _BN):
                m.eval()


@dataclass
class Source:
    """Batches of inputs: cached features, or uint8 pixels normalized (and augmented) per batch.
    A folder's pixels are `PixelRows` (read on demand from the streamed cache): an undecodable
    image reads as its nearest usable neighbour, with that neighbour's label (`targets`), and
    evaluation leaves it out (`real`)."""

    labels: torch.Tensor
    features: torch.Tensor | None = None
    pixels: np.ndarray | PixelRows | None = None
    preprocess: Preprocess | None = None
    augment: bool = False
    hflip: bool = False
    device: torch.device | None = None
    accel: Accel | None = None

    def __len__(self) -> int:
        return len(self.labels)

    def draws(self, n: int, gen: torch.Generator) -> torch.Tensor | None:
        """The augmentation numbers of a global batch of `n` rows (None without augmentation):
        drawn whole on every rank, so each rank's crops are the ones one process would make."""
        return torch.rand((n, 5), generator=gen) if self.augment else None

    def batch(self, idx: np.ndarray, draws: torch.Tensor | None = None) -> torch.Tensor:
        """Inputs for positions `idx`, augmented with `draws` (rows matching `idx`) when given."""
        if self.features is not None:
            return self.features[torch.from_numpy(idx).to(self.features.device)]
        assert self.pixels is not None and self.preprocess is not None
        if self.accel is not None and self.accel.pin:
            x = self._on_device(idx)
        else:
            x = torch.from_numpy(self.preprocess.normalize(self._rows(idx).numpy()))
        if self.augment and draws is not None:
            x = augment(x, draws, self.hflip)
        return x.to(self.device or "cpu").contiguous(memory_format=torch.channels_last)

    def _rows(self, idx: np.ndarray, pin: bool = False) -> torch.Tensor:
        """The uint8 rows of positions `idx`, gathered into one (optionally pinned) tensor."""
        assert self.pixels is not None
        idx = np.asarray(idx, dtype=np.int64)
        rows = torch.empty((len(idx), *self.pixels.shape[1:]), dtype=torch.uint8, pin_memory=pin)
        if isinstance(self.pixels, PixelRows):
            self.pixels.read_into(idx, rows.numpy())
        else:
            torch.index_select(torch.from_numpy(self.pixels), 0, torch.from_numpy(idx), out=rows)
        return rows

    def _on_device(self, idx: np.ndarray) -> torch.Tensor:
        """GPU path: the batch's uint8 rows gathered into pinned memory, copied without blocking
        (a quarter of the float32 bytes), normalised on the device."""
        assert self.preprocess is not None and self.accel is not None
        x = self.accel.to_device(self._rows(idx, pin=True))
        shape = (1, -1, 1, 1)
        mean = torch.tensor(self.preprocess.mean, dtype=torch.float32, device=x.device)
        std = torch.tensor(self.preprocess.std, dtype=torch.float32, device=x.device)
        return (x.float() / 255.0 - mean.view(shape)) / std.view(shape)

    def targets(self, idx: np.ndarray) -> torch.Tensor:
        """Labels at positions `idx` (a stand-in row's own label), on the inputs' device."""
        dev = self.features.device if self.features is not None else (self.device or "cpu")
        if isinstance(self.pixels, PixelRows):
            idx = self.pixels.resolve(idx)
        return self.labels[torch.from_numpy(np.asarray(idx, dtype=np.int64))].to(dev)

    def real(self, idx: np.ndarray) -> np.ndarray:
        """True where position `idx` holds its own image (False: a stand-in for one that could
        not be decoded, which evaluation must not count)."""
        if isinstance(self.pixels, PixelRows):
            return self.pixels.real(idx)
        return np.ones(len(idx), dtype=bool)


def augment(x: torch.Tensor, draws: torch.Tensor, hflip: bool) -> torch.Tensor:
    """Random resized crop (scale 0.6-1, ratio 3/4-4/3) back to the input size, optional h-flip;
    `draws` holds five uniform numbers per row."""
    _n, _c, h, w = x.shape
    out = torch.empty_like(x)
    r = draws.tolist()
    for i, (u_area, u_ratio, u_top, u_left, u_flip) in enumerate(r):
        area = h * w * (0.6 + 0.4 * u_area)
        ratio = math.exp(math.log(3 / 4) + u_ratio * (math.log(4 / 3) - math.log(3 / 4)))
        cw = min(w, max(1, round(math.sqrt(area * ratio))))
        ch = min(h, max(1, round(math.sqrt(area / ratio))))
        top, left = int(u_top * (h - ch + 1)), int(u_left * (w - cw + 1))
        crop = x[i : i + 1, :, top : top + ch, left : left + cw]
        crop = nn.functional.interpolate(crop, size=(h, w), mode="bilinear", align_corners=False)
        out[i] = crop[0].flip(-1) if hflip and u_flip < 0.5 else crop[0]
    return out


def epoch_order(n: int, batch_size: int, seed: int, epoch: int) -> list[np.ndarray]:
    """Shuffled batches; a pure function of (seed, epoch), so a resumed run sees the same order."""
    order = np.random.default_rng([seed, epoch]).permutation(n)
    return [order[i : i + batch_size] for i in range(0, n, batch_size)]


@dataclass
class StepPlan:
    """What one epoch needs to know about the schedule."""

    epoch: int
    step0: int  # global step at the start of the epoch
    total: int  # total steps of the run
    warmup: int
    scheduler: str
    base_lrs: list[float]
    seed: int
    batch_size: int
    lbfgs: bool = False
    start: int = 0  # first step of this stage: its schedule runs from here to `total`
    body_warmup: int = 0  # steps over which the backbone's lr rises from 0 (after an unfreeze)

    def factors(self, step: int) -> list[float]:
        """lr multiplier of each parameter group (head, backbone) at global `step`."""
        f = lr_factor(self.scheduler, step - self.start, self.total - self.start, self.warmup)
        if not self.body_warmup:
            return [f] * len(self.base_lrs)
        return [f, f * min(1.0, (step - self.start) / self.body_warmup)]


def train_epoch(
    forward: Callable[[torch.Tensor], torch.Tensor],
    params: Callable[[], list[nn.Parameter]],
    source: Source,
    optimizer: torch.optim.Optimizer,
    loss_fn: nn.Module,
    plan: StepPlan,
    advance: Callable[..., None] | None = None,
    *,
    stop: StopFlag | None = None,
    ctx: DistContext | None = None,
    accel: Accel | None = None,
) -> dict[str, float]:
    """One pass over `source`; returns the global mean loss and accuracy (the same on every
    rank). Raises NanLoss on a non-finite loss, and Interrupted at the step boundary after a
    Ctrl-C (`stop`) on any process: on every rank at the same step."""
    ctx = ctx or DistContext()
    accel = accel or Accel(torch.device("cpu"))
    gen = torch.Generator().manual_seed(plan.seed * 100003 + plan.epoch)
    min_local, min_global = _min_rows(forward, ctx)
    total_loss, correct, seen = 0.0, 0, 0
    for k, idx in enumerate(epoch_order(len(source), plan.batch_size, plan.seed, plan.epoch)):
        step = plan.step0 + k
        apply_lr(optimizer, plan.base_lrs, plan.factors(step))
        n = len(idx)
        draws = source.draws(n, gen)
        if n < min_global or n // ctx.world_size < min_local:
            continue  # too few rows for BatchNorm or for every rank (all agree: n is global)
        mine = idx[ctx.part]
        x = source.batch(mine, None if draws is None else draws[ctx.part])
        y = source.targets(mine)
        with global_batch(n, ctx):
            loss_t, logits = _step(forward, x, y, optimizer, loss_fn, plan.lbfgs, accel, ctx, n)
        hits = float((logits.argmax(1) == y).sum())
        stopping = float(stop is not None and stop.requested)  # Ctrl-C here, agreed with the sums
        sums = torch.tensor(
            [float(loss_t) * len(mine), hits, float(len(mine)), stopping],
            dtype=torch.float64,
            device=y.device if ctx.enabled else None,
        )  # NCCL reduces on the GPU
        loss_sum, hits, rows, stops = all_reduce_sum(sums, ctx).tolist()
        if not math.isfinite(loss_sum):  # inf/NaN weights show up in the next step's loss
            raise NanLoss(plan.epoch + 1, k + 1)
        total_loss += loss_sum
        correct += int(hits)
        seen += int(rows)
        if advance:
            advance(1, info=f"epoch {plan.epoch + 1} loss {total_loss / seen:.4f} "
                            f"acc {correct / seen:.3f}")  # fmt: skip
        if stops:  # a step boundary: every rank stops here
            raise Interrupted
    if not all(bool(torch.isfinite(p).all()) for p in params()):  # never checkpoint inf weights
        raise NanLoss(plan.epoch + 1, seen // max(plan.batch_size, 1))
    return {"train_loss": total_loss / max(seen, 1), "train_acc": correct / max(seen, 1)}


def _step(
    forward: Callable[[torch.Tensor], torch.Tensor],
    x: torch.Tensor,
    y: torch.Tensor,
    optimizer: torch.optim.Optimizer,
    loss_fn: nn.Module,
    lbfgs: bool,
    accel: Accel,
    ctx: DistContext,
    n: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One optimisation step on this rank's rows of a global batch of `n` (LBFGS re-evaluates
    through the closure, as it must; under DDP its closure returns the global loss so that every
    rank's line search takes the same decisions)."""
    out: dict[str, torch.Tensor] = {}
    weight = ctx.share(n)

    def closure() -> torch.Tensor:
        optimizer.zero_grad(set_to_none=True)
        with accel.autocast():
            out["logits"] = forward(x)
            loss = loss_fn(out["logits"], y)
        accel.backward(loss * weight if weight != 1.0 else loss)
        out["loss"] = loss.detach()
        if lbfgs and ctx.enabled:  # sum over ranks of local mean * local share of the batch
            return all_reduce_sum(loss.detach().double() * (len(y) / n), ctx)
        return loss

    if lbfgs:
        with optimizer_overflow_is_divergence(optimizer):
            optimizer.step(closure)
    else:
        closure()
        accel.step(optimizer)
    return out["loss"], out["logits"].detach()


def _modules(forward: Callable[..., object]) -> list[nn.Module]:
    return list(forward.modules()) if isinstance(forward, nn.Module) else []


def _min_rows(forward: Callable[..., object], ctx: DistContext) -> tuple[int, int]:
    """(rows each rank needs, rows the global batch needs) for a step: BatchNorm1d cannot train on
    one row, per rank when its statistics are per rank, over the global batch when synced; every
    rank needs a row."""
    mods = _modules(forward)
    per_rank = any(type(m) is nn.BatchNorm1d for m in mods)
    synced = any(isinstance(m, (nn.BatchNorm1d, nn.SyncBatchNorm)) for m in mods)
    return (2 if per_rank else 1), max(ctx.world_size, 2 if synced else 1)


def evaluate(
    forward: Callable[[torch.Tensor], torch.Tensor],
    source: Source,
    loss_fn: nn.Module,
    batch_size: int = 256,
    accel: Accel | None = None,
) -> tuple[dict[str, float], np.ndarray]:
    """Loss and accuracy over `source` in inference mode (one process, no collective); also the
    predictions of the images counted: all but stand-ins for undecodable images (`Source.real`;
    their true labels are `source.labels[source.real(all positions)]`)."""
    accel = accel or Accel(torch.device("cpu"))
    preds, total, hits, counted = [np.zeros(0, dtype=np.int64)], 0.0, 0, 0
    with torch.inference_mode():
        for start in range(0, len(source), batch_size):
            idx = np.arange(start, min(start + batch_size, len(source)))
            real = source.real(idx)
            with accel.autocast():
                logits = forward(source.batch(idx))
                y = source.targets(idx)
                if not real.all():
                    keep = torch.from_numpy(real).to(logits.device)
                    logits, y = logits[keep], y[keep]
                if len(y):
                    total += float(loss_fn(logits, y)) * len(y)
            pred = logits.argmax(1)
            hits += int((pred == y).sum())
            counted += len(y)
            preds.append(pred.cpu().numpy())
    if not counted:
        return {"loss": float("nan"), "acc": float("nan")}, np.concatenate(preds)
    return {"loss": total / counted, "acc": hits / counted}, np.concatenate(preds)


# ---- dropout over the global batch ---------------------------------------------------------------
_GLOBAL: list[tuple[int, DistContext]] = []  # (rows of the global batch, context) during a step


@contextmanager
def global_batch(n: int, ctx: DistContext) -> Iterator[None]:
    """Tell GlobalBatchDropout layers the size of the global batch this step trains on."""
    if not ctx.enabled:
        yield
        return
    _GLOBAL.append((n, ctx))
    try:
        yield
    finally:
        _GLOBAL.pop()


class GlobalBatchDropout(nn.Dropout):
    """nn.Dropout whose mask is drawn for the whole global batch on every rank, which then keeps
    its rows: the masks one process draws (same generator, shape and memory format, so the same
    numbers), and every rank's random stream stays that of a single process, which keeps the
    checkpoint's RNG state valid for any number of processes. Outside a DDP step: plain Dropout."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and _GLOBAL and 0.0 < self.p < 1.0):
            return super().forward(x)
        n, ctx = _GLOBAL[-1]
        if x.dim() == 0 or x.shape[0] != ctx.local_count(n):
            return super().forward(x)
        channels_last = x.dim() == 4 and not x.is_contiguous()
        channels_last = channels_last and x.is_contiguous(memory_format=torch.channels_last)
        fmt = torch.channels_last if channels_last else torch.contiguous_format
        noise = torch.empty((n, *x.shape[1:]), dtype=x.dtype, device=x.device, memory_format=fmt)
        noise.bernoulli_(1.0 - self.p).div_(1.0 - self.p)  # what F.dropout does on the CPU
        return x * noise[ctx.part]


def global_dropout(module: nn.Module) -> nn.Module:
    """Dropout layers of `module` (in place) draw global-batch masks under DDP (see
    GlobalBatchDropout); `parallel.plain_batchnorm` undoes it like the BatchNorm sync."""
    for m in module.modules():
        if type(m) is nn.Dropout:
            m._dlpipe_plain_class = nn.Dropout  # type: ignore[assignment]
            m.__class__ = GlobalBatchDropout
    return module
