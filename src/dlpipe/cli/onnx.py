"""`dlpipe export|validate|predict|inspect`: ONNX files and proof of parity."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from .common import JsonOpt, Output, QuietOpt, command

ModelArg = Annotated[Path, typer.Argument(help="An .onnx file written by `dlpipe export`.")]
ProvidersOpt = Annotated[
    str,
    typer.Option(
        "--providers",
        help="auto (every provider that really runs here) or a comma list: cpu,cuda,tensorrt. "
        "A provider that falls back to another FAILS with onnxruntime's reason.",
    ),
]


def _sizes(text: str) -> list[int]:
    from ..errors import BadInput

    try:
        return [int(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise BadInput(
            f"--batch-sizes {text!r} is not a comma list of integers.", hint="e.g. 1,3,8"
        ) from None


def parity_metrics(report: dict) -> dict:
    """The headline figures of a parity report (pipeline summaries, --json consumers)."""
    errors = [
        c["stats"]["max_abs"]
        for c in report["checks"]
        if c.get("stats", {}).get("max_abs") is not None
    ]
    speedups = [r["speedup"] for r in report.get("latency", []) if r.get("speedup")]
    metrics = {"parity_passed": bool(report["passed"])}
    if errors:
        metrics["max_abs_error"] = max(errors)
    if speedups:
        metrics["ort_speedup"] = speedups[-1]  # the largest batch measured
    return metrics


def _finish_validation(out: Output, report: dict, extra: dict | None = None) -> None:
    from ..errors import CheckFailed
    from ..export.report import print_table

    print_table(out, report)
    where = report.get("artifacts", {}).get("parity_md", "")
    out.result(
        {**(extra or {}), "metrics": parity_metrics(report), "parity": report},
        f"parity report: {where}",
    )
    if not report["passed"]:
        failed = [r["check"] for r in report["checks"] if not r["ok"]]
        raise CheckFailed(
            f"Parity FAILED for {report['model']}: {', '.join(failed)}.",
            hint=f"The explanation of each failed check is above and in {where}.",
        )


@command
def export(
    source: Annotated[
        str,
        typer.Argument(
            help="A run folder (its best, else last checkpoint) or a checkpoint .safetensors."
        ),
    ],
    out_path: Annotated[
        Path | None,
        typer.Option("--out", "-o", help="Output .onnx (default exports/<run>[-part].onnx)."),
    ] = None,
    opset: Annotated[
        int, typer.Option("--opset", min=11, max=23, help="ONNX opset (dynamo needs >= 18).")
    ] = 18,
    dynamic_batch: Annotated[
        bool,
        typer.Option(
            "--dynamic-batch/--static-batch",
            help="Symbolic batch axis (exported with an example batch of 2), or fixed batch 1.",
        ),
    ] = True,
    exporter: Annotated[
        str,
        typer.Option(
            "--exporter",
            help="auto (dynamo, falls back to torchscript and records why), dynamo or torchscript.",
        ),
    ] = "auto",
    external_data: Annotated[
        bool,
        typer.Option(
            "--external-data/--single-file",
            help="Weights in NAME.onnx.data beside the model, or inside it (< 2 GB).",
        ),
    ] = False,
    simplify: Annotated[
        bool, typer.Option("--simplify", help="Simplify the graph with onnxslim.")
    ] = False,
    fp16: Annotated[
        bool,
        typer.Option(
            "--fp16", help="float16 model, float32 I/O; nodes that would overflow stay float32."
        ),
    ] = False,
    int8: Annotated[
        bool,
        typer.Option(
            "--int8", help="Static int8 (QDQ) quantization calibrated on real images (classifiers)."
        ),
    ] = False,
    calib_data: Annotated[
        str | None,
        typer.Option(
            "--calib-data",
            help="Calibration images for --int8 (default: the run's own training data).",
        ),
    ] = None,
    part: Annotated[
        str, typer.Option("--part", help="Autoencoders: full, encoder or decoder.")
    ] = "full",
    with_preprocess: Annotated[
        bool,
        typer.Option(
            "--with-preprocess",
            help="Classifiers: normalisation in the graph; input 'pixels' = resized 0-255 values.",
        ),
    ] = False,
    softmax: Annotated[
        bool,
        typer.Option("--softmax", help="Classifiers: output 'probabilities' instead of logits."),
    ] = False,
    run_validate: Annotated[
        bool, typer.Option("--validate", help="Run `dlpipe validate` right after the export.")
    ] = False,
    force: Annotated[
        bool, typer.Option("--force", help="Overwrite an existing output file.")
    ] = False,
    json: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Export a trained model to ONNX with its preprocessing and class names in the file's metadata."""
    from ..export.onnx import ExportConfig, export_checkpoint

    out = Output(json, quiet)
    cfg = ExportConfig(
        source=source, out=out_path, opset=opset, dynamic_batch=dynamic_batch, exporter=exporter,
        external_data=external_data, simplify=simplify, part=part, with_preprocess=with_preprocess,
        softmax=softmax, fp16=fp16, int8=int8, calib_data=calib_data, force=force,
    )  # fmt: skip
    result = export_checkpoint(cfg)
    info = result["exporter"]
    out.print(
        f"exporter: {info['used']}"
        + (f" (fallback: {info['fallback_reason']})" if "fallback_reason" in info else "")
    )
    for line in result["precision"].get("notes", []):
        out.print(line)
    payload = {
        "model": result["model"],
        "artifacts": result["artifacts"],
        "exporter": info,
        "precision": result["precision"],
    }
    if not run_validate:
        out.result(
            payload, f"wrote {result['model']} (metadata: {result['artifacts']['metadata']})"
        )
        return
    from ..export.parity import ValidateConfig, validate_stage

    out.print(f"wrote {result['model']}; validating…")
    report = validate_stage(ValidateConfig(Path(result["model"])))
    _finish_validation(out, report, payload)


@command
def validate(
    model: ModelArg,
    against: Annotated[
        str | None,
        typer.Option(
            "--against",
            help="Run folder or checkpoint (default: the source recorded in the model).",
        ),
    ] = None,
    providers: ProvidersOpt = "auto",
    batch_sizes: Annotated[
        str,
        typer.Option(
            "--batch-sizes", help="Comma list; include sizes other than the export batch."
        ),
    ] = "1,3,8",
    inputs: Annotated[
        str,
        typer.Option(
            "--inputs", help="real (held-out data via the stored preprocessing), random, or both."
        ),
    ] = "both",
    n: Annotated[int, typer.Option("--n", min=1, help="Inputs per set.")] = 64,
    atol: Annotated[
        float | None, typer.Option("--atol", help="Absolute tolerance (default: the dtype preset).")
    ] = None,
    rtol: Annotated[
        float | None, typer.Option("--rtol", help="Relative tolerance (default: the dtype preset).")
    ] = None,
    latency_runs: Annotated[
        int,
        typer.Option(
            "--latency-runs", min=0, help="Timed runs per provider and batch (0: skip latency)."
        ),
    ] = 20,
    json: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Check that an ONNX file computes what the PyTorch model computes, on every provider; exit 1 if not."""
    from ..export.parity import ValidateConfig, validate_stage

    out = Output(json, quiet)
    cfg = ValidateConfig(
        model=model, against=against, providers=providers, batch_sizes=_sizes(batch_sizes),
        inputs=inputs, n=n, atol=atol, rtol=rtol, latency_runs=latency_runs,
    )  # fmt: skip
    _finish_validation(out, validate_stage(cfg))


@command
def predict(
    model: ModelArg,
    images: Annotated[list[Path], typer.Argument(help="Image files and/or folders of images.")],
    top_k: Annotated[
        int, typer.Option("--top-k", "-k", min=1, help="Classes listed per image.")
    ] = 5,
    provider: Annotated[
        str,
        typer.Option(
            "--provider", help="cpu, cuda or tensorrt (must really run; no silent fallback)."
        ),
    ] = "cpu",
    out_dir: Annotated[
        Path, typer.Option("--out", help="Autoencoders: folder for reconstructions / latents.")
    ] = Path("predictions"),
    json: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Run an ONNX model on images with onnxruntime, Pillow and NumPy only (no torch): the deployed path."""
    from ..console import shown
    from ..export.predict import PredictConfig
    from ..export.predict import predict as run_predict

    out = Output(json, quiet)
    cfg = PredictConfig(model, list(images), top_k, provider, out_dir)
    result = run_predict(cfg)
    for f in result["skipped"]:
        out.warn(f"skipped {shown(f['file'])}: {shown(f['reason'])}")
    for row in result["predictions"]:
        if "top" in row:
            best = ", ".join(f"{shown(t['class'])} {t['probability']:.1%}" for t in row["top"])
            out.print(f"{shown(row['file'])}: {best}")
    where = f"{len(result['predictions'])} images on {result['provider']}"
    if result["kind"] == "autoencoder":
        where += f"; outputs written to {out_dir}/"
    out.result(result, where)


@command
def inspect(model: ModelArg, json: JsonOpt = False) -> None:
    """Show an ONNX file's metadata, inputs, outputs, opset, size and operator histogram."""
    from ..export.inspect import inspect_model, print_inspection

    out = Output(json)
    info = inspect_model(model)
    if not json:
        print_inspection(out, info)
    out.result(info)


def register(app: typer.Typer) -> None:
    """Add the commands to the root app."""
    for fn in (export, validate, predict, inspect):
        app.command(fn.__name__)(fn)
