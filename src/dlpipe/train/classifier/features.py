"""Backbone features computed once and reused: a frozen backbone gives the same features every
epoch, so the head trains on cached tensors (epochs cost milliseconds, not a backbone pass).

Disk cache: one safetensors file per (backbone weights hash, preprocessing, data fingerprint, split
indices), under $DLPIPE_CACHE_DIR or ~/.cache/dlpipe/features, with a sha256 of the tensors in its
header that is verified before use (a corrupt or tampered file is rebuilt). Writes are atomic.

Under torchrun the training split is computed collectively (`cached_features` with `ctx`): the
ranks agree whether the cache is valid, on a miss each extracts its strided shard, all gather,
rank 0 writes the same file one process would write (the cache does not depend on the number of
processes) and every rank keeps the whole split in memory for the head.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ...atomic import atomic_path, optional_write
from ...data import Preprocess
from ...data.arrays import decode_workers, decoded_batches
from ...data.sources import ImageDataset
from ...distributed import (
    DistContext,
    all_reduce_sum,
    env_world_size,
    gather_rows,
    shard_positions,
)

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
    weights_hash: str,
    preprocess: Preprocess,
    fingerprint: str,
    split: str,
    indices: np.ndarray,
    precision: str = "off",
) -> str:
    """The key: everything the features depend on (and the split name, for people); features
    extracted under autocast (`precision` bf16/fp16) get their own key."""
    idx = hashlib.sha256(np.asarray(indices, dtype=np.int64).tobytes()).hexdigest()
    parts: list[Any] = [weights_hash, preprocess.to_dict(), fingerprint, idx]
    if precision != "off":
        parts.append(precision)
    blob = json.dumps(parts, sort_keys=True)
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
    accel: Any = None,
) -> torch.Tensor:
    """Run the frozen body once over `indices`: eval mode, inference_mode, batched, channels_last
    (under `accel`'s autocast when given; the features are float32 either way). Images are
    decoded by DataLoader workers where the machine has cores to spare."""
    body.eval()
    chunks = []
    workers = decode_workers(len(indices), env_world_size())
    with torch.inference_mode():
        for part in decoded_batches(ds, indices, preprocess, batch_size, workers):
            x = torch.from_numpy(preprocess.normalize(np.stack(part)))
            if accel is not None and accel.pin:
                x = accel.to_device(x)
            else:
                x = x.to(device).contiguous(memory_format=torch.channels_last)
            with accel.autocast() if accel is not None else contextlib.nullcontext():
                y = body(x)
            chunks.append(y.float().flatten(1).cpu())
            if progress:
                progress(len(part))
    return torch.cat(chunks) if chunks else torch.zeros((0, 0))


def _precision(accel: Any) -> str:
    return str(getattr(accel, "amp", "off") or "off")


def _lookup(key: str, path: Path) -> tuple[tuple[torch.Tensor, torch.Tensor] | None, str]:
    """(features, labels) from memory or disk, and which (None on a miss)."""
    if key in _MEMORY and path.is_file():
        return _MEMORY[key], "memory"
    hit = load(path)
    return hit, "disk"


def _remember(key: str, hit: tuple[torch.Tensor, torch.Tensor]) -> None:
    if key in _MEMORY:
        return
    if len(_MEMORY) >= _MEMORY_MAX:
        _MEMORY.pop(next(iter(_MEMORY)))
    _MEMORY[key] = hit


def _labels_and_info(
    ds: ImageDataset, indices: np.ndarray, split: str, weights_hash: str
) -> tuple[torch.Tensor, dict[str, Any]]:
    labels = torch.from_numpy(ds.labels[np.asarray(indices, dtype=np.int64)].copy())
    info = {"split": split, "n": len(indices), "data": ds.fingerprint, "weights": weights_hash}
    return labels, info


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
    accel: Any = None,
    ctx: DistContext | None = None,
) -> tuple[torch.Tensor, torch.Tensor, str]:
    """(features, labels, "memory"|"disk"|"computed"[-sharded]) for one split, from the cache when
    valid. With a multi-process `ctx` every rank calls it together: a cache valid on every rank
    is used; otherwise each rank extracts its strided shard once, the shards are gathered in
    order, rank 0 writes the cache file and every rank keeps the whole. Without one (or for
    val/test on rank 0) this process works alone."""
    ctx = ctx or DistContext()
    key = cache_key(weights_hash, preprocess, ds.fingerprint, split, indices, _precision(accel))
    path = cache_dir() / f"{key}.safetensors"
    hit, how = _lookup(key, path)
    miss = hit is None
    if ctx.enabled:  # the ranks agree: one missing cache means all compute
        wire = device if "nccl" in (ctx.backend or "") else torch.device("cpu")  # GPUs: NCCL
        miss = all_reduce_sum(torch.tensor([float(miss)], device=wire), ctx).item() > 0
    if miss:
        if ctx.enabled:
            scaled = (lambda k: progress(k * ctx.world_size)) if progress else None
            feats = _extract_sharded(body, ds, indices, preprocess, device, ctx, batch_size,
                                     scaled, accel, wire)  # fmt: skip
        else:
            feats = extract(body, ds, indices, preprocess, device, batch_size, progress, accel)
        labels, info = _labels_and_info(ds, indices, split, weights_hash)
        if ctx.is_main:  # the cache is optional: an unwritable one is a warning
            optional_write(lambda: save(path, feats, labels, info), path, "feature cache")
        hit, how = (feats, labels), "computed-sharded" if ctx.enabled else "computed"
    assert hit is not None
    _remember(key, hit)
    return (*hit, how)


def _extract_sharded(
    body: nn.Module,
    ds: ImageDataset,
    indices: np.ndarray,
    preprocess: Preprocess,
    device: torch.device,
    ctx: DistContext,
    batch_size: int,
    progress: Callable[[int], None] | None,
    accel: Any,
    wire: torch.device,
) -> torch.Tensor:
    """Positions rank::world of `indices` (padded to equal length), extracted here, gathered and
    put back in the original order."""
    n = len(indices)
    if n == 0:
        return torch.zeros((0, 0))
    mine = shard_positions(n, ctx)
    local = extract(body, ds, indices[mine], preprocess, device, batch_size, progress, accel)
    return gather_rows(local, n, ctx, wire)
