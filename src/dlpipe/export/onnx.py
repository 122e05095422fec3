"""`dlpipe export`: a checkpoint -> an ONNX file that describes itself, written atomically."""

from __future__ import annotations

import contextlib
import io
import json
import logging
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..atomic import write_text
from ..console import json_safe
from ..errors import BadInput
from . import files, metadata
from .spec import IOSpec, build_exportable, input_shape, io_spec, resolve_checkpoint

EXPORTERS = ("auto", "dynamo", "torchscript")
EXPORTS_DIR = Path("exports")


@dataclass
class ExportConfig:
    """Options of `dlpipe export` (the pipeline runner builds the same dataclass from YAML)."""

    source: str  # run folder (its best, else last checkpoint) or a checkpoint .safetensors
    out: Path | None = None  # default exports/<run name>[-<part>][-fp16|-int8].onnx
    opset: int = 18  # ONNX opset; the dynamo exporter needs >= 18, TorchScript works 11-20
    dynamic_batch: bool = True  # batch axis symbolic ("batch"); static = the example batch of 1
    exporter: str = "auto"  # auto (fastest correct one, falls back), dynamo, torchscript
    external_data: bool = False  # weights in NAME.onnx.data beside the model (needed > 2 GB)
    simplify: bool = False  # onnxslim graph simplification (constant folding, fusions)
    part: str = "full"  # autoencoders: full, encoder or decoder
    with_preprocess: bool = False  # classifiers: input is 0-255 pixels, normalisation in-graph
    softmax: bool = False  # classifiers: output probabilities instead of logits
    fp16: bool = False  # float16 weights/compute, float32 I/O kept (mixed where it would overflow)
    int8: bool = False  # static QDQ int8 quantization calibrated on real images (CNN classifiers)
    calib_data: str | None = None  # data source for int8 calibration (default: the run's data)
    calib_n: int = 64  # calibration images for int8 (32-512 is typical)
    force: bool = False  # overwrite an existing file
    example_batch: int = 2  # batch of the export example; >= 2 keeps the batch axis dynamic


def default_out(ckpt_path: Path, cfg: ExportConfig) -> Path:
    """exports/<run name>[-part][-fp16|-int8].onnx; the run name is the checkpoint's run folder."""
    run = ckpt_path.parent.parent.name if ckpt_path.parent.name == "checkpoints" else ckpt_path.stem
    suffix = "" if cfg.part == "full" else f"-{cfg.part}"
    suffix += "-fp16" if cfg.fp16 else "-int8" if cfg.int8 else ""
    return EXPORTS_DIR / f"{run or 'model'}{suffix}.onnx"


def export_checkpoint(cfg: ExportConfig) -> dict[str, Any]:
    """Export the checkpoint cfg.source names; returns the result dict (paths, metadata)."""
    from ..checkpoint import file_sha256, load_checkpoint

    _check_options(cfg)
    ckpt_path = resolve_checkpoint(cfg.source)
    out = Path(cfg.out) if cfg.out else default_out(ckpt_path, cfg)
    if out.suffix != ".onnx":
        raise BadInput(f"--out {out} must end in .onnx.", hint="e.g. --out exports/model.onnx")
    files.refuse_overwrite(files.require_utf8(out), cfg.force)
    ckpt = load_checkpoint(ckpt_path)
    spec = io_spec(ckpt.meta, cfg.part, cfg.with_preprocess, cfg.softmax)
    model = build_exportable(ckpt, cfg.part, cfg.with_preprocess, cfg.softmax)
    shape = input_shape(ckpt.meta, spec)
    proto, exporter = to_proto(model, shape, spec, cfg)
    if cfg.simplify:
        proto = _simplify(proto)
    meta = describe(ckpt.meta, spec, shape, cfg, exporter)
    meta["source"] = {"checkpoint": str(ckpt_path.resolve()), "sha256": file_sha256(ckpt_path)}
    precision: dict[str, Any] = {}
    if cfg.fp16 or cfg.int8:
        from .quantize import reduce_precision

        proto, precision = reduce_precision(proto, ckpt, spec, shape, cfg)
        meta["precision"] = precision
    meta["opset"] = opset_of(proto)  # the file's real opset, whatever was asked
    meta = json_safe(meta)  # portable JSON for other runtimes: a non-UTF-8 path as `R\\xff`
    metadata.set_props(proto, meta)
    written = files.save_model(proto, out, cfg.external_data, check=files.full_check)
    sidecar = write_text(out.with_suffix(".json"), json.dumps(meta, indent=2, sort_keys=True))
    return {
        "model": str(out),
        "artifacts": {"onnx": str(out), "metadata": str(sidecar), **_data_artifact(written)},
        "exporter": exporter,
        "meta": meta,
        "precision": precision,
    }


def _data_artifact(written: list[Path]) -> dict[str, str]:
    return {"external_data": str(written[1])} if len(written) > 1 else {}


def _check_options(cfg: ExportConfig) -> None:
    if cfg.exporter not in EXPORTERS:
        raise BadInput(
            f"--exporter {cfg.exporter!r} is unknown.", hint="Use auto, dynamo or torchscript."
        )
    if cfg.fp16 and cfg.int8:
        raise BadInput("--fp16 and --int8 exclude each other.", hint="Pick one precision.")
    if cfg.example_batch < 2 and cfg.dynamic_batch:
        raise BadInput("A dynamic batch needs an example batch >= 2.", hint="Use 2 (default).")


def describe(
    ckpt_meta: dict[str, Any],
    spec: IOSpec,
    shape: tuple[int, ...],
    cfg: ExportConfig,
    exporter: dict[str, Any],
) -> dict[str, Any]:
    """The metadata dict stored in the ONNX file and its JSON sidecar."""
    batch: int | str = "batch" if cfg.dynamic_batch else 1
    pre = dict(ckpt_meta.get("preprocess") or {})
    if cfg.with_preprocess:
        pre["in_graph"] = True  # the graph normalises; feed resized 0-255 pixels as float32
    return {
        "format": metadata.FORMAT,
        "kind": ckpt_meta.get("kind"),
        "part": cfg.part,
        "command": ckpt_meta.get("command"),
        "class_names": list(ckpt_meta.get("class_names") or []),
        "preprocess": pre,
        "input": {
            "name": spec.input,
            "kind": spec.input_kind,
            "shape": [batch, *shape],
            "dtype": "float32",
        },
        "output": {"name": spec.output, "kind": spec.output_kind},
        "layout": "NCHW" if len(shape) == 3 else "ND",
        "latent_size": shape[0] if spec.input_kind == "latent" else None,
        "arch": ckpt_meta.get("arch"),
        "data": ckpt_meta.get("data"),
        "dtype": "fp16" if cfg.fp16 else "int8" if cfg.int8 else "fp32",
        "opset": cfg.opset,  # replaced by the file's real opset once written
        "exporter": exporter,
        "versions": metadata.versions(),
    }


@contextlib.contextmanager
def _quiet():  # noqa: ANN202 - the exporters print progress on stdout; --json needs it clean
    """No exporter chatter: stdout progress, warnings, and logged tracebacks (onnxscript logs a
    failed version conversion with a full traceback, then carries on)."""
    sink = io.StringIO()
    before = logging.root.manager.disable
    logging.disable(logging.CRITICAL)
    try:
        with contextlib.redirect_stdout(sink), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield sink
    finally:
        logging.disable(before)


def opset_of(proto: Any) -> int:
    """The default-domain opset a model really imports."""
    return next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), 0)


DYNAMO_MIN_OPSET = 18  # torch.onnx's dynamo exporter writes opset 18+; below, its conversion fails


def to_proto(
    model: Any, shape: tuple[int, ...], spec: IOSpec, cfg: ExportConfig
) -> tuple[Any, dict[str, Any]]:
    """Export with the requested exporter; `auto` tries the preferred one and falls back."""
    import torch

    batch = cfg.example_batch if cfg.dynamic_batch else 1
    gen = torch.Generator().manual_seed(0)
    example = torch.randn(batch, *shape, generator=gen)
    if spec.input_kind == "pixels":
        example = torch.rand(batch, *shape, generator=gen) * 255.0
    order = ["dynamo", "torchscript"] if cfg.exporter == "auto" else [cfg.exporter]
    errors: dict[str, str] = {}
    if cfg.exporter == "auto" and cfg.opset < DYNAMO_MIN_OPSET:
        order = ["torchscript"]
        errors["dynamo"] = f"writes opset >= {DYNAMO_MIN_OPSET} only; opset {cfg.opset} was asked"
    for name in order:
        try:
            with _quiet(), torch.no_grad():
                proto = _EXPORT[name](model, example, spec, cfg)
            _require_dynamic(proto, cfg)
            _require_opset(proto, cfg)
            info: dict[str, Any] = {"used": name, "requested": cfg.exporter}
            if errors:
                info["fallback_reason"] = errors
            return proto, info
        except Exception as exc:  # any exporter failure: record it, try the next one
            errors[name] = f"{type(exc).__name__}: {str(exc).strip().splitlines()[0][:300]}"
    detail = "; ".join(f"{k}: {v}" for k, v in errors.items())
    hint = "Try the other --exporter, another --opset, or --static-batch."
    if cfg.opset < DYNAMO_MIN_OPSET and cfg.exporter == "dynamo":
        hint = f"The dynamo exporter writes opset >= {DYNAMO_MIN_OPSET}: use --exporter torchscript (or auto) for opset {cfg.opset}."
    raise BadInput(f"Export failed ({detail}).", hint=hint)


def _dynamo(model: Any, example: Any, spec: IOSpec, cfg: ExportConfig) -> Any:
    import torch

    dyn = ({0: torch.export.Dim("batch", min=1, max=4096)},) if cfg.dynamic_batch else None
    program = torch.onnx.export(
        model,
        (example,),
        None,
        dynamo=True,
        input_names=[spec.input],
        output_names=[spec.output],
        dynamic_shapes=dyn,
        opset_version=cfg.opset,
        optimize=True,
        verbose=False,
    )
    return program.model_proto


def _torchscript(model: Any, example: Any, spec: IOSpec, cfg: ExportConfig) -> Any:
    import onnx
    import torch

    buf = io.BytesIO()
    axes = {spec.input: {0: "batch"}, spec.output: {0: "batch"}} if cfg.dynamic_batch else None
    torch.onnx.export(
        model,
        (example,),
        buf,
        dynamo=False,
        input_names=[spec.input],
        output_names=[spec.output],
        dynamic_axes=axes,
        opset_version=cfg.opset,
        do_constant_folding=True,
    )
    return onnx.load_from_string(buf.getvalue())


_EXPORT = {"dynamo": _dynamo, "torchscript": _torchscript}


def _require_dynamic(proto: Any, cfg: ExportConfig) -> None:
    """A dynamic-batch export whose batch axis came out fixed is a failed export, not a success."""
    if not cfg.dynamic_batch:
        return
    dim = proto.graph.input[0].type.tensor_type.shape.dim[0]
    if not dim.dim_param:
        raise RuntimeError(f"batch axis came out static ({dim.dim_value})")


def _require_opset(proto: Any, cfg: ExportConfig) -> None:
    """An exporter that silently wrote another opset than asked failed (dynamo does, below 18)."""
    real = opset_of(proto)
    if real != cfg.opset:
        raise RuntimeError(f"wrote opset {real}, not the asked opset {cfg.opset}")


def _simplify(proto: Any) -> Any:
    """onnxslim: constant folding and fusions; keeps the I/O and metadata."""
    import onnxslim

    with _quiet():
        return onnxslim.slim(proto)
