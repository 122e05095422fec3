"""`dlpipe eval`: accuracy, per-class accuracy and confusion matrix of a classifier on labeled data."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from .common import DataOpt, DataRootOpt, JsonOpt, Output, QuietOpt, StrictOpt, command


@command
def evaluate(
    model: Annotated[
        Path,
        typer.Argument(
            help="An .onnx file (scored by onnxruntime alone, no torch), a run folder or a "
            "checkpoint (scored by PyTorch)."
        ),
    ],
    data: DataOpt,
    split: Annotated[
        str,
        typer.Option(
            "--split",
            help="auto (the model's own held-out split when --data is its training data, a "
            "built-in set's official test set, else every image), all, test, val or train.",
        ),
    ] = "auto",
    limit: Annotated[
        int | None,
        typer.Option("--limit", min=1, help="Score at most N images, stratified by class."),
    ] = None,
    batch_size: Annotated[
        int, typer.Option("--batch-size", "-b", min=1, help="Images per forward pass.")
    ] = 64,
    provider: Annotated[
        str,
        typer.Option(
            "--provider", help=".onnx: cpu, cuda or tensorrt (must really run; no fallback)."
        ),
    ] = "cpu",
    device: Annotated[
        str, typer.Option("--device", help="Run folder / checkpoint: auto, cpu, cuda or cuda:N.")
    ] = "auto",
    out_dir: Annotated[
        Path | None,
        typer.Option(
            "--out", help="Folder for confusion.png and eval.json (default runs/eval/<model>)."
        ),
    ] = None,
    data_root: DataRootOpt = None,
    strict: StrictOpt = False,
    json: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Score a classifier on a labeled folder or built-in set: accuracy, per-class accuracy, top-5
    and a confusion matrix (confusion.png, eval.json). Classes are matched by name."""
    from ..export.evaluate import EvalConfig, print_summary
    from ..export.evaluate import evaluate as run_eval

    out = Output(json, quiet)
    cfg = EvalConfig(
        model=model, data=data, data_root=data_root, split=split, limit=limit,
        batch_size=batch_size, provider=provider, device=device, out=out_dir, strict=strict,
    )  # fmt: skip
    result = run_eval(cfg, out)
    for f in result["skipped"][:5]:
        out.warn(f"skipped {f['file']}: {f['reason']}")
    if len(result["skipped"]) > 5:
        out.warn(f"and {len(result['skipped']) - 5} more skipped (listed in eval.json)")
    print_summary(out, result)
    art = result["artifacts"]
    out.result(result, f"confusion matrix: {art['confusion_png']}; all figures: {art['eval_json']}")


def register(app: typer.Typer) -> None:
    """Add `dlpipe eval` to the root app."""
    app.command("eval")(evaluate)
