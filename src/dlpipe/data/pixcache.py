"""The on-disk decoded cache: resized uint8 NCHW pixels of a folder's images, decoded once and then
read by every epoch and every process through the OS page cache (memory stays flat in the data
set's size: a process holds the batches it reads, not the set). finetune and validate use this
one (built whole, then mapped); gan and ae read through `rows`, which trains while it fills.

One raw file per (data fingerprint, preprocessing, native mode, the requested rows) under
$DLPIPE_CACHE_DIR/pixels (or ~/.cache/dlpipe/pixels), beside a JSON file with its shape, byte size
and sha256 and the rows that could not be decoded. The JSON is written last (the commit point):
a file without it, of the wrong size or with another checksum is removed and rebuilt. The build
writes a temporary file that is renamed in only when complete, decoding with DataLoader workers
where cores allow.

Under torchrun the processes of a node build one file together (each decodes rows
LOCAL_RANK::LOCAL_WORLD_SIZE into it; local rank 0 checks and commits it), so no process gathers
the set; afterwards every process maps the same file and reads only the rows it uses. With
DLPIPE_CACHE_DIR on storage shared by the nodes, each node builds under its own temporary name
and the identical results are renamed in (the last one wins, all equal).
"""

from __future__ import annotations

import hashlib
import json
import os
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from ..atomic import write_text
from .arrays import Tally, build_workers, check_size, decoded_batches
from .preprocess import Preprocess
from .rowfile import blank, cache_dir, pixel_key, sweep
from .sources import ImageDataset

FORMAT = "dlpipe-pixels/1"
_CHUNK = 16 << 20


def cache_key(ds: ImageDataset, indices: np.ndarray, preprocess: Preprocess) -> str:
    """Everything the pixels depend on (rowfile.pixel_key), in this cache's format."""
    return pixel_key(FORMAT, ds, indices, preprocess)


def usable(ds: ImageDataset, preprocess: Preprocess) -> bool:
    """Folders with a fixed output size go through the disk cache; built-in sets are arrays
    already, and native-size inputs have no shape before decoding."""
    return ds.kind != "builtin" and preprocess.output_size is not None


def writable() -> bool:
    """Can this process create files in the cache folder? (An unwritable one is not an error.)"""
    folder = cache_dir()
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / f".probe-{uuid.uuid4().hex}"
        probe.write_bytes(b"")
        probe.unlink()
        return True
    except OSError:
        return False


def _files(key: str) -> tuple[Path, Path]:
    return cache_dir() / f"{key}.u8", cache_dir() / f"{key}.json"


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(_CHUNK):
            digest.update(block)
    return digest.hexdigest()


def _drop(key: str) -> None:
    for p in _files(key):
        p.unlink(missing_ok=True)


def load(key: str, shape: tuple[int, ...]) -> tuple[np.ndarray, list[list]] | None:
    """(pixels mapped copy-on-write, [[position, reason], ...] of undecodable rows) when the
    cache file is complete and intact; None (and the files removed) otherwise."""
    data, meta_path = _files(key)
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
        rows = int(meta["rows"])
        expect = (rows, *shape[1:])
        size = int(np.prod(expect))
        ok = (
            meta.get("format") == FORMAT
            and list(meta["shape"]) == list(expect)
            and data.stat().st_size == size == int(meta["bytes"])
            and _sha256(data) == meta["sha256"]
        )
        if ok:
            px = np.memmap(data, dtype=np.uint8, mode="c", shape=expect) if size else None
            return (px if px is not None else np.zeros(expect, np.uint8)), list(meta["bad"])
    except (OSError, ValueError, KeyError, TypeError):
        pass
    _drop(key)
    return None


def _write_rows(
    ds: ImageDataset,
    indices: np.ndarray,
    positions: np.ndarray,
    preprocess: Preprocess,
    target: np.ndarray,
    progress: Callable[[int], None] | None,
    workers: int,
) -> list[list]:
    """Decode `indices[positions]` into `target[positions]`; [[position, reason]] of bad ones."""
    bad: list[list] = []
    tally, k = Tally(ds, len(positions)), 0
    for chunk in decoded_batches(ds, indices[positions], preprocess, 256, workers):
        found = 0
        for px, why in chunk:
            pos = int(positions[k])
            if px is None:
                bad.append([pos, why])
                found += 1
            else:
                check_size(ds, px, target.shape[1:], int(indices[pos]))
                target[pos] = px
            k += 1
        tally.add(len(chunk), found)
        if progress:
            progress(len(chunk))
    return bad


def _commit(key: str, tmp: Path, shape: tuple[int, ...], bad: list[list]) -> None:
    """Move good rows together (bad ones are rare), checksum, rename in, then the JSON."""
    data, meta_path = _files(key)
    row = int(np.prod(shape[1:]))
    gone = sorted(int(p) for p, _ in bad)
    rows = shape[0] - len(gone)
    if gone:
        keep = np.setdiff1d(np.arange(shape[0]), gone)
        with open(tmp, "r+b") as fh:
            for dst, src in enumerate(keep):
                if dst != src:
                    fh.seek(int(src) * row)
                    block = fh.read(row)
                    fh.seek(dst * row)
                    fh.write(block)
            fh.truncate(rows * row)
    with open(tmp, "rb+") as fh:
        os.fsync(fh.fileno())
    meta = {
        "format": FORMAT,
        "shape": [rows, *shape[1:]],
        "rows": rows,
        "bytes": rows * row,
        "sha256": _sha256(tmp),
        "bad": sorted(bad),
    }
    os.replace(tmp, data)
    write_text(meta_path, json.dumps(meta))


def build(
    ds: ImageDataset,
    indices: np.ndarray,
    preprocess: Preprocess,
    key: str,
    shape: tuple[int, ...],
    progress: Callable[[int], None] | None = None,
) -> None:
    """Decode the rows once into a temporary file and commit it (one process)."""
    sweep(key)
    tmp = cache_dir() / f".{key}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp"
    try:
        blank(tmp, int(np.prod(shape)))
        target = np.memmap(tmp, dtype=np.uint8, mode="r+", shape=shape) if shape[0] else None
        positions = np.arange(shape[0])
        workers = build_workers(shape[0])
        bad = (
            _write_rows(ds, indices, positions, preprocess, target, progress, workers)
            if target is not None
            else []
        )
        if target is not None:
            target.flush()
            del target
        _commit(key, tmp, shape, bad)
    finally:
        tmp.unlink(missing_ok=True)


def build_together(
    ds: ImageDataset,
    indices: np.ndarray,
    preprocess: Preprocess,
    key: str,
    shape: tuple[int, ...],
    ctx: Any,
    progress: Callable[[int], None] | None = None,
) -> None:
    """`build` by the processes of each node together: each decodes its strided share of the
    rows into one temporary file, local rank 0 commits it."""
    import torch.distributed as dist

    from ..distributed import on_every_rank

    node = int(os.environ.get("GROUP_RANK", "0"))
    local_world = int(os.environ.get("LOCAL_WORLD_SIZE", str(ctx.world_size)))
    tmp = cache_dir() / f".{key}.node{node}.building.tmp"
    if ctx.local_rank == 0:
        on_every_rank(lambda: blank(tmp, int(np.prod(shape))), ctx)
    else:
        on_every_rank(lambda: None, ctx)
    try:

        def mine() -> list[list]:
            if not shape[0]:
                return []
            target = np.memmap(tmp, dtype=np.uint8, mode="r+", shape=shape)
            positions = np.arange(shape[0])[ctx.local_rank :: local_world]
            workers = build_workers(len(positions), local_world)
            found = _write_rows(ds, indices, positions, preprocess, target, progress, workers)
            target.flush()
            return found

        found = on_every_rank(mine, ctx)
        everyone: list[Any] = [None] * ctx.world_size
        dist.all_gather_object(everyone, (node, found))
        bad = [b for n, part in everyone for b in part if n == node]
        commit = (lambda: _commit(key, tmp, shape, bad)) if ctx.local_rank == 0 else (lambda: None)
        on_every_rank(commit, ctx)
    finally:
        if ctx.local_rank == 0:
            tmp.unlink(missing_ok=True)


def cached_pixels(
    ds: ImageDataset,
    indices: np.ndarray,
    preprocess: Preprocess,
    progress: Callable[[int], None] | None = None,
    ctx: Any = None,
) -> tuple[np.ndarray, np.ndarray, str]:
    """(uint8 NCHW pixels mapped from the cache, the indices they are of, "disk"|"built") for a
    folder; undecodable images are dropped and listed in `ds.skipped` (fatal under --strict).
    With a multi-process `ctx`, every process calls it together."""
    indices = np.asarray(indices, dtype=np.int64)
    size = int(preprocess.output_size or 0)
    shape = (len(indices), preprocess.channels, size, size)
    key = cache_key(ds, indices, preprocess)
    hit = load(key, shape)
    how = "disk"
    together = ctx is not None and ctx.enabled
    miss = hit is None
    if together:
        import torch

        from ..distributed import all_reduce_sum

        miss = bool(all_reduce_sum(torch.tensor([float(miss)]), ctx).item() > 0)
    if miss:
        if together:
            scaled = (lambda k: progress(k * ctx.world_size)) if progress else None
            build_together(ds, indices, preprocess, key, shape, ctx, scaled)
        else:
            build(ds, indices, preprocess, key, shape, progress)
        hit, how = load(key, shape), "built"
        if hit is None:
            from ..errors import EnvironmentProblem

            raise EnvironmentProblem(
                f"The decoded-pixel cache {_files(key)[0]} did not read back after it was written.",
                hint="Check the disk under $DLPIPE_CACHE_DIR, or point it elsewhere.",
            )
    elif progress:
        progress(len(indices))
    px, bad = hit
    gone = np.array(sorted(int(p) for p, _ in bad), dtype=np.int64)
    ds.note_bad([(int(indices[p]), why) for p, why in bad])
    kept = np.delete(indices, gone) if len(gone) else indices
    return px, kept, how


def load_pixels(
    ds: ImageDataset,
    indices: np.ndarray,
    preprocess: Preprocess,
    progress: Callable[[int], None] | None = None,
    ctx: Any = None,
    warn: Callable[[str], None] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """(uint8 NCHW pixels, the indices they are of) the way that suits the source: a folder from
    the decoded cache (mapped, not in memory), a built-in set (or any source when the cache
    folder is not writable) decoded into memory. With a multi-process `ctx`, every process calls
    it together and each decodes a share."""
    from .arrays import decode_workers, pixels_and_indices, shared_pixels

    together = ctx is not None and ctx.enabled
    if usable(ds, preprocess):
        ok = writable()
        if together:
            import torch

            from ..distributed import all_reduce_sum

            ok = all_reduce_sum(torch.tensor([float(not ok)]), ctx).item() == 0
        problem = None if ok else f"the cache folder {cache_dir()} is not writable"
        if ok:
            from ..errors import EnvironmentProblem

            try:
                return cached_pixels(ds, indices, preprocess, progress, ctx)[:2]
            except EnvironmentProblem as exc:  # a full disk: every process gets it, all fall back
                problem = exc.message.rstrip(".")
        if warn is not None:
            warn(f"{problem}: decoding into memory instead")
    workers = decode_workers(len(indices), ctx.world_size if together else 1)
    if together:
        return shared_pixels(ds, indices, preprocess, ctx, progress, workers)
    return pixels_and_indices(ds, indices, preprocess, progress, workers)
