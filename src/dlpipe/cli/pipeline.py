"""`dlpipe run PIPELINE.yaml`: the stages of a pipeline file, in order."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from .common import JsonOpt, Output, QuietOpt, command


def _table(summary: dict[str, Any]) -> Any:
    from rich.table import Table

    table = Table(title=f"pipeline {summary['pipeline']}")
    for col in ("stage", "status", "time", "key metrics"):
        table.add_column(col)
    colors = {"ok": "green", "skipped": "dim", "failed": "red", "would run": "cyan"}
    for row in summary["stages"]:
        metrics = ", ".join(
            f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
            for k, v in row["metrics"].items()
        )
        status = f"[{colors.get(row['status'], 'white')}]{row['status']}[/]"
        table.add_row(row["stage"], status, f"{row['seconds']:.1f}s", metrics)
    return table


@command
def run(
    pipeline_file: Annotated[
        Path, typer.Argument(help="Pipeline YAML file, e.g. pipelines/quickstart.yaml.")
    ],
    only: Annotated[str | None, typer.Option("--only", help="Run just this stage.")] = None,
    start: Annotated[
        str | None, typer.Option("--from", help="Run from this stage to the end.")
    ] = None,
    force: Annotated[
        bool, typer.Option("--force", help="Run stages even when they are up to date.")
    ] = False,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Print the plan (run/skip per stage) and stop.")
    ] = False,
    overrides: Annotated[
        list[str] | None,
        typer.Option(
            "--set",
            help="Override an option: STAGE.OPTION=VALUE (repeatable), e.g. classify.epochs=3.",
        ),
    ] = None,
    json: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Run the stages of a pipeline file in order, skipping stages whose inputs and options are
    unchanged since their last success. A failing stage stops the run and keeps earlier outputs;
    running again continues where it failed. Writes summary.json beside the stage state."""
    from ..errors import DlpipeError
    from ..pipeline import load_pipeline, run_pipeline

    out = Output(json, quiet)
    pipeline = load_pipeline(pipeline_file, overrides or [])
    try:
        summary = run_pipeline(
            pipeline, only=only, start=start, force=force, dry_run=dry_run, echo=out.print, out=out
        )
    except DlpipeError as exc:
        if getattr(exc, "summary", None):
            out.print(_table(exc.summary))  # type: ignore[attr-defined]
        raise
    out.print(_table(summary))
    where = (
        "dry run: nothing was run"
        if dry_run
        else f"Summary: [bold]{summary['state_dir']}/summary.json[/]"
    )
    out.result(summary, where)


def register(app: typer.Typer) -> None:
    """Add the command to the root app."""
    app.command("run")(run)
