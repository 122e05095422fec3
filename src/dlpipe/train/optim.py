"""Optimizers by name with head/backbone parameter groups, and a stateless learning-rate schedule.

The schedule is a pure function of the global step, so a resumed run continues exactly (no
scheduler state to restore) and warmup composes with every shape.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from ..errors import BadInput

OPTIMIZERS = ("sgd", "momentum", "nesterov", "adam", "adamw", "lbfgs")
SCHEDULERS = ("none", "cosine", "step", "onecycle")


def trainable(module: nn.Module) -> list[nn.Parameter]:
    """Parameters that require grad (the only ones an optimizer may hold)."""
    return [p for p in module.parameters() if p.requires_grad]


def check_combination(optimizer: str, scheduler: str, warmup_epochs: float, staged: bool) -> None:
    """Refuse option combinations that cannot work, before any work is done."""
    if optimizer not in OPTIMIZERS:
        raise BadInput(f"--optimizer {optimizer!r} is not known.", hint=f"Use one of {OPTIMIZERS}.")
    if scheduler not in SCHEDULERS:
        raise BadInput(f"--scheduler {scheduler!r} is not known.", hint=f"Use one of {SCHEDULERS}.")
    if optimizer == "lbfgs" and (scheduler != "none" or warmup_epochs > 0):
        raise BadInput(
            "--optimizer lbfgs does its own line search; it cannot follow --scheduler "
            f"{scheduler} or a warmup.",
            hint="Use --scheduler none --warmup-epochs 0 with lbfgs, or another optimizer.",
        )
    if optimizer == "lbfgs" and staged:
        raise BadInput(
            "--optimizer lbfgs supports a single parameter group, so it cannot do --unfreeze-after "
            "with a discriminative backbone learning rate.",
            hint="Use adamw or nesterov for staged fine-tuning.",
        )


def make_optimizer(
    name: str, groups: list[dict[str, Any]], weight_decay: float
) -> torch.optim.Optimizer:
    """Build the optimizer; `groups` are [{'params', 'lr', 'name'}, ...] (a group may be empty)."""
    if name == "lbfgs":
        return torch.optim.LBFGS(groups[0]["params"], lr=groups[0]["lr"], history_size=10,
                                 line_search_fn="strong_wolfe")  # fmt: skip
    lr = groups[0]["lr"]
    if name in ("sgd", "momentum", "nesterov"):
        momentum = 0.0 if name == "sgd" else 0.9
        return torch.optim.SGD(groups, lr=lr, momentum=momentum, nesterov=name == "nesterov",
                               weight_decay=weight_decay)  # fmt: skip
    if name == "adam":
        return torch.optim.Adam(groups, lr=lr, weight_decay=weight_decay)
    return torch.optim.AdamW(groups, lr=lr, weight_decay=weight_decay)


def lr_factor(
    kind: str, step: int, total: int, warmup: int, step_every: int = 0, gamma: float = 0.1
) -> float:
    """Multiplier of the base learning rate at `step` (0-based) of `total` steps."""
    if kind == "onecycle":  # warm up from 1/25 over 30% (or --warmup), then cosine to ~0
        up = warmup or max(1, int(0.3 * total))
        if step < up:
            return 1 / 25 + (1 - 1 / 25) * step / up
        t = (step - up) / max(1, total - up)
        return 1e-4 + (1 - 1e-4) * 0.5 * (1 + math.cos(math.pi * min(t, 1.0)))
    if warmup and step < warmup:
        return (step + 1) / warmup
    if kind == "cosine":
        t = (step - warmup) / max(1, total - warmup)
        return 0.5 * (1 + math.cos(math.pi * min(t, 1.0)))
    if kind == "step":
        every = step_every or max(1, total // 3)
        return gamma ** ((step - warmup) // every)
    return 1.0


def apply_lr(
    optimizer: torch.optim.Optimizer, base_lrs: list[float], factor: float | list[float]
) -> None:
    """Set each group's lr to its base lr times `factor` (one for all, or one per group)."""
    factors = factor if isinstance(factor, list) else [factor] * len(base_lrs)
    for group, base, f in zip(optimizer.param_groups, base_lrs, factors, strict=False):
        group["lr"] = base * f
