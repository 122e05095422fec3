"""Run a pipeline's stages in order through the stage registry, skipping what is up to date.

Each stage is looked up in dlpipe.stages and called in this process with its config; its result
dict (what `--json` prints) is what later stages reference as `${stage.key.subkey}`. A stage whose
resolved options and upstream results are unchanged since its last success (the recorded
fingerprint), and whose outputs still exist, is skipped. A failure stops the pipeline and keeps what
earlier stages made; running again continues at the failed stage.
"""

from __future__ import annotations

import hashlib
import json
import signal
import time
from pathlib import Path
from typing import Any

from .._version import __version__
from ..atomic import write_text
from ..console import json_safe
from ..errors import EXIT_INTERNAL, BadInput, CheckFailed, DlpipeError
from ..locks import lock
from ..runs import RunDir
from .spec import REF, Pipeline, Stage, command_line, stage_def, stage_options

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


def build_options(pipeline: Pipeline, stage: Stage, results: dict[str, Any]) -> dict[str, Any]:
    """The exact options a stage runs with (references resolved; a training stage's run folder
    defaults to RUNS_DIR/<command>/<pipeline>-<stage>, reused on re-runs)."""
    spec = stage_def(stage.command)
    options = stage_options(stage, spec, lambda raw: resolve(raw, results))
    if spec.trains:
        options.setdefault("name", f"{pipeline.name}-{stage.name}")
        options.setdefault("exist_ok", True)
        if pipeline.runs_dir:
            options.setdefault("runs_dir", pipeline.runs_dir)
    return options


def fingerprint(command: list[str], options: dict[str, Any], upstream: list[str]) -> str:
    """What decides whether a stage must run again."""
    blob = json.dumps(
        {"command": command, "options": options, "upstream": upstream, "dlpipe": __version__},
        sort_keys=True,
        default=str,
    )
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def invoke(stage: Stage, options: dict[str, Any], out: Any) -> dict[str, Any]:
    """Run one stage in this process through the registry; its result as plain JSON data."""
    from ..stages import run_stage

    result = run_stage(stage.command, options, out, explicit=set(stage.options))
    # strict JSON for state.json and summary.json: NaN as null, as --json prints it
    return json.loads(json.dumps(json_safe(result), default=str))


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


def _resume(stage: Stage, options: dict[str, Any], last: dict[str, Any], fp: str) -> bool:
    """Whether a training stage that was killed or Ctrl-C'd with the same options, and left a
    checkpoint, should continue (`resume`) instead of starting again."""
    cut = last.get("status") == "running" or last.get("exit_code") in (130, 143)  # Ctrl-C, SIGTERM
    spec = stage_def(stage.command)
    if not cut or last.get("fingerprint") != fp or options.get("resume") or not spec.trains:
        return False
    run = RunDir.of(spec.run_folder, options["name"], options.get("runs_dir", "runs"))
    return run.checkpoint("last").exists()


def run_pipeline(
    pipeline: Pipeline,
    only: str | None = None,
    start: str | None = None,
    force: bool = False,
    dry_run: bool = False,
    echo: Any = print,
    out: Any = None,
) -> dict[str, Any]:
    """Run (or plan, with dry_run) the selected stages; returns the summary written to summary.json.

    `echo` prints the plan lines; `out` is the Reporter the stages talk through (quiet if None)."""
    folder = state_dir(pipeline)
    if not dry_run:
        lock(folder, "pipeline", "Pipeline state folder")  # one `dlpipe run` per pipeline
    state = _load_state(folder / "state.json")
    results = {name: s.get("result") for name, s in state.items() if s.get("status") == "ok"}
    fps = {name: s.get("fingerprint", "") for name, s in state.items()}
    rows: list[dict[str, Any]] = []
    for stage in _selected(pipeline, only, start):
        upstream = [fps.get(r, "") for r in sorted(stage.references())]
        spec = stage_def(stage.command)
        try:
            options = build_options(pipeline, stage, results)
            shown = command_line(stage, spec, lambda raw: resolve(raw, results))
        except BadInput:
            if not dry_run:
                raise
            options, shown = {}, command_line(stage, spec, lambda raw: raw)  # shows ${...}
        fp = fingerprint(stage.command, options, upstream)
        last = state.get(stage.name, {})
        row = {"stage": stage.name, "command": "dlpipe " + shown}
        if _up_to_date(last, fp) and not force:
            metrics = _metrics_of(last.get("result"))
            rows.append({**row, "status": "skipped", "seconds": 0.0, "metrics": metrics})
            echo(f"[dim]skip[/] {stage.name}: up to date")
        elif dry_run:
            rows.append({**row, "status": "would run", "seconds": 0.0, "metrics": {}})
            echo(f"[cyan]plan[/] {stage.name}: {row['command']}")
        else:
            if _resume(stage, options, last, fp):
                options["resume"] = True
            echo(f"[bold]{'resume' if options.get('resume') else 'run'}[/] {stage.name}: {shown}")
            record = _run_one(stage, options, fp, state, folder, out)
            fps[stage.name] = fp
            rows.append({**row, **record})
            if record["status"] == "ok":
                results[stage.name] = state[stage.name]["result"]
            else:
                _stop(pipeline, stage, folder, rows, state[stage.name])
    return _write_summary(folder, pipeline, rows, write=not dry_run)


def _up_to_date(last: dict[str, Any], fp: str) -> bool:
    return (
        last.get("status") == "ok"
        and last.get("fingerprint") == fp
        and _outputs_exist(last.get("result"))
    )


def _run_one(
    stage: Stage, options: dict[str, Any], fp: str, state: dict, folder: Path, out: Any
) -> dict[str, Any]:
    """Run a stage, recording `running` first (a kill leaves that behind) and its outcome after;
    returns the summary row's status, seconds and metrics."""
    save = lambda: write_text(folder / "state.json", json.dumps(state, indent=2) + "\n")  # noqa: E731
    state[stage.name] = {"status": "running", "fingerprint": fp}
    save()
    started = time.perf_counter()
    result, code, error = None, 0, None
    try:
        result = invoke(stage, options, out)
    except DlpipeError as exc:
        code, error = exc.exit_code, exc.paragraph()
    except KeyboardInterrupt:  # Ctrl-C (130) or SIGTERM (143): the next run resumes the stage
        from ..train.interrupt import stopped_by

        code = 143 if stopped_by() == signal.SIGTERM else 130
        state[stage.name] = {"status": "failed", "fingerprint": fp, "exit_code": code}
        save()
        raise
    seconds = round(time.perf_counter() - started, 1)
    status = "ok" if code == 0 else "failed"
    state[stage.name] = {"status": status, "fingerprint": fp, "result": result,
                         "seconds": seconds, "exit_code": code, "error": error}  # fmt: skip
    save()
    return {"status": status, "seconds": seconds, "metrics": _metrics_of(result)}


def _stop(pipeline: Pipeline, stage: Stage, folder: Path, rows: list, record: dict) -> None:
    """A stage failed: write the summary and raise one paragraph with the stage's own error."""
    code = record["exit_code"]
    summary = _write_summary(folder, pipeline, rows)
    error = (CheckFailed if code == 1 else DlpipeError)(
        f"Stage {stage.name!r} failed (exit code {code}): {record['error']} The pipeline stopped "
        "there and the outputs of earlier stages are kept.",
        hint=f"Fix the cause, then run `dlpipe run {pipeline.path}` again to continue from "
        f"{stage.name!r} (finished stages are skipped).",
    )
    error.exit_code = code if code in (1, 2, 3, EXIT_INTERNAL, 130, 143) else 1
    error.summary = summary  # type: ignore[attr-defined]
    raise error


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
