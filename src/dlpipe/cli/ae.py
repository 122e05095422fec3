"""`dlpipe ae train`: convolutional (denoising) autoencoders."""

from __future__ import annotations

import typer

from .common import command, not_implemented

app = typer.Typer(help="Train convolutional (denoising) autoencoders.", no_args_is_help=True)


@app.command("train")
@command
def train() -> None:
    """Train a convolutional (denoising) autoencoder (not built yet)."""
    not_implemented("ae train")
