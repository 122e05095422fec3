"""Ctrl-C and full disks during training: save (or keep) a checkpoint and say how to resume.

The first SIGINT only sets a flag that the training loop checks between steps (a step is never cut
in half, so the saved optimizer, weights and RNG agree); a second SIGINT interrupts at once.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Callable, Iterator
from pathlib import Path


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
    """Turn the first Ctrl-C into a flag while the block runs (main thread only; else a no-op)."""
    flag = StopFlag()
    if threading.current_thread() is not threading.main_thread():
        yield flag
        return

    def handler(signum: int, frame: object) -> None:
        flag.requested = True
        signal.signal(signal.SIGINT, signal.default_int_handler)  # a second Ctrl-C: stop now

    previous = signal.signal(signal.SIGINT, handler)
    try:
        yield flag
    finally:
        signal.signal(signal.SIGINT, previous)


def resume_hint(command: str, run_path: Path, epoch: int, step: int) -> str:
    """The message printed after a Ctrl-C checkpoint."""
    from ..runs import RunDir

    run = RunDir(run_path)
    return (
        f"interrupted after {epoch} complete epoch(s), at step {step}; checkpoint saved to "
        f"{run.checkpoint('last')}. Continue with: {run.resume_command(command)}"
    )


def save_or_explain(save: Callable[[], Path], path: Path) -> Path:
    """Run a checkpoint save; a failed write (disk full, folder gone) becomes one clear error."""
    import errno

    from ..errors import BadInput, EnvironmentProblem

    try:
        return save()
    except OSError as exc:  # the atomic write left the previous checkpoint whole
        full = exc.errno in (errno.ENOSPC, errno.EDQUOT)
        raise (EnvironmentProblem if full else BadInput)(
            f"Cannot write checkpoint {path}: {exc.strerror or exc}. The previous checkpoint "
            "there (if any) is unchanged.",
            hint="Free some disk space or choose a writable --runs-dir, then continue with --resume.",
        ) from None
