"""What every command shares: option types (defined once), output (human vs --json), errors."""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

import typer
from rich.console import Console

from ..console import Output  # noqa: F401 - re-exported for the commands
from ..data.builtin import BUILTINS
from ..distributed import env_rank
from ..errors import DlpipeError, NotImplementedYet

F = TypeVar("F", bound=Callable[..., Any])

# The built-in sets, named from their registry (data/builtin.py): a new set shows up here by itself.
BUILTIN_NAMES = ", ".join(BUILTINS)

# ---- option types shared by the commands (one definition, one help text) -------------------------
JsonOpt = Annotated[
    bool,
    typer.Option(
        "--json",
        help="Print exactly one JSON object on stdout; human output goes to stderr.",
        rich_help_panel="Output",
    ),
]
QuietOpt = Annotated[
    bool,
    typer.Option(
        "--quiet",
        "-q",
        help="No progress bars or chatter; errors and the final line saying where the result went still print.",
        rich_help_panel="Output",
    ),
]
LogOpt = Annotated[
    str | None,
    typer.Option(
        "--log",
        help="Experiment trackers besides metrics.csv: tensorboard, mlflow or both "
        "(tensorboard,mlflow): per-epoch metrics, the config, sample/confusion images.",
        rich_help_panel="Output",
    ),
]
DataOpt = Annotated[
    str,
    typer.Option(
        "--data",
        "-d",
        help=f"Built-in set ({BUILTIN_NAMES}) or a folder: class subfolders (ImageFolder) "
        "for labels, or a flat folder of images.",
        rich_help_panel="Data",
    ),
]
DataRootOpt = Annotated[
    Path | None,
    typer.Option(
        "--data-root",
        help="Where a built-in set's files are, if not the default place.",
        rich_help_panel="Data",
    ),
]
StrictOpt = Annotated[
    bool,
    typer.Option(
        "--strict",
        help="Fail on unreadable/corrupt files instead of skipping and listing them.",
        rich_help_panel="Data",
    ),
]
DeviceOpt = Annotated[
    str,
    typer.Option(
        "--device", help="auto (CUDA if present), cpu, cuda or cuda:N.", rich_help_panel="Scale-out"
    ),
]
SeedOpt = Annotated[
    int,
    typer.Option(
        "--seed",
        help="Seed for splits, initialisation and data order.",
        rich_help_panel="Optimisation",
    ),
]
DeterministicOpt = Annotated[
    bool,
    typer.Option(
        "--deterministic",
        help="Bit-reproducible kernels (CPU runs repeat exactly; slower).",
        rich_help_panel="Optimisation",
    ),
]
RunsDirOpt = Annotated[
    Path,
    typer.Option(
        "--runs-dir",
        help="Parent of the run folders: RUNS_DIR/<command>/<name>.",
        rich_help_panel="Output",
    ),
]
NameOpt = Annotated[
    str | None,
    typer.Option(
        "--name",
        help="Run name; an existing one gets a numeric suffix unless --exist-ok.",
        rich_help_panel="Output",
    ),
]
ExistOkOpt = Annotated[
    bool,
    typer.Option(
        "--exist-ok", help="Reuse the run folder --name if it exists.", rich_help_panel="Output"
    ),
]
EpochsOpt = Annotated[
    int,
    typer.Option(
        "--epochs", min=1, help="Passes over the training split.", rich_help_panel="Optimisation"
    ),
]
BatchSizeOpt = Annotated[
    int,
    typer.Option(
        "--batch-size",
        "-b",
        min=1,
        help="Images per optimisation step.",
        rich_help_panel="Optimisation",
    ),
]
ValFractionOpt = Annotated[
    float,
    typer.Option(
        "--val-fraction",
        min=0.0,
        max=0.9,
        help="Share of each class held out for validation.",
        rich_help_panel="Data",
    ),
]
TestFractionOpt = Annotated[
    float,
    typer.Option(
        "--test-fraction",
        min=0.0,
        max=0.9,
        help="Share of each class held out for the final test.",
        rich_help_panel="Data",
    ),
]
LimitOpt = Annotated[
    int | None,
    typer.Option(
        "--limit",
        min=1,
        help="Use at most N training images (stratified subset).",
        rich_help_panel="Data",
    ),
]
NprocOpt = Annotated[
    int,
    typer.Option(
        "--nproc",
        min=1,
        help="Train with N processes on this machine (torchrun --standalone; DDP): one per GPU, "
        "or CPU processes with Gloo. --batch-size stays the global batch. Under torchrun itself, "
        "leave it out.",
        rich_help_panel="Scale-out",
    ),
]
AmpOpt = Annotated[
    Literal["off", "bf16", "fp16"],
    typer.Option(
        "--amp",
        help="Mixed precision: bf16, fp16 (with loss scaling) or off. For GPUs; on CPU it runs "
        "but rarely pays.",
        rich_help_panel="Scale-out",
    ),
]
CompileOpt = Annotated[
    bool,
    typer.Option(
        "--compile/--no-compile",
        help="torch.compile the training model (first steps slower while it compiles; needs a C "
        "compiler).",
        rich_help_panel="Scale-out",
    ),
]
SyncBnOpt = Annotated[
    bool,
    typer.Option(
        "--sync-bn/--no-sync-bn",
        help="With several processes, BatchNorm uses the statistics of the whole global batch "
        "(as one process would); --no-sync-bn keeps per-process statistics.",
        rich_help_panel="Scale-out",
    ),
]
ResumeOpt = Annotated[
    bool,
    typer.Option(
        "--resume",
        help="Continue the run named by --name (or the latest) from its last checkpoint.",
        rich_help_panel="Output",
    ),
]


def command(func: F) -> F:
    """Turn DlpipeError into one paragraph on stderr and its exit code; Ctrl-C into exit 130."""

    from rich.markup import escape  # messages name files and extras like dlpipe[tract]

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except DlpipeError as exc:  # under torchrun, rank 0 speaks for all ranks
            Console(stderr=True, highlight=False, quiet=env_rank() != 0).print(
                f"[bold red]error:[/] {escape(exc.paragraph())}", soft_wrap=True
            )
            raise typer.Exit(exc.exit_code) from None
        except KeyboardInterrupt:
            Console(stderr=True, quiet=env_rank() != 0).print("[yellow]interrupted[/]")
            raise typer.Exit(130) from None

    wrapper.__doc__ = reflow(func.__doc__)
    return wrapper  # type: ignore[return-value]


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
    import inspect

    paragraphs = inspect.cleandoc(doc).split("\n\n")
    return "\n\n".join(" ".join(line.strip() for line in p.splitlines()) for p in paragraphs)


def not_implemented(name: str) -> None:
    """Exit 2 with one line: the command exists in the tree but is not built yet."""
    raise NotImplementedYet(f"`dlpipe {name}` is not implemented yet.")
