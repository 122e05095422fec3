"""Backbone features computed once and reused: a frozen backbone gives the same features every
epoch, so the head trains on cached tensors (epochs cost milliseconds, not a backbone pass).

Disk cache: one safetensors file per (backbone weights hash, preprocessing, data fingerprint, split
indices), under $DLPIPE_CACHE_DIR or ~/.cache/dlpipe/features, with a sha256 of the tensors in its
header that is verified before use (a corrupt or tampered file is rebuilt). Writes are atomic.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..atomic import atomic_path
from ..data import Preprocess
from ..data.sources import ImageDataset

_MEMORY: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}  # key -> (features, labels)
_MEMORY_MAX = 6
FORMAT = "dlpipe-features/1"


def cache_dir() -> Path:
    """Where feature files go: $DLPIPE_CACHE_DIR/features or ~/.cache/dlpipe/features."""
    env = os.environ.get("DLPIPE_CACHE_DIR")
    return (Path(env) if env else Path.home() / ".cache" / "dlpipe") / "features"


def module_hash(module: nn.Module) -> str:
    """sha256 of every tensor (name, dtype, shape, bytes) of a module: its exact weights."""
    digest = hashlib.sha256()
    for name, t in sorted(module.state_dict().items()):
        t = t.detach().cpu().contiguous()
        digest.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return digest.hexdigest()


def cache_key(
    weights_hash: str, preprocess: Preprocess, fingerprint: str, split: str, indices: np.ndarray
) -> str:
    """The key: everything the features depend on (and the split name, for people)."""
    idx = hashlib.sha256(np.asarray(indices, dtype=np.int64).tobytes()).hexdigest()
    blob = json.dumps([weights_hash, preprocess.to_dict(), fingerprint, idx], sort_keys=True)
    return f"{split}-{hashlib.sha256(blob.encode()).hexdigest()[:24]}"


def _checksum(features: torch.Tensor, labels: torch.Tensor) -> str:
    digest = hashlib.sha256(features.contiguous().numpy().tobytes())
    digest.update(labels.contiguous().numpy().tobytes())
    return digest.hexdigest()


def load(path: Path) -> tuple[torch.Tensor, torch.Tensor] | None:
    """Read a feature file; None (and the file removed) when it is missing, corrupt or altered."""
    from safetensors import safe_open

    if not path.is_file():
        return None
    try:
        with safe_open(str(path), framework="pt") as fh:
            meta = fh.metadata() or {}
            feats, labels = fh.get_tensor("features"), fh.get_tensor("labels")
        if meta.get("format") == FORMAT and meta.get("sha256") == _checksum(feats, labels):
            return feats, labels
    except Exception:  # truncated / not safetensors: rebuild below
        pass
    path.unlink(missing_ok=True)
    return None


def save(path: Path, features: torch.Tensor, labels: torch.Tensor, info: dict[str, Any]) -> None:
    """Atomically write features + labels with their checksum."""
    from safetensors.torch import save_file

    meta = {"format": FORMAT, "sha256": _checksum(features, labels), "info": json.dumps(info)}
    with atomic_path(path, suffix=".safetensors") as tmp:
        save_file({"features": features.contiguous(), "labels": labels}, str(tmp), metadata=meta)


def extract(
    body: nn.Module,
    ds: ImageDataset,
    indices: np.ndarray,
    preprocess: Preprocess,
    device: torch.device,
    batch_size: int = 128,
    progress: Callable[[int], None] | None = None,
) -> torch.Tensor:
    """Run the frozen body once over `indices`: eval mode, inference_mode, batched, channels_last."""
    body.eval()
    chunks = []
    with torch.inference_mode():
        for start in range(0, len(indices), batch_size):
            part = indices[start : start + batch_size]
            x = torch.from_numpy(preprocess.batch([ds.image(i) for i in part])).to(device)
            x = x.contiguous(memory_format=torch.channels_last)
            chunks.append(body(x).float().flatten(1).cpu())
            if progress:
                progress(len(part))
    return torch.cat(chunks) if chunks else torch.zeros((0, 0))


def cached_features(
    body: nn.Module,
    weights_hash: str,
    ds: ImageDataset,
    indices: np.ndarray,
    preprocess: Preprocess,
    split: str,
    device: torch.device,
    progress: Callable[[int], None] | None = None,
    batch_size: int = 128,
) -> tuple[torch.Tensor, torch.Tensor, str]:
    """(features, labels, "memory"|"disk"|"computed") for one split, from the cache when valid."""
    key = cache_key(weights_hash, preprocess, ds.fingerprint, split, indices)
    path = cache_dir() / f"{key}.safetensors"
    if key in _MEMORY and path.is_file():
        return (*_MEMORY[key], "memory")
    hit = load(path)
    how = "disk"
    if hit is None:
        feats = extract(body, ds, indices, preprocess, device, batch_size, progress)
        labels = torch.from_numpy(ds.labels[np.asarray(indices, dtype=np.int64)].copy())
        info = {"split": split, "n": len(indices), "data": ds.fingerprint, "weights": weights_hash}
        save(path, feats, labels, info)
        hit, how = (feats, labels), "computed"
    if len(_MEMORY) >= _MEMORY_MAX:
        _MEMORY.pop(next(iter(_MEMORY)))
    _MEMORY[key] = hit
    return (*hit, how)
