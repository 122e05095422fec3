"""`dlpipe export|validate|predict|inspect`: ONNX files and proof of parity."""

from __future__ import annotations

import typer

from .common import command, not_implemented


@command
def export() -> None:
    """Export a trained model to ONNX with its preprocessing (not built yet)."""
    not_implemented("export")


@command
def validate() -> None:
    """Check that an ONNX file computes what the PyTorch model computes (not built yet)."""
    not_implemented("validate")


@command
def predict() -> None:
    """Run an ONNX model on images with onnxruntime alone (not built yet)."""
    not_implemented("predict")


@command
def inspect() -> None:
    """Show an ONNX file's metadata, inputs, outputs and operators (not built yet)."""
    not_implemented("inspect")


def register(app: typer.Typer) -> None:
    """Add the commands to the root app."""
    for fn in (export, validate, predict, inspect):
        app.command(fn.__name__)(fn)
