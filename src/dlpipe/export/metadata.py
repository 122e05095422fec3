"""The description an exported ONNX file carries about itself (no torch needed to read it).

Everything a deployed runtime needs sits in the model's `metadata_props`: one `dlpipe` key holds
the full JSON, and a few flat keys (`kind`, `class_names`, `preprocess`, ...) repeat the essentials
for tools that only read strings. The same JSON is written beside the model as NAME.json.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..errors import BadInput

FORMAT = "dlpipe-onnx/1"
KEY = "dlpipe"
FLAT_KEYS = ("kind", "part", "class_names", "preprocess", "input", "output", "dtype")


def versions() -> dict[str, str | None]:
    """Versions of the packages that shaped the file."""
    import importlib.metadata as md

    from .._version import __version__

    found: dict[str, str | None] = {"dlpipe": __version__}
    for dist in ("torch", "onnx", "onnxruntime", "onnxscript"):
        try:
            found[dist] = md.version(dist)
        except md.PackageNotFoundError:
            found[dist] = None
    return found


def flat_props(meta: dict[str, Any]) -> dict[str, str]:
    """metadata_props entries: the full JSON under `dlpipe` plus flat copies of the essentials."""
    props = {KEY: json.dumps(meta, sort_keys=True)}
    for key in FLAT_KEYS:
        if key in meta:
            value = meta[key]
            props[key] = value if isinstance(value, str) else json.dumps(value)
    return props


def set_props(model: Any, meta: dict[str, Any]) -> None:
    """Write the metadata into an onnx.ModelProto (replacing earlier dlpipe entries)."""
    props = flat_props(meta)
    keep = [(p.key, p.value) for p in model.metadata_props if p.key not in props]
    del model.metadata_props[:]
    for key, value in [*keep, *props.items()]:
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
    model.producer_name = "dlpipe"
    model.producer_version = str(meta.get("versions", {}).get("dlpipe", ""))


def parse(props: dict[str, str], where: str | Path) -> dict[str, Any]:
    """The dlpipe metadata from a metadata map, or a clear error when the file has none."""
    if KEY not in props:
        raise BadInput(
            f"{where} has no dlpipe metadata (metadata_props key {KEY!r}).",
            hint="It was not exported by `dlpipe export`; re-export it with dlpipe, or use "
            "onnxruntime directly with your own preprocessing.",
        )
    try:
        meta = json.loads(props[KEY])
    except json.JSONDecodeError as exc:
        raise BadInput(f"{where}: the dlpipe metadata is not valid JSON ({exc}).") from None
    if not isinstance(meta, dict):
        raise _tampered(where, f"is a JSON {type(meta).__name__}, not an object")
    if meta.get("format") != FORMAT:
        raise BadInput(
            f"{where}: metadata format {meta.get('format')!r} is not {FORMAT!r}.",
            hint="Re-export the model with this dlpipe version.",
        )
    _check_shapes(meta, where)
    return meta


MAX_SIDE = 8192  # a metadata resize/crop beyond this is not an image model's input (1e6: 4 TB)


def _check_shapes(meta: dict[str, Any], where: str | Path) -> None:
    """Types of the fields predict/validate act on, so a tampered file fails with a sentence."""
    io, pre = meta.get("input"), meta.get("preprocess") or {}
    if not isinstance(io, dict) or not all(isinstance(io.get(k), str) for k in ("name", "kind")):
        raise _tampered(where, "has no input description (input.name, input.kind)")
    if not isinstance(pre, dict):
        raise _tampered(where, "has a preprocess entry that is not an object")
    for key in ("resize", "crop"):
        v = pre.get(key)
        if v is not None and (
            isinstance(v, bool) or not isinstance(v, int) or not 1 <= v <= MAX_SIDE
        ):
            raise _tampered(where, f"asks for preprocess {key} = {str(v)[:40]}, not 1..{MAX_SIDE}")


def _tampered(where: str | Path, what: str) -> BadInput:
    return BadInput(
        f"{where}: the dlpipe metadata {what}; the file was damaged or edited after export.",
        hint="Re-export it with `dlpipe export RUN`.",
    )


def from_proto(model: Any, where: str | Path) -> dict[str, Any]:
    """Metadata of a loaded onnx.ModelProto."""
    return parse({p.key: p.value for p in model.metadata_props}, where)


def from_session(session: Any, where: str | Path) -> dict[str, Any]:
    """Metadata through onnxruntime alone (the deployed path: no onnx, no torch)."""
    meta = parse(dict(session.get_modelmeta().custom_metadata_map), where)
    names = [i.name for i in session.get_inputs()]
    if meta["input"]["name"] not in names:  # a renamed graph input would fail deep in session.run
        raise _tampered(
            where, f"names the input {meta['input']['name']!r}, but the graph's inputs are {names}"
        )
    return meta
