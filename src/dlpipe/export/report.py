"""The parity report on screen (rich table), as JSON and as Markdown beside the model."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..atomic import write_text


def write_reports(report: dict[str, Any], json_path: Path, md_path: Path) -> list[Path]:
    """Atomically write NAME.parity.json and NAME.parity.md."""
    write_text(json_path, json.dumps(report, indent=2, default=str) + "\n")
    write_text(md_path, to_markdown(report))
    return [json_path, md_path]


def _verdict(ok: bool) -> str:
    return "PASS" if ok else "FAIL"


def to_markdown(report: dict[str, Any]) -> str:
    """The report as a Markdown document."""
    tol = report["tolerance"]
    lines = [
        f"# Parity: {Path(report['model']).name} — {_verdict(report['passed'])}",
        "",
        f"- model: `{report['model']}` ({report['kind']}, part {report['part']}, {report['dtype']})",
        f"- reference: `{report['against']}` (PyTorch eager)",
        f"- tolerance: atol {tol['atol']}, rtol {tol['rtol']}, cosine >= {tol['min_cosine']}, "
        f"top-1 >= {tol['min_top1']}, PSNR >= {tol['min_psnr']} dB ({tol['source']})",
        *[
            f"- tolerance {tag}: atol {t['atol']}, rtol {t['rtol']}, cosine >= {t['min_cosine']} ({t['source']})"
            for tag, t in (report.get("tolerances") or {}).items()
            if t != tol
        ],
        *[f"- inputs {s['name']}: {s['note']}" for s in report["inputs"]],
        *[f"- note: {n}" for n in report.get("notes", [])],
        "",
        "| check | result | detail |",
        "| --- | --- | --- |",
    ]
    for row in report["checks"]:
        detail = row["detail"] + (f" — {row['explain']}" if "explain" in row else "")
        lines.append(f"| {row['check']} | {_verdict(row['ok'])} | {detail.replace('|', '/')} |")
    lines += _runtime_lines(report)
    if report.get("latency"):
        lines += [
            "",
            "| runtime | batch | ONNX median / p90 ms | torch eager median / p90 ms | speed-up |",
            "| --- | --- | --- | --- | --- |",
        ]
        for r in report["latency"]:
            o, t = r["onnx"], r["torch_eager"]
            lines.append(
                f"| {r['provider']} | {r['batch']} | {o['median_ms']:.2f} / {o['p90_ms']:.2f} | "
                f"{t['median_ms']:.2f} / {t['p90_ms']:.2f} ({t['device']}) | {r['speedup']:.2f}x |"
            )
    return "\n".join(lines) + "\n"


def _fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def runtime_rows(report: dict[str, Any]) -> list[list[str]]:
    """One row per runtime: verdict, worst max/mean error, top-1 agreement, latency by batch."""
    rows = []
    for name, r in (report.get("runtimes") or {}).items():
        lat = ", ".join(f"{k.split('_')[1]}: {v:.2f}" for k, v in r["latency_ms"].items())
        rows.append([
            f"{name} {r.get('version') or ''}".strip(), _verdict(r["passed"]),
            _fmt(r["max_abs_error"], ".3g"), _fmt(r["mean_abs_error"], ".3g"),
            _fmt(r["top1_agreement"], ".2%"), lat or "-",
        ])  # fmt: skip
    return rows


RUNTIME_COLUMNS = ("runtime", "result", "max error", "mean error", "top-1", "ms by batch")


def _runtime_lines(report: dict[str, Any]) -> list[str]:
    rows = runtime_rows(report)
    if not rows:
        return []
    lines = ["", "| " + " | ".join(RUNTIME_COLUMNS) + " |", "|" + " --- |" * len(RUNTIME_COLUMNS)]
    return lines + ["| " + " | ".join(r) + " |" for r in rows]


def print_table(out: Any, report: dict[str, Any]) -> None:
    """The checks (and latency) as rich tables on the command's human output."""
    from rich.markup import escape
    from rich.table import Table

    table = Table(title=f"parity of {Path(report['model']).name} vs PyTorch", show_lines=False)
    for col in ("check", "result", "detail"):
        table.add_column(col, overflow="fold")
    for row in report["checks"]:
        mark = "[green]PASS[/]" if row["ok"] else "[bold red]FAIL[/]"
        table.add_row(escape(row["check"]), mark, escape(row["detail"]))
    out.print(table)
    for row in report["checks"]:
        if not row["ok"] and "explain" in row:
            out.print(f"[red]{escape(row['check'])}[/]: {escape(row['explain'])}")
    rows = runtime_rows(report)
    if len(rows) > 1:
        summary = Table(title="runtimes")
        for col in RUNTIME_COLUMNS:
            summary.add_column(col)
        for r in rows:
            summary.add_row(*r)
        out.print(summary)
    if report.get("latency"):
        lat = Table(title="latency (median / p90 ms)")
        for col in ("runtime", "batch", "ONNX", "torch eager", "speed-up"):
            lat.add_column(col)
        for r in report["latency"]:
            o, t = r["onnx"], r["torch_eager"]
            lat.add_row(
                r["provider"].replace("ExecutionProvider", ""),
                str(r["batch"]),
                f"{o['median_ms']:.2f} / {o['p90_ms']:.2f}",
                f"{t['median_ms']:.2f} / {t['p90_ms']:.2f}",
                f"{r['speedup']:.2f}x",
            )
        out.print(lat)
