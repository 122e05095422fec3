"""`dlpipe gan train|sample`: DCGANs."""

from __future__ import annotations

import typer

from .common import command, not_implemented

app = typer.Typer(help="Train DCGANs and sample from them.", no_args_is_help=True)


@app.command("train")
@command
def train() -> None:
    """Train a DCGAN (not built yet)."""
    not_implemented("gan train")


@app.command("sample")
@command
def sample() -> None:
    """Sample a grid from a trained generator (not built yet)."""
    not_implemented("gan sample")
