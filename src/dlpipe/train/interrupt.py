"""Ctrl-C, SIGTERM and full disks during training: save (or keep) a checkpoint, say how to resume.

The first SIGINT (or SIGTERM, as sent by `kill`, systemd or a batch scheduler) only sets a flag that
the training loop checks between steps (a step is never cut in half, so the saved optimizer,
weights and RNG agree); a second one interrupts at once. Both travel as KeyboardInterrupt; the CLI
asks `stopped_by()` to exit 130 for SIGINT and 143 for SIGTERM. SIGTERM is only taken over in a
single process: under torchrun the launcher sends it to tear the ranks down, and a save that waits
for dead ranks would hang.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ..runs import RunDir

_last = {"signal": 0}  # the signal that stopped the current command (0: none)


def stopped_by() -> int:
    """signal.SIGTERM or SIGINT when a signal stopped the run, else 0."""
    return _last["signal"]


def reset() -> None:
    """Forget the last signal (a new command starts)."""
    _last["signal"] = 0


def _sigterm_is_ours() -> bool:
    from ..distributed import env_world_size

    return threading.current_thread() is threading.main_thread() and env_world_size() <= 1


@contextlib.contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """While the block runs, SIGTERM raises KeyboardInterrupt (remembered as SIGTERM) instead of
    killing the process without a word; a no-op off the main thread and under torchrun."""
    if not _sigterm_is_ours():
        yield
        return

    def handler(signum: int, frame: object) -> None:
        _last["signal"] = signal.SIGTERM
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


class Interrupted(Exception):
    """Raised by the loop at a step boundary after Ctrl-C; the caller saves and re-raises."""


class StopFlag:
    """Set by the first Ctrl-C; `check()` raises `Interrupted` once it is set."""

    def __init__(self) -> None:
        self.requested = False

    def check(self) -> None:
        """Raise `Interrupted` when Ctrl-C was pressed."""
        if self.requested:
            raise Interrupted


@contextlib.contextmanager
def catch_sigint() -> Iterator[StopFlag]:
    """Turn the first Ctrl-C (or SIGTERM, in a single process) into a flag while the block runs
    (main thread only; else a no-op)."""
    flag = StopFlag()
    if threading.current_thread() is not threading.main_thread():
        yield flag
        return
    signals = [signal.SIGINT] + ([signal.SIGTERM] if _sigterm_is_ours() else [])

    def handler(signum: int, frame: object) -> None:
        flag.requested = True
        _last["signal"] = signum
        for sig in signals:  # a second signal: stop now
            signal.signal(sig, _raise_now)

    previous = {sig: signal.signal(sig, handler) for sig in signals}
    try:
        yield flag
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def _raise_now(signum: int, frame: object) -> None:
    _last["signal"] = signum
    raise KeyboardInterrupt


def resume_hint(command: str, run_path: Path, epoch: int, step: int) -> str:
    """The message printed after a Ctrl-C checkpoint."""
    from ..runs import RunDir

    run = RunDir(run_path)
    return (
        f"interrupted after {epoch} complete epoch(s), at step {step}; checkpoint saved to "
        f"{run.checkpoint('last')}. Continue with: {run.resume_command(command)}"
    )


def kept_hint(command: str, run: RunDir, epoch: int) -> str:
    """The message printed after a Ctrl-C that kept the checkpoint of `epoch` (the last finished
    one) and saved nothing: a resume restarts from there."""
    last = run.checkpoint("last")
    if not last.exists():
        return "interrupted before the first epoch finished; there is nothing to resume."
    return (
        f"interrupted in epoch {epoch + 1}; the checkpoint of epoch {epoch} is kept in {last}. "
        f"Continue with: {run.resume_command(command)}"
    )


def save_or_explain(save: Callable[[], Path], path: Path) -> Path:
    """Run a checkpoint save; a failed write (disk full, folder gone) becomes one clear error."""
    import errno

    from ..atomic import free_space
    from ..errors import BadInput, EnvironmentProblem

    try:
        return save()
    except OSError as exc:  # the atomic write left the previous checkpoint whole
        full = exc.errno in (errno.ENOSPC, errno.EDQUOT)
        space = f" ({free_space(path)} free there)" if full else ""
        raise (EnvironmentProblem if full else BadInput)(
            f"Cannot write checkpoint {path}: {exc.strerror or exc}{space}. The previous "
            "checkpoint there (if any) is unchanged.",
            hint="Free some disk space or choose a writable --runs-dir, then continue with --resume.",
        ) from None
