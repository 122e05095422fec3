"""The export-side stages as the registry calls them: (config, reporter) -> the --json dict.

Each wraps one library function (export_checkpoint, validate_stage, predict, sample_grid) with
what a person should see on the way (exporter notes, the parity table, skipped files).
"""

from __future__ import annotations

from typing import Any

from ..errors import CheckFailed, EnvironmentProblem


def export_stage(cfg: Any, out: Any) -> dict[str, Any]:
    """Export a checkpoint (an ExportConfig); returns {model, artifacts, exporter, precision}."""
    from .onnx import export_checkpoint

    result = export_checkpoint(cfg)
    info = result["exporter"]
    out.print(
        f"exporter: {info['used']}"
        + (f" (fallback: {info['fallback_reason']})" if "fallback_reason" in info else "")
    )
    for line in result["precision"].get("notes", []):
        out.print(line)
    return {
        "model": result["model"],
        "artifacts": result["artifacts"],
        "exporter": info,
        "precision": result["precision"],
    }


def parity_metrics(report: dict[str, Any]) -> dict[str, Any]:
    """The headline figures of a parity report (pipeline summaries, --json consumers)."""
    errors = [
        c["stats"]["max_abs"]
        for c in report["checks"]
        if c.get("stats", {}).get("max_abs") is not None
    ]
    speedups = [
        r["speedup"]
        for r in report.get("latency", [])
        if r.get("speedup") and r.get("runtime", "onnxruntime") == "onnxruntime"
    ]
    metrics: dict[str, Any] = {"parity_passed": bool(report["passed"])}
    if errors:
        metrics["max_abs_error"] = max(errors)
    if speedups:
        metrics["ort_speedup"] = speedups[-1]  # the largest batch measured
    if report.get("runtimes"):
        metrics["runtimes"] = report["runtimes"]
    return metrics


class ParityFailed(CheckFailed):
    """Parity outside tolerance; `result` holds the whole report dict (exit code 1)."""

    result: dict[str, Any]


class ParityUnavailable(EnvironmentProblem):
    """Every check that could run passed, but a provider or runtime is not available here
    (exit code 3); `result` holds the report dict."""

    result: dict[str, Any]


def validate_stage(cfg: Any, out: Any) -> dict[str, Any]:
    """Validate an ONNX file (a ValidateConfig): print the table, return {metrics, parity}. A
    failed check raises ParityFailed, a check this machine cannot run ParityUnavailable; both
    carry the result dict as `.result`."""
    from .parity import validate_stage as run_checks
    from .report import print_table

    report = run_checks(cfg)
    print_table(out, report)
    result = {"metrics": parity_metrics(report), "parity": report}
    if report["passed"]:
        return result
    where = report.get("artifacts", {}).get("parity_md", "")
    failed = [r for r in report["checks"] if not r["ok"]]
    names = ", ".join(r["check"] for r in failed)
    if all(r.get("unavailable") for r in failed):  # this machine, not the file: exit 3
        error: ParityFailed | ParityUnavailable = ParityUnavailable(
            f"Not available here: {names} "
            f"({'; '.join(r['detail'].rstrip('.') for r in failed)}). "
            "Every check that could run passed.",
            hint=" ".join(dict.fromkeys(r.get("advice", "") for r in failed))
            + f" Report: {where}.",
        )
    else:
        error = ParityFailed(
            f"Parity FAILED for {report['model']}: {names}.",
            hint=f"The explanation of each failed check is above and in {where}.",
        )
    error.result = result
    raise error


def predict_stage(cfg: Any, out: Any) -> dict[str, Any]:
    """Run an ONNX model on images (a PredictConfig) with onnxruntime alone; warn on skipped files."""
    from .predict import predict

    result = predict(cfg)
    for f in result["skipped"]:
        out.warn(f"skipped {f['file']}: {f['reason']}")
    return result


def sample_stage(cfg: Any, out: Any) -> dict[str, Any]:
    """A sample grid from a generator (a SampleConfig); returns {artifacts, out, images, ...}."""
    from .sample import sample_grid

    info = sample_grid(cfg.model, cfg.num, cfg.out, seed=cfg.seed, interpolate=cfg.interpolate)
    return {"artifacts": {"grid": info["out"]}, **info}
