"""The GPU fast path, shared by the training loops: mixed precision, channels_last, torch.compile.

`Accel.create(amp, compile, device)` checks the options once; the loops then use
`accel.autocast()` around forward + loss, `accel.backward(loss, name)` / `accel.step(opt, name)`
(a GradScaler per optimizer for fp16, plain calls otherwise); `parallel.training_view` applies
channels_last and compilation. With the defaults (`--amp off`, no `--compile`) on CPU every call is the plain one,
so the CPU path is unchanged.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import torch

from ..errors import BadInput, EnvironmentProblem

AMP_CHOICES = ("off", "bf16", "fp16")
_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass
class Accel:
    """How one run computes: precision, memory format, compilation."""

    device: torch.device
    amp: str = "off"
    compile: bool = False
    scalers: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def create(cls, amp: str | None, compile: bool, device: torch.device) -> Accel:
        """Validate `--amp` / `--compile` for this device (clear errors, not tracebacks)."""
        amp = (amp or "off").lower()
        if amp not in AMP_CHOICES:
            raise BadInput(f"--amp {amp!r} is not known.", hint="Use bf16, fp16 or off.")
        if amp == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
            raise EnvironmentProblem(
                f"--amp bf16: {torch.cuda.get_device_name(device)} has no bfloat16 support.",
                hint="Use --amp fp16 (with loss scaling) or --amp off.",
            )
        return cls(device, amp, compile)

    @property
    def channels_last(self) -> bool:
        """NHWC tensors for convolutions: what tensor cores want; CPU keeps its own layout."""
        return self.device.type == "cuda"

    @property
    def pin(self) -> bool:
        """Host tensors bound for the GPU are pinned and copied without blocking."""
        return self.device.type == "cuda"

    def autocast(self) -> contextlib.AbstractContextManager[Any]:
        """Mixed precision around forward + loss (a no-op with --amp off)."""
        if self.amp == "off":
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=_DTYPES[self.amp])

    def _scaler(self, name: str) -> Any:
        if name not in self.scalers:
            self.scalers[name] = torch.amp.GradScaler(self.device.type)
        return self.scalers[name]

    def backward(self, loss: torch.Tensor, name: str = "model") -> None:
        """loss.backward(), scaled under fp16 (one scaler per optimizer `name`)."""
        if self.amp == "fp16":
            self._scaler(name).scale(loss).backward()
        else:
            loss.backward()

    def step(self, optimizer: torch.optim.Optimizer, name: str = "model") -> None:
        """optimizer.step(); under fp16 unscale, skip steps with inf/NaN gradients, update scale.
        An update too large for float32 (e.g. --lr 1e38) stops training like a NaN loss does."""
        with optimizer_overflow_is_divergence(optimizer):
            if self.amp == "fp16":
                scaler = self._scaler(name)
                scaler.step(optimizer)
                scaler.update()
            else:
                optimizer.step()

    def to_device(self, x: torch.Tensor) -> torch.Tensor:
        """A host batch onto the device: pinned + non_blocking on CUDA; NHWC for images there."""
        if self.pin and x.device.type == "cpu":
            x = x.pin_memory().to(self.device, non_blocking=True)
        else:
            x = x.to(self.device)
        if self.channels_last and x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        return x

    def state(self) -> dict[str, Any]:
        """GradScaler states for a checkpoint (empty unless fp16)."""
        return {k: v.state_dict() for k, v in self.scalers.items()}

    def load_state(self, state: dict[str, Any] | None) -> None:
        """Restore GradScaler states saved by `state()` (ignored unless fp16)."""
        if self.amp != "fp16":
            return
        for name, sd in (state or {}).items():
            self._scaler(name).load_state_dict(sd)

    def describe(self) -> dict[str, Any]:
        """What the run used, for the log and results."""
        return {"amp": self.amp, "compile": self.compile, "channels_last": self.channels_last}


@contextlib.contextmanager
def optimizer_overflow_is_divergence(optimizer: torch.optim.Optimizer) -> Iterator[None]:
    """torch's optimizers fail with a bare RuntimeError when lr x update overflows float32; that
    is a diverged run (the last good checkpoint stays), said in one clear paragraph."""
    try:
        yield
    except RuntimeError as exc:
        if "overflow" not in str(exc):
            raise
        from ..errors import Diverged

        lrs = sorted({g["lr"] for g in optimizer.param_groups})
        raise Diverged(
            f"Training diverged: the optimizer step overflowed float32 at learning rate "
            f"{', '.join(f'{lr:g}' for lr in lrs)} ({exc}). The last good checkpoint (end of "
            "the previous epoch, if any) was kept in checkpoints/last.safetensors.",
            hint="Lower --lr (adam/adamw 1e-4..3e-3, sgd 1e-2..1e-1), then start again.",
        ) from None
