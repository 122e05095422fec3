"""Sizes the user controls, checked against this machine's memory before anything is allocated.

`--image-size 100000` used to try to allocate 80 GB, `gan sample -n 100000000` 74.5 GiB and
`validate --batch-sizes 1000000` similar; the kernel's OOM killer then took the machine down. The
CLI's error boundary calls `check_options` with a command's option values: each size gets a
(deliberately rough, low) estimate of the memory it needs, and an estimate above what this machine
has available is refused with the figure and the limit. Learning rates must be finite and at
most LR_MAX: larger ones overflow float32 inside the optimizer (a traceback, not a divergence).
Absurd but representable rates (1e10) are left to the divergence check, which says what to do.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

from .errors import BadInput

LR_MAX = 1e30  # Adam divides lr by (1 - beta1): 1e38 overflows float32 there
# Rough multipliers over the input tensor itself (float32): training keeps activations and
# gradients (several times the input even for a tiny network); validation holds the input, the
# outputs of two runtimes and onnxruntime's own buffers.
TRAIN_FACTOR = 8
VALIDATE_FACTOR = 4
GIB = 2**30


def available_bytes() -> int | None:
    """Memory this process may still use: MemAvailable, capped by a cgroup limit; None if unknown."""
    found: list[int] = []
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                found.append(int(line.split()[1]) * 1024)
    except (OSError, ValueError, IndexError):
        pass
    try:
        limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        used = int(Path("/sys/fs/cgroup/memory.current").read_text().strip())
        if limit != "max":
            found.append(max(0, int(limit) - used))
    except (OSError, ValueError):
        pass
    if not found:
        try:
            found.append(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
        except (ValueError, OSError, AttributeError):
            return None
    return min(found)


def check_fits(need: float, option: str, what: str, hint: str) -> None:
    """Refuse `option` when `need` bytes exceed the memory available here."""
    have = available_bytes()
    if have is None or need <= have:
        return
    raise BadInput(
        f"{option}: {what} needs at least {need / GIB:,.1f} GiB of memory, but this machine has "
        f"{have / GIB:,.1f} GiB available; it would be killed (or take the machine down) "
        "before finishing.",
        hint=hint,
    )


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def check_options(options: dict[str, Any]) -> None:
    """Check the user-controlled sizes and rates among a command's option values."""
    lr = options.get("lr")
    if isinstance(lr, float) and (not math.isfinite(lr) or lr > LR_MAX):
        raise BadInput(
            f"--lr {lr:g} is outside its usable range (0, {LR_MAX:g}].",
            hint="Typical values: 1e-4 .. 1e-2.",
        )
    side, batch = _int(options.get("image_size")), _int(options.get("batch_size")) or 64
    if side:
        check_fits(
            batch * 3 * side * side * 4 * TRAIN_FACTOR,
            f"--image-size {side}",
            f"one batch of {batch} images of {side}x{side} px",
            "Use an image size in the hundreds of pixels (e.g. 224), or a smaller --batch-size.",
        )
    n = _int(options.get("n")) or _int(options.get("num"))  # -n on the CLI, num in the config
    if n:  # gan sample: n images (float32 + uint8) of at most 64x64x3, plus the grid
        check_fits(
            n * 3 * 64 * 64 * (4 + 1 + 1),
            f"-n {n}",
            f"a grid of {n:,} samples",
            "Sample fewer images per grid (a few hundred are readable); run it again for more.",
        )
    sizes = options.get("batch_sizes")  # "1,3,8" on the CLI, [1, 3, 8] in the config
    if isinstance(sizes, str | list | tuple):
        items = sizes.split(",") if isinstance(sizes, str) else sizes
        biggest = max((int(t) for t in items if str(t).strip().isdigit()), default=0)
        check_fits(
            biggest * 3 * 224 * 224 * 4 * VALIDATE_FACTOR,
            f"--batch-sizes {sizes}",
            f"a batch of {biggest:,} images (at 224x224 px)",
            "Parity does not change with batch size beyond a few dozen; use e.g. 1,8,32.",
        )
