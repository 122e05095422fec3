"""`dlpipe data list|export`: the built-in offline data sets."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from .common import DataRootOpt, JsonOpt, Output, QuietOpt, command

app = typer.Typer(
    help="Built-in offline data sets: list them, export them as image folders.",
    no_args_is_help=True,
)


@app.command("list")
@command
def list_sets(data_root: DataRootOpt = None, json: JsonOpt = False) -> None:
    """Show each built-in set with its size, classes, image size and whether it is present here."""
    from rich.table import Table

    from ..data.builtin import BUILTINS

    out = Output(json)
    rows = []
    table = Table(title="Built-in data sets (use with --data NAME)")
    for col in ("name", "images", "image size", "classes", "present", "source"):
        table.add_column(col)
    for b in BUILTINS.values():
        side, _, colour = b.image_size.partition(" ")  # "28x28 gray"
        row = {
            "name": b.name,
            "description": b.description,
            "images": int(b.size.replace(",", "")),  # JSON numbers are numbers, not "5,000"
            "image_size": int(side.split("x")[0]),
            "channels": 1 if colour == "gray" else 3,
            "classes": 10,
            "present": b.present(data_root),
            "source": b.source,
        }
        rows.append(row)
        present = "[green]yes[/]" if row["present"] else "[red]no[/]"
        table.add_row(b.name, b.size, b.image_size, "10", present, b.source)
    out.print(table)
    out.result({"datasets": rows})


@app.command("export")
@command
def export_set(
    name: Annotated[str, typer.Argument(help="Built-in set name (see `dlpipe data list`).")],
    out_dir: Annotated[
        Path, typer.Argument(help="Folder to create: one subfolder of PNGs per class.")
    ],
    data_root: DataRootOpt = None,
    limit: Annotated[
        int | None, typer.Option("--limit", min=1, help="Write at most N images (stratified).")
    ] = None,
    force: Annotated[
        bool, typer.Option("--force", help="Replace OUT_DIR if it already exists.")
    ] = False,
    json: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Write a built-in set as an ImageFolder of PNGs (e.g. to look at it, or to start your own set)."""
    from ..stages import run_stage

    out = Output(json, quiet)
    options = {"name": name, "out_dir": out_dir, "data_root": data_root, "limit": limit}
    result = run_stage("data export", {**options, "force": force}, out)
    out.result(
        result,
        f"Wrote {result['images']} images in {len(result['classes'])} class folders to "
        f"[bold]{out_dir}[/]",
    )
