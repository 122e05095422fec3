"""The error boundary every command runs inside, and `--nproc` re-launching under torchrun.

`command` turns a DlpipeError into one paragraph and its exit code, Ctrl-C / SIGTERM into 130 / 143,
a full disk into 3, and anything else (a bug) into one line naming the exception with the full
traceback in a crash log (exit 70); it checks option sizes against memory first and releases the
run-folder locks the command took.
"""

from __future__ import annotations

import functools
import inspect
import os
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

import click
import typer
from rich.markup import escape

from ..atomic import free_space, is_disk_full
from ..console import (
    Output,  # noqa: F401 - re-exported for the commands
    console,
)
from ..distributed import env_rank, tell_launcher
from ..errors import EXIT_ENVIRONMENT, EXIT_INTERNAL, DlpipeError, NotImplementedYet
from ..limits import check_options

F = TypeVar("F", bound=Callable[..., Any])


def command(func: F) -> F:
    """The one error boundary of a command: DlpipeError -> its paragraph and exit code, Ctrl-C ->
    130, SIGTERM -> 143, anything else -> "internal error" (exit 70, traceback in crash.log)."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        import signal

        from .. import locks
        from ..train import interrupt

        mark = locks.mark()
        interrupt.reset()
        try:
            check_options(kwargs)  # sizes against this machine's memory, before any allocation
            with interrupt.sigterm_as_interrupt(), warnings.catch_warnings():
                if not os.environ.get("DLPIPE_WARNINGS"):  # library chatter is for developers
                    warnings.simplefilter("ignore")
                return func(*args, **kwargs)
        except DlpipeError as exc:  # under torchrun, rank 0 speaks for all ranks
            _say(f"[bold red]error:[/] {escape(exc.paragraph())}")
            tell_launcher(f"dlpipe: {exc.paragraph()} (exit code {exc.exit_code})")
            raise typer.Exit(exc.exit_code) from None
        except KeyboardInterrupt:
            if interrupt.stopped_by() == signal.SIGTERM:
                _say("[yellow]terminated[/] (SIGTERM)")
                raise typer.Exit(128 + signal.SIGTERM) from None
            _say("[yellow]interrupted[/]")
            raise typer.Exit(130) from None
        except (typer.Exit, click.exceptions.Exit, click.ClickException, click.Abort, SystemExit):
            raise
        except Exception as exc:  # a bug: one paragraph here, the traceback in a file
            if is_disk_full(exc):  # not a bug: a full disk anywhere is exit 3 with the path
                where = exc.filename or "a file"
                _say(
                    f"[bold red]error:[/] Cannot write {escape(str(where))}: "
                    f"{escape(exc.strerror or str(exc))} ({free_space(where if exc.filename else '.')} "
                    "free there). Files written before are unchanged. Free some space (or choose "
                    "another --runs-dir / --out) and run it again."
                )
                raise typer.Exit(EXIT_ENVIRONMENT) from None
            log = _write_crash_log(func.__name__, locks.current_run(since=mark))
            where = f"the full traceback is in {log}" if log else "no crash log could be written"
            _say(
                f"[bold red]internal error in {escape(_command_name(func))}:[/] "
                f"{escape(type(exc).__name__)}: {escape(_one_line(str(exc)))}. This is a bug in "
                f"dlpipe, not in your input; {escape(where)}. Please report it with that file."
            )
            raise typer.Exit(EXIT_INTERNAL) from None
        finally:
            locks.release_since(mark)

    wrapper.__doc__ = reflow(func.__doc__)
    hints = tidy_help(func)
    sig = inspect.signature(func)
    wrapper.__signature__ = sig.replace(  # type: ignore[attr-defined]
        parameters=[
            p.replace(annotation=hints.get(n, p.annotation)) for n, p in sig.parameters.items()
        ]
    )
    return wrapper  # type: ignore[return-value]


def tidy_help(func: Callable[..., Any]) -> dict[str, Any]:
    """The function's annotations, evaluated, with help texts as written: `[default: ...]` shown
    (rich would eat it as markup, leaving "Output side: 28, 32 or 64 ."), and no `<bool>` type
    column for flags. Typer reads these objects, not the source strings."""
    import re
    import typing

    hints = typing.get_type_hints(func, include_extras=True)
    for hint in hints.values():
        if typing.get_origin(hint) is not Annotated:
            continue
        base, *extras = typing.get_args(hint)
        for info in extras:
            if not isinstance(info, typer.models.ParameterInfo):
                continue
            if info.help and "[" in info.help:
                info.help = re.sub(r"(?<!\\)\[", r"\\[", info.help)
            if base is bool and isinstance(info, typer.models.OptionInfo) and info.metavar is None:
                info.metavar = ""
    return hints


def _say(markup: str) -> None:
    """One paragraph on stderr; under torchrun only rank 0 prints it."""
    console(stderr=True, quiet=env_rank() != 0).print(markup, soft_wrap=True)


def _command_name(func: Callable[..., Any]) -> str:
    """`gan train` for dlpipe.cli.gan.train, `export` for dlpipe.cli.onnx.export."""
    group = func.__module__.rsplit(".", 1)[-1]
    name = func.__name__.rstrip("_").replace("_", "-")
    return f"{group} {name}" if group in ("gan", "ae", "data", "weights") else name


def _one_line(text: str, limit: int = 300) -> str:
    text = " ".join(text.split()) or "(no message)"
    return text if len(text) <= limit else text[: limit - 3] + "..."


def cache_dir() -> Path:
    """$DLPIPE_CACHE_DIR, else ~/.cache/dlpipe (the home of crash logs without a run folder)."""
    env = os.environ.get("DLPIPE_CACHE_DIR")
    return Path(env) if env else Path.home() / ".cache" / "dlpipe"


def _write_crash_log(name: str, run: Path | None) -> Path | None:
    """Write the current exception's traceback to RUN/crash.log (or the cache dir); its path."""
    import datetime
    import sys
    import traceback

    from .. import __version__

    stamp = datetime.datetime.now(datetime.UTC).strftime("%Y%m%d-%H%M%S")
    text = (
        f"dlpipe {__version__}, {stamp} UTC, pid {os.getpid()}, python {sys.version.split()[0]}\n"
        f"argv: {sys.argv}\n\n{traceback.format_exc()}"
    )
    places = [run / "crash.log"] if run is not None else []
    places.append(cache_dir() / "crash" / f"crash-{stamp}-{os.getpid()}.log")
    for place in places:
        try:
            place.parent.mkdir(parents=True, exist_ok=True)
            place.write_text(text, encoding="utf-8", errors="backslashreplace")
            return place
        except OSError:
            continue
    return None


def launch_if_asked(ctx: typer.Context, nproc: int, device: str = "auto") -> None:
    """`--nproc N` (N > 1) outside torchrun: re-run this very command under torchrun with N
    processes on this machine, then exit with its code. Under torchrun (or N = 1), return."""
    from ..distributed import env_world_size, launch
    from ..errors import BadInput

    if nproc <= 1:
        return
    if env_world_size() > 1:
        raise BadInput(
            f"--nproc {nproc}: this process already runs under torchrun (WORLD_SIZE="
            f"{env_world_size()}).",
            hint="Drop --nproc; torchrun's --nproc-per-node sets the number of processes.",
        )
    _check_gpu_count(nproc, device)
    raise typer.Exit(launch(nproc, _argv_of(ctx, skip={"nproc"})))


def _check_gpu_count(nproc: int, device: str) -> None:
    import torch

    from ..errors import BadInput

    wants_cuda = device.startswith("cuda") or (device == "auto" and torch.cuda.is_available())
    if wants_cuda and nproc > torch.cuda.device_count():
        raise BadInput(
            f"--nproc {nproc}: only {torch.cuda.device_count()} CUDA device(s) are visible, and "
            "each process needs its own.",
            hint="Use --nproc up to that count, or --device cpu for CPU processes.",
        )
    if device.startswith("cuda:"):
        raise BadInput(
            f"--device {device} names one GPU, but --nproc {nproc} gives each process its own.",
            hint="Use --device cuda (or auto); set CUDA_VISIBLE_DEVICES to choose the GPUs.",
        )


def _argv_of(ctx: typer.Context, skip: set[str]) -> list[str]:
    """The command line that produced `ctx`: command words, then the options given explicitly."""
    words: list[str] = []
    c: Any = ctx
    while c is not None and c.parent is not None:
        words.insert(0, c.info_name or "")
        c = c.parent
    for param in ctx.command.params:
        name = param.name or ""
        if name in skip or param.param_type_name != "option":
            continue
        source = ctx.get_parameter_source(name)
        if getattr(source, "name", "") not in ("COMMANDLINE", "ENVIRONMENT"):
            continue
        value = ctx.params[name]
        flag = param.opts[0]
        if param.is_flag:
            if value:
                words.append(flag)
            elif param.secondary_opts:
                words.append(param.secondary_opts[0])
        elif isinstance(value, (list, tuple)):
            for v in value:
                words += [flag, str(v)]
        elif value is not None:
            words += [flag, str(value)]
    for param in ctx.command.params:
        if param.param_type_name == "argument" and ctx.params.get(param.name) is not None:
            value = ctx.params[param.name]
            words += [str(v) for v in value] if isinstance(value, (list, tuple)) else [str(value)]
    return words


def reflow(doc: str | None) -> str | None:
    """Join the hard-wrapped lines of each docstring paragraph, so help wraps to the terminal."""
    if not doc:
        return doc
    paragraphs = inspect.cleandoc(doc).split("\n\n")
    return "\n\n".join(" ".join(line.strip() for line in p.splitlines()) for p in paragraphs)


def not_implemented(name: str) -> None:
    """Exit 2 with one line: the command exists in the tree but is not built yet."""
    raise NotImplementedYet(f"`dlpipe {name}` is not implemented yet.")
