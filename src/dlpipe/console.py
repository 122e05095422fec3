"""How the library talks to a person: the Reporter protocol and its rich implementation.

Library functions take any object with `print`, `warn` and `progress`; the CLI passes an `Output`
(progress bars, --json, --quiet), the Python API a quiet one. No torch import here.
"""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import PurePath
from typing import Any, Protocol

from rich.console import Console

from .distributed import env_rank
from .text import printable


class Reporter(Protocol):
    """What training, export and validation need to tell a person about their progress."""

    def print(self, *args: Any, **kwargs: Any) -> None:
        """Human output (silenced when quiet)."""

    def warn(self, message: str) -> None:
        """A warning, shown even when quiet."""

    def progress(self, description: str, total: int | None) -> Any:
        """A context manager yielding `advance(n=1, info=None)`."""


class _Stream:
    """sys.stdout or sys.stderr as it is at each write (test runners and rich's progress bars
    swap them), writing a file name that is not UTF-8 as `caf\\xe9` instead of failing to encode:
    a rich Table or Panel holding such a name is not a string `Output.print` could clean."""

    def __init__(self, name: str) -> None:
        self._name = name

    def _target(self) -> Any:
        # under a progress bar sys.stdout is rich's line-buffering proxy; a plain Console writes
        # to the file behind it, and so does this one (rich must not unwrap *this* object)
        stream = getattr(sys, self._name)
        return getattr(stream, "rich_proxied_file", stream)

    def write(self, text: str) -> int:
        return self._target().write(printable(text))

    def __getattr__(self, attr: str) -> Any:
        if attr == "rich_proxied_file":
            raise AttributeError(attr)
        return getattr(self._target(), attr)


def console(stderr: bool = False, quiet: bool = False) -> Console:
    """A rich Console on stdout or stderr that never fails on a name that is not UTF-8."""
    return Console(file=_Stream("stderr" if stderr else "stdout"), quiet=quiet, highlight=False)


class Output:
    """Human output to stdout (stderr with --json), progress bars unless --quiet, one JSON result."""

    def __init__(self, json_mode: bool = False, quiet: bool = False) -> None:
        self.main = env_rank() == 0  # under torchrun only rank 0 talks
        self.json_mode = json_mode
        self.quiet = quiet or not self.main
        self.console = console(stderr=json_mode, quiet=self.quiet)
        self.err = console(stderr=True, quiet=not self.main)
        # the final line saying where the result went prints even with --quiet
        self.final = console(stderr=json_mode, quiet=not self.main)

    def print(self, *args: Any, **kwargs: Any) -> None:
        """Human output (silenced by --quiet); control characters are shown, not sent."""
        self.console.print(*(visible(a) if isinstance(a, str) else a for a in args), **kwargs)

    def warn(self, message: str) -> None:
        """A warning on stderr, shown even with --quiet."""
        self.err.print(f"[yellow]warning:[/] {visible(message)}", soft_wrap=True)

    @contextmanager
    def progress(self, description: str, total: int | None) -> Iterator[Callable[..., None]]:
        """A rich progress bar; yields `advance(n=1, **fields)`. Disabled by --quiet."""
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
        )

        if self.quiet:
            yield lambda n=1, **fields: None
            return
        columns = [
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TextColumn("{task.fields[info]}"),
        ]
        if total is not None:
            total = max(0, total)  # resuming with --epochs below the epochs done: 0/0, not 0/-710
        with Progress(*columns, console=console(stderr=True), transient=False) as bar:
            task = bar.add_task(description, total=total, info="")

            def advance(n: int = 1, info: str | None = None) -> None:
                bar.update(task, advance=n, **({"info": info} if info is not None else {}))

            yield advance

    def result(self, payload: dict[str, Any], human: str | None = None) -> None:
        """The command's final word: one JSON object (--json) or a line saying where things went
        (printed with --quiet too: a quiet run still says where its result is)."""
        if not self.main:
            return
        if self.json_mode:
            sys.stdout.write(json.dumps(json_safe(payload), default=str, allow_nan=False) + "\n")
            sys.stdout.flush()
        elif human:
            self.final.print(human)


_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")  # all but tab and newline
_ALL_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")  # in a name, a newline could forge a line


def visible(text: str) -> str:
    """Control characters (ESC, CR, BEL, ...) and undecodable bytes shown as \\x.. instead of
    acting on the terminal (or failing to encode)."""
    return _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", printable(text))


def shown(name: Any) -> str:
    """A name from the user's data (class, file) for printing: markup escaped, control characters
    visible, so `[bold red]one` prints as typed and `ESC[2J` does not clear the screen."""
    from rich.markup import escape

    return escape(_ALL_CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", printable(str(name))))


def json_safe(obj: Any) -> Any:
    """NaN and infinities as null: `NaN` is not JSON, and a reader's parser would reject the line."""
    if isinstance(obj, float):
        return obj if obj == obj and obj not in (float("inf"), float("-inf")) else None
    if isinstance(obj, str | PurePath):  # a lone surrogate is not portable JSON (RFC 8259 8.2)
        return printable(str(obj))
    if isinstance(obj, dict):
        return {json_safe(k): json_safe(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [json_safe(v) for v in obj]
    if hasattr(obj, "item") and callable(obj.item) and getattr(obj, "ndim", None) == 0:
        return json_safe(obj.item())  # numpy / torch scalars
    return obj


def quiet() -> Output:
    """A Reporter for library calls: no progress bars or chatter; warnings still reach stderr."""
    return Output(quiet=True)
