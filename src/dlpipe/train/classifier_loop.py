"""The mechanics under the fine-tune recipe: freezing, batch sources, one epoch, evaluation."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from ..data import Preprocess
from .optim import apply_lr, lr_factor

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


def train_mode(model: nn.Module, frozen: bool, train_bn: bool = False) -> None:
    """model.train(), except a frozen backbone stays in eval mode so BatchNorm statistics hold still."""
    model.train()
    if frozen and not train_bn:
        model.body.eval()


@dataclass
class Source:
    """Batches of inputs: cached features, or uint8 pixels normalized (and augmented) per batch."""

    labels: torch.Tensor
    features: torch.Tensor | None = None
    pixels: np.ndarray | None = None
    preprocess: Preprocess | None = None
    augment: bool = False
    hflip: bool = False
    device: torch.device | None = None

    def __len__(self) -> int:
        return len(self.labels)

    def batch(self, idx: np.ndarray, gen: torch.Generator | None = None) -> torch.Tensor:
        """Inputs for positions `idx` (augmented when asked and a generator is given)."""
        if self.features is not None:
            return self.features[torch.from_numpy(idx).to(self.features.device)]
        assert self.pixels is not None and self.preprocess is not None
        x = torch.from_numpy(self.preprocess.normalize(self.pixels[idx]))
        if self.augment and gen is not None:
            x = augment(x, gen, self.hflip)
        return x.to(self.device or "cpu").contiguous(memory_format=torch.channels_last)

    def targets(self, idx: np.ndarray) -> torch.Tensor:
        """Labels at positions `idx`, on the inputs' device."""
        dev = self.features.device if self.features is not None else (self.device or "cpu")
        return self.labels[torch.from_numpy(idx)].to(dev)


def augment(x: torch.Tensor, gen: torch.Generator, hflip: bool) -> torch.Tensor:
    """Random resized crop (scale 0.6-1, ratio 3/4-4/3) back to the input size, optional h-flip."""
    n, _c, h, w = x.shape
    out = torch.empty_like(x)
    r = torch.rand((n, 5), generator=gen).tolist()
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


def train_epoch(
    forward: Callable[[torch.Tensor], torch.Tensor],
    params: Callable[[], list[nn.Parameter]],
    source: Source,
    optimizer: torch.optim.Optimizer,
    loss_fn: nn.Module,
    plan: StepPlan,
    advance: Callable[..., None] | None = None,
) -> dict[str, float]:
    """One pass over `source`; returns mean loss and accuracy. Raises NanLoss on a non-finite loss."""
    gen = torch.Generator().manual_seed(plan.seed * 100003 + plan.epoch)
    total_loss, correct, seen = 0.0, 0, 0
    for k, idx in enumerate(epoch_order(len(source), plan.batch_size, plan.seed, plan.epoch)):
        step = plan.step0 + k
        apply_lr(optimizer, plan.base_lrs, lr_factor(plan.scheduler, step, plan.total, plan.warmup))
        x, y = source.batch(idx, gen), source.targets(idx)
        if len(idx) == 1 and any(isinstance(m, nn.BatchNorm1d) for m in _modules(forward)):
            continue  # BatchNorm cannot train on a batch of one
        loss_t, logits = _step(forward, x, y, optimizer, loss_fn, plan.lbfgs)
        loss_value = float(loss_t)
        if not math.isfinite(loss_value):  # inf/NaN weights show up in the next step's loss
            raise NanLoss(plan.epoch + 1, k + 1)
        total_loss += loss_value * len(idx)
        correct += int((logits.argmax(1) == y).sum())
        seen += len(idx)
        if advance:
            advance(1, info=f"loss {total_loss / seen:.4f} acc {correct / seen:.3f}")
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
) -> tuple[torch.Tensor, torch.Tensor]:
    """One optimisation step (LBFGS re-evaluates through the closure, as it must)."""
    out: dict[str, torch.Tensor] = {}

    def closure() -> torch.Tensor:
        optimizer.zero_grad(set_to_none=True)
        out["logits"] = forward(x)
        loss = loss_fn(out["logits"], y)
        loss.backward()
        out["loss"] = loss.detach()
        return loss

    if lbfgs:
        optimizer.step(closure)
    else:
        closure()
        optimizer.step()
    return out["loss"], out["logits"].detach()


def _modules(forward: Callable[..., object]) -> list[nn.Module]:
    return list(forward.modules()) if isinstance(forward, nn.Module) else []


def evaluate(
    forward: Callable[[torch.Tensor], torch.Tensor],
    source: Source,
    loss_fn: nn.Module,
    batch_size: int = 256,
) -> tuple[dict[str, float], np.ndarray]:
    """Loss and accuracy over `source` in inference mode; also the predictions."""
    if len(source) == 0:
        return {"loss": float("nan"), "acc": float("nan")}, np.zeros(0, dtype=np.int64)
    preds, total = [], 0.0
    with torch.inference_mode():
        for start in range(0, len(source), batch_size):
            idx = np.arange(start, min(start + batch_size, len(source)))
            logits = forward(source.batch(idx))
            total += float(loss_fn(logits, source.targets(idx))) * len(idx)
            preds.append(logits.argmax(1).cpu().numpy())
    pred = np.concatenate(preds)
    acc = float((pred == source.labels.numpy()).mean())
    return {"loss": total / len(source), "acc": acc}, pred
