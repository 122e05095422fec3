"""`dlpipe run PIPELINE.yaml`: the stages of a pipeline file, in order."""

from __future__ import annotations

import typer

from .common import command, not_implemented


@command
def run() -> None:
    """Run the stages of a pipeline file in order, skipping stages already done (not built yet)."""
    not_implemented("run")


def register(app: typer.Typer) -> None:
    """Add the command to the root app."""
    app.command("run")(run)
