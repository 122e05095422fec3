"""`dlpipe weights list|import`: pretrained weights available offline."""

from __future__ import annotations

import typer

from .common import command, not_implemented

app = typer.Typer(help="Pretrained weights available offline.", no_args_is_help=True)


@app.command("list")
@command
def list_() -> None:
    """List pretrained weights available offline (not built yet)."""
    not_implemented("weights list")


@app.command("import")
@command
def import_() -> None:
    """Verify a weights file and place it in the standard cache (not built yet)."""
    not_implemented("weights import")
