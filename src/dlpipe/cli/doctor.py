"""`dlpipe doctor`: what this machine has and what will (not) work."""

from __future__ import annotations

import typer

from .common import JsonOpt, Output, command


def _mark(ok: bool | None) -> str:
    return "[green]yes[/]" if ok else "[red]no[/]"


@command
def doctor(json: JsonOpt = False) -> None:
    """Report versions, CUDA, the onnxruntime providers and ONNX runtimes that REALLY run, conflicts, data and weights."""
    from rich.table import Table

    from ..doctor import collect
    from ..errors import EXIT_ENVIRONMENT

    out = Output(json)
    report = collect()
    table = Table(title="dlpipe doctor", show_header=True)
    table.add_column("check")
    table.add_column("value")
    for key in (
        "python",
        "dlpipe",
        "torch",
        "torchvision",
        "timm",
        "onnx",
        "onnxscript",
        "onnxruntime",
        "onnxruntime-gpu",
    ):
        table.add_row(key, report.get(key) or "[dim]not installed[/]")
    cuda = report["cuda"]
    cuda_text = f"{_mark(cuda['available'])}" + (
        f" ({cuda['device']})" if cuda.get("device") else ""
    )
    cuda_text += f", torch built for CUDA {cuda.get('torch_cuda_build') or '-'}"
    table.add_row("CUDA", cuda_text)
    dist = report.get("distributed")
    if dist:
        table.add_row(
            "torch.distributed",
            f"Gloo (CPU) {_mark(dist['gloo'])}, NCCL (GPU) {_mark(dist['nccl'])}; "
            "--nproc N / torchrun",
        )
    for p in report["providers"]:
        table.add_row(f"onnxruntime {p['provider']}", f"{_mark(p['runs'])} {p['detail']}")
    for r in report["runtimes"]:
        version = f" {r['version']}" if r["version"] else ""
        table.add_row(f"runtime {r['runtime']}{version}", f"{_mark(r['runs'])} {r['detail']}")
    conflict = report["onnxruntime_conflict"]
    table.add_row(
        "onnxruntime + onnxruntime-gpu",
        "[red]BOTH installed: one is silently broken; run make install (or install-gpu)[/]"
        if conflict
        else "ok (one build)",
    )
    shim = report.get("torchvision_shim", {})
    table.add_row(
        "torchvision CPU shim",
        f"{'active' if shim.get('active') else 'inactive'} ({shim.get('reason', '-')})",
    )
    for name, present in report["datasets"].items():
        table.add_row(f"data {name}", _mark(present))
    for w in report["weights"] or [{"model": "-", "file": "none found"}]:
        table.add_row(f"weights {w['model']}", w["file"])
    out.print(table)
    out.result(report)
    if conflict or not report.get("onnxruntime") and not report.get("onnxruntime-gpu"):
        raise typer.Exit(EXIT_ENVIRONMENT)


def register(app: typer.Typer) -> None:
    """Add the command to the root app."""
    app.command("doctor")(doctor)
