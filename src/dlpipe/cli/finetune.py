"""`dlpipe finetune`: a frozen pretrained backbone and a new head."""

from __future__ import annotations

import typer

from .common import command, not_implemented


@command
def finetune() -> None:
    """Fine-tune a new head on a frozen pretrained backbone (not built yet)."""
    not_implemented("finetune")


def register(app: typer.Typer) -> None:
    """Add the command to the root app."""
    app.command("finetune")(finetune)
