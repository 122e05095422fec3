"""`dlpipe weights list|import`: pretrained weights available offline."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from .common import JsonOpt, Output, QuietOpt, command

app = typer.Typer(help="Pretrained weights available offline.", no_args_is_help=True)


@app.command("list")
@command
def list_(json: JsonOpt = False) -> None:
    """List pretrained weight files available offline (torch-hub cache and offline packages),
    each with its sha256 check against the prefix in its official torchvision file name."""
    from rich.table import Table

    from ..weights import hub_checkpoints_dir, offline_files

    out = Output(json)
    rows = offline_files()
    table = Table(title=f"Offline pretrained weights (torch-hub cache: {hub_checkpoints_dir()})")
    for col in ("model", "file", "from", "sha256 verified"):
        table.add_column(col)
    for r in rows:
        ok = {True: "[green]yes[/]", False: "[red]NO[/]", None: "-"}[r["verified"]]
        table.add_row(r["model"], r["file"], r["package"], ok)
    out.print(table)
    out.result({"weights": rows, "hub_dir": str(hub_checkpoints_dir())})


@app.command("import")
@command
def import_(
    path: Annotated[Path, typer.Argument(help="A .pth file of official torchvision weights.")],
    backbone: Annotated[
        str, typer.Option("--backbone", help="torchvision model the file belongs to.")
    ] = "mobilenet_v2",
    json: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Verify a weights file (sha256 against the official name, keys and shapes against the
    model) and place it in the torch-hub cache, where torchvision and dlpipe find it offline."""
    from ..errors import BadInput
    from ..models.backbones import import_checked

    out = Output(json, quiet)
    if not path.is_file():
        raise BadInput(f"{path} does not exist.", hint="Pass the downloaded .pth file.")
    target, weights_name = import_checked(path, backbone)
    out.result(
        {"file": str(target), "backbone": backbone, "weights": weights_name},
        f"imported {path} as {backbone} {weights_name}: {target}",
    )
