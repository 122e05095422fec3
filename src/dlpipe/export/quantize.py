"""`--fp16` and `--int8`: reduced precision with tested tools, checked on real data.

fp16 uses onnxruntime's own converter (`onnxruntime.transformers.float16`) with float32 I/O kept.
Before converting, the float32 model runs on calibration inputs with every intermediate tensor
exposed; nodes whose activations come near the float16 limit (65504) stay float32 (mixed precision)
and are listed. Gemm is rewritten as MatMul+Add first: tract (and other strict runtimes) reject a
float16 Gemm with bias, while MatMul+Add computes the same in float16 everywhere. int8 uses onnxruntime's static quantization in QDQ format (per-channel weights), calibrated
on real training images through the stored preprocessing; the accuracy change is measured at once
on held-out images.
"""

from __future__ import annotations

import tempfile
import warnings
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
    from onnxruntime.transformers import float16
    from onnxruntime.transformers.onnx_model import OnnxModel

    proto, rewritten = gemm_to_matmul(proto)
    blocked, peak = overflow_nodes(proto, x)
    with warnings.catch_warnings():  # per-tensor "values truncated" chatter; the notes say it once
        warnings.simplefilter("ignore")
        half = float16.convert_float_to_float16(
            proto, keep_io_types=True, node_block_list=blocked or None
        )
    _keep_float_outputs(half, {o.name for o in proto.graph.output})
    _drop_initializer_value_info(half)
    OnnxModel(half).topological_sort()  # the converter appends its Casts at the end
    notes = [
        f"fp16: largest activation on {len(x)} calibration inputs: {peak:.4g} (float16 max {FP16_MAX:g})"
    ]
    notes.append(
        f"fp16: {len(blocked)} node(s) stay float32 (activations > {FP16_SAFE:g}): {', '.join(blocked[:20])}"
        if blocked
        else "fp16: every node runs in float16 (no activation near the float16 limit)"
    )
    if rewritten:
        notes.append(f"fp16: {rewritten} Gemm node(s) written as MatMul+Add (tract-compatible)")
    return half, {
        "dtype": "fp16",
        "fp32_nodes": blocked,
        "max_activation": peak,
        "io": "float32",
        "gemm_as_matmul_add": rewritten,
        "notes": notes,
    }


def gemm_to_matmul(proto: Any) -> tuple[Any, int]:
    """Gemm(A, W, b) with a constant W -> MatMul(A, W') + Add(b); returns a copy and the count.

    Only the plain form (alpha = beta = 1, A not transposed) is rewritten; W is transposed once
    here when transB is set. Others stay Gemm (none in dlpipe's models).
    """
    import onnx
    from onnx import helper, numpy_helper

    proto = onnx.ModelProto.FromString(proto.SerializeToString())
    inits = {i.name: i for i in proto.graph.initializer}
    nodes, count = [], 0
    for i, node in enumerate(proto.graph.node):
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        plain = (
            not attrs.get("transA", 0) and attrs.get("alpha", 1.0) == attrs.get("beta", 1.0) == 1.0
        )
        if node.op_type != "Gemm" or not plain or node.input[1] not in inits:
            nodes.append(node)
            continue
        name, weight = node.name or f"gemm_{i}", node.input[1]
        if attrs.get("transB", 0):
            w = numpy_helper.to_array(inits[weight]).T.copy()
            weight = f"{weight}_transposed"
            proto.graph.initializer.append(numpy_helper.from_array(w, weight))
        bias = node.input[2] if len(node.input) > 2 and node.input[2] else None
        product = f"{node.output[0]}_matmul" if bias else node.output[0]
        nodes.append(
            helper.make_node("MatMul", [node.input[0], weight], [product], name=f"{name}_matmul")
        )
        if bias:
            nodes.append(
                helper.make_node("Add", [product, bias], [node.output[0]], name=f"{name}_add")
            )
        count += 1
    del proto.graph.node[:]
    proto.graph.node.extend(nodes)
    used = {n for node in proto.graph.node for n in node.input}
    keep = [i for i in proto.graph.initializer if i.name in used]
    del proto.graph.initializer[:]
    proto.graph.initializer.extend(keep)
    return proto, count


def _drop_initializer_value_info(model: Any) -> None:
    """The converter records float16 value_info for initializers it left float32 (those of
    blocked nodes); tract trusts value_info and refuses the file. An initializer's type is its own."""
    inits = {i.name for i in model.graph.initializer}
    keep = [v for v in model.graph.value_info if v.name not in inits]
    del model.graph.value_info[:]
    model.graph.value_info.extend(keep)


def _keep_float_outputs(model: Any, names: set[str]) -> None:
    """The converter round-trips a float32 (blocked) node's output through float16 on its way to
    a float32 graph output or another blocked node, turning large values into inf: skip the trip."""
    import onnx

    producer = {out: node for node in model.graph.node for out in node.output}
    for out in model.graph.output:
        if out.name in names:
            out.type.tensor_type.elem_type = onnx.TensorProto.FLOAT
    for node in model.graph.node:
        if node.op_type != "Cast":
            continue
        if node.output[0] in names:
            for attr in node.attribute:
                if attr.name == "to":
                    attr.i = onnx.TensorProto.FLOAT
        if _cast_to(node) != onnx.TensorProto.FLOAT:
            continue
        # Cast(to float)(Cast(to float16)(x)) is Cast(to float)(x) plus float16 rounding/overflow
        inner = producer.get(node.input[0])
        if (
            inner is not None
            and inner.op_type == "Cast"
            and _cast_to(inner) == onnx.TensorProto.FLOAT16
        ):
            node.input[0] = inner.input[0]
    used = {n for node in model.graph.node for n in node.input} | names
    dead = [n for n in model.graph.node if n.op_type == "Cast" and n.output[0] not in used]
    for node in dead:
        model.graph.node.remove(node)


def _cast_to(node: Any) -> int | None:
    return next((a.i for a in node.attribute if a.name == "to"), None)


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
