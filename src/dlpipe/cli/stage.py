"""From a parsed command line to the stage registry: which options the user gave, and the call."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

# Parameters that steer the command line itself, not the stage.
CLI_ONLY = {"json", "json_out", "quiet", "nproc", "config_file", "run_validate"}
RUN_OPTIONS = {"name", "runs_dir", "exist_ok", "resume"}

ConfigFileOpt = Annotated[
    Path | None,
    typer.Option(
        "--config",
        rich_help_panel="Output",
        help="Start from a saved config.yaml (e.g. runs/finetune/exp/config.yaml) to re-run it; "
        "options you type win.",
        exists=True,
        dir_okay=False,
    ),
]


def given(ctx: typer.Context) -> set[str]:
    """Names of the parameters the user typed (or set through the environment)."""
    return {
        k
        for k in ctx.params
        if getattr(ctx.get_parameter_source(k), "name", "") in ("COMMANDLINE", "ENVIRONMENT")
    }


def run_from_cli(
    ctx: typer.Context, command: str, out: Any, config_file: Path | None = None
) -> dict[str, Any]:
    """Run `command` with the options typed on the command line. Options not typed come from the
    config dataclass's defaults, or from `--config FILE` (a saved config.yaml) when given; on
    `--resume` the typed ones win over the run's saved config."""
    from ..stages import lookup, run_stage

    stage = lookup(command)
    typed = given(ctx) - CLI_ONLY
    options = {k: ctx.params[k] for k in typed}
    for k in RUN_OPTIONS if stage.trains else ():
        options[k] = ctx.params[k]
    for k in stage.positional:  # arguments are always given
        if k in ctx.params:
            options[k] = ctx.params[k]
    base = _read_config(config_file) if config_file else None
    return run_stage(command, options, out, explicit=typed, base=base)


def _read_config(path: Path) -> dict[str, Any]:
    import yaml

    from ..errors import BadInput

    try:
        data = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise BadInput(
            f"--config {path}: cannot read it as YAML ({exc}).",
            hint="Pass a config.yaml that a dlpipe run wrote (RUN/config.yaml).",
        ) from None
    if not isinstance(data, dict):
        raise BadInput(
            f"--config {path}: expected a mapping of option: value, got {type(data).__name__}.",
            hint="Pass a config.yaml that a dlpipe run wrote (RUN/config.yaml).",
        )
    return data
