"""Checkpoints: safetensors weights + everything needed to rebuild and resume, never a pickle.

One `.safetensors` file holds every tensor (model weights grouped by prefix, optimizer tensors,
RNG states) and, in its header metadata, the JSON description (`meta`: architecture, arguments,
class names, preprocessing, versions, data fingerprint) and the JSON training state with
references to its tensors. One file means one atomic rename: a crash mid-write leaves the previous
checkpoint intact. A `.json` sidecar repeats `meta` for people and tools; loading never needs it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ._version import __version__
from .atomic import as_os_error, atomic_path, write_text
from .errors import BadInput

FORMAT = "dlpipe-checkpoint/1"
_META_KEY = "dlpipe.meta"
_STATE_KEY = "dlpipe.state"
_FORMAT_KEY = "dlpipe.format"


@dataclass
class Checkpoint:
    """What `load_checkpoint` returns: weights per group, the description, the training state."""

    path: Path
    meta: dict[str, Any]
    weights: dict[str, dict[str, Any]] = field(default_factory=dict)  # group -> state_dict
    state: dict[str, Any] = field(default_factory=dict)  # optimizer, scheduler, epoch, rng, ...


def _flatten(obj: Any, tensors: dict[str, Any]) -> Any:
    """Replace tensors by references, keep JSON-able structure (int dict keys and tuples too)."""
    import torch

    if isinstance(obj, torch.Tensor):
        key = f"__state__/{len(tensors)}"
        tensors[key] = obj.detach().cpu().contiguous().clone()
        return {"__tensor__": key}
    if isinstance(obj, dict):
        if all(isinstance(k, str) for k in obj):
            return {k: _flatten(v, tensors) for k, v in obj.items()}
        return {"__items__": [[k, _flatten(v, tensors)] for k, v in obj.items()]}
    if isinstance(obj, tuple):
        return {"__tuple__": [_flatten(v, tensors) for v in obj]}
    if isinstance(obj, list):
        return [_flatten(v, tensors) for v in obj]
    if obj is None or isinstance(obj, bool | int | float | str):
        return obj
    raise TypeError(f"cannot store {type(obj).__name__} in a checkpoint state")


def _unflatten(obj: Any, tensors: dict[str, Any]) -> Any:
    if isinstance(obj, dict):
        if "__tensor__" in obj:
            return tensors[obj["__tensor__"]]
        if "__items__" in obj:
            return {k: _unflatten(v, tensors) for k, v in obj["__items__"]}
        if "__tuple__" in obj:
            return tuple(_unflatten(v, tensors) for v in obj["__tuple__"])
        return {k: _unflatten(v, tensors) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_unflatten(v, tensors) for v in obj]
    return obj


def save_checkpoint(
    path: str | Path,
    weights: dict[str, dict[str, Any]],
    meta: dict[str, Any],
    state: dict[str, Any] | None = None,
) -> Path:
    """Atomically write a checkpoint; `weights` maps a group name ("model", "ema", ...) to a state_dict."""
    from safetensors.torch import save_file

    path = Path(path)
    tensors: dict[str, Any] = {}
    seen: set[int] = set()
    for group, state_dict in weights.items():
        for name, t in state_dict.items():
            t = t.detach().cpu().contiguous()
            if t.data_ptr() in seen and t.numel():  # safetensors refuses shared storage
                t = t.clone()
            seen.add(t.data_ptr())
            tensors[f"{group}/{name}"] = t
    state_json = _flatten(state or {}, tensors)
    meta = {"format": FORMAT, "dlpipe_version": __version__, **meta}
    header = {
        _FORMAT_KEY: FORMAT,
        _META_KEY: json.dumps(meta, sort_keys=True),
        _STATE_KEY: json.dumps(state_json),
        "dlpipe.groups": json.dumps(sorted(weights)),
    }
    with atomic_path(path) as tmp:
        try:
            save_file(tensors, str(tmp), metadata=header)
        except Exception as exc:  # safetensors reports a full disk as its own error type
            raise as_os_error(exc, path) from None
    write_text(path.with_suffix(".json"), json.dumps(meta, indent=2, sort_keys=True) + "\n")
    return path


def read_meta(path: str | Path) -> dict[str, Any]:
    """Read only the description of a checkpoint (cheap: the header, no tensors)."""
    return _open(Path(path))[0]


def _open(path: Path) -> tuple[dict[str, Any], dict[str, str]]:
    from safetensors import safe_open

    if not path.exists():
        raise BadInput(
            f"Checkpoint {path} does not exist.",
            hint="Pass a run directory or a .safetensors checkpoint.",
        )
    if path.is_dir():
        raise BadInput(
            f"{path} is a folder, not a checkpoint file.", hint="Pass a .safetensors file."
        )
    if not path.is_file():  # a FIFO would block the read forever, a device never ends
        raise BadInput(
            f"{path} is not a regular file (a pipe, socket or device), so it is not a checkpoint.",
            hint="Pass a .safetensors file written by dlpipe.",
        )
    _refuse_pickle(path)
    try:
        if _utf8(path):
            with safe_open(str(path), framework="pt") as fh:
                header = fh.metadata() or {}
        else:
            header = _read_header(path)
    except Exception as exc:  # safetensors raises its own error types for bad headers
        raise BadInput(
            f"Checkpoint {path} is truncated or not a safetensors file ({exc}).",
            hint="Use the last complete checkpoint of the run (checkpoints/last.safetensors) or re-train.",
        ) from None
    if header.get(_FORMAT_KEY) != FORMAT:
        raise BadInput(
            f"{path} is a safetensors file but not a dlpipe checkpoint (no '{_FORMAT_KEY}' header).",
            hint="Plain weight files go to --weights, not to --resume or export.",
        )
    meta = _header_json(path, header, _META_KEY, dict)
    _header_json(path, header, _STATE_KEY, dict)
    groups = _header_json(path, header, "dlpipe.groups", list)
    if not all(isinstance(g, str) for g in groups):
        raise _damaged(path, "dlpipe.groups", "is not a list of names")
    check_meta(path, meta)
    return meta, header


# Numbers in `meta["arch"]` become tensor shapes when a model is rebuilt: a hostile header could
# ask for a billion-wide layer. Each must be an integer in its range (generous: 16x the largest
# setting the CLI offers), so an absurd value is refused before anything is allocated.
ARCH_LIMITS = {
    "nz": 4096, "ngf": 4096, "ndf": 4096, "latent": 65536, "width": 4096, "hidden": 65536,
    "image_size": 4096, "channels": 64, "in_chans": 64, "num_classes": 1_000_000,
}  # fmt: skip
_BUILT_KINDS = ("classifier", "generator", "autoencoder")
_REQUIRED = {  # what each kind's builder reads from meta["arch"]
    "generator": ("nz", "ngf", "image_size", "channels"),
    "autoencoder": ("image_size", "channels", "width"),  # + latent for the conv net
    "classifier": ("backbone", "num_classes"),
}


def check_meta(path: Path, meta: dict[str, Any]) -> None:
    """Refuse a description that would build an absurd or broken model (hostile or damaged)."""
    arch = meta.get("arch")
    if meta.get("kind") in _BUILT_KINDS and not isinstance(arch, dict):
        raise _damaged(path, "meta.arch", "is missing or not a mapping")
    missing = [k for k in _REQUIRED.get(str(meta.get("kind")), ()) if k not in arch]
    if meta.get("kind") == "autoencoder" and arch.get("net", "conv") == "conv":
        missing += [] if "latent" in arch else ["latent"]  # the U-Net has no latent vector
    if missing:
        raise _damaged(path, "meta.arch", f"lacks {', '.join(missing)}")
    if meta.get("kind") == "classifier" and not isinstance(arch.get("backbone"), str):
        raise _damaged(path, "meta.arch.backbone", "is not a name")
    optional = ("hidden", "image_size") if meta.get("kind") == "classifier" else ()
    arch = arch if isinstance(arch, dict) else {}
    for key, limit in ARCH_LIMITS.items():
        value = arch.get(key)
        if key not in arch or (value is None and key in optional):
            continue
        if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= limit:
            raise _damaged(
                path, f"meta.arch.{key}", f"= {str(value)[:40]!r}, not an integer in 1..{limit}"
            )


def _header_json(path: Path, header: dict[str, str], key: str, kind: type) -> Any:
    try:
        value = json.loads(header[key])
    except (KeyError, ValueError):
        raise _damaged(path, key, "is missing or not JSON") from None
    if not isinstance(value, kind):
        raise _damaged(path, key, f"is a JSON {type(value).__name__}, not a {kind.__name__}")
    return value


def _damaged(path: Path, key: str, what: str) -> BadInput:
    return BadInput(
        f"Checkpoint {path} has a damaged or hostile header: {key} {what}.",
        hint="dlpipe writes these itself; re-train, or use a checkpoint from a run you trust.",
    )


def _refuse_pickle(path: Path) -> None:
    with open(path, "rb") as fh:
        head = fh.read(4)
    if head[:2] in (b"\x80\x02", b"\x80\x03", b"\x80\x04", b"\x80\x05") or head == b"PK\x03\x04":
        raise BadInput(
            f"{path} is a pickle/torch.save file; dlpipe never unpickles files it is given.",
            hint="Convert it to safetensors in a trusted environment, or use `dlpipe weights import`.",
        )


def load_checkpoint(path: str | Path, device: str = "cpu") -> Checkpoint:
    """Load a checkpoint without unpickling anything; tensors land on `device`."""
    from safetensors.torch import load, load_file

    path = Path(path)
    meta, header = _open(path)
    try:
        if _utf8(path):
            tensors = load_file(str(path), device=device)
        else:  # safetensors refuses such a path; its bytes load the same way
            tensors = {k: t.to(device) for k, t in load(path.read_bytes()).items()}
    except Exception as exc:
        raise BadInput(
            f"Checkpoint {path} could not be read ({exc}).", hint="It is truncated or corrupt."
        ) from None
    weights: dict[str, dict[str, Any]] = {g: {} for g in json.loads(header["dlpipe.groups"])}
    tensors_needed = _tensor_refs(json.loads(header[_STATE_KEY]))
    if not tensors_needed <= set(tensors):
        raise _damaged(path, _STATE_KEY, "refers to tensors the file does not hold")
    for key, t in tensors.items():
        group, _, name = key.partition("/")
        if group in weights:
            weights[group][name] = t
    try:
        state = _unflatten(json.loads(header[_STATE_KEY]), tensors)
    except (KeyError, TypeError, ValueError):
        raise _damaged(path, _STATE_KEY, "does not describe a training state") from None
    return Checkpoint(path=path, meta=meta, weights=weights, state=state)


def _utf8(path: Path) -> bool:
    """Whether safetensors can open `path` itself (it refuses a name that is not UTF-8)."""
    try:
        str(path).encode("utf-8")
        return True
    except UnicodeEncodeError:
        return False


def _read_header(path: Path) -> dict[str, str]:
    """The `__metadata__` of a safetensors file, read directly: 8 bytes of header length, then
    the JSON header (at most 100 MB, as safetensors allows)."""
    with open(path, "rb") as fh:
        size = int.from_bytes(fh.read(8), "little")
        if not 0 < size <= 100_000_000:
            raise ValueError(f"header length {size} is out of range")
        blob = fh.read(size)
    if len(blob) != size:
        raise ValueError("the header is cut short")
    meta = json.loads(blob).get("__metadata__") or {}
    if not isinstance(meta, dict) or not all(isinstance(v, str) for v in meta.values()):
        raise ValueError("__metadata__ is not a mapping of strings")
    return meta


def _tensor_refs(obj: Any) -> set[str]:
    if isinstance(obj, dict):
        own = {obj["__tensor__"]} if isinstance(obj.get("__tensor__"), str) else set()
        return own.union(*(_tensor_refs(v) for v in obj.values()))
    if isinstance(obj, list):
        return set().union(*(_tensor_refs(v) for v in obj))
    return set()


def file_sha256(path: str | Path) -> str:
    """sha256 of a file, streamed."""
    import hashlib

    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
