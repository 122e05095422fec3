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
from ...data.arrays import Tally, decode_workers, decoded_batches
from ...data.sources import ImageDataset
from ...distributed import (
    DistContext,
    any_rank,
    env_world_size,
    gather_rows,
    shard_positions,
)
from ...export.frozen import wanted_engine

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
    engine: str = "torch",
) -> str:
    """The key: everything the features depend on (and the split name, for people); features
    extracted under autocast (`precision` bf16/fp16) or by onnxruntime (`engine`) get their own
    key (torch eager's keys are the ones made before the engine was recorded)."""
    idx = hashlib.sha256(np.asarray(indices, dtype=np.int64).tobytes()).hexdigest()
    parts: list[Any] = [weights_hash, preprocess.to_dict(), fingerprint, idx]
    if precision != "off":
        parts.append(precision)
    if engine != "torch":
        parts.append(engine)
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
    net: Any = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(features, usable mask) of `indices`: the frozen body run once, eval mode, inference_mode,
    batched, channels_last (under `accel`'s autocast when given; float32 either way), or by
    `net` (the body exported to onnxruntime, see export/frozen.py) when given. Rows of
    images that cannot be decoded are zeros with mask False (and listed in `ds.skipped`).
    Images are decoded by DataLoader workers where the machine has cores to spare."""
    body.eval()
    chunks: list[torch.Tensor] = []
    ok: list[bool] = []
    workers = decode_workers(len(indices), env_world_size())
    tally, k = Tally(ds, len(indices)), 0
    with torch.inference_mode():
        for part in decoded_batches(ds, indices, preprocess, batch_size, workers):
            good = [px for px, _ in part if px is not None]
            bad = [(int(indices[k + j]), why) for j, (px, why) in enumerate(part) if px is None]
            ds.note_bad(bad)
            tally.add(len(part), len(bad))
            k += len(part)
            ok += [px is not None for px, _ in part]
            if good:
                if net is not None:
                    y = torch.from_numpy(net(preprocess.normalize(np.stack(good)))).flatten(1)
                else:
                    y = _forward(body, np.stack(good), preprocess, device, accel)
                chunks.append(_with_gaps(y, [px is not None for px, _ in part]))
            elif chunks:
                chunks.append(torch.zeros((len(part), chunks[0].shape[1])))
            else:
                chunks.append(torch.zeros((len(part), 0)))
            if progress:
                progress(len(part))
    feats = _cat(chunks)
    return feats, torch.tensor(ok, dtype=torch.bool)


def _forward(body: nn.Module, px: np.ndarray, preprocess: Preprocess, device: torch.device,
             accel: Any) -> torch.Tensor:  # fmt: skip
    x = torch.from_numpy(preprocess.normalize(px))
    if accel is not None and accel.pin:
        x = accel.to_device(x)
    else:
        x = x.to(device).contiguous(memory_format=torch.channels_last)
    with accel.autocast() if accel is not None else contextlib.nullcontext():
        y = body(x)
    return y.float().flatten(1).cpu()


def _with_gaps(y: torch.Tensor, mask: list[bool]) -> torch.Tensor:
    """Rows of `y` placed at the True positions of `mask`, zeros elsewhere."""
    if all(mask):
        return y
    full = torch.zeros((len(mask), y.shape[1]), dtype=y.dtype)
    full[torch.tensor(mask)] = y
    return full


def _cat(chunks: list[torch.Tensor]) -> torch.Tensor:
    """Concatenate, widening the zero-width chunks of all-bad leading batches."""
    if not chunks:
        return torch.zeros((0, 0))
    width = max(c.shape[1] for c in chunks)
    return torch.cat([c if c.shape[1] == width else torch.zeros((len(c), width)) for c in chunks])


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
    ds: ImageDataset, indices: np.ndarray, split: str, weights_hash: str, bad: list
) -> tuple[torch.Tensor, dict[str, Any]]:
    labels = torch.from_numpy(ds.labels[np.asarray(indices, dtype=np.int64)].copy())
    info = {"split": split, "n": len(indices), "data": ds.fingerprint, "weights": weights_hash,
            "bad": bad}  # fmt: skip
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
    valid; images that cannot be decoded are left out (and listed in `ds.skipped`, also when
    the features come from the cache). With a multi-process `ctx` every rank calls it together:
    a cache valid on every rank is used; otherwise each rank extracts its strided shard once,
    the shards are gathered in order, rank 0 writes the cache file and every rank keeps the
    whole. Without one (or for val/test on rank 0) this process works alone."""
    ctx = ctx or DistContext()
    indices = np.asarray(indices, dtype=np.int64)
    engine = wanted_engine(device, _precision(accel) != "off", len(indices))
    key = cache_key(weights_hash, preprocess, ds.fingerprint, split, indices, _precision(accel),
                    engine)  # fmt: skip
    path = cache_dir() / f"{key}.safetensors"
    hit, how = _lookup(key, path)
    wire = device if "nccl" in (ctx.backend or "") else torch.device("cpu")  # GPUs: NCCL
    miss = any_rank(hit is None, ctx, wire)  # the ranks agree: one missing cache, all compute
    if miss:
        net = _ort(body, weights_hash, ds, preprocess, ctx) if engine == "onnxruntime" else None
        if engine == "onnxruntime" and net is None:  # not exportable: eager, under eager's key
            key = cache_key(weights_hash, preprocess, ds.fingerprint, split, indices,
                            _precision(accel))  # fmt: skip
            path = cache_dir() / f"{key}.safetensors"
        if ctx.enabled:
            scaled = (lambda k: progress(k * ctx.world_size)) if progress else None
            feats, ok = _extract_sharded(body, ds, indices, preprocess, device, ctx, batch_size,
                                         scaled, accel, wire, net)  # fmt: skip
        else:
            feats, ok = extract(body, ds, indices, preprocess, device, batch_size, progress,
                                accel, net)  # fmt: skip
        bad = [[int(i), why] for i, why in _reasons(ds, indices[~ok.numpy()])]
        labels, info = _labels_and_info(ds, indices[ok.numpy()], split, weights_hash, bad)
        info["engine"] = "onnxruntime" if net is not None else "torch"
        feats = feats if bool(ok.all()) else feats[ok]
        if ctx.is_main:  # the cache is optional: an unwritable one is a warning
            optional_write(lambda: save(path, feats, labels, info), path, "feature cache")
        hit, how = (feats, labels), "computed-sharded" if ctx.enabled else "computed"
        _BAD[key] = bad
    else:
        ds.note_bad([(int(i), why) for i, why in _BAD.get(key) or _saved_bad(path)])
    assert hit is not None
    _remember(key, hit)
    return (*hit, how)


def _ort(body: nn.Module, weights_hash: str, ds: ImageDataset, preprocess: Preprocess,
         ctx: DistContext) -> Any:  # fmt: skip
    """The frozen body in an onnxruntime session for this input size (None: not exportable);
    processes sharing a machine share its cores."""
    from ...data.arrays import _cores
    from ...export.frozen import ort_net

    side = preprocess.output_size
    h, w = (side, side) if side else ds.image_size()
    threads = max(1, _cores() // max(ctx.world_size, env_world_size()))
    shape = (preprocess.channels, h, w)
    if ctx.enabled:  # rank 0 exports (once, into the cache); the others then load its file
        from ...distributed import on_main

        if not on_main(lambda: ort_net(body, weights_hash, shape, threads) is not None, ctx):
            return None
    return ort_net(body, weights_hash, shape, threads)


_BAD: dict[str, list] = {}  # key -> undecodable rows of a features file made in this process


def _reasons(ds: ImageDataset, gone: np.ndarray) -> list[tuple[int, str]]:
    """(index, reason) of rows left out, with the reason `ds.skipped` gives for each file."""
    why = dict(ds.skipped)
    return [(int(i), why.get(ds.where(int(i)), "could not be decoded")) for i in gone]


def _saved_bad(path: Path) -> list:
    """The undecodable rows recorded in a features file (listed again on a cache hit)."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as fh:
            return list(json.loads((fh.metadata() or {}).get("info", "{}")).get("bad", []))
    except Exception:  # noqa: BLE001 - a file that cannot say leaves nothing to list
        return []


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
    net: Any = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Positions rank::world of `indices` (padded to equal length), extracted here, gathered and
    put back in the original order, with the usable mask."""
    from ...distributed import on_every_rank

    n = len(indices)
    if n == 0:
        return torch.zeros((0, 0)), torch.zeros(0, dtype=torch.bool)
    mine = shard_positions(n, ctx)
    args = (body, ds, indices[mine], preprocess, device, batch_size, progress, accel, net)
    local, ok = on_every_rank(lambda: extract(*args), ctx)
    feats = gather_rows(local, n, ctx, wire)
    good = gather_rows(ok.to(torch.uint8), n, ctx, wire).bool()
    if not bool(good.all()) and ctx.is_main:  # found by another rank: listed here too
        ds.note_bad([(int(i), "could not be decoded (see the other process)") for i in
                     indices[~good.numpy()]])  # fmt: skip
    return feats, good
