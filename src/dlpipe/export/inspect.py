"""`dlpipe inspect`: what an ONNX file is: metadata, inputs, outputs, opset, size, operators."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

from ..console import shown as _shown
from . import files, metadata

_DTYPES = {
    1: "float32",
    2: "uint8",
    3: "int8",
    6: "int32",
    7: "int64",
    10: "float16",
    11: "float64",
}


def _value_info(v: Any) -> dict[str, Any]:
    t = v.type.tensor_type
    dims = [d.dim_param or d.dim_value for d in t.shape.dim]
    return {"name": v.name, "dtype": _DTYPES.get(t.elem_type, str(t.elem_type)), "shape": dims}


def inspect_model(path: str | Path) -> dict[str, Any]:
    """Plain data about the file; metadata is None for ONNX files not written by dlpipe."""
    path = Path(path)
    model = files.open_model(path)
    try:
        meta: dict[str, Any] | None = metadata.from_proto(model, path)
    except Exception:
        meta = None
    ops = Counter(
        (n.domain + "." if n.domain and n.domain != "ai.onnx" else "") + n.op_type
        for n in model.graph.node
    )
    data = [p for p in files.data_files(path) if p.exists()]
    weights = {i.name for i in model.graph.initializer}
    return {
        "model": str(path),
        "size_bytes": path.stat().st_size,
        "external_data_bytes": sum(p.stat().st_size for p in data),
        "external_data": [p.name for p in data],
        "ir_version": model.ir_version,
        "opset": {(o.domain or "ai.onnx"): o.version for o in model.opset_import},
        "producer": f"{model.producer_name} {model.producer_version}".strip(),
        "inputs": [_value_info(v) for v in model.graph.input if v.name not in weights],
        "outputs": [_value_info(v) for v in model.graph.output],
        "nodes": len(model.graph.node),
        "initializers": len(model.graph.initializer),
        "operators": dict(ops.most_common()),
        "metadata": meta,
        "other_metadata": {
            p.key: p.value for p in model.metadata_props if p.key not in metadata.flat_props({})
        }
        if meta is None
        else {},
    }


def print_inspection(out: Any, info: dict[str, Any]) -> None:
    """Human view of `inspect_model`'s result."""
    from rich.table import Table

    meta = info["metadata"] or {}
    size = info["size_bytes"] + info["external_data_bytes"]
    out.print(
        f"[bold]{info['model']}[/]  {size / 1e6:.2f} MB  opset {info['opset']}  IR {info['ir_version']}"
    )
    if meta:
        pre = meta.get("preprocess") or {}
        names = meta.get("class_names") or []
        shown = ", ".join(_shown(n) for n in names[:10]) + (
            f" … ({len(names)})" if len(names) > 10 else ""
        )
        out.print(
            f"kind {meta.get('kind')} / part {meta.get('part')} / {meta.get('dtype')}; exporter {meta.get('exporter', {}).get('used')}"
        )
        out.print(f"classes: {shown or '-'}")
        out.print(f"preprocess: {pre}")
        if meta.get("latent_size"):
            out.print(f"latent size: {meta['latent_size']}")
        src = meta.get("source") or {}
        out.print(f"source: {src.get('checkpoint')} (sha256 {str(src.get('sha256'))[:12]}…)")
        out.print(f"versions: {meta.get('versions')}")
    else:
        out.print("[yellow]no dlpipe metadata[/] (not exported by dlpipe)")
    io = Table(title="inputs / outputs")
    for col in ("", "name", "dtype", "shape"):
        io.add_column(col)
    for side in ("inputs", "outputs"):
        for v in info[side]:
            io.add_row(side[:-1], v["name"], v["dtype"], str(v["shape"]))
    out.print(io)
    ops = Table(title=f"operators ({info['nodes']} nodes)")
    ops.add_column("op")
    ops.add_column("count", justify="right")
    for op, count in info["operators"].items():
        ops.add_row(op, str(count))
    out.print(ops)
