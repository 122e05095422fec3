"""dlpipe: staged deep-learning pipelines for images, with ONNX export and strict parity.

The Python API: one function per command, keyword names as the CLI options in snake_case with the
same defaults, each returning the dict that the command's `--json` prints and raising
`dlpipe.errors.DlpipeError` subclasses on bad input (never SystemExit). Nothing heavy is imported
until a function runs.

    import dlpipe
    r = dlpipe.finetune(backbone="mobilenet_v2", data="mnist5k", image_size=96, epochs=5)
    r["run_dir"], r["metrics"]["held_out_acc"]
    dlpipe.export(r["run_dir"], out="exports/m.onnx")
    v = dlpipe.validate("exports/m.onnx")          # raises ParityFailed when a check fails
"""

from __future__ import annotations

import sys
import types
from pathlib import Path
from typing import Any

from ._version import __version__

__all__ = [
    "__version__",
    "data_export",
    "eval",
    "export",
    "finetune",
    "predict",
    "run_pipeline",
    "sample",
    "train_ae",
    "train_gan",
    "validate",
]


def _call(command: str, options: dict[str, Any], verbose: bool) -> dict[str, Any]:
    import json

    from . import locks
    from .console import Output, json_safe
    from .stages import run_stage

    out = Output(quiet=not verbose)
    mark = locks.mark()
    try:
        result = run_stage(command, options, out)
    finally:
        locks.release_since(mark)  # the run folder is free again when the call returns
    return json.loads(json.dumps(json_safe(result), default=str))  # exactly what --json prints


def finetune(*, verbose: bool = False, **options: Any) -> dict[str, Any]:
    """`dlpipe finetune`: options of FinetuneConfig plus name, runs_dir, exist_ok, resume."""
    return _call("finetune", options, verbose)


def train_gan(*, verbose: bool = False, **options: Any) -> dict[str, Any]:
    """`dlpipe gan train`: options of GanConfig plus name, runs_dir, exist_ok, resume."""
    return _call("gan train", options, verbose)


def train_ae(*, verbose: bool = False, **options: Any) -> dict[str, Any]:
    """`dlpipe ae train`: options of AeConfig plus name, runs_dir, exist_ok, resume."""
    return _call("ae train", options, verbose)


class _Export:
    """`dlpipe.export(SOURCE, ...)` runs the export stage; `dlpipe.export.<module>` is still the
    export package (importing that package must not hide the function, see _Package below)."""

    def __call__(
        self, source: str | Path, *, verbose: bool = False, **options: Any
    ) -> dict[str, Any]:
        """`dlpipe export SOURCE`: a run folder or checkpoint to ONNX (options of ExportConfig)."""
        return _call("export", {"source": source, **options}, verbose)

    def __getattr__(self, name: str) -> Any:
        import importlib

        return getattr(importlib.import_module("dlpipe.export"), name)


export = _Export()


def validate(
    model: str | Path, *, check: bool = True, verbose: bool = False, **options: Any
) -> dict[str, Any]:
    """`dlpipe validate MODEL`: parity report. With check=True a failed check raises
    ParityFailed (its `.result` holds the report); check=False returns it either way."""
    from .export.commands import ParityFailed

    try:
        return _call("validate", {"model": model, **options}, verbose)
    except ParityFailed as exc:
        if check:
            raise
        return exc.result


def predict(
    model: str | Path, images: list[str | Path], *, verbose: bool = False, **options: Any
) -> dict[str, Any]:
    """`dlpipe predict MODEL IMAGES...` with onnxruntime alone (options of PredictConfig)."""
    return _call("predict", {"model": model, "images": list(images), **options}, verbose)


def sample(model: str | Path, *, verbose: bool = False, **options: Any) -> dict[str, Any]:
    """`dlpipe gan sample MODEL`: a PNG grid (num, out, seed, interpolate)."""
    return _call("gan sample", {"model": model, **options}, verbose)


def eval(model: str | Path, *, verbose: bool = False, **options: Any) -> dict[str, Any]:  # noqa: A001
    """`dlpipe eval MODEL --data SOURCE`: accuracy and confusion matrix on a labelled set."""
    return _call("eval", {"model": model, **options}, verbose)


def data_export(
    name: str, out_dir: str | Path, *, verbose: bool = False, **options: Any
) -> dict[str, Any]:
    """`dlpipe data export NAME OUT_DIR`: a built-in set as an ImageFolder of PNGs."""
    return _call("data export", {"name": name, "out_dir": out_dir, **options}, verbose)


def run_pipeline(
    path: str | Path,
    *,
    only: str | None = None,
    start: str | None = None,
    force: bool = False,
    dry_run: bool = False,
    overrides: list[str] | None = None,
    verbose: bool = False,
) -> dict[str, Any]:
    """`dlpipe run PIPELINE.yaml`: the stages in order, skipping those up to date; the summary."""
    from .console import Output
    from .pipeline import load_pipeline
    from .pipeline import run_pipeline as run

    out = Output(quiet=not verbose)
    pipeline = load_pipeline(path, overrides or [])
    return run(
        pipeline, only=only, start=start, force=force, dry_run=dry_run, echo=out.print, out=out
    )


class _Package(types.ModuleType):
    """The dlpipe module: the import system sets `dlpipe.export` to the subpackage when it is
    first imported; the API function stays (it forwards attribute access to the package)."""

    def __setattr__(self, name: str, value: Any) -> None:
        if name == "export" and isinstance(value, types.ModuleType):
            return
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package
