"""`dlpipe export|validate|predict|inspect`: ONNX files and proof of parity."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

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


RuntimesOpt = Annotated[
    str,
    typer.Option(
        "--runtimes",
        help="Runtimes to judge against PyTorch: a comma list of onnxruntime, openvino, tract, "
        "or all (every one installed). A runtime that is not installed exits 3.",
    ),
]
OpenvinoPrecisionOpt = Annotated[
    Literal["f32", "bf16", "auto"],
    typer.Option(
        "--openvino-precision",
        help="OpenVINO CPU inference precision: f32 (exact), bf16 (what AMX/AVX512-BF16 CPUs pick "
        "by default; judged with fp16 tolerances) or auto (the plugin's own choice).",
    ),
]


def _validated(out: Output, options: dict, extra: dict | None = None) -> None:
    """Run the validate stage and print its result, also when a check failed (then re-raise)."""
    from ..export.commands import ParityFailed, ParityUnavailable
    from ..stages import run_stage

    try:
        result = run_stage("validate", options, out)
    except (ParityFailed, ParityUnavailable) as exc:
        where = exc.result["parity"].get("artifacts", {}).get("parity_md", "")
        out.result({**(extra or {}), **exc.result}, f"parity report: {where}")
        raise
    where = result["parity"].get("artifacts", {}).get("parity_md", "")
    out.result({**(extra or {}), **result}, f"parity report: {where}")


@command
def export(
    ctx: typer.Context,
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
        int,
        typer.Option(
            "--opset",
            min=11,
            max=23,
            help="ONNX opset of the file (dynamo writes >= 18; below, auto uses TorchScript; "
            "the metadata states the file's real opset).",
        ),
    ] = 18,
    dynamic_batch: Annotated[
        bool,
        typer.Option(
            "--dynamic-batch/--static-batch",
            help="Symbolic batch axis (exported with an example batch of 2), or fixed batch 1.",
        ),
    ] = True,
    exporter: Annotated[
        Literal["auto", "dynamo", "torchscript"],
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
        Literal["full", "encoder", "decoder"],
        typer.Option("--part", help="Autoencoders: the whole model or one half."),
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
    from .stage import run_from_cli

    out = Output(json, quiet)
    payload = run_from_cli(ctx, "export", out)
    if not run_validate:
        where = payload["artifacts"].get("metadata")
        out.result(payload, f"wrote {payload['model']} (metadata: {where})")
        return
    out.print(f"wrote {payload['model']}; validating…")
    _validated(out, {"model": payload["model"]}, payload)


@command
def validate(
    ctx: typer.Context,
    model: ModelArg,
    against: Annotated[
        str | None,
        typer.Option(
            "--against",
            help="Run folder or checkpoint (default: the source recorded in the model).",
        ),
    ] = None,
    providers: ProvidersOpt = "auto",
    runtimes: RuntimesOpt = "onnxruntime",
    openvino_precision: OpenvinoPrecisionOpt = "f32",
    batch_sizes: Annotated[
        str,
        typer.Option(
            "--batch-sizes", help="Comma list; include sizes other than the export batch."
        ),
    ] = "1,3,8",
    inputs: Annotated[
        Literal["real", "random", "both"],
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
    """Check that an ONNX file computes what the PyTorch model computes, in every runtime and provider; exit 1 if not."""
    from .stage import given

    out = Output(json, quiet)
    options = {k: ctx.params[k] for k in given(ctx) - {"json", "quiet"}}
    _validated(out, {"model": model, **options})


@command
def predict(
    model: ModelArg,
    images: Annotated[list[Path], typer.Argument(help="Image files and/or folders of images.")],
    top_k: Annotated[
        int, typer.Option("--top-k", "-k", min=1, help="Classes listed per image.")
    ] = 5,
    provider: Annotated[
        Literal["cpu", "cuda", "tensorrt"],
        typer.Option(
            "--provider", help="cpu, cuda or tensorrt (must really run; no silent fallback)."
        ),
    ] = "cpu",
    out_dir: Annotated[
        Path, typer.Option("--out", help="Autoencoders: folder for reconstructions / latents.")
    ] = Path("predictions"),
    save_csv: Annotated[
        Path | None,
        typer.Option(
            "--save-csv",
            help="Also write FILE.csv: one row per input file (path, top-k classes and "
            "probabilities; skipped files with their reason in 'error').",
        ),
    ] = None,
    batch_size: Annotated[
        int, typer.Option("--batch-size", "-b", min=1, help="Images per onnxruntime call.")
    ] = 32,
    json: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Run an ONNX model on images with onnxruntime, Pillow and NumPy only (no torch): the deployed path."""
    from ..console import shown
    from ..export.predict import PredictConfig
    from ..export.predict import predict as run_predict

    out = Output(json, quiet)
    cfg = PredictConfig(model, list(images), top_k, provider, out_dir, batch_size, save_csv)
    result = run_predict(cfg, out)
    for f in result["skipped"]:
        out.warn(f"skipped {shown(f['file'])}: {shown(f['reason'])}")
    for row in result["predictions"]:
        if "top" in row:
            best = ", ".join(f"{shown(t['class'])} {t['probability']:.1%}" for t in row["top"])
            out.print(f"{shown(row['file'])}: {best}")
    where = f"{len(result['predictions'])} images on {result['provider']}"
    if result["kind"] == "autoencoder":
        where += f"; outputs written to {out_dir}/"
    if "csv" in result:
        where += f"; table in {result['csv']}"
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
