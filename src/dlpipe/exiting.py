"""Leaving a torchrun process without C++ teardown aborts.

A process of a torchrun job (a rank, or the torchrun agent that started them) can abort in the
interpreter's final teardown after its work is done and its exit code decided: a Gloo or TCPStore
thread still joinable when C++ statics are destroyed calls std::terminate ("terminate called
without an active exception", SIGABRT, exit 134), now and then on a loaded machine, and the job
then reads as failed. `exit_now` runs what Python would run at exit (atexit handlers: leaving
the process group, stopping cache fills, removing temporary files), flushes, and ends the process
with its code without that teardown.
"""

from __future__ import annotations

import atexit
import os
import sys
from collections.abc import Callable


def exit_now(code: int) -> None:
    """atexit handlers, flushed streams, then `os._exit(code)`."""
    try:
        atexit._run_exitfuncs()
    finally:
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except (OSError, ValueError):
                pass
        os._exit(code)


def run_and_exit(main: Callable[[], object]) -> None:
    """Run `main` (a CLI entry point that exits through SystemExit) and leave with its code."""
    code = 0
    try:
        main()
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        if exc.code is not None and not isinstance(exc.code, int):
            print(exc.code, file=sys.stderr)
    except KeyboardInterrupt:
        code = 130
    exit_now(code)
