"""`--fp16` and `--int8`: reduced precision with tested tools, checked on real data.

fp16 uses onnxconverter-common (the converter onnxruntime documents) with float32 I/O kept. Before
converting, the float32 model runs on calibration inputs with every intermediate tensor exposed;
nodes whose activations come near the float16 limit (65504) stay float32 (mixed precision) and are
listed. int8 uses onnxruntime's static quantization in QDQ format (per-channel weights), calibrated
on real training images through the stored preprocessing; the accuracy change is measured at once
on held-out images.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import BadInput
from .spec import IOSpec

FP16_MAX = 65504.0
FP16_SAFE = FP16_MAX / 4  # headroom: calibration inputs never cover the worst case


def _meta_like(ckpt_meta: dict[str, Any], spec: IOSpec) -> dict[str, Any]:
    return {**ckpt_meta, "input": {"name": spec.input, "kind": spec.input_kind}}


def _session(proto: Any, all_outputs: bool = False) -> Any:
    import onnx
    import onnxruntime as ort

    if all_outputs:
        proto = onnx.ModelProto.FromString(proto.SerializeToString())
        known = {o.name for o in proto.graph.output}
        for node in proto.graph.node:
            for name in node.output:
                if name and name not in known:
                    proto.graph.output.append(onnx.ValueInfoProto(name=name))
    from .providers import no_spin

    opts = no_spin(ort.SessionOptions())
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    return ort.InferenceSession(proto.SerializeToString(), opts, providers=["CPUExecutionProvider"])


def overflow_nodes(proto: Any, x: np.ndarray) -> tuple[list[str], float]:
    """Nodes whose outputs exceed the float16 safe range on x, and the largest activation seen."""
    session = _session(proto, all_outputs=True)
    names = [o.name for o in session.get_outputs()]
    values = session.run(None, {session.get_inputs()[0].name: x})
    producer = {
        out: node.name or f"{node.op_type}_{i}"
        for i, node in enumerate(proto.graph.node)
        for out in node.output
    }
    blocked, peak = [], 0.0
    for name, v in zip(names, values, strict=True):
        if not np.issubdtype(np.asarray(v).dtype, np.floating) or not np.size(v):
            continue
        top = float(np.max(np.abs(v)))
        peak = max(peak, top)
        if top > FP16_SAFE and name in producer:
            blocked.append(producer[name])
    return sorted(set(blocked)), peak


def to_fp16(proto: Any, x: np.ndarray) -> tuple[Any, dict[str, Any]]:
    """Mixed-precision fp16 model with float32 I/O; overflow-prone nodes stay float32."""
    from onnxconverter_common import float16

    blocked, peak = overflow_nodes(proto, x)
    half = float16.convert_float_to_float16(
        proto, keep_io_types=True, node_block_list=blocked or None
    )
    _keep_float_outputs(half, {o.name for o in proto.graph.output})
    notes = [
        f"fp16: largest activation on {len(x)} calibration inputs: {peak:.4g} (float16 max {FP16_MAX:g})"
    ]
    notes.append(
        f"fp16: {len(blocked)} node(s) stay float32 (activations > {FP16_SAFE:g}): {', '.join(blocked[:20])}"
        if blocked
        else "fp16: every node runs in float16 (no activation near the float16 limit)"
    )
    return half, {
        "dtype": "fp16",
        "fp32_nodes": blocked,
        "max_activation": peak,
        "io": "float32",
        "notes": notes,
    }


def _keep_float_outputs(model: Any, names: set[str]) -> None:
    """onnxconverter-common casts a float32 (blocked) node's output to float16 even when it is a
    float32 graph output (and retypes the output), turning large values into inf: undo that."""
    import onnx

    for out in model.graph.output:
        if out.name in names:
            out.type.tensor_type.elem_type = onnx.TensorProto.FLOAT
    for node in model.graph.node:
        if node.op_type == "Cast" and node.output[0] in names:
            for attr in node.attribute:
                if attr.name == "to":
                    attr.i = onnx.TensorProto.FLOAT


class _Reader:
    """onnxruntime CalibrationDataReader over a NumPy batch."""

    def __init__(self, name: str, x: np.ndarray, batch: int = 8) -> None:
        self.items = iter([{name: x[i : i + batch]} for i in range(0, len(x), batch)])

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self.items, None)


def _calibration_images(
    ckpt_meta: dict[str, Any], spec: IOSpec, source: str | None, n: int
) -> np.ndarray:
    """Real training images (not the held-out ones) through the stored preprocessing."""
    from ..data import Preprocess, make_split, open_source
    from ..data.arrays import pixels_of

    data = dict(ckpt_meta.get("data") or {})
    if source is None and not data.get("source"):
        raise BadInput(
            "--int8 needs calibration images.",
            hint="Pass --calib-data SOURCE (a folder or built-in set).",
        )
    ds = open_source(source or data["source"], None if source else data.get("data_root"))
    split = make_split(ds.labels, float(data.get("val_fraction", 0.1)), float(data.get("test_fraction", 0.1)),
                       int(data.get("seed", 0)), ds.official_test)  # fmt: skip
    pool = np.arange(len(ds)) if source else split.train
    idx = np.random.default_rng(0).permutation(pool)[:n]
    pre = Preprocess.from_dict(ckpt_meta.get("preprocess") or {})
    px = pixels_of(ds, np.sort(idx), pre)
    return px.astype(np.float32) if spec.input_kind == "pixels" else pre.normalize(px)


def to_int8(proto: Any, calib: np.ndarray, spec: IOSpec) -> Any:
    """Static QDQ int8 (per-channel weights), calibrated with MinMax on `calib`."""
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    with tempfile.TemporaryDirectory() as tmp:
        src, pre, dst = (Path(tmp) / n for n in ("fp32.onnx", "pre.onnx", "int8.onnx"))
        onnx.save(proto, str(src))
        quant_pre_process(str(src), str(pre), skip_symbolic_shape=True)
        quantize_static(
            str(pre), str(dst), _Reader(spec.input, calib), quant_format=QuantFormat.QDQ,
            per_channel=True, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
            calibrate_method=CalibrationMethod.MinMax,
        )  # fmt: skip
        return onnx.load(str(dst))


def _accuracy(proto: Any, x: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, float | None]:
    s = _session(proto)
    pred = s.run(None, {s.get_inputs()[0].name: x})[0].argmax(-1)
    return pred, float(np.mean(pred == labels)) if np.all(labels >= 0) else None


def reduce_precision(
    proto: Any, ckpt: Any, spec: IOSpec, shape: tuple[int, ...], cfg: Any
) -> tuple[Any, dict[str, Any]]:
    """Apply --fp16 or --int8 to the float32 export; returns the new model and what was done."""
    from .inputs import build_inputs, held_out

    meta = _meta_like(ckpt.meta, spec)
    if cfg.fp16:
        which = (
            "real"
            if (ckpt.meta.get("data") or {}).get("source") and spec.input_kind != "latent"
            else "random"
        )
        x = np.concatenate([s.x for s in build_inputs(meta, shape, which, 32)])
        return to_fp16(proto, x)
    if ckpt.meta.get("kind") != "classifier":
        raise BadInput(
            "--int8 is for CNN classifiers.", hint="Use --fp16 for generators and autoencoders."
        )
    calib = _calibration_images(ckpt.meta, spec, cfg.calib_data, cfg.calib_n)
    quant = to_int8(proto, calib, spec)
    px, labels, note = held_out(meta, 256)
    x = px.astype(np.float32) if spec.input_kind == "pixels" else _normalize(meta, px)
    p32, a32 = _accuracy(proto, x, labels)
    p8, a8 = _accuracy(quant, x, labels)
    info = {"dtype": "int8", "format": "QDQ", "calibration_images": len(calib), "held_out": note,
            "top1_agreement_vs_fp32": float(np.mean(p32 == p8)), "accuracy_fp32": a32, "accuracy_int8": a8,
            "accuracy_change": None if a32 is None or a8 is None else a8 - a32}  # fmt: skip
    acc = (
        "" if a32 is None else f"; accuracy {a32:.2%} -> {a8:.2%} ({(a8 - a32) * 100:+.2f} points)"
    )
    info["notes"] = [f"int8: calibrated on {len(calib)} images; on {note}: top-1 agreement with fp32 "
                     f"{info['top1_agreement_vs_fp32']:.2%}{acc}"]  # fmt: skip
    return quant, info


def _normalize(meta: dict[str, Any], px: np.ndarray) -> np.ndarray:
    from ..data import Preprocess

    return Preprocess.from_dict(meta.get("preprocess") or {}).normalize(px)
