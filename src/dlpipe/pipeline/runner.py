"""Run a pipeline's stages in order through the real CLI commands, skipping what is up to date.

Each stage runs in this process as `dlpipe <command> ... --json`; its one JSON object is its
result, which later stages reference as `${stage.key.subkey}`. A stage whose resolved command line
and upstream results are unchanged since its last success (the recorded fingerprint), and whose
outputs still exist, is skipped. A failure stops the pipeline and keeps what earlier stages made;
running again continues at the failed stage.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import time
from pathlib import Path
from typing import Any

from .. import __version__
from ..atomic import write_text
from ..errors import EXIT_INTERNAL, BadInput, CheckFailed, DlpipeError
from ..locks import lock
from .spec import REF, Pipeline, Stage, command_for, option_param, stage_argv

# Metrics shown in the summary table when a stage reports them (in this order).
SUMMARY_METRICS = (
    "held_out_acc", "fd_mobilenet_v2", "fd_mobilenet_v2_floor", "psnr_gain_db", "ssim",
    "parity_passed", "max_abs_error", "ort_speedup",
)  # fmt: skip


def _lookup(results: dict[str, Any], stage: str, dotted: str) -> Any:
    value: Any = results.get(stage)
    if value is None:
        raise BadInput(
            f"Stage {stage!r} has no recorded result to take `{dotted}` from.",
            hint=f"Run it first (drop --only/--from), e.g. `dlpipe run PIPELINE --only {stage}`.",
        )
    for part in dotted.strip(".").split("."):
        if not isinstance(value, dict) or part not in value:
            keys = ", ".join(value) if isinstance(value, dict) else type(value).__name__
            raise BadInput(f"${{{stage}{dotted}}}: the result has no {part!r} (it has: {keys}).")
        value = value[part]
    return value


def resolve(value: Any, results: dict[str, Any]) -> Any:
    """Replace `${stage.key}` references by values from earlier stages' results."""
    if not isinstance(value, str):
        return value
    whole = REF.fullmatch(value)
    if whole:
        return _lookup(results, whole.group(1), whole.group(2))
    return REF.sub(lambda m: str(_lookup(results, m.group(1), m.group(2))), value)


def build_argv(pipeline: Pipeline, stage: Stage, results: dict[str, Any]) -> list[str]:
    """The exact command line a stage runs (references resolved)."""
    cmd = command_for(stage.command)
    argv = stage_argv(stage, cmd, lambda raw: resolve(raw, results))
    given = {o.replace("_", "-") for o in stage.options}
    defaults = {
        "name": f"{pipeline.name}-{stage.name}",
        "exist-ok": True,
        "runs-dir": pipeline.runs_dir,
    }
    for option, value in defaults.items():
        if option not in given and value and option_param(cmd, option) is not None:
            argv += [f"--{option}"] if value is True else [f"--{option}", str(value)]
    if option_param(cmd, "json") is not None:
        argv.append("--json")
    return argv


def fingerprint(argv: list[str], upstream: list[str]) -> str:
    """What decides whether a stage must run again."""
    blob = json.dumps({"argv": argv, "upstream": upstream, "dlpipe": __version__})
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def invoke(argv: list[str]) -> tuple[int, dict[str, Any] | None]:
    """Run one dlpipe command in this process; return (exit code, its JSON result)."""
    import typer
    from typer.exceptions import TyperException

    from ..cli import app

    buf = io.StringIO()
    try:
        with contextlib.redirect_stdout(buf):
            code = typer.main.get_command(app).main(
                args=argv, standalone_mode=False, prog_name="dlpipe"
            )
    except TyperException as exc:  # bad usage: the same message the CLI would print
        from rich.console import Console

        Console(stderr=True).print(f"[bold red]error:[/] {exc.format_message()}")
        code = getattr(exc, "exit_code", 2)
    lines = [ln for ln in buf.getvalue().splitlines() if ln.startswith("{")]
    result = json.loads(lines[-1]) if lines else None
    return int(code or 0), result


def _outputs_exist(result: dict[str, Any] | None) -> bool:
    """A skipped stage's files must still be there (run folder, artifacts)."""
    if not result:
        return True
    paths = [result.get("run_dir"), result.get("out"), result.get("out_dir")]
    paths += list((result.get("artifacts") or {}).values())
    return all(Path(p).exists() for p in paths if isinstance(p, str) and p)


def state_dir(pipeline: Pipeline) -> Path:
    """Where a pipeline keeps its state.json and summary.json."""
    return Path(pipeline.runs_dir or "runs") / "pipelines" / pipeline.name


def _load_state(path: Path) -> dict[str, Any]:
    """The pipeline's state; junk there is refused (treating it as empty would re-run every stage
    and silently start trained stages over)."""
    if not path.exists():
        return {}
    try:
        state = json.loads(path.read_bytes())
    except (OSError, ValueError) as exc:
        state = exc
    if not isinstance(state, dict) or not all(isinstance(v, dict) for v in state.values()):
        raise BadInput(
            f"{path} is not a pipeline state file (truncated, damaged or not a JSON object of "
            "stages).",
            hint=f"Delete {path} to run every stage again (finished runs stay on disk).",
        )
    return state


def _selected(pipeline: Pipeline, only: str | None, start: str | None) -> list[Stage]:
    names = [s.name for s in pipeline.stages]
    if only:
        return [pipeline.stage(only)]
    if start:
        pipeline.stage(start)
        return pipeline.stages[names.index(start) :]
    return list(pipeline.stages)


def _metrics_of(result: dict[str, Any] | None) -> dict[str, Any]:
    metrics = (result or {}).get("metrics") or {}
    shown = {k: metrics[k] for k in SUMMARY_METRICS if k in metrics}
    return shown or {k: v for k, v in list(metrics.items())[:3] if isinstance(v, int | float)}


def _resume_args(stage: Stage, argv: list[str], last: dict[str, Any], fp: str) -> list[str]:
    """`--resume` for a training stage that was killed or Ctrl-C'd with the same command line and
    left a checkpoint: the re-run continues it instead of starting it again."""
    cut = last.get("status") == "running" or last.get("exit_code") in (
        130,
        143,
    )  # Ctrl-C or SIGTERM
    if not cut or last.get("fingerprint") != fp or "--resume" in argv:
        return []
    if option_param(command_for(stage.command), "resume") is None or "--name" not in argv:
        return []
    runs = argv[argv.index("--runs-dir") + 1] if "--runs-dir" in argv else "runs"
    run = Path(runs) / stage.command[0] / argv[argv.index("--name") + 1]
    return ["--resume"] if (run / "checkpoints" / "last.safetensors").exists() else []


def run_pipeline(
    pipeline: Pipeline,
    only: str | None = None,
    start: str | None = None,
    force: bool = False,
    dry_run: bool = False,
    echo: Any = print,
) -> dict[str, Any]:
    """Run (or plan, with dry_run) the selected stages; returns the summary written to summary.json."""
    folder = state_dir(pipeline)
    if not dry_run:
        lock(folder, "pipeline", "Pipeline state folder")  # one `dlpipe run` per pipeline
    state = _load_state(folder / "state.json")
    results = {name: s.get("result") for name, s in state.items() if s.get("status") == "ok"}
    fps = {name: s.get("fingerprint", "") for name, s in state.items()}
    rows: list[dict[str, Any]] = []
    for stage in _selected(pipeline, only, start):
        upstream = [fps.get(r, "") for r in sorted(stage.references())]
        try:
            argv = build_argv(pipeline, stage, results)
        except BadInput:
            if not dry_run:
                raise
            argv = stage_argv(stage, command_for(stage.command), lambda raw: raw)  # shows ${...}
        fp = fingerprint(argv, upstream)
        last = state.get(stage.name, {})
        up_to_date = (
            last.get("status") == "ok"
            and last.get("fingerprint") == fp
            and _outputs_exist(last.get("result"))
        )
        row = {"stage": stage.name, "command": "dlpipe " + " ".join(argv)}
        if up_to_date and not force:
            rows.append(
                {
                    **row,
                    "status": "skipped",
                    "seconds": 0.0,
                    "metrics": _metrics_of(last.get("result")),
                }
            )
            echo(f"[dim]skip[/] {stage.name}: up to date")
            continue
        if dry_run:
            rows.append({**row, "status": "would run", "seconds": 0.0, "metrics": {}})
            echo(f"[cyan]plan[/] {stage.name}: {row['command']}")
            continue
        resume = _resume_args(stage, argv, last, fp)
        echo(f"[bold]{'resume' if resume else 'run'}[/] {stage.name}: {row['command']}")
        state[stage.name] = {"status": "running", "fingerprint": fp}  # a kill leaves this behind
        write_text(folder / "state.json", json.dumps(state, indent=2) + "\n")
        started = time.perf_counter()
        code, result = invoke(argv + resume)
        seconds = round(time.perf_counter() - started, 1)
        status = "ok" if code == 0 else "failed"
        state[stage.name] = {
            "status": status,
            "fingerprint": fp,
            "result": result,
            "seconds": seconds,
            "exit_code": code,
        }
        fps[stage.name] = fp
        if code == 0:
            results[stage.name] = result
        write_text(folder / "state.json", json.dumps(state, indent=2) + "\n")
        rows.append({**row, "status": status, "seconds": seconds, "metrics": _metrics_of(result)})
        if code != 0:
            summary = _write_summary(folder, pipeline, rows)
            error_cls = CheckFailed if code == 1 else DlpipeError
            error = error_cls(
                f"Stage {stage.name!r} failed (exit code {code}); the pipeline stopped there and the outputs "
                f"of earlier stages are kept.",
                hint=f"Fix the cause shown above, then run `dlpipe run {pipeline.path}` again to continue from "
                f"{stage.name!r} (finished stages are skipped).",
            )
            error.exit_code = code if code in (1, 2, 3, EXIT_INTERNAL, 130, 143) else 1
            error.summary = summary  # type: ignore[attr-defined]
            raise error
    return _write_summary(folder, pipeline, rows, write=not dry_run)


def _write_summary(
    folder: Path, pipeline: Pipeline, rows: list[dict[str, Any]], write: bool = True
) -> dict[str, Any]:
    summary = {
        "pipeline": pipeline.name,
        "file": str(pipeline.path),
        "state_dir": str(folder),
        "stages": rows,
    }
    if write:
        write_text(folder / "summary.json", json.dumps(summary, indent=2) + "\n")
    return summary
