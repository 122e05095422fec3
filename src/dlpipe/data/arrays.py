"""Materialise (part of) a data set as uint8 NCHW pixels through a Preprocess: decoded in-process or
by forked DataLoader workers, images found unusable when decoded skipped and listed (not fatal
unless --strict), and for folders kept in the on-disk decoded cache (see `pixels` and `rows`)."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

from ..errors import BadInput
from .decode import BadImage
from .preprocess import Preprocess
from .sources import ImageDataset

Row = tuple[np.ndarray | None, str]  # pixels, or None and why the image is unusable


def _cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def decode_workers(n: int, processes: int = 1) -> int:
    """Worker processes worth starting to decode `n` images beside training: none for small sets
    or on machines with few cores per training process (workers would compete with it)."""
    import multiprocessing

    per_process = _cores() // max(processes, 1)
    if n < 2048 or per_process < 4 or "fork" not in multiprocessing.get_all_start_methods():
        return 0
    return min(8, per_process - 1)


def build_workers(n: int, processes: int = 1) -> int:
    """Worker processes for a decode-only pass (writing the decoded cache): every core this
    process may use decodes, since the main process only copies rows."""
    import multiprocessing

    per_process = _cores() // max(processes, 1)
    if n < 1024 or per_process < 2 or "fork" not in multiprocessing.get_all_start_methods():
        return 0
    return min(8, per_process)


def decode_row(ds: ImageDataset, index: int, preprocess: Preprocess) -> Row:
    """uint8 CHW pixels of one image, or (None, reason) when it cannot be decoded."""
    try:
        return preprocess.pixels(ds.image(int(index))), ""
    except BadImage as exc:
        return None, str(exc)


def decoded_batches(
    ds: ImageDataset,
    indices: np.ndarray,
    preprocess: Preprocess,
    batch_size: int = 256,
    workers: int = 0,
) -> Iterator[list[Row]]:
    """Rows of `indices`, in order, a list per batch; with `workers` > 0 decoded by a torch
    DataLoader's worker processes (forked: the data set need not pickle)."""
    if workers <= 0:
        for start in range(0, len(indices), batch_size):
            yield [decode_row(ds, i, preprocess) for i in indices[start : start + batch_size]]
        return
    from torch.utils.data import DataLoader

    loader = DataLoader(
        _Decoded(ds, np.asarray(indices), preprocess),
        batch_size=batch_size,
        num_workers=workers,
        collate_fn=list,
        multiprocessing_context="fork",
    )
    yield from loader


class _Decoded:
    """Map-style view for DataLoader workers: position -> row."""

    def __init__(self, ds: ImageDataset, indices: np.ndarray, preprocess: Preprocess) -> None:
        self.ds, self.indices, self.preprocess = ds, indices, preprocess

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, k: int) -> Row:
        return decode_row(self.ds, self.indices[k], self.preprocess)


class Tally:
    """Counts unusable images while decoding; a set that is mostly garbage stops early."""

    def __init__(self, ds: ImageDataset, total: int) -> None:
        self.ds, self.total, self.seen, self.bad = ds, total, 0, 0

    def add(self, rows: int, bad: int) -> None:
        """Account for a decoded batch; raise BadInput once most images seen so far are bad."""
        self.seen, self.bad = self.seen + rows, self.bad + bad
        if self.bad and self.seen >= min(32, self.total) and 2 * self.bad > self.seen:
            raise BadInput(
                f"{self.bad} of the first {self.seen} images of {self.ds.name} could not be "
                "decoded (corrupt, truncated, vanished or changed): the data set looks mostly "
                "unusable.",
                hint="Check the folder (the files listed in skipped.txt), or re-create it.",
            )


def check_size(ds: ImageDataset, px: np.ndarray, shape: tuple[int, ...], k: int) -> None:
    """Rows must share one shape (native-size inputs of different sizes need --image-size)."""
    if px.shape != shape:
        raise BadInput(
            f"Image {k} of {ds.name} has size {px.shape[1:]} but earlier ones {shape[1:]}.",
            hint="Images of different sizes need --image-size so they are resized to one size.",
        )


def pixels_and_indices(
    ds: ImageDataset,
    indices: np.ndarray,
    preprocess: Preprocess,
    progress: Callable[[int], None] | None = None,
    workers: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """(uint8 NCHW pixels in memory, the indices they are of): images that cannot be decoded
    are dropped and listed in `ds.skipped` (fatal under --strict)."""
    indices = np.asarray(indices, dtype=np.int64)
    out: np.ndarray | None = None
    keep = np.zeros(len(indices), dtype=bool)
    tally, k, bad = Tally(ds, len(indices)), 0, []
    for chunk in decoded_batches(ds, indices, preprocess, workers=workers):
        found = 0
        for px, why in chunk:
            if px is None:
                bad.append((int(indices[k]), why))
                found += 1
            else:
                if out is None:
                    out = np.empty((len(indices), *px.shape), dtype=np.uint8)
                check_size(ds, px, out.shape[1:], k)
                out[k], keep[k] = px, True
            k += 1
        ds.note_bad(bad[len(bad) - found :])
        tally.add(len(chunk), found)
        if progress:
            progress(len(chunk))
    if out is None:
        size = preprocess.output_size or 1
        return np.zeros((0, preprocess.channels, size, size), dtype=np.uint8), indices[:0]
    return (out if keep.all() else out[keep]), indices[keep]


def pixels_of(
    ds: ImageDataset,
    indices: np.ndarray,
    preprocess: Preprocess,
    progress: Callable[[int], None] | None = None,
    workers: int = 0,
) -> np.ndarray:
    """uint8 NCHW pixels of the usable images among `indices` (see `pixels_and_indices`)."""
    return pixels_and_indices(ds, indices, preprocess, progress, workers)[0]


def shared_pixels(
    ds: ImageDataset,
    indices: np.ndarray,
    preprocess: Preprocess,
    ctx: Any,
    progress: Callable[[int], None] | None = None,
    workers: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """`pixels_and_indices` in memory, called by every process of a torchrun job together: each
    decodes rows rank::N, all gather them (and which were usable) in order. One process: plain.
    Used where the decoded cache is not (built-in sets, an unwritable cache folder)."""
    if not ctx.enabled:
        return pixels_and_indices(ds, indices, preprocess, progress, workers)
    import torch

    from ..distributed import gather_rows, on_every_rank, shard_positions

    indices = np.asarray(indices, dtype=np.int64)
    mine = shard_positions(len(indices), ctx)
    scaled = (lambda k: progress(k * ctx.world_size)) if progress else None

    def local() -> tuple[np.ndarray, np.ndarray]:
        px, kept = pixels_and_indices(ds, indices[mine], preprocess, scaled, workers)
        full = np.zeros((len(mine), *px.shape[1:]), dtype=np.uint8)
        ok = np.isin(indices[mine], kept)
        full[ok] = px
        return full, ok

    full, ok = on_every_rank(local, ctx)
    rows = gather_rows(torch.from_numpy(full), len(indices), ctx).numpy()
    good = gather_rows(torch.from_numpy(ok), len(indices), ctx).numpy()
    if not good.all() and ctx.is_main:  # found by another process: listed here too
        ds.note_bad([(int(i), "could not be decoded (see the other process)") for i in
                     indices[~good]])  # fmt: skip
    return (rows if good.all() else rows[good]), indices[good]


def tensors_of(
    ds: ImageDataset,
    indices: np.ndarray,
    preprocess: Preprocess,
    progress: Callable[[int], None] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """(float32 NCHW normalized inputs, int64 labels) for the usable images among `indices`."""
    px, kept = pixels_and_indices(ds, indices, preprocess, progress)
    return preprocess.normalize(px), ds.labels[kept]
