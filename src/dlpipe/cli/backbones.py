"""`dlpipe backbones list [PATTERN]`: the networks `finetune --backbone` accepts."""

from __future__ import annotations

from typing import Annotated

import typer

from .common import JsonOpt, Output, command

app = typer.Typer(help="The backbones `dlpipe finetune` can use.", no_args_is_help=True)


@app.command("list")
@command
def list_(
    pattern: Annotated[
        str | None,
        typer.Argument(help="Glob over names, e.g. 'timm/resnet*' or 'efficientnet*'."),
    ] = None,
    json: JsonOpt = False,
) -> None:
    """List torchvision and dlpipe backbones (and timm ones matching PATTERN): family, feature size,
    and whether pretrained weights are available offline."""
    from rich.table import Table

    from ..models.backbones import list_backbones

    out = Output(json)
    rows = list_backbones(pattern or None)
    table = Table(title=f"Backbones{' matching ' + pattern if pattern else ''}")
    for col in ("name", "family", "features", "pretrained offline"):
        table.add_column(col)
    for r in rows:
        table.add_row(r["name"], r["family"], str(r["feature_size"] or "?"),
                      "[green]yes[/]" if r["pretrained_offline"] else "no")  # fmt: skip
    out.print(table)
    if not pattern:
        out.print("timm models: add a pattern, e.g. dlpipe backbones list 'timm/resnet*'.")
    out.result({"backbones": rows})
