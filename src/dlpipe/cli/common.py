"""What every command shares: option types (defined once), output (human vs --json), errors."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

import typer

from ..console import Output  # noqa: F401 - re-exported for the commands
from ..data.builtin import BUILTINS
from .boundary import command, launch_if_asked  # noqa: F401 - re-exported for the commands

F = TypeVar("F", bound=Callable[..., Any])

# The built-in sets, named from their registry (data/builtin.py): a new set shows up here by itself.
BUILTIN_NAMES = ", ".join(BUILTINS)


# ---- option types shared by the commands (one definition, one help text) -------------------------
def _nonempty_text(value: str) -> str:
    """--data "" would silently scan the current folder: an empty value is refused."""
    if isinstance(value, str) and not value.strip():
        raise typer.BadParameter('is empty; name a built-in set or a folder ("." for this one).')
    return value


def _nonempty_path(value: str | Path) -> Path:
    """--runs-dir "" would silently write into the current folder: an empty value is refused."""
    if isinstance(value, str) and not value.strip():
        raise typer.BadParameter('is empty; name a folder ("." for this one).')
    return Path(value)


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
        parser=_nonempty_text,
        metavar="SET|DIR",
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
        parser=_nonempty_path,
        metavar="DIR",
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
