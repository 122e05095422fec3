"""The `dlpipe` command tree. The root only composes the command modules; each one imports torch
and friends lazily inside its commands, so `dlpipe --help` stays fast."""

from __future__ import annotations

from typing import Annotated

import typer

from .._version import __version__
from . import ae, backbones, cache, data, doctor, evaluate, finetune, gan, onnx, pipeline, weights

app = typer.Typer(
    name="dlpipe",
    help="Staged deep-learning pipelines for images: fine-tune a frozen pretrained backbone, train "
    "DCGANs and (denoising) autoencoders, export to ONNX and prove parity under onnxruntime.\n\n"
    "Exit codes: 0 success, 1 a check failed, 2 bad usage or input, 3 environment problem, "
    "70 internal error (traceback in crash.log), 130/143 interrupted (SIGINT/SIGTERM).",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"dlpipe {__version__}")
        raise typer.Exit()


@app.callback()
def root(
    version: Annotated[
        bool,
        typer.Option(
            "--version", callback=_version, is_eager=True, help="Print the version and exit."
        ),
    ] = False,
) -> None:
    """dlpipe: staged deep-learning pipelines for images."""


finetune.register(app)
app.add_typer(gan.app, name="gan")
app.add_typer(ae.app, name="ae")
onnx.register(app)
evaluate.register(app)
pipeline.register(app)
app.add_typer(backbones.app, name="backbones")
app.add_typer(data.app, name="data")
app.add_typer(weights.app, name="weights")
app.add_typer(cache.app, name="cache")
doctor.register(app)


def main() -> None:
    """Console-script entry point."""
    app()
